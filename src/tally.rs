//! Simple meters, evaluated natively and tallied per window in the same pass.
//!
//! Most catalogs' meters are a schema, a few dimension filters, a matcher that is one dimension
//! `==` or `in` a list of literals, and a COUNT or a SUM of one attribute. For those, building a
//! boolean and a decimal column per meter in polars and then grouping the used rows by window
//! was most of the meter stage; here each row is read once, its meters decided, its reason
//! completed (`UNITS_INVALID`, `NO_MATCHING_METERS`) and its units added to its window's tally,
//! on every core. [`plan`] says whether a run's meters are all of that shape (any other meter,
//! feature consumption, or an aggregation other than COUNT and SUM keeps the polars path in
//! `ingest`, which stays the definition: the golden harness runs every fixture through both).
//!
//! The semantics are `meter::compile_meter`'s, for the shapes accepted: a missing value (null
//! dimension) matches nothing; a hit whose attribute is null makes the event `UNITS_INVALID`,
//! as does a value that was not a number (`__bad_attr`); an event no meter counts is
//! `NO_MATCHING_METERS`.

use polars::prelude::{DataFrame, PolarsError, PolarsResult, Series, UInt32Chunked};
use polars_arrow::array::{PrimitiveArray, StaticArray, Utf8ViewArray};

use crate::catalog::{Aggregation, FilterField, Meter};
use crate::frame::BAD_ATTR;
use crate::ingest::{Reason, REASON, WINDOW};
use crate::jsonlogic::{Ast, Lit, Op, VarRef};
use crate::meter::FrameColumns;
use billrun_connectors::schema::{ATTR_PREFIX, DIM_PREFIX, SCHEMA_NAME};

/// One condition on a dimension: its value is one of these (a null value is none of them).
#[derive(Debug, Clone, PartialEq)]
struct Cond {
    /// Index into [`Plan::dimensions`].
    dim: usize,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Simple {
    schema: String,
    conds: Vec<Cond>,
    /// SUM: index into [`Plan::attributes`]; COUNT: none.
    units: Option<usize>,
}

/// The run's meters, when every one of them is simple.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    meters: Vec<Simple>,
    /// The dimension columns the conditions read (names without the prefix).
    dimensions: Vec<String>,
    /// The attribute columns the SUMs read, with their scale.
    attributes: Vec<(String, u32)>,
    /// The run's windows (their ids are 0..windows).
    windows: usize,
}

/// A dimension's condition from a matcher or filter: `{"==": [var, "x"]}`, `{"in": [var, [..]]}`.
fn matcher(a: &Ast) -> Option<(String, Vec<String>)> {
    let Ast::Op { op, args } = a else { return None };
    let dim = |a: &Ast| match a {
        Ast::Var { var: VarRef::Dimension(d), default: None } => Some(d.clone()),
        _ => None,
    };
    match op {
        Op::Eq => match args.as_slice() {
            [x, Ast::Lit(Lit::Str(s))] | [Ast::Lit(Lit::Str(s)), x] => Some((dim(x)?, vec![s.clone()])),
            _ => None,
        },
        // the items as `compile` reads them: literals, numbers and booleans as their text
        Op::In => {
            let d = dim(args.first()?)?;
            let mut values = Vec::new();
            for item in &args[1..] {
                match item {
                    Ast::Lit(Lit::Str(s)) => values.push(s.clone()),
                    Ast::Lit(Lit::Num(n)) => values.push(n.to_string()),
                    Ast::Lit(Lit::Bool(b)) => values.push(b.to_string()),
                    _ => return None,
                }
            }
            Some((d, values))
        }
        _ => None,
    }
}

