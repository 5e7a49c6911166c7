//! Invoices in Togai's `Invoice` shape: a `revenueInfo` line-item tree (GRAND_TOTAL_AMOUNT →
//! TOTAL_AMOUNT → NET_AMOUNT → GROSS_AMOUNT → PRICE_PLAN_AMOUNT → SUB_TOTAL_AMOUNT → rate-card
//! lines → slab and adjustment children), `usageInfo`, status, type, dates and sequence ids.
//!
//! Money: a rate-card line's `value` is its full-precision amount rounded once (`money`), at the
//! currency's scale; every total is the sum of rounded lines. Children of a rate-card line
//! (slabs, clamp adjustments) show exact, unrounded values: they explain the line, they are not
//! billed separately. Pure: no I/O, no clock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Days, NaiveDate};
use compact_str::ToCompactString;
use rust_decimal::Decimal;
use serde::Serialize;
use thin_vec::ThinVec;

use crate::catalog::billing::{CustomInvoice, CustomStatus};
use crate::catalog::{
    CardRates, Catalog, CreditGrantCard, Customer, EntitlementCard, Expiry, FeeKind, FixedFeeCard, LicenseCard, PricePlan, PricingModel,
    Timing,
};
use crate::config::Organization;
use crate::handoff::{CreditGrant, Handoff, Refund};
use crate::ingest::Usage;
use crate::money::{amount_text, exact_text, format_amount, format_exact, round_line, round_ratio, Currency, Text};
use crate::rate::{rate_plan, rate_usage, CardCharge};
use crate::windows::Window;

pub const SCHEMA_VERSION: &str = "billrun.invoice.v1";

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Text>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Shared where the text comes from the catalog or is fixed (see [`shared_text`]): the same
    /// slab and card descriptions recur on every invoice of a plan.
    #[serde(serialize_with = "serialize_str")]
    pub description: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_per_quantity: Option<Text>,
    pub value: Text,
    #[serde(skip_serializing_if = "LineMeta::is_empty")]
    pub metadata: LineMeta,
    /// A thin vector (one pointer; length and capacity live in the allocation): most lines have
    /// no children, and an invoice holds ~50 lines until it is rendered.
    #[serde(skip_serializing_if = "ThinVec::is_empty")]
    pub line_items: ThinVec<LineItem>,
}

fn serialize_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

impl LineItem {
    pub(crate) fn new(kind: &'static str, description: impl Into<Arc<str>>, value: impl Into<Text>) -> Self {
        LineItem {
            id: None,
            kind,
            description: description.into(),
            quantity: None,
            value_per_quantity: None,
            value: value.into(),
            metadata: LineMeta::default(),
            line_items: ThinVec::new(),
        }
    }
}

/// `text` as a shared string: one allocation per distinct text on each rating thread, however
/// many invoices show it (slab, rate-card and total descriptions). A memo, not state: the
/// result is the text itself, so rating stays pure. Bounded: the memo starts over past
/// [`SHARED_TEXTS`] distinct texts.
pub(crate) fn shared_text(text: &str) -> Arc<str> {
    thread_local! {
        static MEMO: std::cell::RefCell<rustc_hash::FxHashMap<Box<str>, Arc<str>>> = Default::default();
    }
    MEMO.with_borrow_mut(|m| {
        if let Some(a) = m.get(text) {
            return a.clone();
        }
        if m.len() >= SHARED_TEXTS {
            m.clear();
        }
        let a: Arc<str> = Arc::from(text);
        m.insert(text.into(), a.clone());
        a
    })
}

/// Distinct texts [`shared_text`] keeps per thread.
const SHARED_TEXTS: usize = 4096;

/// A line's metadata: a few string pairs, kept sorted by key (serialized as a JSON object, like
/// a `BTreeMap`). A sorted vector rather than a `BTreeMap`: an invoice has dozens of lines with
/// two to four entries each, and a B-tree node per line was most of an invoice's memory. Keys
/// are nearly always literals, so they are not allocated. Shared, copied on write: the entries
/// of a slab line (`order`, `priceType`) are the same on every invoice of a plan, so they are
/// made once per rating thread ([`slab_meta`]) and only pointed at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineMeta(Option<Arc<ThinVec<(Cow<'static, str>, Text)>>>);

impl LineMeta {
    /// Set `key` (replacing its value when present).
    pub fn insert(&mut self, key: &'static str, value: impl Into<Text>) {
        self.set(Cow::Borrowed(key), value.into())
    }

    /// [`Self::insert`] with a key made at run time.
    pub fn insert_owned(&mut self, key: String, value: impl Into<Text>) {
        self.set(Cow::Owned(key), value.into())
    }

