//! Settlement: from the rated invoices of a run and the ledger before it, to the invoices this run
//! issues (final status, miscellaneous charges, credits, wallet payments, invoice-group
//! consolidation, sequence numbers), the DRAFT previews of open cycles, the late-usage report
//! and the ledger after. Pure: no I/O, no clock; the as-of date is an input.
//!
//! Decisions (README, "Settlement"):
//! - Invoices are issued in order of (invoice date, owner, start date, id); on each invoice date
//!   the day's wallet top-ups, refunds and credit grants are registered first.
//! - Miscellaneous charges go on the account's first STANDARD invoice issued after they appear;
//!   credits do not cover them (Togai applies credits before custom charges).
//! - Credits apply after pricing rules and minimum commitment, to the lines they apply to (usage,
//!   then license, then fixed-fee lines, then the rest, each in invoice order), by ascending
//!   priority, then earliest expiry, then oldest; never below zero. A credit applies to an
//!   invoice whose service period overlaps its validity `[effectiveFrom, effectiveUntil)`.
//! - The wallet pays what remains when an invoice is issued (PAID or PARTIALLY_PAID).
//! - DRAFT previews show the credits they would use (held, not consumed) and no wallet payment.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Days, NaiveDate};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::catalog::billing::{CatalogCredit, MiscCharge, MiscValue, ALL_FIXED_FEES, ALL_USAGE};
use crate::catalog::Catalog;
use crate::config::Organization;
use crate::invoice::{
    line_class, parties, totals_tree, wrap, BuiltInvoice, Invoice, InvoiceDetails, LineClass as Class, LineItem, Party, SCHEMA_VERSION,
};
use crate::ledger::{CreditBalance, CreditTransaction, IssuedInvoice, Ledger, WalletBalance, WalletEntry};
use crate::money::{amount_text, format_amount, round_line, Currency};

/// What to do when an issued invoice's usage changed after it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LateUsagePolicy {
    /// Report the difference (`late_usage.json`) and change nothing.
    #[default]
    Report,
    /// Also issue an AD_HOC adjustment invoice for an increase, or a credit for a decrease.
    Adjust,
}

/// The difference between an issued invoice and the same cycle rated again.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LateUsage {
    pub invoice_id: String,
    pub account_id: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub currency: String,
    pub issued: Decimal,
    pub recomputed: Decimal,
    pub delta: Decimal,
    pub lines: Vec<LineDelta>,
    /// REPORTED, or ADJUSTED when the `adjust` policy billed the change.
    pub action: &'static str,
    /// The adjustment invoices (`….adj.<n>`, AD_HOC) and credits that billed it, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineDelta {
    pub id: String,
    pub issued: Decimal,
    pub recomputed: Decimal,
    pub delta: Decimal,
}

/// The outcome of settling one run.
pub struct Settled {
    /// Invoices issued by this run, final, in issue order (composites after their children).
    pub issued: Vec<BuiltInvoice>,
    /// DRAFT previews of open cycles.
    pub drafts: Vec<BuiltInvoice>,
    pub late: Vec<LateUsage>,
    /// The ledger after the run: `before` itself when nothing changed, else the next generation
    /// (index entries' `files` are for the caller to fill).
    pub ledger: Ledger,
}

/// What one credit covered on an invoice: (credit id, total, [(line id, amount)]).
type CreditUse = (String, Decimal, Vec<(String, Decimal)>);

/// A line credits can cover: (id, class, entity id, amount).
#[derive(Debug, Clone)]
struct Creditable {
    id: String,
    class: Class,
    entity: String,
    amount: Decimal,
}

fn parse_amount(s: &str) -> Decimal {
    crate::doc::parse_decimal(s).unwrap_or(Decimal::ZERO)
}