/// The plan for these meters over `windows` billing windows, or `None` when one of them is not
/// simple (or the windows are too many for a dense tally).
pub fn plan<'a>(meters: impl IntoIterator<Item = &'a Meter>, cols: &FrameColumns, windows: usize) -> Option<Plan> {
    let mut p = Plan { meters: Vec::new(), dimensions: Vec::new(), attributes: Vec::new(), windows };
    fn index<T: PartialEq>(v: &mut Vec<T>, x: T) -> usize {
        v.iter().position(|y| *y == x).unwrap_or_else(|| {
            v.push(x);
            v.len() - 1
        })
    }
    for m in meters {
        let mut conds = Vec::new();
        let mut cond = |p: &mut Plan, d: String, values: Vec<String>| -> Option<()> {
            // a dimension the frame lacks is null on every row: `compile` treats that apart
            cols.dimensions.contains(&d).then_some(())?;
            conds.push(Cond { dim: index(&mut p.dimensions, d), values });
            Some(())
        };
        for f in &m.filters {
            match f {
                FilterField::Dimension(d, v) => cond(&mut p, d.clone(), vec![v.clone()])?,
                FilterField::Attribute(..) => return None,
            }
        }
        let units = match (m.aggregation, m.computations.as_slice()) {
            (Aggregation::Count, []) => None,
            // COUNT: the matchers decide; the computation's value is not read
            (Aggregation::Count, [c]) => {
                if let Some(a) = &c.matcher {
                    let (d, values) = matcher(a)?;
                    cond(&mut p, d, values)?;
                }
                None
            }
            (Aggregation::Sum, [c]) => {
                if let Some(a) = &c.matcher {
                    let (d, values) = matcher(a)?;
                    cond(&mut p, d, values)?;
                }
                let Ast::Var { var: VarRef::Attribute(a), default: None } = &c.computation else { return None };
                let scale = *cols.attributes.get(a)?;
                Some(index(&mut p.attributes, (a.clone(), scale)))
            }
            _ => return None,
        };
        p.meters.push(Simple { schema: m.schema.clone(), conds, units });
    }
    (windows.saturating_mul(p.meters.len()) <= MAX_SLOTS).then_some(p)
}

/// What the pass gives: each row's reason, and per window its used events and each meter's
/// tally (COUNT: hits; SUM: the sum of the units' mantissas at the attribute's scale).
pub struct Tally {
    pub reason: UInt32Chunked,
    /// (window, used events) for the windows with a used event, in window order.
    pub windows: Vec<(u32, u64)>,
    /// Per listed window, one after another, per meter: its hits (COUNT) or the sum of its
    /// units' mantissas at the attribute's scale (SUM). One vector, not one per window: a
    /// chunk of arrival meets most of the 100k windows.
    pub tallies: Vec<i128>,
}

