//! The bill-run benchmark of issue 7: billrun against the hand-written DuckDB job of
//! `../shared/bench/`, side by side, interleaved, with a correctness check.
//!
//!   cargo build --release --bin billrun --example bench     # cargo run builds only the example
//!   cargo run --release --example bench -- [--events 10m,50m] [--runs 3] [--data DIR]
//!
//! For each event count: generates the workload once with `gen_events.py` (seed 42; cached under
//! `~/.cache/billrun-bench/data/<n>`, reused when its `_manifest.json` matches), assembles the
//! catalog of `bench/` (plan.yaml + accounts.yaml, generated from the generator's account ids),
//! warms the page cache, then runs `target/release/billrun run --config bench/billrun.toml` (a
//! fresh store each run) and `run_duckdb.py --sql duckdb_baseline.sql` alternately, `--runs`
//! times each. Each child is timed (wall clock) and its peak RSS taken from `wait4`'s rusage;
//! billrun is stopped when its RSS passes `--max-rss-gib` (or what the machine has available) or
//! it runs longer than `--timeout-min`. Prints a table of medians and billrun's stage split
//! (`billrun run --timings FILE`), writes `<work>/results.json`, and compares billrun's invoices
//! (`runs/<as-of>/line_items.parquet` and the manifest's issued total) with DuckDB's output to
//! the cent, per account and per line: any difference exits 1 with the first differing accounts.
//!
//! Python: a venv with `../shared/bench/requirements.txt` in `~/.cache/billrun-bench/venv`
//! (created when missing). `BILLRUN_BENCH_CACHE` moves the cache, `BILLRUN_BENCH_SHARED` the
//! shared bench folder (default `../shared/bench` next to the repository).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use clap::Parser;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "billrun vs DuckDB on the generated month of usage (issue 7)")]
struct Args {
    /// Event counts, comma-separated (10m, 50m, 200k or plain numbers).
    #[arg(long, value_delimiter = ',', default_values_t = ["10m".to_string(), "50m".to_string()])]
    events: Vec<String>,
    /// Runs per engine and size (interleaved billrun, DuckDB, billrun, ...).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the generated datasets live (default ~/.cache/billrun-bench/data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Scratch folder for stores, DuckDB outputs, logs and results.json (default <cache>/work).
    #[arg(long)]
    work: Option<PathBuf>,
    /// The bill run's as-of date (the October invoices are DUE from 2026-11-06: grace period 5).
    #[arg(long, default_value = "2026-11-06")]
    as_of: String,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop a billrun run whose resident memory passes this many GiB.
    #[arg(long, default_value_t = 20.0)]
    max_rss_gib: f64,
    /// Stop a billrun run after this many minutes.
    #[arg(long, default_value_t = 15.0)]
    timeout_min: f64,
    /// The billrun binary (default: target/<profile>/billrun next to this example).
    #[arg(long)]
    billrun: Option<PathBuf>,
    /// Only run billrun (no DuckDB runs, no comparison).
    #[arg(long)]
    no_duckdb: bool,
}

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(2)
}

fn parse_count(s: &str) -> u64 {
    let t = s.trim().to_ascii_lowercase().replace('_', "");
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1_000),
        Some('m') => (&t[..t.len() - 1], 1_000_000),
        Some('g') | Some('b') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t.as_str(), 1),
    };
    num.parse::<u64>().map(|n| n * mul).unwrap_or_else(|_| die(format!("`{s}` is not an event count")))
}