/// The billed lines of a rated invoice's tree: rate-card lines (after pricing rules), the true-up
/// and pricing-rule additions, with the key rating gave them.
fn billed_lines(root: &LineItem) -> Vec<Creditable> {
    fn walk(l: &LineItem, out: &mut Vec<Creditable>) {
        // miscellaneous charges and credits are settlement's own lines, not what rating billed
        let class = line_class(l.kind).filter(|c| !matches!(c, Class::Charge | Class::Credit));
        if let Some(class) = class {
            let id = l.id.as_deref().map_or_else(|| l.kind.to_ascii_lowercase(), str::to_string);
            // `urc.<meter>`, `ff.<add-on>`, `lrc.<add-on>`, `cg.…`: the entity is after the first dot
            let entity = id.split_once('.').map(|(_, e)| e.to_string()).unwrap_or_else(|| id.clone());
            out.push(Creditable { id, class, entity, amount: parse_amount(&l.value) });
            return;
        }
        for c in &l.line_items {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// Rating's billed amounts by line id (summed when one id appears twice).
pub fn rated_map(b: &BuiltInvoice) -> BTreeMap<String, Decimal> {
    let mut m = BTreeMap::new();
    for l in billed_lines(&b.invoice.revenue_info) {
        *m.entry(l.id).or_insert(Decimal::ZERO) += l.amount;
    }
    m
}

fn applies(credit: &CreditBalance, line: &Creditable) -> bool {
    line.class != Class::Grant
        && (credit.applicable_entity_ids.is_empty()
            || credit.applicable_entity_ids.iter().any(|e| {
                e == &line.entity
                    || e == &line.id
                    || (e == ALL_USAGE && line.class == Class::Usage)
                    || (e == ALL_FIXED_FEES && line.class == Class::FixedFee)
            }))
}

/// Does the credit's validity `[from, until)` overlap the invoice's period `[start, end)`?
fn valid_for(credit: &CreditBalance, start: NaiveDate, end: NaiveDate) -> bool {
    credit.effective_from < end.max(start + Days::new(1)) && credit.effective_until.is_none_or(|u| start < u)
}

fn credit_order(c: &CreditBalance) -> (i64, NaiveDate, &str) {
    (c.priority, c.effective_until.unwrap_or(NaiveDate::MAX), c.created_at.as_str())
}

fn catalog_credit(c: &CatalogCredit) -> CreditBalance {
    let remaining = if c.voided { Decimal::ZERO } else { (c.amount - c.consumed_before).max(Decimal::ZERO) };
    let mut transactions = vec![CreditTransaction {
        transaction_type: "CREDITED".into(),
        amount: c.amount,
        invoice_id: None,
        entity_id: None,
        date: c.effective_from,
    }];
    if c.consumed_before > Decimal::ZERO {
        transactions.push(CreditTransaction {
            transaction_type: "DEBITED".into(),
            amount: c.consumed_before,
            invoice_id: None,
            entity_id: Some("before billrun".into()),
            date: c.effective_from,
        });
    }
    if c.voided && c.amount > c.consumed_before {
        transactions.push(CreditTransaction {
            transaction_type: "VOIDED".into(),
            amount: c.amount - c.consumed_before,
            invoice_id: None,
            entity_id: None,
            date: c.effective_from,
        });
    }
    CreditBalance {
        account_id: c.account_id.clone(),
        currency: c.currency.clone(),
        source: "CATALOG".into(),
        amount: c.amount,
        remaining,
        priority: c.priority,
        effective_from: c.effective_from,
        effective_until: c.effective_until,
        applicable_entity_ids: c.applicable_entity_ids.clone(),
        created_at: c.created_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        status: if c.voided {
            "VOIDED".into()
        } else if remaining.is_zero() {
            "CONSUMED".into()
        } else {
            "ACTIVE".into()
        },
        transactions,
    }
}

/// A credit created by billrun (grant, refund, adjustment), effective from `from`.
#[allow(clippy::too_many_arguments)]
fn new_credit(
    account: &str,
    currency: &str,
    source: &str,
    amount: Decimal,
    priority: i64,
    from: NaiveDate,
    until: Option<NaiveDate>,
    applicable: Vec<String>,
    invoice: Option<String>,
) -> CreditBalance {
    CreditBalance {
        account_id: account.into(),
        currency: currency.into(),
        source: source.into(),
        amount,
        remaining: amount,
        priority,
        effective_from: from,
        effective_until: until,
        applicable_entity_ids: applicable,
        created_at: from.and_hms_opt(0, 0, 0).expect("midnight").and_utc().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        status: if amount > Decimal::ZERO { "ACTIVE".into() } else { "CONSUMED".into() },
        transactions: vec![CreditTransaction {
            transaction_type: "CREDITED".into(),
            amount,
            invoice_id: invoice,
            entity_id: None,
            date: from,
        }],
    }
}

fn wallet_credit(l: &mut Ledger, account: &str, currency: &str, id: &str, amount: Decimal, date: NaiveDate) {
    let w = l.wallets.entry(account.to_string()).or_insert_with(|| WalletBalance {
        currency: currency.to_string(),
        balance: Decimal::ZERO,
        entries: Vec::new(),
    });
    if w.has_entry(id) {
        return;
    }
    w.balance += amount;
    w.entries.push(WalletEntry {
        id: id.to_string(),
        transaction_type: "CREDITED".into(),
        amount,
        entity_id: id.to_string(),
        date,
        closing_balance: w.balance,
    });
}

/// Top-ups, opening balances and refunds dated up to `day` that the ledger does not hold yet.
fn register_day(cat: &Catalog, refunds: &[crate::handoff::Refund], l: &mut Ledger, day: NaiveDate) {
    for w in cat.billing.wallets.values().filter(|w| w.active && w.effective_from <= day) {
        wallet_credit(l, &w.account_id, &w.currency, &format!("{}.opening", w.id), w.balance, w.effective_from);
    }
    let mut topups: Vec<_> = cat.billing.wallet_topups.iter().filter(|t| t.date <= day).collect();
    topups.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
    for t in topups {
        let Some(acc) = cat.accounts.get(&t.account_id) else { continue };
        let active = cat.billing.wallets.get(&t.account_id).is_none_or(|w| w.active);
        if active {
            wallet_credit(l, &t.account_id, &acc.currency.code, &t.id, t.amount, t.date);
        }
    }
    let mut refunds: Vec<_> = refunds.iter().filter(|r| r.date <= day).collect();
    refunds.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
    for r in refunds {
        let amount = parse_amount(&r.amount);
        match r.mode {
            "CREDITS" if !l.credits.contains_key(&r.id) => {
                let c = new_credit(&r.account_id, &r.currency, "REFUND", amount, 1, r.date, None, Vec::new(), Some(r.invoice_id.clone()));
                l.credits.insert(r.id.clone(), c);
            }
            "WALLET" => wallet_credit(l, &r.account_id, &r.currency, &r.id, amount, r.date),
            _ => {}
        }
    }
}

/// Credit grants of an issued invoice (PREPAID ones only once it is paid).
fn register_grants(org: &Organization, b: &BuiltInvoice, paid_in_full: bool, l: &mut Ledger) {
    for g in &b.handoff.credit_grants {
        if l.credits.contains_key(&g.id) || (g.status == "ON_PAYMENT" && !paid_in_full) {
            continue;
        }
        let amount = round_line(parse_amount(&g.amount), &b.currency, org.rounding);
        let mut c = new_credit(
            &g.account_id,
            &g.currency,
            "CREDIT_GRANT",
            amount,
            g.priority,
            g.effective_from,
            g.effective_until,
            g.applicable_entity_ids.clone(),
            Some(b.invoice.id.clone()),
        );
        c.created_at = format!("{}#{}", c.created_at, g.id);
        l.credits.insert(g.id.clone(), c);
    }
}

fn misc_value(m: &MiscCharge, lines: &[Creditable]) -> Result<Decimal, String> {
    match &m.value {
        MiscValue::Fixed(v) => Ok(*v),
        MiscValue::RateQuantity { rate, quantity } => Ok(rate * quantity),
        MiscValue::Logic(ast) => {
            let var = |name: &str| -> Option<Decimal> {
                let key = name.strip_prefix("revenue.").unwrap_or(name);
                Some(lines.iter().filter(|l| l.id == key).map(|l| l.amount).sum())
            };
            match crate::rules::eval(ast, &var)? {
                crate::rules::SVal::Num(d) => Ok(d),
                other => Err(format!("the value is not a number: {other:?}")),
            }
        }
    }
}

/// Credits (in the order they apply) over an invoice's lines: usage lines first, then license,
/// fixed fees and the rest, each in invoice order; a credit covers what is left of a line it
/// applies to, up to what remains of it. Lowers each credit's `remaining`; returns what each
/// covered as (line index, amount).
fn allocate(credits: &mut [&mut CreditBalance], lines: &[Creditable]) -> Vec<Vec<(usize, Decimal)>> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&i| lines[i].class);
    let mut left: Vec<Decimal> = lines.iter().map(|x| x.amount.max(Decimal::ZERO)).collect();
    let mut out = Vec::new();
    for c in credits.iter_mut() {
        let mut parts = Vec::new();
        for &i in &order {
            if c.remaining <= Decimal::ZERO {
                break;
            }
            if left[i] <= Decimal::ZERO || !applies(c, &lines[i]) {
                continue;
            }
            let x = c.remaining.min(left[i]);
            left[i] -= x;
            c.remaining -= x;
            parts.push((i, x));
        }
        out.push(parts);
    }
    out
}

/// Settle one invoice against the ledger: misc charges (STANDARD invoices), credits, and when
/// `issue`, the wallet. Changes the invoice's tree, total and lines, and the ledger's balances.
fn settle_one(cat: &Catalog, org: &Organization, b: &mut BuiltInvoice, l: &mut Ledger, issue: bool, use_credits: bool, use_wallet: bool) {
    let cur = b.currency.clone();
    let inv_id = b.invoice.id.clone();
    let lines = billed_lines(&b.invoice.revenue_info);
    let gross_before = b.total;

    // miscellaneous charges: the account's upcoming STANDARD invoice
    let mut misc_items = Vec::new();
    let mut misc_total = Decimal::ZERO;
    if b.invoice.invoice_type == "STANDARD" {
        for m in cat.billing.misc_charges.iter().filter(|m| m.account_id == b.invoice.account_id) {
            if l.misc_charges.contains_key(&m.id) {
                continue;
            }
            let (amount, mut item) = match misc_value(m, &lines) {
                Ok(v) => {
                    let a = round_line(v, &cur, org.rounding);
                    let mut item = LineItem::new("MISCELLANEOUS_CHARGE", m.name.as_str(), format_amount(a, &cur));
                    item.metadata.insert("exactValue", crate::money::format_exact(v));
                    (a, item)
                }
                Err(e) => {
                    let mut item = LineItem::new("MISCELLANEOUS_CHARGE", m.name.as_str(), format_amount(Decimal::ZERO, &cur));
                    item.metadata.insert("error", e);
                    (Decimal::ZERO, item)
                }
            };
            if let MiscValue::RateQuantity { rate, quantity } = &m.value {
                item.quantity = Some(crate::money::exact_text(*quantity));
                item.value_per_quantity = Some(crate::money::exact_text(*rate));
            }
            item.id = Some(compact_str::format_compact!("misc.{}", m.name));
            item.metadata.insert("considerForRevenue", m.consider_for_revenue.to_string());
            misc_total += amount;
            b.lines.push((m.name.clone(), amount));
            misc_items.push(item);
            l.misc_charges.insert(m.id.clone(), inv_id.clone());
        }
    }

    // credits, over the billed lines (not the miscellaneous charges)
    let mut used: Vec<CreditUse> = Vec::new();
    if use_credits {
        let mut ids: Vec<String> = l
            .credits
            .iter()
            .filter(|(_, c)| {
                c.account_id == b.invoice.account_id
                    && c.currency == cur.code
                    && c.status == "ACTIVE"
                    && c.remaining > Decimal::ZERO
                    && valid_for(c, b.invoice.start_date, b.invoice.end_date)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_by(|a, b2| (credit_order(&l.credits[a]), a).cmp(&(credit_order(&l.credits[b2]), b2)));
        // taken out of the ledger while they are applied, put back below
        let mut credits: Vec<CreditBalance> = ids.iter().map(|id| l.credits.remove(id).expect("listed")).collect();
        let covered = allocate(&mut credits.iter_mut().collect::<Vec<_>>(), &lines);
        for ((id, mut c), parts) in ids.into_iter().zip(credits).zip(covered) {
            for (i, x) in &parts {
                c.transactions.push(CreditTransaction {
                    transaction_type: "DEBITED".into(),
                    amount: *x,
                    invoice_id: Some(inv_id.clone()),
                    entity_id: Some(lines[*i].id.clone()),
                    date: b.invoice.invoice_date,
                });
            }
            if c.remaining.is_zero() {
                c.status = "CONSUMED".into();
            }
            if !parts.is_empty() {
                let sum = parts.iter().map(|p| p.1).sum();
                used.push((id.clone(), sum, parts.into_iter().map(|(i, x)| (lines[i].id.clone(), x)).collect()));
            }
            l.credits.insert(id, c);
        }
    }
    let credit_total: Decimal = used.iter().map(|u| u.1).sum();
    let mut credit_items = Vec::new();
    for (id, sum, parts) in &used {
        let mut item = LineItem::new("SUB_CREDITS", format!("Credit {id}"), format_amount(-*sum, &cur));
        item.id = Some(id.as_str().into());
        for (line, x) in parts {
            item.metadata.insert_owned(format!("appliedTo.{line}"), format_amount(*x, &cur));
        }
        credit_items.push(item);
        b.lines.push((format!("Credit {id}"), -*sum));
    }

    let gross = gross_before + misc_total;
    let total = gross - credit_total;
    if !misc_items.is_empty() || !credit_items.is_empty() {
        let root = &mut b.invoice.revenue_info;
        // GRAND_TOTAL → TOTAL → NET → GROSS
        let total_node = &mut root.line_items[0];
        let net = &mut total_node.line_items[0];
        let gross_node = &mut net.line_items[0];
        if !misc_items.is_empty() {
            gross_node.line_items.push(wrap(
                "TOTAL_MISCELLANEOUS_CHARGES",
                "Miscellaneous charges",
                &format_amount(misc_total, &cur),
                misc_items,
            ));
            gross_node.value = amount_text(gross, &cur);
        }
        if !credit_items.is_empty() {
            net.line_items.push(wrap("TOTAL_CREDITS", "Credits", &format_amount(-credit_total, &cur), credit_items));
        }
        net.value = amount_text(total, &cur);
        total_node.value = amount_text(total, &cur);
        root.value = amount_text(total, &cur);
    }
    b.total = total;
    b.invoice.total_amount = format_amount(total, &cur);

    if !issue {
        return;
    }
    b.invoice.status = "DUE";
    if b.invoice.metadata.get("paidOutside").is_some_and(|v| v == "true") {
        b.invoice.status = "PAID";
        b.invoice.paid_amount = Some(format_amount(total, &cur));
    } else if use_wallet && total > Decimal::ZERO {
        if let Some(w) = l.wallets.get_mut(&b.invoice.account_id).filter(|w| w.currency == cur.code && w.balance > Decimal::ZERO) {
            let pay = w.balance.min(total);
            w.balance -= pay;
            w.entries.push(WalletEntry {
                id: format!("{inv_id}.payment"),
                transaction_type: "DEBITED".into(),
                amount: pay,
                entity_id: inv_id.clone(),
                date: b.invoice.invoice_date,
                closing_balance: w.balance,
            });
            b.invoice.paid_amount = Some(format_amount(pay, &cur));
            b.invoice.status = if pay == total { "PAID" } else { "PARTIALLY_PAID" };
        }
    }
}

fn index_entry(b: &BuiltInvoice, rated: BTreeMap<String, Decimal>, as_of: NaiveDate) -> IssuedInvoice {
    let i = &b.invoice;
    IssuedInvoice {
        account_id: i.account_id.clone(),
        owner_id: i.owner_id.clone(),
        invoice_type: i.invoice_type.to_string(),
        status: i.status.to_string(),
        sequence_id: i.sequence_id.clone(),
        currency: i.currency.clone(),
        start_date: i.start_date,
        end_date: i.end_date,
        invoice_date: i.invoice_date,
        total: b.total,
        paid: i.paid_amount.as_deref().map(parse_amount).unwrap_or(Decimal::ZERO),
        rated,
        merged_into: i.metadata.get("mergedInto").cloned(),
        adjusted: BTreeMap::new(),
        adjustments: Vec::new(),
        issued_as_of: as_of,
        files: BTreeMap::new(),
    }
}

/// An AD_HOC invoice for the positive change of an issued invoice's rated lines.
fn adjustment_invoice(
    orig: &IssuedInvoice,
    orig_id: &str,
    id: String,
    deltas: &[LineDelta],
    cur: &Currency,
    template: &BuiltInvoice,
    as_of: NaiveDate,
) -> BuiltInvoice {
    let mut children = Vec::new();
    let mut lines = Vec::new();
    for d in deltas.iter().filter(|d| !d.delta.is_zero()) {
        let mut item = LineItem::new("CUSTOM_AMOUNT", format!("Late usage: {}", d.id), format_amount(d.delta, cur));
        item.id = Some(d.id.as_str().into());
        item.metadata.insert("issued", format_amount(d.issued, cur));
        item.metadata.insert("recomputed", format_amount(d.recomputed, cur));
        children.push(item);
        lines.push((format!("Late usage: {}", d.id), d.delta));
    }
    let total: Decimal = lines.iter().map(|l| l.1).sum();
    let mut inv = template.invoice.clone();
    inv.id = id;
    inv.sequence_id = None;
    inv.status = "DUE";
    inv.invoice_type = "AD_HOC";
    inv.start_date = orig.start_date;
    inv.end_date = orig.end_date;
    inv.invoice_date = as_of;
    inv.due_date = as_of + Days::new(inv.net_term_days as u64);
    inv.total_amount = format_amount(total, cur);
    inv.paid_amount = None;
    inv.usage_info = Vec::new();
    inv.pricing_rules_log = Vec::new();
    inv.revenue_info = totals_tree(&format_amount(total, cur), children);
    inv.metadata = BTreeMap::from([("adjusts".to_string(), orig_id.to_string())]);
    BuiltInvoice { invoice: inv, currency: cur.clone(), total, lines, due: true, handoff: Default::default() }
}

/// One COMPOSITE invoice for a group's invoices issued on one day.
fn composite(cat: &Catalog, org: &Organization, group_id: &str, day: NaiveDate, children: &[&BuiltInvoice]) -> BuiltInvoice {
    let g = &cat.billing.invoice_groups[group_id];
    let cur = children[0].currency.clone();
    let total: Decimal = children.iter().map(|c| c.total).sum();
    let paid: Decimal = children.iter().map(|c| c.invoice.paid_amount.as_deref().map(parse_amount).unwrap_or(Decimal::ZERO)).sum();
    let mut nodes = Vec::new();
    let mut lines = Vec::new();
    for c in children {
        let mut node = c.invoice.revenue_info.line_items[0].clone();
        node.description = format!("{} ({})", c.invoice.invoice_details.account.name, c.invoice.id).into();
        node.metadata.insert("accountId", c.invoice.account_id.clone());
        node.metadata.insert("invoiceId", c.invoice.id.clone());
        nodes.push(node);
        lines.extend(c.lines.iter().map(|(n, a)| (format!("{}: {n}", c.invoice.account_id), *a)));
    }
    let mut root = LineItem::new("GRAND_TOTAL_AMOUNT", "Grand total", format_amount(total, &cur));
    root.line_items = nodes.into();
    let net = g.net_term_days.unwrap_or(org.net_term_days);
    let first = children[0];
    let account = cat.accounts.get(&first.invoice.account_id);
    let customer = account.and_then(|a| cat.customers.get(&a.customer_id)).cloned().unwrap_or_default();
    let (organization, customer_p, _) = match account {
        Some(a) => parties(org, &customer, a),
        None => (Party::default(), Party::default(), Party::default()),
    };
    let start = children.iter().map(|c| c.invoice.start_date).min().expect("children");
    let end = children.iter().map(|c| c.invoice.end_date).max().expect("children");
    let status = if paid > Decimal::ZERO && paid >= total {
        "PAID"
    } else if paid > Decimal::ZERO {
        "PARTIALLY_PAID"
    } else {
        "DUE"
    };
    let invoice = Invoice {
        schema_version: SCHEMA_VERSION,
        id: format!("inv.group.{group_id}.{day}"),
        sequence_id: None,
        status,
        invoice_class: "INVOICE",
        invoice_type: "COMPOSITE",
        customer_id: customer.id.clone(),
        account_id: group_id.to_string(),
        owner_id: group_id.to_string(),
        price_plan_id: String::new(),
        schedule_id: String::new(),
        currency: cur.code.clone(),
        start_date: start,
        end_date: end,
        end_date_inclusive: end.pred_opt().unwrap_or(end),
        invoice_date: day,
        due_date: day + Days::new(net as u64),
        net_term_days: net,
        total_amount: format_amount(total, &cur),
        paid_amount: (paid > Decimal::ZERO).then(|| format_amount(paid, &cur)),
        usage_info: Vec::new(),
        revenue_info: root,
        invoice_details: InvoiceDetails {
            organization,
            customer: customer_p,
            account: Party { id: g.id.clone(), name: g.name.clone(), primary_email: g.email.clone(), address: g.address.clone() },
            price_plan_name: String::new(),
        },
        pricing_rules_log: Vec::new(),
        metadata: BTreeMap::from([
            ("invoiceGroupId".to_string(), group_id.to_string()),
            ("mergedInvoices".to_string(), children.iter().map(|c| c.invoice.id.as_str()).collect::<Vec<_>>().join(",")),
        ]),
    };
    BuiltInvoice { invoice, currency: cur, total, lines, due: true, handoff: Default::default() }
}

/// Issue order: invoice date, owner, cycle start, id. Borrowed: sorting 100k invoices by an
/// owned key cloned two strings per comparison (~7M allocations).
fn issue_key(b: &BuiltInvoice) -> (NaiveDate, &str, NaiveDate, &str) {
    (b.invoice.invoice_date, &b.invoice.owner_id, b.invoice.start_date, &b.invoice.id)
}

fn by_issue_key(a: &BuiltInvoice, b: &BuiltInvoice) -> std::cmp::Ordering {
    issue_key(a).cmp(&issue_key(b))
}

/// Settle a run. `rated` is every invoice rating built (issued or not), `before` the ledger the
/// run started from.
pub fn settle(
    cat: &Catalog,
    org: &Organization,
    policy: LateUsagePolicy,
    as_of: NaiveDate,
    rated: Vec<BuiltInvoice>,
    before: &Ledger,
) -> Settled {
    let mut l = before.clone();

    // catalog credits: new ones enter the ledger; a catalog void removes what remains
    for c in &cat.billing.credits {
        match l.credits.get_mut(&c.id) {
            None => {
                l.credits.insert(c.id.clone(), catalog_credit(c));
            }
            Some(b) if c.voided && b.status == "ACTIVE" => {
                b.transactions.push(CreditTransaction {
                    transaction_type: "VOIDED".into(),
                    amount: b.remaining,
                    invoice_id: None,
                    entity_id: None,
                    date: as_of,
                });
                b.remaining = Decimal::ZERO;
                b.status = "VOIDED".into();
            }
            Some(_) => {}
        }
    }

    // what is new, what was issued already (late usage), what is still open; `rated` is sorted
    // and settled where it is (it holds every invoice tree of the run: a copy of the vector at
    // 100 000 invoices was ~100 MB more at the run's peak)
    let mut to_issue = rated;
    let mut late = Vec::new();
    // the prorated refunds of every rated invoice (issued or not), registered by date
    let refunds: Vec<crate::handoff::Refund> = to_issue.iter().flat_map(|b| b.handoff.refunds.iter().cloned()).collect();
    let reissued: Vec<BuiltInvoice> = to_issue.extract_if(.., |b| l.issued.contains_key(&b.invoice.id)).collect();
    let mut drafts: Vec<BuiltInvoice> = to_issue.extract_if(.., |b| !b.due).collect();
    for owned in reissued {
        let b = &owned;
        if let Some(entry) = l.issued.get(&b.invoice.id).cloned() {
            let now = rated_map(b);
            if now == entry.rated {
                continue;
            }
            let ids: BTreeSet<&String> = now.keys().chain(entry.rated.keys()).collect();
            let deltas: Vec<LineDelta> = ids
                .into_iter()
                .map(|id| {
                    let (i, r) = (entry.rated.get(id).copied().unwrap_or_default(), now.get(id).copied().unwrap_or_default());
                    LineDelta { id: id.clone(), issued: i, recomputed: r, delta: r - i }
                })
                .filter(|d| !d.delta.is_zero())
                .collect();
            let (issued, recomputed) = (entry.rated.values().copied().sum::<Decimal>(), now.values().copied().sum::<Decimal>());
            let delta = recomputed - issued;
            let mut report = LateUsage {
                invoice_id: b.invoice.id.clone(),
                account_id: b.invoice.account_id.clone(),
                start_date: b.invoice.start_date,
                end_date: b.invoice.end_date,
                currency: b.invoice.currency.clone(),
                issued,
                recomputed,
                delta,
                lines: deltas,
                action: "REPORTED",
                adjustments: Vec::new(),
            };
            if policy == LateUsagePolicy::Adjust {
                // what no adjustment has billed yet
                let pending: Vec<LineDelta> = report
                    .lines
                    .iter()
                    .map(|d| {
                        let done = entry.adjusted.get(&d.id).copied().unwrap_or_default();
                        LineDelta { id: d.id.clone(), issued: d.issued + done, recomputed: d.recomputed, delta: d.delta - done }
                    })
                    .filter(|d| !d.delta.is_zero())
                    .collect();
                let pending_total: Decimal = pending.iter().map(|d| d.delta).sum();
                let mut adjustments = entry.adjustments.clone();
                if !pending.is_empty() {
                    let adj_id = format!("{}.adj.{}", b.invoice.id, entry.adjustments.len() + 1);
                    if pending_total >= Decimal::ZERO {
                        to_issue.push(adjustment_invoice(&entry, &b.invoice.id, adj_id.clone(), &pending, &b.currency, b, as_of));
                    } else {
                        let c = new_credit(
                            &entry.account_id,
                            &entry.currency,
                            "ADJUSTMENT",
                            -pending_total,
                            0,
                            as_of,
                            None,
                            Vec::new(),
                            Some(b.invoice.id.clone()),
                        );
                        l.credits.insert(adj_id.clone(), c);
                    }
                    let e = l.issued.get_mut(&b.invoice.id).expect("issued");
                    for d in &pending {
                        *e.adjusted.entry(d.id.clone()).or_insert(Decimal::ZERO) += d.delta;
                    }
                    e.adjustments.push(adj_id.clone());
                    adjustments.push(adj_id);
                }
                report.action = "ADJUSTED";
                report.adjustments = adjustments;
            }
            late.push(report);
        }
    }

    // issue, day by day
    to_issue.sort_by(by_issue_key);
    let mut issued = to_issue;
    let mut from = 0;
    while let Some(day) = issued.get(from).map(|b| b.invoice.invoice_date) {
        let until = from + issued[from..].iter().take_while(|b| b.invoice.invoice_date == day).count();
        let today = &mut issued[from..until];
        register_day(cat, &refunds, &mut l, day);
        for b in today.iter().filter(|b| b.handoff.credit_grants.iter().any(|g| g.status == "GRANTED")) {
            register_grants(org, b, false, &mut l);
        }
        for b in today {
            let rated_lines = if b.invoice.metadata.contains_key("adjusts") { BTreeMap::new() } else { rated_map(b) };
            let custom = cat.billing.custom_invoices.iter().find(|c| b.invoice.metadata.get("customInvoiceId") == Some(&c.id));
            let (use_credits, use_wallet) = custom.map_or((true, true), |c| (c.apply_credits, c.apply_wallet_balance));
            settle_one(cat, org, b, &mut l, true, use_credits, use_wallet);
            register_grants(org, b, b.invoice.status == "PAID", &mut l);
            l.issued.insert(b.invoice.id.clone(), index_entry(b, rated_lines, as_of));
        }
        from = until;
    }
    register_day(cat, &refunds, &mut l, as_of);

    // invoice groups: a group's invoices issued on one day become one COMPOSITE invoice
    let mut groups: BTreeMap<(String, NaiveDate), Vec<usize>> = BTreeMap::new();
    for (i, b) in issued.iter().enumerate() {
        let mergeable = matches!(b.invoice.invoice_type, "STANDARD" | "STANDARD_ADVANCED" | "ADHOC_ADVANCED")
            || (b.invoice.invoice_type == "CUSTOM"
                && cat.billing.custom_invoices.iter().any(|c| b.invoice.metadata.get("customInvoiceId") == Some(&c.id) && c.group_owned));
        if let Some(g) = cat.billing.group_of(&b.invoice.account_id).filter(|_| mergeable) {
            groups.entry((g.id.clone(), b.invoice.invoice_date)).or_default().push(i);
        }
    }
    let mut composites = Vec::new();
    for ((gid, day), members) in groups {
        let children: Vec<&BuiltInvoice> = members.iter().map(|&i| &issued[i]).collect();
        let c = composite(cat, org, &gid, day, &children);
        for &i in &members {
            let b = &mut issued[i];
            b.invoice.status = "MERGED";
            b.invoice.metadata.insert("mergedInto".into(), c.invoice.id.clone());
            b.invoice.metadata.insert("invoiceGroupId".into(), gid.clone());
            let e = l.issued.get_mut(&b.invoice.id).expect("indexed");
            e.status = "MERGED".into();
            e.merged_into = Some(c.invoice.id.clone());
        }
        composites.push(c);
    }
    for c in composites {
        l.issued.insert(c.invoice.id.clone(), index_entry(&c, BTreeMap::new(), as_of));
        issued.push(c);
    }

    // sequence numbers: every issued invoice that is sent (not MERGED), gap-free across runs
    let mut order: Vec<usize> = (0..issued.len()).filter(|&i| issued[i].invoice.status != "MERGED").collect();
    order.sort_by(|&a, &b| by_issue_key(&issued[a], &issued[b]));
    for i in order {
        let b = &mut issued[i];
        let seq = org.invoice_sequence.format(l.next_sequence, b.invoice.invoice_date);
        l.next_sequence += 1;
        b.invoice.sequence_id = Some(seq.clone());
        l.issued.get_mut(&b.invoice.id).expect("indexed").sequence_id = Some(seq);
    }
    issued.sort_by(by_issue_key);

    // DRAFT previews against what remains (a scratch copy: holds are not consumption)
    drafts.sort_by(by_issue_key);
    if !drafts.is_empty() {
        let mut scratch = l.clone();
        for b in &mut drafts {
            let custom = cat.billing.custom_invoices.iter().find(|c| b.invoice.metadata.get("customInvoiceId") == Some(&c.id));
            let use_credits = custom.is_none_or(|c| c.apply_credits);
            settle_one(cat, org, b, &mut scratch, false, use_credits, false);
            b.invoice.status = "DRAFT";
        }
    }

    // credits past their validity that no open invoice can use any more expire
    for c in l.credits.values_mut() {
        let Some(until) = c.effective_until else { continue };
        if c.status != "ACTIVE" || until > as_of {
            continue;
        }
        let usable = drafts.iter().any(|d| d.invoice.account_id == c.account_id && valid_for(c, d.invoice.start_date, d.invoice.end_date));
        if !usable {
            c.transactions.push(CreditTransaction {
                transaction_type: "EXPIRED".into(),
                amount: c.remaining,
                invoice_id: None,
                entity_id: None,
                date: until,
            });
            c.remaining = Decimal::ZERO;
            c.status = "EXPIRED".into();
        }
    }

    // unchanged but for the generation: the ledger stays where it was (no clone of it)
    l.generation = before.generation;
    l.as_of = before.as_of;
    if l != *before {
        l.generation = before.generation + 1;
        l.as_of = Some(as_of);
    }
    Settled { issued, drafts, late, ledger: l }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn credit(remaining: i64, applicable: Vec<String>) -> CreditBalance {
        let d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let amount = Decimal::new(remaining, 2);
        new_credit("A", "USD", "CATALOG", amount, 1, d, None, applicable, None)
    }

    fn line(i: usize, class: Class, cents: i64) -> Creditable {
        let (prefix, entity) = match class {
            Class::Usage => ("urc", format!("um.m{}", i % 3)),
            Class::FixedFee => ("ff", format!("addon.f{}", i % 3)),
            Class::License => ("lrc", format!("addon.l{}", i % 3)),
            _ => ("be", format!("feature.x{}", i % 3)),
        };
        Creditable { id: format!("{prefix}.{entity}"), class, entity, amount: Decimal::new(cents, 2) }
    }

    #[test]
    fn usage_lines_first_then_license_then_fixed_fees_and_only_where_a_credit_applies() {
        let lines = vec![line(0, Class::FixedFee, 2000), line(1, Class::Usage, 3000), line(2, Class::License, 500)];
        let mut a = credit(4000, Vec::new());
        let mut b = credit(10000, vec![ALL_FIXED_FEES.into()]);
        let covered = allocate(&mut [&mut a, &mut b], &lines);
        // 40.00 over usage 30.00, license 5.00, then 5.00 of the fixed fee; the fixed-fee credit takes the other 15.00
        assert_eq!(covered[0], vec![(1, Decimal::new(3000, 2)), (2, Decimal::new(500, 2)), (0, Decimal::new(500, 2))]);
        assert_eq!(covered[1], vec![(0, Decimal::new(1500, 2))]);
        assert_eq!((a.remaining, b.remaining), (Decimal::ZERO, Decimal::new(8500, 2)));
    }

    fn class() -> impl Strategy<Value = Class> {
        prop_oneof![Just(Class::Usage), Just(Class::License), Just(Class::FixedFee), Just(Class::Other), Just(Class::Grant)]
    }

    proptest! {
        /// Credits never go below zero, never cover more than a line's amount (nor a negative line,
        /// nor a purchase of credits), cover exactly what they lose, and stop only when spent or
        /// when every line they apply to is covered.
        #[test]
        fn credits_are_never_overdrawn_and_lines_never_go_below_zero(
            lines in prop::collection::vec((class(), -5_000i64..50_000), 0..8),
            credits in prop::collection::vec((0i64..60_000, prop::collection::vec(0usize..5, 0..2)), 0..5),
        ) {
            let lines: Vec<Creditable> = lines.into_iter().enumerate().map(|(i, (c, v))| line(i, c, v)).collect();
            let targets = ["urc.um.m0", "ALL_USAGE_METER_RATE_CARDS", "ALL_FIXED_FEE_RATE_CARDS", "addon.l1", "feature.x2"];
            let mut cs: Vec<CreditBalance> = credits
                .iter()
                .map(|(v, t)| credit(*v, t.iter().map(|k| targets[*k].to_string()).collect()))
                .collect();
            let before: Vec<Decimal> = cs.iter().map(|c| c.remaining).collect();
            let mut refs: Vec<&mut CreditBalance> = cs.iter_mut().collect();
            let covered = allocate(&mut refs, &lines);
            let mut per_line = vec![Decimal::ZERO; lines.len()];
            for (k, parts) in covered.iter().enumerate() {
                let used: Decimal = parts.iter().map(|p| p.1).sum();
                prop_assert!(cs[k].remaining >= Decimal::ZERO);
                prop_assert_eq!(before[k] - used, cs[k].remaining);
                for (i, x) in parts {
                    prop_assert!(*x > Decimal::ZERO);
                    prop_assert!(applies(&cs[k], &lines[*i]));
                    per_line[*i] += *x;
                }
            }
            for (i, l) in lines.iter().enumerate() {
                prop_assert!(per_line[i] <= l.amount.max(Decimal::ZERO), "line {} over-covered", i);
                if l.class == Class::Grant {
                    prop_assert!(per_line[i].is_zero());
                }
            }
            // greedy: a credit with something left has covered every line it applies to in full
            for c in &cs {
                if c.remaining > Decimal::ZERO {
                    for (i, l) in lines.iter().enumerate() {
                        if applies(c, l) {
                            prop_assert_eq!(per_line[i], l.amount.max(Decimal::ZERO));
                        }
                    }
                }
            }
        }
    }
}
