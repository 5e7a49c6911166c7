//! S3 (and S3-compatible servers) through `object_store`'s `AmazonS3`: a usage source over
//! date-partitioned prefixes, read with the same decoders as local files, and a store (sink).
//!
//! **Partition pruning.** With `partition = "dt={YYYY}-{MM}-{DD}"` (tokens `{YYYY}`, `{MM}`,
//! `{DD}`, any literal text and `/`), the source lists only `prefix/<partition of day>/` for every
//! UTC day that intersects the run's window, so objects of other days are never listed nor read.
//! A pattern without `{DD}` (e.g. `{YYYY}/{MM}`) prunes by month. Without a window start (or a
//! pattern) the whole prefix is listed. Partitions must hold the events of their UTC day.
//!
//! Credentials only from the config (`${ENV}` in billrun.toml); nothing is read from the
//! environment here, and secrets are never logged.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use crate::error::{ConnectorError, ErrorKind};
use crate::file::{read_objects, validate_mapping, ColumnMapping, FileFormat, ObjectSource, SourceOutput};
use crate::source::ReadWindow;
use crate::sql::Secret;

pub const CONNECTOR: &str = "s3";

/// Where and how to reach a bucket (the keys shared by the S3 source and store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Connection {
    pub bucket: String,
    pub region: String,
    /// Custom endpoint (S3-compatible servers), e.g. `http://127.0.0.1:9000`; path-style requests.
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints (default false).
    pub allow_http: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Retries of transient request failures (object_store's backoff; default 3).
    pub retries: usize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_retries() -> usize {
    3
}

impl S3Connection {
    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        if self.bucket.is_empty() {
            out.push(("bucket".into(), "the bucket name is empty".into()));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            out.push((
                "access_key_id".into(),
                "set both `access_key_id` and `secret_access_key` (as ${ENV} references), or neither".into(),
            ));
        }
        if let Some(e) = &self.endpoint {
            if e.starts_with("http://") && !self.allow_http {
                out.push(("endpoint".into(), "an http:// endpoint needs `allow_http = true`".into()));
            }
        }
        if self.retries > 10 {
            out.push(("retries".into(), "at most 10 retries".into()));
        }
    }

    pub fn build(&self) -> Result<AmazonS3, String> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_retry(object_store::RetryConfig { max_retries: self.retries, ..Default::default() });
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
            b = b.with_access_key_id(&k.0).with_secret_access_key(&s.0);
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(&t.0);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// `[[sources]] type = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SourceConfig {
    pub name: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Custom endpoint (S3-compatible servers), e.g. `http://127.0.0.1:9000`; path-style requests.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints (default false).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Retries of transient request failures (object_store's backoff; default 3).
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Key prefix of the usage (a "folder"), e.g. `events/api`.
    #[serde(default)]
    pub prefix: String,
    /// Daily (or monthly) partition below the prefix, e.g. `dt={YYYY}-{MM}-{DD}` or `{YYYY}/{MM}/{DD}`.
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub format: Option<FileFormat>,
    #[serde(default)]
    pub mapping: Option<ColumnMapping>,
}

/// Check a partition pattern: only `{YYYY}`, `{MM}`, `{DD}` placeholders, `{YYYY}` required.
pub fn check_partition(p: &str) -> Result<(), String> {
    let mut rest = p;
    let mut has_year = false;
    while let Some(i) = rest.find('{') {
        let j = rest[i..].find('}').ok_or_else(|| format!("unclosed `{{` in `{p}`"))? + i;
        match &rest[i + 1..j] {
            "YYYY" => has_year = true,
            "MM" | "DD" => {}
            t => return Err(format!("unknown placeholder `{{{t}}}` in `{p}` (use {{YYYY}}, {{MM}}, {{DD}})")),
        }
        rest = &rest[j + 1..];
    }
    if !has_year {
        return Err(format!("`{p}` needs a {{YYYY}} placeholder"));
    }
    if p.starts_with('/') || p.contains("//") {
        return Err(format!("`{p}` must be a relative key part without empty segments"));
    }
    Ok(())
}

fn render_partition(p: &str, d: NaiveDate) -> String {
    p.replace("{YYYY}", &format!("{:04}", d.year()))
        .replace("{MM}", &format!("{:02}", d.month()))
        .replace("{DD}", &format!("{:02}", d.day()))
}

/// Most days listed one by one; a longer window lists the whole prefix.
const MAX_PARTITION_DAYS: i64 = 3 * 366;

/// The key prefixes to list for `window` (sorted, distinct); `None` = list the whole prefix.
pub fn partition_prefixes(prefix: &str, partition: &str, window: &ReadWindow) -> Option<Vec<String>> {
    let start = DateTime::from_timestamp_micros(window.start_us?)?.date_naive();
    let end = DateTime::from_timestamp_micros(window.end_us?.checked_sub(1)?)?.date_naive();
    if end < start || (end - start).num_days() > MAX_PARTITION_DAYS {
        return if end < start { Some(Vec::new()) } else { None };
    }
    let base = prefix.trim_matches('/');
    let mut out = BTreeSet::new();
    let mut d = start;
    while d <= end {
        let part = render_partition(partition, d);
        let part = part.trim_end_matches('/');
        out.insert(if base.is_empty() { format!("{part}/") } else { format!("{base}/{part}/") });
        d += Duration::days(1);
    }
    Some(out.into_iter().collect())
}

impl S3SourceConfig {
    pub fn conn(&self) -> S3Connection {
        S3Connection {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            retries: self.retries,
        }
    }

    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        self.conn().validate(out);
        if let Some(p) = &self.partition {
            if let Err(e) = check_partition(p) {
                out.push(("partition".into(), e));
            }
        }
        if matches!(self.format, Some(FileFormat::Csv) | Some(FileFormat::Parquet)) && self.mapping.is_none() {
            out.push(("mapping".into(), "CSV and Parquet sources need a [sources.mapping] table".into()));
        }
        if let Some(m) = &self.mapping {
            if let Err(e) = validate_mapping(m) {
                out.push(("mapping".into(), e));
            }
        }
    }
}

