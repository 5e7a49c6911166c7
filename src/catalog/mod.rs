//! The catalog: Togai API objects loaded from a directory of JSON/YAML files, validated into
//! billrun's model. Every problem is reported at once, each naming file, path and expectation.
//!
//! Layout: every `*.json`, `*.yaml`, `*.yml` file under the directory (sorted by path) is a map
//! whose keys are lists of Togai objects: `eventSchemas`, `usageMeters`, `addOns`, `features`,
//! `pricePlans`, `customers`, `accounts`, plus `accountAliases` and `accountSchedules` (maps from
//! account id to Togai's `AccountAlias` / `PricingScheduleWithPricePlanId` lists, the shapes of
//! the per-account list endpoints).

pub mod billing;
pub mod grants;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cycles::{parse_offsets, CycleConfig, Interval};
use crate::diag::{Diagnostic, Diagnostics};
use crate::doc::{self, Doc};
use crate::jsonlogic::{self, Ast, Kind};
use crate::money::Currency;
pub use grants::{CreditGrantCard, DateDuration, EntitlementCard, Expiry, Feature, OverageCard};
use raw::*;

#[derive(Debug, Clone)]
pub struct EventSchema {
    pub name: String,
    /// Declared attributes, plus the attribute fields its enrichments produce.
    pub attributes: BTreeSet<String>,
    pub dimensions: BTreeSet<String>,
    /// Derived fields, in `order`; each may read the event and the fields before it.
    pub enrichments: Vec<Enrichment>,
    /// Enrichment dependencies: name → (setting key, numeric?), read as `dependencies.<name>`.
    pub dependencies: BTreeMap<String, (String, bool)>,
}

#[derive(Debug, Clone)]
pub struct Enrichment {
    pub name: String,
    /// true: an attribute (a number); false: a dimension (text).
    pub attribute: bool,
    /// A literal (VALUE) or an expression (JSON_LOGIC).
    pub value: Ast,
}

impl jsonlogic::Scope for EventSchema {
    fn has_attribute(&self, n: &str) -> bool {
        self.attributes.contains(n)
    }
    fn has_dimension(&self, n: &str) -> bool {
        self.dimensions.contains(n)
    }
    fn dependency(&self, n: &str) -> Option<bool> {
        self.dependencies.get(n).map(|d| d.1)
    }
}

/// A setting value (Togai's `Setting`) of a scope: the organisation, a customer or an account.
#[derive(Debug, Clone)]
pub struct Setting {
    pub id: String,
    /// `setting.<namespace>.<name>`: what enrichment dependencies refer to (or the id).
    pub key: String,
    pub scope: SettingScope,
    pub value: SettingValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingScope {
    Organization,
    Customer(String),
    Account(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Numeric(Decimal),
    Text(String),
}

impl Catalog {
    /// The setting `key` as seen by an account: the account's own, else its customer's, else the
    /// organisation's.
    pub fn setting_for(&self, account: &Account, key: &str) -> Option<&Setting> {
        let matching = || self.settings.iter().filter(move |s| s.key == key || s.id == key);
        matching()
            .find(|s| s.scope == SettingScope::Account(account.id.clone()))
            .or_else(|| matching().find(|s| s.scope == SettingScope::Customer(account.customer_id.clone())))
            .or_else(|| matching().find(|s| s.scope == SettingScope::Organization))
    }
}

/// How a meter turns its events' units into one quantity per window. COUNT and SUM are
/// Togai's; the others are billrun extensions (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Count,
    Sum,
    /// Largest units of a counted event.
    Max,
    /// Smallest units of a counted event.
    Min,
    /// SUM / COUNT, keeping 4 decimals, half-up (like JSON-logic division).
    Average,
    /// Number of distinct values of the computation (numbers or text, e.g. a user id).
    UniqueCount,
    /// Units of the counted event with the latest timestamp (ties: the later arrival).
    Latest,
}

impl Aggregation {
    pub fn parse(s: &str) -> Option<Aggregation> {
        Some(match s {
            "COUNT" => Aggregation::Count,
            "SUM" => Aggregation::Sum,
            "MAX" => Aggregation::Max,
            "MIN" => Aggregation::Min,
            "AVERAGE" => Aggregation::Average,
            "UNIQUE_COUNT" => Aggregation::UniqueCount,
            "LATEST" => Aggregation::Latest,
            _ => return None,
        })
    }
    /// Does the aggregation read the computation's value (not just whether an event matched)?
    pub fn needs_units(self) -> bool {
        !matches!(self, Aggregation::Count)
    }
}

#[derive(Debug, Clone)]
pub enum FilterField {
    Attribute(String, Decimal),
    Dimension(String, String),
}

#[derive(Debug, Clone)]
pub struct Computation {
    pub order: i64,
    pub matcher: Option<Ast>,
    pub computation: Ast,
}

#[derive(Debug, Clone)]
pub struct Meter {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub aggregation: Aggregation,
    pub schema: String,
    pub filters: Vec<FilterField>,
    /// Sorted by `order`; the first whose matcher holds gives the units.
    pub computations: Vec<Computation>,
}

#[derive(Debug, Clone)]
pub struct AddOn {
    pub id: String,
    pub display_name: String,
    pub kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricingModel {
    Tiered,
    Volume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceType {
    Flat,
    PerUnit,
    Package,
}

impl PriceType {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceType::Flat => "FLAT",
            PriceType::PerUnit => "PER_UNIT",
            PriceType::Package => "PACKAGE",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Slab {
    pub order: u32,
    pub start_after: Decimal,
    pub price_type: PriceType,
    pub package_size: Option<Decimal>,
}

#[derive(Debug, Clone, Default)]
pub struct Clamp {
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct SlabRate {
    pub rate: Decimal,
    pub clamp: Clamp,
}

/// One currency's prices for a usage rate card, aligned with the card's (sorted) slabs.
#[derive(Debug, Clone)]
pub struct CardRates {
    pub slabs: Vec<SlabRate>,
    pub clamp: Clamp,
}

#[derive(Debug, Clone)]
pub struct UsageCard {
    pub display_name: String,
    pub meter_id: String,
    pub tag: Option<String>,
    pub model: PricingModel,
    /// Sorted by `startAfter`.
    pub slabs: Vec<Slab>,
    pub rates: BTreeMap<String, CardRates>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Billed on the cycle's arrears invoice, after the cycle (and its grace period).
    InArrears,
    /// Billed on a separate STANDARD_ADVANCED invoice at the start of the cycle.
    InAdvance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeKind {
    /// Charged once, in the schedule's first cycle.
    OneTime,
    /// Charged in cycle k (0 = the schedule's first) iff k ≥ offset and (k − offset) mod interval = 0.
    Recurring { interval: u32, offset: u32 },
}

#[derive(Debug, Clone)]
pub struct FixedFeeCard {
    pub display_name: String,
    pub addon_id: String,
    pub tag: Option<String>,
    pub rates: BTreeMap<String, Decimal>,
    pub timing: Timing,
    pub kind: FeeKind,
    /// Charge `rate × days in the window / days in the cycle` on partial cycles.
    pub proration: bool,
}

impl FeeKind {
    /// Is it charged in the schedule's cycle number `k` (0-based)?
    pub fn charged_in(self, k: u32) -> bool {
        match self {
            FeeKind::OneTime => k == 0,
            FeeKind::Recurring { interval, offset } => k >= offset && (k - offset).is_multiple_of(interval.max(1)),
        }
    }
}

impl FixedFeeCard {
    /// Is the fee charged in the schedule's cycle number `k` (0-based)?
    pub fn charged_in(&self, k: u32) -> bool {
        self.kind.charged_in(k)
    }
}

/// A license rate card: priced on the account's license quantity over the cycle.
#[derive(Debug, Clone)]
pub struct LicenseCard {
    pub display_name: String,
    pub addon_id: String,
    pub tag: Option<String>,
    pub timing: Timing,
    pub proration: bool,
    /// Updates beyond this quantity are not granted (DO_NOTHING): the quantity is capped.
    pub max_quantity: Option<Decimal>,
    /// In advance with proration: how a decrease during the cycle is refunded (None: not refunded).
    pub refund_mode: Option<RefundMode>,
    pub model: PricingModel,
    pub slabs: Vec<Slab>,
    pub rates: BTreeMap<String, CardRates>,
}

/// Togai's `ProratedRefundMode` besides NONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundMode {
    Credits,
    Payment,
    Wallet,
}

impl RefundMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundMode::Credits => "CREDITS",
            RefundMode::Payment => "PAYMENT",
            RefundMode::Wallet => "WALLET",
        }
    }
}

/// A plan's minimum commitment: the arrears subtotal is trued up to it.
#[derive(Debug, Clone)]
pub struct MinimumCommitment {
    pub display_name: String,
    pub rates: BTreeMap<String, Decimal>,
}

#[derive(Debug, Clone)]
pub struct PricePlan {
    pub id: String,
    pub name: String,
    pub cycle: CycleConfig,
    pub currencies: Vec<String>,
    pub usage_cards: Vec<UsageCard>,
    pub fixed_fee_cards: Vec<FixedFeeCard>,
    pub license_cards: Vec<LicenseCard>,
    pub minimum_commitment: Option<MinimumCommitment>,
    pub credit_grant_cards: Vec<CreditGrantCard>,
    pub entitlement_cards: Vec<EntitlementCard>,
    pub overage_cards: Vec<OverageCard>,
    /// Sorted by `order`.
    pub pricing_rules: Vec<crate::rules::PricingRule>,
}

#[derive(Debug, Clone, Default)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub billing_address: Option<String>,
    pub address: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Alias {
    pub value: String,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: String,
    /// The plan, or the account's override of it (`<plan>@<schedule>`), in `Catalog::plans`.
    pub plan_id: String,
    /// Local dates in the organisation's time zone; `[start, end)`.
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
    /// Keep the cycle offsets of the schedule that ends when this one starts.
    pub retain_start_offsets: bool,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub customer_id: String,
    pub currency: Currency,
    pub net_term_days: Option<u32>,
    pub email: Option<String>,
    pub address: BTreeMap<String, String>,
    pub aliases: Vec<Alias>,
    /// Sorted by start, non-overlapping.
    pub schedules: Vec<Schedule>,
}

/// Absolute license quantities from an instant on, sorted by instant.
pub type LicenseTimeline = Vec<(DateTime<Utc>, Decimal)>;

/// An alias window: (from, until, account, where it was declared).
type AliasWindow = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, String, Origin);

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub event_schemas: BTreeMap<String, EventSchema>,
    pub meters: BTreeMap<String, Meter>,
    pub addons: BTreeMap<String, AddOn>,
    pub features: BTreeMap<String, Feature>,
    pub settings: Vec<Setting>,
    pub plans: BTreeMap<String, PricePlan>,
    pub customers: BTreeMap<String, Customer>,
    pub accounts: BTreeMap<String, Account>,
    /// (account, license add-on) → absolute quantity from an instant on, sorted by instant.
    pub licenses: BTreeMap<(String, String), LicenseTimeline>,
    /// Plans with versions over time (v1 `pricingSchedule`): plan id → (from, until, version plan id),
    /// sorted; each version is in `plans` as `<plan>@v<version>`.
    pub plan_versions: BTreeMap<String, Vec<(NaiveDate, Option<NaiveDate>, String)>>,
    /// What settlement reads: credits, wallets, invoice groups, miscellaneous charges, custom invoices.
    pub billing: billing::Billing,
}

