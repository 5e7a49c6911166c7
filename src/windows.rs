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
        for sch in &account.schedules {
            let Some(plan) = catalog.plans.get(&sch.plan_id) else { continue };
            let cycle = plan.cycle.anchored_at(sch.start);
            let mut d = sch.start;
            let mut k = 0;
            loop {
                let (cs, ce) = cycle.cycle_containing(d);
                let start = cs.max(sch.start);
                let end = sch.end.map_or(ce, |e| ce.min(e));
                if start >= as_of || start >= end {
                    break;
                }
                let due = cycle.due_date(ce);
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
