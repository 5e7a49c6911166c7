//! Rate cards that grant something besides a charge: credit grants (credits handed to
//! settlement), billing entitlements (feature credits for a cycle) and entitlement overage (feature
//! use beyond those credits), plus the features they refer to.
//!
//! Decisions (Togai's docs are silent; see the README's "Rating decisions"):
//! - A credit grant's charge is its rate plan applied to `creditAmount` (FLAT: a flat price for the
//!   credits, PER_UNIT: a price per credit). Credits are effective from the window's start whatever
//!   the invoice timing; PREPAID credits wait for the grant invoice to be paid (settlement decides).
//! - A billing entitlement's charge is its rate plan applied to `featureCreditLimit`. Its feature
//!   credits are valid `[window start + effectiveFrom, min(window start + effectiveUntil, window end))`.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use rust_decimal::Decimal;
use serde_json::Value;

use super::raw::*;
use super::{validate_rate_plan, CardRates, Catalog, FeeKind, Origin, PricingModel, Slab, Timing};
use crate::diag::Diagnostics;

/// A feature (Togai's `Feature`): consumed by events of its schemas, by the value of an attribute.
#[derive(Debug, Clone)]
pub struct Feature {
    pub id: String,
    pub display_name: String,
    /// (event schema, attribute whose value is debited), from `schemaAssociations` and the
    /// schemas' `featureDetails`.
    pub consumers: Vec<(String, String)>,
}

/// An ISO-8601 date duration (`P1Y2M3W4D`), applied to local dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DateDuration {
    pub months: u32,
    pub days: u64,
}

impl DateDuration {
    pub fn parse(s: &str) -> Option<DateDuration> {
        let body = s.strip_prefix('P')?;
        if body.is_empty() || body.contains('T') {
            return None;
        }
        let mut out = DateDuration::default();
        let mut num = String::new();
        for c in body.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().ok()?;
            num.clear();
            match c {
                'Y' => out.months = out.months.checked_add(n.checked_mul(12)?)?,
                'M' => out.months = out.months.checked_add(n)?,
                'W' => out.days += n as u64 * 7,
                'D' => out.days += n as u64,
                _ => return None,
            }
        }
        num.is_empty().then_some(out)
    }

    /// `date` plus the duration (months first, clamped to the month's last day, then days).
    pub fn add_to(&self, date: NaiveDate) -> NaiveDate {
        crate::cycles::add_months(date, self.months).checked_add_days(Days::new(self.days)).unwrap_or(NaiveDate::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At the end of the window the credits were granted for.
    PricingCycle,
    NoExpiry,
    /// `expiryDuration` after the credits become effective.
    Custom(DateDuration),
}

impl Expiry {
    pub fn as_str(&self) -> &'static str {
        match self {
            Expiry::PricingCycle => "PRICING_CYCLE",
            Expiry::NoExpiry => "NO_EXPIRY",
            Expiry::Custom(_) => "CUSTOM",
        }
    }
}

/// One currency's price of a credit grant, and the credits it grants.
#[derive(Debug, Clone)]
pub struct CreditPrice {
    pub slabs: Vec<Slab>,
    pub rates: CardRates,
    pub credits: Decimal,
}

#[derive(Debug, Clone)]
pub struct CreditGrantCard {
    pub display_name: String,
    pub addon_id: String,
    pub tag: Option<String>,
    /// When the price is invoiced; PREPAID grants are invoiced in advance.
    pub timing: Timing,
    /// Credits are granted only once the grant's invoice is paid.
    pub prepaid: bool,
    pub kind: FeeKind,
    pub priority: i64,
    pub expiry: Expiry,
    pub applicable_entity_ids: Vec<String>,
    pub model: PricingModel,
    pub prices: BTreeMap<String, CreditPrice>,
}

