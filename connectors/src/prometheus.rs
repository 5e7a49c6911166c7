//! The Prometheus source (also VictoriaMetrics and anything serving Prometheus'
//! `/api/v1/query_range`): a PromQL range query over the run's window, one event per series and
//! step.
//!
//! - **Values, once, exactly.** Prometheus answers with float64 sample values. Each is
//!   converted once — here, the only place billrun touches a float — to an exact decimal rounded
//!   half-to-even at the declared `scale` (`format!("{:.scale$}")` of the float's exact binary
//!   value); everything after is exact (`Decimal128(38, scale)`). NaN/±Inf samples are bad
//!   records.
//! - **Counters** (`mode = "counter"`, the query returns raw counter values, e.g.
//!   `api_requests_total`): billrun evaluates the series at `start, start+step, …` and emits each
//!   interval's increase, exactly, as an event at the interval's start; a value lower than the
//!   previous one is a counter reset and the interval's increase is the new value (the counter
//!   restarted from zero). No extrapolation (unlike PromQL's `increase()`), so integer counters
//!   give integer usage. Zero increases emit no event.
//! - **Gauges** (`mode = "gauge"`, default): each sample is an event at the sample's time with
//!   the value as is (e.g. a query that already computes `increase(x[1h])` — note PromQL's
//!   extrapolation — or a per-step gauge).
//! - `account_label` maps to the account; every other label (not `__name__`) to a dimension.
//! - Event ids are `prom-` + SHA-256 of (series labels, timestamp): deterministic, so a re-run or
//!   an overlapping window gives the same ids and the core's dedup keeps one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ConnectorError, ErrorKind};
use crate::file::{BadRecord, SourceOutput};
use crate::source::ReadWindow;
use crate::sql::{self, Cell, ColKind, ColumnPlan, Secret, SqlBatcher};

pub const CONNECTOR: &str = "prometheus";

/// How sample values become quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each sample is a quantity.
    #[default]
    Gauge,
    /// Samples are a cumulative counter: quantities are the increases between steps.
    Counter,
}