/// Read an S3 source: list the partitions of the window (or the prefix), then every NDJSON/CSV/
/// Parquet object in key order with the local-files decoders.
pub async fn read_s3(cfg: &S3SourceConfig, window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    let conn = cfg.conn();
    let loc = conn.url(cfg.prefix.trim_matches('/'));
    let err = |kind, m: String| ConnectorError::new(CONNECTOR, &cfg.name, &loc, kind, m);
    let store: Arc<dyn ObjectStore> = Arc::new(conn.build().map_err(|m| err(ErrorKind::Config, m))?);
    let prefixes: Vec<Option<String>> = match cfg.partition.as_deref().and_then(|p| partition_prefixes(&cfg.prefix, p, window)) {
        Some(v) => v.into_iter().map(Some).collect(),
        None => {
            let base = cfg.prefix.trim_matches('/');
            vec![(!base.is_empty()).then(|| format!("{base}/"))]
        }
    };
    tracing::info!(source = %cfg.name, bucket = %conn.bucket, prefixes = prefixes.len(), "s3: listing");
    let mut listed: Vec<ObjectMeta> = Vec::new();
    for p in &prefixes {
        let path = p.as_deref().map(Path::from);
        let mut got: Vec<ObjectMeta> = store.list(path.as_ref()).try_collect().await.map_err(|e| {
            ConnectorError::new(
                CONNECTOR,
                &cfg.name,
                conn.url(p.as_deref().unwrap_or("")),
                ErrorKind::Io,
                format!("cannot list objects: {e}"),
            )
        })?;
        listed.append(&mut got);
    }
    let src = ObjectSource {
        connector: CONNECTOR,
        name: &cfg.name,
        store,
        display_prefix: format!("s3://{}/", conn.bucket),
        format: cfg.format,
        mapping: cfg.mapping.as_ref(),
    };
    read_objects(&src, listed).await
}

// ------------------------------------------------------------------------------------- store

/// A store the core writes a run's outputs to: `put` every file, the manifest last, then
/// `commit`. Dropped without `commit`, nothing of the run is visible as complete.
pub trait Store {
    fn put(&mut self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError>;
    fn commit(self: Box<Self>) -> Result<(), ConnectorError>;
}

impl Store for crate::store::Staging {
    fn put(&mut self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        crate::store::Staging::put(self, key, bytes)
    }
    fn commit(self: Box<Self>) -> Result<(), ConnectorError> {
        crate::store::Staging::commit(*self)
    }
}

/// `[store] type = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StoreConfig {
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Custom endpoint (S3-compatible servers), e.g. `http://127.0.0.1:9000`; path-style requests.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints (default false).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Retries of transient request failures (object_store's backoff; default 3).
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Key prefix of the store, e.g. `billing/prod`.
    #[serde(default)]
    pub prefix: String,
}

impl S3StoreConfig {
    pub fn conn(&self) -> S3Connection {
        S3Connection {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            retries: self.retries,
        }
    }

    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        self.conn().validate(out);
    }
}

