//! billrun's canonical event schema: column names, types and helpers.
//!
//! Every batch a source yields has the five core columns, in this order:
//!
//! | column        | type                                  |
//! |---------------|---------------------------------------|
//! | `event_id`    | text, nullable                        |
//! | `schema_name` | text, nullable                        |
//! | `account_id`  | text, nullable                        |
//! | `timestamp`   | Timestamp(Microsecond, "UTC"), nullable |
//! | `ingested_at` | Timestamp(Microsecond, "UTC"), nullable |
//!
//! followed by zero or more `attributes.<name>` columns (Utf8 holding the exact
//! decimal text, Int64, or Decimal128(p, s)), sorted by name, then zero or more
//! `dimensions.<name>` columns (text), sorted by name. Different batches may
//! carry different attribute/dimension sets; the consumer unifies them.
//!
//! Text is `Utf8` or `Utf8View` (string views, the layout polars holds text in:
//! the Parquet reader decodes into views, so no string is copied per row);
//! [`is_text_type`], and [`Text`] reads either.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, NaiveTime};

/// Event id (Togai `id`).
pub const EVENT_ID: &str = "event_id";
/// Event schema name (Togai `schemaName`).
pub const SCHEMA_NAME: &str = "schema_name";
/// Account id (Togai `accountId`).
pub const ACCOUNT_ID: &str = "account_id";
/// Event time, UTC microseconds.
pub const TIMESTAMP: &str = "timestamp";
/// Ingestion time, UTC microseconds (null when the source has none).
pub const INGESTED_AT: &str = "ingested_at";
/// Prefix of attribute columns: `attributes.<name>`.
pub const ATTR_PREFIX: &str = "attributes.";
/// Prefix of dimension columns: `dimensions.<name>`.
pub const DIM_PREFIX: &str = "dimensions.";
/// Time zone of both timestamp columns.
pub const UTC: &str = "UTC";
/// Schema-metadata key, set on every batch of a file source: the file the
/// batch's rows come from (path relative to the source root). Batches never
/// span files.
pub const SOURCE_FILE_METADATA_KEY: &str = "billrun.source_file";

/// The five core column names, in canonical order.
pub const CORE_COLUMNS: [&str; 5] = [EVENT_ID, SCHEMA_NAME, ACCOUNT_ID, TIMESTAMP, INGESTED_AT];

/// `Timestamp(Microsecond, Some("UTC"))`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)))
}

/// The five core fields, in canonical order, all nullable (text as `Utf8`; a source may give
/// any of them as `Utf8View` instead).
pub fn core_fields() -> Vec<Field> {
    vec![
        Field::new(EVENT_ID, DataType::Utf8, true),
        Field::new(SCHEMA_NAME, DataType::Utf8, true),
        Field::new(ACCOUNT_ID, DataType::Utf8, true),
        Field::new(TIMESTAMP, timestamp_type(), true),
        Field::new(INGESTED_AT, timestamp_type(), true),
    ]
}

/// `attributes.<name>`.
pub fn attribute_column(name: &str) -> String {
    format!("{ATTR_PREFIX}{name}")
}

/// `dimensions.<name>`.
pub fn dimension_column(name: &str) -> String {
    format!("{DIM_PREFIX}{name}")
}

/// The attribute name of an `attributes.<name>` column, else `None`.
pub fn attribute_name(column: &str) -> Option<&str> {
    column.strip_prefix(ATTR_PREFIX)
}

/// The dimension name of a `dimensions.<name>` column, else `None`.
pub fn dimension_name(column: &str) -> Option<&str> {
    column.strip_prefix(DIM_PREFIX)
}

/// Whether `dt` is a text column type of the canonical schema: `Utf8` or `Utf8View`.
pub fn is_text_type(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::Utf8View)
}

/// A canonical text column, read row by row whichever of the two layouts it has.
pub enum Text<'a> {
    Utf8(&'a arrow::array::StringArray),
    View(&'a arrow::array::StringViewArray),
    /// An absent column: every row null.
    Null,
}

impl<'a> Text<'a> {
    /// The column `name` of `batch` (an absent column reads as null; a column of another type
    /// is an error naming it).
    pub fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, arrow::error::ArrowError> {
        use arrow::array::AsArray;
        match batch.column_by_name(name) {
            None => Ok(Text::Null),
            Some(a) => match a.data_type() {
                DataType::Utf8 => Ok(Text::Utf8(a.as_string::<i32>())),
                DataType::Utf8View => Ok(Text::View(a.as_string_view())),
                DataType::Null => Ok(Text::Null),
                t => Err(arrow::error::ArrowError::SchemaError(format!("column `{name}` is {t}, not text"))),
            },
        }
    }

    /// Row `i`'s text, `None` when null.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'a str> {
        use arrow::array::Array;
        match self {
            Text::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Text::View(a) => a.is_valid(i).then(|| a.value(i)),
            Text::Null => None,
        }
    }
}