/// `[[sources]] type = "prometheus"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// PromQL.
    pub query: String,
    /// Step in seconds (default 3600).
    #[serde(default = "default_step")]
    pub step_secs: u64,
    #[serde(default)]
    pub mode: Mode,
    /// The label holding the account id.
    pub account_label: String,
    /// Schema name of every event.
    pub schema_name: String,
    /// Attribute name of the value.
    pub attribute: String,
    /// Decimal places kept from each sample (0–18).
    pub scale: u32,
    /// Optional `Authorization: Bearer` token (as `${ENV}`).
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Retries on connection failures and 5xx answers (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Request timeout in seconds (default 60).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_step() -> u64 {
    3600
}
fn default_retries() -> u32 {
    3
}
fn default_timeout() -> u64 {
    60
}

/// Prometheus refuses more than 11,000 points per series; stay below.
const MAX_POINTS: i64 = 10_000;

impl PrometheusConfig {
    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            out.push(("url".into(), "expected an http:// or https:// URL".into()));
        }
        if self.query.trim().is_empty() {
            out.push(("query".into(), "the PromQL query is empty".into()));
        }
        if self.step_secs == 0 {
            out.push(("step_secs".into(), "must be at least 1".into()));
        }
        if self.scale > 18 {
            out.push(("scale".into(), "at most 18 decimal places".into()));
        }
        for (k, v) in [("account_label", &self.account_label), ("schema_name", &self.schema_name), ("attribute", &self.attribute)] {
            if v.is_empty() {
                out.push((k.into(), "must not be empty".into()));
            }
        }
        if self.retries > 10 {
            out.push(("retries".into(), "at most 10 retries".into()));
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(serde_json::Number, String)>,
}

/// A sample value to an exact decimal at `scale`: the one float conversion of billrun.
pub fn sample_to_decimal(text: &str, scale: u32) -> Result<i128, String> {
    let v: f64 = text.parse().map_err(|_| format!("sample value `{text}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("sample value `{text}` is not finite"));
    }
    let s = format!("{:.*}", scale as usize, v);
    let (m, sc) = sql::parse_dec(&s).ok_or_else(|| format!("sample value `{text}` does not fit 38 digits"))?;
    debug_assert_eq!(sc, scale);
    if m.unsigned_abs() >= 10u128.pow(38) {
        return Err(format!("sample value `{text}` does not fit 38 digits"));
    }
    Ok(m)
}

/// Seconds (JSON number, possibly fractional) to microseconds, exactly.
fn secs_to_us(n: &serde_json::Number) -> Option<i64> {
    let (m, s) = sql::parse_dec(&n.to_string())?;
    if s > 6 {
        return None;
    }
    i64::try_from(m.checked_mul(10i128.pow(6 - s))?).ok()
}

/// `prom-` + hex SHA-256 of the series' labels and the timestamp (first 32 hex digits).
pub fn event_id(labels: &BTreeMap<String, String>, ts_us: i64) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.update(ts_us.to_be_bytes());
    format!("prom-{}", &hex::encode(h.finalize())[..32])
}

async fn fetch(cfg: &PrometheusConfig, client: &reqwest::Client, start_s: i64, end_s: i64) -> Result<Vec<Series>, ConnectorError> {
    let err = |kind, m: String| ConnectorError::new(CONNECTOR, &cfg.name, format!("query `{}`", cfg.query), kind, m);
    let mut url = url::Url::parse(&format!("{}/api/v1/query_range", cfg.url.trim_end_matches('/')))
        .map_err(|e| err(ErrorKind::Config, format!("url: {e}")))?;
    url.query_pairs_mut()
        .append_pair("query", &cfg.query)
        .append_pair("start", &start_s.to_string())
        .append_pair("end", &end_s.to_string())
        .append_pair("step", &cfg.step_secs.to_string());
    let mut tries = 0;
    loop {
        let mut req = client.get(url.clone());
        if let Some(t) = &cfg.bearer_token {
            req = req.bearer_auth(&t.0);
        }
        let failure = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| err(ErrorKind::Io, format!("reading the answer: {e}")));
                match body {
                    Ok(body) if !status.is_server_error() => {
                        let a: Answer = serde_json::from_slice(&body).map_err(|e| {
                            err(
                                ErrorKind::Format,
                                format!(
                                    "HTTP {status}: not a Prometheus API answer: {e}: {}",
                                    String::from_utf8_lossy(&body[..body.len().min(200)])
                                ),
                            )
                        })?;
                        if a.status != "success" {
                            return Err(err(
                                ErrorKind::Config,
                                format!("HTTP {status}: {}: {}", a.error_type.unwrap_or_default(), a.error.unwrap_or_default()),
                            ));
                        }
                        let data = a.data.ok_or_else(|| err(ErrorKind::Format, "answer without data".into()))?;
                        if data.result_type != "matrix" {
                            return Err(err(ErrorKind::Format, format!("expected a matrix result, got {}", data.result_type)));
                        }
                        return Ok(data.result);
                    }
                    Ok(_) => format!("HTTP {status}"),
                    Err(e) => e.message,
                }
            }
            Err(e) => format!("cannot reach {}: {e}", cfg.url),
        };
        if tries >= cfg.retries {
            return Err(err(ErrorKind::Io, format!("{failure} (gave up after {} attempt(s))", tries + 1)));
        }
        let wait = sql::backoff(tries);
        tries += 1;
        tracing::warn!(source = %cfg.name, url = %cfg.url, attempt = tries, of = cfg.retries, wait_ms = wait.as_millis() as u64, error = %failure, "prometheus: transient failure, retrying");
        tokio::time::sleep(wait).await;
    }
}

