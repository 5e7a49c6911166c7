//! Catalog objects that settlement consumes (not rating): credits, wallets and their top-ups,
//! invoice groups, miscellaneous charges and custom invoices. Togai's shapes and field names;
//! the few extensions an offline run needs (a top-up's date, a custom invoice's id) are named in
//! the README's "Settlement" section.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::raw::*;
use super::{address_map, parse_instant, Account, Catalog, Origin, Timing};
use crate::diag::Diagnostics;
use crate::doc;
use crate::jsonlogic::{self, Ast, Kind};
use crate::money::Currency;

/// Applies to every usage-meter rate card (Togai's special applicability id).
pub const ALL_USAGE: &str = "ALL_USAGE_METER_RATE_CARDS";
/// Applies to every fixed-fee rate card.
pub const ALL_FIXED_FEES: &str = "ALL_FIXED_FEE_RATE_CARDS";

/// A credit granted in the catalog (Togai's `Credit`). Amounts are money in `currency`, exact and
/// already at the currency's minor unit (validation refuses more decimals).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogCredit {
    pub id: String,
    pub account_id: String,
    pub purpose: String,
    /// Empty: every line. Otherwise entity ids (meter, add-on, feature ids) or `ALL_USAGE` /
    /// `ALL_FIXED_FEES`.
    pub applicable_entity_ids: Vec<String>,
    pub effective_from: NaiveDate,
    /// Exclusive; `None` never expires.
    pub effective_until: Option<NaiveDate>,
    /// `creditAmount`.
    pub amount: Decimal,
    /// `consumedAmount` of an export: consumed before billrun kept the ledger.
    pub consumed_before: Decimal,
    pub priority: i64,
    /// `creditUnit`, else the account's currency.
    pub currency: String,
    /// `createdAt`, else `effectiveFrom` at 00:00 UTC: the "oldest first" tie-break.
    pub created_at: DateTime<Utc>,
    /// `status: VOIDED` (or EXPIRED / CONSUMED in an export: nothing is left to apply).
    pub voided: bool,
}

/// An account's wallet (Togai's `WalletBalanceResponse`): the opening balance.
#[derive(Debug, Clone, PartialEq)]
pub struct Wallet {
    pub id: String,
    pub account_id: String,
    pub currency: String,
    /// Opening balance, available from `effective_from`.
    pub balance: Decimal,
    pub effective_from: NaiveDate,
    /// `status: ACTIVE`; an INACTIVE wallet is never applied.
    pub active: bool,
}

/// A wallet top-up (Togai's `TopupWalletRequest` plus the account and the date, which the API
/// takes from the URL and the request time).
#[derive(Debug, Clone, PartialEq)]
pub struct WalletTopup {
    pub id: String,
    pub account_id: String,
    pub amount: Decimal,
    pub date: NaiveDate,
}

/// An invoice group (Togai's `InvoiceGroupDetails` + `accountIds`).
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceGroup {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub account_ids: Vec<String>,
    pub net_term_days: Option<u32>,
    pub currency: String,
    /// `billingAddress` (or `address` of the create request), keys as in Togai's `Address`.
    pub address: BTreeMap<String, String>,
    pub daily_invoice_consolidation: bool,
}

/// How a miscellaneous charge's value is given.
#[derive(Debug, Clone, PartialEq)]
pub enum MiscValue {
    Fixed(Decimal),
    RateQuantity {
        rate: Decimal,
        quantity: Decimal,
    },
    /// JSON-logic over the invoice's line ids (`urc.<meter>`, `ff.<add-on>`, …): the line's amount.
    Logic(Ast),
}

/// A miscellaneous charge on an account's upcoming invoice (Togai's `MiscellaneousCharge`).
#[derive(Debug, Clone, PartialEq)]
pub struct MiscCharge {
    /// `<account>/<name>`: names are unique per account.
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub value: MiscValue,
    pub consider_for_revenue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomStatus {
    Draft,
    Due,
    Paid,
}

/// One line of a custom invoice: `value`, or `quantity × valuePerQuantity` (exact).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomLine {
    pub id: Option<String>,
    pub description: String,
    pub quantity: Option<Decimal>,
    pub value_per_quantity: Option<Decimal>,
    pub value: Decimal,
}

/// A custom invoice (Togai's `CreateCustomInvoiceRequest` with an `id`, else its
/// `idempotencyKey`, as identity).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomInvoice {
    pub id: String,
    pub account_id: String,
    /// `ownerType: INVOICE_GROUP`: the account's group owns it.
    pub group_owned: bool,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub status: CustomStatus,
    pub auto_advance: bool,
    pub apply_credits: bool,
    pub apply_wallet_balance: bool,
    pub lines: Vec<CustomLine>,
}

/// Everything settlement reads from the catalog.
#[derive(Debug, Clone, Default)]
pub struct Billing {
    pub credits: Vec<CatalogCredit>,
    /// By account id.
    pub wallets: BTreeMap<String, Wallet>,
    pub wallet_topups: Vec<WalletTopup>,
    /// By group id.
    pub invoice_groups: BTreeMap<String, InvoiceGroup>,
    pub misc_charges: Vec<MiscCharge>,
    pub custom_invoices: Vec<CustomInvoice>,
}

impl Billing {
    /// The group an account belongs to, if any (validation allows at most one).
    pub fn group_of(&self, account_id: &str) -> Option<&InvoiceGroup> {
        self.invoice_groups.values().find(|g| g.account_ids.iter().any(|a| a == account_id))
    }
}

/// Settlement objects as loaded from the catalog files, awaiting validation.
#[derive(Default)]
pub(super) struct RawBilling {
    pub(super) credits: Vec<(Origin, RawCredit)>,
    pub(super) wallets: Vec<(Origin, RawWallet)>,
    pub(super) wallet_topups: Vec<(Origin, RawWalletTopup)>,
    pub(super) invoice_groups: Vec<(Origin, RawInvoiceGroup)>,
    /// (where, account id from the map key, charge).
    pub(super) misc_charges: Vec<(Origin, String, RawMiscCharge)>,
    pub(super) custom_invoices: Vec<(Origin, RawCustomInvoice)>,
}

/// Validate the settlement objects against the rest of the catalog (accounts, plans, meters,
/// add-ons, features), pushing every problem to `d`. Objects with a problem are left out.
pub(super) fn validate(raw: RawBilling, cat: &Catalog, d: &mut Diagnostics) -> Billing {
    let credits = credits(raw.credits, cat, d);
    let wallets = wallets(raw.wallets, cat, d);
    let wallet_topups = topups(raw.wallet_topups, &wallets, cat, d);
    let invoice_groups = groups(raw.invoice_groups, cat, d);
    let misc_charges = misc_charges(raw.misc_charges, cat, d);
    let mut billing = Billing { credits, wallets, wallet_topups, invoice_groups, misc_charges, custom_invoices: Vec::new() };
    billing.custom_invoices = custom_invoices(raw.custom_invoices, &billing, cat, d);
    billing
}