/// Where an object came from, to point diagnostics at it.
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    path: String,
    pos: Option<(usize, usize)>,
}

impl Origin {
    fn diag(&self, sub: &str, msg: impl Into<String>) -> Diagnostic {
        let path = if sub.is_empty() { self.path.clone() } else { format!("{}.{sub}", self.path) };
        Diagnostic::new(&self.file, path, msg).at(self.pos)
    }
}

#[derive(Default)]
struct RawCatalog {
    event_schemas: Vec<(Origin, RawEventSchema)>,
    meters: Vec<(Origin, RawUsageMeter)>,
    addons: Vec<(Origin, RawAddOn)>,
    features: Vec<(Origin, RawFeature)>,
    plans: Vec<(Origin, RawPricePlan)>,
    customers: Vec<(Origin, RawCustomer)>,
    accounts: Vec<(Origin, RawAccount)>,
    aliases: Vec<(Origin, String, RawAlias)>,
    schedules: Vec<(Origin, String, RawSchedule)>,
    license_updates: Vec<(Origin, RawLicenseUpdate)>,
    settings: Vec<(Origin, RawSetting)>,
    /// Credits, wallets, top-ups, invoice groups, miscellaneous charges, custom invoices.
    billing: billing::RawBilling,
}

/// Settings the catalog needs from the run configuration.
pub struct LoadContext<'a> {
    pub base_currency: &'a Currency,
    pub time_zone: chrono_tz::Tz,
}

/// Load and validate every catalog file under `dir`.
pub fn load_dir(dir: &Path, ctx: &LoadContext) -> Result<Catalog, Diagnostics> {
    let mut d = Diagnostics::default();
    let mut files = Vec::new();
    collect_files(dir, &mut files, &mut d);
    if files.is_empty() && d.is_empty() {
        d.push(Diagnostic::new(dir, "", "no catalog files (*.json, *.yaml, *.yml) found"));
    }
    files.sort();
    let mut raw = RawCatalog::default();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => load_file(f, &text, &mut raw, &mut d),
            Err(e) => d.push(Diagnostic::new(f, "", format!("cannot read: {e}"))),
        }
    }
    let cat = validate(raw, ctx, &mut d);
    if d.is_empty() {
        Ok(cat)
    } else {
        Err(d.sorted())
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, d: &mut Diagnostics) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            d.push(Diagnostic::new(dir, "", format!("cannot read the catalog directory: {e}")));
            return;
        }
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out, d);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "yaml" | "yml")) {
            out.push(p);
        }
    }
}

const KEYS: &[&str] = &[
    "eventSchemas",
    "usageMeters",
    "addOns",
    "features",
    "pricePlans",
    "customers",
    "accounts",
    "accountAliases",
    "accountSchedules",
    "licenseUpdates",
    "settings",
    "credits",
    "wallets",
    "walletTopups",
    "invoiceGroups",
    "miscellaneousCharges",
    "customInvoices",
];

fn de<T: DeserializeOwned>(doc: &Doc, file: &Path, path: &str, v: &Value, d: &mut Diagnostics) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() { path.to_string() } else { format!("{path}.{inner}") };
            let msg = e.into_inner().to_string().replace("$decimal", "number");
            d.push(Diagnostic::new(file, full.clone(), msg).at(doc.position(&full)));
            None
        }
    }
}

fn load_file(file: &Path, text: &str, raw: &mut RawCatalog, d: &mut Diagnostics) {
    let doc = match doc::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            d.push(Diagnostic::new(file, "", e.message).at(Some((e.line, e.col))));
            return;
        }
    };
    let top = match &doc.value {
        Value::Object(o) => o,
        Value::Null => return,
        _ => {
            d.push(Diagnostic::new(file, "", format!("expected a map with keys {}", KEYS.join(", "))).at(Some((1, 1))));
            return;
        }
    };
    for (key, value) in top {
        let origin = |path: String| Origin { file: file.to_path_buf(), pos: doc.item_position(&path), path };
        match key.as_str() {
            "accountAliases" | "accountSchedules" | "miscellaneousCharges" => {
                let Value::Object(map) = value else {
                    d.push(Diagnostic::new(file, key.clone(), "expected a map from account id to a list").at(doc.position(key)));
                    continue;
                };
                for (acc, list) in map {
                    let Value::Array(items) = list else {
                        let p = format!("{key}.{acc}");
                        d.push(Diagnostic::new(file, p.clone(), "expected a list").at(doc.position(&p)));
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let p = format!("{key}.{acc}[{i}]");
                        if key == "accountAliases" {
                            if let Some(a) = de(&doc, file, &p, item, d) {
                                raw.aliases.push((origin(p), acc.clone(), a));
                            }
                        } else if key == "miscellaneousCharges" {
                            if let Some(m) = de(&doc, file, &p, item, d) {
                                raw.billing.misc_charges.push((origin(p), acc.clone(), m));
                            }
                        } else if let Some(s) = de(&doc, file, &p, item, d) {
                            raw.schedules.push((origin(p), acc.clone(), s));
                        }
                    }
                }
            }
            k if KEYS.contains(&k) => {
                let Value::Array(items) = value else {
                    d.push(Diagnostic::new(file, key.clone(), "expected a list").at(doc.position(key)));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{key}[{i}]");
                    macro_rules! put {
                        ($($field:ident).+) => {
                            if let Some(x) = de(&doc, file, &p, item, d) {
                                raw.$($field).+.push((origin(p.clone()), x));
                            }
                        };
                    }
                    match k {
                        "eventSchemas" => put!(event_schemas),
                        "usageMeters" => put!(meters),
                        "addOns" => put!(addons),
                        "features" => put!(features),
                        "pricePlans" => put!(plans),
                        "customers" => put!(customers),
                        "accounts" => put!(accounts),
                        "licenseUpdates" => put!(license_updates),
                        "settings" => put!(settings),
                        "credits" => put!(billing.credits),
                        "wallets" => put!(billing.wallets),
                        "walletTopups" => put!(billing.wallet_topups),
                        "invoiceGroups" => put!(billing.invoice_groups),
                        "customInvoices" => put!(billing.custom_invoices),
                        _ => unreachable!(),
                    }
                }
            }
            other => d.push(
                Diagnostic::new(file, other, format!("unknown key `{other}`, expected one of {}", KEYS.join(", "))).at(doc.position(other)),
            ),
        }
    }
}

fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

fn config_decimal(
    o: &Origin,
    sub: &str,
    map: &Option<BTreeMap<String, Value>>,
    key: &str,
    allowed: &[&str],
    d: &mut Diagnostics,
) -> Option<Decimal> {
    let map = map.as_ref()?;
    for k in map.keys() {
        if !allowed.contains(&k.as_str()) {
            d.push(o.diag(sub, format!("unknown key `{k}`, expected one of {}", allowed.join(", "))));
        }
    }
    let v = map.get(key)?;
    let text = doc::number_text(v).or_else(|| v.as_str().map(str::to_string));
    match text.as_deref().and_then(doc::parse_decimal) {
        Some(x) => Some(x),
        None => {
            d.push(o.diag(&format!("{sub}.{key}"), format!("expected a decimal number, found {v}")));
            None
        }
    }
}

