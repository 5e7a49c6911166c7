//! The nightly bill run: exactly-once issuance over consecutive as-of dates, re-runs that
//! rewrite nothing, crashes (SIGKILL at every stage) and two runs started together, and late
//! usage for issued cycles. Over fixtures/40-credits (credits carried across three runs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{copy_dir, repo, snapshot};

const DATES: [&str; 3] = ["2026-10-01", "2026-11-01", "2026-12-01"];

fn billrun(dir: &Path, as_of: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_billrun"));
    c.args(["run", "--config"]).arg(dir.join("billrun.toml")).args(["--as-of", as_of, "--out"]).arg(dir.join("out"));
    c.env_remove("BILLRUN_PAUSE_AT").env_remove("BILLRUN_PAUSE_SECS");
    c
}

fn run_ok(dir: &Path, as_of: &str) {
    let o = billrun(dir, as_of).output().unwrap();
    assert!(o.status.success(), "run as of {as_of}: {}", String::from_utf8_lossy(&o.stderr));
}

fn scenario() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/40-credits"), t.path());
    t
}

fn json(store: &Path, key: &str) -> Value {
    serde_json::from_slice(&std::fs::read(store.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"))).unwrap()
}

/// The store after the three runs without interruption.
fn reference() -> BTreeMap<String, Vec<u8>> {
    let t = scenario();
    for d in DATES {
        run_ok(t.path(), d);
    }
    snapshot(&t.path().join("out"))
}

#[test]
fn three_nightly_runs_carry_credits_forward_and_continue_the_sequence() {
    let t = scenario();
    let out = t.path().join("out");
    let mut seen = BTreeMap::new();
    let mut issued: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, d) in DATES.iter().enumerate() {
        run_ok(t.path(), d);
        let ledger = json(&out, &format!("ledger/{:010}.json", i + 1));
        assert_eq!(ledger["generation"], i as u64 + 1);
        assert_eq!(ledger["asOf"], *d);
        assert_eq!(ledger["nextSequence"], i as u64 + 2, "one invoice issued per run, numbers without gaps");
        seen.insert(*d, ledger["credits"]["CR-WELCOME"]["remaining"].as_str().unwrap().to_string());
        // invoices issued before stay byte for byte what they were
        let files = snapshot(&out);
        assert_eq!(files.keys().filter(|k| k.starts_with("invoices/")).count(), 3 * (i + 1), "three files per issued invoice");
        for (k, v) in files.into_iter().filter(|(k, _)| k.starts_with("invoices/")) {
            if let Some(old) = issued.get(&k) {
                assert!(*old == v, "{k} was rewritten");
            }
            issued.insert(k, v);
        }
    }
    // 150 − 25 after September, − 70 after October, the last 55 in November (README)
    assert_eq!(seen["2026-10-01"], "125.00");
    assert_eq!(seen["2026-11-01"], "55.00");
    assert_eq!(seen["2026-12-01"], "0.00");
    let seqs: Vec<String> = ["2026-09-01", "2026-10-01", "2026-11-01"]
        .iter()
        .map(|s| json(&out, &format!("invoices/ACC-A/inv.ACC-A.{s}.json"))["sequenceId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seqs, ["INV-2026-00001", "INV-2026-00002", "INV-2026-00003"]);
    let nov = json(&out, "invoices/ACC-A/inv.ACC-A.2026-11-01.json");
    assert_eq!(nov["totalAmount"], "35.00");

    // running the last night again issues nothing and rewrites no byte (not even a timestamp)
    let before = snapshot(&out);
    let mtimes = |p: &Path| -> Vec<std::time::SystemTime> {
        let mut v = Vec::new();
        for k in before.keys() {
            v.push(std::fs::metadata(p.join(k)).unwrap().modified().unwrap());
        }
        v
    };
    let m0 = mtimes(&out);
    run_ok(t.path(), "2026-12-01");
    assert_eq!(snapshot(&out), before);
    assert_eq!(mtimes(&out), m0, "no file was rewritten");
    // and an earlier date is refused: the ledger is already past it
    let o = billrun(t.path(), "2026-11-01").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ledger is at as-of 2026-12-01"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Start the last night's run paused at `point`, kill it with SIGKILL there, then run it again.
fn crash_at(point: &str) -> BTreeMap<String, Vec<u8>> {
    let t = scenario();
    run_ok(t.path(), DATES[0]);
    run_ok(t.path(), DATES[1]);
    let mut child = billrun(t.path(), DATES[2]).env("BILLRUN_PAUSE_AT", point).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("{point}: the run ended without reaching its pause point:\n{log}");
        }
        log.push_str(&line);
        if line.contains(&format!("paused at {}", point.split(':').next().unwrap())) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    run_ok(t.path(), DATES[2]);
    snapshot(&t.path().join("out"))
}

#[test]
fn a_run_killed_at_any_stage_then_run_again_ends_as_if_uninterrupted() {
    let want = reference();
    for point in ["reading", "rating", "settling", "writing:1", "writing:4", "committing", "committed"] {
        let got = crash_at(point);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "killed at {point}: the same files");
        for (k, v) in &want {
            assert!(got[k] == *v, "killed at {point}: {k} differs from the uninterrupted run");
        }
    }
}

#[test]
fn of_two_runs_of_the_same_date_exactly_one_commits() {
    // one run holds the store while the other starts: the second is refused, nothing half-written
    // (15 s of pause leave the second run time to read and rate on a loaded machine)
    let t = scenario();
    run_ok(t.path(), DATES[0]);
    let mut first = billrun(t.path(), DATES[1])
        .env("BILLRUN_PAUSE_AT", "settling")
        .env("BILLRUN_PAUSE_SECS", "15")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused at settling") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the first run never paused");
    }
    let second = billrun(t.path(), DATES[1]).output().unwrap();
    let msg = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{msg}");
    assert!(msg.contains("another run is writing this store"), "{msg}");
    assert!(first.wait().unwrap().success());
    let out = t.path().join("out");
    let ledgers: Vec<String> = snapshot(&out).into_keys().filter(|k| k.starts_with("ledger/")).collect();
    assert_eq!(ledgers, ["ledger/0000000001.json", "ledger/0000000002.json"]);

    // started together: one commits generation 3, the other is refused or finds nothing to do
    let t2 = scenario();
    for d in &DATES[..2] {
        run_ok(t2.path(), d);
    }
    let a = billrun(t2.path(), DATES[2]).stderr(Stdio::piped()).spawn().unwrap();
    let b = billrun(t2.path(), DATES[2]).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        let code = o.status.code();
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(code == Some(0) || (code == Some(4) && msg.contains("another run")), "{code:?}: {msg}");
    }
    assert!(a.status.success() || b.status.success());
    assert_eq!(snapshot(&t2.path().join("out")), reference(), "the store is exactly that of one run");
}