/// The account `id`, or a diagnostic at `sub`.
fn account<'a>(o: &Origin, sub: &str, id: &str, cat: &'a Catalog, d: &mut Diagnostics) -> Option<&'a Account> {
    let a = cat.accounts.get(id);
    if a.is_none() {
        d.push(o.diag(sub, format!("unknown account `{id}`")));
    }
    a
}

/// A customer id given beside the account must be the account's customer.
fn check_customer(o: &Origin, customer: Option<&str>, account: &Account, d: &mut Diagnostics) {
    if let Some(c) = customer.filter(|c| *c != account.customer_id) {
        d.push(o.diag(
            "customerId",
            format!("customer `{c}` does not own account `{}` (its customer is `{}`)", account.id, account.customer_id),
        ));
    }
}

/// `code` (a `creditUnit`), else the account's invoice currency.
fn currency_or_account(o: &Origin, sub: &str, code: Option<&str>, account: &Account, d: &mut Diagnostics) -> Option<Currency> {
    match code {
        None => Some(account.currency.clone()),
        Some(c) => {
            let cur = Currency::new(c);
            if cur.is_none() {
                d.push(o.diag(sub, format!("`{c}` is not an ISO 4217 currency code")));
            }
            cur
        }
    }
}

/// A money amount in `cur`: at most the currency's minor-unit decimals (returned at that scale),
/// and not negative unless `signed`.
fn money(o: &Origin, sub: &str, x: Decimal, cur: &Currency, signed: bool, d: &mut Diagnostics) -> Option<Decimal> {
    if !signed && x < Decimal::ZERO {
        d.push(o.diag(sub, format!("expected an amount of at least 0, found {x}")));
        return None;
    }
    if x.normalize().scale() > cur.minor_units {
        d.push(o.diag(
            sub,
            format!(
                "{x} has more decimals than {} allows: its minor unit has {} decimal place(s); give the amount in whole minor units",
                cur.code, cur.minor_units
            ),
        ));
        return None;
    }
    let mut r = x;
    r.rescale(cur.minor_units);
    if r != x {
        d.push(o.diag(sub, format!("{x} is too large to keep {} decimal place(s) exactly", cur.minor_units)));
        return None;
    }
    Some(r)
}

/// A date given as `YYYY-MM-DD` or as an RFC 3339 date-time (its date in UTC).
fn date(o: &Origin, sub: &str, s: &str, d: &mut Diagnostics) -> Option<NaiveDate> {
    if let Ok(x) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(x);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).date_naive());
    }
    d.push(
        o.diag(sub, format!("`{s}` is not a date (expected YYYY-MM-DD or an RFC 3339 date-time, e.g. 2026-10-01 or 2026-10-01T00:00:00Z)")),
    );
    None
}

/// What an object identified by `id` or `idempotencyKey` is called in diagnostics.
struct Identity {
    what: &'static str,
    missing: &'static str,
}

impl Identity {
    const CREDIT: Identity = Identity {
        what: "credit",
        missing: "a credit needs an `id` (Togai's Credit) or an `idempotencyKey` (a CreditRequest) to identify it",
    };
    const CUSTOM_INVOICE: Identity = Identity {
        what: "custom invoice",
        missing: "a custom invoice needs an `id` (billrun extension) or an `idempotencyKey` to identify it",
    };
}

/// The id of an object: its `id`, else its `idempotencyKey`. Duplicate ids and duplicate keys
/// (seen so far in `seen`: ids, keys) are reported once each.
fn identity(
    o: &Origin,
    id: Option<&str>,
    key: Option<&str>,
    what: Identity,
    seen: (&mut BTreeSet<String>, &mut BTreeSet<String>),
    d: &mut Diagnostics,
) -> Option<String> {
    let (ids, keys) = seen;
    let dup_key = key.is_some_and(|k| !keys.insert(k.to_string()));
    if let (true, Some(k)) = (dup_key, key) {
        d.push(o.diag("idempotencyKey", format!("duplicate idempotencyKey `{k}`: it identifies one {}", what.what)));
    }
    let (id, field) = match (id, key) {
        (Some(id), _) => (id.to_string(), "id"),
        (None, Some(k)) => (k.to_string(), "idempotencyKey"),
        (None, None) => {
            d.push(o.diag("", what.missing));
            return None;
        }
    };
    if !ids.insert(id.clone()) && (!dup_key || field != "idempotencyKey") {
        d.push(o.diag(field, format!("duplicate {} id `{id}`", what.what)));
    }
    Some(id)
}

/// Runs `f` and tells whether it pushed no diagnostic.
fn clean(d: &mut Diagnostics, f: impl FnOnce(&mut Diagnostics)) -> bool {
    let before = d.0.len();
    f(d);
    d.0.len() == before
}

fn credits(raw: Vec<(Origin, RawCredit)>, cat: &Catalog, d: &mut Diagnostics) -> Vec<CatalogCredit> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (o, c) in raw {
        let mut credit = None;
        let ok = clean(d, |d| {
            let Some(id) = identity(&o, c.id.as_deref(), c.idempotency_key.as_deref(), Identity::CREDIT, (&mut ids, &mut keys), d) else {
                return;
            };
            let Some(acc) = account(&o, "accountId", &c.account_id, cat, d) else { return };
            check_customer(&o, c.customer_id.as_deref(), acc, d);
            let voided = match c.status.as_deref() {
                None | Some("ACTIVE") => false,
                Some("VOIDED" | "EXPIRED" | "CONSUMED") => true,
                Some(s) => {
                    d.push(o.diag("status", format!("unknown credit status `{s}`, expected ACTIVE, CONSUMED, EXPIRED or VOIDED")));
                    false
                }
            };
            let applicable = c.applicable_entity_ids.clone().unwrap_or_default();
            for (i, e) in applicable.iter().enumerate() {
                let known = e == ALL_USAGE
                    || e == ALL_FIXED_FEES
                    || cat.meters.contains_key(e)
                    || cat.addons.contains_key(e)
                    || cat.features.contains_key(e);
                if !known {
                    d.push(o.diag(
                        &format!("applicableEntityIds[{i}]"),
                        format!("unknown entity `{e}`: expected a usage meter, add-on or feature id, {ALL_USAGE} or {ALL_FIXED_FEES}"),
                    ));
                }
            }
            let from = date(&o, "effectiveFrom", &c.effective_from, d);
            let until = c.effective_until.as_deref().map(|u| date(&o, "effectiveUntil", u, d));
            if let (Some(f), Some(Some(u))) = (from, until) {
                if u <= f {
                    d.push(o.diag("effectiveUntil", format!("effectiveUntil ({u}, exclusive) must be after effectiveFrom ({f})")));
                }
            }
            let created_at = match c.created_at.as_deref() {
                None => None,
                Some(s) => {
                    let t = parse_instant(s);
                    if t.is_none() {
                        d.push(o.diag("createdAt", format!("`{s}` is not a date-time (expected RFC 3339, e.g. 2026-10-01T00:00:00Z)")));
                    }
                    t
                }
            };
            let Some(cur) = currency_or_account(&o, "creditUnit", c.credit_unit.as_deref(), acc, d) else { return };
            let amount = money(&o, "creditAmount", c.credit_amount.0, &cur, false, d);
            let consumed = c.consumed_amount.map(|x| money(&o, "consumedAmount", x.0, &cur, false, d));
            if let Some(h) = c.hold_amount {
                money(&o, "holdAmount", h.0, &cur, false, d);
            }
            if let (Some(a), Some(Some(x))) = (amount, consumed) {
                if x > a {
                    d.push(o.diag("consumedAmount", format!("consumedAmount {x} is more than creditAmount {a}")));
                }
            }
            let (Some(from), Some(amount)) = (from, amount) else { return };
            credit = Some(CatalogCredit {
                id,
                account_id: c.account_id.clone(),
                purpose: c.purpose.clone(),
                applicable_entity_ids: applicable,
                effective_from: from,
                effective_until: until.flatten(),
                amount,
                consumed_before: consumed.flatten().unwrap_or_else(|| money_zero(&cur)),
                priority: c.priority,
                currency: cur.code.clone(),
                created_at: created_at.unwrap_or_else(|| from.and_hms_opt(0, 0, 0).expect("midnight").and_utc()),
                voided,
            });
        });
        if let (true, Some(c)) = (ok, credit) {
            out.push(c);
        }
    }
    out
}

