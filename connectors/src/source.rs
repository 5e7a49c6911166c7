//! The configured sources of a run (`[[sources]]` in billrun.toml, tagged by `type`) and the one
//! entry point that reads any of them. New connectors add a variant here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConnectorError;
use crate::file::{read_files, ColumnMapping, FileFormat, FileSourceConfig, SourceOutput};

/// One source as written in the run configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
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
                        out.push(("mapping".into(), "exactly one of `schema_name` (a column) or `schema_name_value` (a constant) is required".into()));
                    }
                }
            }
        }
        out
    }
}

/// Read one source.
pub async fn read_source(cfg: &SourceConfig, _window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    match cfg {
        SourceConfig::Files { name, path, format, mapping } => {
            read_files(&FileSourceConfig { name: name.clone(), root: path.clone(), format: *format, mapping: mapping.clone() }).await
        }
    }
}
