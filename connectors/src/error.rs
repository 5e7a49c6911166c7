//! The one error type of the connectors crate.
//!
//! Every error names the connector kind (e.g. `files`), the configured source
//! name and the location (a file path relative to the source root, a
//! `path:line`, or the root directory itself), so an operator can find the
//! problem without a debugger.

/// What went wrong, coarsely, so callers can branch without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The source configuration (or the column mapping) is wrong or incomplete.
    Config,
    /// The root, a file or an object could not be listed or read.
    Io,
    /// A file is not readable in its format (no CSV header, corrupt Parquet, ...).
    Format,
    /// A column has a type billrun refuses to read (e.g. binary floating point
    /// as a quantity, sub-microsecond timestamps).
    UnsupportedType,
}

/// A connector failure that stops the source. Recoverable per-row problems
/// are not errors but [`crate::BadRecord`]s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{connector} source `{source_name}`: {location}: {message}")]
pub struct ConnectorError {
    /// Connector kind, e.g. `"files"`.
    pub connector: &'static str,
    /// The configured name of the source.
    pub source_name: String,
    /// Where: a file path relative to the source root, `path:line`, or the root.
    pub location: String,
    /// Coarse classification.
    pub kind: ErrorKind,
    /// Human-readable explanation (includes the underlying cause, if any).
    pub message: String,
}

impl ConnectorError {
    /// Build an error; `connector` is the connector kind (e.g. `"files"`).
    pub fn new(
        connector: &'static str,
        source_name: impl Into<String>,
        location: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self { connector, source_name: source_name.into(), location: location.into(), kind, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_connector_source_and_location() {
        let e = ConnectorError::new("files", "usage", "day1.csv", ErrorKind::Config, "mapped column `ts` not found");
        assert_eq!(e.to_string(), "files source `usage`: day1.csv: mapped column `ts` not found");
        assert_eq!(e.kind, ErrorKind::Config);
    }
}