/// Read a Prometheus source over `window` (both bounds required).
pub async fn read_prometheus(cfg: &PrometheusConfig, window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    let label = format!("query `{}`", cfg.query);
    let err = |kind, m: String| ConnectorError::new(CONNECTOR, &cfg.name, &label, kind, m);
    let (Some(start_us), Some(end_us)) = (window.start_us, window.end_us) else {
        return Err(err(ErrorKind::Config, "a Prometheus source needs a bounded window (the run's billing windows)".into()));
    };
    let step = cfg.step_secs as i64;
    // Evaluation points: aligned to the step, from the window start (floor) to the last point < end.
    let first = start_us.div_euclid(1_000_000).div_euclid(step) * step;
    let last = (end_us - 1).div_euclid(1_000_000).div_euclid(step) * step + if cfg.mode == Mode::Counter { step } else { 0 };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
        .build()
        .map_err(|e| err(ErrorKind::Config, e.to_string()))?;

    // series labels -> (ts_us -> value text), across chunks
    let mut series: BTreeMap<BTreeMap<String, String>, BTreeMap<i64, String>> = BTreeMap::new();
    let mut bad_records: Vec<BadRecord> = Vec::new();
    let mut chunk_start = first;
    while chunk_start <= last {
        let chunk_end = (chunk_start + (MAX_POINTS - 1) * step).min(last);
        for s in fetch(cfg, &client, chunk_start, chunk_end).await? {
            let entry = series.entry(s.metric.clone()).or_default();
            for (t, v) in s.values {
                match secs_to_us(&t) {
                    Some(us) => {
                        entry.insert(us, v);
                    }
                    None => bad_records.push(BadRecord {
                        location: format!("{label}: series {:?}", s.metric),
                        raw: format!("{t} {v}"),
                        error: "bad sample timestamp".into(),
                    }),
                }
            }
        }
        chunk_start = chunk_end + step;
    }

    let dims: BTreeSet<String> =
        series.keys().flat_map(|m| m.keys()).filter(|k| *k != "__name__" && **k != cfg.account_label).cloned().collect();
    let mut names =
        vec!["id".to_string(), "schemaName".into(), "accountId".into(), "timestamp".into(), format!("attributes.{}", cfg.attribute)];
    let mut kinds = vec![ColKind::Text, ColKind::Text, ColKind::Text, ColKind::Timestamp, ColKind::Decimal];
    for d in &dims {
        names.push(format!("dimensions.{d}"));
        kinds.push(ColKind::Text);
    }
    let plan = ColumnPlan::new(&names, &kinds, None).map_err(|(k, m)| err(k, m))?;
    let mut batcher = SqlBatcher::new(plan, &label);
    let step_us = step * 1_000_000;
    let mut points = 0u64;
    for (metric, samples) in &series {
        let series_loc = || format!("{label}: series {}", fmt_labels(metric));
        let mut prev: Option<i128> = None;
        for (ts, text) in samples {
            points += 1;
            let value = match sample_to_decimal(text, cfg.scale) {
                Ok(v) => v,
                Err(e) => {
                    bad_records.push(BadRecord { location: format!("{} at {ts}", series_loc()), raw: text.clone(), error: e });
                    if cfg.mode == Mode::Counter {
                        prev = None;
                    }
                    continue;
                }
            };
            let (event_ts, qty) = match cfg.mode {
                Mode::Gauge => (*ts, value),
                Mode::Counter => {
                    let p = prev.replace(value);
                    let Some(p) = p else { continue };
                    // After a missing point the increase covers the gap (nothing is lost).
                    let delta = if value >= p { value - p } else { value };
                    (*ts - step_us, delta)
                }
            };
            if event_ts < start_us || event_ts >= end_us || (cfg.mode == Mode::Counter && qty == 0) {
                continue;
            }
            let id = event_id(metric, event_ts);
            let mut cells = vec![
                Cell::Text(id.into()),
                Cell::Text(cfg.schema_name.as_str().into()),
                metric.get(&cfg.account_label).map(|a| Cell::Text(a.as_str().into())).unwrap_or(Cell::Null),
                Cell::Ts(event_ts),
                Cell::Dec(qty, cfg.scale),
            ];
            for d in &dims {
                cells.push(metric.get(d).map(|v| Cell::Text(v.as_str().into())).unwrap_or(Cell::Null));
            }
            batcher.push(&cells).map_err(|e| ConnectorError { connector: CONNECTOR, source_name: cfg.name.clone(), ..e })?;
        }
    }
    let (batches, mut more_bad) =
        batcher.finish().map_err(|e| ConnectorError { connector: CONNECTOR, source_name: cfg.name.clone(), ..e })?;
    bad_records.append(&mut more_bad);
    tracing::info!(source = %cfg.name, series = series.len(), points, events = batches.iter().map(|b| b.num_rows()).sum::<usize>(), bad = bad_records.len(), "prometheus source read");
    Ok(SourceOutput { batches, bad_records, files: Vec::new() })
}

fn fmt_labels(m: &BTreeMap<String, String>) -> String {
    let name = m.get("__name__").cloned().unwrap_or_default();
    let rest: Vec<String> = m.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", rest.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_exact_decimals_once() {
        assert_eq!(sample_to_decimal("600", 0), Ok(600));
        assert_eq!(sample_to_decimal("0.1", 6), Ok(100_000));
        assert_eq!(sample_to_decimal("1.5e+06", 2), Ok(150_000_000));
        assert_eq!(sample_to_decimal("2.675", 2), Ok(267), "the float 2.675 is 2.67499999…");
        assert!(sample_to_decimal("NaN", 2).is_err());
        assert!(sample_to_decimal("+Inf", 2).is_err());
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a: BTreeMap<String, String> = [("account_id".to_string(), "a".to_string())].into();
        let b: BTreeMap<String, String> = [("account_id".to_string(), "b".to_string())].into();
        assert_eq!(event_id(&a, 1), event_id(&a, 1));
        assert_ne!(event_id(&a, 1), event_id(&a, 2));
        assert_ne!(event_id(&a, 1), event_id(&b, 1));
        assert_eq!(secs_to_us(&serde_json::Number::from_f64(1.5).unwrap()), Some(1_500_000));
    }
}
