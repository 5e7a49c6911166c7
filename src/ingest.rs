//! Ingest and meter: every event either counts towards usage or gets exactly one reject reason.
//!
//! Validity is a polars expression; first-arrival dedup, account and alias resolution at the
//! event's time, schedule and cycle assignment and the grace period are one native pass
//! (`assign.rs`); then the compiled meters (polars) and one group-by that yields this part's
//! usage (window × meter, in the form that combines with other parts': `usage.rs`), or, when
//! every meter is simple, one native pass that does both (`tally.rs`). Called once
//! per partition of the input (`partition.rs`) or per chunk of arrival (`twopass.rs`, without
//! dedup: its rows have keys of their own).

use std::collections::BTreeMap;

use polars::prelude::*;
use rust_decimal::Decimal;

use crate::assign::Assigner;
use crate::catalog::{Aggregation, Catalog};
use crate::frame::{EventFrame, BAD_ATTR, SEQ};
use crate::meter::{compile_meter, enrichment_column, CompiledMeter};
use crate::numeric;
use crate::usage::{Partial, PartialUsage};
use crate::windows::Window;
use billrun_connectors::schema::{ATTR_PREFIX, DIM_PREFIX, EVENT_ID, INGESTED_AT, SCHEMA_NAME, TIMESTAMP};

/// Why an event was not used. Codes are Togai's ingestion statuses where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    InvalidEvent = 1,
    NoEventId,
    Duplicate,
    SchemaNotDefined,
    AccountNotFound,
    AfterAsOf,
    NotMetered,
    PastGracePeriod,
    UnitsInvalid,
    NoMatchingMeters,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::InvalidEvent,
        Reason::NoEventId,
        Reason::Duplicate,
        Reason::SchemaNotDefined,
        Reason::AccountNotFound,
        Reason::AfterAsOf,
        Reason::NotMetered,
        Reason::PastGracePeriod,
        Reason::UnitsInvalid,
        Reason::NoMatchingMeters,
    ];
    pub fn from_code(c: u8) -> Option<Reason> {
        Reason::ALL.get((c as usize).checked_sub(1)?).copied()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidEvent => "INGESTION_FAILED_INVALID_EVENT",
            Reason::NoEventId => "INGESTION_FAILED_NO_EVENT_ID",
            Reason::Duplicate => "INGESTION_FAILED_DUPLICATE_EVENT",
            Reason::SchemaNotDefined => "INGESTION_FAILED_SCHEMA_NOT_DEFINED",
            Reason::AccountNotFound => "INGESTION_FAILED_ACCOUNT_NOT_FOUND",
            Reason::AfterAsOf => "AFTER_AS_OF",
            Reason::NotMetered => "INGESTION_COMPLETED_EVENT_NOT_METERED",
            Reason::PastGracePeriod => "INGESTION_FAILED_PAST_GRACE_PERIOD",
            Reason::UnitsInvalid => "INGESTION_FAILED_UNITS_INVALID",
            Reason::NoMatchingMeters => "INGESTION_COMPLETED_NO_MATCHING_METERS",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Reason::InvalidEvent => "the event has no valid timestamp, or an attribute or dimension its event schema does not declare",
            Reason::NoEventId => "the event has no id",
            Reason::Duplicate => "an event with the same id arrived earlier (first arrival wins)",
            Reason::SchemaNotDefined => "no event schema with this name in the catalog",
            Reason::AccountNotFound => "neither an account id nor an alias valid at the event's timestamp",
            Reason::AfterAsOf => "the event's timestamp or arrival is not before the run's as-of instant",
            Reason::NotMetered => "no price plan schedule is in force for the account at the event's timestamp",
            Reason::PastGracePeriod => "the event arrived after its pricing cycle's grace period",
            Reason::UnitsInvalid => "an attribute is not a number, or a meter's computation gives no number for it",
            Reason::NoMatchingMeters => "no usage meter counts this event",
        }
    }
}

pub const REASON: &str = "__reason";
pub const ACCOUNT: &str = "__account";
pub const WINDOW: &str = "__window";

/// The usage table: (window, meter) → exact quantity. Features' consumption is in it too, as
/// `feature_meter_id(feature, schema)` (all of the window) and that id + [`VALID_SUFFIX`] (the part
/// inside the window's feature-credit validity).
pub type Usage = BTreeMap<(u32, String), Decimal>;

/// Suffix of the usage entry holding a feature's consumption inside its credit validity.
pub const VALID_SUFFIX: &str = "@valid";

