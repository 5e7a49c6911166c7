//! The usage of parts of the input, and how parts combine into the usage table.
//!
//! Ingest gives each part of the input (a partition of whole account groups, or a chunk of
//! arrival on the two-pass path, `twopass.rs`) a [`PartialUsage`]: per (window, meter), what its
//! aggregation needs to combine with another part's entry for the same key. Parts are merged as
//! they come ([`PartialUsage::merge`]) and [`PartialUsage::finish`] gives the usage table. One
//! part's usage comes out as the whole input's would: that is what lets the input be split.

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::ingest::{IngestError, Usage};
use crate::numeric;

/// One (window, meter) entry of a part's usage.
#[derive(Debug, Clone, PartialEq)]
pub enum Partial {
    /// COUNT and SUM (and features' consumption): parts add up.
    Sum(Decimal),
    Max(Decimal),
    Min(Decimal),
    /// AVERAGE: the sum of the units and the number of events it is over; divided once, at
    /// the end (an average of the parts' averages would be another number).
    Average {
        sum: Decimal,
        n: u64,
    },
    /// UNIQUE_COUNT: the distinct values (text, numbers in their shortest spelling).
    Distinct(Box<BTreeSet<String>>),
    /// LATEST: the value of the last event, and where that event is in LATEST's order.
    Latest(Box<(Decimal, Order)>),
}

/// Where an event is in LATEST's order: (timestamp, ingested-at with none first, arrival number).
pub type Order = (i64, Option<i64>, u64);

impl Partial {
    /// Fold `other` (the same key's entry of another part) into `self`: `Some(fits)`, or `None`
    /// when the two are of different aggregations.
    fn absorb(&mut self, other: Partial) -> Option<bool> {
        Some(match (self, other) {
            (Partial::Sum(a), Partial::Sum(b)) => a.checked_add(b).map(|v| *a = v).is_some(),
            (Partial::Max(a), Partial::Max(b)) => {
                *a = (*a).max(b);
                true
            }
            (Partial::Min(a), Partial::Min(b)) => {
                *a = (*a).min(b);
                true
            }
            (Partial::Average { sum, n }, Partial::Average { sum: s, n: m }) => {
                *n += m;
                sum.checked_add(s).map(|v| *sum = v).is_some()
            }
            (Partial::Distinct(a), Partial::Distinct(b)) => {
                a.extend(*b);
                true
            }
            (Partial::Latest(a), Partial::Latest(b)) => {
                if b.1 > a.1 {
                    *a = b;
                }
                true
            }
            _ => return None,
        })
    }
}

/// The usage of a part of the input: entries by (window, slot), sorted, where a slot is an
/// index into the usage-table ids `slots` (the same list for every part of one run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialUsage {
    slots: Vec<String>,
    entries: Vec<(u32, u32, Partial)>,
}

impl PartialUsage {
    /// An empty part whose entries will name the usage-table ids `slots`.
    pub fn new(slots: Vec<String>) -> Self {
        PartialUsage { slots, entries: Vec::new() }
    }

    /// Add the entry of (window, slot); each key once per part.
    pub fn push(&mut self, window: u32, slot: usize, p: Partial) {
        self.entries.push((window, slot as u32, p));
    }

    /// Entries in key order: once all are pushed.
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by_key(|e| (e.0, e.1));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn error(&self, window: u32, slot: u32, overflow: bool) -> IngestError {
        let meter = self.slots.get(slot as usize).cloned().unwrap_or_default();
        match overflow {
            true => IngestError::Overflow { meter, window },
            false => IngestError::Unmergeable { meter, window },
        }
    }