#[derive(Debug, Clone)]
pub struct EntitlementCard {
    pub display_name: String,
    pub feature_id: String,
    pub tag: Option<String>,
    pub timing: Timing,
    pub kind: FeeKind,
    /// Feature credits granted per charged window.
    pub limit: Decimal,
    pub effective_from: DateDuration,
    pub effective_until: DateDuration,
    pub model: PricingModel,
    pub slabs: Vec<Slab>,
    pub rates: BTreeMap<String, CardRates>,
}

impl EntitlementCard {
    /// The local dates `[from, until)` in which the credits granted at `start` can be used,
    /// clipped to the window end.
    pub fn validity(&self, start: NaiveDate, end: NaiveDate) -> (NaiveDate, NaiveDate) {
        let from = self.effective_from.add_to(start).min(end);
        (from, self.effective_until.add_to(start).min(end).max(from))
    }
}

#[derive(Debug, Clone)]
pub struct OverageCard {
    pub display_name: String,
    pub feature_id: String,
    pub tag: Option<String>,
    /// Overage billed per window is capped here (unlimited if absent).
    pub max_quantity: Option<Decimal>,
    pub model: PricingModel,
    pub slabs: Vec<Slab>,
    pub rates: BTreeMap<String, CardRates>,
}

fn parse<T: serde::de::DeserializeOwned>(o: &Origin, sub: &str, v: &Value, d: &mut Diagnostics) -> Option<T> {
    match serde_json::from_value(v.clone()) {
        Ok(x) => Some(x),
        Err(e) => {
            d.push(o.diag(sub, e.to_string().replace("$decimal", "number")));
            None
        }
    }
}

fn recurrence(o: &Origin, sub: &str, kind: Option<&str>, r: &Option<RawRecurrenceConfig>, d: &mut Diagnostics) -> Option<FeeKind> {
    let (interval, offset) = r.as_ref().map_or((1, 0), |r| (r.interval.unwrap_or(1), r.offset.unwrap_or(0)));
    if interval < 1 || offset < 0 || interval > u32::MAX as i64 || offset > u32::MAX as i64 {
        d.push(o.diag(&format!("{sub}.recurrenceConfig"), "interval must be at least 1 and offset at least 0"));
        return None;
    }
    match kind {
        None | Some("RECURRING") => Some(FeeKind::Recurring { interval: interval as u32, offset: offset as u32 }),
        Some("ONE_TIME") => Some(FeeKind::OneTime),
        Some(t) => {
            d.push(o.diag(&format!("{sub}.type"), format!("unknown type `{t}`, expected ONE_TIME or RECURRING")));
            None
        }
    }
}

fn timing(o: &Origin, sub: &str, t: Option<&str>, prepaid_ok: bool, d: &mut Diagnostics) -> Option<(Timing, bool)> {
    match t {
        None | Some("IN_ARREARS") => Some((Timing::InArrears, false)),
        Some("IN_ADVANCE") => Some((Timing::InAdvance, false)),
        Some("PREPAID") if prepaid_ok => Some((Timing::InAdvance, true)),
        Some(t) => {
            let expected = if prepaid_ok { "IN_ADVANCE, IN_ARREARS or PREPAID" } else { "IN_ADVANCE or IN_ARREARS" };
            d.push(o.diag(&format!("{sub}.invoiceTiming"), format!("invoice timing `{t}` is not supported here, expected {expected}")));
            None
        }
    }
}

fn duration(o: &Origin, sub: &str, s: &str, d: &mut Diagnostics) -> Option<DateDuration> {
    let r = DateDuration::parse(s);
    if r.is_none() {
        d.push(o.diag(sub, format!("`{s}` is not an ISO-8601 date duration (e.g. P20D, P1M, P1Y2M)")));
    }
    r
}

