//! Parquet through parquet's async Arrow reader over `object_store`,
//! projecting only the mapped columns.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, TimestampMicrosecondArray};
use arrow::compute::{cast_with_options, filter_record_batch, CastOptions};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::{BadRecord, ColumnMapping, FileCtx, FileOutput};
use crate::error::{ConnectorError, ErrorKind};
use crate::rows::MAX_BATCH_ROWS;
use crate::schema::{self, UTC};

/// Ranged reads of one object for parquet's async reader.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let options = GetOptions::new().with_range(Some(range));
            let result = self.store.get_opts(&self.path, options).await.map_err(external)?;
            result.bytes().await.map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(&mut *self, size).await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// The value type behind dictionary encoding.
fn base_type(dt: &DataType) -> &DataType {
    match dt {
        DataType::Dictionary(_, v) => base_type(v),
        other => other,
    }
}

fn is_int(dt: &DataType) -> bool {
    use DataType::*;
    matches!(dt, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64)
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_float(dt: &DataType) -> bool {
    matches!(dt, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Text,
    Timestamp,
    Attribute,
}

fn check_type(col: &str, role_name: &str, role: Role, dt: &DataType) -> Result<(), (ErrorKind, String)> {
    let base = base_type(dt);
    if is_float(base) {
        let what = if role == Role::Attribute { "a quantity" } else { "an identifier or label" };
        let store_as = if role == Role::Attribute { "DECIMAL or text" } else { "text" };
        return Err((
            ErrorKind::UnsupportedType,
            format!("column `{col}` is {base}: billrun does not read binary floating point as {what}; store it as {store_as}"),
        ));
    }
    let ok = match role {
        Role::Text => {
            is_string(base)
                || is_int(base)
                || matches!(
                    base,
                    DataType::Boolean
                        | DataType::Decimal32(..)
                        | DataType::Decimal64(..)
                        | DataType::Decimal128(..)
                        | DataType::Decimal256(..)
                )
        }
        Role::Timestamp => is_string(base) || matches!(base, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64),
        Role::Attribute => {
            is_string(base)
                || is_int(base)
                || matches!(base, DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..))
                || matches!(base, DataType::Decimal256(p, _) if *p <= 38)
        }
    };
    if ok {
        return Ok(());
    }
    let need = match role {
        Role::Text => "text (a string, integer, decimal or boolean column)",
        Role::Timestamp => "a TIMESTAMP, DATE or ISO-8601 text column",
        Role::Attribute => "an integer, DECIMAL (precision <= 38) or text column",
    };
    Err((ErrorKind::UnsupportedType, format!("column `{col}` (for {role_name}) has type {dt}; billrun needs {need}")))
}

struct Target {
    column: String,
    role_name: String,
    role: Role,
}

pub(crate) async fn read_parquet(
    ctx: &FileCtx,
    store: Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    mapping: &ColumnMapping,
) -> Result<FileOutput, ConnectorError> {
    let mut reader = StoreReader { store, path: meta.location.clone(), size: meta.size };
    let unreadable = |e: ParquetError| ctx.error(ErrorKind::Format, format!("not a readable Parquet file: {e}"));
    let file_meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await.map_err(unreadable)?;
    let file_schema = Arc::clone(file_meta.schema());
    // text decoded straight into string views: a view points into the page's bytes (or holds a
    // value of at most 12 bytes inline), so no string is copied into a buffer of its own, and
    // the frame hands the views to polars as they are
    let builder = {
        let views = Arc::new(Schema::new_with_metadata(
            file_schema
                .fields()
                .iter()
                .map(|f| match base_type(f.data_type()) {
                    DataType::Utf8 | DataType::LargeUtf8 => Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View)),
                    _ => Arc::clone(f),
                })
                .collect::<Vec<_>>(),
            file_schema.metadata().clone(),
        ));
        let metadata = ArrowReaderMetadata::try_new(Arc::clone(file_meta.metadata()), ArrowReaderOptions::new().with_schema(views))
            .map_err(unreadable)?;
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
    };

    // Every mapped column, with its role, checked before reading any data.
    let mut targets = vec![
        Target { column: mapping.event_id.clone(), role_name: "event_id".into(), role: Role::Text },
        Target { column: mapping.account_id.clone(), role_name: "account_id".into(), role: Role::Text },
        Target { column: mapping.timestamp.clone(), role_name: "timestamp".into(), role: Role::Timestamp },
    ];
    if let Some(c) = &mapping.schema_name {
        targets.push(Target { column: c.clone(), role_name: "schema_name".into(), role: Role::Text });
    }
    if let Some(c) = &mapping.ingested_at {
        targets.push(Target { column: c.clone(), role_name: "ingested_at".into(), role: Role::Timestamp });
    }
    for (name, col) in &mapping.attributes {
        targets.push(Target { column: col.clone(), role_name: format!("attribute `{name}`"), role: Role::Attribute });
    }
    for (name, col) in &mapping.dimensions {
        targets.push(Target { column: col.clone(), role_name: format!("dimension `{name}`"), role: Role::Text });
    }
    let mut roots: Vec<usize> = Vec::new();
    for t in &targets {
        let hits: Vec<usize> = file_schema.fields().iter().enumerate().filter(|(_, f)| f.name() == &t.column).map(|(i, _)| i).collect();
        let idx = match hits.as_slice() {
            [i] => *i,
            [] => {
                let have: Vec<String> = file_schema.fields().iter().map(|f| format!("`{}`", f.name())).collect();
                return Err(ctx.error(
                    ErrorKind::Config,
                    format!("mapped column `{}` (for {}) is not in the file; the file has: {}", t.column, t.role_name, have.join(", ")),
                ));
            }
            _ => return Err(ctx.error(ErrorKind::Format, format!("column `{}` appears more than once in the file", t.column))),
        };
        check_type(&t.column, &t.role_name, t.role, file_schema.field(idx).data_type()).map_err(|(kind, msg)| ctx.error(kind, msg))?;
        roots.push(idx);
    }
    roots.sort_unstable();
    roots.dedup();
    let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut stream = builder
        .with_projection(projection)
        .with_batch_size(MAX_BATCH_ROWS)
        .build()
        .map_err(|e| ctx.error(ErrorKind::Format, format!("cannot read Parquet data: {e}")))?;

    let metadata = HashMap::from([(schema::SOURCE_FILE_METADATA_KEY.to_string(), ctx.path.clone())]);
    let mut out = FileOutput::default();
    let mut row_offset = 0usize;
    while let Some(batch) = stream.try_next().await.map_err(|e| ctx.error(ErrorKind::Format, format!("cannot read Parquet data: {e}")))? {
        let n = batch.num_rows();
        let converted = convert(ctx, mapping, &batch, row_offset, &metadata, &mut out.bad_records)?;
        if converted.num_rows() > 0 {
            out.batches.push(converted);
        }
        row_offset += n;
    }
    Ok(out)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch.column_by_name(name).expect("projected column present")
}

