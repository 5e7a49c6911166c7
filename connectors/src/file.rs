//! The local-files source: NDJSON (Togai events), CSV and Parquet files under
//! one root directory, read through `object_store`'s `LocalFileSystem`. The
//! decoders work over any `dyn ObjectStore` ([`read_objects`]); the S3 source
//! uses the same path.
//!
//! Files are listed recursively and read in path order; rows keep file order.
//! Per-row problems become [`BadRecord`]s (never dropped, never a panic);
//! problems that make a whole file unreadable are [`ConnectorError`]s.

mod csv;
mod ndjson;
mod parquet;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, ErrorKind};

/// Connector kind named in every error of this source.
pub const CONNECTOR: &str = "files";

/// File format. Serde: `"ndjson" | "csv" | "parquet"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FileFormat {
    /// One Togai `Event` (or `{"event": Event}`) per line: `.ndjson`, `.jsonl`, `.json`.
    Ndjson,
    /// Comma-separated with a header row: `.csv`.
    Csv,
    /// Apache Parquet: `.parquet`.
    Parquet,
}

impl FileFormat {
    /// File extensions (lower case, without the dot) of this format.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileFormat::Ndjson => &["ndjson", "jsonl", "json"],
            FileFormat::Csv => &["csv"],
            FileFormat::Parquet => &["parquet"],
        }
    }

    /// The format of a file extension (case-insensitive, without the dot).
    pub fn from_extension(ext: &str) -> Option<Self> {
        let ext = ext.to_ascii_lowercase();
        [FileFormat::Ndjson, FileFormat::Csv, FileFormat::Parquet].into_iter().find(|f| f.extensions().contains(&ext.as_str()))
    }
}

/// Where the canonical columns come from in a CSV or Parquet file.
///
/// Exactly one of `schema_name` (a column) and `schema_name_value` (a
/// constant for every row) must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// Column holding the event id.
    pub event_id: String,
    /// Column holding the account id.
    pub account_id: String,
    /// Column holding the event timestamp.
    pub timestamp: String,
    /// Column holding the schema name, or ...
    #[serde(default)]
    pub schema_name: Option<String>,
    /// ... a constant schema name for every row.
    #[serde(default)]
    pub schema_name_value: Option<String>,
    /// Column holding the ingestion time, if any.
    #[serde(default)]
    pub ingested_at: Option<String>,
    /// Attribute name -> column name.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Dimension name -> column name.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

/// Configuration of one local-files source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Source name, used in errors and logs.
    pub name: String,
    /// Root directory; every file below it is considered.
    pub root: PathBuf,
    /// Only read files of this format; `None` = pick the format by extension.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Column mapping, required when CSV or Parquet files are read.
    #[serde(default)]
    pub mapping: Option<ColumnMapping>,
}

/// A row that could not be turned into an event. It is reported, not dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// `path:line` (NDJSON, CSV; 1-based line) or `path:row N` (Parquet, 1-based
    /// row), the path relative to the source root.
    pub location: String,
    /// The raw line / record text (for Parquet: the offending value).
    pub raw: String,
    /// Why the row was rejected.
    pub error: String,
}

/// A file that was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFile {
    /// Path relative to the source root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Everything a source produced.
#[derive(Debug, Clone, Default)]
pub struct SourceOutput {
    /// Canonical batches in (file, row) order.
    pub batches: Vec<RecordBatch>,
    /// Rejected rows in (file, row) order.
    pub bad_records: Vec<BadRecord>,
    /// Files read, in reading order.
    pub files: Vec<SourceFile>,
}

impl SourceOutput {
    /// Total rows over all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What one file produced.
#[derive(Debug, Default)]
pub(crate) struct FileOutput {
    pub batches: Vec<RecordBatch>,
    pub bad_records: Vec<BadRecord>,
}

/// Per-file context for errors and bad records.
#[derive(Debug, Clone)]
pub(crate) struct FileCtx {
    pub connector: &'static str,
    pub source_name: String,
    pub path: String,
}

impl FileCtx {
    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) -> ConnectorError {
        ConnectorError::new(self.connector, &self.source_name, &self.path, kind, message)
    }

