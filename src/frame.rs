//! The one place where Arrow (arrow-rs, from the connectors) becomes polars: the event frame.
//!
//! Batches from every source are unified into one frame with the canonical columns, attribute
//! columns normalised to exact `Decimal(38, s)` (text is parsed exactly; a value that is not a
//! number becomes null and is flagged for the reject output), timestamps as i64 microseconds
//! (UTC), and `__seq`, the arrival order of the row in the input (source, file, row).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, RecordBatch, StringArray, StringViewArray};
use arrow::datatypes::{DataType as ADataType, Decimal128Type, Int64Type, TimeUnit};
use polars::prelude::*;

use crate::meter::FrameColumns;
use crate::numeric;
use billrun_connectors::schema::{ACCOUNT_ID, ATTR_PREFIX, DIM_PREFIX, EVENT_ID, INGESTED_AT, SCHEMA_NAME, TIMESTAMP};

pub const SEQ: &str = "__seq";
pub const BAD_ATTR: &str = "__bad_attr";
/// For rows with a non-numeric attribute value: the raw `[{"name", "value"}]` text, kept for the
/// reject output so that nothing the source sent is lost.
pub const RAW_ATTRS: &str = "__raw_attrs";
/// Largest number of decimal places accepted in an attribute value.
pub const MAX_ATTR_SCALE: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    #[error("column `{column}` has type {dtype}, which billrun cannot read as {what}")]
    Type { column: String, dtype: String, what: &'static str },
}

/// The unified event frame and what its columns are.
pub struct EventFrame {
    pub df: DataFrame,
    pub columns: FrameColumns,
}

/// arrow-rs array → polars Series through the Arrow C Data Interface (no copy for fixed-width).
fn to_polars(name: &str, a: &ArrayRef) -> Result<Column, FrameError> {
    let (ffi_array, ffi_schema) = arrow::ffi::to_ffi(&a.to_data())?;
    // SAFETY: arrow-rs and polars-arrow both implement the Arrow C Data Interface structs with
    // the same #[repr(C)] layout (transmute checks the sizes); ownership moves with the release
    // callback, which the importer takes over.
    let pa_array: polars_arrow::ffi::ArrowArray = unsafe { std::mem::transmute(ffi_array) };
    let pa_schema: polars_arrow::ffi::ArrowSchema = unsafe { std::mem::transmute(ffi_schema) };
    let field = unsafe { polars_arrow::ffi::import_field_from_c(&pa_schema)? };
    let arr = unsafe { polars_arrow::ffi::import_array_from_c(pa_array, field.dtype().clone())? };
    let s = Series::try_from((PlSmallStr::from(name), arr))?;
    Ok(s.into_column())
}

fn micros(a: &ArrayRef, column: &str) -> Result<ArrayRef, FrameError> {
    let a = match a.data_type() {
        ADataType::Null => return Ok(Arc::new(arrow::array::Int64Array::new_null(a.len()))),
        ADataType::Timestamp(TimeUnit::Microsecond, _) => a.clone(),
        ADataType::Timestamp(_, _) => arrow::compute::cast(a, &ADataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))?,
        dt => return Err(FrameError::Type { column: column.into(), dtype: dt.to_string(), what: "a timestamp" }),
    };
    Ok(arrow::compute::cast(&a, &ADataType::Int64)?)
}

/// A text column as a string view array, the layout polars holds text in: a `Utf8` column
/// keeps its value buffer (only the 16-byte views are built), a dictionary's views point into
/// its values, so no string is copied on the way into polars.
fn text(a: &ArrayRef, column: &str) -> Result<ArrayRef, FrameError> {
    match a.data_type() {
        ADataType::Utf8View => Ok(a.clone()),
        ADataType::Utf8 => Ok(Arc::new(StringViewArray::from(a.as_string::<i32>()))),
        ADataType::LargeUtf8 | ADataType::Dictionary(_, _) => Ok(arrow::compute::cast(a, &ADataType::Utf8View)?),
        ADataType::Null | ADataType::Int64 | ADataType::Int32 => {
            Ok(Arc::new(StringViewArray::from(arrow::compute::cast(a, &ADataType::Utf8)?.as_string::<i32>())))
        }
        dt => Err(FrameError::Type { column: column.into(), dtype: dt.to_string(), what: "text" }),
    }
}

/// An attribute column as exact mantissas at one scale, plus the rows that held a non-number.
struct Normalised {
    values: Decimal128Array,
    scale: u32,
    /// The rows whose value is not a number (rare), with its raw text.
    bad: Vec<(usize, String)>,
}