fn strict() -> CastOptions<'static> {
    CastOptions { safe: false, ..Default::default() }
}

fn to_utf8(col: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    if col.data_type() == &DataType::Utf8 {
        Ok(Arc::clone(col))
    } else {
        cast_with_options(col, &DataType::Utf8, &strict())
    }
}

/// A text column as it is when it is `Utf8` or `Utf8View` (both canonical), else as `Utf8`.
fn to_text(col: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    if schema::is_text_type(col.data_type()) {
        Ok(Arc::clone(col))
    } else {
        to_utf8(col)
    }
}

fn to_attribute(col: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let base = base_type(col.data_type()).clone();
    match base {
        t if is_int(&t) => cast_with_options(col, &DataType::Int64, &strict()),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            let target = DataType::Decimal128(p.min(38), s);
            if col.data_type() == &target {
                Ok(Arc::clone(col))
            } else {
                cast_with_options(col, &target, &strict())
            }
        }
        _ => to_utf8(col),
    }
}

/// Timestamps of any unit / time zone, dates and ISO-8601 text to UTC
/// microseconds. Unparseable text lands in `bad` (row index, raw, error).
fn to_micros(
    ctx: &FileCtx,
    name: &str,
    col: &ArrayRef,
    row_offset: usize,
    bad: &mut Vec<(usize, String, String)>,
) -> Result<TimestampMicrosecondArray, ConnectorError> {
    let base = base_type(col.data_type()).clone();
    let col = if col.data_type() == &base {
        Arc::clone(col)
    } else {
        cast_with_options(col, &base, &strict()).map_err(|e| ctx.error(ErrorKind::Format, format!("column `{name}`: {e}")))?
    };
    let overflow = |row: usize| {
        ctx.error(
            ErrorKind::UnsupportedType,
            format!("column `{name}`: value at row {} is out of the microsecond range", row_offset + row + 1),
        )
    };
    let scale = |vals: Vec<Option<i64>>, factor: i64| -> Result<Vec<Option<i64>>, ConnectorError> {
        vals.into_iter().enumerate().map(|(i, v)| v.map(|v| v.checked_mul(factor).ok_or_else(|| overflow(i))).transpose()).collect()
    };
    let values: Vec<Option<i64>> = match &base {
        DataType::Timestamp(TimeUnit::Second, _) => scale(col.as_primitive::<TimestampSecondType>().iter().collect(), 1_000_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => scale(col.as_primitive::<TimestampMillisecondType>().iter().collect(), 1_000),
        // already microseconds (nearly every file): the column itself, no copy
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            return Ok(col.as_primitive::<TimestampMicrosecondType>().clone().with_timezone(UTC))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => col
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(ns) if ns % 1_000 != 0 => Err(ctx.error(
                    ErrorKind::UnsupportedType,
                    format!(
                        "column `{name}`: value {ns} ns at row {} is not a whole microsecond; \
                         billrun keeps microseconds and does not truncate",
                        row_offset + i + 1
                    ),
                )),
                v => Ok(v.map(|ns| ns / 1_000)),
            })
            .collect(),
        DataType::Date32 => scale(col.as_primitive::<Date32Type>().iter().map(|d| d.map(i64::from)).collect(), 86_400_000_000),
        DataType::Date64 => scale(col.as_primitive::<Date64Type>().iter().collect(), 1_000),
        t if is_string(t) => {
            let text = to_utf8(&col).map_err(|e| ctx.error(ErrorKind::Format, format!("column `{name}`: {e}")))?;
            Ok(text
                .as_string::<i32>()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let v = v?;
                    match schema::parse_timestamp_micros(v) {
                        Ok(us) => Some(us),
                        Err(e) => {
                            bad.push((i, format!("{name}={v}"), format!("column `{name}`: {e}")));
                            None
                        }
                    }
                })
                .collect())
        }
        other => Err(ctx.error(ErrorKind::UnsupportedType, format!("column `{name}` has type {other}; billrun needs a timestamp"))),
    }?;
    Ok(TimestampMicrosecondArray::from(values).with_timezone(UTC))
}

