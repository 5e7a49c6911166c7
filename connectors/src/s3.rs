//! S3 (and S3-compatible servers) through `object_store`'s `AmazonS3`: a usage source over
//! date-partitioned prefixes, read with the same decoders as local files, and a store
//! ([`S3Store`]).
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
use crate::file::{read_objects, validate_mapping, BatchSink, ColumnMapping, FileFormat, ObjectSource, SourceOutput};
use crate::source::ReadWindow;
use crate::sql::Secret;
use crate::store::{Created, Store, StoreLock, LOCK_NAME};

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
    let mut batches = Vec::new();
    let mut out = read_s3_into(cfg, window, &mut |b| batches.push(b)).await?;
    out.batches = batches;
    Ok(out)
}

/// [`read_s3`], streaming: each object's batches go to `sink` as soon as it is read.
pub async fn read_s3_into(cfg: &S3SourceConfig, window: &ReadWindow, sink: BatchSink<'_>) -> Result<SourceOutput, ConnectorError> {
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
    read_objects(&src, listed, sink).await
}

// ------------------------------------------------------------------------------------- store

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

// --------------------------------------------------------------------- incremental S3 store

const STORE_CONNECTOR: &str = "s3 store";

/// A [`Store`] in an S3 bucket (or an S3-compatible server), every key under `cfg.prefix`.
///
/// `put` is a plain PUT (S3 replaces objects whole), `put_if_absent` a conditional create
/// (`If-None-Match: *`, which the server must support: AWS S3, MinIO, R2 and moto do).
///
/// The lock is the object `<prefix>/.billrun.lock`, created with `put_if_absent` and holding
/// `{"pid", "host", "startedAt"}` of its holder; the guard deletes it when dropped. S3 knows
/// nothing of processes: **a run that is killed (or loses the network) leaves the lock object
/// behind**, and the next run refuses to start with an error naming the object and its
/// content; an operator deletes it once sure no run is active.
///
/// It owns a current-thread Tokio runtime and blocks on it: it must not be opened, used or
/// dropped (nor its lock guard dropped) from inside a Tokio runtime.
pub struct S3Store {
    inner: Arc<S3StoreInner>,
}

/// What an [`S3Store`] and its lock guard share.
struct S3StoreInner {
    store: AmazonS3,
    conn: S3Connection,
    /// The prefix without leading/trailing `/` ("" = the bucket root).
    base: String,
    rt: tokio::runtime::Runtime,
}

/// The lock of an [`S3Store`]: deletes the lock object when dropped, if it is still ours.
struct S3Lock {
    inner: Arc<S3StoreInner>,
    full: String,
    body: Vec<u8>,
}

impl StoreLock for S3Lock {}

impl Drop for S3Lock {
    fn drop(&mut self) {
        let url = self.inner.conn.url(&self.full);
        match self.inner.get_full(&self.full) {
            Ok(Some(b)) if b == self.body => {
                if let Err(e) = self.inner.delete_full(&self.full) {
                    tracing::warn!(lock = %url, error = %e, "s3 store: could not release the lock; delete the lock object once you are sure no run is active");
                }
            }
            Ok(_) => tracing::warn!(lock = %url, "s3 store: the lock object was removed or replaced while this run held it; left as it is"),
            Err(e) => {
                tracing::warn!(lock = %url, error = %e, "s3 store: could not release the lock; delete the lock object once you are sure no run is active")
            }
        }
    }
}

impl S3StoreInner {
    /// The object key of a store key (or of a key prefix; "" = the store prefix itself).
    fn full(&self, rel: &str) -> String {
        match (self.base.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.base.clone(),
            (false, false) => format!("{}/{rel}", self.base),
        }
    }

    fn error(&self, full: &str, kind: ErrorKind, m: impl Into<String>) -> ConnectorError {
        ConnectorError::new(STORE_CONNECTOR, "store", self.conn.url(full), kind, m)
    }

    /// The checked object key of a store key.
    fn key(&self, key: &str) -> Result<(String, Path), ConnectorError> {
        crate::store::check_key(key).map_err(|m| self.error(&self.base, ErrorKind::Config, m))?;
        let full = self.full(key);
        let path = Path::parse(&full).map_err(|e| self.error(&full, ErrorKind::Config, format!("not a valid object key: {e}")))?;
        Ok((full, path))
    }

