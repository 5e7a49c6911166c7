//! The configured sources of a run (`[[sources]]` in billrun.toml, tagged by `type`) and the one
//! entry point that reads any of them. New connectors add a variant here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConnectorError;
use crate::file::{read_files, BatchSink, ColumnMapping, FileFormat, FileSourceConfig, SourceOutput};
use crate::postgres::{read_postgres, PostgresConfig};
use crate::prometheus::{read_prometheus, PrometheusConfig};
use crate::s3::{read_s3, S3SourceConfig};
use crate::snowflake::{read_snowflake, SnowflakeConfig};
use crate::sql::{AggregateOutput, DescribedColumn, Dialect, Param};

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
    /// A SQL query against Snowflake (see `snowflake.rs`).
    #[serde(rename = "snowflake")]
    Snowflake(SnowflakeConfig),
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
            SourceConfig::Snowflake(c) => &c.name,
        }
    }

    /// The SQL dialect of a source configured with `pushdown = true` (its meters run in the
    /// database); `None` for every other source.
    pub fn pushdown(&self) -> Option<Dialect> {
        match self {
            SourceConfig::Postgres(c) if c.pushdown => Some(Dialect::Postgres),
            SourceConfig::Snowflake(c) if c.pushdown => Some(Dialect::Snowflake),
            _ => None,
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
            SourceConfig::Snowflake(c) => c.resolve_paths(base),
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
            SourceConfig::Snowflake(c) => c.validate(&mut out),
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
        SourceConfig::Snowflake(c) => read_snowflake(c, window).await,
    }
}

/// [`read_source`], streaming where the source reads file by file (local files, S3): batches go
/// to `sink` as they are decoded, so a run need not hold the whole input at once. Other sources
/// hand over their batches at the end. The returned output holds no batches.
pub async fn read_source_into(cfg: &SourceConfig, window: &ReadWindow, sink: BatchSink<'_>) -> Result<SourceOutput, ConnectorError> {
    match cfg {
        SourceConfig::Files { name, path, format, mapping } => {
            let c = FileSourceConfig { name: name.clone(), root: path.clone(), format: *format, mapping: mapping.clone() };
            crate::file::read_files_into(&c, sink).await
        }
        SourceConfig::S3(c) => crate::s3::read_s3_into(c, window, sink).await,
        other => {
            let mut out = read_source(other, window).await?;
            for b in std::mem::take(&mut out.batches) {
                sink(b);
            }
            Ok(out)
        }
    }
}

fn not_sql(cfg: &SourceConfig) -> ConnectorError {
    ConnectorError::new(
        "source",
        cfg.name(),
        "pushdown",
        crate::error::ErrorKind::Config,
        "meter pushdown needs a SQL source (postgres or snowflake)",
    )
}

/// The result columns of a SQL source's query, described by the database (no row is read).
pub async fn describe_source(cfg: &SourceConfig, window: &ReadWindow) -> Result<Vec<DescribedColumn>, ConnectorError> {
    match cfg {
        SourceConfig::Postgres(c) => crate::postgres::describe_postgres(c).await,
        SourceConfig::Snowflake(c) => crate::snowflake::describe_snowflake(c, window).await,
        other => Err(not_sql(other)),
    }
}

/// Run an aggregate (pushdown) query against a SQL source: `query` wraps the source's own query
/// (with its `${startTime}` / `${endTime}`) and refers to `params` as `${param:N}`; every result
/// column is text. The connector binds everything and knows nothing of what is aggregated.
pub async fn aggregate_source(
    cfg: &SourceConfig,
    query: &str,
    params: &[Param],
    window: &ReadWindow,
) -> Result<AggregateOutput, ConnectorError> {
    match cfg {
        SourceConfig::Postgres(c) => crate::postgres::aggregate_postgres(c, query, params, window).await,
        SourceConfig::Snowflake(c) => crate::snowflake::aggregate_snowflake(c, query, params, window).await,
        other => Err(not_sql(other)),
    }
}

/// The source's own SQL text (inline or from `query_file`), for a pushdown query to wrap.
pub fn source_query(cfg: &SourceConfig) -> Result<String, ConnectorError> {
    match cfg {
        SourceConfig::Postgres(c) => crate::sql::load_query(crate::postgres::CONNECTOR, &c.name, &c.query, &c.query_file),
        SourceConfig::Snowflake(c) => crate::sql::load_query(crate::snowflake::CONNECTOR, &c.name, &c.query, &c.query_file),
        other => Err(not_sql(other)),
    }
}

/// The column mapping of a SQL source (`None`: Togai's column aliases).
pub fn source_mapping(cfg: &SourceConfig) -> Option<&ColumnMapping> {
    match cfg {
        SourceConfig::Postgres(c) => c.mapping.as_ref(),
        SourceConfig::Snowflake(c) => c.mapping.as_ref(),
        SourceConfig::Files { mapping, .. } => mapping.as_ref(),
        SourceConfig::S3(c) => c.mapping.as_ref(),
        SourceConfig::Prometheus(_) => None,
    }
}
