//! Finance's tools over issued history: `billrun rerate` (fixtures/50-rerate, hand arithmetic in
//! its README), event corrections in nightly runs, the HTML report in headless Chromium, and
//! `billrun simulate` reproducing issued invoices.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::hostile::{chromium, dump_dom};
use crate::{copy_dir, repo, snapshot};

fn billrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_billrun"))
}

fn ok(c: &mut Command) -> std::process::Output {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn nightly(dir: &Path, as_of: &str) {
    ok(billrun().args(["run", "--config"]).arg(dir.join("billrun.toml")).args(["--as-of", as_of, "--out"]).arg(dir.join("out")));
}

fn event(id: &str, account: &str, ts: &str) -> String {
    format!("{{\"id\":\"{id}\",\"schemaName\":\"api_call\",\"accountId\":\"{account}\",\"timestamp\":\"{ts}\",\"attributes\":[],\"dimensions\":{{}}}}\n")
}

fn with_corrections(dir: &Path, lines: &str) {
    std::fs::create_dir_all(dir.join("corrections")).unwrap();
    std::fs::write(dir.join("corrections/2026-12.ndjson"), lines).unwrap();
    let cfg = dir.join("billrun.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[corrections]\npath = \"corrections\"\n")).unwrap();
}

fn without_rerates(m: std::collections::BTreeMap<String, Vec<u8>>) -> std::collections::BTreeMap<String, Vec<u8>> {
    m.into_iter().filter(|(k, _)| !k.starts_with("rerates/")).collect()
}