/// Whether `dt` is an allowed attribute column type: Utf8, Int64 or Decimal128.
pub fn is_attribute_type(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::Int64 | DataType::Decimal128(_, _))
}

/// Check that a batch is in the canonical schema (core columns in order with
/// their types, then `attributes.*` with allowed types sorted by name, then
/// `dimensions.*` Utf8 sorted by name). Returns a description of the first
/// violation.
pub fn check_canonical(batch: &RecordBatch) -> Result<(), String> {
    let schema = batch.schema();
    let fields = schema.fields();
    let core = core_fields();
    if fields.len() < core.len() {
        return Err(format!("batch has {} columns, the canonical schema needs at least {}", fields.len(), core.len()));
    }
    for (got, want) in fields.iter().zip(core.iter()) {
        let same_type = got.data_type() == want.data_type() || (is_text_type(want.data_type()) && is_text_type(got.data_type()));
        if got.name() != want.name() || !same_type {
            return Err(format!("expected column `{}` {}, found `{}` {}", want.name(), want.data_type(), got.name(), got.data_type()));
        }
    }
    let mut last_attr: Option<&str> = None;
    let mut last_dim: Option<&str> = None;
    for f in fields.iter().skip(core.len()) {
        if let Some(attr) = attribute_name(f.name()) {
            if last_dim.is_some() {
                return Err(format!("attribute column `{}` after dimension columns", f.name()));
            }
            if last_attr.is_some_and(|prev| prev >= attr) {
                return Err(format!("attribute column `{}` out of order or duplicated", f.name()));
            }
            if !is_attribute_type(f.data_type()) {
                return Err(format!("attribute column `{}` has type {}", f.name(), f.data_type()));
            }
            last_attr = Some(attr);
        } else if let Some(dim) = dimension_name(f.name()) {
            if last_dim.is_some_and(|prev| prev >= dim) {
                return Err(format!("dimension column `{}` out of order or duplicated", f.name()));
            }
            if !is_text_type(f.data_type()) {
                return Err(format!("dimension column `{}` has type {}", f.name(), f.data_type()));
            }
            last_dim = Some(dim);
        } else {
            return Err(format!("unexpected column `{}`", f.name()));
        }
    }
    Ok(())
}

/// Parse an event timestamp into microseconds since the Unix epoch, UTC.
///
/// Accepted (ISO-8601 / RFC 3339 profile):
/// - `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.123456+02:00`,
///   `...+0200`, `...+02` — an offset converts to UTC;
/// - `2022-06-15T07:30:35.123` — no offset: taken as UTC (Togai's example);
/// - `2024-05-01T12:00` — seconds may be omitted;
/// - `2026-10-01` — a plain date: midnight UTC.
///
/// `T`, `t` or a space separates date and time; `.` or `,` starts the fraction.
/// Fractions finer than a microsecond are rejected unless the extra digits are
/// all zero (nothing is silently truncated). Leap seconds (`:60`) are rejected.
pub fn parse_timestamp_micros(text: &str) -> Result<i64, String> {
    parse_ts(text).map_err(|why| format!("invalid timestamp `{text}`: {why}"))
}

const TS_HINT: &str = "expected ISO-8601 / RFC 3339 like 2024-05-01T12:00:00Z, \
2024-05-01T12:00:00.123 (UTC) or 2024-05-01";

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(TS_HINT.to_string());
    }
    let (y, m, d) = (digits(&s[0..4]), digits(&s[5..7]), digits(&s[8..10]));
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(TS_HINT.to_string());
    };
    NaiveDate::from_ymd_opt(y as i32, m, d).ok_or_else(|| format!("no such date `{s}`"))
}

fn parse_offset_secs(s: &str) -> Result<i64, String> {
    // s starts with '+' or '-'
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let body = &s[1..];
    let (h, m) = match body.len() {
        2 => (digits(body), Some(0)),
        4 => (digits(&body[0..2]), digits(&body[2..4])),
        5 if body.as_bytes()[2] == b':' => (digits(&body[0..2]), digits(&body[3..5])),
        _ => (None, None),
    };
    match (h, m) {
        (Some(h), Some(m)) if h <= 23 && m <= 59 => Ok(sign * (i64::from(h) * 3600 + i64::from(m) * 60)),
        _ => Err(format!("bad UTC offset `{s}`")),
    }
}

