//! Feature credits of a window: what a billing entitlement granted, what the feature's events
//! used of it, and the overage beyond it. Pure: reads the usage table, no I/O.
//!
//! Use inside the grant's validity is covered first, up to the granted credits; everything else
//! (use beyond the credits, or outside their validity) is overage, billed by the plan's overage
//! card up to its `maxQuantity`. The rest stays unbilled and is reported.

use rust_decimal::Decimal;

use crate::catalog::{Catalog, PricePlan};
use crate::handoff::FeatureCreditEntry;
use crate::ingest::{feature_meter_id, Usage, VALID_SUFFIX};
use crate::money::format_exact;
use crate::windows::{FeatureGrant, Window};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureUse<'a> {
    pub feature_id: String,
    /// All use of the feature in the window.
    pub consumed: Decimal,
    /// Use inside the grant's validity.
    pub consumed_valid: Decimal,
    pub grant: Option<&'a FeatureGrant>,
    pub granted: Decimal,
    /// Use covered by the granted credits: `min(granted, consumed_valid)`.
    pub covered: Decimal,
    /// `consumed − covered`.
    pub overage: Decimal,
    /// Overage the plan bills: `min(overage, maxQuantity)`; 0 without an overage card.
    pub billed_overage: Decimal,
    pub has_overage_card: bool,
}

pub fn feature_use<'a>(catalog: &Catalog, plan: &PricePlan, w: &'a Window, usage: &Usage, feature: &str) -> FeatureUse<'a> {
    let mut consumed = Decimal::ZERO;
    let mut consumed_valid = Decimal::ZERO;
    if let Some(f) = catalog.features.get(feature) {
        for (schema, _) in &f.consumers {
            let id = feature_meter_id(feature, schema);
            consumed += usage.get(&(w.id, id.clone())).copied().unwrap_or_default();
            consumed_valid += usage.get(&(w.id, format!("{id}{VALID_SUFFIX}"))).copied().unwrap_or_default();
        }
    }
    let grant = w.feature_grants.iter().find(|g| g.feature_id == feature);
    let granted = match grant {
        Some(_) => plan.entitlement_cards.iter().find(|e| e.feature_id == feature).map_or(Decimal::ZERO, |e| e.limit),
        None => Decimal::ZERO,
    };
    let card = plan.overage_cards.iter().find(|o| o.feature_id == feature);
    let (covered, overage, billed_overage) = split(granted, consumed_valid, consumed, card.map(|c| c.max_quantity));
    FeatureUse {
        feature_id: feature.to_string(),
        consumed,
        consumed_valid,
        grant,
        granted,
        covered,
        overage,
        billed_overage,
        has_overage_card: card.is_some(),
    }
}

/// `(covered, overage, billed overage)` of a window: use inside the validity is covered up to
/// the credits; the rest is overage, billed up to the overage card's cap (`None`: no card).
pub fn split(granted: Decimal, consumed_valid: Decimal, consumed: Decimal, card: Option<Option<Decimal>>) -> (Decimal, Decimal, Decimal) {
    let covered = granted.min(consumed_valid);
    let overage = consumed - covered;
    let billed = match card {
        None => Decimal::ZERO,
        Some(max) => max.map_or(overage, |m| overage.min(m)),
    };
    (covered, overage, billed)
}

/// The window's feature-credit entries (PRICE_PLAN for a grant, OVERAGE for billed overage), and
/// `(billed, unbilled)` overage when the plan has an overage card.
pub fn entries(fu: &FeatureUse, w: &Window, invoice_id: &str) -> (Vec<FeatureCreditEntry>, Option<(Decimal, Decimal)>) {
    let mut out = Vec::new();
    if let Some(g) = fu.grant {
        out.push(FeatureCreditEntry {
            id: format!("{}#{}$PRICE_PLAN", w.schedule_id, w.start),
            account_id: w.account_id.clone(),
            invoice_id: invoice_id.to_string(),
            feature_id: fu.feature_id.clone(),
            source: "PRICE_PLAN",
            effective_from: g.from,
            effective_until: g.until,
            granted: format_exact(fu.granted),
            used: format_exact(fu.covered),
            balance: format_exact(fu.granted - fu.covered),
            consumed: Some(format_exact(fu.consumed)),
            unbilled: (!fu.has_overage_card && fu.overage > Decimal::ZERO).then(|| format_exact(fu.overage)),
        });
    }
    if !fu.has_overage_card {
        return (out, None);
    }
    let unbilled = fu.overage - fu.billed_overage;
    if fu.overage > Decimal::ZERO {
        out.push(FeatureCreditEntry {
            id: format!("{}#{}$OVERAGE", w.schedule_id, w.start),
            account_id: w.account_id.clone(),
            invoice_id: invoice_id.to_string(),
            feature_id: fu.feature_id.clone(),
            source: "OVERAGE",
            effective_from: w.start,
            effective_until: w.end,
            granted: format_exact(fu.billed_overage),
            used: format_exact(fu.billed_overage),
            balance: "0".into(),
            consumed: None,
            unbilled: (unbilled > Decimal::ZERO).then(|| format_exact(unbilled)),
        });
    }
    (out, Some((fu.billed_overage, unbilled)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(n: u32) -> Decimal {
        Decimal::new(n as i64, 1)
    }

    proptest! {
        /// Credits are never overdrawn, covered + overage = use, billed ≤ overage and ≤ the cap.
        #[test]
        fn feature_credit_invariants(granted in 0u32..5000, inside in 0u32..5000, outside in 0u32..5000, cap in proptest::option::of(0u32..5000)) {
            let (g, v, c) = (d(granted), d(inside), d(inside + outside));
            let (covered, overage, billed) = split(g, v, c, Some(cap.map(d)));
            prop_assert!(covered <= g && covered <= v && covered >= Decimal::ZERO);
            prop_assert_eq!(covered + overage, c);
            prop_assert!(billed <= overage && billed >= Decimal::ZERO);
            if let Some(m) = cap { prop_assert!(billed <= d(m)); } else { prop_assert_eq!(billed, overage); }
            // more use never bills less
            let (_, _, billed_more) = split(g, v, c + Decimal::ONE, Some(cap.map(d)));
            prop_assert!(billed_more >= billed);
            // without an overage card nothing is billed
            prop_assert_eq!(split(g, v, c, None).2, Decimal::ZERO);
        }
    }

    #[test]
    fn worked_example() {
        // fixture 31, November: 150 used inside the validity, 100 credits, cap 30
        let (covered, overage, billed) = split(Decimal::from(100), Decimal::from(150), Decimal::from(150), Some(Some(Decimal::from(30))));
        assert_eq!((covered, overage, billed), (Decimal::from(100), Decimal::from(50), Decimal::from(30)));
    }
}