impl Tally {
    /// Each listed window with its used events and its meters' tallies.
    pub fn per_window(&self) -> impl Iterator<Item = (u32, u64, &[i128])> {
        let k = if self.windows.is_empty() { 0 } else { self.tallies.len() / self.windows.len() };
        self.windows.iter().enumerate().map(move |(j, &(w, e))| (w, e, &self.tallies[j * k..(j + 1) * k]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    /// Meter `meter`'s sum in `window` does not fit 128 bits.
    #[error("usage of meter {meter} in window {window} overflows")]
    Overflow { meter: usize, window: u32 },
}

/// Fewest rows worth a task of their own.
const MIN_TASK_ROWS: usize = 64 * 1024;

/// Most (window, meter) slots a dense tally holds (16 bytes each: 32 MiB); more, and the
/// meters are left to polars.
const MAX_SLOTS: usize = 2 << 20;

impl Plan {
    /// The pass over `df` (the frame after assignment: `__reason`, `__window`, the canonical
    /// columns, `__bad_attr`).
    pub fn tally(&self, df: &DataFrame) -> Result<Tally, TallyError> {
        use rayon::prelude::*;
        let n = df.height();
        let single = |name: &str| -> PolarsResult<Series> { Ok(df.column(name)?.as_materialized_series().rechunk()) };
        let reason_s = single(REASON)?;
        let reason = reason_s.u32()?.downcast_iter().next().expect("one chunk").clone();
        let window_s = single(WINDOW)?;
        let window = window_s.u32()?.downcast_iter().next().expect("one chunk").clone();
        let bad_s = single(BAD_ATTR)?;
        let bad = bad_s.bool()?.downcast_iter().next().expect("one chunk").clone();
        let texts =
            |name: &str| -> PolarsResult<Utf8ViewArray> { Ok(single(name)?.str()?.downcast_iter().next().expect("one chunk").clone()) };
        let schema = texts(SCHEMA_NAME)?;
        let dims: Vec<Utf8ViewArray> = self.dimensions.iter().map(|d| texts(&format!("{DIM_PREFIX}{d}"))).collect::<PolarsResult<_>>()?;
        let attrs: Vec<PrimitiveArray<i128>> = self
            .attributes
            .iter()
            .map(|(a, _)| {
                let s = single(&format!("{ATTR_PREFIX}{a}"))?;
                let values = s.decimal()?.physical().downcast_iter().next().expect("one chunk").clone();
                Ok(values)
            })
            .collect::<PolarsResult<_>>()?;
        // the meters of each schema the catalog's meters name
        let mut schemas: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, m) in self.meters.iter().enumerate() {
            match schemas.iter_mut().find(|(s, _)| *s == m.schema) {
                Some((_, v)) => v.push(i),
                None => schemas.push((m.schema.as_str(), vec![i])),
            }
        }
        let k = self.meters.len();
        let (unused, invalid, unmatched) = (0u32, Reason::UnitsInvalid as u32, Reason::NoMatchingMeters as u32);
        // a dense tally per task (windows are numbered from 0): one slot per (window, meter), the
        // hits of a COUNT or the sum of a SUM, and the used events per window; the rows come in
        // arrival order, so their windows are scattered, and a hash map's entries (and a vector
        // per window) were cache misses on every row
        let slot = |w: u32, m: usize| w as usize * k + m;
        type Part = Result<(Vec<u32>, Vec<u64>, Vec<i128>), TallyError>;
        let tasks = rayon::current_num_threads().clamp(1, n.div_ceil(MIN_TASK_ROWS).max(1));
        let parts: Vec<Part> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let rows = n * t / tasks..n * (t + 1) / tasks;
                let mut reasons = Vec::with_capacity(rows.len());
                let (mut events, mut slots) = (vec![0u64; self.windows], vec![0i128; self.windows * k]);
                let mut hits: Vec<(usize, Option<i128>)> = Vec::with_capacity(k);
                for i in rows {
                    let r = reason.get(i).unwrap_or(0);
                    if r != unused {
                        reasons.push(r);
                        continue;
                    }
                    hits.clear();
                    if let Some(s) = schema.get(i) {
                        if let Some((_, ms)) = schemas.iter().find(|(name, _)| *name == s) {
                            for &m in ms {
                                let meter = &self.meters[m];
                                let counts =
                                    meter.conds.iter().all(|c| dims[c.dim].get(i).is_some_and(|v| c.values.iter().any(|x| x == v)));
                                if counts {
                                    // a COUNT adds one, a SUM the units (none: the event is invalid)
                                    hits.push((m, meter.units.map_or(Some(1), |a| attrs[a].get(i))));
                                }
                            }
                        }
                    }
                    let r = if bad.get(i).unwrap_or(false) || hits.iter().any(|(_, u)| u.is_none()) {
                        invalid
                    } else if hits.is_empty() {
                        unmatched
                    } else {
                        unused
                    };
                    reasons.push(r);
                    // a used event is in a window (assignment gave it one)
                    if let (true, Some(w)) = (r == unused, window.get(i)) {
                        let e = events.get_mut(w as usize).ok_or_else(|| {
                            TallyError::Polars(PolarsError::ComputeError(
                                format!("window {w} is not one of the {} windows", self.windows).into(),
                            ))
                        })?;
                        *e += 1;
                        for &(m, u) in &hits {
                            let v = &mut slots[slot(w, m)];
                            *v = v.checked_add(u.unwrap_or(0)).ok_or(TallyError::Overflow { meter: m, window: w })?;
                        }
                    }
                }
                Ok((reasons, events, slots))
            })
            .collect();
        let mut reasons = Vec::with_capacity(n);
        let (mut events, mut slots) = (Vec::new(), Vec::new());
        for part in parts {
            let (r, e, s) = part?;
            reasons.extend(r);
            if events.is_empty() {
                (events, slots) = (e, s);
                continue;
            }
            for (a, b) in events.iter_mut().zip(e) {
                *a += b;
            }
            for (j, (a, b)) in slots.iter_mut().zip(s).enumerate() {
                *a = a.checked_add(b).ok_or(TallyError::Overflow { meter: j % k, window: (j / k) as u32 })?;
            }
        }
        let (mut windows, mut tallies) = (Vec::new(), Vec::new());
        for (w, e) in events.iter().enumerate().filter(|(_, e)| **e > 0) {
            windows.push((w as u32, *e));
            tallies.extend_from_slice(&slots[w * k..(w + 1) * k]);
        }
        Ok(Tally { reason: UInt32Chunked::from_vec(REASON.into(), reasons), windows, tallies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Computation;
    use polars::prelude::{Column, IntoColumn, IntoSeries, NamedFrom};

    fn var_dim(d: &str) -> Ast {
        Ast::Var { var: VarRef::Dimension(d.into()), default: None }
    }

    fn var_attr(a: &str) -> Ast {
        Ast::Var { var: VarRef::Attribute(a.into()), default: None }
    }

    fn meter(id: &str, aggregation: Aggregation, filters: Vec<FilterField>, computations: Vec<(Option<Ast>, Ast)>) -> Meter {
        Meter {
            id: id.into(),
            name: id.into(),
            display_name: id.into(),
            aggregation,
            schema: if id.starts_with("api") { "api_call".into() } else { "storage".into() },
            filters,
            computations: computations.into_iter().map(|(matcher, computation)| Computation { order: 1, matcher, computation }).collect(),
        }
    }

    fn columns() -> FrameColumns {
        FrameColumns {
            attributes: [("tokens".to_string(), 0u32), ("bytes".to_string(), 2)].into_iter().collect(),
            dimensions: ["model".to_string(), "tier".to_string()].into_iter().collect(),
        }
    }

    /// The bench's shapes: COUNT, SUM of an attribute with an `in` matcher, SUM with a filter.
    fn simple() -> Vec<Meter> {
        let models =
            Ast::Op { op: Op::In, args: vec![var_dim("model"), Ast::Lit(Lit::Str("big".into())), Ast::Lit(Lit::Str("huge".into()))] };
        vec![
            meter("api.count", Aggregation::Count, vec![], vec![]),
            meter("api.premium", Aggregation::Sum, vec![], vec![(Some(models), var_attr("tokens"))]),
            meter(
                "api.priority",
                Aggregation::Sum,
                vec![FilterField::Dimension("tier".into(), "priority".into())],
                vec![(None, var_attr("tokens"))],
            ),
            meter("storage.bytes", Aggregation::Sum, vec![], vec![(None, var_attr("bytes"))]),
        ]
    }

    #[test]
    fn only_simple_meters_are_planned() {
        let cols = columns();
        assert!(plan(&simple(), &cols, 4).is_some());
        let other = |m: Meter| plan(&[simple(), vec![m]].concat(), &cols, 4);
        // another aggregation, a computed value, an attribute filter, a comparison, a dimension
        // the frame lacks: all left to polars
        assert_eq!(other(meter("api.max", Aggregation::Max, vec![], vec![(None, var_attr("tokens"))])), None);
        let doubled = Ast::Op { op: Op::Mul, args: vec![var_attr("tokens"), Ast::Lit(Lit::Num(2.into()))] };
        assert_eq!(other(meter("api.double", Aggregation::Sum, vec![], vec![(None, doubled)])), None);
        let f = FilterField::Attribute("tokens".into(), 1.into());
        assert_eq!(other(meter("api.one", Aggregation::Count, vec![f], vec![])), None);
        let gt = Ast::Op { op: Op::Gt, args: vec![var_attr("tokens"), Ast::Lit(Lit::Num(1.into()))] };
        assert_eq!(other(meter("api.gt", Aggregation::Count, vec![], vec![(Some(gt), var_attr("tokens"))])), None);
        let f = FilterField::Dimension("zone".into(), "a".into());
        assert_eq!(other(meter("api.zone", Aggregation::Count, vec![f], vec![])), None);
        // more windows than a dense tally holds
        assert_eq!(plan(&simple(), &cols, MAX_SLOTS), None);
    }

    /// Reasons and tallies of a small frame, worked out by hand.
    #[test]
    fn rows_are_decided_and_tallied_per_window() {
        let p = plan(&simple(), &columns(), 4).unwrap();
        let text = |name: &str, v: Vec<Option<&str>>| Column::new(name.into(), v);
        let dec = |name: &str, v: Vec<Option<i128>>, scale: usize| {
            polars::prelude::Int128Chunked::new(name.into(), v).into_decimal_unchecked(38, scale).into_series().into_column()
        };
        // rows: 0 api big priority 10 (w1) · 1 api small priority 5 (w1) · 2 api big none 7 (w2)
        // · 3 api huge, tokens null (w2): UNITS_INVALID · 4 storage 1.50 (w1) · 5 storage, a bad
        // attribute (w1): UNITS_INVALID · 6 unknown schema (w1): NO_MATCHING_METERS · 7 already
        // rejected (reason 3) · 8 api small, tier null (w3): counted by api.count only
        let df = DataFrame::new(
            9,
            vec![
                Column::new(REASON.into(), vec![0u32, 0, 0, 0, 0, 0, 0, 3, 0]),
                Column::new(WINDOW.into(), vec![Some(1u32), Some(1), Some(2), Some(2), Some(1), Some(1), Some(1), None, Some(3)]),
                text(
                    SCHEMA_NAME,
                    vec![
                        Some("api_call"),
                        Some("api_call"),
                        Some("api_call"),
                        Some("api_call"),
                        Some("storage"),
                        Some("storage"),
                        Some("other"),
                        Some("api_call"),
                        Some("api_call"),
                    ],
                ),
                text(
                    "dimensions.model",
                    vec![Some("big"), Some("small"), Some("big"), Some("huge"), None, None, None, Some("big"), Some("small")],
                ),
                text("dimensions.tier", vec![Some("priority"), Some("priority"), None, None, None, None, None, None, None]),
                dec("attributes.tokens", vec![Some(10), Some(5), Some(7), None, None, None, None, Some(1), Some(2)], 0),
                dec("attributes.bytes", vec![None, None, None, None, Some(150), None, None, None, None], 2),
                Column::new(BAD_ATTR.into(), vec![false, false, false, false, false, true, false, false, false]),
            ],
        )
        .unwrap();
        let t = p.tally(&df).unwrap();
        let invalid = Reason::UnitsInvalid as u32;
        let unmatched = Reason::NoMatchingMeters as u32;
        assert_eq!(t.reason.into_no_null_iter().collect::<Vec<_>>(), vec![0, 0, 0, invalid, 0, invalid, unmatched, 3, 0]);
        // per meter (count: hits; premium, priority, storage: sums of mantissas)
        let per_window: Vec<(u32, u64, Vec<i128>)> = t.per_window().map(|(w, e, v)| (w, e, v.to_vec())).collect();
        assert_eq!(per_window, vec![(1, 3, vec![2, 10, 15, 150]), (2, 1, vec![1, 7, 0, 0]), (3, 1, vec![1, 0, 0, 0])]);
    }
}