fn validate(raw: RawCatalog, ctx: &LoadContext, d: &mut Diagnostics) -> Catalog {
    let mut cat = Catalog::default();
    let mut feature_details = Vec::new();
    for (o, s) in raw.settings {
        let scope = match s.entity_type.as_str() {
            "ORGANIZATION" => SettingScope::Organization,
            "CUSTOMER" => SettingScope::Customer(s.entity_id.clone()),
            "ACCOUNT" => SettingScope::Account(s.entity_id.clone()),
            t => {
                d.push(o.diag("entityType", format!("unknown entity type `{t}`, expected ORGANIZATION, CUSTOMER or ACCOUNT")));
                continue;
            }
        };
        let value = match s.data_type.as_str() {
            "NUMERIC" => match doc::parse_decimal(s.value.trim()) {
                Some(v) => SettingValue::Numeric(v),
                None => {
                    d.push(o.diag("value", format!("a NUMERIC setting needs a decimal number, found `{}`", s.value)));
                    continue;
                }
            },
            "STRING" => SettingValue::Text(s.value.clone()),
            "JSON" | "JSON_LOGIC" => {
                d.push(o.diag("dataType", format!("{} settings are not supported yet (NUMERIC and STRING are)", s.data_type)));
                continue;
            }
            t => {
                d.push(o.diag("dataType", format!("unknown data type `{t}`, expected STRING, NUMERIC, JSON or JSON_LOGIC")));
                continue;
            }
        };
        let key = format!("setting.{}.{}", s.namespace, s.name);
        if cat.settings.iter().any(|x| x.key == key && x.scope == scope) {
            d.push(o.diag("", format!("setting `{key}` is defined twice for the same entity")));
            continue;
        }
        cat.settings.push(Setting { id: s.id, key, scope, value });
    }

    for (o, s) in raw.event_schemas {
        if let Some(v) = s.feature_details.as_ref().filter(|v| !v.is_null()) {
            feature_details.push((o.clone(), s.name.clone(), v.clone()));
        }
        if s.event_id_template.is_some() {
            d.push(o.diag("eventIdTemplate", "eventIdTemplate is not supported yet: events must carry an id"));
        }
        let mut schema = EventSchema {
            name: s.name.clone(),
            attributes: s.attributes.iter().map(|a| a.name.clone()).collect(),
            dimensions: s.dimensions.iter().map(|a| a.name.clone()).collect(),
            enrichments: Vec::new(),
            dependencies: BTreeMap::new(),
        };
        if let Some(n) = schema.attributes.intersection(&schema.dimensions).next() {
            d.push(o.diag("", format!("`{n}` is both an attribute and a dimension")));
        }
        if let Some(e) = s.enrichments.as_ref().filter(|e| !e.is_null()) {
            validate_enrichments(&o, e, &mut schema, &cat.settings, d);
        }
        if cat.event_schemas.insert(s.name.clone(), schema).is_some() {
            d.push(o.diag("name", format!("duplicate event schema `{}`", s.name)));
        }
    }

    for (o, m) in raw.meters {
        let Some(schema) = cat.event_schemas.get(&m.event_schema_name) else {
            d.push(o.diag("eventSchemaName", format!("unknown event schema `{}`", m.event_schema_name)));
            continue;
        };
        let Some(aggregation) = Aggregation::parse(&m.aggregation) else {
            d.push(o.diag(
                "aggregation",
                format!(
                    "unknown aggregation `{}`, expected COUNT or SUM (or the extensions MAX, MIN, AVERAGE, UNIQUE_COUNT, LATEST)",
                    m.aggregation
                ),
            ));
            continue;
        };
        if let Some(k) = &m.kind {
            if k != "COUNTER" {
                d.push(o.diag("type", format!("unknown meter type `{k}`, expected COUNTER")));
            }
        }
        let mut filters = Vec::new();
        for (i, f) in m.filters.iter().enumerate() {
            let sub = format!("filters[{i}]");
            let value = doc::number_text(&f.value).or_else(|| f.value.as_str().map(str::to_string));
            let Some(value) = value else {
                d.push(o.diag(&format!("{sub}.value"), "expected a string or a number"));
                continue;
            };
            let (is_dim, name) = if let Some(n) = f.field.strip_prefix("dimensions.").or(f.field.strip_prefix("dimension.")) {
                (Some(true), n)
            } else if let Some(n) = f.field.strip_prefix("attributes.").or(f.field.strip_prefix("attribute.")) {
                (Some(false), n)
            } else {
                (None, f.field.as_str())
            };
            let dim = schema.dimensions.contains(name) && is_dim != Some(false);
            let attr = schema.attributes.contains(name) && is_dim != Some(true);
            if dim {
                filters.push(FilterField::Dimension(name.to_string(), value));
            } else if attr {
                match doc::parse_decimal(&value) {
                    Some(v) => filters.push(FilterField::Attribute(name.to_string(), v)),
                    None => d.push(o.diag(&format!("{sub}.value"), format!("attribute `{name}` is numeric; `{value}` is not a number"))),
                }
            } else {
                d.push(o.diag(
                    &format!("{sub}.field"),
                    format!("`{}` is neither a dimension nor an attribute of event schema `{}`", f.field, schema.name),
                ));
            }
        }
        let mut comps = Vec::new();
        for (i, c) in m.computations.iter().enumerate() {
            let sub = format!("computations[{i}]");
            let matcher = match &c.matcher {
                None | Some(Value::Null) => None,
                Some(v) => match jsonlogic::parse_rule(v, schema).and_then(|a| jsonlogic::kind(&a).map(|_| a)) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        d.push(o.diag(&format!("{sub}.matcher"), e));
                        continue;
                    }
                },
            };
            let computation = match jsonlogic::parse_rule(&c.computation, schema) {
                Ok(a) => match jsonlogic::kind(&a) {
                    Ok(Kind::Num) | Ok(Kind::Null) => a,
                    Ok(Kind::Str) if aggregation == Aggregation::UniqueCount => a,
                    Ok(k) => {
                        d.push(o.diag(&format!("{sub}.computation"), format!("a computation must give a number, this one gives {k:?}")));
                        continue;
                    }
                    Err(e) => {
                        d.push(o.diag(&format!("{sub}.computation"), e));
                        continue;
                    }
                },
                Err(e) => {
                    d.push(o.diag(&format!("{sub}.computation"), e));
                    continue;
                }
            };
            comps.push(Computation { order: c.order, matcher, computation });
        }
        comps.sort_by_key(|c| c.order);
        if aggregation.needs_units() && comps.is_empty() {
            d.push(o.diag("computations", format!("a {} meter needs a computation (e.g. {{\"var\": \"attribute.x\"}})", m.aggregation)));
        }
        let display_name = m.billable_name.clone().or(m.display_name.clone()).unwrap_or_else(|| m.name.clone());
        let meter =
            Meter { id: m.id.clone(), name: m.name, display_name, aggregation, schema: m.event_schema_name, filters, computations: comps };
        if cat.meters.insert(m.id.clone(), meter).is_some() {
            d.push(o.diag("id", format!("duplicate usage meter id `{}`", m.id)));
        }
    }

    for (o, a) in raw.addons {
        if !matches!(a.kind.as_str(), "FIXED_FEE" | "LICENSE" | "NAMED_LICENSE" | "CREDIT_GRANT") {
            d.push(o.diag("type", format!("unknown add-on type `{}`, expected FIXED_FEE, LICENSE, NAMED_LICENSE or CREDIT_GRANT", a.kind)));
        }
        let display_name = a.billable_name.clone().or(a.display_name.clone()).unwrap_or_else(|| a.name.clone());
        if cat.addons.insert(a.id.clone(), AddOn { id: a.id.clone(), display_name, kind: a.kind }).is_some() {
            d.push(o.diag("id", format!("duplicate add-on id `{}`", a.id)));
        }
    }
    grants::features(raw.features, feature_details, &mut cat, d);

    // each plan's raw cycle and currencies, the defaults of per-account overrides
    let mut plan_defaults: BTreeMap<String, (Option<RawPricingCycleConfig>, Vec<String>)> = BTreeMap::new();
    for (o, p) in raw.plans {
        let defaults = match &p.price_plan_details {
            Some(det) => (det.pricing_cycle_config.clone(), det.supported_currencies.clone()),
            None => (p.pricing_cycle_config.clone(), p.supported_currencies.clone().unwrap_or_default()),
        };
        plan_defaults.insert(p.id.clone(), defaults);
        if p.pricing_schedule.is_some() {
            validate_versions(&o, p, ctx.time_zone, &mut cat, d);
            continue;
        }
        if let Some(plan) = validate_plan(&o, p, &cat, d) {
            if cat.plans.insert(plan.id.clone(), plan.clone()).is_some() {
                d.push(o.diag("id", format!("duplicate price plan id `{}`", plan.id)));
            }
        }
    }

    for (o, c) in raw.customers {
        let customer = Customer {
            id: c.id.clone(),
            name: c.name,
            email: c.primary_email,
            billing_address: c.billing_address,
            address: address_map(c.address),
        };
        if cat.customers.insert(c.id.clone(), customer).is_some() {
            d.push(o.diag("id", format!("duplicate customer id `{}`", c.id)));
        }
    }

    let mut all_aliases: BTreeMap<String, Vec<AliasWindow>> = BTreeMap::new();
    for (o, a) in raw.accounts {
        if !cat.customers.contains_key(&a.customer_id) {
            d.push(o.diag("customerId", format!("unknown customer `{}`", a.customer_id)));
        }
        let currency = match &a.invoice_currency {
            None => ctx.base_currency.clone(),
            Some(c) => Currency::new(c).unwrap_or_else(|| {
                d.push(o.diag("invoiceCurrency", format!("`{c}` is not an ISO 4217 currency code")));
                ctx.base_currency.clone()
            }),
        };
        let aliases: Vec<Alias> = a
            .aliases
            .into_iter()
            .map(|x| Alias {
                value: match x {
                    RawAccountAlias::Plain(s) => s,
                    RawAccountAlias::Object(o) => o.alias,
                },
                from: None,
                until: None,
            })
            .collect();
        for al in &aliases {
            all_aliases.entry(al.value.clone()).or_default().push((None, None, a.id.clone(), o.clone()));
        }
        let account = Account {
            id: a.id.clone(),
            name: a.name,
            customer_id: a.customer_id,
            currency,
            net_term_days: a.net_term_days,
            email: a.primary_email,
            address: address_map(a.address),
            aliases,
            schedules: Vec::new(),
        };
        if cat.accounts.insert(a.id.clone(), account).is_some() {
            d.push(o.diag("id", format!("duplicate account id `{}`", a.id)));
        }
    }
    for (o, acc, a) in raw.aliases {
        let from = a.effective_from.as_deref().map(|s| (s, parse_instant(s)));
        let until = a.effective_until.as_deref().map(|s| (s, parse_instant(s)));
        let mut ok = true;
        for (k, v) in [("effectiveFrom", &from), ("effectiveUntil", &until)] {
            if let Some((s, None)) = v {
                d.push(o.diag(k, format!("`{s}` is not a date-time (expected RFC 3339, e.g. 2026-10-01T00:00:00Z)")));
                ok = false;
            }
        }
        let (from, until) = (from.and_then(|x| x.1), until.and_then(|x| x.1));
        if let (Some(f), Some(u)) = (from, until) {
            if f >= u {
                d.push(o.diag("effectiveUntil", "effectiveUntil must be after effectiveFrom"));
                ok = false;
            }
        }
        match cat.accounts.get_mut(&acc) {
            None => d.push(o.diag("", format!("unknown account `{acc}`"))),
            Some(account) if ok => {
                account.aliases.push(Alias { value: a.value.clone(), from, until });
                all_aliases.entry(a.value.clone()).or_default().push((from, until, acc.clone(), o.clone()));
            }
            Some(_) => {}
        }
    }
    for (alias, windows) in &all_aliases {
        if cat.accounts.contains_key(alias) {
            let o = &windows[0].3;
            d.push(o.diag("", format!("alias `{alias}` is also an account id")));
        }
        for (i, a) in windows.iter().enumerate() {
            for b in &windows[i + 1..] {
                let overlap = a.0.max(b.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
                    < match (a.1, b.1) {
                        (Some(x), Some(y)) => x.min(y),
                        (Some(x), None) | (None, Some(x)) => x,
                        (None, None) => DateTime::<Utc>::MAX_UTC,
                    };
                if overlap {
                    d.push(b.3.diag("", format!("alias `{alias}` overlaps another alias window (accounts `{}` and `{}`)", a.2, b.2)));
                }
            }
        }
    }
    for (o, acc, s) in raw.schedules {
        let start = parse_instant(&s.start_date);
        let end = s.end_date.as_deref().map(|e| (e, parse_instant(e)));
        if start.is_none() {
            d.push(o.diag("startDate", format!("`{}` is not a date-time", s.start_date)));
        }
        if let Some((e, None)) = end {
            d.push(o.diag("endDate", format!("`{e}` is not a date-time")));
        }
        if !cat.plans.contains_key(&s.price_plan_id) {
            d.push(o.diag("pricePlanId", format!("unknown price plan `{}`", s.price_plan_id)));
        }
        let (Some(start), end) = (start, end.and_then(|e| e.1)) else { continue };
        let tz = ctx.time_zone;
        let start_d = crate::cycles::local_date(tz, start);
        let end_d = end.map(|e| crate::cycles::local_date(tz, e));
        if end_d.is_some_and(|e| e <= start_d) {
            d.push(o.diag("endDate", "endDate must be after startDate"));
            continue;
        }
        let Some(account) = cat.accounts.get(&acc).cloned() else {
            d.push(o.diag("", format!("unknown account `{acc}`")));
            continue;
        };
        if let Some(plan) = cat.plans.get(&s.price_plan_id) {
            if !plan.currencies.contains(&account.currency.code) {
                d.push(o.diag(
                    "pricePlanId",
                    format!("price plan `{}` does not support the account's invoice currency {}", plan.id, account.currency.code),
                ));
            }
        }
        let n = account.schedules.len();
        let id = s.id.clone().unwrap_or_else(|| format!("sch.{acc}.{n}"));
        let mut plan_id = s.price_plan_id.clone();
        // a schedule may pin one version of a plan with versions
        if let (Some(v), true) = (s.version, cat.plan_versions.contains_key(&s.price_plan_id)) {
            let pinned = format!("{}@v{v}", s.price_plan_id);
            if cat.plans.contains_key(&pinned) {
                plan_id = pinned;
            } else {
                d.push(o.diag("version", format!("price plan `{}` has no version {v}", s.price_plan_id)));
            }
        }
        let overridden =
            s.price_plan_details.as_ref().is_some_and(|v| !v.is_null()) || s.pricing_rules.as_ref().is_some_and(|r| !r.is_empty());
        if overridden {
            if let Some(base) = cat.plans.get(&plan_id).cloned() {
                let defaults = plan_defaults.get(&base.id).cloned().unwrap_or_default();
                if let Some(p) = override_plan(&o, &s, &base, defaults, &id, &cat, d) {
                    plan_id = p.id.clone();
                    cat.plans.insert(p.id.clone(), p);
                }
            }
        }
        let Some(account) = cat.accounts.get_mut(&acc) else { continue };
        account.schedules.push(Schedule {
            id,
            plan_id,
            start: start_d,
            end: end_d,
            retain_start_offsets: s.retain_start_offsets == Some(true),
        });
        account.schedules.sort_by_key(|s| s.start);
        for w in account.schedules.windows(2) {
            if w[0].end.is_none_or(|e| e > w[1].start) {
                d.push(o.diag("", format!("schedules of account `{acc}` overlap ({} and {})", w[0].id, w[1].id)));
            }
        }
    }
    // retainStartOffsets needs a schedule in force until this one starts, on the same interval
    for account in cat.accounts.values() {
        for (i, sch) in account.schedules.iter().enumerate().filter(|(_, s)| s.retain_start_offsets) {
            let prev = i.checked_sub(1).map(|j| &account.schedules[j]).filter(|p| p.end == Some(sch.start));
            let interval = |id: &str| cat.plans.get(id).map(|p| p.cycle.interval);
            let problem = match prev {
                None => Some("retainStartOffsets needs another schedule of the account that ends on this one's start date".to_string()),
                Some(p) if interval(&p.plan_id) != interval(&sch.plan_id) => {
                    Some(format!("retainStartOffsets needs the same interval as schedule `{}`", p.id))
                }
                _ => None,
            };
            if let Some(m) = problem {
                d.push(Diagnostic::new("catalog", format!("accountSchedules.{}.{}", account.id, sch.id), m));
            }
        }
    }
    // license updates → absolute quantities over time, per (account, license)
    // (instant, declaration order, relative?, quantity)
    #[allow(clippy::type_complexity)]
    let mut updates: BTreeMap<(String, String), Vec<(DateTime<Utc>, usize, bool, Decimal)>> = BTreeMap::new();
    for (i, (o, u)) in raw.license_updates.iter().enumerate() {
        if !cat.accounts.contains_key(&u.account_id) {
            d.push(o.diag("accountId", format!("unknown account `{}`", u.account_id)));
            continue;
        }
        if cat.addons.get(&u.license_id).is_none_or(|a| a.kind != "LICENSE") {
            d.push(o.diag("licenseId", format!("`{}` is not a LICENSE add-on", u.license_id)));
            continue;
        }
        let relative = match u.update_type.as_deref() {
            None | Some("ABSOLUTE") => false,
            Some("RELATIVE") => true,
            Some(t) => {
                d.push(o.diag("updateType", format!("unknown update type `{t}`, expected ABSOLUTE or RELATIVE")));
                continue;
            }
        };
        let Some(at) = parse_instant(&u.effective_from) else {
            d.push(o.diag("effectiveFrom", format!("`{}` is not a date-time", u.effective_from)));
            continue;
        };
        updates.entry((u.account_id.clone(), u.license_id.clone())).or_default().push((at, i, relative, u.quantity.0));
    }
    for (key, mut list) in updates {
        list.sort_by_key(|x| (x.0, x.1));
        let mut q = Decimal::ZERO;
        let mut timeline = Vec::new();
        for (at, _, relative, v) in list {
            q = if relative { q + v } else { v };
            if q < Decimal::ZERO {
                q = Decimal::ZERO;
            }
            timeline.push((at, q));
        }
        cat.licenses.insert(key, timeline);
    }
    cat.billing = billing::validate(raw.billing, &cat, d);
    cat
}

