//! License quantities over a billing window: the license updates of an account form a timeline
//! of absolute quantities; each day of the window takes the largest quantity in force at any
//! moment of that day (Togai's per-day granularity). Pure: no clock, no I/O.

use chrono::{Days, NaiveDate};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::cycles::day_start;

/// Quantity in force at instant `t` (µs): the last update at or before `t`, else 0.
fn in_force(timeline: &[(i64, Decimal)], t: i64) -> Decimal {
    match timeline.partition_point(|(at, _)| *at <= t) {
        0 => Decimal::ZERO,
        i => timeline[i - 1].1,
    }
}

/// The quantity of every day of `[start, end)` (local dates in `tz`), capped at `max`.
pub fn daily(timeline: &[(i64, Decimal)], tz: Tz, start: NaiveDate, end: NaiveDate, max: Option<Decimal>) -> Vec<(NaiveDate, Decimal)> {
    let mut out = Vec::new();
    let mut d = start;
    while d < end {
        let next = d + Days::new(1);
        let (s, e) = (day_start(tz, d).timestamp_micros(), day_start(tz, next).timestamp_micros());
        let mut q = in_force(timeline, s);
        for (at, v) in timeline.iter().filter(|(at, _)| *at > s && *at < e) {
            let _ = at;
            q = q.max(*v);
        }
        if let Some(m) = max {
            q = q.min(m);
        }
        out.push((d, q));
        d = next;
    }
    out
}

/// Quantity in force at the first instant of `date`, capped at `max`.
pub fn at_start(timeline: &[(i64, Decimal)], tz: Tz, date: NaiveDate, max: Option<Decimal>) -> Decimal {
    let q = in_force(timeline, day_start(tz, date).timestamp_micros());
    max.map_or(q, |m| q.min(m))
}

/// Runs of consecutive days with the same quantity: (quantity, number of days).
pub fn segments(days: &[(NaiveDate, Decimal)]) -> Vec<(Decimal, i64)> {
    let mut out: Vec<(Decimal, i64)> = Vec::new();
    for (_, q) in days {
        match out.last_mut() {
            Some((last, n)) if last == q => *n += 1,
            _ => out.push((*q, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 10, day).unwrap()
    }
    fn us(day: u32, hour: u32) -> i64 {
        d(day).and_hms_opt(hour, 0, 0).unwrap().and_utc().timestamp_micros()
    }

    #[test]
    fn a_day_takes_its_largest_quantity() {
        let tl = vec![
            (us(1, 0), Decimal::from(10)),
            (us(3, 9), Decimal::from(15)),
            (us(3, 17), Decimal::from(12)),
            (us(5, 0), Decimal::from(20)),
        ];
        let days = daily(&tl, chrono_tz::UTC, d(1), d(6), None);
        let q: Vec<i64> = days.iter().map(|x| x.1.try_into().unwrap()).collect();
        assert_eq!(q, vec![10, 10, 15, 12, 20]);
        assert_eq!(segments(&days), vec![(Decimal::from(10), 2), (Decimal::from(15), 1), (Decimal::from(12), 1), (Decimal::from(20), 1)]);
        let capped = daily(&tl, chrono_tz::UTC, d(1), d(6), Some(Decimal::from(14)));
        assert_eq!(capped.iter().map(|x| x.1).max(), Some(Decimal::from(14)));
        assert_eq!(at_start(&tl, chrono_tz::UTC, d(3), None), Decimal::from(10));
    }
}