    fn entries(&self) -> &[(Cow<'static, str>, Text)] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// The entries to change: this line's own (copied first if they are shared).
    fn entries_mut(&mut self) -> &mut ThinVec<(Cow<'static, str>, Text)> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    fn set(&mut self, key: Cow<'static, str>, value: Text) {
        let v = self.entries_mut();
        match v.binary_search_by(|(k, _)| k.as_ref().cmp(key.as_ref())) {
            Ok(i) => v[i].1 = value,
            Err(i) => v.insert(i, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let v = self.entries();
        v.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| v[i].1.as_str())
    }

    /// Room for `n` more entries: a line's few entries in a block of their size, not of four.
    pub fn reserve(&mut self, n: usize) {
        self.entries_mut().reserve_exact(n);
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

impl Serialize for LineMeta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries().iter().map(|(k, v)| (k.as_ref(), v)))
    }
}

/// The metadata of a slab line, `order` and `priceType`: shared by every line of that slab made
/// on this thread (a memo like [`shared_text`], bounded the same way).
fn slab_meta(order: u32, price_type: &'static str) -> LineMeta {
    thread_local! {
        static MEMO: std::cell::RefCell<rustc_hash::FxHashMap<(u32, &'static str), LineMeta>> = Default::default();
    }
    MEMO.with_borrow_mut(|m| {
        if m.len() >= SHARED_TEXTS && !m.contains_key(&(order, price_type)) {
            m.clear();
        }
        m.entry((order, price_type))
            .or_insert_with(|| {
                let mut meta = LineMeta::default();
                meta.reserve(2);
                meta.insert("order", order.to_compact_string());
                meta.insert("priceType", price_type);
                meta
            })
            .clone()
    })
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_email: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub address: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceDetails {
    pub organization: Party,
    pub customer: Party,
    pub account: Party,
    pub price_plan_name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub schema_version: &'static str,
    pub id: String,
    pub sequence_id: Option<String>,
    pub status: &'static str,
    pub invoice_class: &'static str,
    pub invoice_type: &'static str,
    pub customer_id: String,
    pub account_id: String,
    pub owner_id: String,
    pub price_plan_id: String,
    pub schedule_id: String,
    pub currency: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub end_date_inclusive: NaiveDate,
    pub invoice_date: NaiveDate,
    pub due_date: NaiveDate,
    pub net_term_days: u32,
    pub total_amount: String,
    /// Paid from the wallet at issue (or PAID custom invoices); absent when nothing was paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_amount: Option<String>,
    pub usage_info: Vec<LineItem>,
    pub revenue_info: LineItem,
    pub invoice_details: InvoiceDetails,
    /// What each pricing rule did (Togai's `PricingRulesLog`); absent without rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pricing_rules_log: Vec<RuleLog>,
    /// Settlement facts: `invoiceGroupId`, `mergedInto`, `adjusts` (an adjustment's invoice).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleLog {
    pub rule_id: String,
    pub name: String,
    pub order: i64,
    /// CONDITION_TRUE | CONDITION_FALSE | CONDITION_ERROR | COMPUTATION_ERROR
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a billed line of an invoice is: a row of the invoice, as opposed to a total that groups
/// others or a slab that explains one. Ordered as credits cover lines (usage first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineClass {
    Usage,
    License,
    FixedFee,
    /// True-up, entitlements, overage, pricing-rule additions, custom-invoice lines.
    Other,
    /// A purchase of credits (never paid with credits).
    Grant,
    /// A miscellaneous charge (credits do not cover it).
    Charge,
    /// Credits applied (negative).
    Credit,
}

/// The class of a line-item `type`, if it is a billed line.
pub fn line_class(kind: &str) -> Option<LineClass> {
    Some(match kind {
        "USAGE_RATE_CARD_AMOUNT" => LineClass::Usage,
        "LICENSE_RATE_CARD_AMOUNT" | "ADVANCED_LICENSE_RATE_CARD_AMOUNT" => LineClass::License,
        "FIXED_FEE_RATE_CARD_AMOUNT" | "ADVANCED_FIXED_FEE" => LineClass::FixedFee,
        "CREDIT_GRANT_RATE_CARD_AMOUNT" | "ADVANCED_CREDIT_GRANT_RATE_CARD_AMOUNT" => LineClass::Grant,
        "BILLING_ENTITLEMENT_RATE_CARD_AMOUNT"
        | "ADVANCED_BILLING_ENTITLEMENT_RATE_CARD_AMOUNT"
        | "ENTITLEMENT_OVERAGE_RATE_CARD_AMOUNT"
        | "TRUE_UP_AMOUNT"
        | "PRICING_RULE_ADDITION_AMOUNT"
        | "CUSTOM_AMOUNT" => LineClass::Other,
        "MISCELLANEOUS_CHARGE" => LineClass::Charge,
        "SUB_CREDITS" => LineClass::Credit,
        _ => return None,
    })
}

/// An invoice plus the exact numbers behind it (for totals, tests and the manifest).
#[derive(Debug, Clone)]
pub struct BuiltInvoice {
    pub invoice: Invoice,
    pub currency: Currency,
    pub total: Decimal,
    /// (rate-card line description, rounded amount) in invoice order.
    pub lines: Vec<(String, Decimal)>,
    pub due: bool,
    /// Credits, feature credits and refunds this invoice hands to settlement.
    pub handoff: Handoff,
}

fn slab_description(c: &crate::rate::SlabCharge) -> String {
    let upper = c.upper.map(format_exact).unwrap_or_else(|| "∞".into());
    format!("Slab {} ({} – {}] {}", c.order, exact_text(c.start_after), upper, c.price_type.as_str())
}

fn card_line(
    id: String,
    description: &str,
    meter_id: &str,
    model: PricingModel,
    ch: &CardCharge,
    cur: &Currency,
    org: &Organization,
) -> (LineItem, Decimal) {
    let amount = round_line(ch.exact, cur, org.rounding);
    let mut line = LineItem::new("USAGE_RATE_CARD_AMOUNT", shared_text(description), amount_text(amount, cur));
    line.id = Some(id.into());
    line.quantity = Some(exact_text(ch.quantity));
    line.metadata.reserve(3);
    line.line_items.reserve_exact(ch.slabs.len());
    line.metadata.insert("usageMeterId", meter_id);
    line.metadata.insert(
        "pricingModel",
        match model {
            PricingModel::Tiered => "TIERED",
            PricingModel::Volume => "VOLUME",
        },
    );
    line.metadata.insert("exactValue", exact_text(ch.exact));
    for s in &ch.slabs {
        let mut sl = LineItem::new("USAGE_RATE_CARD_SLAB_AMOUNT", shared_text(&slab_description(s)), exact_text(s.revenue));
        sl.quantity = Some(exact_text(s.quantity));
        sl.value_per_quantity = Some(exact_text(s.rate));
        sl.metadata = slab_meta(s.order, s.price_type.as_str());
        if let Some(p) = s.packages {
            sl.metadata.insert("packageQuantity", exact_text(p));
        }
        line.line_items.push(sl);
        if let Some(k) = s.clamp_kind {
            let mut adj = LineItem::new(
                "RATE_CONFIG_ADJUSTMENT_AMOUNT",
                format!("Slab {} {} rate applied", s.order, k.as_str()),
                exact_text(s.adjustment),
            );
            adj.metadata.insert("appliedTo", format!("slab {}", s.order));
            line.line_items.push(adj);
        }
    }
    if let Some(k) = ch.card_clamp {
        let mut adj = LineItem::new(
            "RATE_CONFIG_ADJUSTMENT_AMOUNT",
            format!("Rate card {} rate applied", k.as_str()),
            exact_text(ch.card_adjustment),
        );
        adj.metadata.insert("appliedTo", "rate card");
        line.line_items.push(adj);
    }
    (line, amount)
}

/// The invoice's total lines, GRAND_TOTAL → TOTAL → NET → GROSS (all of `value`, no credits or
/// taxes yet), around the gross amount's children.
pub(crate) fn totals_tree(value: &str, gross_children: Vec<LineItem>) -> LineItem {
    let gross = wrap("GROSS_AMOUNT", "Gross amount", value, gross_children);
    let net = wrap("NET_AMOUNT", "Net amount", value, vec![gross]);
    let total = wrap("TOTAL_AMOUNT", "Total", value, vec![net]);
    wrap("GRAND_TOTAL_AMOUNT", "Grand total", value, vec![total])
}

pub(crate) fn wrap(kind: &'static str, description: &str, value: &str, children: impl Into<ThinVec<LineItem>>) -> LineItem {
    let mut l = LineItem::new(kind, shared_text(description), value);
    l.line_items = children.into();
    l
}

/// A fixed fee's line in a window, if the fee is charged in that window's cycle.
/// RECURRING fees with proration on a partial window charge `rate × window days / cycle days`,
/// rounded once from the exact ratio.
fn fixed_fee_line(ff: &FixedFeeCard, w: &Window, cur: &Currency, org: &Organization) -> Option<(LineItem, Decimal)> {
    if !ff.charged_in(w.cycle_index) {
        return None;
    }
    let rate = *ff.rates.get(&cur.code)?;
    let (days, cycle_days) = w.days();
    let prorate = ff.proration && w.is_partial() && matches!(ff.kind, FeeKind::Recurring { .. });
    let amount = if prorate {
        round_ratio(rate * Decimal::from(days), Decimal::from(cycle_days), cur, org.rounding)?
    } else {
        round_line(rate, cur, org.rounding)
    };
    let kind = match ff.timing {
        Timing::InAdvance => "ADVANCED_FIXED_FEE",
        Timing::InArrears => "FIXED_FEE_RATE_CARD_AMOUNT",
    };
    let mut line = LineItem::new(kind, shared_text(&ff.display_name), amount_text(amount, cur));
    line.id = Some(compact_str::format_compact!("ff.{}", ff.addon_id));
    line.quantity = Some("1".into());
    line.value_per_quantity = Some(exact_text(rate));
    line.metadata.insert("addOnId", ff.addon_id.clone());
    line.metadata.insert(
        "type",
        match ff.kind {
            FeeKind::OneTime => "ONE_TIME",
            FeeKind::Recurring { .. } => "RECURRING",
        },
    );
    if prorate {
        line.metadata.insert("prorationFactor", format!("{days}/{cycle_days}"));
        // the exact prorated value is a fraction (e.g. 686/31): shown as one, never as a truncated decimal
        line.metadata.insert("exactValue", format!("{}/{cycle_days}", exact_text(rate * Decimal::from(days))));
    }
    Some((line, amount))
}

/// The slab split of a charge as child lines of `kind` (exact values: they explain the line).
fn slab_lines(kind: &'static str, ch: &CardCharge) -> ThinVec<LineItem> {
    ch.slabs
        .iter()
        .map(|sl| {
            let mut c = LineItem::new(kind, shared_text(&slab_description(sl)), exact_text(sl.revenue));
            c.quantity = Some(exact_text(sl.quantity));
            c.value_per_quantity = Some(exact_text(sl.rate));
            c
        })
        .collect()
}

/// A card line billed at its rate-plan charge, rounded once: key as id, the quantity, the exact
/// value and the slab split (credit grants, entitlements, overage).
fn plan_line(
    kind: &'static str,
    slab_kind: &'static str,
    description: &str,
    key: &str,
    ch: &CardCharge,
    cur: &Currency,
    org: &Organization,
) -> (LineItem, Decimal) {
    let amount = round_line(ch.exact, cur, org.rounding);
    let mut line = LineItem::new(kind, shared_text(description), amount_text(amount, cur));
    line.id = Some(key.into());
    line.quantity = Some(exact_text(ch.quantity));
    line.metadata.insert("exactValue", exact_text(ch.exact));
    line.line_items = slab_lines(slab_kind, ch);
    (line, amount)
}

/// A license card's line from its slab pricing of one quantity (children: the slab split).
fn license_line(kind: &'static str, lc: &LicenseCard, ch: &CardCharge, amount: Decimal, cur: &Currency) -> LineItem {
    let mut line = LineItem::new(kind, shared_text(&lc.display_name), amount_text(amount, cur));
    line.id = Some(compact_str::format_compact!("lrc.{}", lc.addon_id));
    line.quantity = Some(exact_text(ch.quantity));
    line.metadata.insert("addOnId", lc.addon_id.clone());
    line.metadata.insert("exactValue", exact_text(ch.exact));
    line.line_items = slab_lines("LICENSE_RATE_CARD_SLAB_AMOUNT", ch);
    line
}

/// The arrears line of a license card over a window: with proration
/// `Σ_days price(quantity of the day) / days in the cycle`, else the price of the peak quantity.
fn license_arrears(
    lc: &LicenseCard,
    rates: &CardRates,
    days: &[(NaiveDate, Decimal)],
    w: &Window,
    cur: &Currency,
    org: &Organization,
) -> Option<(LineItem, Decimal)> {
    let peak = days.iter().map(|x| x.1).max().unwrap_or(Decimal::ZERO);
    if !lc.proration {
        let ch = rate_plan(lc.model, &lc.slabs, rates, peak);
        let amount = round_line(ch.exact, cur, org.rounding);
        let mut line = license_line("LICENSE_RATE_CARD_AMOUNT", lc, &ch, amount, cur);
        line.metadata.insert("basis", "peak quantity of the cycle");
        return Some((line, amount));
    }
    let (_, cycle_days) = w.days();
    let mut numerator = Decimal::ZERO;
    let mut parts = Vec::new();
    for (q, n) in crate::licenses::segments(days) {
        let ch = rate_plan(lc.model, &lc.slabs, rates, q);
        let v = ch.exact * Decimal::from(n);
        numerator += v;
        let mut c = LineItem::new("LICENSE_RATE_CARD_SLAB_AMOUNT", format!("{} license(s) × {n} day(s)", exact_text(q)), exact_text(v));
        // n days at the price of q licenses for a whole cycle
        c.quantity = Some(n.to_compact_string());
        c.value_per_quantity = Some(exact_text(ch.exact));
        c.metadata.insert("licenses", exact_text(q));
        parts.push(c);
    }
    let amount = round_ratio(numerator, Decimal::from(cycle_days), cur, org.rounding)?;
    let mut line = LineItem::new("LICENSE_RATE_CARD_AMOUNT", shared_text(&lc.display_name), amount_text(amount, cur));
    line.id = Some(compact_str::format_compact!("lrc.{}", lc.addon_id));
    line.quantity = Some(exact_text(peak));
    line.metadata.insert("addOnId", lc.addon_id.clone());
    line.metadata.insert("basis", "quantity of each day, prorated");
    line.metadata.insert("exactValue", format!("{}/{cycle_days}", exact_text(numerator)));
    line.line_items = parts.into();
    Some((line, amount))
}

struct Parts<'a> {
    w: &'a Window,
    account: &'a crate::catalog::Account,
    plan: &'a PricePlan,
    customer: &'a Customer,
}

/// A rate-card line while rules run: (key, line, billed amount, the usage card, its rates and
/// quantity for re-rating).
type CardState<'a> = (String, LineItem, Decimal, Option<(&'a crate::catalog::UsageCard, &'a CardRates, Decimal)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The cycle's arrears invoice, issued when the grace period ends.
    Standard,
    /// In-advance fees, issued on the window's first day.
    Advanced,
    /// In-advance charges for license increases during the cycle, issued on the day of the increase.
    AdHoc(NaiveDate),
}

impl Kind {
    /// (account, window start) is unique: schedules of an account never overlap.
    fn invoice_id(self, w: &Window) -> String {
        match self {
            Kind::Standard => format!("inv.{}.{}", w.account_id, w.start),
            Kind::Advanced => format!("inv.{}.{}.advance", w.account_id, w.start),
            Kind::AdHoc(d) => format!("inv.{}.{}.adhoc.{d}", w.account_id, w.start),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    p: &Parts,
    org: &Organization,
    as_of: NaiveDate,
    kind: Kind,
    tree: LineItem,
    usage_info: Vec<LineItem>,
    lines: Vec<(String, Decimal)>,
    total: Decimal,
) -> BuiltInvoice {
    let (w, account, plan, customer) = (p.w, p.account, p.plan, p.customer);
    let cur = &account.currency;
    let invoice_date = match kind {
        Kind::Standard => w.due,
        Kind::Advanced => w.start,
        Kind::AdHoc(d) => d,
    };
    let due = invoice_date <= as_of;
    let net = account.net_term_days.unwrap_or(org.net_term_days);
    let invoice = Invoice {
        schema_version: SCHEMA_VERSION,
        id: kind.invoice_id(w),
        sequence_id: None,
        status: if due { "DUE" } else { "DRAFT" },
        invoice_class: "INVOICE",
        invoice_type: match kind {
            Kind::Standard => "STANDARD",
            Kind::Advanced => "STANDARD_ADVANCED",
            Kind::AdHoc(_) => "ADHOC_ADVANCED",
        },
        customer_id: account.customer_id.clone(),
        account_id: account.id.clone(),
        owner_id: account.id.clone(),
        price_plan_id: plan.id.clone(),
        schedule_id: w.schedule_id.clone(),
        currency: cur.code.clone(),
        start_date: w.start,
        end_date: w.end,
        end_date_inclusive: w.end.pred_opt().unwrap_or(w.end),
        invoice_date,
        due_date: invoice_date + Days::new(net as u64),
        net_term_days: net,
        total_amount: format_amount(total, cur),
        paid_amount: None,
        usage_info,
        revenue_info: tree,
        invoice_details: InvoiceDetails {
            organization: Party {
                id: String::new(),
                name: org.name.clone(),
                primary_email: org.email.clone(),
                address: org.address.clone(),
            },
            customer: Party {
                id: customer.id.clone(),
                name: customer.name.clone(),
                primary_email: customer.email.clone(),
                address: customer.address.clone(),
            },
            account: Party {
                id: account.id.clone(),
                name: account.name.clone(),
                primary_email: account.email.clone(),
                address: account.address.clone(),
            },
            price_plan_name: plan.name.clone(),
        },
        pricing_rules_log: Vec::new(),
        metadata: BTreeMap::new(),
    };
    BuiltInvoice { invoice, currency: cur.clone(), total, lines, due, handoff: Handoff::default() }
}

/// Apply the plan's pricing rules of one timing, in order, each seeing the effect of the previous
/// ones, to the cards of one invoice. Returns the ADD lines and the rule log.
fn apply_rules(
    rules: &[&crate::rules::PricingRule],
    cards: &mut [CardState],
    cur: &Currency,
    org: &Organization,
) -> (Vec<(LineItem, Decimal)>, Vec<RuleLog>) {
    let mut additions: Vec<(LineItem, Decimal)> = Vec::new();
    let mut rule_log = Vec::new();
    for rule in rules {
        let vars = |n: &str| -> Option<Decimal> {
            let (kind, key) = n.split_once('.')?;
            let c = cards.iter().find(|c| c.0 == key)?;
            match kind {
                "revenue" => Some(c.2),
                "usage" => c.3.map(|x| x.2),
                _ => None,
            }
        };
        let mut entry = RuleLog {
            rule_id: rule.id.clone(),
            name: rule.name.clone(),
            order: rule.order,
            kind: "CONDITION_TRUE",
            target: None,
            before: None,
            after: None,
            error: None,
        };
        if let Some(cond) = &rule.condition {
            match crate::rules::eval(cond, &vars) {
                Ok(v) if v.truthy() => {}
                Ok(_) => {
                    entry.kind = "CONDITION_FALSE";
                    rule_log.push(entry);
                    continue;
                }
                Err(e) => {
                    entry.kind = "CONDITION_ERROR";
                    entry.error = Some(e);
                    rule_log.push(entry);
                    continue;
                }
            }
        }
        let value = match crate::rules::eval(&rule.computation, &vars) {
            Ok(crate::rules::SVal::Num(v)) => v,
            Ok(other) => {
                entry.kind = "COMPUTATION_ERROR";
                entry.error = Some(format!("the computation gave {other:?}, not a number"));
                rule_log.push(entry);
                continue;
            }
            Err(e) => {
                entry.kind = "COMPUTATION_ERROR";
                entry.error = Some(e);
                rule_log.push(entry);
                continue;
            }
        };
        match &rule.action {
            crate::rules::Action::Add { description } => {
                let amount = round_line(value, cur, org.rounding);
                let mut l = LineItem::new("PRICING_RULE_ADDITION_AMOUNT", description.as_str(), amount_text(amount, cur));
                l.id = Some(rule.id.as_str().into());
                l.metadata.insert("exactValue", exact_text(value));
                entry.after = Some(format_amount(amount, cur));
                additions.push((l, amount));
            }
            crate::rules::Action::UpdateRevenue(key) => {
                if let Some(c) = cards.iter_mut().find(|c| &c.0 == key) {
                    let amount = round_line(value, cur, org.rounding);
                    let mut adj = LineItem::new(
                        "PRICING_RULE_REVENUE_UPDATE_AMOUNT",
                        format!("Pricing rule `{}`", rule.name),
                        amount_text(amount - c.2, cur),
                    );
                    adj.metadata.insert("ruleId", rule.id.clone());
                    entry.target = Some(format!("revenue.{key}"));
                    entry.before = Some(format_amount(c.2, cur));
                    entry.after = Some(format_amount(amount, cur));
                    c.1.value = amount_text(amount, cur);
                    c.1.line_items.push(adj);
                    c.2 = amount;
                }
            }
            crate::rules::Action::UpdateUsage(key) => {
                if let Some(c) = cards.iter_mut().find(|c| &c.0 == key) {
                    if let Some((card, rates, q)) = c.3 {
                        let ch = rate_usage(card, rates, value);
                        let (mut line, amount) = card_line(key.clone(), &card.display_name, &card.meter_id, card.model, &ch, cur, org);
                        let mut adj = LineItem::new(
                            "PRICING_RULE_USAGE_UPDATE_AMOUNT",
                            format!("Pricing rule `{}`: usage {} → {}", rule.name, exact_text(q), exact_text(value)),
                            amount_text(amount - c.2, cur),
                        );
                        adj.metadata.insert("ruleId", rule.id.clone());
                        line.metadata.insert("meteredQuantity", exact_text(q));
                        line.line_items.push(adj);
                        entry.target = Some(format!("usage.{key}"));
                        entry.before = Some(format_exact(q));
                        entry.after = Some(format_exact(value));
                        *c = (key.clone(), line, amount, Some((card, rates, value)));
                    }
                }
            }
        }
        rule_log.push(entry);
    }
    (additions, rule_log)
}

/// The gross amount's children after the plan amount: the pricing-rule additions, if any.
fn with_additions(
    mut gross_children: Vec<LineItem>,
    additions: Vec<(LineItem, Decimal)>,
    lines: &mut Vec<(String, Decimal)>,
    total: &mut Decimal,
    cur: &Currency,
) -> Vec<LineItem> {
    if additions.is_empty() {
        return gross_children;
    }
    let add_total: Decimal = additions.iter().map(|a| a.1).sum();
    for (l, a) in &additions {
        lines.push((l.description.to_string(), *a));
    }
    gross_children.push(wrap(
        "TOTAL_PRICING_RULE_ADDITION_AMOUNT",
        "Pricing rule additions",
        &amount_text(add_total, cur),
        additions.into_iter().map(|a| a.0).collect::<ThinVec<_>>(),
    ));
    *total += add_total;
    gross_children
}

/// A credit grant's line (its price for `creditAmount` credits) and the credits it hands to
/// settlement, if the card is charged in this window's cycle.
fn credit_grant(
    g: &CreditGrantCard,
    w: &Window,
    kind: Kind,
    cur: &Currency,
    org: &Organization,
) -> Option<(CardState<'static>, CreditGrant)> {
    if !g.kind.charged_in(w.cycle_index) {
        return None;
    }
    let price = g.prices.get(&cur.code)?;
    let ch = rate_plan(g.model, &price.slabs, &price.rates, price.credits);
    let line_kind = if g.timing == Timing::InAdvance { "ADVANCED_CREDIT_GRANT_RATE_CARD_AMOUNT" } else { "CREDIT_GRANT_RATE_CARD_AMOUNT" };
    let key = crate::catalog::grants::grant_key(g);
    let (mut line, amount) = plan_line(line_kind, "CREDIT_GRANT_RATE_CARD_SLAB_AMOUNT", &g.display_name, &key, &ch, cur, org);
    line.metadata.insert("addOnId", g.addon_id.clone());
    line.metadata.insert("creditAmount", exact_text(price.credits));
    let effective_until = match g.expiry {
        Expiry::PricingCycle => Some(w.end),
        Expiry::NoExpiry => None,
        Expiry::Custom(d) => Some(d.add_to(w.start)),
    };
    let grant = CreditGrant {
        id: format!("{}#{}${}", w.schedule_id, w.start, g.addon_id),
        account_id: w.account_id.clone(),
        invoice_id: kind.invoice_id(w),
        source: "CREDIT_GRANT_RATE_CARD",
        add_on_id: g.addon_id.clone(),
        description: g.display_name.clone(),
        currency: cur.code.clone(),
        amount: format_exact(price.credits),
        priority: g.priority,
        expiry_type: g.expiry.as_str(),
        effective_from: w.start,
        effective_until,
        applicable_entity_ids: g.applicable_entity_ids.clone(),
        status: if g.prepaid { "ON_PAYMENT" } else { "GRANTED" },
    };
    Some(((key, line, amount, None), grant))
}

/// A billing entitlement's line: the price of `featureCreditLimit` feature credits.
fn entitlement_line(e: &EntitlementCard, cur: &Currency, org: &Organization) -> Option<CardState<'static>> {
    let rates = e.rates.get(&cur.code)?;
    let ch = rate_plan(e.model, &e.slabs, rates, e.limit);
    let line_kind = if e.timing == Timing::InAdvance {
        "ADVANCED_BILLING_ENTITLEMENT_RATE_CARD_AMOUNT"
    } else {
        "BILLING_ENTITLEMENT_RATE_CARD_AMOUNT"
    };
    let key = crate::catalog::grants::entitlement_key(e);
    let (mut line, amount) = plan_line(line_kind, "BILLING_ENTITLEMENT_RATE_CARD_SLAB_AMOUNT", &e.display_name, &key, &ch, cur, org);
    line.metadata.insert("featureId", e.feature_id.clone());
    Some((key, line, amount, None))
}

/// The arrears invoice of a window: usage cards, arrears fees, licenses, credit grants and
/// entitlements, overage, pricing rules, minimum-commitment true-up.
fn arrears_invoice(
    p: &Parts,
    catalog: &Catalog,
    org: &Organization,
    usage: &Usage,
    as_of: NaiveDate,
    license_timeline: &dyn Fn(&str) -> Vec<(i64, Decimal)>,
) -> Option<BuiltInvoice> {
    let (w, plan) = (p.w, p.plan);
    let cur = &p.account.currency;
    let has_arrears = !plan.usage_cards.is_empty()
        || plan.minimum_commitment.is_some()
        || !plan.overage_cards.is_empty()
        || !plan.entitlement_cards.is_empty()
        || plan.fixed_fee_cards.iter().any(|f| f.timing == Timing::InArrears)
        || plan.license_cards.iter().any(|l| l.timing == Timing::InArrears)
        || plan.credit_grant_cards.iter().any(|l| l.timing == Timing::InArrears)
        || plan.entitlement_cards.iter().any(|l| l.timing == Timing::InArrears);
    if !has_arrears {
        return None;
    }
    let mut handoff = Handoff::default();
    let mut cards: Vec<CardState> = Vec::new();
    let mut usage_info = Vec::new();
    for card in &plan.usage_cards {
        let Some(rates) = card.rates.get(&cur.code) else { continue };
        let q = usage.get(&(w.id, card.meter_id.clone())).copied().unwrap_or(Decimal::ZERO);
        let ch = rate_usage(card, rates, q);
        let key = format!("urc.{}", card.meter_id);
        let (line, amount) = card_line(key.clone(), &card.display_name, &card.meter_id, card.model, &ch, cur, org);
        cards.push((key, line, amount, Some((card, rates, q))));
        let meter_name = catalog.meters.get(&card.meter_id).map(|m| m.display_name.clone()).unwrap_or_default();
        if !usage_info.iter().any(|u: &LineItem| u.id.as_deref() == Some(&card.meter_id)) {
            let mut u = LineItem::new("USAGE_METER_USAGE", shared_text(&meter_name), exact_text(q));
            u.id = Some(card.meter_id.as_str().into());
            u.quantity = Some(exact_text(q));
            usage_info.push(u);
        }
    }
    for ff in plan.fixed_fee_cards.iter().filter(|f| f.timing == Timing::InArrears) {
        if let Some((line, amount)) = fixed_fee_line(ff, w, cur, org) {
            cards.push((format!("ff.{}", ff.addon_id), line, amount, None));
        }
    }
    for lc in plan.license_cards.iter().filter(|l| l.timing == Timing::InArrears) {
        let Some(rates) = lc.rates.get(&cur.code) else { continue };
        let days = crate::licenses::daily(&license_timeline(&lc.addon_id), org.time_zone, w.start, w.end, lc.max_quantity);
        if let Some((line, amount)) = license_arrears(lc, rates, &days, w, cur, org) {
            cards.push((format!("lrc.{}", lc.addon_id), line, amount, None));
        }
    }
    for g in plan.credit_grant_cards.iter().filter(|g| g.timing == Timing::InArrears) {
        if let Some((card, grant)) = credit_grant(g, w, Kind::Standard, cur, org) {
            cards.push(card);
            handoff.credit_grants.push(grant);
        }
    }
    for e in plan.entitlement_cards.iter().filter(|e| e.timing == Timing::InArrears && e.kind.charged_in(w.cycle_index)) {
        cards.extend(entitlement_line(e, cur, org));
    }
    // feature credits and overage of every feature the plan grants or bills
    let features: std::collections::BTreeSet<&str> = plan
        .entitlement_cards
        .iter()
        .map(|e| e.feature_id.as_str())
        .chain(plan.overage_cards.iter().map(|o| o.feature_id.as_str()))
        .collect();
    for f in features {
        let fu = crate::entitlements::feature_use(catalog, plan, w, usage, f);
        let (entries, overage) = crate::entitlements::entries(&fu, w, &Kind::Standard.invoice_id(w));
        handoff.feature_credits.extend(entries);
        if let (Some(oc), Some((billed, _))) = (plan.overage_cards.iter().find(|o| o.feature_id == f), overage) {
            let Some(rates) = oc.rates.get(&cur.code) else { continue };
            let ch = rate_plan(oc.model, &oc.slabs, rates, billed);
            let key = crate::catalog::grants::overage_key(oc);
            let (mut line, amount) = plan_line(
                "ENTITLEMENT_OVERAGE_RATE_CARD_AMOUNT",
                "ENTITLEMENT_OVERAGE_RATE_CARD_SLAB_AMOUNT",
                &oc.display_name,
                &key,
                &ch,
                cur,
                org,
            );
            line.metadata.insert("featureId", f.to_string());
            line.metadata.insert("featureUsage", exact_text(fu.consumed));
            line.metadata.insert("featureCreditsUsed", exact_text(fu.covered));
            cards.push((key, line, amount, None));
        }
    }
    let rules: Vec<_> = plan.pricing_rules.iter().filter(|r| r.timing == Timing::InArrears).collect();
    let (additions, rule_log) = apply_rules(&rules, &mut cards, cur, org);
    let subtotal: Decimal = cards.iter().map(|c| c.2).sum();
    let mut lines: Vec<(String, Decimal)> = cards.iter().map(|c| (c.1.description.to_string(), c.2)).collect();
    let cards: ThinVec<LineItem> = cards.into_iter().map(|c| c.1).collect();
    let sub_v = amount_text(subtotal, cur);
    let mut plan_children = vec![wrap("SUB_TOTAL_AMOUNT", "Subtotal", &sub_v, cards)];
    let mut total = subtotal;
    if let Some(mc) = &plan.minimum_commitment {
        if let Some(rate) = mc.rates.get(&cur.code) {
            let commitment = round_line(*rate, cur, org.rounding);
            let true_up = (commitment - subtotal).max(Decimal::ZERO);
            if true_up > Decimal::ZERO {
                let mut l = LineItem::new("TRUE_UP_AMOUNT", shared_text(&mc.display_name), amount_text(true_up, cur));
                l.metadata.insert("minimumCommitment", amount_text(commitment, cur));
                plan_children.push(l);
                lines.push((mc.display_name.clone(), true_up));
                total += true_up;
            }
        }
    }
    let price_plan_v = amount_text(total, cur);
    let gross = vec![wrap("PRICE_PLAN_AMOUNT", &plan.name, &price_plan_v, plan_children)];
    let gross = with_additions(gross, additions, &mut lines, &mut total, cur);
    let tree = totals_tree(&amount_text(total, cur), gross);
    let mut built = assemble(p, org, as_of, Kind::Standard, tree, usage_info, lines, total);
    built.invoice.pricing_rules_log = rule_log;
    built.handoff = handoff;
    Some(built)
}

/// The window's in-advance invoices: the STANDARD_ADVANCED invoice at the window start (fees,
/// licenses, credit grants and entitlements in advance, in-advance pricing rules) and one
/// ADHOC_ADVANCED invoice per day with license increases; decreases may be refunded.
fn advance_invoices(
    p: &Parts,
    org: &Organization,
    as_of: NaiveDate,
    license_timeline: &dyn Fn(&str) -> Vec<(i64, Decimal)>,
    out: &mut Vec<BuiltInvoice>,
) {
    let (w, plan) = (p.w, p.plan);
    let cur = &p.account.currency;
    let mut handoff = Handoff::default();
    let mut cards: Vec<CardState> = Vec::new();
    for ff in plan.fixed_fee_cards.iter().filter(|f| f.timing == Timing::InAdvance) {
        if let Some((line, amount)) = fixed_fee_line(ff, w, cur, org) {
            cards.push((format!("ff.{}", ff.addon_id), line, amount, None));
        }
    }
    let (win_days, cycle_days) = w.days();
    let mut adhoc: BTreeMap<NaiveDate, Vec<(LineItem, Decimal)>> = BTreeMap::new();
    for lc in plan.license_cards.iter().filter(|l| l.timing == Timing::InAdvance) {
        let Some(rates) = lc.rates.get(&cur.code) else { continue };
        let tl = license_timeline(&lc.addon_id);
        let q0 = crate::licenses::at_start(&tl, org.time_zone, w.start, lc.max_quantity);
        let ch = rate_plan(lc.model, &lc.slabs, rates, q0);
        let prorate = lc.proration && w.is_partial();
        let amount = if prorate {
            round_ratio(ch.exact * Decimal::from(win_days), Decimal::from(cycle_days), cur, org.rounding).unwrap_or(Decimal::ZERO)
        } else {
            round_line(ch.exact, cur, org.rounding)
        };
        let mut line = license_line("ADVANCED_LICENSE_RATE_CARD_AMOUNT", lc, &ch, amount, cur);
        if prorate {
            line.metadata.insert("prorationFactor", format!("{win_days}/{cycle_days}"));
            line.metadata.insert("exactValue", format!("{}/{cycle_days}", exact_text(ch.exact * Decimal::from(win_days))));
        }
        cards.push((format!("lrc.{}", lc.addon_id), line, amount, None));
        // changes during the cycle (known by the as-of date): increases bill the price difference,
        // prorated to the rest of the cycle when proration is on; decreases are refunded the same
        // way when the card has a proratedRefundMode (and proration), else not at all
        let mut billed = q0;
        let mut billed_price = ch.exact;
        for (day, q) in crate::licenses::daily(&tl, org.time_zone, w.start, w.end.min(as_of), lc.max_quantity) {
            if q == billed || (q < billed && (lc.refund_mode.is_none() || !lc.proration)) {
                continue;
            }
            let new = rate_plan(lc.model, &lc.slabs, rates, q);
            let diff = new.exact - billed_price;
            let remaining = (w.end - day).num_days();
            let amount = if lc.proration {
                round_ratio(diff * Decimal::from(remaining), Decimal::from(cycle_days), cur, org.rounding).unwrap_or(Decimal::ZERO)
            } else {
                round_line(diff, cur, org.rounding)
            };
            if q < billed {
                let mode = lc.refund_mode.expect("checked above");
                handoff.refunds.push(Refund {
                    id: format!("{}#{}${}${day}", w.schedule_id, w.start, lc.addon_id),
                    account_id: w.account_id.clone(),
                    invoice_id: Kind::Advanced.invoice_id(w),
                    add_on_id: lc.addon_id.clone(),
                    mode: mode.as_str(),
                    date: day,
                    currency: cur.code.clone(),
                    amount: format_amount(-amount, cur),
                    description: format!("{}: {} → {}", lc.display_name, exact_text(billed), exact_text(q)),
                    proration_factor: format!("{remaining}/{cycle_days}"),
                });
            } else {
                let mut l = LineItem::new(
                    "ADVANCED_LICENSE_RATE_CARD_AMOUNT",
                    format!("{}: {} → {}", lc.display_name, exact_text(billed), exact_text(q)),
                    amount_text(amount, cur),
                );
                l.id = Some(compact_str::format_compact!("lrc.{}", lc.addon_id));
                l.quantity = Some(exact_text(q - billed));
                l.metadata.insert("addOnId", lc.addon_id.clone());
                l.metadata.insert("priceDifference", exact_text(diff));
                if lc.proration {
                    l.metadata.insert("prorationFactor", format!("{remaining}/{cycle_days}"));
                    l.metadata.insert("exactValue", format!("{}/{cycle_days}", exact_text(diff * Decimal::from(remaining))));
                }
                adhoc.entry(day).or_default().push((l, amount));
            }
            billed = q;
            billed_price = new.exact;
        }
    }
    for g in plan.credit_grant_cards.iter().filter(|g| g.timing == Timing::InAdvance) {
        if let Some((card, grant)) = credit_grant(g, w, Kind::Advanced, cur, org) {
            cards.push(card);
            handoff.credit_grants.push(grant);
        }
    }
    for e in plan.entitlement_cards.iter().filter(|e| e.timing == Timing::InAdvance && e.kind.charged_in(w.cycle_index)) {
        cards.extend(entitlement_line(e, cur, org));
    }
    for (day, items) in adhoc {
        let t: Decimal = items.iter().map(|i| i.1).sum();
        let v = amount_text(t, cur);
        let lines: Vec<(String, Decimal)> = items.iter().map(|i| (i.0.description.to_string(), i.1)).collect();
        let tree = totals_tree(
            &v,
            vec![wrap("TOTAL_ADVANCED_FEES", "License increases in advance", &v, items.into_iter().map(|i| i.0).collect::<ThinVec<_>>())],
        );
        out.push(assemble(p, org, as_of, Kind::AdHoc(day), tree, Vec::new(), lines, t));
    }
    if cards.is_empty() {
        return;
    }
    let rules: Vec<_> = plan.pricing_rules.iter().filter(|r| r.timing == Timing::InAdvance).collect();
    let (additions, rule_log) = apply_rules(&rules, &mut cards, cur, org);
    let mut total: Decimal = cards.iter().map(|c| c.2).sum();
    let mut lines: Vec<(String, Decimal)> = cards.iter().map(|c| (c.1.description.to_string(), c.2)).collect();
    let fees_v = amount_text(total, cur);
    let gross = vec![wrap("TOTAL_ADVANCED_FEES", "Fees in advance", &fees_v, cards.into_iter().map(|c| c.1).collect::<ThinVec<_>>())];
    let gross = with_additions(gross, additions, &mut lines, &mut total, cur);
    let tree = totals_tree(&amount_text(total, cur), gross);
    let mut built = assemble(p, org, as_of, Kind::Advanced, tree, Vec::new(), lines, total);
    built.invoice.pricing_rules_log = rule_log;
    built.handoff = handoff;
    out.push(built);
}

/// Build the invoices of every window: the arrears (STANDARD) invoice, and a STANDARD_ADVANCED
/// invoice when in-advance fees are charged in the window, and the catalog's custom invoices.
/// Statuses here say only whether an invoice is due by the as-of date; settlement (`settle`)
/// gives the final status, credits, wallet payments and sequence numbers.
pub fn build_invoices(catalog: &Catalog, org: &Organization, windows: &[Window], usage: &Usage, as_of: NaiveDate) -> Vec<BuiltInvoice> {
    // windows are independent: rated on every core. A window's first invoice is collected straight
    // into one exactly sized vector (an invoice is ~1 KB inline); the rare others (in-advance and
    // ad-hoc invoices, and in-advance ones of a window without arrears) go beside it. Collecting a vector per window and flattening them held every
    // invoice twice at the run's peak (~100 MB at 100 000 invoices).
    use rayon::prelude::*;
    let (mut first, mut rest): (Vec<Option<BuiltInvoice>>, Vec<Vec<BuiltInvoice>>) = (Vec::new(), Vec::new());
    windows
        .par_iter()
        .map(|w| {
            let mut out = Vec::new();
            let (Some(account), Some(plan)) = (catalog.accounts.get(&w.account_id), catalog.plans.get(&w.plan_id)) else {
                return (None, out);
            };
            let customer = catalog.customers.get(&account.customer_id).cloned().unwrap_or_default();
            let parts = Parts { w, account, plan, customer: &customer };
            let license_timeline = |id: &str| -> Vec<(i64, Decimal)> {
                catalog
                    .licenses
                    .get(&(account.id.clone(), id.to_string()))
                    .map(|v| v.iter().map(|(t, q)| (t.timestamp_micros(), *q)).collect())
                    .unwrap_or_default()
            };
            let first = arrears_invoice(&parts, catalog, org, usage, as_of, &license_timeline);
            advance_invoices(&parts, org, as_of, &license_timeline, &mut out);
            (first, out)
        })
        .unzip_into_vecs(&mut first, &mut rest);
    // `Option<BuiltInvoice>` has BuiltInvoice's layout, so std collects this flatten in place, in
    // `first`'s buffer (measured: the bench's 10M peak fell by ~100 MB with this collect)
    let mut out: Vec<BuiltInvoice> = first.into_iter().flatten().collect();
    out.reserve_exact(rest.iter().map(Vec::len).sum::<usize>() + catalog.billing.custom_invoices.len());
    out.extend(rest.into_iter().flatten());
    out.extend(catalog.billing.custom_invoices.iter().filter_map(|ci| custom_invoice(ci, catalog, org, as_of)));
    // the order of the above does not matter: invoices are sorted by (account, start, id), which is
    // unique. A stable sort of the invoices themselves would take a buffer of half of them (~50 MB
    // at 100 000): their positions are sorted, then applied in place
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&out[a].invoice, &out[b].invoice);
        (&a.account_id, a.start_date, &a.id).cmp(&(&b.account_id, b.start_date, &b.id))
    });
    permute(&mut out, order);
    out
}