fn address_map(a: Option<RawAddress>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(a) = a {
        for (k, v) in [
            ("phoneNumber", a.phone_number),
            ("line1", a.line1),
            ("line2", a.line2),
            ("postalCode", a.postal_code),
            ("city", a.city),
            ("state", a.state),
            ("country", a.country),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

/// A granting card awaiting validation: (kind, path, rate card displayName, tag, details).
type GrantingCard = (GrantKind, String, Option<String>, Option<String>, Value);

#[derive(Debug, Clone, Copy)]
enum GrantKind {
    Credit,
    Entitlement,
    Overage,
}

fn validate_cycle(o: &Origin, sub: &str, c: &RawPricingCycleConfig, d: &mut Diagnostics) -> Option<CycleConfig> {
    let Some(interval) = Interval::parse(&c.interval) else {
        d.push(o.diag(
            &format!("{sub}.interval"),
            format!("unknown interval `{}`, expected WEEKLY, MONTHLY, QUARTERLY, HALF_YEARLY or ANNUALLY", c.interval),
        ));
        return None;
    };
    let text = |v: &Value| doc::number_text(v).or_else(|| v.as_str().map(str::to_string));
    let (day, month) = match &c.start_offset {
        None => ("1".to_string(), None),
        Some(s) => (text(&s.day_offset).unwrap_or_default(), s.month_offset.as_ref().and_then(text)),
    };
    match parse_offsets(interval, &day, month.as_deref()) {
        Ok((day, month)) => {
            Some(CycleConfig { interval, day, month, grace_days: c.grace_period, anniversary: c.anniversary_cycle == Some(true) })
        }
        Err(e) => {
            d.push(o.diag(&format!("{sub}.startOffset"), e));
            None
        }
    }
}

fn validate_plan(o: &Origin, p: RawPricePlan, cat: &Catalog, d: &mut Diagnostics) -> Option<PricePlan> {
    if let Some(k) = &p.kind {
        if k == "PURCHASE" {
            d.push(o.diag("type", "PURCHASE price plans are not supported yet"));
        } else if k != "BILLING" {
            d.push(o.diag("type", format!("unknown price plan type `{k}`, expected BILLING or PURCHASE")));
        }
    }
    let mut usage = Vec::new();
    let mut fixed = Vec::new();
    let mut minimum: Option<(String, Option<String>, Value)> = None;
    let mut licenses: Vec<(String, Option<String>, Option<String>, &RawLicenseRateCard)> = Vec::new();
    let mut granting: Vec<GrantingCard> = Vec::new();
    let (cycle_raw, currencies, cycle_sub) = match (&p.rate_cards, &p.price_plan_details) {
        (Some(cards), None) => {
            for (i, c) in cards.iter().enumerate() {
                let sub = format!("rateCards[{i}]");
                let det = &c.rate_card_details;
                let present = [
                    det.usage_rate_card.is_some(),
                    det.fixed_fee_rate_card.is_some(),
                    det.minimum_commitment_rate_card.is_some(),
                    det.license_rate_card.is_some(),
                    det.billing_entitlement_rate_card.is_some(),
                    det.entitlement_overage_rate_card.is_some(),
                    det.credit_grant_rate_card.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if present != 1 {
                    d.push(o.diag(&format!("{sub}.rateCardDetails"), "exactly one rate card detail is required"));
                    continue;
                }
                match (c.kind.as_str(), &det.usage_rate_card, &det.fixed_fee_rate_card) {
                    ("USAGE", Some(u), _) => usage.push((
                        format!("{sub}.rateCardDetails.usageRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        u,
                    )),
                    ("FIXED_FEE", _, Some(f)) => fixed.push((
                        format!("{sub}.rateCardDetails.fixedFeeRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        f,
                    )),
                    ("MINIMUM_COMMITMENT", _, _) if det.minimum_commitment_rate_card.is_some() => {
                        let sub = format!("{sub}.rateCardDetails.minimumCommitmentRateCard");
                        if minimum.is_some() {
                            d.push(o.diag(&sub, "a price plan has at most one minimum commitment"));
                        }
                        minimum = Some((
                            sub,
                            c.display_name.clone().or(c.name.clone()),
                            det.minimum_commitment_rate_card.clone().expect("checked"),
                        ));
                    }
                    ("LICENSE", _, _) if det.license_rate_card.is_some() => licenses.push((
                        format!("{sub}.rateCardDetails.licenseRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        det.license_rate_card.as_ref().expect("checked"),
                    )),
                    ("CREDIT_GRANT", _, _) if det.credit_grant_rate_card.is_some() => granting.push((
                        GrantKind::Credit,
                        format!("{sub}.rateCardDetails.creditGrantRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        det.credit_grant_rate_card.clone().expect("checked"),
                    )),
                    ("BILLING_ENTITLEMENT", _, _) if det.billing_entitlement_rate_card.is_some() => granting.push((
                        GrantKind::Entitlement,
                        format!("{sub}.rateCardDetails.billingEntitlementRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        det.billing_entitlement_rate_card.clone().expect("checked"),
                    )),
                    ("ENTITLEMENT_OVERAGE", _, _) if det.entitlement_overage_rate_card.is_some() => granting.push((
                        GrantKind::Overage,
                        format!("{sub}.rateCardDetails.entitlementOverageRateCard"),
                        c.display_name.clone().or(c.name.clone()),
                        c.tag.clone(),
                        det.entitlement_overage_rate_card.clone().expect("checked"),
                    )),
                    (
                        "USAGE"
                        | "FIXED_FEE"
                        | "MINIMUM_COMMITMENT"
                        | "LICENSE"
                        | "CREDIT_GRANT"
                        | "BILLING_ENTITLEMENT"
                        | "ENTITLEMENT_OVERAGE",
                        _,
                        _,
                    ) => d.push(o.diag(&format!("{sub}.type"), format!("type {} does not match its rateCardDetails", c.kind))),
                    (other, _, _) => d.push(o.diag(&format!("{sub}.type"), format!("unknown rate card type `{other}`"))),
                }
            }
            (p.pricing_cycle_config.clone(), p.supported_currencies.clone().unwrap_or_default(), "pricingCycleConfig".to_string())
        }
        (None, Some(det)) => {
            for (i, l) in det.license_rate_cards.iter().enumerate() {
                licenses.push((format!("pricePlanDetails.licenseRateCards[{i}]"), None, None, l));
            }
            for (kind, name, list) in [
                (GrantKind::Credit, "creditGrantRateCards", &det.credit_grant_rate_cards),
                (GrantKind::Entitlement, "billingEntitlementRateCards", &det.billing_entitlement_rate_cards),
                (GrantKind::Overage, "entitlementOverageRateCards", &det.entitlement_overage_rate_cards),
            ] {
                for (i, v) in list.iter().enumerate() {
                    granting.push((kind, format!("pricePlanDetails.{name}[{i}]"), None, None, v.clone()));
                }
            }
            if let Some(m) = det.minimum_commitment.as_ref().filter(|v| !v.is_null()) {
                minimum = Some(("pricePlanDetails.minimumCommitment".into(), None, m.clone()));
            }
            for (i, u) in det.usage_rate_cards.iter().enumerate() {
                usage.push((format!("pricePlanDetails.usageRateCards[{i}]"), None, None, u));
            }
            for (i, f) in det.fixed_fee_rate_cards.iter().enumerate() {
                fixed.push((format!("pricePlanDetails.fixedFeeRateCards[{i}]"), None, None, f));
            }
            (det.pricing_cycle_config.clone(), det.supported_currencies.clone(), "pricePlanDetails.pricingCycleConfig".to_string())
        }
        (Some(_), Some(_)) => {
            d.push(o.diag("", "give either rateCards (v2) or pricePlanDetails (v1), not both"));
            return None;
        }
        (None, None) => {
            d.push(o.diag("", "a price plan needs rateCards (v2) or pricePlanDetails (v1)"));
            return None;
        }
    };
    let Some(cycle_raw) = cycle_raw else {
        d.push(o.diag(&cycle_sub, "pricingCycleConfig is required"));
        return None;
    };
    let cycle = validate_cycle(o, &cycle_sub, &cycle_raw, d);
    if currencies.is_empty() {
        d.push(o.diag("supportedCurrencies", "at least one supported currency is required"));
    }
    for c in &currencies {
        if Currency::new(c).is_none() {
            d.push(o.diag("supportedCurrencies", format!("`{c}` is not an ISO 4217 currency code")));
        }
    }
    let mut usage_cards = Vec::new();
    for (sub, name, tag, u) in usage {
        if let Some(card) = validate_usage_card(o, &sub, name, tag, u, &currencies, cat, d) {
            usage_cards.push(card);
        }
    }
    let mut fixed_fee_cards = Vec::new();
    for (sub, name, tag, f) in fixed {
        let Some(addon) = cat.addons.get(&f.id) else {
            d.push(o.diag(&format!("{sub}.id"), format!("unknown add-on `{}`", f.id)));
            continue;
        };
        if addon.kind != "FIXED_FEE" {
            d.push(o.diag(&format!("{sub}.id"), format!("add-on `{}` is a {}, not a FIXED_FEE", f.id, addon.kind)));
        }
        let timing = match f.invoice_timing.as_deref() {
            None | Some("IN_ARREARS") => Timing::InArrears,
            Some("IN_ADVANCE") => Timing::InAdvance,
            Some("PREPAID") => {
                d.push(o.diag(&format!("{sub}.invoiceTiming"), "PREPAID fixed fees are not supported yet"));
                Timing::InArrears
            }
            Some(t) => {
                d.push(o.diag(&format!("{sub}.invoiceTiming"), format!("unknown invoice timing `{t}`, expected IN_ADVANCE or IN_ARREARS")));
                Timing::InArrears
            }
        };
        let (interval, offset) = match &f.recurrence_config {
            None => (1, 0),
            Some(r) => (r.interval.unwrap_or(1), r.offset.unwrap_or(0)),
        };
        if interval < 1 || offset < 0 || interval > u32::MAX as i64 || offset > u32::MAX as i64 {
            d.push(o.diag(&format!("{sub}.recurrenceConfig"), "interval must be at least 1 and offset at least 0"));
        }
        let kind = match f.kind.as_deref() {
            None | Some("RECURRING") => FeeKind::Recurring { interval: interval.max(1) as u32, offset: offset.max(0) as u32 },
            Some("ONE_TIME") => FeeKind::OneTime,
            Some(t) => {
                d.push(o.diag(&format!("{sub}.type"), format!("unknown fixed fee type `{t}`, expected ONE_TIME or RECURRING")));
                FeeKind::OneTime
            }
        };
        let rates = rate_map(o, &sub, f.rate_values.iter().map(|r| (r.currency.clone(), r.rate.0)), &currencies, d);
        fixed_fee_cards.push(FixedFeeCard {
            display_name: name.or(f.display_name.clone()).or(f.name.clone()).unwrap_or_else(|| addon.display_name.clone()),
            addon_id: f.id.clone(),
            tag: tag.or(f.tag.clone()),
            rates,
            timing,
            kind,
            proration: f.enable_proration,
        });
    }
    let mut license_cards = Vec::new();
    for (sub, name, tag, l) in licenses {
        let Some(addon) = cat.addons.get(&l.id) else {
            d.push(o.diag(&format!("{sub}.id"), format!("unknown add-on `{}`", l.id)));
            continue;
        };
        if addon.kind != "LICENSE" {
            d.push(o.diag(
                &format!("{sub}.id"),
                format!(
                    "add-on `{}` is a {}, {}",
                    l.id,
                    addon.kind,
                    if addon.kind == "NAMED_LICENSE" { "and named licenses are not supported yet" } else { "not a LICENSE" }
                ),
            ));
            continue;
        }
        if l.kind.as_deref().is_some_and(|k| k != "LICENSE") {
            d.push(o.diag(&format!("{sub}.type"), "only LICENSE (not NAMED_LICENSE) license rate cards are supported yet"));
            continue;
        }
        if l.usage_cycle.as_ref().is_some_and(|v| !v.is_null()) {
            d.push(o.diag(&format!("{sub}.usageCycle"), "usageCycle is not supported yet"));
            continue;
        }
        let timing = match l.invoice_timing.as_deref() {
            None | Some("IN_ARREARS") => Timing::InArrears,
            Some("IN_ADVANCE") => Timing::InAdvance,
            Some(t) => {
                d.push(o.diag(&format!("{sub}.invoiceTiming"), format!("`{t}` license timing is not supported (IN_ADVANCE, IN_ARREARS)")));
                continue;
            }
        };
        let refund_mode = match l.prorated_refund_mode.as_deref() {
            None | Some("NONE") => None,
            Some(m) => {
                let mode = match m {
                    "CREDITS" => RefundMode::Credits,
                    "PAYMENT" => RefundMode::Payment,
                    "WALLET" => RefundMode::Wallet,
                    other => {
                        d.push(o.diag(
                            &format!("{sub}.proratedRefundMode"),
                            format!("unknown refund mode `{other}`, expected NONE, CREDITS, PAYMENT or WALLET"),
                        ));
                        continue;
                    }
                };
                if timing != Timing::InAdvance || !l.enable_proration {
                    d.push(o.diag(
                        &format!("{sub}.proratedRefundMode"),
                        "prorated refunds apply to IN_ADVANCE license rate cards with enableProration; this card would never refund",
                    ));
                    continue;
                }
                Some(mode)
            }
        };
        let Some((model, slabs, rates)) = validate_rate_plan(o, &sub, &l.rate_plan, &l.rate_values, &currencies, d) else { continue };
        license_cards.push(LicenseCard {
            display_name: name.or(l.display_name.clone()).or(l.name.clone()).unwrap_or_else(|| addon.display_name.clone()),
            addon_id: l.id.clone(),
            tag: tag.or(l.tag.clone()),
            timing,
            proration: l.enable_proration,
            max_quantity: l.config.as_ref().and_then(|c| c.max_quantity.map(|m| m.0)),
            refund_mode,
            model,
            slabs,
            rates,
        });
    }
    let minimum_commitment = minimum.and_then(|(sub, name, v)| {
        let m: RawMinimumCommitment = match serde_json::from_value(v) {
            Ok(m) => m,
            Err(e) => {
                d.push(o.diag(&sub, e.to_string().replace("$decimal", "number")));
                return None;
            }
        };
        let rates = rate_map(o, &sub, m.rate_values.iter().map(|r| (r.currency.clone(), r.rate.0)), &currencies, d);
        Some(MinimumCommitment { display_name: name.or(m.display_name).unwrap_or_else(|| "Minimum commitment".into()), rates })
    });
    let (mut credit_grant_cards, mut entitlement_cards, mut overage_cards) = (Vec::new(), Vec::new(), Vec::new());
    for (kind, sub, name, tag, v) in granting {
        match kind {
            GrantKind::Credit => credit_grant_cards.extend(grants::credit_grant_card(o, &sub, name, tag, &v, &currencies, cat, d)),
            GrantKind::Entitlement => entitlement_cards.extend(grants::entitlement_card(o, &sub, name, tag, &v, &currencies, cat, d)),
            GrantKind::Overage => overage_cards.extend(grants::overage_card(o, &sub, name, tag, &v, &currencies, cat, d)),
        }
    }
    for (i, e) in entitlement_cards.iter().enumerate() {
        if entitlement_cards[..i].iter().any(|x| x.feature_id == e.feature_id) {
            d.push(o.diag("", format!("feature `{}` has two billing entitlement rate cards; one per feature is supported", e.feature_id)));
        }
    }
    for (i, e) in overage_cards.iter().enumerate() {
        if overage_cards[..i].iter().any(|x| x.feature_id == e.feature_id) {
            d.push(o.diag("", format!("feature `{}` has two entitlement overage rate cards", e.feature_id)));
        }
    }
    let mut plan = PricePlan {
        id: p.id,
        name: p.name,
        cycle: cycle?,
        currencies,
        usage_cards,
        fixed_fee_cards,
        license_cards,
        minimum_commitment,
        credit_grant_cards,
        entitlement_cards,
        overage_cards,
        pricing_rules: Vec::new(),
    };
    plan.pricing_rules = validate_rules(o, p.pricing_rules.as_deref().unwrap_or_default(), &plan, d);
    Some(plan)
}

fn rate_map(
    o: &Origin,
    sub: &str,
    values: impl Iterator<Item = (String, Decimal)>,
    currencies: &[String],
    d: &mut Diagnostics,
) -> BTreeMap<String, Decimal> {
    let mut m = BTreeMap::new();
    for (c, r) in values {
        if m.insert(c.clone(), r).is_some() {
            d.push(o.diag(&format!("{sub}.rateValues"), format!("currency {c} appears twice")));
        }
    }
    for c in currencies {
        if !m.contains_key(c) {
            d.push(o.diag(&format!("{sub}.rateValues"), format!("no rate for supported currency {c}")));
        }
    }
    m
}

/// A rate plan (slabs) with its per-currency rates, as usage and license cards share them.
fn validate_rate_plan(
    o: &Origin,
    sub: &str,
    rate_plan: &RawRatePlan,
    rate_values: &[RawRateValue],
    currencies: &[String],
    d: &mut Diagnostics,
) -> Option<(PricingModel, Vec<Slab>, BTreeMap<String, CardRates>)> {
    let model = match rate_plan.pricing_model.as_str() {
        "TIERED" => PricingModel::Tiered,
        "VOLUME" => PricingModel::Volume,
        other => {
            d.push(o.diag(&format!("{sub}.ratePlan.pricingModel"), format!("unknown pricing model `{other}`, expected TIERED or VOLUME")));
            return None;
        }
    };
    if rate_plan.slabs.is_empty() {
        d.push(o.diag(&format!("{sub}.ratePlan.slabs"), "at least one slab is required"));
        return None;
    }
    let mut slabs = Vec::new();
    let mut ok = true;
    for (i, s) in rate_plan.slabs.iter().enumerate() {
        let ssub = format!("{sub}.ratePlan.slabs[{i}]");
        let price_type = match s.price_type.as_str() {
            "FLAT" => PriceType::Flat,
            "PER_UNIT" => PriceType::PerUnit,
            "PACKAGE" => PriceType::Package,
            other => {
                d.push(o.diag(&format!("{ssub}.priceType"), format!("unknown price type `{other}`, expected FLAT, PER_UNIT or PACKAGE")));
                ok = false;
                continue;
            }
        };
        let package_size = config_decimal(o, &format!("{ssub}.slabConfig"), &s.slab_config, "packageSize", &["packageSize"], d);
        if price_type == PriceType::Package && package_size.is_none_or(|p| p <= Decimal::ZERO) {
            d.push(o.diag(&format!("{ssub}.slabConfig.packageSize"), "a PACKAGE slab needs a positive packageSize"));
            ok = false;
        }
        if s.start_after.0 < Decimal::ZERO {
            d.push(o.diag(&format!("{ssub}.startAfter"), "startAfter must not be negative"));
            ok = false;
        }
        slabs.push(Slab { order: s.order, start_after: s.start_after.0, price_type, package_size });
    }
    let orders: BTreeSet<u32> = slabs.iter().map(|s| s.order).collect();
    if orders.len() != slabs.len() {
        d.push(o.diag(&format!("{sub}.ratePlan.slabs"), "slab orders must be unique"));
        ok = false;
    }
    slabs.sort_by(|a, b| a.start_after.cmp(&b.start_after).then(a.order.cmp(&b.order)));
    if slabs.windows(2).any(|w| w[0].start_after == w[1].start_after) {
        d.push(o.diag(&format!("{sub}.ratePlan.slabs"), "two slabs have the same startAfter"));
        ok = false;
    }
    let mut rates = BTreeMap::new();
    for (i, rv) in rate_values.iter().enumerate() {
        let rsub = format!("{sub}.rateValues[{i}]");
        let clamp = Clamp {
            min: config_decimal(o, &format!("{rsub}.rateConfig"), &rv.rate_config, "minimumRate", &["minimumRate", "maximumRate"], d),
            max: config_decimal(o, &format!("{rsub}.rateConfig"), &rv.rate_config, "maximumRate", &["minimumRate", "maximumRate"], d),
        };
        let mut by_order = BTreeMap::new();
        for (j, sr) in rv.slab_rates.iter().enumerate() {
            let ssub = format!("{rsub}.slabRates[{j}].slabRateConfig");
            let c = Clamp {
                min: config_decimal(o, &ssub, &sr.slab_rate_config, "minimumRate", &["minimumRate", "maximumRate"], d),
                max: config_decimal(o, &ssub, &sr.slab_rate_config, "maximumRate", &["minimumRate", "maximumRate"], d),
            };
            if by_order.insert(sr.order, SlabRate { rate: sr.rate.0, clamp: c }).is_some() {
                d.push(o.diag(&format!("{rsub}.slabRates[{j}].order"), format!("slab order {} appears twice", sr.order)));
            }
        }
        let mut aligned = Vec::new();
        for s in &slabs {
            match by_order.remove(&s.order) {
                Some(r) => aligned.push(r),
                None => {
                    d.push(o.diag(&format!("{rsub}.slabRates"), format!("no rate for slab order {}", s.order)));
                    ok = false;
                }
            }
        }
        for extra in by_order.keys() {
            d.push(o.diag(&format!("{rsub}.slabRates"), format!("rate for slab order {extra}, which the rate plan does not have")));
        }
        if rates.insert(rv.currency.clone(), CardRates { slabs: aligned, clamp }).is_some() {
            d.push(o.diag(&format!("{rsub}.currency"), format!("currency {} appears twice", rv.currency)));
        }
    }
    for c in currencies {
        if !rates.contains_key(c) {
            d.push(o.diag(&format!("{sub}.rateValues"), format!("no rates for supported currency {c}")));
        }
    }
    if !ok {
        return None;
    }
    Some((model, slabs, rates))
}

#[allow(clippy::too_many_arguments)]
fn validate_usage_card(
    o: &Origin,
    sub: &str,
    name: Option<String>,
    tag: Option<String>,
    u: &RawUsageRateCard,
    currencies: &[String],
    cat: &Catalog,
    d: &mut Diagnostics,
) -> Option<UsageCard> {
    let Some(meter) = cat.meters.get(&u.usage_meter_id) else {
        d.push(o.diag(&format!("{sub}.usageMeterId"), format!("unknown usage meter `{}`", u.usage_meter_id)));
        return None;
    };
    let (model, slabs, rates) = validate_rate_plan(o, sub, &u.rate_plan, &u.rate_values, currencies, d)?;
    Some(UsageCard {
        display_name: name.or(u.display_name.clone()).or(u.name.clone()).unwrap_or_else(|| meter.display_name.clone()),
        meter_id: meter.id.clone(),
        tag: tag.or(u.tag.clone()),
        model,
        slabs,
        rates,
    })
}

/// The variables pricing rules may read: `usage.<key>` of usage cards, `revenue.<key>` of every
/// card, with keys `urc.<usage meter id>` and `ff.<add-on id>` (Togai's).
struct RuleScope {
    usage: BTreeSet<String>,
    revenue: BTreeSet<String>,
}

impl jsonlogic::Scope for RuleScope {
    fn has_attribute(&self, _: &str) -> bool {
        false
    }
    fn has_dimension(&self, _: &str) -> bool {
        false
    }
    fn has_named(&self, path: &str) -> bool {
        path.strip_prefix("usage.").is_some_and(|k| self.usage.contains(k))
            || path.strip_prefix("revenue.").is_some_and(|k| self.revenue.contains(k))
    }
}

impl PricePlan {
    /// The keys pricing rules of a timing may read: (usage keys, revenue keys). Arrears rules see
    /// the arrears invoice's cards, in-advance rules the advance invoice's.
    pub fn rule_keys(&self, timing: Timing) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut usage = BTreeSet::new();
        let mut revenue = BTreeSet::new();
        if timing == Timing::InArrears {
            usage.extend(self.usage_cards.iter().map(|c| format!("urc.{}", c.meter_id)));
            revenue.extend(usage.iter().cloned());
            revenue.extend(self.overage_cards.iter().map(grants::overage_key));
        }
        revenue.extend(self.fixed_fee_cards.iter().filter(|c| c.timing == timing).map(|f| format!("ff.{}", f.addon_id)));
        revenue.extend(self.license_cards.iter().filter(|c| c.timing == timing).map(|c| format!("lrc.{}", c.addon_id)));
        revenue.extend(self.credit_grant_cards.iter().filter(|c| c.timing == timing).map(grants::grant_key));
        revenue.extend(self.entitlement_cards.iter().filter(|c| c.timing == timing).map(grants::entitlement_key));
        (usage, revenue)
    }
}

fn validate_rules(o: &Origin, raw: &[Value], plan: &PricePlan, d: &mut Diagnostics) -> Vec<crate::rules::PricingRule> {
    use crate::rules::{Action, PricingRule};
    let mut out = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let sub = format!("pricingRules[{i}]");
        let r: RawPricingRule = match serde_json::from_value(v.clone()) {
            Ok(r) => r,
            Err(e) => {
                d.push(o.diag(&sub, e.to_string().replace("$decimal", "number")));
                continue;
            }
        };
        let timing = match r.invoice_timing.as_deref() {
            None | Some("IN_ARREARS") => Timing::InArrears,
            Some("IN_ADVANCE") => Timing::InAdvance,
            Some(t) => {
                d.push(o.diag(&format!("{sub}.invoiceTiming"), format!("unknown rule timing `{t}`, expected IN_ADVANCE or IN_ARREARS")));
                continue;
            }
        };
        let (usage, revenue) = plan.rule_keys(timing);
        let scope = RuleScope { usage, revenue };
        let parse = |v: &Value, what: &str, d: &mut Diagnostics| match jsonlogic::parse_rule(v, &scope)
            .and_then(|a| jsonlogic::kind(&a).map(|_| a))
        {
            Ok(a) => Some(a),
            Err(e) => {
                d.push(o.diag(
                    &format!("{sub}.{what}"),
                    format!(
                        "{e} (pricing rules read usage.<key> and revenue.<key> of the cards on their invoice: urc.<meter id>, ff.<add-on id>, lrc.<add-on id>, cg.<add-on id>, be.<feature id>, eo.<feature id>)"
                    ),
                ));
                None
            }
        };
        let condition = match &r.condition {
            None | Some(Value::Null) => None,
            Some(c) => match parse(c, "condition", d) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let Some(computation) = parse(&r.computation, "computation", d) else { continue };
        let action = match (r.action.kind.as_str(), r.action.target.as_deref()) {
            ("ADD", _) => Action::Add { description: r.action.description.clone().unwrap_or_else(|| r.name.clone()) },
            ("UPDATE", Some(t)) if t.strip_prefix("revenue.").is_some_and(|k| scope.revenue.contains(k)) => {
                Action::UpdateRevenue(t["revenue.".len()..].to_string())
            }
            ("UPDATE", Some(t)) if t.strip_prefix("usage.").is_some_and(|k| scope.usage.contains(k)) => {
                Action::UpdateUsage(t["usage.".len()..].to_string())
            }
            ("UPDATE", t) => {
                d.push(o.diag(
                    &format!("{sub}.action.target"),
                    format!("UPDATE needs a target `revenue.<key>` or `usage.<key>` of this plan's rate cards, found {t:?}"),
                ));
                continue;
            }
            (k, _) => {
                d.push(o.diag(&format!("{sub}.action.type"), format!("unknown action `{k}`, expected ADD or UPDATE")));
                continue;
            }
        };
        out.push(PricingRule {
            id: r.id.unwrap_or_else(|| format!("rule.{i}")),
            name: r.name,
            order: r.order,
            condition,
            computation,
            action,
            timing,
        });
    }
    out.sort_by_key(|r| r.order);
    out
}

fn validate_enrichments(o: &Origin, raw: &Value, schema: &mut EventSchema, settings: &[Setting], d: &mut Diagnostics) {
    let e: RawEnrichments = match serde_json::from_value(raw.clone()) {
        Ok(e) => e,
        Err(e) => {
            d.push(o.diag("enrichments", e.to_string().replace("$decimal", "number")));
            return;
        }
    };
    for (i, v) in e.dependencies.iter().enumerate() {
        let sub = format!("enrichments.dependencies[{i}]");
        let dep: RawDependency = match serde_json::from_value(v.clone()) {
            Ok(x) => x,
            Err(e) => {
                d.push(o.diag(&sub, e.to_string()));
                continue;
            }
        };
        if dep.kind != "SETTING" {
            d.push(o.diag(&format!("{sub}.type"), format!("unknown dependency type `{}`, expected SETTING", dep.kind)));
            continue;
        }
        let kinds: BTreeSet<bool> =
            settings.iter().filter(|s| s.key == dep.key || s.id == dep.key).map(|s| matches!(s.value, SettingValue::Numeric(_))).collect();
        let numeric = match kinds.len() {
            1 => kinds.contains(&true),
            0 => {
                d.push(o.diag(
                    &format!("{sub}.key"),
                    format!("no setting `{}` (keys are `setting.<namespace>.<name>` or a setting id)", dep.key),
                ));
                continue;
            }
            _ => {
                d.push(o.diag(&format!("{sub}.key"), format!("setting `{}` is NUMERIC for some entities and STRING for others", dep.key)));
                continue;
            }
        };
        schema.dependencies.insert(dep.name, (dep.key, numeric));
    }
    let mut fields: Vec<(usize, RawEnrichmentField)> = e.fields.into_iter().enumerate().collect();
    fields.sort_by_key(|(_, f)| f.order);
    for (i, f) in fields {
        let sub = format!("enrichments.fields[{i}]");
        let attribute = match f.kind.as_str() {
            "ATTRIBUTE" => true,
            "DIMENSION" => false,
            k => {
                d.push(o.diag(&format!("{sub}.type"), format!("unknown field type `{k}`, expected ATTRIBUTE or DIMENSION")));
                continue;
            }
        };
        let value = match f.enrichment_type.as_str() {
            "VALUE" => {
                let text = doc::number_text(&f.value).or_else(|| f.value.as_str().map(str::to_string)).unwrap_or_default();
                if attribute {
                    match doc::parse_decimal(&text) {
                        Some(n) => Ast::Lit(jsonlogic::Lit::Num(n)),
                        None => {
                            d.push(o.diag(&format!("{sub}.value"), format!("an ATTRIBUTE value must be a number, found `{text}`")));
                            continue;
                        }
                    }
                } else {
                    Ast::Lit(jsonlogic::Lit::Str(text))
                }
            }
            "JSON_LOGIC" => match jsonlogic::parse_rule(&f.value, schema).and_then(|a| jsonlogic::kind(&a).map(|k| (a, k))) {
                Ok((a, k)) if (attribute && matches!(k, Kind::Num | Kind::Null)) || (!attribute && matches!(k, Kind::Str | Kind::Null)) => {
                    a
                }
                Ok((_, k)) => {
                    d.push(o.diag(
                        &format!("{sub}.value"),
                        format!(
                            "the expression gives {k:?}, but an {} field needs {}",
                            f.kind,
                            if attribute { "a number" } else { "text" }
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    d.push(o.diag(&format!("{sub}.value"), e));
                    continue;
                }
            },
            "JSON_LOGIC_FROM_DEPENDENCY" => {
                d.push(o.diag(&format!("{sub}.enrichmentType"), "JSON_LOGIC_FROM_DEPENDENCY needs settings, which are not supported yet"));
                continue;
            }
            t => {
                d.push(o.diag(&format!("{sub}.enrichmentType"), format!("unknown enrichment type `{t}`, expected VALUE or JSON_LOGIC")));
                continue;
            }
        };
        let clash = if attribute { schema.dimensions.contains(&f.name) } else { schema.attributes.contains(&f.name) };
        if clash {
            d.push(o.diag(&format!("{sub}.name"), format!("`{}` is already a field of the other kind", f.name)));
            continue;
        }
        if attribute {
            schema.attributes.insert(f.name.clone());
        } else {
            schema.dimensions.insert(f.name.clone());
        }
        schema.enrichments.push(Enrichment { name: f.name, attribute, value });
    }
}

/// An account's override of a plan on one schedule (Togai's `PricePlanDetailsOverride` and
/// schedule `pricingRules`): a rate-card list, cycle or minimum commitment given in the
/// override replaces the plan's; what it leaves out is the plan's. Registered as
/// `<plan>@<schedule>`.
fn override_plan(
    o: &Origin,
    s: &RawSchedule,
    base: &PricePlan,
    defaults: (Option<RawPricingCycleConfig>, Vec<String>),
    schedule_id: &str,
    cat: &Catalog,
    d: &mut Diagnostics,
) -> Option<PricePlan> {
    let mut details: RawPricePlanDetails = match s.price_plan_details.clone().filter(|v| !v.is_null()) {
        None => RawPricePlanDetails::default(),
        Some(v) => match serde_json::from_value(v) {
            Ok(x) => x,
            Err(e) => {
                d.push(o.diag("pricePlanDetails", e.to_string().replace("$decimal", "number")));
                return None;
            }
        },
    };
    let cycle_overridden = details.pricing_cycle_config.is_some();
    if details.pricing_cycle_config.is_none() {
        details.pricing_cycle_config = defaults.0;
    }
    if details.supported_currencies.is_empty() {
        details.supported_currencies = defaults.1;
    }
    let raw = RawPricePlan {
        id: format!("{}@{schedule_id}", base.id),
        name: base.name.clone(),
        price_plan_details: Some(details),
        ..Default::default()
    };
    let over = validate_plan(o, raw, cat, d)?;
    let usage_cards = if over.usage_cards.is_empty() { base.usage_cards.clone() } else { over.usage_cards };
    let fixed_fee_cards = if over.fixed_fee_cards.is_empty() { base.fixed_fee_cards.clone() } else { over.fixed_fee_cards };
    let mut plan = PricePlan {
        id: over.id,
        name: base.name.clone(),
        cycle: if cycle_overridden { over.cycle } else { base.cycle },
        currencies: over.currencies,
        license_cards: if over.license_cards.is_empty() { base.license_cards.clone() } else { over.license_cards },
        minimum_commitment: over.minimum_commitment.or(base.minimum_commitment.clone()),
        credit_grant_cards: if over.credit_grant_cards.is_empty() { base.credit_grant_cards.clone() } else { over.credit_grant_cards },
        entitlement_cards: if over.entitlement_cards.is_empty() { base.entitlement_cards.clone() } else { over.entitlement_cards },
        overage_cards: if over.overage_cards.is_empty() { base.overage_cards.clone() } else { over.overage_cards },
        usage_cards,
        fixed_fee_cards,
        pricing_rules: Vec::new(),
    };
    let rules = s.pricing_rules.as_deref().unwrap_or_default();
    plan.pricing_rules = if rules.is_empty() { base.pricing_rules.clone() } else { validate_rules(o, rules, &plan, d) };
    Some(plan)
}

/// A v1 plan with versions over time: each version is validated as `<plan>@v<version>`; the plan
/// id itself resolves to the version in force at each cycle's start (`Catalog::plan_at`).
fn validate_versions(o: &Origin, mut p: RawPricePlan, tz: chrono_tz::Tz, cat: &mut Catalog, d: &mut Diagnostics) {
    let entries = p.pricing_schedule.take().unwrap_or_default();
    let mut versions = Vec::new();
    for (i, v) in entries.into_iter().enumerate() {
        let sub = format!("pricingSchedule[{i}]");
        let e: RawPlanVersion = match serde_json::from_value(v) {
            Ok(e) => e,
            Err(e) => {
                d.push(o.diag(&sub, e.to_string().replace("$decimal", "number")));
                continue;
            }
        };
        let Some(start) = parse_instant(&e.start_date) else {
            d.push(o.diag(&format!("{sub}.startDate"), format!("`{}` is not a date-time", e.start_date)));
            continue;
        };
        let end = match e.end_date.as_deref() {
            None => None,
            Some(t) => match parse_instant(t) {
                Some(x) => Some(x),
                None => {
                    d.push(o.diag(&format!("{sub}.endDate"), format!("`{t}` is not a date-time")));
                    continue;
                }
            },
        };
        let id = format!("{}@v{}", p.id, e.version);
        let raw = RawPricePlan {
            id: id.clone(),
            name: p.name.clone(),
            kind: p.kind.clone(),
            price_plan_details: Some(e.price_plan_details),
            pricing_rules: e.pricing_rules,
            ..Default::default()
        };
        let vo = Origin { file: o.file.clone(), path: format!("{}.{sub}", o.path), pos: o.pos };
        if let Some(plan) = validate_plan(&vo, raw, cat, d) {
            let (from, until) = (crate::cycles::local_date(tz, start), end.map(|x| crate::cycles::local_date(tz, x)));
            versions.push((from, until, id.clone()));
            cat.plans.insert(id, plan);
        }
    }
    versions.sort();
    for w in versions.windows(2) {
        if w[0].1.is_none_or(|e| e > w[1].0) {
            d.push(o.diag("pricingSchedule", format!("versions {} and {} overlap", w[0].2, w[1].2)));
        }
    }
    // the plan id itself stands for its latest version (for validation of schedules)
    if let Some((_, _, latest)) = versions.last() {
        if let Some(plan) = cat.plans.get(latest).cloned() {
            cat.plans.insert(p.id.clone(), PricePlan { id: p.id.clone(), ..plan });
        }
        cat.plan_versions.insert(p.id.clone(), versions);
    } else {
        d.push(o.diag("pricingSchedule", "no valid version"));
    }
}

impl Catalog {
    /// The plan a schedule bound to `plan_id` uses on `date`: the version in force then, for
    /// plans with versions; else the plan itself.
    pub fn plan_at(&self, plan_id: &str, date: NaiveDate) -> Option<&PricePlan> {
        match self.plan_versions.get(plan_id) {
            Some(vs) => {
                let v = vs.iter().rev().find(|(from, until, _)| *from <= date && until.is_none_or(|u| date < u)).or(vs.first())?;
                self.plans.get(&v.2)
            }
            None => self.plans.get(plan_id),
        }
    }
}