#[test]
fn late_usage_never_rewrites_an_issued_invoice_and_is_reported_or_adjusted() {
    let late = "{\"id\":\"oct-late-1\",\"schemaName\":\"api_call\",\"accountId\":\"ACC-A\",\"timestamp\":\"2026-10-20T10:00:00Z\",\"attributes\":[],\"dimensions\":{}}\n{\"id\":\"oct-late-2\",\"schemaName\":\"api_call\",\"accountId\":\"ACC-A\",\"timestamp\":\"2026-10-21T10:00:00Z\",\"attributes\":[],\"dimensions\":{}}\n";
    for adjust in [false, true] {
        let t = scenario();
        if adjust {
            let cfg = t.path().join("billrun.toml");
            let text = std::fs::read_to_string(&cfg).unwrap();
            std::fs::write(&cfg, format!("{text}\n[settlement]\nlate_usage = \"adjust\"\n")).unwrap();
        }
        run_ok(t.path(), DATES[0]);
        run_ok(t.path(), DATES[1]);
        let out = t.path().join("out");
        let october = std::fs::read(out.join("invoices/ACC-A/inv.ACC-A.2026-10-01.json")).unwrap();
        // two October events arrive after October was issued
        std::fs::write(t.path().join("usage/2026-10-late.ndjson"), late).unwrap();
        run_ok(t.path(), DATES[2]);
        assert_eq!(std::fs::read(out.join("invoices/ACC-A/inv.ACC-A.2026-10-01.json")).unwrap(), october, "issued stays issued");
        let report = json(&out, "runs/2026-12-01/late_usage.json");
        let r = &report.as_array().unwrap()[0];
        assert_eq!(report.as_array().unwrap().len(), 1, "{report}");
        assert_eq!(r["invoiceId"], "inv.ACC-A.2026-10-01");
        // 52 calls instead of 50 at 1.00
        assert_eq!(
            (r["issued"].as_str().unwrap(), r["recomputed"].as_str().unwrap(), r["delta"].as_str().unwrap()),
            ("70.00", "72.00", "2.00")
        );
        if !adjust {
            assert_eq!(r["action"], "REPORTED");
            assert!(r.get("adjustments").is_none());
            assert!(!out.join("invoices/ACC-A/inv.ACC-A.2026-10-01.adj.1.json").exists());
            continue;
        }
        assert_eq!(r["action"], "ADJUSTED");
        assert_eq!(r["adjustments"], serde_json::json!(["inv.ACC-A.2026-10-01.adj.1"]));
        let adj = json(&out, "invoices/ACC-A/inv.ACC-A.2026-10-01.adj.1.json");
        assert_eq!(adj["invoiceType"], "AD_HOC");
        assert_eq!(adj["metadata"]["adjusts"], "inv.ACC-A.2026-10-01");
        let gross = &adj["revenueInfo"]["lineItems"][0]["lineItems"][0]["lineItems"][0];
        assert_eq!(gross["value"], "2.00", "{adj}");
        // the adjustment is issued once: the same night again changes nothing
        let before = snapshot(&out);
        run_ok(t.path(), DATES[2]);
        assert_eq!(snapshot(&out), before);
    }
}

