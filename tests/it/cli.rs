//! The command line as a new user meets it.

use std::process::Command;

use crate::{copy_dir, repo};

fn billrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_billrun"))
}

#[test]
fn run_writes_invoices_for_the_shipped_example() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let st =
        billrun().args(["run", "--config", "fixtures/01-quickstart/billrun.toml", "--out"]).arg(&out).current_dir(repo()).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let inv = out.join("invoices/ACC-ACME-PROD");
    let names: Vec<String> = std::fs::read_dir(&inv).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    for ext in ["json", "html", "txt"] {
        assert!(names.iter().any(|n| n.ends_with(ext)), "{names:?}");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(inv.join("inv.ACC-ACME-PROD.2026-10-01.json")).unwrap()).unwrap();
    assert_eq!(json["totalAmount"], "63.59");
    assert_eq!(json["status"], "DUE");
    assert_eq!(json["revenueInfo"]["type"], "GRAND_TOTAL_AMOUNT");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("runs/2026-11-06/manifest.json")).unwrap()).unwrap();
    let ev = &manifest["events"];
    assert_eq!(ev["read"].as_u64().unwrap(), ev["used"].as_u64().unwrap() + ev["rejected"].as_u64().unwrap());
}

#[test]
fn validate_reports_every_problem_with_file_and_path() {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/01-quickstart"), t.path());
    let plans = t.path().join("catalog/price-plans.yaml");
    let text = std::fs::read_to_string(&plans).unwrap();
    let broken = text.replacen("pricingModel: TIERED", "pricingModel: TIERD", 1).replacen(
        "gracePeriod: 5",
        "gracePeriod: 5\n      bogusField: 1",
        1,
    );
    std::fs::write(&plans, broken).unwrap();
    let out = billrun().args(["validate", "--config"]).arg(t.path().join("billrun.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("price-plans.yaml"), "{err}");
    assert!(err.contains("unknown field `bogusField`"), "{err}");
}

#[test]
fn validate_accepts_every_fixture() {
    for e in std::fs::read_dir(repo().join("fixtures")).unwrap().flatten() {
        let cfg = e.path().join("billrun.toml");
        if !cfg.exists() {
            continue;
        }
        let out = billrun().args(["validate", "--config"]).arg(&cfg).output().unwrap();
        assert!(out.status.success(), "{}: {}", cfg.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn unsupported_rate_cards_are_refused_not_ignored() {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/01-quickstart"), t.path());
    // a named license is not built: refused; a credit grant without grantDetails: a clear error
    std::fs::write(
        t.path().join("catalog/extra.yaml"),
        "addOns:\n  - {id: addon.named, name: named, type: NAMED_LICENSE}\npricePlans:\n  - id: pp.lic\n    name: Seats\n    pricingCycleConfig: {interval: MONTHLY, gracePeriod: 1}\n    supportedCurrencies: [USD]\n    rateCards:\n      - type: LICENSE\n        rateCardDetails:\n          licenseRateCard: {id: addon.named, enableProration: false, ratePlan: {pricingModel: TIERED, slabs: [{order: 1, startAfter: 0, priceType: PER_UNIT}]}, rateValues: [{currency: USD, slabRates: [{order: 1, rate: 1}]}]}\n      - type: CREDIT_GRANT\n        rateCardDetails:\n          creditGrantRateCard: {id: addon.credits}\n",
    )
    .unwrap();
    let out = billrun().args(["validate", "--config"]).arg(t.path().join("billrun.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("extra.yaml") && err.contains("named licenses are not supported yet"), "{err}");
    assert!(err.contains("creditGrantRateCard") && err.contains("grantDetails"), "{err}");
}

#[test]
fn test_subcommand_prints_the_closing_line_and_fails_on_a_changed_price() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    copy_dir(&repo().join("fixtures/02-tiered-per-unit-edges"), &dir);
    let ok = billrun().args(["test", "--bless"]).arg(&dir).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "1 passed, 0 failed");
    let plans = dir.join("catalog");
    for e in std::fs::read_dir(&plans).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        std::fs::write(e.path(), text.replace("rate: 0.40}", "rate: 0.45}")).unwrap();
    }
    let bad = billrun().arg("test").arg(&dir).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stdout).trim(), "0 passed, 1 failed");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--- expected/") && err.contains("(hand:"), "{err}");
}

#[test]
fn explain_shows_the_slab_split_clamps_and_rounding() {
    let out = billrun()
        .args(["explain", "--config", "fixtures/06-slab-min-max/billrun.toml", "--account", "ACC-1", "--cycle", "2026-10-15"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Slab 1 (0 – 100] PER_UNIT: 30 × 0.1 = 3"), "{text}");
    assert!(text.contains("Slab 1 minimum rate applied: adjustment 2"), "{text}");
    assert!(text.contains("exact 5 → billed 5.00"), "{text}");
    let json = billrun()
        .args(["explain", "--json", "--config", "fixtures/20-fixed-fees/billrun.toml", "--account", "ACC-B", "--cycle", "2026-10-18"])
        .current_dir(repo())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let line = &v["invoices"][0]["lines"][0];
    assert_eq!(line["metadata"]["prorationFactor"], "14/31");
    assert_eq!(line["exactValue"], "686/31");
    assert_eq!(line["billed"], "22.13");
}

#[test]
fn retain_start_offsets_without_a_previous_schedule_is_refused() {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/28-schedules"), t.path());
    let cat = t.path().join("catalog/catalog.yaml");
    let text =
        std::fs::read_to_string(&cat).unwrap().replace("{id: sch.r1, pricePlanId", "{id: sch.r1, retainStartOffsets: true, pricePlanId");
    std::fs::write(&cat, text).unwrap();
    let out = billrun().args(["validate", "--config"]).arg(t.path().join("billrun.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accountSchedules.ACC-R.sch.r1") && err.contains("retainStartOffsets needs another schedule"), "{err}");
}
