//! The `billrun` command line. Exit codes: 0 success; 1 `test` failures or `run --strict` with
//! rejected events; 2 invalid configuration, catalog or arguments; 3 I/O or runtime failure;
//! 4 another run holds the store or committed first.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use billrun::run::{load, run, RunError, RunOptions};

/// mimalloc: a run allocates millions of small objects (invoice trees, strings) from several
/// threads; glibc's malloc spent a fifth of a 100k-invoice run in allocation and page zeroing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "billrun", version, about = "Offline batch billing: Togai catalog and usage in, rated invoices out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bill run: read usage, rate every cycle up to the as-of date, write invoices.
    Run {
        /// The run configuration.
        #[arg(short, long, default_value = "billrun.toml")]
        config: PathBuf,
        /// The run happens at 00:00 of this date (org time zone); defaults to [run] as_of.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// Write the outputs here instead of the configured store.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fail without writing anything if any event is rejected.
        #[arg(long)]
        strict: bool,
        /// Print the run manifest as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Write the run's stage timings and peak memory (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        timings: Option<PathBuf>,
        /// Events held in memory at once (overrides [run] memory_rows); past it, files and S3
        /// objects are read twice and ingested in chunks, other inputs are partitioned by
        /// account into spill files.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        memory_rows: Option<u64>,
        /// Read every source once, partitioning by account past memory_rows (spill files),
        /// instead of reading files and S3 objects twice.
        #[arg(long)]
        one_pass: bool,
    },
    /// Check the configuration and catalog offline; report every problem at once.
    Validate {
        #[arg(short, long, default_value = "billrun.toml")]
        config: PathBuf,
    },
    /// Explain how an account's invoices for one cycle were computed (writes nothing).
    Explain {
        #[arg(short, long, default_value = "billrun.toml")]
        config: PathBuf,
        /// The account id.
        #[arg(long)]
        account: String,
        /// Any date inside the cycle (YYYY-MM-DD), e.g. its first day.
        #[arg(long, value_parser = parse_date)]
        cycle: NaiveDate,
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rate a past window again (current or proposed catalog) and report the differences with
    /// what was issued, into the store's rerates/<name>/; never touches the ledger.
    Rerate {
        #[arg(short, long, default_value = "billrun.toml")]
        config: PathBuf,
        /// Invoices whose period starts on or after this date.
        #[arg(long, value_parser = parse_date)]
        from: NaiveDate,
        /// … and before this date.
        #[arg(long, value_parser = parse_date)]
        to: NaiveDate,
        /// A proposed catalog folder (default: the configured catalog).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Usage as of this date (default: the ledger's last run).
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// The store (default: the configured one).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Name of the namespace under rerates/ (default <from>_<to>).
        #[arg(long)]
        name: Option<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Revenue of one cycle of a plan from usage given per meter, or looked up for an account.
    Simulate {
        #[arg(short, long, default_value = "billrun.toml")]
        config: PathBuf,
        /// The price plan id.
        #[arg(long)]
        plan: String,
        /// The cycle starts on this date.
        #[arg(long, value_parser = parse_date)]
        from: NaiveDate,
        /// With --account: events in [from, to).
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
        /// Currency (default: the account's, else the plan's first).
        #[arg(long)]
        currency: Option<String>,
        /// Usage of a meter, `METER=QUANTITY` (exact decimal); repeat for several meters.
        #[arg(long = "usage", value_parser = parse_usage)]
        usage: Vec<(String, rust_decimal::Decimal)>,
        /// Look the usage up for this account instead.
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run scenario folders and compare with their expected/ outputs.
    Test {
        /// Scenario folders, or folders containing them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Rewrite expected/ with what the run produces.
        #[arg(long)]
        bless: bool,
        /// Run every scenario with this many events in memory at once (1 partitions every
        /// input): the outputs must not change.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        memory_rows: Option<u64>,
    },
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("`{s}` is not a date (expected YYYY-MM-DD)"))
}

fn parse_usage(s: &str) -> Result<(String, rust_decimal::Decimal), String> {
    let (m, q) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected METER=QUANTITY"))?;
    let q = billrun::doc::parse_decimal(q.trim()).ok_or_else(|| format!("`{q}` is not an exact decimal number"))?;
    Ok((m.trim().to_string(), q))
}

fn fail(e: RunError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and the kernel then zeroes
    // 2 MiB on every first touch; a run's allocation churn made that an eighth of a 100k-invoice
    // run's time (`MIMALLOC_ALLOW_THP=0` does the same; measured ~12% faster, same peak memory).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    // `billrun test` runs many bill runs: only their errors are interesting there.
    let default_filter = if matches!(cli.command, Command::Test { .. } | Command::Explain { .. } | Command::Simulate { .. }) {
        "error"
    } else {
        "billrun=info,warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BILLRUN_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_target(false)
        .init();
    match cli.command {
        Command::Run { config, as_of, out, strict, json, timings, memory_rows, one_pass } => {
            let memory_rows = memory_rows.map(|n| n as usize);
            match run(&RunOptions { config, as_of, out, strict, memory_rows, one_pass, discard_invoices: true, ..Default::default() }) {
                Ok(r) => {
                    if let Some(path) = &timings {
                        let mut b = serde_json::to_vec_pretty(&r.timings).expect("json");
                        b.push(b'\n');
                        if let Err(e) = std::fs::write(path, b) {
                            eprintln!("error: writing {}: {e}", path.display());
                            return ExitCode::from(3);
                        }
                    }
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r.manifest).expect("json"));
                    } else {
                        let drafts = r.invoices.iter().filter(|b| b.invoice.status == "DRAFT").count();
                        eprintln!(
                            "{} invoices issued by this run, {drafts} DRAFT previews, in {} (ledger generation {}); {} events read, {} used, {} rejected",
                            r.issued,
                            r.store,
                            r.ledger.generation,
                            r.events_read,
                            r.events_used,
                            r.events_read - r.events_used
                        );
                    }
                    // the process ends here: the OS takes back the invoices, ledger and catalog
                    // at once, where dropping them piece by piece took seconds at 100k invoices
                    std::mem::forget(r);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Validate { config } => match load(&config) {
            Ok((_, cat)) => {
                eprintln!(
                    "{} is valid: {} event schemas, {} meters, {} price plans, {} accounts",
                    config.display(),
                    cat.event_schemas.len(),
                    cat.meters.len(),
                    cat.plans.len(),
                    cat.accounts.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Explain { config, account, cycle, as_of, json } => {
            match billrun::explain::explain(&RunOptions { config, as_of, ..Default::default() }, &account, cycle) {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    } else {
                        print!("{}", billrun::explain::to_text(&v));
                    }
                    ExitCode::SUCCESS
                }
                Err(billrun::explain::ExplainError::Run(e)) => fail(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Rerate { config, from, to, catalog, as_of, out, name, json } => {
            if to <= from {
                eprintln!("error: --to {to} is not after --from {from}");
                return ExitCode::from(2);
            }
            let opts = billrun::rerate::RerateOptions { config, from, to, catalog, as_of, out, name };
            match billrun::rerate::rerate(&opts) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r).expect("json"));
                    }
                    let changed = r.invoices.iter().filter(|i| !i.delta.is_zero()).count();
                    eprintln!("{} issued invoices re-rated, {changed} changed; report in {}", r.invoices.len(), r.written);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Simulate { config, plan, from, to, currency, usage, account, json } => {
            let opts = billrun::simulate::SimulateOptions { config, plan, from, to, currency, usage: usage.into_iter().collect(), account };
            match billrun::simulate::simulate(&opts) {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s).expect("json"));
                    } else {
                        print!("{}", billrun::simulate::to_text(&s));
                    }
                    ExitCode::SUCCESS
                }
                Err(billrun::simulate::SimulateError::Run(e)) => fail(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Test { paths, bless, memory_rows } => {
            let mode = billrun::scenario::Mode { memory_rows: memory_rows.map(|n| n as usize), ..Default::default() };
            let (_, failed) = billrun::scenario::run_scenarios_with(&paths, bless, mode);
            if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