fn normalise_attribute(a: &ArrayRef, column: &str) -> Result<Normalised, FrameError> {
    let n = a.len();
    match a.data_type() {
        ADataType::Null => Ok(Normalised { values: Decimal128Array::new_null(n), scale: 0, bad: Vec::new() }),
        ADataType::Int8
        | ADataType::Int16
        | ADataType::Int32
        | ADataType::Int64
        | ADataType::UInt8
        | ADataType::UInt16
        | ADataType::UInt32 => {
            let c = arrow::compute::cast(a, &ADataType::Int64)?;
            // one pass over the values; the nulls are the column's own
            let values = c.as_primitive::<Int64Type>().unary::<_, Decimal128Type>(i128::from);
            Ok(Normalised { values, scale: 0, bad: Vec::new() })
        }
        ADataType::Decimal128(_, s) if *s >= 0 => {
            Ok(Normalised { values: a.as_primitive::<Decimal128Type>().clone(), scale: *s as u32, bad: Vec::new() })
        }
        ADataType::Utf8 | ADataType::LargeUtf8 | ADataType::Utf8View | ADataType::UInt64 => {
            let c = arrow::compute::cast(a, &ADataType::Utf8)?;
            let c = c.as_any().downcast_ref::<StringArray>().expect("utf8");
            // a value must be an exact decimal that billing arithmetic can hold (rust_decimal's
            // 28-29 significant digits); anything else is flagged and rejected as UNITS_INVALID
            let parsed: Vec<Option<(i128, u32)>> = c
                .iter()
                .map(|s| s.and_then(numeric::parse_text).filter(|(m, sc)| *sc <= MAX_ATTR_SCALE && numeric::to_decimal(*m, *sc).is_some()))
                .collect();
            let scale = parsed.iter().flatten().map(|(_, s)| *s).max().unwrap_or(0);
            let mut bad = Vec::new();
            let values: Decimal128Array = parsed
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let v = p.and_then(|(m, s)| numeric::upscale(m, s, scale));
                    if v.is_none() && c.is_valid(i) {
                        bad.push((i, c.value(i).to_string()));
                    }
                    v
                })
                .collect();
            Ok(Normalised { values, scale, bad })
        }
        dt => Err(FrameError::Type { column: column.into(), dtype: dt.to_string(), what: "an exact number (floats are not accepted)" }),
    }
}