    pub fn arrow_error(&self, e: arrow::error::ArrowError) -> ConnectorError {
        self.error(ErrorKind::Format, format!("building Arrow batch: {e}"))
    }
}

/// Read every matching file under `cfg.root`, in path order.
///
/// Returns zero batches for an empty root; a missing root, an unreadable
/// file, a bad mapping or an unsupported column type is a [`ConnectorError`];
/// a bad row is a [`BadRecord`] and the run goes on.
pub async fn read_files(cfg: &FileSourceConfig) -> Result<SourceOutput, ConnectorError> {
    let mut batches = Vec::new();
    let mut out = read_files_into(cfg, &mut |b| batches.push(b)).await?;
    out.batches = batches;
    Ok(out)
}

/// Where a streaming read hands each batch as soon as its file is decoded, in (file, row)
/// order; the [`SourceOutput`] of a streaming read then holds no batches.
pub type BatchSink<'a> = &'a mut (dyn FnMut(RecordBatch) + Send);

/// [`read_files`], streaming: each file's batches go to `sink` as soon as the file is read.
pub async fn read_files_into(cfg: &FileSourceConfig, sink: BatchSink<'_>) -> Result<SourceOutput, ConnectorError> {
    let root_loc = cfg.root.display().to_string();
    let root_err = |kind, msg: String| ConnectorError::new(CONNECTOR, &cfg.name, &root_loc, kind, msg);

    if let Some(mapping) = &cfg.mapping {
        validate_mapping(mapping).map_err(|m| root_err(ErrorKind::Config, format!("mapping: {m}")))?;
    }
    match std::fs::metadata(&cfg.root) {
        Err(e) => return Err(root_err(ErrorKind::Io, format!("cannot read the source root directory: {e}"))),
        Ok(md) if !md.is_dir() => return Err(root_err(ErrorKind::Config, "the source root is not a directory".into())),
        Ok(_) => {}
    }
    let store = Arc::new(
        LocalFileSystem::new_with_prefix(&cfg.root).map_err(|e| root_err(ErrorKind::Io, format!("cannot open the source root: {e}")))?,
    );
    let listed: Vec<ObjectMeta> =
        store.list(None).try_collect().await.map_err(|e| root_err(ErrorKind::Io, format!("cannot list files: {e}")))?;
    tracing::debug!(source = %cfg.name, root = %root_loc, objects = listed.len(), "listed files");
    let src = ObjectSource {
        connector: CONNECTOR,
        name: &cfg.name,
        store: store as Arc<dyn ObjectStore>,
        display_prefix: String::new(),
        format: cfg.format,
        mapping: cfg.mapping.as_ref(),
    };
    read_objects(&src, listed, sink).await
}

/// Decode NDJSON text of Togai events (as a file would hold them) into canonical batches;
/// `location` names it in errors and bad records. For events that come from elsewhere than a
/// source, e.g. the corrected payloads of event corrections.
pub fn decode_ndjson(source_name: &str, location: &str, data: &[u8]) -> Result<SourceOutput, ConnectorError> {
    let ctx = FileCtx { connector: CONNECTOR, source_name: source_name.to_string(), path: location.to_string() };
    let out = ndjson::read_ndjson(&ctx, data)?;
    Ok(SourceOutput { batches: out.batches, bad_records: out.bad_records, files: Vec::new() })
}

/// A set of objects in one store, read as one source (local files, S3).
pub(crate) struct ObjectSource<'a> {
    pub connector: &'static str,
    pub name: &'a str,
    pub store: Arc<dyn ObjectStore>,
    /// Prepended to object keys in locations (`""` for local files, `s3://bucket/` for S3).
    pub display_prefix: String,
    pub format: Option<FileFormat>,
    pub mapping: Option<&'a ColumnMapping>,
}

