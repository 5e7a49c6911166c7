//! The configured sources of a run (`[[sources]]` in billrun.toml, tagged by `type`) and the one
//! entry point that reads any of them. New connectors add a variant here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConnectorError;
use crate::file::{read_files, ColumnMapping, FileFormat, FileSourceConfig, SourceOutput};
use crate::postgres::{read_postgres, PostgresConfig};
use crate::prometheus::{read_prometheus, PrometheusConfig};
use crate::s3::{read_s3, S3SourceConfig};

/// One source as written in the run configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)]
pub enum SourceConfig {
    /// Local files (NDJSON of Togai events, CSV or Parquet with a column mapping).
    #[serde(rename = "files")]
    Files {
        name: String,
        /// Root directory, relative to the configuration file.
        path: PathBuf,
        #[serde(default)]
        format: Option<FileFormat>,
        #[serde(default)]
        mapping: Option<ColumnMapping>,
    },
    /// A SQL query against PostgreSQL (see `postgres.rs`).
    #[serde(rename = "postgres")]
    Postgres(PostgresConfig),
    /// NDJSON/CSV/Parquet objects in an S3 bucket, pruned by date partition (see `s3.rs`).
    #[serde(rename = "s3")]
    S3(S3SourceConfig),
    /// A PromQL range query (see `prometheus.rs`).
    #[serde(rename = "prometheus")]
    Prometheus(PrometheusConfig),
}

/// The event-time window a run needs, in microseconds since the epoch (UTC), half-open.
/// Sources that can filter at the origin (SQL, PromQL) read only this window; the local file
/// source reads everything (the core rejects what falls outside with a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadWindow {
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Files { name, .. } => name,
            SourceConfig::Postgres(c) => &c.name,
            SourceConfig::S3(c) => &c.name,
            SourceConfig::Prometheus(c) => &c.name,
        }
    }

    /// Resolve relative paths against the folder of the configuration file.
    pub fn resolve_paths(&mut self, base: &Path) {
        match self {
            SourceConfig::Files { path, .. } => {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
            SourceConfig::Postgres(c) => c.resolve_paths(base),
            SourceConfig::S3(_) | SourceConfig::Prometheus(_) => {}
        }
    }

    /// Pure checks (no I/O): `(key below the source, message)` for every problem.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self {
            SourceConfig::Files { format, mapping, .. } => {
                if matches!(format, Some(FileFormat::Csv) | Some(FileFormat::Parquet)) && mapping.is_none() {
                    out.push(("mapping".into(), "CSV and Parquet sources need a [sources.mapping] table (event_id, account_id, timestamp, schema_name or schema_name_value)".into()));
                }
                if let Some(m) = mapping {
                    if m.schema_name.is_some() == m.schema_name_value.is_some() {
                        out.push((
                            "mapping".into(),
                            "exactly one of `schema_name` (a column) or `schema_name_value` (a constant) is required".into(),
                        ));
                    }
                }
            }
            SourceConfig::Postgres(c) => c.validate(&mut out),
            SourceConfig::S3(c) => c.validate(&mut out),
            SourceConfig::Prometheus(c) => c.validate(&mut out),
        }
        out
    }
}

/// Read one source.
pub async fn read_source(cfg: &SourceConfig, window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    match cfg {
        SourceConfig::Files { name, path, format, mapping } => {
            read_files(&FileSourceConfig { name: name.clone(), root: path.clone(), format: *format, mapping: mapping.clone() }).await
        }
        SourceConfig::Postgres(c) => read_postgres(c, window).await,
        SourceConfig::S3(c) => read_s3(c, window).await,
        SourceConfig::Prometheus(c) => read_prometheus(c, window).await,
    }
}