/// The usage-table id of a feature's consumption by the events of one schema.
pub fn feature_meter_id(feature: &str, schema: &str) -> String {
    format!("feature:{feature}#{schema}")
}

/// Enrichment dependencies by name: (schema, setting key, numeric?) for every schema declaring it.
fn dependency_plan(catalog: &Catalog) -> BTreeMap<String, Vec<(String, String, bool)>> {
    let mut out: BTreeMap<String, Vec<(String, String, bool)>> = BTreeMap::new();
    for s in catalog.event_schemas.values() {
        for (name, (key, numeric)) in &s.dependencies {
            out.entry(name.clone()).or_default().push((s.name.clone(), key.clone(), *numeric));
        }
    }
    out
}

/// One SUM meter per (feature, consuming schema), with the feature id, in catalog order.
fn feature_meters(catalog: &Catalog) -> Vec<(crate::catalog::Meter, String)> {
    use crate::catalog::{Computation, Meter};
    use crate::jsonlogic::{Ast, VarRef};
    let mut out = Vec::new();
    for f in catalog.features.values() {
        for (schema, attribute) in &f.consumers {
            let id = feature_meter_id(&f.id, schema);
            let m = Meter {
                id: id.clone(),
                name: id.clone(),
                display_name: f.display_name.clone(),
                aggregation: Aggregation::Sum,
                schema: schema.clone(),
                filters: Vec::new(),
                computations: vec![Computation {
                    order: 0,
                    matcher: None,
                    computation: Ast::Var { var: VarRef::Attribute(attribute.clone()), default: None },
                }],
            };
            out.push((m, f.id.clone()));
        }
    }
    out
}

pub struct IngestOutput {
    pub usage: PartialUsage,
    /// Meter ids in the order of the `__hit_<i>` / `__units_<i>` columns of `rejects`.
    pub meter_ids: Vec<String>,
    /// The rejected events (canonical columns + `__reason`), in arrival order.
    pub rejects: DataFrame,
    pub counts: BTreeMap<Reason, u64>,
    pub events_read: u64,
    pub events_used: u64,
    /// Events used, per window.
    pub used_by_window: BTreeMap<u32, u64>,
    /// Wall time of the meter part (meter columns, the usage group-by, the rejected rows), for
    /// the run's stage timings.
    pub meter_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    #[error("enrichment `{field}` of event schema `{schema}` cannot be evaluated: {message}")]
    Enrichment { schema: String, field: String, message: String },
    #[error("usage meter `{meter}` cannot be evaluated exactly: {message}")]
    Meter { meter: String, message: String },
    #[error("usage of meter `{meter}` in window {window} does not fit a decimal")]
    Overflow { meter: String, window: u32 },
    #[error("usage of meter `{meter}` in window {window} came from two parts of the input that cannot be combined")]
    Unmergeable { meter: String, window: u32 },
}

fn code(c: u8) -> Expr {
    lit(c as u32).cast(DataType::UInt32)
}

fn keep(r: Expr, reason: Reason, cond: Expr) -> Expr {
    when(r.clone().neq(code(0))).then(r).when(cond).then(code(reason as u8)).otherwise(code(0))
}

/// The frame with its text columns copied into buffers of their own. A filtered polars text
/// column still points into the buffers of the column it came from: kept until the end of the
/// run, the few rejected rows of every partition held all of its text (gigabytes at 50M events).
fn compact(df: DataFrame) -> PolarsResult<DataFrame> {
    let height = df.height();
    let columns = df
        .columns()
        .iter()
        .map(|c| match c.dtype() {
            DataType::String => {
                let chunks: Vec<ArrayRef> = c.str()?.downcast_iter().map(|a| a.clone().gc().boxed()).collect();
                Ok(Series::try_from((c.name().clone(), chunks))?.into_column())
            }
            _ => Ok(c.clone()),
        })
        .collect::<PolarsResult<Vec<_>>>()?;
    DataFrame::new(height, columns)
}