    fn get_full(&self, full: &str) -> Result<Option<Vec<u8>>, ConnectorError> {
        let path = Path::parse(full).map_err(|e| self.error(full, ErrorKind::Config, format!("not a valid object key: {e}")))?;
        let got = self.rt.block_on(async { self.store.get(&path).await?.bytes().await });
        match got {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(full, ErrorKind::Io, format!("cannot read: {e}"))),
        }
    }

    fn put_full(&self, full: &str, path: &Path, bytes: &[u8], mode: PutMode) -> Result<Created, ConnectorError> {
        let opts = PutOptions { mode, ..Default::default() };
        match self.rt.block_on(self.store.put_opts(path, PutPayload::from(bytes.to_vec()), opts)) {
            Ok(_) => Ok(Created::Created),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. },
            ) => Ok(Created::AlreadyExists),
            Err(e) => Err(self.error(full, ErrorKind::Io, format!("cannot write: {e}"))),
        }
    }

    fn delete_full(&self, full: &str) -> Result<(), ConnectorError> {
        let path = Path::parse(full).map_err(|e| self.error(full, ErrorKind::Config, format!("not a valid object key: {e}")))?;
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(full, ErrorKind::Io, format!("cannot delete: {e}"))),
        }
    }
}

impl S3Store {
    /// Connect to the store of `cfg` (no request is made yet). Must not be called from inside a
    /// Tokio runtime (it owns one to block on).
    pub fn open(cfg: &S3StoreConfig) -> Result<S3Store, ConnectorError> {
        let conn = cfg.conn();
        let base = cfg.prefix.trim_matches('/').to_string();
        let err = |m: String| ConnectorError::new(STORE_CONNECTOR, "store", conn.url(&base), ErrorKind::Config, m);
        if !base.is_empty() {
            crate::store::check_key(&base).map_err(|m| err(format!("the store prefix: {m}")))?;
            Path::parse(&base).map_err(|e| err(format!("the store prefix is not a valid object key: {e}")))?;
        }
        let store = conn.build().map_err(err)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| err(e.to_string()))?;
        Ok(S3Store { inner: Arc::new(S3StoreInner { store, conn, base, rt }) })
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.inner.conn.url(&self.inner.base).trim_end_matches('/').to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ConnectorError> {
        let (full, _) = self.inner.key(key)?;
        self.inner.get_full(&full)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, ConnectorError> {
        let i = &self.inner;
        let dir = crate::store::prefix_dir(prefix).map_err(|m| i.error(&i.base, ErrorKind::Config, m))?;
        if crate::store::is_hidden(dir) {
            return Ok(Vec::new());
        }
        let full_dir = i.full(dir);
        let path = if full_dir.is_empty() {
            None
        } else {
            Some(Path::parse(&full_dir).map_err(|e| i.error(&full_dir, ErrorKind::Config, format!("not a valid key prefix: {e}")))?)
        };
        let listed: Vec<ObjectMeta> = i.rt.block_on(i.store.list(path.as_ref()).try_collect()).map_err(|e| {
            let loc = if full_dir.is_empty() { String::new() } else { format!("{full_dir}/") };
            i.error(&loc, ErrorKind::Io, format!("cannot list objects: {e}"))
        })?;
        let strip = if i.base.is_empty() { String::new() } else { format!("{}/", i.base) };
        let mut out: Vec<String> = listed
            .iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(strip.as_str()))
            .filter(|k| k.starts_with(prefix) && !crate::store::is_hidden(k) && crate::store::check_key(k).is_ok())
            .map(str::to_string)
            .collect();
        out.sort();
        Ok(out)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        let (full, path) = self.inner.key(key)?;
        self.inner.put_full(&full, &path, bytes, PutMode::Overwrite).map(|_| ())
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<Created, ConnectorError> {
        let (full, path) = self.inner.key(key)?;
        self.inner.put_full(&full, &path, bytes, PutMode::Create)
    }

    fn delete(&self, key: &str) -> Result<(), ConnectorError> {
        let (full, _) = self.inner.key(key)?;
        self.inner.delete_full(&full)
    }

    fn lock(&self) -> Result<Box<dyn StoreLock>, ConnectorError> {
        let i = &self.inner;
        let full = i.full(LOCK_NAME);
        let path = Path::parse(&full).map_err(|e| i.error(&full, ErrorKind::Config, format!("not a valid object key: {e}")))?;
        let mut body = crate::store::holder_json().into_bytes();
        body.push(b'\n');
        // the holder may release the lock between our create and our read: then try again
        for _ in 0..3 {
            if i.put_full(&full, &path, &body, PutMode::Create)? == Created::Created {
                tracing::debug!(lock = %i.conn.url(&full), "s3 store: locked");
                return Ok(Box::new(S3Lock { inner: Arc::clone(&self.inner), full, body }));
            }
            if let Some(holder) = i.get_full(&full)? {
                return Err(i.error(
                    &full,
                    ErrorKind::Io,
                    format!(
                        "another run is writing this store: the lock object {} exists ({}). S3 does not release it when a \
                         run dies: if that run was killed, delete it once you are sure no run is active",
                        i.conn.url(&full),
                        crate::store::describe_holder(&holder)
                    ),
                ));
            }
        }
        Err(i.error(&full, ErrorKind::Io, "another run is writing this store: its lock object keeps appearing and disappearing"))
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