#[allow(clippy::too_many_arguments)]
pub(super) fn credit_grant_card(
    o: &Origin,
    sub: &str,
    name: Option<String>,
    tag: Option<String>,
    v: &Value,
    currencies: &[String],
    cat: &Catalog,
    d: &mut Diagnostics,
) -> Option<CreditGrantCard> {
    let c: RawCreditGrantRateCard = parse(o, sub, v, d)?;
    let Some(addon) = cat.addons.get(&c.id) else {
        d.push(o.diag(&format!("{sub}.id"), format!("unknown add-on `{}`", c.id)));
        return None;
    };
    if addon.kind != "CREDIT_GRANT" {
        d.push(o.diag(&format!("{sub}.id"), format!("add-on `{}` is a {}, not a CREDIT_GRANT", c.id, addon.kind)));
        return None;
    }
    let (timing, prepaid) = timing(o, sub, c.invoice_timing.as_deref(), true, d)?;
    let kind = recurrence(o, sub, c.kind.as_deref(), &c.recurrence_config, d)?;
    let g = &c.grant_details;
    if g.priority < 0 {
        d.push(o.diag(&format!("{sub}.grantDetails.priority"), "priority must not be negative"));
    }
    let expiry = match (g.expiry_type.as_str(), &g.expiry_duration) {
        ("PRICING_CYCLE", None) => Expiry::PricingCycle,
        ("NO_EXPIRY", None) => Expiry::NoExpiry,
        ("CUSTOM", Some(s)) => Expiry::Custom(duration(o, &format!("{sub}.grantDetails.expiryDuration"), s, d)?),
        ("CUSTOM", None) => {
            d.push(o.diag(&format!("{sub}.grantDetails.expiryDuration"), "a CUSTOM expiry needs an expiryDuration (e.g. P30D)"));
            return None;
        }
        ("PRICING_CYCLE" | "NO_EXPIRY", Some(_)) => {
            d.push(o.diag(&format!("{sub}.grantDetails.expiryDuration"), "expiryDuration is only read with expiryType CUSTOM"));
            return None;
        }
        (t, _) => {
            d.push(o.diag(
                &format!("{sub}.grantDetails.expiryType"),
                format!("unknown expiry type `{t}`, expected PRICING_CYCLE, NO_EXPIRY or CUSTOM"),
            ));
            return None;
        }
    };
    let mut model = None;
    let mut prices = BTreeMap::new();
    for (i, cs) in c.rate_details.currency_slab_rate_details.iter().enumerate() {
        let csub = format!("{sub}.rateDetails.currencySlabRateDetails[{i}]");
        if cs.credit_amount.0 < Decimal::ZERO {
            d.push(o.diag(&format!("{csub}.creditAmount"), "creditAmount must not be negative"));
            continue;
        }
        // the inline slab details are a rate plan with its rates: checked as one
        let plan = RawRatePlan {
            pricing_model: c.rate_details.pricing_model.clone(),
            slabs: cs
                .slab_details
                .iter()
                .enumerate()
                .map(|(j, s)| RawSlab {
                    order: j as u32 + 1,
                    start_after: s.start_after,
                    price_type: s.price_type.clone(),
                    slab_config: s.slab_config.clone(),
                })
                .collect(),
        };
        let values = vec![RawRateValue {
            currency: cs.currency.clone(),
            slab_rates: cs
                .slab_details
                .iter()
                .enumerate()
                .map(|(j, s)| RawSlabRate { order: j as u32 + 1, rate: s.rate, slab_rate_config: s.slab_rate_config.clone() })
                .collect(),
            rate_config: cs.rate_config.clone(),
        }];
        let Some((m, slabs, mut rates)) = validate_rate_plan(o, &csub, &plan, &values, std::slice::from_ref(&cs.currency), d) else {
            continue;
        };
        model = Some(m);
        let rates = rates.remove(&cs.currency).expect("validated for this currency");
        if prices.insert(cs.currency.clone(), CreditPrice { slabs, rates, credits: cs.credit_amount.0 }).is_some() {
            d.push(o.diag(&format!("{csub}.currency"), format!("currency {} appears twice", cs.currency)));
        }
    }
    for cur in currencies {
        if !prices.contains_key(cur) {
            d.push(o.diag(&format!("{sub}.rateDetails.currencySlabRateDetails"), format!("no price for supported currency {cur}")));
        }
    }
    Some(CreditGrantCard {
        display_name: name.or(c.display_name).or(c.name).unwrap_or_else(|| addon.display_name.clone()),
        addon_id: c.id,
        tag: tag.or(c.tag),
        timing,
        prepaid,
        kind,
        priority: g.priority,
        expiry,
        applicable_entity_ids: g.applicable_entity_ids.clone().unwrap_or_default(),
        model: model?,
        prices,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn entitlement_card(
    o: &Origin,
    sub: &str,
    name: Option<String>,
    tag: Option<String>,
    v: &Value,
    currencies: &[String],
    cat: &Catalog,
    d: &mut Diagnostics,
) -> Option<EntitlementCard> {
    let c: RawBillingEntitlementRateCard = parse(o, sub, v, d)?;
    let Some(feature) = cat.features.get(&c.feature_id) else {
        d.push(o.diag(&format!("{sub}.featureId"), format!("unknown feature `{}`", c.feature_id)));
        return None;
    };
    let (timing, _) = timing(o, sub, c.invoice_timing.as_deref(), false, d)?;
    let kind = recurrence(o, sub, None, &c.recurrence_config, d)?;
    let [fc] = c.feature_configs.as_slice() else {
        d.push(o.diag(
            &format!("{sub}.featureConfigs"),
            format!(
                "exactly one feature config is supported (found {}); several grants per cycle are not supported yet",
                c.feature_configs.len()
            ),
        ));
        return None;
    };
    if fc.feature_credit_limit.0 < Decimal::ZERO {
        d.push(o.diag(&format!("{sub}.featureConfigs[0].featureCreditLimit"), "featureCreditLimit must not be negative"));
        return None;
    }
    let effective_from = match &fc.effective_from {
        None => DateDuration::default(),
        Some(s) => duration(o, &format!("{sub}.featureConfigs[0].effectiveFrom"), s, d)?,
    };
    let effective_until = duration(o, &format!("{sub}.featureConfigs[0].effectiveUntil"), &fc.effective_until, d)?;
    let (model, slabs, rates) = validate_rate_plan(o, sub, &c.rate_plan, &c.rate_values, currencies, d)?;
    Some(EntitlementCard {
        display_name: name.or(c.display_name).or(c.name).unwrap_or_else(|| feature.display_name.clone()),
        feature_id: c.feature_id,
        tag: tag.or(c.tag),
        timing,
        kind,
        limit: fc.feature_credit_limit.0,
        effective_from,
        effective_until,
        model,
        slabs,
        rates,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn overage_card(
    o: &Origin,
    sub: &str,
    name: Option<String>,
    tag: Option<String>,
    v: &Value,
    currencies: &[String],
    cat: &Catalog,
    d: &mut Diagnostics,
) -> Option<OverageCard> {
    let c: RawEntitlementOverageRateCard = parse(o, sub, v, d)?;
    let Some(feature) = cat.features.get(&c.feature_id) else {
        d.push(o.diag(&format!("{sub}.featureId"), format!("unknown feature `{}`", c.feature_id)));
        return None;
    };
    if let Some(b) = &c.billing_config {
        if b.interval.unwrap_or(1) != 1 || b.start_offset.unwrap_or(0) != 0 {
            d.push(o.diag(
                &format!("{sub}.billingConfig"),
                "overage billed every cycle (interval 1, startOffset 0) is supported; other billing configs are not supported yet",
            ));
            return None;
        }
    }
    if c.max_quantity.is_some_and(|m| m.0 < Decimal::ZERO) {
        d.push(o.diag(&format!("{sub}.maxQuantity"), "maxQuantity must not be negative"));
        return None;
    }
    let (model, slabs, rates) = validate_rate_plan(o, sub, &c.rate_plan, &c.rate_values, currencies, d)?;
    Some(OverageCard {
        display_name: name.or(c.display_name).or(c.name).unwrap_or_else(|| format!("{} overage", feature.display_name)),
        feature_id: c.feature_id,
        tag: tag.or(c.tag),
        max_quantity: c.max_quantity.map(|m| m.0),
        model,
        slabs,
        rates,
    })
}

/// Features from the `features` list, bound to event schemas by `schemaAssociations` and by the
/// schemas' `featureDetails` (collected by the caller as `(origin, schema, details)`).
pub(super) fn features(
    raw: Vec<(Origin, RawFeature)>,
    schema_details: Vec<(Origin, String, Value)>,
    cat: &mut Catalog,
    d: &mut Diagnostics,
) {
    let mut origins = BTreeMap::new();
    for (o, f) in raw {
        origins.insert(f.id.clone(), o.clone());
        let mut consumers = Vec::new();
        if let Some(v) = f.schema_associations.as_ref().filter(|v| !v.is_null()) {
            let list: Vec<RawSchemaAssociation> = match parse(&o, "schemaAssociations", v, d) {
                Some(l) => l,
                None => continue,
            };
            consumers.extend(list.into_iter().map(|a| (a.schema_name, a.attribute_name)));
        }
        let display_name = f.billable_name.or(f.display_name).unwrap_or_else(|| f.name.clone());
        if cat.features.insert(f.id.clone(), Feature { id: f.id.clone(), display_name, consumers }).is_some() {
            d.push(o.diag("id", format!("duplicate feature id `{}`", f.id)));
        }
    }
    for (o, schema, v) in schema_details {
        let Some(fd) = parse::<RawFeatureDetails>(&o, "featureDetails", &v, d) else { continue };
        match cat.features.get_mut(&fd.feature_id) {
            Some(f) => {
                if !f.consumers.iter().any(|c| c.0 == schema && c.1 == fd.attribute_name) {
                    f.consumers.push((schema, fd.attribute_name));
                }
            }
            None => d.push(o.diag("featureDetails.featureId", format!("unknown feature `{}`", fd.feature_id))),
        }
    }
    for f in cat.features.values_mut() {
        f.consumers.sort();
    }
    // every consumer is a declared attribute of an existing schema
    for f in cat.features.values() {
        for (s, a) in &f.consumers {
            let ok = cat.event_schemas.get(s).is_some_and(|x| x.attributes.contains(a));
            if let (false, Some(o)) = (ok, origins.get(&f.id)) {
                d.push(
                    o.diag("", format!("feature `{}` is consumed by attribute `{a}` of event schema `{s}`, which is not declared", f.id)),
                );
            }
        }
    }
}

/// The key pricing rules use for a card (Togai's `urc.` / `ff.` and billrun's extensions).
pub fn grant_key(c: &CreditGrantCard) -> String {
    format!("cg.{}", c.addon_id)
}
pub fn entitlement_key(c: &EntitlementCard) -> String {
    format!("be.{}", c.feature_id)
}
pub fn overage_key(c: &OverageCard) -> String {
    format!("eo.{}", c.feature_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(DateDuration::parse("P20D").unwrap().add_to(d(2026, 10, 1)), d(2026, 10, 21));
        assert_eq!(DateDuration::parse("P1M").unwrap().add_to(d(2026, 1, 31)), d(2026, 2, 28));
        assert_eq!(DateDuration::parse("P1Y2W").unwrap().add_to(d(2026, 1, 1)), d(2027, 1, 15));
        assert_eq!(DateDuration::parse("P0D").unwrap().add_to(d(2026, 1, 1)), d(2026, 1, 1));
        for bad in ["", "P", "20D", "PT5H", "P5", "P-1D", "P1X"] {
            assert!(DateDuration::parse(bad).is_none(), "{bad}");
        }
    }
}