/// Zero at the currency's minor unit (`0.00` for USD).
fn money_zero(cur: &Currency) -> Decimal {
    Decimal::new(0, cur.minor_units)
}

fn wallets(raw: Vec<(Origin, RawWallet)>, cat: &Catalog, d: &mut Diagnostics) -> BTreeMap<String, Wallet> {
    let mut out: BTreeMap<String, Wallet> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    // account → its first wallet's id
    let mut by_account: BTreeMap<String, String> = BTreeMap::new();
    for (o, w) in raw {
        let mut wallet = None;
        let ok = clean(d, |d| {
            if !ids.insert(w.id.clone()) {
                d.push(o.diag("id", format!("duplicate wallet id `{}`", w.id)));
            }
            let Some(acc) = account(&o, "accountId", &w.account_id, cat, d) else { return };
            if let Some(other) = by_account.get(&w.account_id) {
                d.push(o.diag("accountId", format!("account `{}` already has wallet `{other}`: one wallet per account", w.account_id)));
            } else {
                by_account.insert(w.account_id.clone(), w.id.clone());
            }
            check_customer(&o, w.customer_id.as_deref(), acc, d);
            let active = match w.status.as_deref() {
                None | Some("ACTIVE") => true,
                Some("INACTIVE") => false,
                Some(s) => {
                    d.push(o.diag("status", format!("unknown wallet status `{s}`, expected ACTIVE or INACTIVE")));
                    false
                }
            };
            if let Some(v) = w.metadata.as_ref().and_then(|m| m.get("autoNetOff")) {
                if v == &Value::Bool(false) || v.as_str() == Some("false") {
                    d.push(o.diag(
                        "metadata.autoNetOff",
                        "autoNetOff: false is not supported yet: billrun nets the wallet off invoices as they become DUE",
                    ));
                }
            }
            let Some(cur) = currency_or_account(&o, "creditUnit", w.credit_unit.as_deref(), acc, d) else { return };
            if cur != acc.currency {
                d.push(o.diag(
                    "creditUnit",
                    format!(
                        "the wallet is in {} but account `{}` invoices in {}: a wallet nets off its account's invoices",
                        cur.code, acc.id, acc.currency.code
                    ),
                ));
            }
            let balance = money(&o, "balance", w.balance.0, &cur, false, d);
            if let Some(h) = w.hold_amount {
                money(&o, "holdAmount", h.0, &cur, false, d);
            }
            let from = date(&o, "effectiveFrom", &w.effective_from, d);
            let (Some(balance), Some(effective_from)) = (balance, from) else { return };
            wallet =
                Some(Wallet { id: w.id.clone(), account_id: w.account_id.clone(), currency: cur.code, balance, effective_from, active });
        });
        if let (true, Some(w)) = (ok, wallet) {
            out.insert(w.account_id.clone(), w);
        }
    }
    out
}

fn topups(raw: Vec<(Origin, RawWalletTopup)>, wallets: &BTreeMap<String, Wallet>, cat: &Catalog, d: &mut Diagnostics) -> Vec<WalletTopup> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (o, t) in raw {
        let mut topup = None;
        let ok = clean(d, |d| {
            if !ids.insert(t.id.clone()) {
                d.push(o.diag("id", format!("duplicate wallet top-up id `{}`", t.id)));
            }
            let Some(acc) = account(&o, "accountId", &t.account_id, cat, d) else { return };
            let cur = wallets.get(&acc.id).and_then(|w| Currency::new(&w.currency)).unwrap_or_else(|| acc.currency.clone());
            let amount = money(&o, "topupAmount", t.topup_amount.0, &cur, false, d);
            if amount.is_some_and(|a| a.is_zero()) {
                d.push(o.diag("topupAmount", "expected a positive top-up amount, found 0"));
            }
            let day = date(&o, "date", &t.date, d);
            let (Some(amount), Some(date)) = (amount, day) else { return };
            topup = Some(WalletTopup { id: t.id.clone(), account_id: t.account_id.clone(), amount, date });
        });
        if let (true, Some(t)) = (ok, topup) {
            out.push(t);
        }
    }
    out
}

