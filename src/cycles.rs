//! Pricing cycles: boundaries as local dates in the organisation's time zone, half-open
//! `[start, end)`, and their instants. Pure: no clock.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Weekly,
    Monthly,
    Quarterly,
    HalfYearly,
    Annually,
}

impl Interval {
    pub fn parse(s: &str) -> Option<Interval> {
        Some(match s {
            "WEEKLY" => Interval::Weekly,
            "MONTHLY" => Interval::Monthly,
            "QUARTERLY" => Interval::Quarterly,
            "HALF_YEARLY" => Interval::HalfYearly,
            "ANNUALLY" => Interval::Annually,
            _ => return None,
        })
    }
    /// Months per cycle (0 for weekly).
    pub fn months(self) -> u32 {
        match self {
            Interval::Weekly => 0,
            Interval::Monthly => 1,
            Interval::Quarterly => 3,
            Interval::HalfYearly => 6,
            Interval::Annually => 12,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayOffset {
    Day(u32),
    Last,
}

/// A price plan's pricing cycle configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleConfig {
    pub interval: Interval,
    pub day: DayOffset,
    /// 1-based month within the interval (1 for MONTHLY and WEEKLY).
    pub month: u32,
    pub grace_days: u32,
    /// Offsets come from each schedule's start date instead of `day` / `month`.
    pub anniversary: bool,
}

/// Parse Togai's `startOffset` strings for an interval; `Err` says what was expected.
pub fn parse_offsets(interval: Interval, day: &str, month: Option<&str>) -> Result<(DayOffset, u32), String> {
    let max_day = if interval == Interval::Weekly { 7 } else { 31 };
    let day = match day {
        "LAST" => DayOffset::Last,
        d => match d.parse::<u32>() {
            Ok(n) if (1..=max_day).contains(&n) => DayOffset::Day(n),
            _ => return Err(format!("dayOffset `{d}` must be \"1\"..\"{max_day}\" or \"LAST\"")),
        },
    };
    let k = interval.months();
    let month = match (interval, month) {
        (Interval::Weekly | Interval::Monthly, None | Some("NIL") | Some("") | Some("FIRST") | Some("1")) => 1,
        (Interval::Weekly | Interval::Monthly, Some(m)) => {
            return Err(format!("monthOffset `{m}` is not allowed for {interval:?} cycles (omit it or use NIL)"))
        }
        (_, None | Some("NIL") | Some("FIRST")) => 1,
        (_, Some("LAST")) => k,
        (_, Some(m)) => match m.parse::<u32>() {
            Ok(n) if (1..=k).contains(&n) => n,
            _ => return Err(format!("monthOffset `{m}` must be \"1\"..\"{k}\", FIRST or LAST for this interval")),
        },
    };
    Ok((day, month))
}

fn last_day_of_month(y: i32, m: u32) -> u32 {
    let first_next = if m == 12 { NaiveDate::from_ymd_opt(y + 1, 1, 1) } else { NaiveDate::from_ymd_opt(y, m + 1, 1) };
    first_next.and_then(|d| d.pred_opt()).map(|d| d.day()).unwrap_or(28)
}

/// The cycle start in month `(y, m)`: the offset day, or the closest previous existing day.
fn start_in_month(y: i32, m: u32, day: DayOffset) -> NaiveDate {
    let last = last_day_of_month(y, m);
    let d = match day {
        DayOffset::Last => last,
        DayOffset::Day(n) => n.min(last),
    };
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

impl CycleConfig {
    /// The cycle `[start, end)` (local dates) that contains `date`.
    pub fn cycle_containing(&self, date: NaiveDate) -> (NaiveDate, NaiveDate) {
        match self.interval {
            Interval::Weekly => {
                let target = match self.day {
                    DayOffset::Last | DayOffset::Day(7) => Weekday::Sun,
                    DayOffset::Day(n) => Weekday::try_from((n - 1) as u8).unwrap_or(Weekday::Mon),
                };
                let back = (date.weekday().num_days_from_monday() + 7 - target.num_days_from_monday()) % 7;
                let start = date - Days::new(back as u64);
                (start, start + Days::new(7))
            }
            _ => {
                let k = self.interval.months() as i32;
                // month index (0-based, absolute) of the cycle-start month at or before `date`'s month
                let idx = date.year() * 12 + date.month0() as i32;
                let phase = (self.month as i32 - 1).rem_euclid(k);
                let mut m = idx - (idx - phase).rem_euclid(k);
                loop {
                    let s = start_in_month(m.div_euclid(12), (m.rem_euclid(12) + 1) as u32, self.day);
                    if s <= date {
                        let n = m + k;
                        let e = start_in_month(n.div_euclid(12), (n.rem_euclid(12) + 1) as u32, self.day);
                        if date < e {
                            return (s, e);
                        }
                        m = n;
                    } else {
                        m -= k;
                    }
                }
            }
        }
    }

    /// The configuration with offsets derived from an association date (anniversary cycles):
    /// the date's weekday (WEEKLY) or day of month (`LAST` on a month's last day) and its month
    /// within the interval.
    pub fn anchored_at(&self, date: NaiveDate) -> CycleConfig {
        let mut c = *self;
        if !self.anniversary {
            return c;
        }
        match self.interval {
            Interval::Weekly => c.day = DayOffset::Day(date.weekday().number_from_monday()),
            _ => {
                let last = last_day_of_month(date.year(), date.month());
                c.day = if date.day() == last { DayOffset::Last } else { DayOffset::Day(date.day()) };
                c.month = date.month0() % self.interval.months() + 1;
            }
        }
        c
    }

    /// The first day on which the cycle ending at `end` is past its grace period.
    pub fn due_date(&self, end: NaiveDate) -> NaiveDate {
        end + Days::new(self.grace_days as u64)
    }
}

/// Midnight at the start of `date` in `tz`, as a UTC instant. On a day whose midnight does not
/// exist (a DST gap), the first instant of the day.
pub fn day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight");
    for _ in 0..48 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
}

/// The local date (in `tz`) of an instant.
pub fn local_date(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// Add whole months to a date (clamped), used for anniversary computations and tests.
pub fn add_months(d: NaiveDate, n: u32) -> NaiveDate {
    d.checked_add_months(Months::new(n)).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }
    fn cfg(interval: Interval, day: DayOffset, month: u32) -> CycleConfig {
        CycleConfig { interval, day, month, grace_days: 0, anniversary: false }
    }

    #[test]
    fn monthly_calendar_cycles() {
        let c = cfg(Interval::Monthly, DayOffset::Day(1), 1);
        assert_eq!(c.cycle_containing(d(2026, 10, 1)), (d(2026, 10, 1), d(2026, 11, 1)));
        assert_eq!(c.cycle_containing(d(2026, 10, 31)), (d(2026, 10, 1), d(2026, 11, 1)));
        assert_eq!(c.cycle_containing(d(2026, 12, 31)), (d(2026, 12, 1), d(2027, 1, 1)));
    }

    #[test]
    fn day_offset_uses_closest_previous_day_in_short_months() {
        let c = cfg(Interval::Monthly, DayOffset::Day(30), 1);
        assert_eq!(c.cycle_containing(d(2026, 2, 15)), (d(2026, 1, 30), d(2026, 2, 28)));
        assert_eq!(c.cycle_containing(d(2026, 2, 28)), (d(2026, 2, 28), d(2026, 3, 30)));
        let last = cfg(Interval::Monthly, DayOffset::Last, 1);
        assert_eq!(last.cycle_containing(d(2024, 3, 1)), (d(2024, 2, 29), d(2024, 3, 31)));
    }

    #[test]
    fn quarterly_and_annual_month_offsets() {
        let q = cfg(Interval::Quarterly, DayOffset::Day(15), 2);
        assert_eq!(q.cycle_containing(d(2026, 10, 1)), (d(2026, 8, 15), d(2026, 11, 15)));
        let a = cfg(Interval::Annually, DayOffset::Last, 2);
        assert_eq!(a.cycle_containing(d(2025, 1, 1)), (d(2024, 2, 29), d(2025, 2, 28)));
    }

    #[test]
    fn anniversary_offsets_come_from_the_association_date() {
        let mut m = cfg(Interval::Monthly, DayOffset::Day(1), 1);
        m.anniversary = true;
        let a = m.anchored_at(d(2026, 10, 31));
        assert_eq!(a.day, DayOffset::Last);
        assert_eq!(a.cycle_containing(d(2026, 11, 15)), (d(2026, 10, 31), d(2026, 11, 30)));
        let mut q = cfg(Interval::Quarterly, DayOffset::Day(1), 1);
        q.anniversary = true;
        let a = q.anchored_at(d(2026, 3, 10));
        assert_eq!((a.day, a.month), (DayOffset::Day(10), 3));
        assert_eq!(a.cycle_containing(d(2026, 5, 1)), (d(2026, 3, 10), d(2026, 6, 10)));
        let mut w = cfg(Interval::Weekly, DayOffset::Day(1), 1);
        w.anniversary = true;
        assert_eq!(w.anchored_at(d(2023, 10, 25)).day, DayOffset::Day(3));
    }

    #[test]
    fn weekly_cycles_start_on_the_offset_weekday() {
        let w = cfg(Interval::Weekly, DayOffset::Day(1), 1); // Monday
        assert_eq!(w.cycle_containing(d(2026, 11, 21)), (d(2026, 11, 16), d(2026, 11, 23)));
    }

    #[test]
    fn offsets_are_validated_per_interval() {
        assert!(parse_offsets(Interval::Monthly, "32", None).is_err());
        assert!(parse_offsets(Interval::Monthly, "1", Some("2")).is_err());
        assert_eq!(parse_offsets(Interval::Quarterly, "15", Some("LAST")).unwrap(), (DayOffset::Day(15), 3));
        assert_eq!(parse_offsets(Interval::Weekly, "LAST", Some("NIL")).unwrap(), (DayOffset::Last, 1));
    }

    #[test]
    fn midnight_in_the_org_time_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        assert_eq!(day_start(tz, d(2026, 10, 1)).to_rfc3339(), "2026-10-01T04:00:00+00:00");
        assert_eq!(day_start(tz, d(2026, 12, 1)).to_rfc3339(), "2026-12-01T05:00:00+00:00");
    }
}