/// Reorder `v` in place so that `v[i]` becomes the old `v[order[i]]` (`order` a permutation),
/// following each cycle with swaps.
fn permute<T>(v: &mut [T], mut order: Vec<usize>) {
    for i in 0..v.len() {
        let mut j = i;
        while order[j] != i && order[j] != j {
            let k = order[j];
            v.swap(j, k);
            order[j] = j;
            j = k;
        }
        order[j] = j;
    }
}

/// The organisation, customer and account parties of an account's invoice.
pub(crate) fn parties(org: &Organization, customer: &Customer, account: &crate::catalog::Account) -> (Party, Party, Party) {
    (
        Party { id: String::new(), name: org.name.clone(), primary_email: org.email.clone(), address: org.address.clone() },
        Party {
            id: customer.id.clone(),
            name: customer.name.clone(),
            primary_email: customer.email.clone(),
            address: customer.address.clone(),
        },
        Party {
            id: account.id.clone(),
            name: account.name.clone(),
            primary_email: account.email.clone(),
            address: account.address.clone(),
        },
    )
}

/// A custom invoice of the catalog (Togai's `CreateCustomInvoiceRequest`): its lines rounded once
/// each. DUE and PAID invoices are issued on their start date; a DRAFT with `autoAdvance` becomes
/// DUE at its end date; a DRAFT without stays a preview.
pub fn custom_invoice(ci: &CustomInvoice, catalog: &Catalog, org: &Organization, as_of: NaiveDate) -> Option<BuiltInvoice> {
    let account = catalog.accounts.get(&ci.account_id)?;
    let customer = catalog.customers.get(&account.customer_id).cloned().unwrap_or_default();
    let cur = &account.currency;
    let (invoice_date, can_be_due) = match ci.status {
        CustomStatus::Due | CustomStatus::Paid => (ci.start_date, true),
        CustomStatus::Draft => (ci.end_date, ci.auto_advance),
    };
    let due = can_be_due && invoice_date <= as_of;
    let mut children = Vec::new();
    let mut lines = Vec::new();
    for (i, l) in ci.lines.iter().enumerate() {
        let amount = round_line(l.value, cur, org.rounding);
        let mut item = LineItem::new("CUSTOM_AMOUNT", l.description.as_str(), amount_text(amount, cur));
        item.id = Some(l.id.as_deref().map_or_else(|| compact_str::format_compact!("custom.{}", i + 1), Text::from));
        item.quantity = l.quantity.map(exact_text);
        item.value_per_quantity = l.value_per_quantity.map(exact_text);
        item.metadata.insert("exactValue", exact_text(l.value));
        children.push(item);
        lines.push((l.description.clone(), amount));
    }
    let total: Decimal = lines.iter().map(|l| l.1).sum();
    let tree = totals_tree(&amount_text(total, cur), children);
    let net = account.net_term_days.unwrap_or(org.net_term_days);
    let (organization, customer_p, account_p) = parties(org, &customer, account);
    let mut metadata = BTreeMap::new();
    metadata.insert("customInvoiceId".into(), ci.id.clone());
    if ci.status == CustomStatus::Paid {
        metadata.insert("paidOutside".into(), "true".into());
    }
    let invoice = Invoice {
        schema_version: SCHEMA_VERSION,
        id: format!("inv.{}.custom.{}", account.id, ci.id),
        sequence_id: None,
        status: if due { "DUE" } else { "DRAFT" },
        invoice_class: "INVOICE",
        invoice_type: "CUSTOM",
        customer_id: account.customer_id.clone(),
        account_id: account.id.clone(),
        owner_id: account.id.clone(),
        price_plan_id: String::new(),
        schedule_id: String::new(),
        currency: cur.code.clone(),
        start_date: ci.start_date,
        end_date: ci.end_date,
        end_date_inclusive: ci.end_date,
        invoice_date,
        due_date: invoice_date + Days::new(net as u64),
        net_term_days: net,
        total_amount: format_amount(total, cur),
        paid_amount: None,
        usage_info: Vec::new(),
        revenue_info: tree,
        invoice_details: InvoiceDetails { organization, customer: customer_p, account: account_p, price_plan_name: String::new() },
        pricing_rules_log: Vec::new(),
        metadata,
    };
    Some(BuiltInvoice { invoice, currency: cur.clone(), total, lines, due, handoff: Handoff::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `permute` puts each element where a sort by position would.
        #[test]
        fn permute_applies_the_order(keys in proptest::collection::vec(0u8..8, 0..64)) {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_by_key(|&i| keys[i]);
            let expected: Vec<(u8, usize)> = order.iter().map(|&i| (keys[i], i)).collect();
            let mut v: Vec<(u8, usize)> = keys.iter().copied().zip(0..).collect();
            permute(&mut v, order);
            prop_assert_eq!(v, expected);
        }
    }

    #[test]
    fn slab_metadata_is_shared_and_copied_on_write() {
        let (a, mut b) = (slab_meta(2, "PACKAGE"), slab_meta(2, "PACKAGE"));
        assert!(Arc::ptr_eq(a.0.as_ref().unwrap(), b.0.as_ref().unwrap()));
        b.insert("packageQuantity", "3");
        assert_eq!((a.get("order"), a.get("priceType"), a.get("packageQuantity")), (Some("2"), Some("PACKAGE"), None));
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"order":"2","packageQuantity":"3","priceType":"PACKAGE"}"#);
    }

    #[test]
    fn shared_texts_are_one_allocation() {
        let (a, b) = (shared_text("Slab 1 (0 – 10000] PER_UNIT"), shared_text("Slab 1 (0 – 10000] PER_UNIT"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "Slab 1 (0 – 10000] PER_UNIT");
    }
}