fn groups(raw: Vec<(Origin, RawInvoiceGroup)>, cat: &Catalog, d: &mut Diagnostics) -> BTreeMap<String, InvoiceGroup> {
    let mut out = BTreeMap::new();
    // account → the group that first listed it
    let mut member_of: BTreeMap<String, String> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (o, g) in raw {
        let mut group = None;
        let ok = clean(d, |d| {
            if !ids.insert(g.id.clone()) {
                d.push(o.diag("id", format!("duplicate invoice group id `{}`", g.id)));
            }
            if !g.daily_invoice_consolidation {
                d.push(o.diag(
                    "dailyInvoiceConsolidation",
                    "dailyInvoiceConsolidation: false is not supported yet: billrun consolidates the invoices that become DUE on the same day (true)",
                ));
            }
            if g.billing_address.is_some() && g.address.is_some() {
                d.push(o.diag("address", "give billingAddress or address (the create request's name for it), not both"));
            }
            if g.account_ids.is_empty() {
                d.push(o.diag("accountIds", "an invoice group needs at least one account"));
            }
            if let Some(n) = g.accounts_count.filter(|n| *n != g.account_ids.len() as u64) {
                d.push(o.diag("accountsCount", format!("accountsCount is {n} but accountIds lists {} account(s)", g.account_ids.len())));
            }
            let declared = match g.invoice_currency.as_deref() {
                None => None,
                Some(c) => {
                    let cur = Currency::new(c);
                    if cur.is_none() {
                        d.push(o.diag("invoiceCurrency", format!("`{c}` is not an ISO 4217 currency code")));
                    }
                    cur
                }
            };
            let mut currency = declared.clone();
            for (i, a) in g.account_ids.iter().enumerate() {
                let sub = format!("accountIds[{i}]");
                if g.account_ids[..i].contains(a) {
                    d.push(o.diag(&sub, format!("account `{a}` is listed twice")));
                    continue;
                }
                match member_of.get(a) {
                    Some(other) => d.push(o.diag(
                        &sub,
                        format!("account `{a}` is already in invoice group `{other}`: an account belongs to at most one group"),
                    )),
                    None => {
                        member_of.insert(a.clone(), g.id.clone());
                    }
                }
                let Some(acc) = account(&o, &sub, a, cat, d) else { continue };
                match &currency {
                    None => currency = Some(acc.currency.clone()),
                    Some(cur) if *cur != acc.currency => d.push(o.diag(
                        &sub,
                        format!(
                            "account `{a}` invoices in {} but the group {} {}: a group's accounts share one currency",
                            acc.currency.code,
                            if declared.is_some() { "has invoiceCurrency" } else { "has the currency of its first account," },
                            cur.code
                        ),
                    )),
                    Some(_) => {}
                }
            }
            let Some(currency) = currency else { return };
            group = Some(InvoiceGroup {
                id: g.id.clone(),
                name: g.name.clone(),
                email: g.email.clone(),
                account_ids: g.account_ids.clone(),
                net_term_days: g.net_term_days,
                currency: currency.code,
                address: address_map(g.billing_address.or(g.address)),
                daily_invoice_consolidation: g.daily_invoice_consolidation,
            });
        });
        if let (true, Some(g)) = (ok, group) {
            out.insert(g.id.clone(), g);
        }
    }
    out
}

/// The variables a miscellaneous charge's JSON-logic reads: the line ids of the catalog's price
/// plans (`urc.<meter>`, `ff.<add-on>`, `lrc.<add-on>`, …), bare (no `revenue.` prefix).
struct LineIds(BTreeSet<String>);

impl jsonlogic::Scope for LineIds {
    fn has_attribute(&self, _: &str) -> bool {
        false
    }
    fn has_dimension(&self, _: &str) -> bool {
        false
    }
    fn has_named(&self, path: &str) -> bool {
        self.0.contains(path)
    }
}

impl LineIds {
    fn of(cat: &Catalog) -> LineIds {
        let mut ids = BTreeSet::new();
        for p in cat.plans.values() {
            ids.extend(p.rule_keys(Timing::InArrears).1);
            ids.extend(p.rule_keys(Timing::InAdvance).1);
        }
        LineIds(ids)
    }

    /// A few valid ids, for diagnostics.
    fn sample(&self) -> String {
        if self.0.is_empty() {
            return "the catalog's price plans have no lines to refer to".into();
        }
        let mut s = self.0.iter().take(6).map(|x| x.as_str()).collect::<Vec<_>>().join(", ");
        if self.0.len() > 6 {
            s.push_str(", …");
        }
        format!("line ids of the catalog's price plans: {s}")
    }
}

