//! CSV with a header row; every field is text (no type inference), empty
//! fields are null.

use super::{BadRecord, ColumnMapping, FileCtx, FileOutput};
use crate::error::{ConnectorError, ErrorKind};
use crate::rows::{Row, RowBatcher};
use crate::schema::parse_timestamp_micros;

enum SchemaSource {
    Column(usize),
    Constant(String),
    Missing,
}

struct Plan {
    event_id: usize,
    account_id: usize,
    timestamp: usize,
    schema_name: SchemaSource,
    ingested_at: Option<usize>,
    attributes: Vec<(String, usize)>,
    dimensions: Vec<(String, usize)>,
}

fn resolve(ctx: &FileCtx, header: &[String], mapping: &ColumnMapping) -> Result<Plan, ConnectorError> {
    let find = |col: &str, role: &str| -> Result<usize, ConnectorError> {
        let mut hits = header.iter().enumerate().filter(|(_, h)| *h == col).map(|(i, _)| i);
        match (hits.next(), hits.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => {
                Err(ctx.error(ErrorKind::Format, format!("column `{col}` (mapped to {role}) appears more than once in the header")))
            }
            (None, _) => Err(ctx.error(
                ErrorKind::Config,
                format!(
                    "mapped column `{col}` (for {role}) is not in the header; the header has: {}",
                    header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    };
    let schema_name = match (&mapping.schema_name, &mapping.schema_name_value) {
        (Some(col), _) => SchemaSource::Column(find(col, "schema_name")?),
        (None, Some(v)) => SchemaSource::Constant(v.clone()),
        (None, None) => SchemaSource::Missing,
    };
    Ok(Plan {
        event_id: find(&mapping.event_id, "event_id")?,
        account_id: find(&mapping.account_id, "account_id")?,
        timestamp: find(&mapping.timestamp, "timestamp")?,
        schema_name,
        ingested_at: mapping.ingested_at.as_deref().map(|c| find(c, "ingested_at")).transpose()?,
        attributes: mapping
            .attributes
            .iter()
            .map(|(name, col)| Ok((name.clone(), find(col, &format!("attribute `{name}`"))?)))
            .collect::<Result<_, ConnectorError>>()?,
        dimensions: mapping
            .dimensions
            .iter()
            .map(|(name, col)| Ok((name.clone(), find(col, &format!("dimension `{name}`"))?)))
            .collect::<Result<_, ConnectorError>>()?,
    })
}

pub(crate) fn read_csv(ctx: &FileCtx, data: &[u8], mapping: &ColumnMapping) -> Result<FileOutput, ConnectorError> {
    if data.is_empty() {
        tracing::debug!(file = %ctx.path, "empty CSV file: no header, no rows");
        return Ok(FileOutput::default());
    }
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(data);
    let header_record = rdr.byte_headers().map_err(|e| ctx.error(ErrorKind::Format, format!("cannot read the CSV header: {e}")))?.clone();
    let header: Vec<String> = header_record
        .iter()
        .map(|h| String::from_utf8(h.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| ctx.error(ErrorKind::Format, format!("CSV header is not valid UTF-8: {e}")))?;
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(ctx.error(ErrorKind::Format, "CSV file has no header row"));
    }
    let plan = resolve(ctx, &header, mapping)?;

    let mut batcher = RowBatcher::new(&ctx.path, mapping.attributes.keys().cloned(), mapping.dimensions.keys().cloned());
    let mut bad_records = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let more = rdr.read_byte_record(&mut record).map_err(|e| ctx.error(ErrorKind::Format, format!("cannot read CSV: {e}")))?;
        if !more {
            break;
        }
        let (start, mut line) = match record.position() {
            Some(p) => (p.byte() as usize, p.line()),
            None => (0, 0),
        };
        let end = (rdr.position().byte() as usize).min(data.len());
        let mut raw = &data[start.min(end)..end];
        // Skip blank lines the reader passed over before the record.
        while let Some((&b, rest)) = raw.split_first() {
            match b {
                b'\n' => line += 1,
                b'\r' => {}
                _ => break,
            }
            raw = rest;
        }
        while let Some(rest) = raw.strip_suffix(b"\n").or_else(|| raw.strip_suffix(b"\r")) {
            raw = rest;
        }
        match to_row(&plan, &header, &record) {
            Ok(row) => batcher.push(row).map_err(|e| ctx.arrow_error(e))?,
            Err(error) => {
                let location = format!("{}:{line}", ctx.path);
                tracing::debug!(%location, %error, "bad CSV record");
                bad_records.push(BadRecord { location, raw: String::from_utf8_lossy(raw).into_owned(), error });
            }
        }
    }
    Ok(FileOutput { batches: batcher.finish().map_err(|e| ctx.arrow_error(e))?, bad_records })
}

fn to_row(plan: &Plan, header: &[String], record: &csv::ByteRecord) -> Result<Row, String> {
    if record.len() != header.len() {
        return Err(format!("row has {} fields but the header has {}", record.len(), header.len()));
    }
    let field = |i: usize| -> Result<Option<String>, String> {
        let bytes = record.get(i).unwrap_or_default();
        if bytes.is_empty() {
            return Ok(None);
        }
        std::str::from_utf8(bytes).map(|s| Some(s.to_string())).map_err(|e| format!("column `{}` is not valid UTF-8: {e}", header[i]))
    };
    let ts = |i: usize| -> Result<Option<i64>, String> {
        field(i)?.map(|t| parse_timestamp_micros(&t).map_err(|e| format!("column `{}`: {e}", header[i]))).transpose()
    };
    let pairs = |cols: &[(String, usize)]| -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(cols.len());
        for (name, i) in cols {
            if let Some(v) = field(*i)? {
                out.push((name.clone(), v));
            }
        }
        Ok(out)
    };
    Ok(Row {
        event_id: field(plan.event_id)?,
        schema_name: match &plan.schema_name {
            SchemaSource::Column(i) => field(*i)?,
            SchemaSource::Constant(v) => Some(v.clone()),
            SchemaSource::Missing => None,
        },
        account_id: field(plan.account_id)?,
        timestamp: ts(plan.timestamp)?,
        ingested_at: plan.ingested_at.map(ts).transpose()?.flatten(),
        attributes: pairs(&plan.attributes)?,
        dimensions: pairs(&plan.dimensions)?,
    })
}