/// Name of the object (under the store prefix) naming the last committed run.
pub const LATEST: &str = "LATEST";
/// Name of the marker written last in a run's prefix.
pub const COMMITTED: &str = "_COMMITTED";

/// A run being written to S3 under `prefix/runs/<run_id>/`. Objects are written as they come
/// (the core writes the manifest last); `commit` then writes `_COMMITTED` with a create-only
/// conditional put — two runs with the same id cannot both commit — and points
/// `prefix/LATEST` at the run. Dropped without `commit`, the run's objects are deleted.
pub struct S3Staging {
    store: AmazonS3,
    conn: S3Connection,
    run_prefix: String,
    base: String,
    written: Vec<Path>,
    committed: bool,
    rt: tokio::runtime::Runtime,
}

impl S3Staging {
    /// Start a run. Must not be called from inside a Tokio runtime (it owns one to block on).
    pub fn begin(cfg: &S3StoreConfig, run_id: &str) -> Result<S3Staging, ConnectorError> {
        let base = cfg.prefix.trim_matches('/').to_string();
        let run_prefix = if base.is_empty() { format!("runs/{run_id}") } else { format!("{base}/runs/{run_id}") };
        let conn = cfg.conn();
        let err = |m: String| ConnectorError::new("s3 store", "store", conn.url(&run_prefix), ErrorKind::Config, m);
        crate::store::check_key(run_id).map_err(err)?;
        let store = conn.build().map_err(err)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| err(e.to_string()))?;
        Ok(S3Staging { store, conn: conn.clone(), run_prefix, base, written: Vec::new(), committed: false, rt })
    }

    /// The key prefix of this run (`prefix/runs/<run_id>`).
    pub fn run_prefix(&self) -> &str {
        &self.run_prefix
    }

    fn error(&self, key: &str, m: impl Into<String>) -> ConnectorError {
        ConnectorError::new("s3 store", "store", self.conn.url(key), ErrorKind::Io, m)
    }

    fn put_opts(&mut self, key: String, bytes: &[u8], mode: PutMode) -> Result<(), ConnectorError> {
        let path = Path::from(key.as_str());
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions { mode, ..Default::default() };
        self.rt.block_on(self.store.put_opts(&path, payload, opts)).map_err(|e| match e {
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                self.error(&key, "already exists: another run with the same id committed first")
            }
            e => self.error(&key, format!("cannot write: {e}")),
        })?;
        self.written.push(path);
        Ok(())
    }
}

impl Store for S3Staging {
    fn put(&mut self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        crate::store::check_key(key).map_err(|m| self.error(&self.run_prefix, m))?;
        let full = format!("{}/{key}", self.run_prefix);
        self.put_opts(full, bytes, PutMode::Overwrite)
    }

    fn commit(mut self: Box<Self>) -> Result<(), ConnectorError> {
        let marker = format!("{}/{COMMITTED}", self.run_prefix);
        self.put_opts(marker, b"", PutMode::Create)?;
        self.committed = true;
        let latest = if self.base.is_empty() { LATEST.to_string() } else { format!("{}/{LATEST}", self.base) };
        let body = format!("{}\n", self.run_prefix);
        self.put_opts(latest, body.as_bytes(), PutMode::Overwrite)?;
        tracing::info!(bucket = %self.conn.bucket, run = %self.run_prefix, objects = self.written.len(), "s3 store: run committed");
        Ok(())
    }
}

impl Drop for S3Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for p in std::mem::take(&mut self.written) {
            if let Err(e) = self.rt.block_on(self.store.delete(&p)) {
                tracing::warn!(key = %p, error = %e, "s3 store: could not remove an object of an uncommitted run");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        crate::parse_timestamp_micros(s).unwrap()
    }

    #[test]
    fn partitions_of_the_window() {
        let w = ReadWindow { start_us: Some(us("2026-09-30T00:00:00Z")), end_us: Some(us("2026-10-02T00:00:00Z")) };
        assert_eq!(partition_prefixes("events/", "dt={YYYY}-{MM}-{DD}", &w).unwrap(), ["events/dt=2026-09-30/", "events/dt=2026-10-01/"]);
        assert_eq!(partition_prefixes("", "{YYYY}/{MM}", &w).unwrap(), ["2026/09/", "2026/10/"]);
        assert_eq!(partition_prefixes("a", "{YYYY}/{MM}/{DD}", &ReadWindow { start_us: None, end_us: Some(1) }), None);
        assert!(check_partition("dt={YYYY}-{MM}-{DD}").is_ok());
        assert!(check_partition("dt={MM}").is_err());
        assert!(check_partition("{YYYY}/{HH}").is_err());
    }
}