/// Read `listed` objects (any order; filtered and sorted here) with the shared decoders:
/// hidden names and other extensions are skipped, the rest read in key order.
pub(crate) async fn read_objects(
    src: &ObjectSource<'_>,
    listed: Vec<ObjectMeta>,
    sink: BatchSink<'_>,
) -> Result<SourceOutput, ConnectorError> {
    let mut files: Vec<(String, FileFormat, ObjectMeta)> = listed
        .into_iter()
        .filter_map(|meta| {
            let path = meta.location.as_ref().to_string();
            if path.split('/').any(|seg| seg.starts_with('.')) {
                return None;
            }
            let format = FileFormat::from_extension(meta.location.extension()?)?;
            if src.format.is_some_and(|f| f != format) {
                return None;
            }
            Some((path, format, meta))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);

    let mut out = SourceOutput::default();
    let mut total_rows = 0usize;
    // The next file decodes (on a runtime worker) while this one's batches go to the sink:
    // `buffered` keeps key order, and holds at most two files' batches.
    let jobs = files.into_iter().map(|(path, format, meta)| {
        let shown = format!("{}{path}", src.display_prefix);
        let ctx = FileCtx { connector: src.connector, source_name: src.name.to_string(), path: shown };
        let job = read_one(ctx.clone(), Arc::clone(&src.store), format, meta.clone(), src.mapping.cloned());
        async move {
            let file_out = match tokio::runtime::Handle::try_current() {
                Ok(handle) => match handle.spawn(job).await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => Err(ctx.error(ErrorKind::Io, format!("reader task failed: {e}"))),
                },
                Err(_) => job.await,
            }?;
            Ok::<_, ConnectorError>((ctx.path, format, meta, file_out))
        }
    });
    let mut jobs = futures::stream::iter(jobs).buffered(2);
    while let Some((shown, format, meta, file_out)) = jobs.try_next().await? {
        let rows: usize = file_out.batches.iter().map(RecordBatch::num_rows).sum();
        total_rows += rows;
        tracing::debug!(
            source = %src.name,
            file = %shown,
            format = ?format,
            bytes = meta.size,
            rows,
            bad_records = file_out.bad_records.len(),
            "read file"
        );
        for b in file_out.batches {
            sink(b);
        }
        out.bad_records.extend(file_out.bad_records);
        out.files.push(SourceFile { path: shown, bytes: meta.size });
    }
    tracing::info!(
        source = %src.name,
        connector = src.connector,
        files = out.files.len(),
        rows = total_rows,
        bad_records = out.bad_records.len(),
        "source read"
    );
    Ok(out)
}

/// Decode one file whole (its batches and bad records).
async fn read_one(
    ctx: FileCtx,
    store: Arc<dyn ObjectStore>,
    format: FileFormat,
    meta: ObjectMeta,
    mapping: Option<ColumnMapping>,
) -> Result<FileOutput, ConnectorError> {
    let require_mapping = |what: &str| {
        mapping.clone().ok_or_else(|| {
            ctx.error(ErrorKind::Config, format!("{what} files need a column mapping (event_id, account_id, timestamp, ...)"))
        })
    };
    match format {
        FileFormat::Ndjson => {
            let data = get_bytes(&ctx, store.as_ref(), &meta).await?;
            let ctx2 = ctx.clone();
            run_blocking(&ctx, move || ndjson::read_ndjson(&ctx2, &data)).await?
        }
        FileFormat::Csv => {
            let mapping = require_mapping("CSV")?;
            let data = get_bytes(&ctx, store.as_ref(), &meta).await?;
            let ctx2 = ctx.clone();
            run_blocking(&ctx, move || csv::read_csv(&ctx2, &data, &mapping)).await?
        }
        FileFormat::Parquet => {
            let mapping = require_mapping("Parquet")?;
            parquet::read_parquet(&ctx, store, &meta, &mapping).await
        }
    }
}