/// Ingest the event frame against the catalog and the billing windows.
pub fn ingest(
    frame: EventFrame,
    catalog: &Catalog,
    windows: &[Window],
    assigner: &Assigner,
    as_of_us: i64,
    dedup: bool,
    polars_meters: bool,
) -> Result<IngestOutput, IngestError> {
    let EventFrame { df, columns } = frame;
    let events_read = df.height() as u64;
    // the rows stay in the order they came in (a spilled partition is in arrival order only
    // within each bucket): dedup reads arrival from ingested-at and `__seq` (`assign`), and
    // nothing else here depends on row order (rejects are sorted by `__seq` at the end)

    // 1-4: validity, id, dedup, schema
    let mut undeclared = lit(false);
    for s in catalog.event_schemas.values() {
        let mut extra = lit(false);
        for a in columns.attributes.keys().filter(|a| !s.attributes.contains(*a)) {
            extra = extra.or(col(format!("{ATTR_PREFIX}{a}")).is_not_null());
        }
        for d in columns.dimensions.iter().filter(|d| !s.dimensions.contains(*d)) {
            extra = extra.or(col(format!("{DIM_PREFIX}{d}")).is_not_null());
        }
        undeclared = undeclared.or(col(SCHEMA_NAME).eq(lit(s.name.clone())).fill_null(lit(false)).and(extra));
    }
    let r1 = when(col(TIMESTAMP).is_null().or(undeclared))
        .then(code(Reason::InvalidEvent as u8))
        .when(col(EVENT_ID).is_null().or(col(EVENT_ID).eq(lit(""))))
        .then(code(Reason::NoEventId as u8))
        .otherwise(code(0));
    // 3-8 (dedup, schema, account, as-of, window, grace): one native pass
    let mut df = df.lazy().with_column(r1.alias(REASON)).collect()?;
    let a = assigner.assign(&df, df.column(REASON)?.u32()?, as_of_us, dedup)?;
    df.with_column(a.reason.into_column())?;
    df.with_column(a.account.into_column())?;
    df.with_column(a.window.into_column())?;
    df.with_column(a.due.into_column())?;

    // enrichment dependencies: each account's setting value, as a frame field
    let mut columns = columns;
    let mut lf = df.lazy();
    for (n, (name, per_schema)) in dependency_plan(catalog).into_iter().enumerate() {
        let field = crate::jsonlogic::dependency_field(&name);
        let numeric = per_schema[0].2;
        let scale = catalog.settings.iter().filter_map(|s| match &s.value {
            crate::catalog::SettingValue::Numeric(v) if numeric => Some(v.scale()),
            _ => None,
        });
        let scale = scale.max().unwrap_or(0);
        let dtype = if numeric { numeric::dtype(scale) } else { DataType::String };
        let mut value = lit(Null {}).cast(dtype);
        for (k, (schema, key, _)) in per_schema.iter().enumerate() {
            let (ids, vals): (Vec<String>, Vec<Option<crate::catalog::SettingValue>>) =
                catalog.accounts.values().map(|a| (a.id.clone(), catalog.setting_for(a, key).map(|s| s.value.clone()))).unzip();
            let c = format!("__dep_{n}_{k}");
            let values: Column = if numeric {
                let m: Int128Chunked = vals
                    .iter()
                    .map(|v| match v {
                        Some(crate::catalog::SettingValue::Numeric(d)) => {
                            let (m, s) = numeric::const_parts(*d);
                            numeric::upscale(m, s, scale)
                        }
                        _ => None,
                    })
                    .collect();
                m.with_name(c.as_str().into()).into_decimal_unchecked(38, scale as usize).into_series().into_column()
            } else {
                let t: Vec<Option<String>> = vals
                    .into_iter()
                    .map(|v| match v {
                        Some(crate::catalog::SettingValue::Text(t)) => Some(t),
                        _ => None,
                    })
                    .collect();
                Column::new(c.as_str().into(), t)
            };
            let key = format!("__dep_account_{n}_{k}");
            let table = DataFrame::new(ids.len(), vec![Column::new(key.as_str().into(), ids), values])?;
            lf = lf.left_join(table.lazy(), col(ACCOUNT), col(&key));
            value = when(col(SCHEMA_NAME).eq(lit(schema.clone())).fill_null(lit(false))).then(col(&c)).otherwise(value);
        }
        if numeric {
            lf = lf.with_column(value.alias(format!("{ATTR_PREFIX}{field}")));
            columns.attributes.insert(field, scale);
        } else {
            lf = lf.with_column(value.alias(format!("{DIM_PREFIX}{field}")));
            columns.dimensions.insert(field);
        }
    }

    // enrichments: derived fields per event schema, in order, before the meters read them
    for schema in catalog.event_schemas.values() {
        for e in &schema.enrichments {
            let (expr, scale) = enrichment_column(&e.value, e.attribute, &schema.name, &e.name, &columns)
                .map_err(|message| IngestError::Enrichment { schema: schema.name.clone(), field: e.name.clone(), message })?;
            lf = lf.with_column(expr);
            match scale {
                Some(s) => {
                    columns.attributes.insert(e.name.clone(), s);
                }
                None => {
                    columns.dimensions.insert(e.name.clone());
                }
            }
        }
    }
    let df = lf.collect()?;

    // 9-10: meters, then the features' consumption as SUM meters (`feature_meter_id`)
    let meter_start = std::time::Instant::now();
    let feature_meters = feature_meters(catalog);
    let compiled: Vec<CompiledMeter> = catalog
        .meters
        .values()
        .chain(feature_meters.iter().map(|f| &f.0))
        .map(|m| compile_meter(m, &columns).map_err(|message| IngestError::Meter { meter: m.id.clone(), message }))
        .collect::<Result<_, _>>()?;
    // simple meters (src/tally.rs) in one native pass, unless asked for polars' (the definition)
    if !polars_meters && feature_meters.is_empty() {
        if let Some(plan) = crate::tally::plan(catalog.meters.values(), &columns, windows.len()) {
            return tallied(df, &plan, &compiled, events_read, meter_start);
        }
    }
    let mut lf = df.lazy();
    // each feature's credit validity in the event's window: `__fv_from_<k>` / `__fv_until_<k>`
    let features: Vec<&String> = {
        let mut f: Vec<&String> = feature_meters.iter().map(|m| &m.1).collect();
        f.dedup();
        f
    };
    for (k, fid) in features.iter().enumerate() {
        let grants: Vec<(u32, i64, i64)> = windows
            .iter()
            .flat_map(|w| w.feature_grants.iter().filter(|g| &&g.feature_id == fid).map(|g| (w.id, g.from_us, g.until_us)))
            .collect();
        let (wcol, from, until) = (format!("__fv_w_{k}"), format!("__fv_from_{k}"), format!("__fv_until_{k}"));
        let fv = df!(
            wcol.as_str() => grants.iter().map(|g| g.0).collect::<Vec<_>>(),
            from.as_str() => grants.iter().map(|g| g.1).collect::<Vec<_>>(),
            until.as_str() => grants.iter().map(|g| g.2).collect::<Vec<_>>(),
        )?;
        lf = lf.left_join(fv.lazy(), col(WINDOW), col(&wcol));
    }
    let mut any_hit = lit(false);
    let mut invalid = col(BAD_ATTR).fill_null(lit(false));
    for (i, m) in compiled.iter().enumerate() {
        let hit = format!("__hit_{i}");
        lf = lf.with_column(m.hit.clone().alias(&hit));
        any_hit = any_hit.or(col(&hit));
        if let Some(u) = &m.units {
            let units = format!("__units_{i}");
            lf = lf.with_column(u.clone().alias(&units));
            invalid = invalid.or(col(&hit).and(col(&units).is_null()));
        }
    }
    let lf = lf.with_column(keep(col(REASON), Reason::UnitsInvalid, invalid).alias(REASON));
    let lf = lf.with_column(keep(col(REASON), Reason::NoMatchingMeters, any_hit.not()).alias(REASON));
    let df = lf.collect()?;

    let mut aggs = Vec::new();
    let n_meters = catalog.meters.len();
    for i in n_meters..compiled.len() {
        let k = features.iter().position(|f| **f == feature_meters[i - n_meters].1).expect("listed");
        let valid = col(format!("__hit_{i}"))
            .and(col(TIMESTAMP).gt_eq(col(format!("__fv_from_{k}"))).fill_null(lit(false)))
            .and(col(TIMESTAMP).lt(col(format!("__fv_until_{k}"))).fill_null(lit(false)));
        aggs.push(when(valid).then(col(format!("__units_{i}"))).otherwise(lit(Null {})).sum().alias(format!("__qv_{i}")));
    }
    for (i, m) in compiled.iter().enumerate() {
        let hit = col(format!("__hit_{i}"));
        let q = format!("__q_{i}");
        let counted = || when(col(format!("__hit_{i}"))).then(col(format!("__units_{i}"))).otherwise(lit(Null {}));
        match m.aggregation {
            Aggregation::Count => aggs.push(hit.cast(DataType::UInt64).sum().alias(q)),
            Aggregation::Sum => aggs.push(counted().sum().alias(q)),
            Aggregation::Max => aggs.push(counted().max().alias(q)),
            Aggregation::Min => aggs.push(counted().min().alias(q)),
            Aggregation::Average => {
                aggs.push(counted().sum().alias(q));
                aggs.push(hit.cast(DataType::UInt64).sum().alias(format!("__n_{i}")));
            }
            // the distinct values themselves, so that parts of the input combine
            Aggregation::UniqueCount => aggs.push(counted().drop_nulls().unique().alias(q)),
            Aggregation::Latest => {
                // the last value in (timestamp, ingested-at with nulls first, arrival) order,
                // and that order's key of its event, so that parts of the input combine
                let sorted = |e: Expr| {
                    e.sort_by([col(TIMESTAMP), col(INGESTED_AT), col(SEQ)], SortMultipleOptions::default().with_nulls_last(false))
                };
                aggs.push(sorted(counted()).drop_nulls().last().alias(q));
                for (c, key) in [(TIMESTAMP, "__lt"), (INGESTED_AT, "__li"), (SEQ, "__ls")] {
                    aggs.push(sorted(col(c)).filter(sorted(counted()).is_not_null()).last().alias(format!("{key}_{i}")));
                }
            }
        }
    }
    let used = df.clone().lazy().filter(col(REASON).eq(code(0)));
    aggs.push(len().cast(DataType::UInt64).alias("__events"));
    let agg = used.group_by([col(WINDOW)]).agg(aggs).collect()?;
    // slots: the compiled meters, then the features' consumption inside their credit validity
    let slots =
        compiled.iter().map(|m| m.meter_id.clone()).chain(compiled[n_meters..].iter().map(|m| format!("{}{VALID_SUFFIX}", m.meter_id)));
    let mut usage = PartialUsage::new(slots.collect());
    let used_by_window: BTreeMap<u32, u64>;
    {
        let wins: Vec<Option<u32>> = agg.column(WINDOW)?.u32()?.iter().collect();
        // built from its sorted entries at once (the groups come in no order)
        let mut used: Vec<(u32, u64)> =
            wins.iter().zip(agg.column("__events")?.u64()?.iter()).filter_map(|(w, n)| Some(((*w)?, n?))).collect();
        used.sort_unstable();
        used_by_window = used.into_iter().collect();
        for (i, m) in compiled.iter().enumerate() {
            let q = agg.column(&format!("__q_{i}"))?;
            // the common aggregations' values read once, not looked up row by row
            let (counts, decimals): (Vec<Option<u64>>, Vec<Option<i128>>) = match m.aggregation {
                Aggregation::Count => (q.u64()?.iter().collect(), Vec::new()),
                Aggregation::Sum | Aggregation::Max | Aggregation::Min => (Vec::new(), q.decimal()?.physical().iter().collect()),
                _ => (Vec::new(), Vec::new()),
            };
            let valid: Vec<Option<i128>> = match i >= n_meters {
                true => agg.column(&format!("__qv_{i}"))?.decimal()?.physical().iter().collect(),
                false => Vec::new(),
            };
            for (row, w) in wins.iter().enumerate() {
                let Some(w) = *w else { continue };
                let overflow = || IngestError::Overflow { meter: m.meter_id.clone(), window: w };
                let exact = |v: Option<i128>| v.map(|v| numeric::to_decimal(v, m.scale).ok_or_else(overflow)).transpose();
                let value = match m.aggregation {
                    Aggregation::Count => counts[row].map(|n| Partial::Sum(Decimal::from(n))),
                    Aggregation::UniqueCount => {
                        let mut set = std::collections::BTreeSet::new();
                        if let Some(values) = q.list()?.get_as_series(row) {
                            match values.dtype() {
                                DataType::String => set.extend(values.str()?.iter().flatten().map(str::to_string)),
                                _ => {
                                    for v in values.decimal()?.physical().iter().flatten() {
                                        set.insert(numeric::to_decimal(v, m.scale).ok_or_else(overflow)?.to_string());
                                    }
                                }
                            }
                        }
                        Some(Partial::Distinct(Box::new(set)))
                    }
                    Aggregation::Sum => exact(decimals[row])?.map(Partial::Sum),
                    Aggregation::Max => exact(decimals[row])?.map(Partial::Max),
                    Aggregation::Min => exact(decimals[row])?.map(Partial::Min),
                    Aggregation::Latest => match exact(q.decimal()?.physical().get(row))? {
                        None => None,
                        Some(value) => {
                            let ts = agg.column(&format!("__lt_{i}"))?.i64()?.get(row).unwrap_or(i64::MIN);
                            let ingested = agg.column(&format!("__li_{i}"))?.i64()?.get(row);
                            let seq = agg.column(&format!("__ls_{i}"))?.idx()?.get(row).unwrap_or(0);
                            Some(Partial::Latest(Box::new((value, (ts, ingested, seq as u64)))))
                        }
                    },
                    Aggregation::Average => {
                        let n = agg.column(&format!("__n_{i}"))?.u64()?.get(row).unwrap_or(0);
                        match (exact(q.decimal()?.physical().get(row))?, n) {
                            (Some(sum), n) if n > 0 => Some(Partial::Average { sum, n }),
                            _ => None,
                        }
                    }
                };
                if let Some(v) = value {
                    usage.push(w, i, v);
                }
                if i >= n_meters {
                    if let Some(v) = exact(valid[row])? {
                        usage.push(w, compiled.len() + i - n_meters, Partial::Sum(v));
                    }
                }
            }
        }
    }

    usage.sort();
    let rejects = compact(df.lazy().filter(col(REASON).neq(code(0))).sort([SEQ], SortMultipleOptions::default()).collect()?)?;
    finish(usage, &compiled, rejects, events_read, used_by_window, meter_start)
}