fn convert(
    ctx: &FileCtx,
    mapping: &ColumnMapping,
    batch: &RecordBatch,
    row_offset: usize,
    metadata: &HashMap<String, String>,
    bad_records: &mut Vec<BadRecord>,
) -> Result<RecordBatch, ConnectorError> {
    let n = batch.num_rows();
    let text = |name: &str| -> Result<ArrayRef, ConnectorError> {
        to_text(column(batch, name)).map_err(|e| ctx.error(ErrorKind::Format, format!("column `{name}`: {e}")))
    };
    let mut bad: Vec<(usize, String, String)> = Vec::new();

    let timestamp = to_micros(ctx, &mapping.timestamp, column(batch, &mapping.timestamp), row_offset, &mut bad)?;
    let ingested_at = match &mapping.ingested_at {
        Some(c) => to_micros(ctx, c, column(batch, c), row_offset, &mut bad)?,
        None => TimestampMicrosecondArray::new_null(n).with_timezone(UTC),
    };
    let schema_name: ArrayRef = match (&mapping.schema_name, &mapping.schema_name_value) {
        (Some(c), _) => text(c)?,
        (None, Some(v)) => Arc::new(StringArray::from(vec![Some(v.as_str()); n])),
        (None, None) => Arc::new(StringArray::new_null(n)),
    };
    let mut columns: Vec<ArrayRef> =
        vec![text(&mapping.event_id)?, schema_name, text(&mapping.account_id)?, Arc::new(timestamp), Arc::new(ingested_at)];
    // the core fields with the text layout each column came in
    let mut fields: Vec<Field> =
        schema::core_fields().into_iter().zip(&columns).map(|(f, c)| f.with_data_type(c.data_type().clone())).collect();
    for (attr, col) in &mapping.attributes {
        let arr = to_attribute(column(batch, col))
            .map_err(|e| ctx.error(ErrorKind::UnsupportedType, format!("column `{col}` (attribute `{attr}`): {e}")))?;
        fields.push(Field::new(schema::attribute_column(attr), arr.data_type().clone(), true));
        columns.push(arr);
    }
    for (dim, col) in &mapping.dimensions {
        let arr = text(col)?;
        fields.push(Field::new(schema::dimension_column(dim), arr.data_type().clone(), true));
        columns.push(arr);
    }
    let schema = Arc::new(Schema::new(fields).with_metadata(metadata.clone()));
    let out = RecordBatch::try_new(schema, columns).map_err(|e| ctx.arrow_error(e))?;
    if bad.is_empty() {
        return Ok(out);
    }
    bad.sort_by_key(|(i, _, _)| *i);
    let mut keep = vec![true; n];
    for (i, raw, error) in bad {
        let location = format!("{}:row {}", ctx.path, row_offset + i + 1);
        tracing::debug!(%location, %error, "bad Parquet record");
        if keep[i] {
            keep[i] = false;
            bad_records.push(BadRecord { location, raw, error });
        } else if let Some(last) = bad_records.last_mut() {
            // Same row, second bad timestamp: one record, both reasons.
            last.raw = format!("{} {raw}", last.raw);
            last.error = format!("{}; {error}", last.error);
        }
    }
    filter_record_batch(&out, &BooleanArray::from(keep)).map_err(|e| ctx.arrow_error(e))
}
