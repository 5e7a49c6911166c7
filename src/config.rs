//! The run configuration, `billrun.toml`: organisation, run defaults, catalog, sources, store.
//!
//! Parsing is strict (`deny_unknown_fields`); secrets appear only as `${ENV_VAR}` and are
//! expanded here, the one place that reads the environment. Validation is pure and reports every
//! problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::money::{Currency, RoundingMode};
use billrun_connectors::SourceConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub organization: RawOrganization,
    #[serde(default)]
    pub run: RawRun,
    pub catalog: RawCatalog,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    pub store: RawStore,
    #[serde(default)]
    pub templates: Option<RawTemplates>,
    #[serde(default)]
    pub settlement: RawSettlement,
    #[serde(default)]
    pub corrections: Option<RawCorrections>,
    #[serde(default)]
    pub output: RawOutput,
}

/// `[output]`: how the store lays out what a run writes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    #[serde(default)]
    pub invoice_documents: InvoiceDocuments,
}

/// How an issued invoice's three documents (JSON, HTML, text) are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceDocuments {
    /// `invoices/<account>/<invoice id>.{json,html,txt}`: three files per invoice.
    #[default]
    Files,
    /// `invoices/<as-of>/<generation>-<n>.tar.zst`: the same three documents of up to 2048
    /// invoices per zstd-compressed tar (src/bundle.rs), for runs of many accounts: each file
    /// written costs far more than its bytes on most file systems and object stores.
    Bundles,
}

/// `[corrections]`: event corrections (UNDO / REDO / REDO_EVENT) applied before rating.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCorrections {
    /// A file or a folder of `*.ndjson` files, relative to the config file.
    pub path: PathBuf,
}

/// `[settlement]`: what settlement does beyond the decided defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettlement {
    /// `report` (default): late usage for an issued invoice is reported in the run's
    /// `late_usage.json`. `adjust`: also issue an AD_HOC adjustment invoice for an increase, or a
    /// credit for a decrease.
    #[serde(default)]
    pub late_usage: LateUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LateUsage {
    #[default]
    Report,
    Adjust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrganization {
    #[serde(default)]
    pub name: Option<String>,
    pub base_currency: String,
    #[serde(default = "default_tz")]
    pub time_zone: String,
    #[serde(default)]
    pub rounding: RoundingMode,
    #[serde(default = "default_sequence")]
    pub invoice_sequence: String,
    #[serde(default)]
    pub net_term_days: u32,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub address: Option<BTreeMap<String, String>>,
}

fn default_tz() -> String {
    "UTC".into()
}
fn default_sequence() -> String {
    "INV-{SEQ:6}".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    /// Default as-of date (the run happens at 00:00 of this date in the org time zone).
    #[serde(default)]
    pub as_of: Option<String>,
    /// Events held in memory at once; past it the input is partitioned by account into spill
    /// files (default 1,000,000: about 0.3 GiB of events).
    #[serde(default)]
    pub memory_rows: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    pub dir: PathBuf,
}

/// Where a run's outputs go: a local directory or an S3 bucket (a prefix in it).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum RawStore {
    #[serde(rename = "local")]
    Local { path: PathBuf },
    #[serde(rename = "s3")]
    S3(billrun_connectors::s3::S3StoreConfig),
}

/// The validated store.
#[derive(Debug, Clone)]
pub enum StoreTarget {
    Local(PathBuf),
    S3(billrun_connectors::s3::S3StoreConfig),
}

