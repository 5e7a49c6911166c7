//! `billrun simulate`: Togai's revenue calculator, offline. One cycle of any plan, in any of its
//! currencies, rated from usage given per meter or looked up for an account over a date range,
//! with the revenue per rate card and slab. Writes nothing. Rating is the bill run's own
//! (`invoice::build_invoices`), so a simulation with an invoice's usage, plan and period
//! reproduces that invoice's rated total exactly.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::catalog::{Account, Schedule};
use crate::invoice::{build_invoices, Invoice};
use crate::money::{format_amount, Currency};
use crate::run::{compute, load, RunError, RunOptions};
use crate::windows::plan_windows;

#[derive(Debug, Clone, Default)]
pub struct SimulateOptions {
    pub config: PathBuf,
    /// The plan id (a key of the catalog's `pricePlans`).
    pub plan: String,
    /// The cycle starts here (the schedule of the simulated account starts on this day).
    pub from: NaiveDate,
    /// With `account`: usage of events in `[from, to)`.
    pub to: Option<NaiveDate>,
    pub currency: Option<String>,
    /// Usage given directly, meter id → quantity.
    pub usage: BTreeMap<String, Decimal>,
    /// Look the usage up for this account (its events, metered by the catalog).
    pub account: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulation {
    pub plan_id: String,
    pub currency: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub usage: BTreeMap<String, Decimal>,
    /// The cycle's invoices (in arrears, and in advance when the plan charges in advance).
    pub invoices: Vec<Invoice>,
    /// Σ of the invoices' totals, at the currency's scale.
    pub total: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("{0}")]
    Input(String),
}

/// Rate one cycle of `opts.plan` from the given or looked-up usage.
pub fn simulate(opts: &SimulateOptions) -> Result<Simulation, SimulateError> {
    let (cfg, mut cat) = load(&opts.config)?;
    let input = |m: String| SimulateError::Input(m);
    if !cat.plans.contains_key(&opts.plan) && !cat.plan_versions.contains_key(&opts.plan) {
        return Err(input(format!("no price plan `{}` in the catalog ({} plans)", opts.plan, cat.plans.len())));
    }
    for m in opts.usage.keys() {
        if !cat.meters.contains_key(m) {
            return Err(input(format!("no usage meter `{m}` in the catalog")));
        }
    }
    let mut usage = opts.usage.clone();
    let mut template: Option<Account> = None;
    if let Some(acc) = &opts.account {
        let a = cat.accounts.get(acc).ok_or_else(|| input(format!("no account `{acc}` in the catalog")))?.clone();
        let to = opts.to.ok_or_else(|| input("--account needs --to (usage of events in [from, to))".into()))?;
        if to <= opts.from {
            return Err(input(format!("--to {to} is not after --from {}", opts.from)));
        }
        let c = compute(&RunOptions { config: opts.config.clone(), as_of: Some(to), ..Default::default() })?;
        for w in c.windows.iter().filter(|w| &w.account_id == acc && w.start >= opts.from && w.end <= to) {
            for ((id, meter), q) in &c.usage {
                if *id == w.id && !meter.contains(['#', ':']) {
                    *usage.entry(meter.clone()).or_insert(Decimal::ZERO) += *q;
                }
            }
        }
        template = Some(a);
    }
    let plan = cat.plan_at(&opts.plan, opts.from).ok_or_else(|| input(format!("plan `{}` is not in force on {}", opts.plan, opts.from)))?;
    let code = match (&opts.currency, &template) {
        (Some(c), _) => c.clone(),
        (None, Some(a)) => a.currency.code.clone(),
        (None, None) => plan.currencies.first().cloned().unwrap_or_else(|| cfg.organization.base_currency.code.clone()),
    };
    let currency = Currency::new(&code).ok_or_else(|| input(format!("`{code}` is not an ISO 4217 currency code")))?;
    if !plan.currencies.contains(&code) {
        return Err(input(format!("plan `{}` has no rates in {code} (it supports {})", opts.plan, plan.currencies.join(", "))));
    }
    let mut account = template.unwrap_or_else(|| Account {
        id: "SIMULATION".into(),
        name: "Simulation".into(),
        customer_id: String::new(),
        currency: currency.clone(),
        net_term_days: None,
        email: None,
        address: BTreeMap::new(),
        aliases: Vec::new(),
        schedules: Vec::new(),
    });
    account.currency = currency.clone();
    account.schedules = vec![Schedule {
        id: format!("simulation.{}", opts.plan),
        plan_id: opts.plan.clone(),
        start: opts.from,
        end: None,
        retain_start_offsets: false,
    }];
    cat.accounts = BTreeMap::from([(account.id.clone(), account)]);
    let tz = cfg.organization.time_zone;
    let windows: Vec<_> = plan_windows(&cat, tz, opts.from.succ_opt().unwrap_or(opts.from)).into_iter().take(1).collect();
    let w = windows.first().ok_or_else(|| input(format!("plan `{}` gives no cycle starting {}", opts.plan, opts.from)))?;
    let table: crate::ingest::Usage = usage.iter().map(|(m, q)| ((w.id, m.clone()), *q)).collect();
    let built = build_invoices(&cat, &cfg.organization, &windows, &table, w.due);
    let total: Decimal = built.iter().map(|b| b.total).sum();
    Ok(Simulation {
        plan_id: opts.plan.clone(),
        currency: code,
        start_date: w.start,
        end_date: w.end,
        usage,
        total: format_amount(total, &currency),
        invoices: built.into_iter().map(|b| b.invoice).collect(),
    })
}

/// The simulation as text: each billed line with its slabs, and the total.
pub fn to_text(s: &Simulation) -> String {
    fn walk(l: &crate::invoice::LineItem, out: &mut String) {
        if crate::invoice::line_class(l.kind).is_some() {
            let q = l.quantity.as_deref().map(|q| format!(" × {q}")).unwrap_or_default();
            out.push_str(&format!("  {}{q}: {}\n", l.description, l.value));
            for c in &l.line_items {
                let q = c.quantity.as_deref().unwrap_or("");
                let r = c.value_per_quantity.as_deref().map(|r| format!(" at {r}")).unwrap_or_default();
                out.push_str(&format!("    {} {q}{r}: {}\n", c.description, c.value));
            }
            return;
        }
        for c in &l.line_items {
            walk(c, out);
        }
    }
    let mut out = format!("Plan {} in {}, cycle {} – {}\n", s.plan_id, s.currency, s.start_date, s.end_date);
    for (m, q) in &s.usage {
        out.push_str(&format!("  usage {m} = {q}\n"));
    }
    for i in &s.invoices {
        out.push_str(&format!("{} invoice:\n", i.invoice_type));
        walk(&i.revenue_info, &mut out);
        out.push_str(&format!("  total {}\n", i.total_amount));
    }
    out.push_str(&format!("revenue {} {}\n", s.total, s.currency));
    out
}