/// Unify the batches of all sources into one event frame.
pub fn build(batches: &[RecordBatch]) -> Result<EventFrame, FrameError> {
    let mut attrs: BTreeSet<String> = BTreeSet::new();
    let mut dims: BTreeSet<String> = BTreeSet::new();
    for b in batches {
        for f in b.schema().fields() {
            if let Some(n) = f.name().strip_prefix(ATTR_PREFIX) {
                attrs.insert(n.to_string());
            } else if let Some(n) = f.name().strip_prefix(DIM_PREFIX) {
                dims.insert(n.to_string());
            }
        }
    }
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let get = |b: &RecordBatch, name: &str| -> ArrayRef {
        b.column_by_name(name).cloned().unwrap_or_else(|| arrow::array::new_null_array(&ADataType::Null, b.num_rows()))
    };
    let concat = |parts: Vec<ArrayRef>| -> Result<ArrayRef, FrameError> {
        if parts.is_empty() {
            return Ok(arrow::array::new_null_array(&ADataType::Utf8, 0));
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        Ok(arrow::compute::concat(&refs)?)
    };
    // every column is built on its own (and so on every core): text, timestamps, attributes
    // (exact mantissas at one scale, with the rows that held no number), dimensions
    enum Job {
        Text(String),
        Micros(&'static str),
        Attr(String),
    }
    let jobs: Vec<Job> = [EVENT_ID, SCHEMA_NAME, ACCOUNT_ID]
        .into_iter()
        .map(|n| Job::Text(n.to_string()))
        .chain([TIMESTAMP, INGESTED_AT].into_iter().map(Job::Micros))
        .chain(attrs.iter().map(|n| Job::Attr(n.clone())))
        .chain(dims.iter().map(|n| Job::Text(format!("{DIM_PREFIX}{n}"))))
        .collect();
    // (column, for an attribute: its scale and its rows without a number)
    type Built = (Column, Option<(u32, Vec<(usize, String)>)>);
    let built: Vec<Result<Built, FrameError>> = {
        use rayon::prelude::*;
        jobs.par_iter()
            .map(|job| match job {
                Job::Text(name) => {
                    let parts = batches.iter().map(|b| text(&get(b, name), name)).collect::<Result<Vec<_>, _>>()?;
                    // views are concatenated without copying the strings they point to
                    let a = if parts.is_empty() { Arc::new(StringViewArray::new_null(0)) as ArrayRef } else { concat(parts)? };
                    Ok((to_polars(name, &a)?, None))
                }
                Job::Micros(name) => {
                    let parts = batches.iter().map(|b| micros(&get(b, name), name)).collect::<Result<Vec<_>, _>>()?;
                    let a = if parts.is_empty() { Arc::new(arrow::array::Int64Array::new_null(0)) as ArrayRef } else { concat(parts)? };
                    Ok((to_polars(name, &a)?, None))
                }
                Job::Attr(name) => {
                    let column = format!("{ATTR_PREFIX}{name}");
                    let parts = batches.iter().map(|b| normalise_attribute(&get(b, &column), &column)).collect::<Result<Vec<_>, _>>()?;
                    let scale = parts.iter().map(|p| p.scale).max().unwrap_or(0);
                    let (mut row, mut bad, mut arrays) = (0, Vec::new(), Vec::with_capacity(parts.len()));
                    for p in parts {
                        bad.extend(p.bad.into_iter().map(|(i, r)| (row + i, r)));
                        row += p.values.len();
                        let values = match p.scale == scale {
                            true => p.values,
                            // a value that cannot be held at the column's scale becomes null
                            false => p.values.unary_opt::<_, Decimal128Type>(|v| numeric::upscale(v, p.scale, scale)),
                        };
                        arrays.push(Arc::new(values.with_precision_and_scale(38, scale as i8)?) as ArrayRef);
                    }
                    let a: ArrayRef = match arrays.len() {
                        0 => Arc::new(Decimal128Array::new_null(0).with_precision_and_scale(38, scale as i8)?),
                        1 => arrays.pop().expect("one"),
                        _ => concat(arrays)?,
                    };
                    Ok((to_polars(&column, &a)?, Some((scale, bad))))
                }
            })
            .collect()
    };
    let mut cols: Vec<Column> = Vec::with_capacity(built.len() + 2);
    let mut bad_any = vec![false; total];
    let mut raw_bad: BTreeMap<usize, Vec<serde_json::Value>> = BTreeMap::new();
    let mut attr_scales = BTreeMap::new();
    for (job, b) in jobs.iter().zip(built) {
        let (col, attr) = b?;
        cols.push(col);
        if let (Job::Attr(name), Some((scale, bad))) = (job, attr) {
            for (i, r) in bad {
                bad_any[i] = true;
                raw_bad.entry(i).or_default().push(serde_json::json!({"name": name, "value": r}));
            }
            attr_scales.insert(name.clone(), scale);
        }
    }
    let bad: ArrayRef = Arc::new(BooleanArray::from(bad_any));
    cols.push(to_polars(BAD_ATTR, &bad)?);
    let raw: ArrayRef = if raw_bad.is_empty() {
        arrow::array::new_null_array(&ADataType::Utf8, total)
    } else {
        Arc::new(StringArray::from(
            (0..total).map(|i| raw_bad.remove(&i).map(|v| serde_json::Value::Array(v).to_string())).collect::<Vec<_>>(),
        ))
    };
    cols.push(to_polars(RAW_ATTRS, &raw)?);
    // arrival numbers: given by the partitioner (global over the run), else the row's position
    let df = if batches.first().is_some_and(|b| b.column_by_name(SEQ).is_some()) {
        let parts: Vec<ArrayRef> = batches.iter().map(|b| get(b, SEQ)).collect();
        let seq = concat(parts)?;
        let mut df = DataFrame::new(total, cols)?;
        df.insert_column(0, to_polars(SEQ, &seq)?)?;
        df
    } else {
        DataFrame::new(total, cols)?.with_row_index(SEQ.into(), None)?
    };
    Ok(EventFrame { df, columns: FrameColumns { attributes: attr_scales, dimensions: dims } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn unifies_batches_and_reads_attribute_text_exactly() {
        let s1 = Arc::new(Schema::new(vec![
            Field::new(EVENT_ID, ADataType::Utf8, true),
            Field::new(TIMESTAMP, ADataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("attributes.x", ADataType::Utf8, true),
        ]));
        let b1 = RecordBatch::try_new(
            s1,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("c")])),
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![Some("0.123456789012345678"), Some("abc"), None])),
            ],
        )
        .unwrap();
        let s2 = Arc::new(Schema::new(vec![
            Field::new(EVENT_ID, ADataType::Utf8, true),
            Field::new("attributes.x", ADataType::Int64, true),
            Field::new("dimensions.region", ADataType::Utf8, true),
        ]));
        let b2 = RecordBatch::try_new(
            s2,
            vec![Arc::new(StringArray::from(vec!["d"])), Arc::new(Int64Array::from(vec![7])), Arc::new(StringArray::from(vec!["eu"]))],
        )
        .unwrap();
        let f = build(&[b1, b2]).unwrap();
        assert_eq!(f.df.height(), 4);
        assert_eq!(f.columns.attributes["x"], 18);
        let x = f.df.column("attributes.x").unwrap().decimal().unwrap().physical().clone();
        assert_eq!(x.get(0), Some(123456789012345678));
        assert_eq!(x.get(1), None);
        assert_eq!(x.get(3), Some(7 * 10i128.pow(18)));
        let bad: Vec<Option<bool>> = f.df.column(BAD_ATTR).unwrap().bool().unwrap().iter().collect();
        assert_eq!(bad, vec![Some(false), Some(true), Some(false), Some(false)]);
        let ts: Vec<Option<i64>> = f.df.column(TIMESTAMP).unwrap().i64().unwrap().iter().collect();
        assert_eq!(ts, vec![Some(1), Some(2), Some(3), None]);
        assert!(f.columns.dimensions.contains("region"));
    }
}
