//! `rejects.ndjson`: one line per rejected event, its reason code, why exactly (`detail`) and the
//! event as it came in (Togai's event shape), sorted by reason and then by text, so the file does
//! not depend on the order in which partitions finished.
//!
//! A run with a few hundred thousand rejects writes them all: the columns are found once (each
//! rechunked, so a cell is read in constant time) and every line is serialized from a typed
//! struct whose fields are in the order `serde_json`'s sorted maps gave them, so the bytes are
//! those of the `Value` each line once was.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use polars::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::frame::RAW_ATTRS;
use crate::ingest::{Reason, REASON};
use billrun_connectors::file::BadRecord;
use billrun_connectors::schema::{ACCOUNT_ID, ATTR_PREFIX, DIM_PREFIX, EVENT_ID, INGESTED_AT, SCHEMA_NAME, TIMESTAMP};

/// Every line of the rejects file, `(reason code, line)`, sorted: the records the sources could
/// not read (`bad`) and the rows of the rejects frame.
pub fn lines(rejects: &DataFrame, bad: &[BadRecord], cat: &Catalog, meter_ids: &[String]) -> Result<Vec<(u8, String)>, PolarsError> {
    let mut out = Vec::new();
    for b in bad {
        let v = json!({"reason": Reason::InvalidEvent.as_str(), "detail": b.error, "location": b.location, "raw": b.raw});
        out.push((Reason::InvalidEvent as u8, v.to_string()));
    }
    let reasons = rejects.column(REASON)?.as_materialized_series().rechunk();
    let reasons = reasons.u32()?;
    let cols = Columns::new(rejects, meter_ids.len());
    // each row on its own, on every core (the lines are sorted below)
    out.par_extend((0..rejects.height()).into_par_iter().map(|i| {
        let code = reasons.get(i).unwrap_or(0) as u8;
        let reason = Reason::from_code(code).unwrap_or(Reason::InvalidEvent);
        let row = Row { cols: &cols, i };
        let line = Line { detail: detail(reason, row, cat, meter_ids), event: row.event(), reason: reason.as_str() };
        (code, serde_json::to_string(&line).expect("a reject line serializes"))
    }));
    out.par_sort_unstable();
    Ok(out)
}

/// A rejects line; fields in sorted order, as a JSON object's keys were.
#[derive(Serialize)]
struct Line {
    detail: String,
    event: Event,
    reason: &'static str,
}

/// The rejected event in Togai's shape; fields in sorted order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    account_id: Option<String>,
    attributes: Vec<Attribute>,
    dimensions: BTreeMap<String, String>,
    id: Option<String>,
    /// Only when the source gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    ingested_at: Option<Value>,
    schema_name: Option<String>,
    timestamp: Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Attribute {
    /// An attribute column's value.
    Cell { name: String, value: String },
    /// One of the raw attributes kept for an event whose value was not a number.
    Raw(Value),
}

impl Attribute {
    fn name(&self) -> Option<&str> {
        match self {
            Attribute::Cell { name, .. } => Some(name),
            Attribute::Raw(v) => v["name"].as_str(),
        }
    }
}

/// The rejects frame's columns, each found once and rechunked.
struct Columns {
    series: Vec<Series>,
    event_id: Option<usize>,
    schema_name: Option<usize>,
    account_id: Option<usize>,
    timestamp: Option<usize>,
    ingested_at: Option<usize>,
    raw: Option<usize>,
    /// Every attribute and dimension column, in the frame's order.
    fields: Vec<Field>,
    /// Per meter slot, its `__hit_k` and `__units_k` columns.
    meters: Vec<(Option<usize>, Option<usize>)>,
}

/// An attribute or dimension column of the rejects frame.
struct Field {
    column: usize,
    name: String,
    dimension: bool,
    /// An enrichment dependency: the account's settings, not part of the event.
    dependency: bool,
}

impl Columns {
    fn new(df: &DataFrame, meters: usize) -> Columns {
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        let find = |n: &str| names.iter().position(|c| c == n);
        let dep = crate::jsonlogic::dependency_field("");
        let fields = names
            .iter()
            .enumerate()
            .filter_map(|(column, n)| {
                let (name, dimension) = match n.strip_prefix(ATTR_PREFIX) {
                    Some(a) => (a, false),
                    None => (n.strip_prefix(DIM_PREFIX)?, true),
                };
                Some(Field { column, name: name.to_string(), dimension, dependency: name.starts_with(&dep) })
            })
            .collect();
        Columns {
            series: df.columns().iter().map(|c| c.as_materialized_series().rechunk()).collect(),
            event_id: find(EVENT_ID),
            schema_name: find(SCHEMA_NAME),
            account_id: find(ACCOUNT_ID),
            timestamp: find(TIMESTAMP),
            ingested_at: find(INGESTED_AT),
            raw: find(RAW_ATTRS),
            fields,
            meters: (0..meters).map(|k| (find(&format!("__hit_{k}")), find(&format!("__units_{k}")))).collect(),
        }
    }
}