fn dec(v: &Value) -> rust_decimal::Decimal {
    billrun::doc::parse_decimal(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

#[test]
fn a_price_change_rerated_over_three_months_gives_hand_computed_deltas_and_touches_nothing_issued() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    copy_dir(&repo().join("fixtures/50-rerate"), dir);
    for d in ["2026-10-01", "2026-11-01", "2026-12-01"] {
        nightly(dir, d);
    }
    let out = dir.join("out");
    let before = snapshot(&out);
    // afterwards: two October calls of ACC-A arrive late, and b-sep-001 is undone
    std::fs::write(
        dir.join("usage/late.ndjson"),
        event("a-late-1", "ACC-A", "2026-10-20T10:00:00Z") + &event("a-late-2", "ACC-A", "2026-10-21T10:00:00Z"),
    )
    .unwrap();
    with_corrections(dir, "{\"action\":\"UNDO\",\"event\":{\"id\":\"b-sep-001\"}}\n");
    let o = ok(billrun()
        .args(["rerate", "--config"])
        .arg(dir.join("billrun.toml"))
        .args(["--from", "2026-09-01", "--to", "2026-12-01", "--catalog"])
        .arg(dir.join("proposed"))
        .arg("--out")
        .arg(&out)
        .arg("--json"));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();

    // per account (README): ACC-A +51.40, ACC-B +20.80, largest first
    let accounts: Vec<(String, String, String, String)> = r["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |k: &str| dec(&a[k]).to_string();
            (a["accountId"].as_str().unwrap().to_string(), s("issued"), s("rerated"), s("delta"))
        })
        .collect();
    let hand = |a: &str, i: &str, r: &str, d: &str| (a.to_string(), i.to_string(), r.to_string(), d.to_string());
    let norm = |v: Vec<(String, String, String, String)>| -> Vec<(String, String, String, String)> {
        v.into_iter()
            .map(|(a, i, r, d)| {
                let n = |x: &str| billrun::doc::parse_decimal(x).unwrap().normalize().to_string();
                (a, n(&i), n(&r), n(&d))
            })
            .collect()
    };
    assert_eq!(norm(accounts), norm(vec![hand("ACC-A", "230.00", "281.40", "51.40"), hand("ACC-B", "95.00", "115.80", "20.80")]));
    let plan = &r["plans"][0];
    assert_eq!(
        (dec(&plan["issued"]).normalize().to_string(), dec(&plan["rerated"]).normalize().to_string()),
        ("325".into(), "397.2".into())
    );

    // lines: each delta split into its causes
    let line = |inv: &str, id: &str| -> Value {
        let i = r["invoices"].as_array().unwrap().iter().find(|i| i["invoiceId"] == inv).unwrap_or_else(|| panic!("{inv}"));
        i["lines"].as_array().unwrap().iter().find(|l| l["id"] == id).unwrap().clone()
    };
    let parts = |l: &Value| -> Vec<String> {
        ["issued", "rerated", "lateUsage", "correctedEvents", "planChanged", "delta"]
            .iter()
            .map(|k| dec(&l[*k]).normalize().to_string())
            .collect()
    };
    assert_eq!(parts(&line("inv.ACC-A.2026-10-01", "urc.um.api_calls")), ["50", "62.4", "2", "0", "10.4", "12.4"]);
    assert_eq!(parts(&line("inv.ACC-B.2026-09-01", "urc.um.api_calls")), ["10", "10.8", "0", "-1", "1.8", "0.8"]);
    assert_eq!(parts(&line("inv.ACC-B.2026-11-01", "ff.addon.support")), ["20", "25", "0", "0", "5", "5"]);
    let reasons = |inv: &str| r["invoices"].as_array().unwrap().iter().find(|i| i["invoiceId"] == inv).unwrap()["reasons"].clone();
    assert_eq!(reasons("inv.ACC-A.2026-10-01"), serde_json::json!(["late usage", "plan changed"]));
    assert_eq!(reasons("inv.ACC-B.2026-09-01"), serde_json::json!(["corrected events", "plan changed"]));
    assert_eq!(reasons("inv.ACC-A.2026-11-01"), serde_json::json!(["plan changed"]));

    // the issued invoices and the ledger: byte for byte what they were
    let after = snapshot(&out);
    assert_eq!(without_rerates(after.clone()), before);
    let ns = "rerates/2026-09-01_2026-12-01";
    let csv = String::from_utf8(after[&format!("{ns}/diff.csv")].clone()).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12, "{csv}");
    assert!(
        csv.contains(
            "ACC-A,inv.ACC-A.2026-10-01,pp.simple,2026-10-01,2026-11-01,USD,urc.um.api_calls,API calls,50.00,62.40,12.40,2.00,0.00,10.40"
        ),
        "{csv}"
    );
    assert!(after.contains_key(&format!("{ns}/invoices/ACC-A/inv.ACC-A.2026-10-01.json")));

    // the report in a real browser: the table and the chart render, nothing is refused or thrown
    let html = out.join(ns).join("report.html");
    let browser = chromium();
    let dom = dump_dom(&browser, &html);
    assert_eq!(dom.matches("<rect class=\"bar issued\"").count(), 1, "one plan, one issued bar");
    assert_eq!(dom.matches("<rect class=\"bar rerated\"").count(), 1);
    assert!(dom.contains("<td>ACC-A</td>") && dom.contains("+51.40"), "{dom}");
    assert_eq!(dom.matches("<tr>").count(), 1 + 2 + 1 + 12, "header + 2 accounts + header + 12 changed lines");
    let profile = tempfile::tempdir().unwrap();
    let shot = t.path().join("report.png");
    let o = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    for bad in ["Uncaught", "Refused to", "CONSOLE"] {
        assert!(!log.contains(bad), "the page logged `{bad}`:\n{log}");
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot with content ({} bytes)", png.len());
    if let Ok(keep) = std::env::var("BILLRUN_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

#[test]
fn corrections_apply_before_rating_and_issued_cycles_report_the_corrected_difference() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    copy_dir(&repo().join("fixtures/50-rerate"), dir);
    for d in ["2026-10-01", "2026-11-01", "2026-12-01"] {
        nightly(dir, d);
    }
    let out = dir.join("out");
    let issued = std::fs::read(out.join("invoices/ACC-B/inv.ACC-B.2026-09-01.json")).unwrap();
    // UNDO a September call of ACC-B, REDO one of ACC-A (no change), move an October call from
    // ACC-B to ACC-A (REDO_EVENT), and undo an event that never was
    let moved = event("b-oct-001", "ACC-A", "2026-10-01T10:00:00Z");
    with_corrections(
        dir,
        &format!(
            "{{\"action\":\"UNDO\",\"event\":{{\"id\":\"b-sep-001\"}}}}\n{{\"action\":\"REDO\",\"event\":{{\"id\":\"a-sep-001\"}}}}\n{{\"action\":\"REDO_EVENT\",\"event\":{}}}\n{{\"action\":\"UNDO\",\"event\":{{\"id\":\"no-such-event\"}}}}\n",
            moved.trim()
        ),
    );
    nightly(dir, "2026-12-01");
    let m: Value = serde_json::from_slice(&std::fs::read(out.join("runs/2026-12-01/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["corrections"], serde_json::json!({"undone": 1, "redone": 1, "replaced": 1, "notFound": ["no-such-event"]}));
    // 30 + 50 + 90 + 10 + 20 + 5 = 205 events in the sources, one undone: 204 read, all used
    assert_eq!((m["events"]["read"].as_u64(), m["events"]["used"].as_u64()), (Some(204), Some(204)));
    // issued invoices stay; the corrected difference is reported per invoice and line
    assert_eq!(std::fs::read(out.join("invoices/ACC-B/inv.ACC-B.2026-09-01.json")).unwrap(), issued);
    let late: Value = serde_json::from_slice(&std::fs::read(out.join("runs/2026-12-01/late_usage.json")).unwrap()).unwrap();
    let deltas: Vec<(String, String)> = late
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["invoiceId"].as_str().unwrap().to_string(), dec(&l["delta"]).normalize().to_string()))
        .collect();
    assert_eq!(
        deltas,
        [
            ("inv.ACC-A.2026-10-01".to_string(), "1".to_string()),
            ("inv.ACC-B.2026-09-01".to_string(), "-1".to_string()),
            ("inv.ACC-B.2026-10-01".to_string(), "-1".to_string())
        ]
    );
}

#[test]
fn a_simulation_reproduces_each_issued_invoice_of_the_quickstart_exactly() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let cfg = repo().join("fixtures/01-quickstart/billrun.toml");
    ok(billrun().args(["run", "--config"]).arg(&cfg).arg("--out").arg(&out));
    for account in ["ACC-ACME-PROD", "ACC-ACME-STG", "ACC-GLOBEX"] {
        let inv: Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("invoices/{account}/inv.{account}.2026-10-01.json"))).unwrap()).unwrap();
        let o = ok(billrun().args(["simulate", "--config"]).arg(&cfg).args([
            "--plan",
            "pp.startup",
            "--account",
            account,
            "--from",
            "2026-10-01",
            "--to",
            "2026-11-01",
            "--json",
        ]));
        let s: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(s["total"], inv["totalAmount"], "{account}");
        // the same usage given by hand gives the same revenue, line by line
        let mut args = vec!["simulate".to_string(), "--config".into(), cfg.display().to_string(), "--plan".into(), "pp.startup".into()];
        args.extend(["--from".into(), "2026-10-01".into(), "--json".into()]);
        for (m, q) in s["usage"].as_object().unwrap() {
            args.push("--usage".into());
            args.push(format!("{m}={}", q.as_str().unwrap()));
        }
        let o = ok(billrun().args(&args));
        let direct: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(direct["total"], inv["totalAmount"], "{account}");
        assert_eq!(direct["invoices"][0]["revenueInfo"], s["invoices"][0]["revenueInfo"]);
    }
    // a proposal in another currency is refused clearly when the plan has no rates in it
    let o = billrun()
        .args(["simulate", "--config"])
        .arg(&cfg)
        .args(["--plan", "pp.startup", "--from", "2026-10-01", "--currency", "EUR"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no rates in EUR"));
}