fn label(n: u64) -> String {
    if n % 1_000_000 == 0 {
        format!("{}m", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let st = cmd.status().unwrap_or_else(|e| die(format!("{what}: {e}")));
    if !st.success() {
        die(format!("{what} failed ({st})"));
    }
}

/// Remove the run stores (`store-*`) under a size's work folder.
fn stores(wdir: &Path) {
    for e in fs::read_dir(wdir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("store") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The Python venv with the shared bench's requirements (created once).
fn venv(cache: &Path, shared: &Path) -> PathBuf {
    let dir = cache.join("venv");
    let py = dir.join("bin/python");
    let ready = dir.join(".requirements");
    let req = fs::read_to_string(shared.join("requirements.txt")).unwrap_or_else(|e| die(format!("requirements.txt: {e}")));
    if py.exists() && fs::read_to_string(&ready).ok().as_deref() == Some(req.as_str()) {
        return py;
    }
    eprintln!("bench: creating the Python venv in {}", dir.display());
    let python = ["python3.11", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()))
        .unwrap_or_else(|| die("no python3 on PATH"));
    run_ok(Command::new(python).args(["-m", "venv"]).arg(&dir), "python -m venv");
    run_ok(Command::new(&py).args(["-m", "pip", "install", "-q", "-r"]).arg(shared.join("requirements.txt")), "pip install");
    fs::write(&ready, req).unwrap();
    py
}

/// The dataset of `n` events (generated once per (n, seed)).
fn dataset(py: &Path, shared: &Path, data: &Path, n: u64, seed: u64) -> PathBuf {
    let dir = data.join(label(n));
    let manifest = fs::read_to_string(dir.join("_manifest.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    if manifest.is_some_and(|m| m["events"] == json!(n) && m["seed"] == json!(seed)) {
        return dir;
    }
    eprintln!("bench: generating {n} events into {}", dir.display());
    run_ok(
        Command::new(py)
            .arg(shared.join("gen_events.py"))
            .args(["--events", &n.to_string(), "--seed", &seed.to_string(), "--out"])
            .arg(&dir),
        "gen_events.py",
    );
    dir
}

/// `bench/catalog/*.yaml` plus `accounts.yaml`: one account and one October schedule per account
/// id of the generator (`gen_events.account_strings()`).
fn catalog(py: &Path, shared: &Path, cache: &Path) -> PathBuf {
    let dir = cache.join("catalog");
    fs::create_dir_all(&dir).unwrap();
    for e in fs::read_dir(Path::new(REPO).join("bench/catalog")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
            let b = fs::read(&p).unwrap();
            let to = dir.join(p.file_name().unwrap());
            if fs::read(&to).ok().as_deref() != Some(b.as_slice()) {
                fs::write(to, b).unwrap();
            }
        }
    }
    let accounts = dir.join("accounts.yaml");
    if !accounts.exists() {
        let out = Command::new(py)
            .arg("-c")
            .arg("import sys; sys.path.insert(0, sys.argv[1]); import gen_events; print('\\n'.join(gen_events.account_strings().to_pylist()))")
            .arg(shared)
            .output()
            .unwrap_or_else(|e| die(format!("listing account ids: {e}")));
        if !out.status.success() {
            die(format!("listing account ids: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let ids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().filter(|l| !l.is_empty()).collect();
        let mut y = String::from("# generated by examples/bench.rs from gen_events.account_strings()\naccounts:\n");
        for a in &ids {
            y.push_str(&format!("  - {{id: {a}, name: {a}, customerId: cust.bench, invoiceCurrency: USD}}\n"));
        }
        y.push_str("accountSchedules:\n");
        for a in &ids {
            y.push_str(&format!(
                "  {a}: [{{pricePlanId: pp.bench, startDate: '2026-10-01T00:00:00Z', endDate: '2026-11-01T00:00:00Z'}}]\n"
            ));
        }
        let tmp = dir.join(".accounts.yaml.tmp");
        fs::write(&tmp, y).unwrap();
        fs::rename(tmp, &accounts).unwrap();
        eprintln!("bench: wrote {} accounts to {}", ids.len(), accounts.display());
    }
    dir
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn mem_available_bytes() -> Option<u64> {
    let t = fs::read_to_string("/proc/meminfo").ok()?;
    let l = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn rss_bytes(pid: i32) -> Option<u64> {
    let t = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = t.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
}

struct Measured {
    wall_s: f64,
    peak_mib: f64,
    ok: bool,
    /// Why it did not finish (killed for memory or time, or its exit status).
    failure: Option<String>,
}

/// Run `cmd` with stdout/stderr to `log`; wall time and the child's peak RSS (wait4 rusage).
fn measure(mut cmd: Command, log: &Path, limit_bytes: Option<u64>, timeout: Option<Duration>) -> Measured {
    let f = fs::File::create(log).unwrap();
    let child = cmd.stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap_or_else(|e| die(format!("spawn {cmd:?}: {e}")));
    let pid = child.id() as i32;
    let t0 = Instant::now();
    let mut killed: Option<String> = None;
    let mut seen_peak = 0u64;
    loop {
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let wall_s = t0.elapsed().as_secs_f64();
            let peak_mib = (ru.ru_maxrss as f64 * 1024.0).max(seen_peak as f64) / (1024.0 * 1024.0);
            let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let failure = killed.or_else(|| {
                (!exited_ok).then(|| {
                    if libc::WIFEXITED(status) {
                        format!("exit status {}", libc::WEXITSTATUS(status))
                    } else {
                        format!("killed by signal {}", libc::WTERMSIG(status))
                    }
                })
            });
            return Measured { wall_s, peak_mib, ok: failure.is_none(), failure };
        }
        if r < 0 {
            die(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        if killed.is_none() {
            let rss = rss_bytes(pid).unwrap_or(0);
            seen_peak = seen_peak.max(rss);
            let over_mem = limit_bytes.is_some_and(|l| rss > l);
            let over_time = timeout.is_some_and(|t| t0.elapsed() > t);
            if over_mem || over_time {
                killed = Some(if over_mem {
                    format!("stopped at {:.1} GiB RSS after {:.0} s", rss as f64 / (1u64 << 30) as f64, t0.elapsed().as_secs_f64())
                } else {
                    format!("stopped after {:.0} s at {:.1} GiB RSS", t0.elapsed().as_secs_f64(), rss as f64 / (1u64 << 30) as f64)
                });
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn warm(dir: &Path) -> u64 {
    let mut bytes = 0;
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    files.sort();
    for p in files {
        bytes += fs::read(&p).map(|b| b.len() as u64).unwrap_or(0);
    }
    bytes
}

fn read_parquet(path: &Path) -> Vec<arrow::array::RecordBatch> {
    let f = fs::File::open(path).unwrap_or_else(|e| die(format!("{}: {e}", path.display())));
    let r = ParquetRecordBatchReaderBuilder::try_new(f).and_then(|b| b.build()).unwrap_or_else(|e| die(format!("{}: {e}", path.display())));
    r.map(|b| b.unwrap_or_else(|e| die(format!("{}: {e}", path.display())))).collect()
}

/// Scaled integer value of row `i` of a decimal or integer column at `scale`.
fn scaled(a: &dyn Array, i: usize, scale: u32) -> Option<i128> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Decimal128(_, s) => {
            let v = a.as_primitive::<Decimal128Type>().value(i);
            let s = *s as u32;
            Some(if s <= scale { v * 10i128.pow(scale - s) } else { v / 10i128.pow(s - scale) })
        }
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i) as i128 * 10i128.pow(scale)),
        dt => die(format!("unexpected column type {dt}")),
    }
}

fn text_at(a: &dyn Array, i: usize) -> String {
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => a.as_string_view().value(i).to_string(),
        _ => {
            let c = arrow::compute::cast(a, &DataType::Utf8).unwrap();
            c.as_string::<i32>().value(i).to_string()
        }
    }
}

fn fmt_scaled(v: i128, scale: u32) -> String {
    let neg = v < 0;
    let a = v.unsigned_abs();
    let p = 10u128.pow(scale);
    format!("{}{}.{:0w$}", if neg { "-" } else { "" }, a / p, a % p, w = scale as usize)
}

fn parse_scaled(t: &str, scale: u32) -> Option<i128> {
    let (neg, t) = t.strip_prefix('-').map_or((false, t), |r| (true, r));
    let (i, f) = t.split_once('.').unwrap_or((t, ""));
    if f.len() as u32 > scale {
        return None;
    }
    let v = format!("{i}{f:0<w$}", w = scale as usize).parse::<i128>().ok()?;
    Some(if neg { -v } else { v })
}

/// (line id on billrun's invoice, DuckDB amount column, DuckDB quantity column)
const LINES: [(&str, &str, Option<&str>); 7] = [
    ("urc.um.api_calls", "m1_amount", Some("m1_api_calls")),
    ("urc.um.premium_tokens", "m2_amount", Some("m2_premium_tokens")),
    ("urc.um.priority_tokens", "m3_amount", Some("m3_priority_tokens")),
    ("urc.um.storage", "m4_amount", Some("m4_storage_gb")),
    ("urc.um.eu_compute", "m5_amount", Some("m5_eu_compute_hours")),
    ("urc.um.compute_jobs", "m6_amount", Some("m6_compute_jobs")),
    ("ff.addon.platform", "fixed_fee", None),
];
const FIXED_FEE_CENTS: i128 = 4900;
/// Amounts and quantities are compared at 4 decimals (the line-item export's amount scale).
const S: u32 = 4;

#[derive(Default, Clone, PartialEq, Debug)]
struct Account {
    total: i128,
    /// Per LINES entry: (amount, quantity).
    lines: Vec<(i128, Option<i128>)>,
}

/// billrun's issued invoices per account, from the line-item export.
fn billrun_accounts(store: &Path, as_of: &str) -> (BTreeMap<String, Account>, Vec<String>) {
    let mut out: BTreeMap<String, Account> = BTreeMap::new();
    let mut problems = Vec::new();
    for b in read_parquet(&store.join(format!("runs/{as_of}/line_items.parquet"))) {
        let acc = b.column_by_name("account_id").unwrap().clone();
        let line = b.column_by_name("line_id").unwrap().clone();
        let amount = b.column_by_name("amount").unwrap().clone();
        let qty = b.column_by_name("quantity").unwrap().clone();
        let status = b.column_by_name("status").unwrap().clone();
        for i in 0..b.num_rows() {
            let a = text_at(acc.as_ref(), i);
            let e = out.entry(a.clone()).or_insert_with(|| Account { total: 0, lines: vec![(0, None); LINES.len()] });
            let amt = scaled(amount.as_ref(), i, S).unwrap_or(0);
            e.total += amt;
            let st = text_at(status.as_ref(), i);
            if st != "DUE" {
                problems.push(format!("{a}: invoice status {st}, expected DUE"));
            }
            let id = if line.is_null(i) { String::new() } else { text_at(line.as_ref(), i) };
            match LINES.iter().position(|l| l.0 == id) {
                Some(k) => e.lines[k] = (amt, scaled(qty.as_ref(), i, S)),
                None if amt != 0 => problems.push(format!("{a}: unexpected line `{id}` of {}", fmt_scaled(amt, S))),
                None => {}
            }
        }
    }
    (out, problems)
}

/// DuckDB's invoices per account (rows with usage only).
fn duckdb_accounts(path: &Path) -> BTreeMap<String, Account> {
    let mut out = BTreeMap::new();
    for b in read_parquet(path) {
        let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| die(format!("{}: no column {n}", path.display()))).clone();
        let acc = col("account_id");
        let total = col("invoice_total");
        let cols: Vec<_> = LINES.iter().map(|(_, a, q)| (col(a), q.map(col))).collect();
        for i in 0..b.num_rows() {
            let lines = cols
                .iter()
                .map(|(a, q)| (scaled(a.as_ref(), i, S).unwrap_or(0), q.as_ref().map(|q| scaled(q.as_ref(), i, S).unwrap_or(0))))
                .collect();
            out.insert(text_at(acc.as_ref(), i), Account { total: scaled(total.as_ref(), i, S).unwrap_or(0), lines });
        }
    }
    out
}

/// What DuckDB's job bills an account without in-cycle usage (it has no row): the fixed fee.
fn fee_only() -> Account {
    let mut lines: Vec<(i128, Option<i128>)> = LINES.iter().map(|l| (0, l.2.map(|_| 0))).collect();
    lines[6] = (FIXED_FEE_CENTS * 100, None);
    Account { total: FIXED_FEE_CENTS * 100, lines }
}

/// Compare billrun's store with DuckDB's output; the differences, first ones first.
fn compare(store: &Path, duck: &Path, as_of: &str, accounts_expected: usize) -> (Vec<String>, String) {
    let (b, mut problems) = billrun_accounts(store, as_of);
    let d = duckdb_accounts(duck);
    let mut fee_only_n = 0;
    let mut checked = 0;
    for (a, ba) in &b {
        let exp = match d.get(a) {
            Some(x) => x.clone(),
            None => {
                fee_only_n += 1;
                fee_only()
            }
        };
        checked += 1;
        let mut diffs = Vec::new();
        if ba.total != exp.total {
            diffs.push(format!("total {} vs DuckDB {}", fmt_scaled(ba.total, S), fmt_scaled(exp.total, S)));
        }
        for (k, ((ba_amt, ba_q), (d_amt, d_q))) in ba.lines.iter().zip(&exp.lines).enumerate() {
            if ba_amt != d_amt {
                diffs.push(format!("{} {} vs {}", LINES[k].1, fmt_scaled(*ba_amt, S), fmt_scaled(*d_amt, S)));
            }
            // billrun shows no line quantity when a meter has no usage: that is 0
            if d_q.is_some() && ba_q.unwrap_or(0) != d_q.unwrap_or(0) {
                diffs.push(format!("{} {} vs {}", LINES[k].2.unwrap(), fmt_scaled(ba_q.unwrap_or(0), S), fmt_scaled(d_q.unwrap_or(0), S)));
            }
        }
        if !diffs.is_empty() {
            problems.push(format!("{a}: {}", diffs.join("; ")));
        }
    }
    for a in d.keys().filter(|a| !b.contains_key(*a)) {
        problems.push(format!("{a}: billed by DuckDB ({}), no invoice from billrun", fmt_scaled(d[a].total, S)));
    }
    if b.len() != accounts_expected {
        problems.push(format!("billrun issued invoices for {} accounts, expected {accounts_expected}", b.len()));
    }
    // the manifest's issued total (read from the run's own bookkeeping) against DuckDB's sum
    let manifest: Value = serde_json::from_slice(&fs::read(store.join(format!("runs/{as_of}/manifest.json"))).unwrap()).unwrap();
    let issued = manifest["invoices"]["totalsByCurrency"]["USD"]["issued"].as_str().unwrap_or("?").to_string();
    let duck_sum: i128 =
        d.values().map(|x| x.total).sum::<i128>() + (accounts_expected.saturating_sub(d.len()) as i128) * FIXED_FEE_CENTS * 100;
    if parse_scaled(&issued, S) != Some(duck_sum) {
        problems.push(format!("manifest issued total {issued} vs DuckDB {} (with the fee-only accounts)", fmt_scaled(duck_sum, S)));
    }
    let summary =
        format!("{checked} accounts checked ({} with usage in DuckDB's output, {fee_only_n} fee-only); issued total {issued} USD", d.len());
    (problems, summary)
}

fn main() {
    let args = Args::parse();
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let cache = std::env::var_os("BILLRUN_BENCH_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/billrun-bench"));
    let shared = std::env::var_os("BILLRUN_BENCH_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(REPO).join("../shared/bench"));
    let shared = shared.canonicalize().unwrap_or_else(|e| die(format!("{}: {e} (set BILLRUN_BENCH_SHARED)", shared.display())));
    let data = args.data.clone().unwrap_or_else(|| cache.join("data"));
    let work = args.work.clone().unwrap_or_else(|| cache.join("work"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&work).unwrap();
    let billrun = args.billrun.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/examples/bench → target/<profile>/billrun
        exe.parent().and_then(Path::parent).map(|p| p.join("billrun")).unwrap()
    });
    if !billrun.exists() {
        die(format!("{} not found: build it with `cargo build --release --bin billrun --example bench`", billrun.display()));
    }
    // `cargo run --example bench` does not build the binary (and a nested cargo would see
    // cargo run's environment and rebuild dependencies): refuse a binary older than the sources
    let newest_source = ["src", "connectors/src", "templates"]
        .iter()
        .flat_map(|d| walk_files(&Path::new(REPO).join(d)))
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    let built = fs::metadata(&billrun).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(bin), None) = (newest_source, built, &args.billrun) {
        if bin < src {
            die(format!(
                "{} is older than the sources: run `cargo build --release --bin billrun --example bench` first",
                billrun.display()
            ));
        }
    }
    let config = Path::new(REPO).join("bench/billrun.toml");
    let sizes: Vec<u64> = args.events.iter().map(|s| parse_count(s)).collect();

    let py = venv(&cache, &shared);
    let cat = catalog(&py, &shared, &cache);
    let n_accounts = fs::read_to_string(cat.join("accounts.yaml")).unwrap().lines().filter(|l| l.starts_with("  - {id: ")).count();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("bench: billrun {} · {} cores · {n_accounts} accounts · as of {}", billrun.display(), nproc, args.as_of);

    let mut results = Vec::new();
    let mut failed_checks = false;
    let mut table = Vec::new();
    let mut wdirs: Vec<PathBuf> = Vec::new();
    for &n in &sizes {
        let dir = dataset(&py, &shared, &data, n, args.seed);
        let bytes = warm(&dir);
        let lab = label(n);
        let wdir = work.join(&lab);
        fs::create_dir_all(&wdir).unwrap();
        eprintln!("bench: {n} events, {:.0} MiB of Parquet in {}", bytes as f64 / 1048576.0, dir.display());
        let mut b_runs: Vec<(Measured, Option<Value>)> = Vec::new();
        let mut d_runs: Vec<(Measured, Option<f64>)> = Vec::new();
        let mut billrun_stopped = None;
        // a fresh store directory per run, all removed at the end of the invocation: removing
        // 300k files right before a run slows its file creation for minutes (ext4 without a
        // journal skips inodes freed in the last 60-360 s), so nothing is removed between runs
        stores(&wdir);
        wdirs.push(wdir.clone());
        let mut store = wdir.join("store-0");
        let duck_out = wdir.join("duckdb.parquet");
        for r in 1..=args.runs {
            if billrun_stopped.is_none() {
                store = wdir.join(format!("store-{r}"));
                let timings = wdir.join("timings.json");
                let _ = fs::remove_file(&timings);
                let mut cmd = Command::new(&billrun);
                cmd.args(["run", "--config"])
                    .arg(&config)
                    .args(["--as-of", &args.as_of, "--out"])
                    .arg(&store)
                    .arg("--timings")
                    .arg(&timings);
                cmd.env("BILLRUN_BENCH_EVENTS", &dir).env("BILLRUN_BENCH_CATALOG", &cat);
                let avail = mem_available_bytes().unwrap_or(u64::MAX).saturating_sub(1 << 30);
                let limit = ((args.max_rss_gib * (1u64 << 30) as f64) as u64).min(avail);
                let m = measure(
                    cmd,
                    &wdir.join(format!("billrun-{r}.log")),
                    Some(limit),
                    Some(Duration::from_secs_f64(args.timeout_min * 60.0)),
                );
                let t = fs::read_to_string(&timings).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok());
                eprintln!(
                    "run {r} billrun: {} {:.2} s, peak {:.0} MiB{}",
                    if m.ok { "wall" } else { "FAILED after" },
                    m.wall_s,
                    m.peak_mib,
                    m.failure
                        .as_ref()
                        .map(|f| format!(" ({f}; log {})", wdir.join(format!("billrun-{r}.log")).display()))
                        .unwrap_or_default()
                );
                if !m.ok {
                    billrun_stopped = m.failure.clone();
                }
                b_runs.push((m, t));
            }
            if !args.no_duckdb {
                let mut cmd = Command::new(&py);
                cmd.arg(shared.join("run_duckdb.py"))
                    .arg("--sql")
                    .arg(shared.join("duckdb_baseline.sql"))
                    .arg("--events")
                    .arg(&dir)
                    .arg("--out")
                    .arg(&duck_out);
                let log = wdir.join(format!("duckdb-{r}.log"));
                let m = measure(cmd, &log, None, None);
                let q = fs::read_to_string(&log)
                    .ok()
                    .and_then(|t| t.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()))
                    .and_then(|v| v["query_seconds"].as_f64());
                eprintln!("run {r} duckdb:  wall {:.2} s (query {:.2} s), peak {:.0} MiB", m.wall_s, q.unwrap_or(f64::NAN), m.peak_mib);
                if !m.ok {
                    die(format!("DuckDB failed: see {}", log.display()));
                }
                d_runs.push((m, q));
            }
        }
        let ok_b: Vec<&(Measured, Option<Value>)> = b_runs.iter().filter(|r| r.0.ok).collect();
        let b_wall = median(ok_b.iter().map(|r| r.0.wall_s).collect());
        let b_rss = median(ok_b.iter().map(|r| r.0.peak_mib).collect());
        let d_wall = median(d_runs.iter().map(|r| r.0.wall_s).collect());
        let d_rss = median(d_runs.iter().map(|r| r.0.peak_mib).collect());
        let d_query = median(d_runs.iter().filter_map(|r| r.1).collect());
        // stage medians over the finished runs
        let mut stages: Vec<(String, f64)> = Vec::new();
        if let Some(first) = ok_b.iter().find_map(|r| r.1.as_ref()) {
            for s in first["stages"].as_array().into_iter().flatten() {
                let name = s["stage"].as_str().unwrap_or("?").to_string();
                let vals = ok_b
                    .iter()
                    .filter_map(|r| r.1.as_ref())
                    .filter_map(|t| t["stages"].as_array()?.iter().find(|x| x["stage"] == json!(name))?["seconds"].as_f64())
                    .collect();
                stages.push((name, median(vals)));
            }
        }
        let mev = |s: f64| n as f64 / s / 1e6;
        let check = if ok_b.is_empty() || args.no_duckdb {
            None
        } else {
            let (problems, summary) = compare(&store, &duck_out, &args.as_of, n_accounts);
            if problems.is_empty() {
                eprintln!("check {lab}: billrun = DuckDB to the cent: {summary}");
            } else {
                failed_checks = true;
                eprintln!("check {lab}: {} DIFFERENCES ({summary}); first ones:", problems.len());
                for p in problems.iter().take(10) {
                    eprintln!("  {p}");
                }
            }
            Some((problems, summary))
        };
        let b_cell = if ok_b.is_empty() {
            format!("stopped: {}", billrun_stopped.clone().unwrap_or_default())
        } else {
            format!("{b_wall:.2} | {:.2} | {b_rss:.0}", mev(b_wall))
        };
        let d_cell = if d_runs.is_empty() { "- | - | -".to_string() } else { format!("{d_wall:.2} | {:.2} | {d_rss:.0}", mev(d_wall)) };
        let ratio = if ok_b.is_empty() || d_runs.is_empty() { "-".to_string() } else { format!("{:.2}×", d_wall / b_wall) };
        let ok = match &check {
            None => "-",
            Some((p, _)) if p.is_empty() => "equal",
            Some(_) => "DIFFERENT",
        };
        table.push(format!("| {lab} | {b_cell} | {d_cell} | {ratio} | {ok} |"));
        results.push(json!({
            "events": n,
            "parquet_bytes": bytes,
            "cores": nproc,
            "billrun": {
                "runs": b_runs.iter().map(|(m, t)| json!({"wall_s": m.wall_s, "peak_rss_mib": m.peak_mib, "ok": m.ok, "failure": m.failure, "timings": t})).collect::<Vec<_>>(),
                "median_wall_s": b_wall, "median_peak_rss_mib": b_rss,
                "median_stages_s": stages.iter().map(|(s, v)| json!({"stage": s, "seconds": v})).collect::<Vec<_>>(),
            },
            "duckdb": {
                "runs": d_runs.iter().map(|(m, q)| json!({"wall_s": m.wall_s, "query_s": q, "peak_rss_mib": m.peak_mib})).collect::<Vec<_>>(),
                "median_wall_s": d_wall, "median_query_s": d_query, "median_peak_rss_mib": d_rss,
            },
            "check": check.as_ref().map(|(p, s)| json!({"differences": p.len(), "first": p.iter().take(20).collect::<Vec<_>>(), "summary": s})),
        }));
        if !stages.is_empty() {
            let total: f64 = stages.iter().map(|s| s.1).sum();
            let split: Vec<String> = stages.iter().map(|(s, v)| format!("{s} {v:.2}")).collect();
            table.push(format!("|   | stages (s, median): {} — sum {total:.2} |", split.join(" · ")));
        }
        fs::write(work.join("results.json"), serde_json::to_vec_pretty(&results).unwrap()).unwrap();
    }
    for w in &wdirs {
        stores(w);
    }
    println!(
        "\nmedian of {} interleaved runs, {nproc} cores; wall clock and peak RSS of the whole process (DuckDB: python + import included)\n",
        args.runs
    );
    println!("| events | billrun s | M ev/s | peak MiB | DuckDB s | M ev/s | peak MiB | DuckDB s ÷ billrun s | invoices |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in &table {
        println!("{l}");
    }
    println!("\nresults: {}", work.join("results.json").display());
    if failed_checks {
        std::process::exit(1);
    }
}