/// The output of a part: the rejects' counts by reason, the meter ids, the time the meter part took.
fn finish(
    usage: PartialUsage,
    compiled: &[CompiledMeter],
    rejects: DataFrame,
    events_read: u64,
    used_by_window: BTreeMap<u32, u64>,
    meter_start: std::time::Instant,
) -> Result<IngestOutput, IngestError> {
    let mut counts = BTreeMap::new();
    for c in rejects.column(REASON)?.u32()?.iter().flatten() {
        if let Some(r) = Reason::from_code(c as u8) {
            *counts.entry(r).or_insert(0u64) += 1;
        }
    }
    let meter_ids = compiled.iter().map(|m| m.meter_id.clone()).collect();
    // every used event is in exactly one window's group
    let events_used = used_by_window.values().sum();
    let meter_seconds = meter_start.elapsed().as_secs_f64();
    Ok(IngestOutput { usage, meter_ids, rejects, counts, events_read, events_used, used_by_window, meter_seconds })
}

/// The meter part for simple meters ([`crate::tally`]): reasons, usage and used events per window
/// from one native pass; the same usage entries and rejected rows as the polars path (every
/// window with a used event has an entry for every meter, zero when nothing hit it), and the
/// rejected rows carry the meters' `__hit_<i>` / `__units_<i>` columns like the polars path's
/// (they explain a reject), evaluated on those rows only.
fn tallied(
    mut df: DataFrame,
    plan: &crate::tally::Plan,
    compiled: &[CompiledMeter],
    events_read: u64,
    meter_start: std::time::Instant,
) -> Result<IngestOutput, IngestError> {
    let t = plan.tally(&df).map_err(|o| match o {
        crate::tally::TallyError::Polars(e) => IngestError::Polars(e),
        crate::tally::TallyError::Overflow { meter, window } => IngestError::Overflow { meter: compiled[meter].meter_id.clone(), window },
    })?;
    let mut usage = PartialUsage::new(compiled.iter().map(|m| m.meter_id.clone()).collect());
    let mut used = Vec::with_capacity(t.windows.len());
    for (w, events, per) in t.per_window() {
        used.push((w, events));
        for (i, (m, &v)) in compiled.iter().zip(per).enumerate() {
            // a COUNT's hits at scale 0, a SUM's units at their attribute's
            let value = numeric::to_decimal(v, m.scale).ok_or_else(|| IngestError::Overflow { meter: m.meter_id.clone(), window: w })?;
            usage.push(w, i, Partial::Sum(value));
        }
    }
    usage.sort();
    df.with_column(t.reason.into_column())?;
    let mut lf = df.lazy().filter(col(REASON).neq(code(0)));
    for (i, m) in compiled.iter().enumerate() {
        lf = lf.with_column(m.hit.clone().alias(format!("__hit_{i}")));
        if let Some(u) = &m.units {
            lf = lf.with_column(u.clone().alias(format!("__units_{i}")));
        }
    }
    let rejects = compact(lf.sort([SEQ], SortMultipleOptions::default()).collect()?)?;
    finish(usage, compiled, rejects, events_read, used.into_iter().collect(), meter_start)
}
