//! Billing windows: one per (account, schedule, pricing cycle) up to the run's as-of instant.
//! A window is a cycle clipped to its schedule; its invoice is DUE once the cycle's grace
//! period has passed. Pure: computed from the catalog and the as-of date only.

use chrono::NaiveDate;
use chrono_tz::Tz;

use crate::catalog::Catalog;
use crate::cycles::day_start;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: u32,
    pub account_id: String,
    pub schedule_id: String,
    pub plan_id: String,
    /// Local dates `[start, end)`: the cycle clipped to the schedule.
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub cycle_start: NaiveDate,
    pub cycle_end: NaiveDate,
    /// Number of the cycle within its schedule (0 = the schedule's first, possibly partial).
    pub cycle_index: u32,
    /// First day on which the cycle is past its grace period.
    pub due: NaiveDate,
    pub start_us: i64,
    pub end_us: i64,
    pub due_us: i64,
    /// Feature credits granted for this window by the plan's billing entitlement cards.
    pub feature_grants: Vec<FeatureGrant>,
}

/// Feature credits of one billing entitlement card in a window, usable in `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGrant {
    pub feature_id: String,
    pub from: NaiveDate,
    pub until: NaiveDate,
    pub from_us: i64,
    pub until_us: i64,
}

impl Window {
    /// Days in the window and in its whole cycle (for proration).
    pub fn days(&self) -> (i64, i64) {
        ((self.end - self.start).num_days(), (self.cycle_end - self.cycle_start).num_days())
    }
    pub fn is_partial(&self) -> bool {
        self.start != self.cycle_start || self.end != self.cycle_end
    }
}

/// Every window whose start is before `as_of` (00:00 of that date in the org time zone).
pub fn plan_windows(catalog: &Catalog, tz: Tz, as_of: NaiveDate) -> Vec<Window> {
    let mut out = Vec::new();
    for account in catalog.accounts.values() {
        // the cycle of the schedule before, for retainStartOffsets: (anchored cycle, its end)
        let mut previous: Option<(crate::cycles::CycleConfig, Option<NaiveDate>)> = None;
        for sch in &account.schedules {
            let Some(first) = catalog.plan_at(&sch.plan_id, sch.start) else { continue };
            let mut cycle = first.cycle.anchored_at(sch.start);
            if let Some((p, end)) = previous.filter(|_| sch.retain_start_offsets) {
                if end == Some(sch.start) && p.interval == cycle.interval {
                    cycle.day = p.day;
                    cycle.month = p.month;
                }
            }
            previous = Some((cycle, sch.end));
            let mut d = sch.start;
            let mut k = 0;
            loop {
                // plans with versions: the version in force at this cycle's start
                let (cs, ce) = cycle.cycle_containing(d);
                let Some(plan) = catalog.plan_at(&sch.plan_id, cs.max(sch.start)) else { break };
                let start = cs.max(sch.start);
                let end = sch.end.map_or(ce, |e| ce.min(e));
                if start >= as_of || start >= end {
                    break;
                }
                let due = cycle.due_date(ce);
                let feature_grants = plan
                    .entitlement_cards
                    .iter()
                    .filter(|c| c.kind.charged_in(k))
                    .map(|c| {
                        let (from, until) = c.validity(start, end);
                        FeatureGrant {
                            feature_id: c.feature_id.clone(),
                            from,
                            until,
                            from_us: day_start(tz, from).timestamp_micros(),
                            until_us: day_start(tz, until).timestamp_micros(),
                        }
                    })
                    .collect();
                out.push(Window {
                    id: out.len() as u32,
                    account_id: account.id.clone(),
                    schedule_id: sch.id.clone(),
                    plan_id: plan.id.clone(),
                    start,
                    end,
                    cycle_start: cs,
                    cycle_end: ce,
                    cycle_index: k,
                    due,
                    start_us: day_start(tz, start).timestamp_micros(),
                    end_us: day_start(tz, end).timestamp_micros(),
                    due_us: day_start(tz, due).timestamp_micros(),
                    feature_grants,
                });
                if sch.end.is_some_and(|e| ce >= e) {
                    break;
                }
                d = ce;
                k += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Account, PricePlan, Schedule};
    use crate::cycles::{CycleConfig, DayOffset, Interval};
    use crate::money::Currency;
    use proptest::prelude::*;

    fn plan(id: &str, day: u32) -> PricePlan {
        PricePlan {
            id: id.into(),
            name: id.into(),
            cycle: CycleConfig { interval: Interval::Monthly, day: DayOffset::Day(day), month: 1, grace_days: 3, anniversary: false },
            currencies: vec!["USD".into()],
            usage_cards: vec![],
            fixed_fee_cards: vec![],
            license_cards: vec![],
            minimum_commitment: None,
            credit_grant_cards: vec![],
            entitlement_cards: vec![],
            overage_cards: vec![],
            pricing_rules: vec![],
        }
    }

    fn catalog(schedules: Vec<Schedule>) -> Catalog {
        let mut c = Catalog::default();
        for p in [plan("pp.a", 5), plan("pp.b", 5)] {
            c.plans.insert(p.id.clone(), p);
        }
        c.accounts.insert(
            "A".into(),
            Account {
                id: "A".into(),
                name: "A".into(),
                customer_id: "c".into(),
                currency: Currency::new("USD").unwrap(),
                net_term_days: None,
                email: None,
                address: Default::default(),
                aliases: vec![],
                schedules,
            },
        );
        c
    }

    fn sch(id: &str, plan: &str, start: NaiveDate, end: Option<NaiveDate>) -> Schedule {
        Schedule { id: id.into(), plan_id: plan.into(), start, end, retain_start_offsets: false }
    }

    proptest! {
        /// A plan change on the first day of a cycle splits no cycle: the new plan's windows are
        /// exactly those of a schedule that starts on that day, whole cycles only.
        #[test]
        fn a_change_on_a_cycle_start_splits_nothing(months_before in 1u32..14, months_after in 1u32..14) {
            let change = NaiveDate::from_ymd_opt(2026, 10, 5).unwrap();
            let start = crate::cycles::add_months(change, 0) - chrono::Months::new(months_before);
            let end = crate::cycles::add_months(change, months_after);
            let as_of = end + chrono::Days::new(10);
            let tz = chrono_tz::UTC;
            let split = plan_windows(&catalog(vec![sch("s1", "pp.a", start, Some(change)), sch("s2", "pp.b", change, Some(end))]), tz, as_of);
            let whole = plan_windows(&catalog(vec![sch("s2", "pp.b", change, Some(end))]), tz, as_of);
            let after: Vec<_> = split.iter().filter(|w| w.schedule_id == "s2").map(|w| (w.start, w.end, w.cycle_start, w.cycle_end, w.cycle_index, w.due)).collect();
            let alone: Vec<_> = whole.iter().map(|w| (w.start, w.end, w.cycle_start, w.cycle_end, w.cycle_index, w.due)).collect();
            prop_assert_eq!(&after, &alone);
            prop_assert!(split.iter().all(|w| !w.is_partial()), "no partial window when both schedules align with cycles");
            prop_assert_eq!(split.len() as u32, months_before + months_after);
        }
    }
}