fn parse_ts(text: &str) -> Result<i64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty".to_string());
    }
    if !s.is_ascii() {
        return Err(TS_HINT.to_string());
    }
    let Some(sep) = s.find(['T', 't', ' ']) else {
        let date = parse_date(s)?;
        return Ok(date.and_time(NaiveTime::MIN).and_utc().timestamp_micros());
    };
    let date = parse_date(&s[..sep])?;
    let rest = &s[sep + 1..];

    // Offset: trailing Z, or the last '+'/'-' (the time part has neither).
    let (time_part, offset_secs) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        (&rest[..pos], parse_offset_secs(&rest[pos..])?)
    } else {
        (rest, 0)
    };

    let (hms, frac) = match time_part.find(['.', ',']) {
        Some(p) => (&time_part[..p], Some(&time_part[p + 1..])),
        None => (time_part, None),
    };
    let hb = hms.as_bytes();
    let (h, m, sec) = match hb.len() {
        5 if hb[2] == b':' && frac.is_none() => (digits(&hms[0..2]), digits(&hms[3..5]), Some(0)),
        8 if hb[2] == b':' && hb[5] == b':' => (digits(&hms[0..2]), digits(&hms[3..5]), digits(&hms[6..8])),
        _ => (None, None, None),
    };
    let (Some(h), Some(m), Some(sec)) = (h, m, sec) else {
        return Err(TS_HINT.to_string());
    };
    if sec == 60 {
        return Err("leap seconds are not supported".to_string());
    }
    let time = NaiveTime::from_hms_opt(h, m, sec).ok_or_else(|| format!("no such time `{hms}`"))?;

    let mut micros_frac: i64 = 0;
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad fractional seconds `{f}`"));
        }
        let (keep, extra) = f.split_at(f.len().min(6));
        if extra.bytes().any(|b| b != b'0') {
            return Err(format!(
                "sub-microsecond precision ({} fractional digits); billrun keeps microseconds and does not truncate",
                f.len()
            ));
        }
        let padded = format!("{keep:0<6}");
        micros_frac = padded.parse::<i64>().map_err(|e| e.to_string())?;
    }

    let base = date.and_time(time).and_utc().timestamp_micros();
    base.checked_add(micros_frac).and_then(|v| v.checked_sub(offset_secs * 1_000_000)).ok_or_else(|| "out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> i64 {
        parse_timestamp_micros(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn timestamps() {
        // 2022-06-15T07:30:35Z = 1655278235 s
        assert_eq!(p("2022-06-15T07:30:35Z"), 1_655_278_235_000_000);
        assert_eq!(p("2022-06-15T07:30:35.123"), 1_655_278_235_123_000);
        assert_eq!(p("2022-06-15T07:30:35.123456Z"), 1_655_278_235_123_456);
        assert_eq!(p("2022-06-15T09:30:35.5+02:00"), 1_655_278_235_500_000);
        assert_eq!(p("2022-06-15T02:30:35-0500"), 1_655_278_235_000_000);
        assert_eq!(p("2022-06-15T08:30:35+01"), 1_655_278_235_000_000);
        assert_eq!(p("2022-06-15 07:30:35z"), 1_655_278_235_000_000);
        assert_eq!(p("2022-06-15T07:30Z"), 1_655_278_200_000_000);
        assert_eq!(p("2022-06-15T07:30:35.123000000Z"), 1_655_278_235_123_000);
        assert_eq!(p("2026-10-01"), 1_790_812_800_000_000);
        assert_eq!(p("1969-12-31T23:59:59.999999Z"), -1);
    }

    #[test]
    fn bad_timestamps() {
        for bad in [
            "",
            "yesterday",
            "2022-06-15T07:30:35.1234567Z",
            "2022-13-01",
            "2022-02-30T00:00:00Z",
            "2022-6-5",
            "2022-06-15T25:00:00Z",
            "2022-06-15T23:59:60Z",
            "2022-06-15T07:30:35+25:00",
            "2022-06-15T07:30:35.Z",
            "1655278235",
        ] {
            assert!(parse_timestamp_micros(bad).is_err(), "{bad} should fail");
        }
        let e = parse_timestamp_micros("2022-06-15T07:30:35.123456789Z").unwrap_err();
        assert!(e.contains("sub-microsecond"), "{e}");
    }

    #[test]
    fn names() {
        assert_eq!(attribute_column("calls"), "attributes.calls");
        assert_eq!(dimension_column("region"), "dimensions.region");
        assert_eq!(attribute_name("attributes.calls"), Some("calls"));
        assert_eq!(dimension_name("attributes.calls"), None);
        assert_eq!(timestamp_type(), DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
    }
}