impl StoreTarget {
    /// A human description for logs and messages (never a secret).
    pub fn describe(&self) -> String {
        match self {
            StoreTarget::Local(p) => p.display().to_string(),
            StoreTarget::S3(c) => format!("s3://{}/{}", c.bucket, c.prefix),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    pub dir: PathBuf,
}

/// The organisation, validated.
#[derive(Debug, Clone)]
pub struct Organization {
    pub name: String,
    pub base_currency: Currency,
    pub time_zone: Tz,
    pub rounding: RoundingMode,
    pub invoice_sequence: SequenceFormat,
    pub net_term_days: u32,
    pub email: Option<String>,
    pub address: BTreeMap<String, String>,
}

/// A validated configuration; relative paths are resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub organization: Organization,
    pub as_of: Option<NaiveDate>,
    /// `[run] memory_rows`.
    pub memory_rows: Option<usize>,
    pub catalog_dir: PathBuf,
    pub sources: Vec<SourceConfig>,
    pub store: StoreTarget,
    pub templates_dir: Option<PathBuf>,
    pub late_usage: crate::settle::LateUsagePolicy,
    /// Event corrections to apply before rating (`[corrections] path`).
    pub corrections: Option<PathBuf>,
    /// `[output] invoice_documents`.
    pub invoice_documents: InvoiceDocuments,
}

/// The invoice sequence format: literal text with `{SEQ}` / `{SEQ:n}` (zero-padded to n digits)
/// and optionally `{YYYY}` (year of the invoice date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceFormat(pub String);

impl SequenceFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut seq = 0;
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            let j = rest[i..].find('}').ok_or_else(|| format!("unclosed `{{` in `{s}`"))? + i;
            let token = &rest[i + 1..j];
            match token {
                "YYYY" | "MM" => {}
                "SEQ" => seq += 1,
                t if t.starts_with("SEQ:") && t[4..].parse::<u8>().is_ok_and(|n| (1..=20).contains(&n)) => seq += 1,
                t => return Err(format!("unknown placeholder `{{{t}}}` in `{s}` (expected {{SEQ}}, {{SEQ:n}}, {{YYYY}} or {{MM}})")),
            }
            rest = &rest[j + 1..];
        }
        if seq != 1 {
            return Err(format!("`{s}` must contain exactly one {{SEQ}} or {{SEQ:n}} placeholder"));
        }
        Ok(SequenceFormat(s.to_string()))
    }

    pub fn format(&self, seq: u64, date: NaiveDate) -> String {
        let mut out = String::new();
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let j = rest[i..].find('}').map(|j| j + i).unwrap_or(rest.len() - 1);
            let token = &rest[i + 1..j];
            match token {
                "YYYY" => out.push_str(&date.format("%Y").to_string()),
                "MM" => out.push_str(&date.format("%m").to_string()),
                "SEQ" => out.push_str(&seq.to_string()),
                t => {
                    let width: usize = t.trim_start_matches("SEQ:").parse().unwrap_or(1);
                    out.push_str(&format!("{seq:0width$}"));
                }
            }
            rest = &rest[j + 1..];
        }
        out.push_str(rest);
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Expand `${NAME}` from the environment; every missing variable is a diagnostic.
pub fn interpolate(text: &str, file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Diagnostics> {
    let mut out = String::with_capacity(text.len());
    let mut diags = Diagnostics::default();
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            match rest[i..].find('}') {
                Some(j) => {
                    let name = &rest[i + 2..i + j];
                    // the query window placeholders of SQL sources are bound by the connector
                    if matches!(name, "startTime" | "endTime") {
                        out.push_str(&rest[i..i + j + 1]);
                        rest = &rest[i + j + 1..];
                        continue;
                    }
                    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    match (valid, env(name)) {
                        (true, Some(v)) if !v.contains('\n') => out.push_str(&v),
                        (true, Some(_)) => diags.push(
                            Diagnostic::new(file, "", format!("environment variable `{name}` contains a newline"))
                                .at(Some((lineno + 1, i + 1))),
                        ),
                        (true, None) => diags.push(
                            Diagnostic::new(file, "", format!("environment variable `{name}` is not set")).at(Some((lineno + 1, i + 1))),
                        ),
                        (false, _) => diags.push(
                            Diagnostic::new(file, "", format!("`${{{name}}}` is not a valid environment variable reference"))
                                .at(Some((lineno + 1, i + 1))),
                        ),
                    }
                    rest = &rest[i + j + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Read, interpolate, parse and validate `billrun.toml`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path, &|k| std::env::var(k).ok()).map_err(ConfigError::Invalid)
}

/// Parse and validate config text (pure apart from the given environment lookup).
pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Diagnostics> {
    let text = interpolate(text, path, env)?;
    let de = toml::Deserializer::parse(&text).map_err(|e| toml_diag(path, &text, e))?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let p = e.path().to_string();
        let inner = e.into_inner();
        let pos = inner.span().map(|s| line_col(&text, s.start));
        let mut d = Diagnostics::default();
        d.push(Diagnostic::new(path, if p == "." { String::new() } else { p }, inner.message().to_string()).at(pos));
        d
    })?;
    validate(raw, path)
}

fn toml_diag(path: &Path, text: &str, e: toml::de::Error) -> Diagnostics {
    let mut d = Diagnostics::default();
    let pos = e.span().map(|s| line_col(text, s.start));
    d.push(Diagnostic::new(path, "", e.message().to_string()).at(pos));
    d
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, Diagnostics> {
    let mut d = Diagnostics::default();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let o = &raw.organization;
    let base_currency = Currency::new(&o.base_currency).unwrap_or_else(|| {
        d.push(Diagnostic::new(path, "organization.base_currency", format!("`{}` is not an ISO 4217 currency code", o.base_currency)));
        Currency { code: o.base_currency.clone(), minor_units: 2 }
    });
    let time_zone: Tz = o.time_zone.parse().unwrap_or_else(|_| {
        d.push(Diagnostic::new(
            path,
            "organization.time_zone",
            format!("`{}` is not an IANA time zone (e.g. \"UTC\", \"Europe/Berlin\")", o.time_zone),
        ));
        Tz::UTC
    });
    let invoice_sequence = SequenceFormat::parse(&o.invoice_sequence).unwrap_or_else(|e| {
        d.push(Diagnostic::new(path, "organization.invoice_sequence", e));
        SequenceFormat("INV-{SEQ:6}".into())
    });
    let as_of = raw.run.as_of.as_deref().and_then(|s| match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(date) => Some(date),
        Err(_) => {
            d.push(Diagnostic::new(path, "run.as_of", format!("`{s}` is not a date (expected YYYY-MM-DD)")));
            None
        }
    });
    if raw.run.memory_rows == Some(0) {
        d.push(Diagnostic::new(path, "run.memory_rows", "must be at least 1 (events held in memory at once)"));
    }
    if raw.sources.is_empty() {
        d.push(Diagnostic::new(path, "sources", "at least one [[sources]] entry is required"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in raw.sources.iter().enumerate() {
        if !names.insert(s.name().to_string()) {
            d.push(Diagnostic::new(path, format!("sources[{i}].name"), format!("duplicate source name `{}`", s.name())));
        }
        for (key, msg) in s.validate() {
            d.push(Diagnostic::new(path, format!("sources[{i}].{key}"), msg));
        }
    }
    if !d.is_empty() {
        return Err(d);
    }
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    Ok(Config {
        file: path.to_path_buf(),
        organization: Organization {
            name: o.name.clone().unwrap_or_default(),
            base_currency,
            time_zone,
            rounding: o.rounding,
            invoice_sequence,
            net_term_days: o.net_term_days,
            email: o.email.clone(),
            address: o.address.clone().unwrap_or_default(),
        },
        as_of,
        memory_rows: raw.run.memory_rows,
        catalog_dir: resolve(&raw.catalog.dir),
        sources: raw
            .sources
            .into_iter()
            .map(|mut s| {
                s.resolve_paths(&base);
                s
            })
            .collect(),
        store: match raw.store {
            RawStore::Local { path } => StoreTarget::Local(resolve(&path)),
            RawStore::S3(c) => StoreTarget::S3(c),
        },
        templates_dir: raw.templates.map(|t| resolve(&t.dir)),
        corrections: raw.corrections.map(|c| resolve(&c.path)),
        invoice_documents: raw.output.invoice_documents,
        late_usage: match raw.settlement.late_usage {
            LateUsage::Report => crate::settle::LateUsagePolicy::Report,
            LateUsage::Adjust => crate::settle::LateUsagePolicy::Adjust,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[organization]
name = "Example Co"
base_currency = "USD"
time_zone = "Europe/Berlin"
rounding = "HALF_EVEN"
invoice_sequence = "INV-{YYYY}-{SEQ:5}"

[run]
as_of = "2026-11-06"

[catalog]
dir = "catalog"

[[sources]]
name = "events"
type = "files"
path = "usage"

[store]
type = "local"
path = "out"
"#;

    #[test]
    fn parses_a_valid_config_and_resolves_paths() {
        let c = parse(OK, Path::new("/x/billrun.toml"), &|_| None).unwrap();
        assert_eq!(c.organization.rounding, RoundingMode::HalfEven);
        assert_eq!(c.catalog_dir, PathBuf::from("/x/catalog"));
        assert_eq!(c.as_of, NaiveDate::from_ymd_opt(2026, 11, 6));
        let d = NaiveDate::from_ymd_opt(2026, 11, 6).unwrap();
        assert_eq!(c.organization.invoice_sequence.format(42, d), "INV-2026-00042");
    }

    #[test]
    fn unknown_fields_name_file_path_and_line() {
        let bad = OK.replace("rounding = \"HALF_EVEN\"", "roundng = \"HALF_EVEN\"");
        let e = parse(&bad, Path::new("b.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.starts_with("b.toml:6:"), "{e}");
        assert!(e.contains("unknown field `roundng`"), "{e}");
    }

    #[test]
    fn invoice_documents_are_files_unless_bundles_are_asked_for() {
        assert_eq!(parse(OK, Path::new("b.toml"), &|_| None).unwrap().invoice_documents, InvoiceDocuments::Files);
        let t = format!("{OK}\n[output]\ninvoice_documents = \"bundles\"\n");
        assert_eq!(parse(&t, Path::new("b.toml"), &|_| None).unwrap().invoice_documents, InvoiceDocuments::Bundles);
        let bad = format!("{OK}\n[output]\ninvoice_documents = \"zip\"\n");
        let e = parse(&bad, Path::new("b.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.starts_with("b.toml:") && e.contains("`zip`") && e.contains("`files` or `bundles`"), "{e}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let bad = OK.replace("\"USD\"", "\"USX\"").replace("Europe/Berlin", "Mars/Olympus").replace("{SEQ:5}", "{N}");
        let e = parse(&bad, Path::new("b.toml"), &|_| None).unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        let s = e.to_string();
        assert!(
            s.contains("organization.base_currency") && s.contains("organization.time_zone") && s.contains("organization.invoice_sequence"),
            "{s}"
        );
    }

    #[test]
    fn query_window_placeholders_are_left_for_the_connector() {
        let out =
            interpolate("q = \"SELECT * WHERE ts >= '${startTime}' AND ts < '${endTime}' AND x = '${X}'\"", Path::new("b.toml"), &|k| {
                (k == "X").then(|| "1".into())
            })
            .unwrap();
        assert_eq!(out, "q = \"SELECT * WHERE ts >= '${startTime}' AND ts < '${endTime}' AND x = '1'\"");
    }

    #[test]
    fn sources_are_checked_by_their_connector() {
        let bad = OK.replace("path = \"usage\"", "path = \"usage\"\nformat = \"csv\"\nbogus = 1");
        let e = parse(&bad, Path::new("b.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let bad = OK.replace("path = \"usage\"", "path = \"usage\"\nformat = \"csv\"");
        let e = parse(&bad, Path::new("b.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.contains("sources[0].mapping") && e.contains("need a [sources.mapping]"), "{e}");
    }

    #[test]
    fn env_vars_are_expanded_and_missing_ones_reported() {
        let t = OK.replace("\"Example Co\"", "\"${ORG_NAME}\"");
        let c = parse(&t, Path::new("b.toml"), &|k| (k == "ORG_NAME").then(|| "Acme".to_string())).unwrap();
        assert_eq!(c.organization.name, "Acme");
        let e = parse(&t, Path::new("b.toml"), &|_| None).unwrap_err().to_string();
        assert!(e.contains("b.toml:3:") && e.contains("`ORG_NAME` is not set"), "{e}");
    }
}