    /// Combine `other` (another part of the same run's input, sorted) into `self`.
    pub fn merge(&mut self, other: PartialUsage) -> Result<(), IngestError> {
        if other.entries.is_empty() {
            return Ok(());
        }
        if self.entries.is_empty() && self.slots.is_empty() {
            *self = other;
            return Ok(());
        }
        if self.slots != other.slots {
            let (w, s, _) = &other.entries[0];
            return Err(other.error(*w, *s, false));
        }
        // chunks of arrival meet mostly the same windows: the keys already here are folded in
        // place (no new table per part), the others merged in after
        let mut fresh = Vec::new();
        let mut i = 0;
        for (w, s, p) in other.entries {
            while self.entries.get(i).is_some_and(|e| (e.0, e.1) < (w, s)) {
                i += 1;
            }
            match self.entries.get_mut(i) {
                Some(e) if (e.0, e.1) == (w, s) => match e.2.absorb(p) {
                    Some(true) => {}
                    Some(false) => return Err(self.error(w, s, true)),
                    None => return Err(self.error(w, s, false)),
                },
                _ => fresh.push((w, s, p)),
            }
        }
        if !fresh.is_empty() {
            let mut out = Vec::with_capacity(self.entries.len() + fresh.len());
            let mut here = std::mem::take(&mut self.entries).into_iter().peekable();
            for e in fresh {
                while let Some(x) = here.next_if(|x| (x.0, x.1) < (e.0, e.1)) {
                    out.push(x);
                }
                out.push(e);
            }
            out.extend(here);
            self.entries = out;
        }
        Ok(())
    }