/// One row of the rejects frame.
#[derive(Clone, Copy)]
struct Row<'a> {
    cols: &'a Columns,
    i: usize,
}

impl<'a> Row<'a> {
    fn cell(self, j: Option<usize>) -> AnyValue<'a> {
        j.and_then(|j| self.cols.series[j].get(self.i).ok()).unwrap_or(AnyValue::Null)
    }

    fn present(self, j: Option<usize>) -> bool {
        !self.cell(j).is_null()
    }

    fn text(self, j: Option<usize>) -> Option<String> {
        match self.cell(j) {
            AnyValue::Null => None,
            AnyValue::String(s) => Some(s.to_string()),
            AnyValue::StringOwned(s) => Some(s.to_string()),
            AnyValue::Decimal(m, _, s) => crate::numeric::to_decimal(m, s as u32).map(crate::money::format_exact),
            other => Some(other.to_string()),
        }
    }

    fn micros(self, j: Option<usize>) -> Option<i64> {
        self.cell(j).extract::<i64>()
    }

    fn event(self) -> Event {
        let c = self.cols;
        let own = |dimension: bool| c.fields.iter().filter(move |f| f.dimension == dimension && !f.dependency);
        let mut attributes: Vec<Attribute> =
            own(false).filter_map(|f| Some(Attribute::Cell { name: f.name.clone(), value: self.text(Some(f.column))? })).collect();
        let dimensions = own(true).filter_map(|f| Some((f.name.clone(), self.text(Some(f.column))?))).collect();
        if let Some(raw) = self.text(c.raw).and_then(|r| serde_json::from_str::<Vec<Value>>(&r).ok()) {
            attributes.extend(raw.into_iter().map(Attribute::Raw));
            attributes.sort_by(|a, b| a.name().cmp(&b.name()));
        }
        Event {
            account_id: self.text(c.account_id),
            attributes,
            dimensions,
            id: self.text(c.event_id),
            ingested_at: self.micros(c.ingested_at).map(rfc3339),
            schema_name: self.text(c.schema_name),
            timestamp: self.micros(c.timestamp).map_or(Value::Null, rfc3339),
        }
    }
}

fn rfc3339(us: i64) -> Value {
    DateTime::from_timestamp_micros(us).map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
}

/// Why exactly this row was rejected (beyond its reason code).
fn detail(reason: Reason, row: Row, cat: &Catalog, meter_ids: &[String]) -> String {
    let c = row.cols;
    match reason {
        Reason::InvalidEvent => {
            if !row.present(c.timestamp) {
                return "the event has no timestamp".into();
            }
            let schema_name = row.text(c.schema_name).unwrap_or_default();
            let Some(schema) = cat.event_schemas.get(&schema_name) else { return reason.describe().into() };
            let raw = row.text(c.raw);
            // in the frame's column order, enrichment dependencies included
            let extra: Vec<String> = c
                .fields
                .iter()
                .filter(|f| {
                    let present = row.present(Some(f.column));
                    if f.dimension {
                        !schema.dimensions.contains(&f.name) && present
                    } else {
                        !schema.attributes.contains(&f.name)
                            && (present || raw.as_ref().is_some_and(|r| r.contains(&format!("\"name\":\"{}\"", f.name))))
                    }
                })
                .map(|f| format!("{} `{}`", if f.dimension { "dimension" } else { "attribute" }, f.name))
                .collect();
            format!("{} not declared in event schema `{schema_name}`", extra.join(", "))
        }
        Reason::Duplicate => format!("event id `{}` arrived earlier (first arrival wins)", row.text(c.event_id).unwrap_or_default()),
        Reason::SchemaNotDefined => format!("no event schema `{}` in the catalog", row.text(c.schema_name).unwrap_or_default()),
        Reason::AccountNotFound => {
            format!("`{}` is neither an account id nor an alias valid at the event's timestamp", row.text(c.account_id).unwrap_or_default())
        }
        Reason::UnitsInvalid => {
            if let Some(raw) = row.text(c.raw) {
                return format!("attribute value is not a decimal number (at most 18 decimal places): {raw}");
            }
            let failing: Vec<&str> = meter_ids
                .iter()
                .zip(&c.meters)
                .filter(|(_, (hit, units))| {
                    let hit = hit.is_some_and(|h| c.series[h].bool().ok().and_then(|b| b.get(row.i)) == Some(true));
                    hit && units.is_some() && !row.present(*units)
                })
                .map(|(m, _)| m.as_str())
                .collect();
            format!("usage meter {} gives no number for this event (a missing attribute, division by zero or overflow)", failing.join(", "))
        }
        other => other.describe().into(),
    }
}
