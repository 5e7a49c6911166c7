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
    /// As-of dates run one after another into the same store (default: the config's as-of).
    #[serde(default)]
    runs: Vec<String>,
    #[serde(default)]
    invoice: Vec<HandInvoice>,
    /// Credits in the ledger after the last run.
    #[serde(default)]
    credit: Vec<HandCredit>,
    /// Wallet balances after the last run.
    #[serde(default)]
    wallet: Vec<HandWallet>,
    /// Late-usage reports of the last run.
    #[serde(default)]
    late_usage: Vec<HandLate>,
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
struct HandCredit {
    id: String,
    remaining: String,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandWallet {
    account: String,
    balance: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandLate {
    invoice: String,
    delta: String,
    action: String,
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
    /// The sequence id, when hand-checked.
    #[serde(default)]
    sequence: Option<String>,
    /// Paid from the wallet.
    #[serde(default)]
    paid: Option<String>,
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
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue; // the store's lock and temporary files
                }
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

/// A produced file as the fixtures keep it: a run manifest without its `performance` (the
/// timings of one execution); other JSON indented; every other file as it is.
pub fn comparable(rel: &str, bytes: Vec<u8>) -> Vec<u8> {
    if !rel.ends_with(crate::run::MANIFEST) {
        // invoice documents and ledger generations are written compact: kept indented in
        // expected/ for review, with their keys in the order written (a transcode, not a round
        // trip through a sorted map)
        let compact = bytes.iter().rev().skip(1).all(|b| *b != b'\n');
        if rel.ends_with(".json") && compact {
            let mut out = Vec::with_capacity(bytes.len() * 2);
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            if serde_transcode::transcode(&mut de, &mut serde_json::Serializer::pretty(&mut out)).is_ok() {
                out.push(b'\n');
                return out;
            }
        }
        return bytes;
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) if v.get(crate::run::PERFORMANCE).is_some() => {
            v.as_object_mut().expect("an object").remove(crate::run::PERFORMANCE);
            let mut b = serde_json::to_vec_pretty(&v).expect("json");
            b.push(b'\n');
            b
        }
        _ => bytes,
    }
}

fn dec(s: &str) -> Option<Decimal> {
    crate::doc::parse_decimal(s)
}

fn read_hand(dir: &Path) -> Result<Option<Hand>, String> {
    let path = dir.join("hand.toml");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    toml::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}

/// Check the hand-computed expectations against the runs' reports: the invoices each run
/// issued, the last run's drafts, and the last run's ledger.
fn check_hand(hand: &Hand, reports: &[RunReport], problems: &mut Vec<String>) {
    let Some(last) = reports.last() else { return };
    let mut invoices: Vec<&crate::invoice::BuiltInvoice> = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        invoices.extend(r.invoices.iter().filter(|b| b.invoice.status != "DRAFT" || i + 1 == reports.len()));
    }
    let mut seen = 0;
    for h in &hand.invoice {
        let Some(b) = invoices.iter().find(|b| {
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
        if h.sequence.is_some() && h.sequence != inv.sequence_id {
            problems.push(format!("{who}: sequence {:?} (hand: {:?})", inv.sequence_id, h.sequence));
        }
        if let Some(p) = &h.paid {
            if inv.paid_amount.as_deref().and_then(dec) != dec(p) {
                problems.push(format!("{who}: paid {:?} (hand: {p})", inv.paid_amount));
            }
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
    if seen != invoices.len() {
        problems.push(format!("the runs produced {} invoices, hand.toml lists {}", invoices.len(), hand.invoice.len()));
    }
    check_handoff(hand, last, problems);
    let got: BTreeMap<String, u64> = last.counts.iter().map(|(r, n)| (r.as_str().to_string(), *n)).collect();
    if got != hand.rejects {
        problems.push(format!("rejects {got:?} (hand: {:?})", hand.rejects));
    }
    for h in &hand.credit {
        match last.ledger.credits.get(&h.id) {
            None => problems.push(format!("hand.toml: no credit `{}` in the ledger", h.id)),
            Some(c) if Some(c.remaining) != dec(&h.remaining) || c.status != h.status => {
                problems.push(format!("credit `{}`: remaining {} {} (hand: {} {})", h.id, c.remaining, c.status, h.remaining, h.status))
            }
            Some(_) => {}
        }
    }
    for h in &hand.wallet {
        let got = last.ledger.wallets.get(&h.account).map(|w| w.balance);
        if got != dec(&h.balance) {
            problems.push(format!("wallet of {}: balance {got:?} (hand: {})", h.account, h.balance));
        }
    }
    for h in &hand.late_usage {
        if !last.late.iter().any(|l| l.invoice_id == h.invoice && Some(l.delta) == dec(&h.delta) && l.action == h.action) {
            problems.push(format!("hand.toml: no late usage {h:?} (reported: {:?})", last.late));
        }
    }
    if hand.late_usage.len() != last.late.len() {
        problems.push(format!("the last run reported {} late-usage invoices, hand.toml lists {}", last.late.len(), hand.late_usage.len()));
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

/// Every line item of an invoice JSON by its path of descriptions (`Grand total › … › API calls`),
/// with its value; plus the invoice's status, total and sequence id.
fn money_lines(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(l: &serde_json::Value, path: &str, out: &mut BTreeMap<String, String>) {
        let d = l["description"].as_str().unwrap_or("?");
        let p = if path.is_empty() { d.to_string() } else { format!("{path} › {d}") };
        let mut key = p.clone();
        let mut n = 2;
        while out.contains_key(&key) {
            key = format!("{p} #{n}");
            n += 1;
        }
        out.insert(key, l["value"].as_str().unwrap_or_default().to_string());
        for c in l["lineItems"].as_array().into_iter().flatten() {
            walk(c, &p, out);
        }
    }
    let mut out = BTreeMap::new();
    for k in ["status", "sequenceId", "totalAmount", "paidAmount"] {
        if let Some(x) = v[k].as_str() {
            out.insert(k.to_string(), x.to_string());
        }
    }
    walk(&v["revenueInfo"], "", &mut out);
    out
}

/// For two invoice JSON texts: the lines whose money (or status) differs, one per row.
fn money_diff(expected: &str, got: &str) -> Option<String> {
    let (a, b) = (serde_json::from_str(expected).ok()?, serde_json::from_str(got).ok()?);
    let (a, b) = (money_lines(&a), money_lines(&b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut s = String::new();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => s.push_str(&format!(
                "  {k}: expected {}, produced {}\n",
                x.map_or("(none)", String::as_str),
                y.map_or("(none)", String::as_str)
            )),
        }
    }
    (!s.is_empty()).then_some(s)
}

fn diff(name: &str, expected: &str, got: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, got);
    let mut s = format!("--- expected/{name}\n+++ produced/{name}\n");
    for hunk in d.unified_diff().context_radius(2).iter_hunks().take(6) {
        s.push_str(&hunk.to_string());
    }
    s
}

/// How the scenarios' inputs are read: the outputs must not depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// Events in memory at once (1 splits every input: in chunks of arrival where files are
    /// read twice, else by account into spill files).
    pub memory_rows: Option<usize>,
    /// Every source read once (partitioned by account past `memory_rows`).
    pub one_pass: bool,
    /// Every meter evaluated in polars, also the simple ones (`RunOptions::polars_meters`).
    pub polars_meters: bool,
}

/// Run one scenario; `Ok(problems)` (empty when it passes).
pub fn check_scenario(dir: &Path, bless: bool, mode: Mode) -> Result<Vec<String>, String> {
    let out =
        std::env::temp_dir().join(format!("billrun-test-{}-{}", std::process::id(), crate::run::safe_segment(&dir.display().to_string())));
    let _ = std::fs::remove_dir_all(&out);
    let hand = read_hand(dir)?;
    let dates: Vec<Option<chrono::NaiveDate>> = match hand.as_ref().map(|h| h.runs.as_slice()) {
        Some(runs) if !runs.is_empty() => runs
            .iter()
            .map(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map(Some).map_err(|e| format!("hand.toml: runs: `{d}`: {e}")))
            .collect::<Result<_, _>>()?,
        _ => vec![None],
    };
    let mut reports = Vec::new();
    for as_of in dates {
        let (memory_rows, one_pass, polars_meters) = (mode.memory_rows, mode.one_pass, mode.polars_meters);
        let opts = RunOptions {
            config: dir.join("billrun.toml"),
            out: Some(out.clone()),
            as_of,
            memory_rows,
            one_pass,
            polars_meters,
            ..Default::default()
        };
        reports.push(run(&opts).map_err(|e| e.to_string())?);
    }
    let mut problems = Vec::new();
    if let Some(hand) = &hand {
        check_hand(hand, &reports, &mut problems);
    }
    let expected_dir = dir.join("expected");
    let produced = list_files(&out);
    if bless {
        let _ = std::fs::remove_dir_all(&expected_dir);
        for (rel, p) in &produced {
            let dest = expected_dir.join(rel);
            std::fs::create_dir_all(dest.parent().expect("parent")).map_err(|e| e.to_string())?;
            let b = std::fs::read(p).map_err(|e| e.to_string())?;
            std::fs::write(&dest, comparable(rel, b)).map_err(|e| e.to_string())?;
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
                    let (a, b) = (std::fs::read(e).unwrap_or_default(), comparable(rel, std::fs::read(p).unwrap_or_default()));
                    if a != b {
                        let (ea, eb) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
                        let money = rel.ends_with(".json").then(|| money_diff(&ea, &eb)).flatten();
                        match money {
                            Some(m) => problems.push(format!("{rel}: money differs\n{m}")),
                            None => problems.push(diff(rel, &ea, &eb)),
                        }
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

/// A scenario's problems (empty: it passed), or why its run failed.
type Outcome = Result<Vec<String>, String>;

/// Run scenarios, in parallel (one per core), print a report per failure in folder order and the
/// closing line; returns (passed, failed).
pub fn run_scenarios(paths: &[PathBuf], bless: bool) -> (usize, usize) {
    run_scenarios_with(paths, bless, Mode::default())
}

/// [`run_scenarios`] with the inputs read another way ([`Mode`]).
pub fn run_scenarios_with(paths: &[PathBuf], bless: bool, mode: Mode) -> (usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dirs = discover(paths);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, dirs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Outcome>>> = std::sync::Mutex::new(vec![None; dirs.len()]);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(d) = dirs.get(i) else { break };
                let r = check_scenario(d, bless, mode);
                results.lock().expect("no panic while holding it")[i] = Some(r);
            });
        }
    });
    let (mut passed, mut failed) = (0, 0);
    for (d, r) in dirs.iter().zip(results.into_inner().expect("no panic while holding it")) {
        match r.expect("every scenario ran") {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_money_diff_names_each_line_that_changed() {
        let inv = |api: &str, total: &str| {
            format!(
                r#"{{"status":"DUE","totalAmount":"{total}","revenueInfo":{{"description":"Grand total","value":"{total}","lineItems":[
                    {{"description":"API calls","value":"{api}","lineItems":[]}},{{"description":"Support","value":"20.00","lineItems":[]}}]}}}}"#
            )
        };
        let d = money_diff(&inv("3.80", "23.80"), &inv("4.05", "24.05")).unwrap();
        assert_eq!(
            d,
            "  Grand total: expected 23.80, produced 24.05\n  Grand total › API calls: expected 3.80, produced 4.05\n  totalAmount: expected 23.80, produced 24.05\n"
        );
        assert_eq!(money_diff(&inv("1.00", "21.00"), &inv("1.00", "21.00")), None);
        assert_eq!(money_diff("not json", "{}"), None);
    }
}