    /// The usage table: an average is divided out (4 dp, half up, as for one part), every
    /// quantity is in its shortest exact spelling.
    pub fn finish(self) -> Result<Usage, IngestError> {
        let mut usage = Usage::new();
        for (w, slot, p) in self.entries {
            let meter = &self.slots[slot as usize];
            let v = match p {
                Partial::Sum(v) | Partial::Max(v) | Partial::Min(v) => v.normalize(),
                Partial::Latest(l) => l.0.normalize(),
                Partial::Distinct(values) => Decimal::from(values.len()),
                Partial::Average { sum, n } => {
                    let overflow = || IngestError::Overflow { meter: meter.clone(), window: w };
                    let avg = numeric::div4(sum.mantissa(), sum.scale(), n as i128, 0).ok_or_else(overflow)?;
                    numeric::to_decimal(avg, 4).ok_or_else(overflow)?
                }
            };
            usage.insert((w, meter.clone()), v);
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    const SLOTS: [&str; 8] = ["sum", "max", "min", "avg", "uniq", "latest", "only-first", "only-second"];

    fn part(entries: Vec<(u32, &str, Partial)>) -> PartialUsage {
        let mut p = PartialUsage::new(SLOTS.iter().map(|s| s.to_string()).collect());
        for (w, m, e) in entries {
            p.push(w, SLOTS.iter().position(|s| *s == m).unwrap(), e);
        }
        p.sort();
        p
    }

    fn distinct(v: &[&str]) -> Partial {
        Partial::Distinct(Box::new(v.iter().map(|s| s.to_string()).collect()))
    }

    fn latest(v: &str, at: Order) -> Partial {
        Partial::Latest(Box::new((d(v), at)))
    }

    /// Parts of the input combine as the whole would have: sums and counts add, extremes
    /// compare, an average divides the summed units by the summed events once at the end
    /// (4 dp, half up), distinct values unite, the latest event wins, and quantities come out
    /// in their shortest spelling.
    #[test]
    fn parts_combine_as_the_whole() {
        let mut usage = part(vec![
            (1, "sum", Partial::Sum(d("1.50"))),
            (1, "max", Partial::Max(d("7"))),
            (1, "min", Partial::Min(d("2"))),
            (1, "avg", Partial::Average { sum: d("1"), n: 1 }),
            (1, "uniq", distinct(&["1.5", "2"])),
            // a later timestamp wins over a later arrival; at one timestamp, an ingested-at
            // wins over none
            (1, "latest", latest("8", (11, None, 3))),
            (2, "latest", latest("1", (5, Some(1), 1))),
            (2, "only-first", Partial::Sum(d("0"))),
        ]);
        let second = part(vec![
            (1, "sum", Partial::Sum(d("2.5"))),
            (1, "max", Partial::Max(d("7.5"))),
            (1, "min", Partial::Min(d("3"))),
            (1, "avg", Partial::Average { sum: d("1"), n: 2 }),
            (1, "uniq", distinct(&["1.5", "a"])),
            (1, "latest", latest("9", (10, None, 7))),
            (2, "latest", latest("2", (5, None, 9))),
            (3, "only-second", latest("4.00", (0, None, 0))),
        ]);
        usage.merge(second).unwrap();
        let usage = usage.finish().unwrap();
        let get = |w: u32, m: &str| usage[&(w, m.to_string())].to_string();
        // 1.50 + 2.5 = 4, as one part's sum of the same events would read
        assert_eq!(get(1, "sum"), "4");
        assert_eq!(get(1, "max"), "7.5");
        assert_eq!(get(1, "min"), "2");
        // (1 + 1) / (1 + 2) = 0.6666… → 0.6667; the average of the parts' averages would be 0.75
        assert_eq!(get(1, "avg"), "0.6667");
        assert_eq!(get(1, "uniq"), "3");
        assert_eq!(get(1, "latest"), "8");
        assert_eq!(get(2, "latest"), "1");
        assert_eq!(get(2, "only-first"), "0");
        assert_eq!(get(3, "only-second"), "4");
        assert_eq!(usage.len(), 9);
    }

    /// Merging is the same in any order and grouping of the parts.
    #[test]
    fn merge_order_does_not_matter() {
        let parts = || {
            (0..6u32)
                .map(|k| {
                    part(vec![
                        (k % 3, "sum", Partial::Sum(Decimal::new(k as i64 * 7 + 1, k % 3))),
                        (k % 2, "avg", Partial::Average { sum: Decimal::from(k), n: k as u64 + 1 }),
                        (k % 4, "latest", latest(&k.to_string(), (k as i64 % 3, None, k as u64))),
                    ])
                })
                .collect::<Vec<_>>()
        };
        let forward = parts().into_iter().try_fold(PartialUsage::default(), |mut a, p| a.merge(p).map(|_| a)).unwrap();
        let backward = parts().into_iter().rev().try_fold(PartialUsage::default(), |mut a, p| a.merge(p).map(|_| a)).unwrap();
        let mut pairs = parts();
        let mut right = pairs.split_off(3);
        let mut left = pairs.remove(0);
        for p in pairs {
            left.merge(p).unwrap();
        }
        let first = right.remove(0);
        let right = right.into_iter().fold(first, |mut a, p| {
            a.merge(p).unwrap();
            a
        });
        left.merge(right).unwrap();
        // a merged part stays sorted by key, each key once: what the next merge relies on
        for p in [&forward, &backward, &left] {
            assert!(p.entries.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        }
        let (f, b, g) = (forward.finish().unwrap(), backward.finish().unwrap(), left.finish().unwrap());
        assert_eq!(f, b);
        assert_eq!(f, g);
        // window 0's sum, by hand: k = 0 gives 1 and k = 3 gives 22 (both at scale k % 3 = 0)
        assert_eq!(f[&(0, "sum".to_string())].to_string(), "23");
    }

    /// Entries of different aggregations for one key do not combine (a bug, not a choice of
    /// one), nor do sums past what a decimal holds.
    #[test]
    fn mismatched_or_overflowing_parts_are_errors() {
        let mut usage = part(vec![(1, "sum", Partial::Sum(d("3")))]);
        let e = usage.merge(part(vec![(1, "sum", Partial::Max(d("2")))])).unwrap_err();
        assert!(matches!(e, IngestError::Unmergeable { ref meter, window: 1 } if meter == "sum"), "{e}");
        let mut sums = part(vec![(1, "sum", Partial::Sum(Decimal::MAX))]);
        let e = sums.merge(part(vec![(1, "sum", Partial::Sum(Decimal::MAX))])).unwrap_err();
        assert!(matches!(e, IngestError::Overflow { .. }), "{e}");
    }
}