pub(crate) fn validate_mapping(m: &ColumnMapping) -> Result<(), String> {
    for (field, col) in [("event_id", &m.event_id), ("account_id", &m.account_id), ("timestamp", &m.timestamp)] {
        if col.is_empty() {
            return Err(format!("`{field}` must name a column"));
        }
    }
    match (&m.schema_name, &m.schema_name_value) {
        (Some(_), Some(_)) => return Err("set only one of `schema_name` (a column) and `schema_name_value` (a constant)".into()),
        (None, None) => return Err("set `schema_name` (a column) or `schema_name_value` (a constant)".into()),
        (Some(c), None) if c.is_empty() => return Err("`schema_name` must name a column".into()),
        _ => {}
    }
    if m.ingested_at.as_deref() == Some("") {
        return Err("`ingested_at` must name a column".into());
    }
    for (kind, map) in [("attribute", &m.attributes), ("dimension", &m.dimensions)] {
        for (name, col) in map {
            if name.is_empty() {
                return Err(format!("{kind} with an empty name"));
            }
            if col.is_empty() {
                return Err(format!("{kind} `{name}` must name a column"));
            }
        }
    }
    Ok(())
}

async fn get_bytes(ctx: &FileCtx, store: &dyn ObjectStore, meta: &ObjectMeta) -> Result<bytes::Bytes, ConnectorError> {
    let io = |e: object_store::Error| ctx.error(ErrorKind::Io, format!("cannot read file: {e}"));
    store.get_opts(&meta.location, GetOptions::new()).await.map_err(io)?.bytes().await.map_err(io)
}

/// Run CPU-bound parsing off the async workers when inside a Tokio runtime.
async fn run_blocking<T, F>(ctx: &FileCtx, f: F) -> Result<T, ConnectorError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(f).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ctx.error(ErrorKind::Io, format!("reader task failed: {e}"))),
        },
        Err(_) => Ok(f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(FileFormat::from_extension("JSONL"), Some(FileFormat::Ndjson));
        assert_eq!(FileFormat::from_extension("json"), Some(FileFormat::Ndjson));
        assert_eq!(FileFormat::from_extension("csv"), Some(FileFormat::Csv));
        assert_eq!(FileFormat::from_extension("parquet"), Some(FileFormat::Parquet));
        assert_eq!(FileFormat::from_extension("md"), None);
    }

    #[test]
    fn serde_names() {
        let f: FileFormat = serde_json::from_str("\"parquet\"").unwrap();
        assert_eq!(f, FileFormat::Parquet);
        assert!(serde_json::from_str::<FileFormat>("\"Parquet\"").is_err());
        let m: ColumnMapping = serde_json::from_value(serde_json::json!({
            "event_id": "id", "account_id": "acct", "timestamp": "ts",
            "schema_name_value": "api_calls",
            "attributes": {"calls": "n"}
        }))
        .unwrap();
        assert_eq!(m.attributes.get("calls").map(String::as_str), Some("n"));
        assert_eq!(m.schema_name_value.as_deref(), Some("api_calls"));
        let unknown = serde_json::from_value::<ColumnMapping>(serde_json::json!({
            "event_id": "id", "account_id": "acct", "timestamp": "ts", "bogus": 1
        }));
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn mapping_validation() {
        let mut m = ColumnMapping {
            event_id: "id".into(),
            account_id: "acct".into(),
            timestamp: "ts".into(),
            schema_name: None,
            schema_name_value: None,
            ingested_at: None,
            attributes: BTreeMap::new(),
            dimensions: BTreeMap::new(),
        };
        assert!(validate_mapping(&m).unwrap_err().contains("schema_name"));
        m.schema_name = Some("schema".into());
        assert_eq!(validate_mapping(&m), Ok(()));
        m.schema_name_value = Some("x".into());
        assert!(validate_mapping(&m).unwrap_err().contains("only one"));
    }

    #[test]
    fn read_files_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = FileSourceConfig { name: "s".into(), root: PathBuf::from("/nonexistent"), format: None, mapping: None };
        let fut = read_files(&cfg);
        assert_send(&fut);
    }
}