/// The `var` names in a JSON-logic value (not below the parser's depth limit, which it reports).
fn var_names(v: &Value, depth: usize, out: &mut Vec<String>) {
    if depth > jsonlogic::MAX_DEPTH + 1 {
        return;
    }
    match v {
        Value::Object(o) => {
            if let Some(arg) = o.get("var") {
                let name = match arg {
                    Value::Array(a) => a.first().and_then(Value::as_str),
                    other => other.as_str(),
                };
                out.extend(name.map(str::to_string));
            }
            for x in o.values() {
                var_names(x, depth + 1, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| var_names(x, depth + 1, out)),
        _ => {}
    }
}

fn misc_value(o: &Origin, v: &Value, ids: &LineIds, cur: &Currency, d: &mut Diagnostics) -> Option<MiscValue> {
    let expected = "expected a number or a JSON-logic expression over the invoice's line ids";
    let inner = match v {
        Value::String(s) => match doc::parse(s) {
            Ok(doc) => doc.value,
            Err(e) => {
                d.push(o.diag("value", format!("`{s}` is neither a number nor JSON-logic text ({e}): {expected}")));
                return None;
            }
        },
        other => other.clone(),
    };
    if let Some(text) = doc::number_text(&inner) {
        let Some(x) = doc::parse_decimal(&text) else {
            d.push(o.diag("value", format!("`{text}` is not a decimal number (at most 28 significant digits)")));
            return None;
        };
        return money(o, "value", x, cur, true, d).map(MiscValue::Fixed);
    }
    if !inner.is_object() {
        d.push(o.diag("value", format!("{expected}, found {inner}")));
        return None;
    }
    let mut names = Vec::new();
    var_names(&inner, 0, &mut names);
    let unknown: Vec<String> = names.into_iter().filter(|n| !ids.0.contains(n)).collect();
    if !unknown.is_empty() {
        let list = unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ");
        d.push(o.diag("value", format!("unknown line id {list}: a charge's JSON-logic reads line ids ({})", ids.sample())));
        return None;
    }
    match jsonlogic::parse_rule(&inner, ids).and_then(|a| jsonlogic::kind(&a).map(|k| (a, k))) {
        Ok((a, Kind::Num)) => Some(MiscValue::Logic(a)),
        Ok((_, k)) => {
            d.push(o.diag("value", format!("the JSON-logic must give a number (an amount), this one gives {k:?}")));
            None
        }
        Err(e) => {
            d.push(o.diag("value", format!("{e} ({})", ids.sample())));
            None
        }
    }
}

fn misc_charges(raw: Vec<(Origin, String, RawMiscCharge)>, cat: &Catalog, d: &mut Diagnostics) -> Vec<MiscCharge> {
    let ids = LineIds::of(cat);
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (o, acc_id, m) in raw {
        let mut charge = None;
        let ok = clean(d, |d| {
            if m.name.trim().is_empty() {
                d.push(o.diag("name", "a miscellaneous charge needs a name"));
            } else if !names.insert((acc_id.clone(), m.name.clone())) {
                d.push(o.diag("name", format!("account `{acc_id}` has two miscellaneous charges named `{}`", m.name)));
            }
            let Some(acc) = account(&o, "", &acc_id, cat, d) else { return };
            let value = match (&m.value, m.rate, m.quantity) {
                (Some(v), None, None) => misc_value(&o, v, &ids, &acc.currency, d),
                (None, Some(rate), Some(quantity)) => Some(MiscValue::RateQuantity { rate: rate.0, quantity: quantity.0 }),
                (Some(_), _, _) => {
                    d.push(o.diag("value", "give either `value` or `rate` and `quantity`, not both"));
                    None
                }
                (None, Some(_), None) => {
                    d.push(o.diag("quantity", "`rate` needs a `quantity` (or give `value` instead)"));
                    None
                }
                (None, None, Some(_)) => {
                    d.push(o.diag("rate", "`quantity` needs a `rate` (or give `value` instead)"));
                    None
                }
                (None, None, None) => {
                    d.push(o.diag("", "a miscellaneous charge needs a `value`, or a `rate` and a `quantity`"));
                    None
                }
            };
            let Some(value) = value else { return };
            charge = Some(MiscCharge {
                id: format!("{acc_id}/{}", m.name),
                account_id: acc_id.clone(),
                name: m.name.clone(),
                value,
                consider_for_revenue: m.consider_for_revenue.unwrap_or(false),
            });
        });
        if let (true, Some(c)) = (ok, charge) {
            out.push(c);
        }
    }
    out
}

fn custom_line(o: &Origin, sub: &str, l: &RawCustomLine, cur: &Currency, d: &mut Diagnostics) -> Option<CustomLine> {
    let product = match (l.quantity, l.value_per_quantity) {
        (Some(q), Some(p)) => match q.0.checked_mul(p.0) {
            Some(x) => Some(x),
            None => {
                d.push(o.diag(&format!("{sub}.quantity"), "quantity × valuePerQuantity is too large for an exact decimal"));
                return None;
            }
        },
        (Some(_), None) => {
            d.push(o.diag(&format!("{sub}.valuePerQuantity"), "`quantity` needs a `valuePerQuantity` (or give only `value`)"));
            return None;
        }
        (None, Some(_)) => {
            d.push(o.diag(&format!("{sub}.quantity"), "`valuePerQuantity` needs a `quantity` (or give only `value`)"));
            return None;
        }
        (None, None) => None,
    };
    let value = match (l.value, product) {
        (Some(v), Some(p)) if v.0 != p => {
            d.push(o.diag(&format!("{sub}.value"), format!("value {} is not quantity × valuePerQuantity = {p}", v.0)));
            return None;
        }
        (Some(v), _) => money(o, &format!("{sub}.value"), v.0, cur, true, d)?,
        (None, Some(p)) => p,
        (None, None) => {
            d.push(o.diag(sub, "a line item needs a `value`, or a `quantity` and a `valuePerQuantity`"));
            return None;
        }
    };
    Some(CustomLine {
        id: l.id.clone(),
        description: l.description.clone(),
        quantity: l.quantity.map(|q| q.0),
        value_per_quantity: l.value_per_quantity.map(|p| p.0),
        value,
    })
}

fn custom_invoices(raw: Vec<(Origin, RawCustomInvoice)>, billing: &Billing, cat: &Catalog, d: &mut Diagnostics) -> Vec<CustomInvoice> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (o, c) in raw {
        let mut invoice = None;
        let ok = clean(d, |d| {
            let Some(id) = identity(&o, c.id.as_deref(), c.idempotency_key.as_deref(), Identity::CUSTOM_INVOICE, (&mut ids, &mut keys), d)
            else {
                return;
            };
            let acc = account(&o, "accountId", &c.account_id, cat, d);
            let group_owned = match c.owner_type.as_deref() {
                None | Some("ACCOUNT") => false,
                Some("INVOICE_GROUP") => true,
                Some(t) => {
                    d.push(o.diag("ownerType", format!("unknown owner type `{t}`, expected ACCOUNT or INVOICE_GROUP")));
                    false
                }
            };
            if group_owned && acc.is_some() && billing.group_of(&c.account_id).is_none() {
                d.push(o.diag(
                    "ownerType",
                    format!("ownerType INVOICE_GROUP needs account `{}` to be in an invoice group; it is in none", c.account_id),
                ));
            }
            let status = match c.status.as_str() {
                "DRAFT" => Some(CustomStatus::Draft),
                "DUE" => Some(CustomStatus::Due),
                "PAID" => Some(CustomStatus::Paid),
                s => {
                    d.push(o.diag("status", format!("unknown custom invoice status `{s}`, expected DRAFT, DUE or PAID")));
                    None
                }
            };
            let start = date(&o, "startDate", &c.start_date, d);
            let end = date(&o, "endDate", &c.end_date, d);
            if let (Some(s), Some(e)) = (start, end) {
                if e < s {
                    d.push(o.diag("endDate", format!("endDate ({e}) must not be before startDate ({s})")));
                }
            }
            if c.line_items.is_empty() {
                d.push(o.diag("lineItems", "a custom invoice needs at least one line item"));
            }
            let mut lines = Vec::new();
            let mut line_ids = BTreeSet::new();
            for (i, l) in c.line_items.iter().enumerate() {
                let sub = format!("lineItems[{i}]");
                if let Some(lid) = &l.id {
                    if !line_ids.insert(lid.clone()) {
                        d.push(o.diag(&format!("{sub}.id"), format!("duplicate line item id `{lid}` in this invoice")));
                    }
                }
                if let Some(acc) = acc {
                    lines.extend(custom_line(&o, &sub, l, &acc.currency, d));
                }
            }
            let (Some(_), Some(status), Some(start_date), Some(end_date)) = (acc, status, start, end) else { return };
            invoice = Some(CustomInvoice {
                id,
                account_id: c.account_id.clone(),
                group_owned,
                start_date,
                end_date,
                status,
                auto_advance: c.auto_advance.unwrap_or(false),
                apply_credits: c.apply_credits.unwrap_or(true),
                apply_wallet_balance: c.apply_wallet_balance.unwrap_or(true),
                lines,
            });
        });
        if let (true, Some(i)) = (ok, invoice) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{load_dir, LoadContext};
    use crate::diag::Diagnostic;
    use crate::jsonlogic::{Lit, Op, VarRef};

    const BASE: &str = r#"
customers:
  - {id: cust.a, name: A}
  - {id: cust.b, name: B}
accounts:
  - {id: ACC-A, name: A, customerId: cust.a, invoiceCurrency: USD}
  - {id: ACC-B, name: B, customerId: cust.b, invoiceCurrency: USD}
  - {id: ACC-E, name: E, customerId: cust.b, invoiceCurrency: EUR}
  - {id: ACC-J, name: J, customerId: cust.b, invoiceCurrency: JPY}
eventSchemas:
  - name: api_call
    dimensions: [{name: endpoint}]
usageMeters:
  - {id: um.calls, name: calls, aggregation: COUNT, eventSchemaName: api_call}
addOns:
  - {id: addon.platform, name: platform, type: FIXED_FEE}
features:
  - {id: feat.seats, name: seats}
pricePlans:
  - id: pp.basic
    name: Basic
    pricingCycleConfig: {interval: MONTHLY, gracePeriod: 3}
    supportedCurrencies: [USD]
    rateCards:
      - type: USAGE
        rateCardDetails:
          usageRateCard:
            usageMeterId: um.calls
            ratePlan: {pricingModel: TIERED, slabs: [{order: 1, startAfter: 0, priceType: PER_UNIT}]}
            rateValues: [{currency: USD, slabRates: [{order: 1, rate: 0.5}]}]
      - type: FIXED_FEE
        rateCardDetails:
          fixedFeeRateCard:
            id: addon.platform
            rateValues: [{currency: USD, rate: 49}]
            invoiceTiming: IN_ADVANCE
"#;

    fn load(billing: &str) -> Result<Catalog, Diagnostics> {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("base.yaml"), BASE).unwrap();
        std::fs::write(t.path().join("billing.yaml"), billing).unwrap();
        let usd = Currency::new("USD").unwrap();
        load_dir(t.path(), &LoadContext { base_currency: &usd, time_zone: chrono_tz::UTC })
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    const GOOD: &str = r#"
credits:
  - id: cred.1
    accountId: ACC-A
    customerId: cust.a
    purpose: PROMOTIONAL
    applicableEntityIds: [um.calls, ALL_FIXED_FEE_RATE_CARDS, feat.seats]
    effectiveFrom: '2026-10-01'
    effectiveUntil: '2027-01-01T00:00:00Z'
    creditAmount: 100.5
    priority: 1
    grantorId: sales
    idempotencyKey: key-1
    status: ACTIVE
    creditUnit: USD
    holdAmount: 0
    consumedAmount: 20.25
    createdAt: '2026-09-30T12:00:00Z'
    updatedAt: '2026-09-30T12:00:00Z'
  - {accountId: ACC-B, purpose: PREPAID_CREDIT, effectiveFrom: '2026-10-01', creditAmount: 50, priority: 2, idempotencyKey: grant-b-1}
  - {id: cred.3, accountId: ACC-A, purpose: X, effectiveFrom: '2026-10-01T23:30:00-05:00', creditAmount: 5.000, priority: 1, status: VOIDED}
wallets:
  - {id: wal.a, accountId: ACC-A, customerId: cust.a, balance: 500, creditUnit: USD, externalId: ext-1, status: ACTIVE, holdAmount: 0,
     effectiveFrom: '2026-10-01T00:00:00Z', createdAt: '2026-09-01T00:00:00Z', metadata: {autoNetOff: true}}
  - {id: wal.b, accountId: ACC-B, balance: 0.1, status: INACTIVE, effectiveFrom: '2026-10-15'}
walletTopups:
  - {id: top.1, accountId: ACC-A, topupAmount: 250.00, date: '2026-10-10'}
invoiceGroups:
  - id: grp.main
    name: Main
    email: ap@a.test
    dailyInvoiceConsolidation: true
    netTermDays: 45
    invoiceCurrency: USD
    billingAddress: {line1: 1 Main St, city: Springfield, country: US}
    accountIds: [ACC-A, ACC-B]
    accountsCount: 2
  - {id: grp.eu, name: EU, dailyInvoiceConsolidation: true, accountIds: [ACC-E], address: {city: Berlin, country: DE}}
miscellaneousCharges:
  ACC-A:
    - {name: charge 1, value: '100'}
    - {name: qty & rate, rate: 20, quantity: 10, considerForRevenue: true}
    - {name: ten percent, value: '{"*": [{"var": "urc.um.calls"}, 0.1]}'}
    - {name: discount, value: -5.25}
    - name: platform share
      value: {"*": [{"var": "ff.addon.platform"}, 0.5]}
  ACC-B:
    - {name: charge 1, value: 7}
customInvoices:
  - id: ci.1
    accountId: ACC-A
    ownerType: INVOICE_GROUP
    startDate: '2026-10-01T00:00:00Z'
    endDate: '2026-10-31T00:00:00Z'
    status: DRAFT
    lineItems:
      - {id: l1, description: Payout IMPS, quantity: 32109, valuePerQuantity: 0.001}
      - {description: Setup, value: 99.99}
      - {description: Consulting, quantity: 2, valuePerQuantity: 150, value: 300.00}
    applyCredits: false
  - {accountId: ACC-B, idempotencyKey: ck-1, startDate: '2026-10-05', endDate: '2026-10-05', status: DUE, autoAdvance: true,
     lineItems: [{description: Refund, value: -10}]}
"#;

    #[test]
    fn loads_every_settlement_object() {
        let cat = load(GOOD).unwrap_or_else(|d| panic!("{d}"));
        let b = &cat.billing;

        assert_eq!(b.credits.len(), 3);
        let c = &b.credits[0];
        assert_eq!(c.id, "cred.1");
        assert_eq!(c.account_id, "ACC-A");
        assert_eq!(c.purpose, "PROMOTIONAL");
        assert_eq!(c.applicable_entity_ids, ["um.calls", ALL_FIXED_FEES, "feat.seats"]);
        assert_eq!((c.effective_from, c.effective_until), (day("2026-10-01"), Some(day("2027-01-01"))));
        assert_eq!((c.amount, c.consumed_before), (dec("100.50"), dec("20.25")));
        assert_eq!(c.amount.scale(), 2);
        assert_eq!((c.priority, c.currency.as_str(), c.voided), (1, "USD", false));
        assert_eq!(c.created_at, "2026-09-30T12:00:00Z".parse::<DateTime<Utc>>().unwrap());
        // a CreditRequest: the idempotency key is the id, the account's currency, created at effectiveFrom
        let r = &b.credits[1];
        assert_eq!((r.id.as_str(), r.currency.as_str(), r.priority), ("grant-b-1", "USD", 2));
        assert_eq!((r.consumed_before, r.effective_until, r.voided), (Decimal::ZERO, None, false));
        assert_eq!(r.created_at, "2026-10-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert!(r.applicable_entity_ids.is_empty());
        // a date-time's date is taken in UTC; trailing zeros are exact
        let v = &b.credits[2];
        assert_eq!((v.effective_from, v.amount, v.amount.scale(), v.voided), (day("2026-10-02"), dec("5"), 2, true));

        assert_eq!(b.wallets.len(), 2);
        assert_eq!(
            b.wallets["ACC-A"],
            Wallet {
                id: "wal.a".into(),
                account_id: "ACC-A".into(),
                currency: "USD".into(),
                balance: dec("500"),
                effective_from: day("2026-10-01"),
                active: true
            }
        );
        let wb = &b.wallets["ACC-B"];
        assert_eq!((wb.balance, wb.balance.scale(), wb.active, wb.effective_from), (dec("0.10"), 2, false, day("2026-10-15")));

        assert_eq!(
            b.wallet_topups,
            [WalletTopup { id: "top.1".into(), account_id: "ACC-A".into(), amount: dec("250"), date: day("2026-10-10") }]
        );

        let g = &b.invoice_groups["grp.main"];
        assert_eq!(
            (g.name.as_str(), g.email.as_deref(), g.net_term_days, g.currency.as_str()),
            ("Main", Some("ap@a.test"), Some(45), "USD")
        );
        assert_eq!(g.account_ids, ["ACC-A", "ACC-B"]);
        assert!(g.daily_invoice_consolidation);
        assert_eq!(g.address.get("line1").map(String::as_str), Some("1 Main St"));
        assert_eq!(g.address.get("country").map(String::as_str), Some("US"));
        // no invoiceCurrency: the accounts' currency; `address` is the create request's name
        let eu = &b.invoice_groups["grp.eu"];
        assert_eq!((eu.currency.as_str(), eu.address.get("city").map(String::as_str), eu.email.as_deref()), ("EUR", Some("Berlin"), None));
        assert_eq!(b.group_of("ACC-B").map(|g| g.id.as_str()), Some("grp.main"));
        assert!(b.group_of("ACC-J").is_none());

        let m: BTreeMap<&str, &MiscCharge> = b.misc_charges.iter().map(|m| (m.id.as_str(), m)).collect();
        assert_eq!(m.len(), 6);
        assert_eq!(m["ACC-A/charge 1"].value, MiscValue::Fixed(dec("100")));
        assert_eq!((m["ACC-A/charge 1"].account_id.as_str(), m["ACC-A/charge 1"].name.as_str()), ("ACC-A", "charge 1"));
        assert!(!m["ACC-A/charge 1"].consider_for_revenue);
        assert_eq!(m["ACC-A/qty & rate"].value, MiscValue::RateQuantity { rate: dec("20"), quantity: dec("10") });
        assert!(m["ACC-A/qty & rate"].consider_for_revenue);
        let named = |id: &str| Ast::Var { var: VarRef::Named(id.into()), default: None };
        assert_eq!(
            m["ACC-A/ten percent"].value,
            MiscValue::Logic(Ast::Op { op: Op::Mul, args: vec![named("urc.um.calls"), Ast::Lit(Lit::Num(dec("0.1")))] })
        );
        assert_eq!(
            m["ACC-A/platform share"].value,
            MiscValue::Logic(Ast::Op { op: Op::Mul, args: vec![named("ff.addon.platform"), Ast::Lit(Lit::Num(dec("0.5")))] })
        );
        assert_eq!(m["ACC-A/discount"].value, MiscValue::Fixed(dec("-5.25")));
        assert_eq!(m["ACC-B/charge 1"].value, MiscValue::Fixed(dec("7")));

        assert_eq!(b.custom_invoices.len(), 2);
        let ci = &b.custom_invoices[0];
        assert_eq!((ci.id.as_str(), ci.account_id.as_str(), ci.group_owned, ci.status), ("ci.1", "ACC-A", true, CustomStatus::Draft));
        assert_eq!((ci.start_date, ci.end_date), (day("2026-10-01"), day("2026-10-31")));
        assert_eq!((ci.auto_advance, ci.apply_credits, ci.apply_wallet_balance), (false, false, true));
        assert_eq!(
            ci.lines[0],
            CustomLine {
                id: Some("l1".into()),
                description: "Payout IMPS".into(),
                quantity: Some(dec("32109")),
                value_per_quantity: Some(dec("0.001")),
                value: dec("32.109"),
            }
        );
        assert_eq!((ci.lines[1].value, ci.lines[1].quantity, ci.lines[1].id.as_deref()), (dec("99.99"), None, None));
        assert_eq!(ci.lines[2].value, dec("300"));
        let ck = &b.custom_invoices[1];
        assert_eq!((ck.id.as_str(), ck.group_owned, ck.status, ck.auto_advance), ("ck-1", false, CustomStatus::Due, true));
        assert_eq!((ck.start_date, ck.end_date, ck.lines[0].value), (day("2026-10-05"), day("2026-10-05"), dec("-10")));
    }

    const BAD: &str = r#"
credits:
  - {accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, priority: 1}
  - {id: c1, accountId: ACC-Z, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, priority: 1}
  - {id: c2, accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', effectiveUntil: '2026-10-01', creditAmount: 1.005, priority: 1,
     status: GONE, applicableEntityIds: [um.nope]}
  - {id: c2, accountId: ACC-J, purpose: P, effectiveFrom: 'Oct 1', creditAmount: 1.5, priority: 1}
  - {id: c4, accountId: ACC-A, customerId: cust.b, purpose: P, effectiveFrom: '2026-10-01', creditAmount: -1, priority: 1}
  - {id: c5, accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, priority: 1, colour: red}
  - {id: c6, accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, consumedAmount: 2, priority: 1}
  - {id: c7, idempotencyKey: kk, accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, priority: 1}
  - {idempotencyKey: kk, accountId: ACC-A, purpose: P, effectiveFrom: '2026-10-01', creditAmount: 1, priority: 1}
wallets:
  - {id: w1, accountId: ACC-A, balance: 1, creditUnit: EUR, effectiveFrom: '2026-10-01', metadata: {autoNetOff: false}}
  - {id: w2, accountId: ACC-A, balance: 1, effectiveFrom: '2026-10-01', status: FROZEN}
walletTopups:
  - {id: t1, accountId: ACC-A, topupAmount: 0, date: '2026-10-01'}
  - {id: t1, accountId: ACC-Z, topupAmount: 1, date: '2026-10-01'}
invoiceGroups:
  - {id: g1, name: G1, dailyInvoiceConsolidation: false, invoiceCurrency: USD, accountIds: [ACC-A, ACC-E, ACC-Z]}
  - {id: g2, name: G2, dailyInvoiceConsolidation: true, accountIds: [ACC-A], accountsCount: 3}
  - {id: g3, name: G3, dailyInvoiceConsolidation: true, accountIds: [ACC-B], billingAddress: {city: X}, address: {city: Y}}
miscellaneousCharges:
  ACC-A:
    - {name: a, value: '{"var": "urc.um.nope"}'}
    - {name: a, value: 1, rate: 1, quantity: 1}
    - {name: b, rate: 1}
    - {name: c, value: '{"==": [{"var": "urc.um.calls"}, 1]}'}
    - {name: d, value: 0.001}
    - {name: e}
  ACC-Z:
    - {name: z, value: 1}
customInvoices:
  - {accountId: ACC-J, idempotencyKey: k1, startDate: '2026-10-05', endDate: '2026-10-01', status: VOID, ownerType: INVOICE_GROUP, lineItems: []}
  - id: ci2
    accountId: ACC-A
    startDate: '2026-10-01'
    endDate: '2026-10-31'
    status: DUE
    lineItems:
      - {description: x, quantity: 2, valuePerQuantity: 3, value: 7}
      - {description: y, quantity: 2}
      - {description: z}
      - {description: w, value: 0.001}
  - {accountId: ACC-A, startDate: '2026-10-01', endDate: '2026-10-31', status: DRAFT, lineItems: [{description: a, value: 1}]}
"#;

    #[test]
    fn reports_every_problem_with_its_path() {
        let d = load(BAD).unwrap_err();
        let at = |path: &str, text: &str| -> Diagnostic {
            d.0.iter()
                .find(|x| x.path == path && x.message.contains(text))
                .unwrap_or_else(|| panic!("no diagnostic at `{path}` containing {text:?}; got:\n{d}"))
                .clone()
        };
        at("credits[0]", "a credit needs an `id` (Togai's Credit) or an `idempotencyKey` (a CreditRequest)");
        let unknown = at("credits[1].accountId", "unknown account `ACC-Z`");
        assert!(unknown.file.ends_with("billing.yaml") && unknown.line == Some(4), "{unknown}");
        at("credits[2].status", "unknown credit status `GONE`, expected ACTIVE, CONSUMED, EXPIRED or VOIDED");
        at("credits[2].applicableEntityIds[0]", "unknown entity `um.nope`: expected a usage meter, add-on or feature id");
        at("credits[2].effectiveUntil", "effectiveUntil (2026-10-01, exclusive) must be after effectiveFrom (2026-10-01)");
        at("credits[2].creditAmount", "1.005 has more decimals than USD allows: its minor unit has 2 decimal place(s)");
        at("credits[3].id", "duplicate credit id `c2`");
        at("credits[3].effectiveFrom", "`Oct 1` is not a date (expected YYYY-MM-DD or an RFC 3339 date-time");
        at("credits[3].creditAmount", "1.5 has more decimals than JPY allows: its minor unit has 0 decimal place(s)");
        at("credits[4].creditAmount", "expected an amount of at least 0, found -1");
        at("credits[4].customerId", "customer `cust.b` does not own account `ACC-A` (its customer is `cust.a`)");
        at("credits[5].colour", "unknown field `colour`, expected one of `id`, `accountId`");
        at("credits[6].consumedAmount", "consumedAmount 2.00 is more than creditAmount 1.00");
        at("credits[8].idempotencyKey", "duplicate idempotencyKey `kk`: it identifies one credit");
        assert_eq!(d.0.iter().filter(|x| x.path.starts_with("credits[8]")).count(), 1, "{d}");

        at("wallets[0].creditUnit", "the wallet is in EUR but account `ACC-A` invoices in USD");
        at("wallets[0].metadata.autoNetOff", "autoNetOff: false is not supported yet");
        at("wallets[1].accountId", "account `ACC-A` already has wallet `w1`: one wallet per account");
        at("wallets[1].status", "unknown wallet status `FROZEN`, expected ACTIVE or INACTIVE");

        at("walletTopups[0].topupAmount", "expected a positive top-up amount, found 0");
        at("walletTopups[1].id", "duplicate wallet top-up id `t1`");
        at("walletTopups[1].accountId", "unknown account `ACC-Z`");

        at("invoiceGroups[0].dailyInvoiceConsolidation", "dailyInvoiceConsolidation: false is not supported yet");
        at("invoiceGroups[0].accountIds[1]", "account `ACC-E` invoices in EUR but the group has invoiceCurrency USD");
        at("invoiceGroups[0].accountIds[2]", "unknown account `ACC-Z`");
        at("invoiceGroups[1].accountIds[0]", "account `ACC-A` is already in invoice group `g1`: an account belongs to at most one group");
        at("invoiceGroups[1].accountsCount", "accountsCount is 3 but accountIds lists 1 account(s)");
        at("invoiceGroups[2].address", "give billingAddress or address");

        let var = at("miscellaneousCharges.ACC-A[0].value", "unknown line id `urc.um.nope`");
        assert!(var.message.contains("line ids of the catalog's price plans: ff.addon.platform, urc.um.calls"), "{var}");
        at("miscellaneousCharges.ACC-A[1].name", "account `ACC-A` has two miscellaneous charges named `a`");
        at("miscellaneousCharges.ACC-A[1].value", "give either `value` or `rate` and `quantity`, not both");
        at("miscellaneousCharges.ACC-A[2].quantity", "`rate` needs a `quantity`");
        at("miscellaneousCharges.ACC-A[3].value", "the JSON-logic must give a number (an amount), this one gives Bool");
        at("miscellaneousCharges.ACC-A[4].value", "0.001 has more decimals than USD allows");
        at("miscellaneousCharges.ACC-A[5]", "a miscellaneous charge needs a `value`, or a `rate` and a `quantity`");
        at("miscellaneousCharges.ACC-Z[0]", "unknown account `ACC-Z`");

        at("customInvoices[0].endDate", "endDate (2026-10-01) must not be before startDate (2026-10-05)");
        at("customInvoices[0].status", "unknown custom invoice status `VOID`, expected DRAFT, DUE or PAID");
        at("customInvoices[0].ownerType", "ownerType INVOICE_GROUP needs account `ACC-J` to be in an invoice group; it is in none");
        at("customInvoices[0].lineItems", "a custom invoice needs at least one line item");
        at("customInvoices[1].lineItems[0].value", "value 7 is not quantity × valuePerQuantity = 6");
        at("customInvoices[1].lineItems[1].valuePerQuantity", "`quantity` needs a `valuePerQuantity`");
        at("customInvoices[1].lineItems[2]", "a line item needs a `value`, or a `quantity` and a `valuePerQuantity`");
        at("customInvoices[1].lineItems[3].value", "0.001 has more decimals than USD allows");
        at("customInvoices[2]", "a custom invoice needs an `id` (billrun extension) or an `idempotencyKey`");
    }

    #[test]
    fn misc_charge_values_in_every_form() {
        let cat = load(
            r#"
miscellaneousCharges:
  ACC-A:
    - {name: text number, value: '12.50'}
    - {name: yaml number, value: 12.5}
    - {name: text logic, value: '{"max": [{"var": "ff.addon.platform"}, 10]}'}
    - {name: object logic, value: {"-": [0, {"var": ["urc.um.calls", 0]}]}}
"#,
        )
        .unwrap_or_else(|d| panic!("{d}"));
        let v: Vec<&MiscValue> = cat.billing.misc_charges.iter().map(|m| &m.value).collect();
        assert_eq!(*v[0], MiscValue::Fixed(dec("12.5")));
        assert_eq!(*v[1], MiscValue::Fixed(dec("12.5")));
        let MiscValue::Logic(Ast::Op { op: Op::Max, args }) = v[2] else { panic!("{:?}", v[2]) };
        assert_eq!(args[0], Ast::Var { var: VarRef::Named("ff.addon.platform".into()), default: None });
        let MiscValue::Logic(Ast::Op { op: Op::Sub, args }) = v[3] else { panic!("{:?}", v[3]) };
        assert_eq!(args[1], Ast::Var { var: VarRef::Named("urc.um.calls".into()), default: Some(Lit::Num(Decimal::ZERO)) });

        let d = load("miscellaneousCharges:\n  ACC-A:\n    - {name: t, value: 'hello'}\n    - {name: u, value: '{'}\n").unwrap_err();
        let msgs: Vec<String> = d.0.iter().map(|x| format!("{}: {}", x.path, x.message)).collect();
        assert!(
            msgs.iter().any(|m| m.starts_with("miscellaneousCharges.ACC-A[0].value: expected a number or a JSON-logic expression")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("miscellaneousCharges.ACC-A[1].value: `{` is neither a number nor JSON-logic text")),
            "{msgs:?}"
        );
        let d = load("miscellaneousCharges: [1]\n").unwrap_err();
        assert!(d.0.iter().any(|x| x.path == "miscellaneousCharges" && x.message == "expected a map from account id to a list"), "{d}");
    }
}
