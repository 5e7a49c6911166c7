//! `billrun test`: run scenario folders through the real pipeline and compare every produced
//! file with the folder's `expected/` (a file in `expected/` that was not produced fails too);
//! `--bless` rewrites `expected/`. A `hand.toml` in the folder holds hand-computed totals that
//! are checked as well, so blessed files never replace arithmetic done by a person.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::run::{run, RunOptions, RunReport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hand {
    #[serde(default)]
    invoice: Vec<HandInvoice>,
    #[serde(default)]
    rejects: BTreeMap<String, u64>,
    /// What rating hands to settlement (`settlement.json`), each listed in full when present.
    #[serde(default)]
    credit_grant: Vec<HandGrant>,
    #[serde(default)]
    feature_credit: Vec<HandFeatureCredit>,
    #[serde(default)]
    refund: Vec<HandRefund>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandGrant {
    account: String,
    add_on: String,
    effective_from: String,
    /// A date, or "none" (NO_EXPIRY).
    effective_until: String,
    amount: String,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandFeatureCredit {
    account: String,
    feature: String,
    /// PRICE_PLAN or OVERAGE.
    source: String,
    effective_from: String,
    granted: String,
    used: String,
    balance: String,
    #[serde(default)]
    unbilled: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandRefund {
    account: String,
    add_on: String,
    date: String,
    mode: String,
    amount: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandInvoice {
    account: String,
    start_date: String,
    /// STANDARD (default) or STANDARD_ADVANCED.
    #[serde(default = "standard", rename = "type")]
    invoice_type: String,
    /// Needed only to tell apart invoices of one window and type (ad-hoc invoices).
    #[serde(default)]
    invoice_date: Option<String>,
    status: String,
    total: String,
    #[serde(default)]
    lines: BTreeMap<String, String>,
    #[serde(default)]
    usage: BTreeMap<String, String>,
}

fn standard() -> String {
    "STANDARD".into()
}

/// Scenario folders under the given paths: a folder with `billrun.toml`, or its subfolders.
pub fn discover(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.join("billrun.toml").is_file() {
            out.push(p.clone());
        } else if let Ok(rd) = std::fs::read_dir(p) {
            let mut subs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|s| s.join("billrun.toml").is_file()).collect();
            subs.sort();
            out.extend(subs);
        }
    }
    out
}

fn list_files(root: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else if let Ok(rel) = p.strip_prefix(root) {
                    out.insert(rel.to_string_lossy().replace('\\', "/"), p);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn dec(s: &str) -> Option<Decimal> {
    crate::doc::parse_decimal(s)
}

fn check_hand(dir: &Path, report: &RunReport, problems: &mut Vec<String>) {
    let path = dir.join("hand.toml");
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    let hand: Hand = match toml::from_str(&text) {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    let mut seen = 0;
    for h in &hand.invoice {
        let Some(b) = report.invoices.iter().find(|b| {
            b.invoice.account_id == h.account
                && b.invoice.start_date.to_string() == h.start_date
                && b.invoice.invoice_type == h.invoice_type
                && h.invoice_date.as_ref().is_none_or(|d| *d == b.invoice.invoice_date.to_string())
        }) else {
            problems.push(format!("hand.toml: no {} invoice for account {} starting {}", h.invoice_type, h.account, h.start_date));
            continue;
        };
        seen += 1;
        let inv = &b.invoice;
        let who = format!("{} invoice {} {}", h.invoice_type, h.account, h.start_date);
        if inv.status != h.status {
            problems.push(format!("{who}: status {} (hand: {})", inv.status, h.status));
        }
        if dec(&h.total) != Some(b.total) {
            problems.push(format!("{who}: total {} (hand: {})", inv.total_amount, h.total));
        }
        for (name, amount) in &h.lines {
            match b.lines.iter().find(|(n, _)| n == name) {
                None => problems.push(format!("{who}: no line `{name}`")),
                Some((_, a)) if Some(*a) != dec(amount) => problems.push(format!("{who}: line `{name}` = {a} (hand: {amount})")),
                _ => {}
            }
        }
        for (meter, q) in &h.usage {
            let got = inv.usage_info.iter().find(|u| u.id.as_deref() == Some(meter.as_str())).and_then(|u| dec(&u.value));
            if got != dec(q) {
                problems.push(format!("{who}: usage of `{meter}` = {got:?} (hand: {q})"));
            }
        }
    }
    if seen != report.invoices.len() {
        problems.push(format!("the run produced {} invoices, hand.toml lists {}", report.invoices.len(), hand.invoice.len()));
    }
    check_handoff(&hand, report, problems);
    let got: BTreeMap<String, u64> = report.counts.iter().map(|(r, n)| (r.as_str().to_string(), *n)).collect();
    if got != hand.rejects {
        problems.push(format!("rejects {got:?} (hand: {:?})", hand.rejects));
    }
}

fn check_handoff(hand: &Hand, report: &RunReport, problems: &mut Vec<String>) {
    let mut all = crate::handoff::Handoff::default();
    for b in &report.invoices {
        all.extend(&b.handoff);
    }
    let same = |a: &str, b: &str| dec(a).is_some() && dec(a) == dec(b);
    for h in &hand.credit_grant {
        let found = all.credit_grants.iter().any(|g| {
            g.account_id == h.account
                && g.add_on_id == h.add_on
                && g.effective_from.to_string() == h.effective_from
                && g.effective_until.map_or("none".to_string(), |d| d.to_string()) == h.effective_until
                && same(&g.amount, &h.amount)
                && g.status == h.status
        });
        if !found {
            problems.push(format!("hand.toml: no credit grant {h:?} (produced: {:?})", all.credit_grants));
        }
    }
    for h in &hand.feature_credit {
        let found = all.feature_credits.iter().any(|f| {
            f.account_id == h.account
                && f.feature_id == h.feature
                && f.source == h.source
                && f.effective_from.to_string() == h.effective_from
                && same(&f.granted, &h.granted)
                && same(&f.used, &h.used)
                && same(&f.balance, &h.balance)
                && match (&f.unbilled, &h.unbilled) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same(a, b),
                    _ => false,
                }
        });
        if !found {
            problems.push(format!("hand.toml: no feature credit entry {h:?} (produced: {:?})", all.feature_credits));
        }
    }
    for h in &hand.refund {
        let found = all.refunds.iter().any(|r| {
            r.account_id == h.account
                && r.add_on_id == h.add_on
                && r.date.to_string() == h.date
                && r.mode == h.mode
                && same(&r.amount, &h.amount)
        });
        if !found {
            problems.push(format!("hand.toml: no refund {h:?} (produced: {:?})", all.refunds));
        }
    }
    for (what, hand_n, got_n) in [
        ("credit grants", hand.credit_grant.len(), all.credit_grants.len()),
        ("feature credit entries", hand.feature_credit.len(), all.feature_credits.len()),
        ("refunds", hand.refund.len(), all.refunds.len()),
    ] {
        if hand_n != got_n {
            problems.push(format!("the run handed {got_n} {what} to settlement, hand.toml lists {hand_n}"));
        }
    }
}

fn diff(name: &str, expected: &str, got: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, got);
    let mut s = format!("--- expected/{name}\n+++ produced/{name}\n");
    for hunk in d.unified_diff().context_radius(2).iter_hunks().take(6) {
        s.push_str(&hunk.to_string());
    }
    s
}

/// Run one scenario; `Ok(problems)` (empty when it passes).
pub fn check_scenario(dir: &Path, bless: bool) -> Result<Vec<String>, String> {
    let out =
        std::env::temp_dir().join(format!("billrun-test-{}-{}", std::process::id(), crate::run::safe_segment(&dir.display().to_string())));
    let report =
        run(&RunOptions { config: dir.join("billrun.toml"), out: Some(out.clone()), ..Default::default() }).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    check_hand(dir, &report, &mut problems);
    let expected_dir = dir.join("expected");
    let produced = list_files(&out);
    if bless {
        let _ = std::fs::remove_dir_all(&expected_dir);
        for (rel, p) in &produced {
            let dest = expected_dir.join(rel);
            std::fs::create_dir_all(dest.parent().expect("parent")).map_err(|e| e.to_string())?;
            std::fs::copy(p, &dest).map_err(|e| e.to_string())?;
        }
    } else {
        let expected = list_files(&expected_dir);
        if expected.is_empty() {
            problems.push("no expected/ outputs (run with --bless to create them)".into());
        }
        for (rel, p) in &produced {
            match expected.get(rel) {
                None if !expected.is_empty() => problems.push(format!("produced {rel}, which expected/ does not have")),
                None => {}
                Some(e) => {
                    let (a, b) = (std::fs::read(e).unwrap_or_default(), std::fs::read(p).unwrap_or_default());
                    if a != b {
                        problems.push(diff(rel, &String::from_utf8_lossy(&a), &String::from_utf8_lossy(&b)));
                    }
                }
            }
        }
        for rel in expected.keys() {
            if !produced.contains_key(rel) {
                problems.push(format!("expected/{rel} was not produced"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(problems)
}

/// Run scenarios, print a report per failure and the closing line; returns (passed, failed).
pub fn run_scenarios(paths: &[PathBuf], bless: bool) -> (usize, usize) {
    let dirs = discover(paths);
    let (mut passed, mut failed) = (0, 0);
    for d in &dirs {
        match check_scenario(d, bless) {
            Ok(p) if p.is_empty() => {
                passed += 1;
                eprintln!("ok     {}", d.display());
            }
            Ok(p) => {
                failed += 1;
                eprintln!("FAILED {}", d.display());
                for x in p {
                    eprintln!("  {}", x.replace('\n', "\n  "));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("FAILED {}: the run failed: {e}", d.display());
            }
        }
    }
    if dirs.is_empty() {
        eprintln!("no scenario folders (with billrun.toml) found");
    }
    println!("{passed} passed, {failed} failed");
    (passed, failed)
}