#[test]
fn duckdb_reads_the_line_item_export_as_it_is() {
    let t = scenario();
    for d in DATES {
        run_ok(t.path(), d);
    }
    // DuckDB of the Snowflake emulator's venv (scripts/test installs it): one row per billed line,
    // exact decimals, the lines of each invoice adding up to its total
    let glob = t.path().join("out/runs/*/line_items.parquet");
    let sql = format!(
        "select invoice_id, sequence_id, sum(amount)::varchar, count(*), typeof(any_value(amount)) from '{}' group by all order by 1",
        glob.display()
    );
    let o = Command::new(crate::connectors::env("BILLRUN_TEST_SF_PYTHON"))
        .args(["-c", "import duckdb,sys; [print('|'.join(map(str, r))) for r in duckdb.sql(sys.argv[1]).fetchall()]", &sql])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        got,
        "inv.ACC-A.2026-09-01|INV-2026-00001|0.0000|4|DECIMAL(38,4)\n\
         inv.ACC-A.2026-10-01|INV-2026-00002|0.0000|3|DECIMAL(38,4)\n\
         inv.ACC-A.2026-11-01|INV-2026-00003|35.0000|4|DECIMAL(38,4)\n"
    );
}

/// `[output] invoice_documents = "bundles"`: the three nights write the very documents of the
/// per-invoice layout, packed in tars; everything else a run derives from them is the same; a
/// re-run reads issued invoices back out of the bundles and rewrites nothing.
#[test]
fn bundled_invoice_documents_hold_the_per_invoice_documents() {
    let files = reference();
    let t = scenario();
    let cfg = t.path().join("billrun.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[output]\ninvoice_documents = \"bundles\"\n");
    std::fs::write(&cfg, text).unwrap();
    for d in DATES {
        run_ok(t.path(), d);
    }
    let out = t.path().join("out");
    let got = snapshot(&out);
    let mut members = BTreeMap::new();
    let mut bundles = Vec::new();
    for (k, v) in got.iter().filter(|(k, _)| k.starts_with("invoices/")) {
        bundles.push(k.clone());
        for (name, doc) in billrun::bundle::unpack(k, v).unwrap() {
            // as `snapshot` reads the per-invoice files (compact JSON indented)
            let doc = billrun::scenario::comparable(&name, doc);
            assert!(members.insert(format!("invoices/{name}"), doc).is_none(), "{name} is in two bundles");
        }
    }
    // one bundle per night (one invoice each), named by as-of and ledger generation
    assert_eq!(
        bundles,
        [
            "invoices/2026-10-01/000001-00000.tar.zst",
            "invoices/2026-11-01/000002-00000.tar.zst",
            "invoices/2026-12-01/000003-00000.tar.zst"
        ]
    );
    let want: BTreeMap<String, Vec<u8>> =
        files.iter().filter(|(k, _)| k.starts_with("invoices/")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(members.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let differ: Vec<&String> = members.iter().filter(|(k, v)| want.get(*k) != Some(*v)).map(|(k, _)| k).collect();
    assert!(differ.is_empty(), "these bundled documents differ from the per-invoice files: {differ:?}");
    for (k, v) in files.iter().filter(|(k, _)| k.starts_with("runs/") && !k.ends_with("manifest.json")) {
        assert!(got.get(k) == Some(v), "{k} differs between the layouts");
    }
    // the ledger indexes each document inside its bundle
    let ledger = json(&out, "ledger/0000000003.json");
    // (the November cycle is issued by the run as of December 1: ledger generation 3)
    let idx = &ledger["issued"]["inv.ACC-A.2026-11-01"]["files"];
    assert!(idx.get("invoices/2026-12-01/000003-00000.tar.zst#ACC-A/inv.ACC-A.2026-11-01.json").is_some(), "{idx}");

    // a re-run of the last night issues nothing, so it reads the line items back from the bundle
    std::fs::remove_file(out.join("runs/2026-12-01/line_items.parquet")).unwrap();
    run_ok(t.path(), "2026-12-01");
    assert_eq!(snapshot(&out), got);
}
