//! `billrun rerate`: rate a historical window again — with the current catalog or a proposed
//! one — and report, per account, invoice and line, what was issued, what it rates at now and
//! why it differs. The difference is split into its causes by rating three times:
//!
//! 1. current catalog, events as they are now, no corrections → minus issued = **late usage**
//! 2. current catalog, with the event corrections → minus (1) = **corrected events**
//! 3. proposed catalog (or the current one), with corrections → minus (2) = **plan changed**
//!
//! Issued means what rating billed for the invoice (before credits and charges) plus any late
//! usage adjustments since. Outputs go to the store's `rerates/<name>/` only: `diff.json`,
//! `diff.csv`, `report.html` and the re-rated invoices. The ledger and issued invoices are never
//! touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::invoice::BuiltInvoice;
use crate::run::{compute, load_ledger, open_store, safe_segment, RunError, RunOptions};
use crate::settle::rated_map;

#[derive(Debug, Clone, Default)]
pub struct RerateOptions {
    pub config: PathBuf,
    /// Invoices whose period starts in `[from, to)`.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// A proposed catalog folder (default: the configured catalog).
    pub catalog: Option<PathBuf>,
    /// The usage as of this date (default: the ledger's last run).
    pub as_of: Option<NaiveDate>,
    /// The store to read the ledger from and write to (default: the configured one).
    pub out: Option<PathBuf>,
    /// The namespace under `rerates/` (default `<from>_<to>`).
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineDiff {
    pub id: String,
    pub description: String,
    pub issued: Decimal,
    pub rerated: Decimal,
    pub delta: Decimal,
    pub late_usage: Decimal,
    pub corrected_events: Decimal,
    pub plan_changed: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceDiff {
    pub account_id: String,
    pub invoice_id: String,
    pub sequence_id: Option<String>,
    pub plan_id: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub currency: String,
    pub issued: Decimal,
    pub rerated: Decimal,
    pub delta: Decimal,
    /// "late usage", "corrected events", "plan changed" — every cause with a non-zero part.
    pub reasons: Vec<&'static str>,
    pub lines: Vec<LineDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanTotal {
    pub plan_id: String,
    pub plan_name: String,
    pub currency: String,
    pub issued: Decimal,
    pub rerated: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountDelta {
    pub account_id: String,
    pub currency: String,
    pub issued: Decimal,
    pub rerated: Decimal,
    pub delta: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RerateReport {
    pub schema_version: &'static str,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub as_of: NaiveDate,
    /// The catalog folder the re-rating used.
    pub catalog: String,
    pub ledger_generation: u64,
    pub invoices: Vec<InvoiceDiff>,
    pub plans: Vec<PlanTotal>,
    /// Per account, largest |delta| first.
    pub accounts: Vec<AccountDelta>,
    /// Where the outputs went.
    pub written: String,
}

fn by_id(v: &[BuiltInvoice]) -> BTreeMap<&str, &BuiltInvoice> {
    v.iter().map(|b| (b.invoice.id.as_str(), b)).collect()
}

fn descriptions(b: &BuiltInvoice, out: &mut BTreeMap<String, String>) {
    fn walk(l: &crate::invoice::LineItem, out: &mut BTreeMap<String, String>) {
        if let (Some(id), Some(_)) = (&l.id, crate::invoice::line_class(l.kind)) {
            out.entry(id.to_string()).or_insert_with(|| l.description.to_string());
            return;
        }
        for c in &l.line_items {
            walk(c, out);
        }
    }
    walk(&b.invoice.revenue_info, out);
}

/// Re-rate `[from, to)` and write the report to the store's `rerates/<name>/`.
pub fn rerate(opts: &RerateOptions) -> Result<RerateReport, RunError> {
    let cfg = crate::config::load(&opts.config)?;
    let target = match &opts.out {
        Some(dir) => crate::config::StoreTarget::Local(dir.clone()),
        None => cfg.store.clone(),
    };
    let store = open_store(&target)?;
    let ledger = {
        let _lock = store.lock().map_err(RunError::Locked)?;
        load_ledger(&*store)?
    };
    let as_of = opts.as_of.or(ledger.as_of).ok_or_else(|| RunError::NoAsOf(opts.config.display().to_string()))?;
    let base = RunOptions { config: opts.config.clone(), as_of: Some(as_of), ..Default::default() };
    let now = compute(&RunOptions { no_corrections: true, ..base.clone() })?;
    let corrected = if cfg.corrections.is_some() { Some(compute(&base)?) } else { None };
    let proposed = match &opts.catalog {
        Some(c) => Some(compute(&RunOptions { catalog: Some(c.clone()), ..base.clone() })?),
        None => None,
    };
    let corrected_inv = corrected.as_ref().map_or(&now.invoices, |c| &c.invoices);
    let proposed_inv = proposed.as_ref().map_or(corrected_inv, |c| &c.invoices);
    let (a, b, c) = (by_id(&now.invoices), by_id(corrected_inv), by_id(proposed_inv));
    let plan_names: BTreeMap<String, String> = proposed
        .as_ref()
        .map_or(&now.catalog, |p| &p.catalog)
        .plans
        .iter()
        .chain(now.catalog.plans.iter())
        .map(|(id, p)| (id.clone(), p.name.clone()))
        .collect();

    let mut invoices = Vec::new();
    for (id, e) in &ledger.issued {
        let kind_ok = matches!(e.invoice_type.as_str(), "STANDARD" | "STANDARD_ADVANCED" | "ADHOC_ADVANCED");
        if !kind_ok || e.start_date < opts.from || e.start_date >= opts.to {
            continue;
        }
        let mut issued = e.rated.clone();
        for (k, v) in &e.adjusted {
            *issued.entry(k.clone()).or_insert(Decimal::ZERO) += *v;
        }
        let get = |m: &BTreeMap<&str, &BuiltInvoice>| m.get(id.as_str()).map(|x| rated_map(x)).unwrap_or_default();
        let (ra, rb, rc) = (get(&a), get(&b), get(&c));
        let mut names = BTreeMap::new();
        for m in [&c, &a] {
            if let Some(x) = m.get(id.as_str()) {
                descriptions(x, &mut names);
            }
        }
        let keys: BTreeSet<&String> = issued.keys().chain(ra.keys()).chain(rb.keys()).chain(rc.keys()).collect();
        let v = |m: &BTreeMap<String, Decimal>, k: &String| m.get(k).copied().unwrap_or_default();
        let lines: Vec<LineDiff> = keys
            .into_iter()
            .map(|k| LineDiff {
                id: k.clone(),
                description: names.get(k).cloned().unwrap_or_default(),
                issued: v(&issued, k),
                rerated: v(&rc, k),
                delta: v(&rc, k) - v(&issued, k),
                late_usage: v(&ra, k) - v(&issued, k),
                corrected_events: v(&rb, k) - v(&ra, k),
                plan_changed: v(&rc, k) - v(&rb, k),
            })
            .collect();
        let sum = |f: &dyn Fn(&LineDiff) -> Decimal| lines.iter().map(f).sum::<Decimal>();
        let mut reasons = Vec::new();
        if lines.iter().any(|l| !l.late_usage.is_zero()) {
            reasons.push("late usage");
        }
        if lines.iter().any(|l| !l.corrected_events.is_zero()) {
            reasons.push("corrected events");
        }
        if lines.iter().any(|l| !l.plan_changed.is_zero()) {
            reasons.push("plan changed");
        }
        let plan_id = c.get(id.as_str()).or(a.get(id.as_str())).map(|x| x.invoice.price_plan_id.clone()).unwrap_or_default();
        invoices.push(InvoiceDiff {
            account_id: e.account_id.clone(),
            invoice_id: id.clone(),
            sequence_id: e.sequence_id.clone(),
            plan_id,
            start_date: e.start_date,
            end_date: e.end_date,
            currency: e.currency.clone(),
            issued: sum(&|l| l.issued),
            rerated: sum(&|l| l.rerated),
            delta: sum(&|l| l.delta),
            reasons,
            lines,
        });
    }
    invoices.sort_by(|x, y| (&x.account_id, x.start_date, &x.invoice_id).cmp(&(&y.account_id, y.start_date, &y.invoice_id)));

    let mut plans: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    let mut accounts: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    for i in &invoices {
        let p = plans.entry((i.plan_id.clone(), i.currency.clone())).or_default();
        p.0 += i.issued;
        p.1 += i.rerated;
        let a = accounts.entry((i.account_id.clone(), i.currency.clone())).or_default();
        a.0 += i.issued;
        a.1 += i.rerated;
    }
    let plans: Vec<PlanTotal> = plans
        .into_iter()
        .map(|((plan_id, currency), (issued, rerated))| PlanTotal {
            plan_name: plan_names.get(&plan_id).cloned().unwrap_or_else(|| plan_id.clone()),
            plan_id,
            currency,
            issued,
            rerated,
        })
        .collect();
    let mut accounts: Vec<AccountDelta> = accounts
        .into_iter()
        .map(|((account_id, currency), (issued, rerated))| AccountDelta { account_id, currency, issued, rerated, delta: rerated - issued })
        .collect();
    accounts.sort_by(|x, y| y.delta.abs().cmp(&x.delta.abs()).then_with(|| x.account_id.cmp(&y.account_id)));

    let name = opts.name.clone().unwrap_or_else(|| format!("{}_{}", opts.from, opts.to));
    let dir = format!("rerates/{}", safe_segment(&name));
    let catalog = opts.catalog.as_ref().unwrap_or(&cfg.catalog_dir).display().to_string();
    let report = RerateReport {
        schema_version: "billrun.rerate.v1",
        from: opts.from,
        to: opts.to,
        as_of,
        catalog,
        ledger_generation: ledger.generation,
        invoices,
        plans,
        accounts,
        written: format!("{}/{dir}", store.describe()),
    };

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut json = serde_json::to_vec_pretty(&report).expect("report serializes");
    json.push(b'\n');
    files.push((format!("{dir}/diff.json"), json));
    files.push((format!("{dir}/diff.csv"), to_csv(&report).into_bytes()));
    files.push((format!("{dir}/report.html"), crate::report::html(&report).into_bytes()));
    let ids: BTreeSet<&str> = report.invoices.iter().map(|i| i.invoice_id.as_str()).collect();
    for b in proposed_inv.iter().filter(|b| ids.contains(b.invoice.id.as_str())) {
        let mut j = serde_json::to_vec_pretty(&b.invoice).expect("invoice serializes");
        j.push(b'\n');
        files.push((format!("{dir}/invoices/{}/{}.json", safe_segment(&b.invoice.account_id), safe_segment(&b.invoice.id)), j));
    }
    let _lock = store.lock().map_err(RunError::Locked)?;
    for (k, v) in &files {
        store.put(k, v)?;
    }
    Ok(report)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per invoice line: issued, re-rated, delta and its three parts.
pub fn to_csv(r: &RerateReport) -> String {
    let mut s = String::from(
        "account_id,invoice_id,plan_id,start_date,end_date,currency,line_id,description,issued,rerated,delta,late_usage,corrected_events,plan_changed\n",
    );
    for i in &r.invoices {
        for l in &i.lines {
            let row = [
                csv_field(&i.account_id),
                csv_field(&i.invoice_id),
                csv_field(&i.plan_id),
                i.start_date.to_string(),
                i.end_date.to_string(),
                i.currency.clone(),
                csv_field(&l.id),
                csv_field(&l.description),
                l.issued.to_string(),
                l.rerated.to_string(),
                l.delta.to_string(),
                l.late_usage.to_string(),
                l.corrected_events.to_string(),
                l.plan_changed.to_string(),
            ];
            s.push_str(&row.join(","));
            s.push('\n');
        }
    }
    s
}
