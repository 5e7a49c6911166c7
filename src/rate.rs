//! Rating: a usage rate card applied to a quantity, in exact decimals. Pure: no I/O, no clock,
//! no rounding (rounding happens once per line in `money::round_line`).
//!
//! Slabs (sorted by `startAfter`, an exclusive lower bound; `upper_i` = next slab's startAfter):
//! TIERED charges each slab for the part of the quantity inside `(startAfter_i, upper_i]`;
//! VOLUME charges the whole quantity at the last slab with `startAfter < U` (slab 1 if U = 0).
//! A slab's revenue is charged only when its quantity is positive: PER_UNIT q × rate, FLAT rate,
//! PACKAGE ceil(q / packageSize) × rate. Slab-level minimum/maximum clamp a charged slab;
//! card-level minimum/maximum clamp the card's sum and apply even at zero usage. Every clamp is
//! reported as its own adjustment.

use rust_decimal::Decimal;

use crate::catalog::{CardRates, Clamp, PriceType, PricingModel, Slab, UsageCard};

#[derive(Debug, Clone, PartialEq)]
pub struct SlabCharge {
    pub order: u32,
    pub start_after: Decimal,
    pub upper: Option<Decimal>,
    pub price_type: PriceType,
    pub quantity: Decimal,
    pub rate: Decimal,
    pub packages: Option<Decimal>,
    /// Revenue before the slab's clamp.
    pub revenue: Decimal,
    /// Clamp adjustment (clamped − revenue), zero when none applied.
    pub adjustment: Decimal,
    pub clamp_kind: Option<ClampKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClampKind {
    Minimum,
    Maximum,
}

impl ClampKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClampKind::Minimum => "minimum",
            ClampKind::Maximum => "maximum",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CardCharge {
    pub quantity: Decimal,
    pub slabs: Vec<SlabCharge>,
    /// Σ slab revenue + slab adjustments.
    pub slab_total: Decimal,
    pub card_adjustment: Decimal,
    pub card_clamp: Option<ClampKind>,
    /// Full-precision amount of the line (before rounding).
    pub exact: Decimal,
}

fn clamp(v: Decimal, c: &Clamp) -> (Decimal, Option<ClampKind>) {
    if let Some(min) = c.min {
        if v < min {
            return (min, Some(ClampKind::Minimum));
        }
    }
    if let Some(max) = c.max {
        if v > max {
            return (max, Some(ClampKind::Maximum));
        }
    }
    (v, None)
}

fn ceil_div(q: Decimal, size: Decimal) -> Decimal {
    (q / size).ceil()
}

/// Rate a usage card for a quantity in one currency's rates.
pub fn rate_usage(card: &UsageCard, rates: &CardRates, quantity: Decimal) -> CardCharge {
    rate_plan(card.model, &card.slabs, rates, quantity)
}

/// Rate any slab plan (usage and license cards share it) for a quantity.
pub fn rate_plan(model: PricingModel, plan_slabs: &[Slab], rates: &CardRates, quantity: Decimal) -> CardCharge {
    let n = plan_slabs.len();
    let active_volume = match model {
        PricingModel::Volume => Some(plan_slabs.iter().rposition(|s| s.start_after < quantity).unwrap_or(0)),
        PricingModel::Tiered => None,
    };
    let mut slabs = Vec::with_capacity(n);
    let mut slab_total = Decimal::ZERO;
    for (i, s) in plan_slabs.iter().enumerate() {
        let upper = plan_slabs.get(i + 1).map(|x| x.start_after);
        let q = match active_volume {
            Some(a) if a == i => quantity.max(Decimal::ZERO),
            Some(_) => Decimal::ZERO,
            None => {
                let top = upper.map_or(quantity, |u| quantity.min(u));
                (top - s.start_after).max(Decimal::ZERO)
            }
        };
        let r = &rates.slabs[i];
        let (revenue, packages) = if q > Decimal::ZERO {
            match s.price_type {
                PriceType::PerUnit => (q * r.rate, None),
                PriceType::Flat => (r.rate, None),
                PriceType::Package => {
                    let p = ceil_div(q, s.package_size.unwrap_or(Decimal::ONE));
                    (p * r.rate, Some(p))
                }
            }
        } else {
            (Decimal::ZERO, None)
        };
        let (clamped, kind) = if q > Decimal::ZERO { clamp(revenue, &r.clamp) } else { (revenue, None) };
        slab_total += clamped;
        slabs.push(SlabCharge {
            order: s.order,
            start_after: s.start_after,
            upper,
            price_type: s.price_type,
            quantity: q,
            rate: r.rate,
            packages,
            revenue,
            adjustment: clamped - revenue,
            clamp_kind: kind,
        });
    }
    let (exact, card_clamp) = clamp(slab_total, &rates.clamp);
    CardCharge { quantity, slabs, slab_total, card_adjustment: exact - slab_total, card_clamp, exact }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SlabRate;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn card(model: PricingModel, slabs: &[(&str, PriceType, Option<&str>)]) -> UsageCard {
        UsageCard {
            display_name: "x".into(),
            meter_id: "m".into(),
            tag: None,
            model,
            slabs: slabs
                .iter()
                .enumerate()
                .map(|(i, (sa, pt, ps))| Slab { order: i as u32 + 1, start_after: d(sa), price_type: *pt, package_size: ps.map(d) })
                .collect(),
            rates: BTreeMap::new(),
        }
    }

    fn rates(r: &[&str]) -> CardRates {
        CardRates { slabs: r.iter().map(|x| SlabRate { rate: d(x), clamp: Clamp::default() }).collect(), clamp: Clamp::default() }
    }

    #[test]
    fn tiered_edges_follow_exclusive_start_after() {
        let c = card(PricingModel::Tiered, &[("0", PriceType::PerUnit, None), ("10", PriceType::PerUnit, None)]);
        let r = rates(&["1", "0.5"]);
        assert_eq!(rate_usage(&c, &r, d("0")).exact, d("0"));
        assert_eq!(rate_usage(&c, &r, d("10")).exact, d("10"));
        assert_eq!(rate_usage(&c, &r, d("11")).exact, d("10.5"));
    }

    #[test]
    fn volume_charges_the_whole_quantity_at_one_slab() {
        let c = card(PricingModel::Volume, &[("0", PriceType::PerUnit, None), ("10", PriceType::PerUnit, None)]);
        let r = rates(&["1", "0.5"]);
        assert_eq!(rate_usage(&c, &r, d("10")).exact, d("10"));
        assert_eq!(rate_usage(&c, &r, d("11")).exact, d("5.5"));
    }

    #[test]
    fn package_rounds_packages_up_and_clamps_show_as_adjustments() {
        let c = card(PricingModel::Tiered, &[("0", PriceType::Package, Some("5"))]);
        let mut r = rates(&["2"]);
        assert_eq!(rate_usage(&c, &r, d("6")).exact, d("4"));
        r.slabs[0].clamp = Clamp { min: Some(d("5")), max: None };
        let ch = rate_usage(&c, &r, d("6"));
        assert_eq!((ch.exact, ch.slabs[0].adjustment), (d("5"), d("1")));
        r.clamp = Clamp { min: Some(d("3")), max: None };
        let zero = rate_usage(&c, &r, d("0"));
        assert_eq!((zero.exact, zero.card_adjustment, zero.slabs[0].adjustment), (d("3"), d("3"), d("0")));
    }

    fn arb_card() -> impl Strategy<Value = (UsageCard, CardRates)> {
        (1usize..5, prop::collection::vec((1u32..50, 0u32..500, 0usize..3, 1u32..7), 5)).prop_map(|(n, parts)| {
            let mut start = 0u32;
            let mut slabs = Vec::new();
            let mut rs = Vec::new();
            for (i, (gap, rate, pt, pkg)) in parts.into_iter().take(n).enumerate() {
                let price_type = [PriceType::PerUnit, PriceType::Flat, PriceType::Package][pt];
                slabs.push(Slab {
                    order: i as u32 + 1,
                    start_after: Decimal::from(start),
                    price_type,
                    package_size: Some(Decimal::from(pkg)),
                });
                rs.push(SlabRate { rate: Decimal::new(rate as i64, 2), clamp: Clamp::default() });
                start += gap;
            }
            let c = UsageCard {
                display_name: "x".into(),
                meter_id: "m".into(),
                tag: None,
                model: PricingModel::Tiered,
                slabs,
                rates: BTreeMap::new(),
            };
            (c, CardRates { slabs: rs, clamp: Clamp::default() })
        })
    }

    proptest! {
        #[test]
        fn tiered_charge_never_decreases_when_usage_grows((c, r) in arb_card(), a in 0u32..400, b in 0u32..400) {
            let (lo, hi) = (a.min(b), a.max(b));
            let x = rate_usage(&c, &r, Decimal::from(lo)).exact;
            let y = rate_usage(&c, &r, Decimal::from(hi)).exact;
            prop_assert!(x <= y, "{lo} -> {x}, {hi} -> {y}");
        }

        #[test]
        fn volume_per_unit_equals_quantity_times_its_slab_rate((mut c, r) in arb_card(), q in 0u32..400) {
            c.model = PricingModel::Volume;
            for s in &mut c.slabs { s.price_type = PriceType::PerUnit; }
            let q = Decimal::from(q);
            let idx = c.slabs.iter().rposition(|s| s.start_after < q).unwrap_or(0);
            prop_assert_eq!(rate_usage(&c, &r, q).exact, q * r.slabs[idx].rate);
        }
    }
}
