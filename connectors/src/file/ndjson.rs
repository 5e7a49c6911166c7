//! NDJSON: one Togai `Event` per non-blank line, or the wrapped
//! `{"event": Event}` (Togai's IngestEventRequest).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{BadRecord, FileCtx, FileOutput};
use crate::error::ConnectorError;
use crate::rows::{Row, RowBatcher};
use crate::schema::parse_timestamp_micros;

/// Togai `Event`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TogaiEvent<'a> {
    schema_name: Option<String>,
    id: Option<String>,
    timestamp: String,
    account_id: Option<String>,
    #[serde(borrow)]
    attributes: Option<Vec<TogaiAttribute<'a>>>,
    dimensions: Option<Dimensions>,
    ingested_at: Option<String>,
}

/// Togai `Attribute`: `value` is normally a string holding a number; a JSON
/// number is kept as its literal text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TogaiAttribute<'a> {
    name: String,
    #[serde(borrow)]
    value: &'a RawValue,
    #[allow(dead_code)] // units are Togai metadata; billrun's meters define their own
    unit: Option<String>,
}

/// `dimensions`: string -> string, duplicate names rejected.
struct Dimensions(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Dimensions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dimensions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string dimension values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dimensions, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value().map_err(|e| de::Error::custom(format_args!("dimension `{key}`: {e}")))?;
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate dimension `{key}`")));
                    }
                    out.push((key, value));
                }
                Ok(Dimensions(out))
            }
        }
        d.deserialize_map(V)
    }
}

pub(crate) fn read_ndjson(ctx: &FileCtx, data: &[u8]) -> Result<FileOutput, ConnectorError> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut batcher = RowBatcher::new(&ctx.path, [], []);
    let mut bad_records = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let location = format!("{}:{}", ctx.path, i + 1);
        let parsed = match std::str::from_utf8(line) {
            Ok(text) => parse_line(text).map_err(|e| (text.to_string(), e)),
            Err(e) => Err((String::from_utf8_lossy(line).into_owned(), format!("line is not valid UTF-8: {e}"))),
        };
        match parsed {
            Ok(row) => batcher.push(row).map_err(|e| ctx.arrow_error(e))?,
            Err((raw, error)) => {
                tracing::debug!(%location, %error, "bad NDJSON record");
                bad_records.push(BadRecord { location, raw, error });
            }
        }
    }
    Ok(FileOutput { batches: batcher.finish().map_err(|e| ctx.arrow_error(e))?, bad_records })
}

fn describe(e: &serde_json::Error, what: &str) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("invalid JSON: {e}"),
        Category::Data | Category::Io => format!("invalid {what}: {e}"),
    }
}

/// Parse one line into a canonical row, or explain why not.
pub(crate) fn parse_line(text: &str) -> Result<Row, String> {
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| {
        let msg = describe(&e, "event");
        if e.classify() == serde_json::error::Category::Data {
            format!("{msg} (expected one JSON object per line)")
        } else {
            msg
        }
    })?;
    let event_text = match top.get("event") {
        Some(inner) if top.len() == 1 => inner.get(),
        _ => text,
    };
    let ev: TogaiEvent = serde_json::from_str(event_text).map_err(|e| describe(&e, "event"))?;

    let timestamp = parse_timestamp_micros(&ev.timestamp).map_err(|e| format!("timestamp: {e}"))?;
    let ingested_at = match &ev.ingested_at {
        Some(t) => Some(parse_timestamp_micros(t).map_err(|e| format!("ingestedAt: {e}"))?),
        None => None,
    };

    let mut attributes: Vec<(String, String)> = Vec::new();
    for a in ev.attributes.unwrap_or_default() {
        if a.name.is_empty() {
            return Err("attribute with an empty name".into());
        }
        if attributes.iter().any(|(k, _)| *k == a.name) {
            return Err(format!("duplicate attribute `{}`", a.name));
        }
        let raw = a.value.get();
        let value = match raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw).map_err(|e| format!("attribute `{}`: {e}", a.name))?,
            Some(b'-' | b'0'..=b'9') => raw.to_string(),
            _ => return Err(format!("attribute `{}`: value must be a string or a number, found `{raw}`", a.name)),
        };
        attributes.push((a.name, value));
    }
    let dimensions = ev.dimensions.map(|d| d.0).unwrap_or_default();
    if dimensions.iter().any(|(k, _)| k.is_empty()) {
        return Err("dimension with an empty name".into());
    }

    Ok(Row {
        event_id: ev.id,
        schema_name: ev.schema_name,
        account_id: ev.account_id,
        timestamp: Some(timestamp),
        ingested_at,
        attributes,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_literal_text() {
        let row = parse_line(
            r#"{"schemaName":"s","id":"e1","timestamp":"2022-06-15T07:30:35.123","accountId":"a1",
               "attributes":[{"name":"x","value":0.123456789012345678},
                             {"name":"y","value":"0.123456789012345678","unit":"GB"},
                             {"name":"z","value":1e400},
                             {"name":"w","value":-50}],
               "dimensions":{"region":"eu"}}"#,
        )
        .unwrap();
        assert_eq!(
            row.attributes,
            vec![
                ("x".to_string(), "0.123456789012345678".to_string()),
                ("y".to_string(), "0.123456789012345678".to_string()),
                ("z".to_string(), "1e400".to_string()),
                ("w".to_string(), "-50".to_string()),
            ]
        );
        assert_eq!(row.dimensions, vec![("region".to_string(), "eu".to_string())]);
        assert_eq!(row.timestamp, Some(1_655_278_235_123_000));
        assert_eq!(row.ingested_at, None);
    }

    #[test]
    fn wrapped_event_and_nulls() {
        let row = parse_line(r#"{"event":{"timestamp":"2026-10-01","id":null}}"#).unwrap();
        assert_eq!(row.event_id, None);
        assert_eq!(row.account_id, None);
        assert_eq!(row.schema_name, None);
        assert_eq!(row.timestamp, Some(1_790_812_800_000_000));
        assert!(row.attributes.is_empty());
    }

    #[test]
    fn errors() {
        let cases = [
            (r#"{"timestamp":"2026-10-01","extra":1}"#, "unknown field `extra`"),
            (r#"{"id":"e"}"#, "missing field `timestamp`"),
            (r#"{"timestamp":"2026-10-01","id":7}"#, "invalid type: integer `7`"),
            (r#"{"timestamp":"2026-10-01","dimensions":{"r":1}}"#, "dimension `r`"),
            (r#"{"timestamp":"2026-10-01","dimensions":{"r":"a","r":"b"}}"#, "duplicate dimension `r`"),
            (r#"{"timestamp":"2026-10-01","attributes":[{"name":"a","value":"1"},{"name":"a","value":"2"}]}"#, "duplicate attribute `a`"),
            (r#"{"timestamp":"2026-10-01","attributes":[{"name":"a","value":true}]}"#, "string or a number"),
            (r#"{"timestamp":"2026-10-01","attributes":[{"name":"a"}]}"#, "missing field `value`"),
            (r#"{"timestamp":"2026-10-01","ingestedAt":"nope"}"#, "ingestedAt: invalid timestamp"),
            (r#"{"timestamp":"2026-10-01T00:00:00.0000001Z"}"#, "sub-microsecond"),
            (r#"[1,2]"#, "expected one JSON object per line"),
            (r#"{"timestamp": "2026-10-01""#, "invalid JSON"),
        ];
        for (line, want) in cases {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(want), "{line}: got `{err}`, want `{want}`");
        }
    }
}
