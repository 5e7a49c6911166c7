//! The Snowflake source: one SQL query over the run's window (snowflake-connector-rs, JSON result
//! partitions streamed one at a time) into canonical Arrow batches.
//!
//! - `${startTime}` / `${endTime}` become positional `?` bindings (TIMESTAMP_LTZ) holding the
//!   [`ReadWindow`]; the session runs with `TIMEZONE = 'UTC'` so TIMESTAMP_NTZ columns compare as
//!   UTC. An open bound is bound as 0001-01-01 / 9999-12-31.
//! - Values are decoded from Snowflake's wire text here, exactly: NUMBER → Decimal128 (the
//!   batch's largest scale), TEXT → Utf8, TIMESTAMP_NTZ/LTZ/TZ → µs UTC (NTZ taken as UTC; digits
//!   finer than a microsecond must be zeros), DATE → midnight UTC, BOOLEAN → `true`/`false` text.
//!   FLOAT/REAL anywhere in the mapping is an error.
//! - Auth: password, or key pair (`private_key_file`, PKCS#8 PEM, optionally encrypted with
//!   `private_key_passphrase`). Secrets come from `${ENV}` and are never logged.
//! - Transient failures (network, timeouts, expired sessions) are retried with exponential
//!   backoff, `retries` times; each retry logs in again, restarts the query and discards what was
//!   read. SQL and auth errors are not retried.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use snowflake_connector_rs::{
    AuthConfig, Client, ClientConfig, ColumnType, EndpointConfig, FromRow, KeyPairConfig, QueryConfig, RowPlanContext, RowRef,
    SessionConfig, Statement,
};

use crate::error::{ConnectorError, ErrorKind};
use crate::file::{ColumnMapping, SourceOutput};
use crate::source::ReadWindow;
use crate::sql::{self, AggregateOutput, Bound, Cell, ColKind, ColumnPlan, Param, Secret, SqlBatcher};

pub const CONNECTOR: &str = "snowflake";

/// `[[sources]] type = "snowflake"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    pub name: String,
    /// Account identifier (e.g. `myorg-myaccount`); with `url` unset the endpoint is
    /// `https://<account>.snowflakecomputing.com`.
    pub account: String,
    pub user: String,
    /// Password auth: only as `${ENV_VAR}`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Key-pair auth: PKCS#8 PEM private key file, relative to the config file.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Passphrase of an encrypted `private_key_file` (`${ENV_VAR}`).
    #[serde(default)]
    pub private_key_passphrase: Option<Secret>,
    /// Custom endpoint base URL (`https://host[:port]`, e.g. PrivateLink or an emulator).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub warehouse: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// The SQL; `${startTime}` / `${endTime}` are bound as parameters.
    #[serde(default)]
    pub query: Option<String>,
    /// The SQL in a file, relative to the config file.
    #[serde(default)]
    pub query_file: Option<PathBuf>,
    /// Column mapping; without one, Togai's column aliases are expected.
    #[serde(default)]
    pub mapping: Option<ColumnMapping>,
    /// Compute the usage meters inside Snowflake (see billrun's pushdown); only the usage table
    /// comes back.
    #[serde(default)]
    pub pushdown: bool,
    /// Retries on transient failures (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How long to wait for a query's answer, in seconds (default 300).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_retries() -> u32 {
    3
}
fn default_timeout() -> u64 {
    300
}

impl SnowflakeConfig {
    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        sql::validate_query_keys(&self.query, &self.query_file, out);
        match (&self.password, &self.private_key_file) {
            (Some(_), Some(_)) => out.push(("password".into(), "set either `password` or `private_key_file`, not both".into())),
            (None, None) => out.push(("password".into(), "set `password` (\"${ENV_VAR}\") or `private_key_file` (key-pair auth)".into())),
            _ => {}
        }
        if self.private_key_passphrase.is_some() && self.private_key_file.is_none() {
            out.push(("private_key_passphrase".into(), "only used with `private_key_file`".into()));
        }
        if self.account.trim().is_empty() {
            out.push(("account".into(), "the account identifier is empty".into()));
        }
        if let Some(u) = &self.url {
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && (p.path() == "/" || p.path().is_empty()) && p.query().is_none() => {}
                Ok(_) => out.push(("url".into(), format!("`{u}`: an http(s) base URL without path or query is expected"))),
                Err(e) => out.push(("url".into(), format!("`{u}` is not a URL: {e}"))),
            }
        }
        if self.retries > 10 {
            out.push(("retries".into(), "at most 10 retries".into()));
        }
    }

    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.query_file, &mut self.private_key_file].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// `user@account (url)` — for messages; no secret.
    fn target(&self) -> String {
        match &self.url {
            Some(u) => format!("{}@{} ({u})", self.user, self.account),
            None => format!("{}@{}", self.user, self.account),
        }
    }

    fn client(&self) -> Result<Client, (ErrorKind, String)> {
        let auth = match (&self.password, &self.private_key_file) {
            (Some(p), _) => AuthConfig::password(p.0.clone()),
            (None, Some(f)) => {
                let pem = std::fs::read_to_string(f)
                    .map_err(|e| (ErrorKind::Config, format!("cannot read private_key_file {}: {e}", f.display())))?;
                AuthConfig::key_pair(match &self.private_key_passphrase {
                    Some(pass) => KeyPairConfig::from_encrypted_pem(pem, pass.0.as_bytes().to_vec()),
                    None => KeyPairConfig::from_pem(pem),
                })
            }
            (None, None) => return Err((ErrorKind::Config, "no credentials: set `password` or `private_key_file`".into())),
        };
        let mut session = SessionConfig::new().with_session_parameter("TIMEZONE", serde_json::json!("UTC"));
        if let Some(d) = &self.database {
            session = session.with_database(d);
        }
        if let Some(s) = &self.schema {
            session = session.with_schema(s);
        }
        if let Some(w) = &self.warehouse {
            session = session.with_warehouse(w);
        }
        if let Some(r) = &self.role {
            session = session.with_role(r);
        }
        let mut config = ClientConfig::new(&self.user, &self.account, auth)
            .with_session(session)
            .with_query(QueryConfig::new().with_query_response_timeout(Duration::from_secs(self.timeout_secs.max(1))));
        if let Some(u) = &self.url {
            let url = url::Url::parse(u).map_err(|e| (ErrorKind::Config, format!("url `{u}`: {e}")))?;
            config = config.with_endpoint(EndpointConfig::CustomBaseUrl(url));
        }
        Client::new(config).map_err(|e| (ErrorKind::Config, format!("client configuration: {e}")))
    }
}

/// What billrun reads of a Snowflake column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SfKind {
    Fixed,
    Text,
    Bool,
    Date,
    /// NTZ, LTZ: `seconds.fraction`.
    Epoch,
    /// TZ: `seconds.fraction offset`.
    EpochTz,
    Real,
    Other,
}

fn sf_kind(ty: &ColumnType) -> SfKind {
    match ty {
        ColumnType::Fixed { .. } => SfKind::Fixed,
        ColumnType::Text { .. } => SfKind::Text,
        ColumnType::Boolean => SfKind::Bool,
        ColumnType::Date => SfKind::Date,
        ColumnType::TimestampNtz { .. } | ColumnType::TimestampLtz { .. } => SfKind::Epoch,
        ColumnType::TimestampTz { .. } => SfKind::EpochTz,
        ColumnType::Real => SfKind::Real,
        _ => SfKind::Other,
    }
}

fn col_kind(ty: &ColumnType) -> ColKind {
    match sf_kind(ty) {
        SfKind::Fixed => ColKind::Decimal,
        SfKind::Text => ColKind::Text,
        SfKind::Bool => ColKind::Bool,
        SfKind::Date | SfKind::Epoch | SfKind::EpochTz => ColKind::Timestamp,
        SfKind::Real => ColKind::Float,
        SfKind::Other => ColKind::Other(ty.as_str().to_uppercase()),
    }
}

/// Snowflake's `seconds[.fraction]` epoch text → µs; digits finer than a microsecond must be 0.
pub(crate) fn epoch_micros(text: &str) -> Result<i64, String> {
    let (m, scale) = sql::parse_dec(text).ok_or_else(|| format!("`{text}` is not an epoch timestamp"))?;
    let us = if scale <= 6 {
        m.checked_mul(10i128.pow(6 - scale))
    } else {
        let f = 10i128.checked_pow(scale - 6).ok_or_else(|| format!("`{text}`: too many fraction digits"))?;
        if m % f != 0 {
            return Err(format!("`{text}` is finer than a microsecond"));
        }
        Some(m / f)
    };
    us.and_then(|v| i64::try_from(v).ok()).ok_or_else(|| format!("`{text}` is out of range"))
}

fn decode(kind: SfKind, raw: Option<&str>) -> Cell<'static> {
    let Some(raw) = raw else { return Cell::Null };
    let r: Result<Cell<'static>, String> = match kind {
        SfKind::Text | SfKind::Other => Ok(Cell::Text(Cow::Owned(raw.to_string()))),
        SfKind::Fixed => sql::parse_dec(raw).map(|(m, s)| Cell::Dec(m, s)).ok_or_else(|| format!("`{raw}` is not a decimal")),
        SfKind::Bool => Ok(Cell::Bool(raw == "1" || raw.eq_ignore_ascii_case("true"))),
        SfKind::Date => raw
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400_000_000))
            .map(Cell::Ts)
            .ok_or_else(|| format!("`{raw}` is not a date (days since 1970-01-01)")),
        SfKind::Epoch => epoch_micros(raw).map(Cell::Ts),
        SfKind::EpochTz => epoch_micros(raw.split_whitespace().next().unwrap_or("")).map(Cell::Ts),
        SfKind::Real => Err("binary floating point".into()),
    };
    r.unwrap_or_else(Cell::Bad)
}

/// One result row, decoded.
struct SfRow(Vec<Cell<'static>>);

impl FromRow for SfRow {
    type Plan = Vec<SfKind>;

    fn build_plan(ctx: RowPlanContext<'_>) -> snowflake_connector_rs::error::PlanBuildResult<Self::Plan> {
        Ok(ctx.schema().columns().iter().map(|c| sf_kind(c.ty())).collect())
    }

    fn from_row_with_plan(row: RowRef<'_>, plan: &Self::Plan) -> snowflake_connector_rs::error::RowDecodeResult<Self> {
        let mut cells = Vec::with_capacity(plan.len());
        for (i, k) in plan.iter().enumerate() {
            let raw = row.cell_at(i).ok().and_then(|c| c.raw());
            cells.push(decode(*k, raw));
        }
        Ok(SfRow(cells))
    }
}

/// One result row as text (aggregate queries).
struct TextRow(Vec<Option<String>>);

impl FromRow for TextRow {
    type Plan = usize;

    fn build_plan(ctx: RowPlanContext<'_>) -> snowflake_connector_rs::error::PlanBuildResult<Self::Plan> {
        Ok(ctx.schema().len())
    }

    fn from_row_with_plan(row: RowRef<'_>, plan: &Self::Plan) -> snowflake_connector_rs::error::RowDecodeResult<Self> {
        Ok(TextRow((0..*plan).map(|i| row.cell_at(i).ok().and_then(|c| c.raw()).map(String::from)).collect()))
    }
}

enum Failure {
    Transient(String),
    Fatal(ErrorKind, String),
}

fn classify(e: snowflake_connector_rs::Error, what: &str) -> Failure {
    use snowflake_connector_rs::ErrorKind as K;
    let code = e.snowflake_code().map(|c| format!(" (code {c})")).unwrap_or_default();
    let msg = format!("{what}: {e}{code}");
    match e.kind() {
        K::Network | K::Timeout | K::SessionExpired => Failure::Transient(msg),
        K::Auth => Failure::Fatal(ErrorKind::Config, format!("{what}: login refused: {e}")),
        K::Config => Failure::Fatal(ErrorKind::Config, msg),
        _ => Failure::Fatal(ErrorKind::Format, msg),
    }
}

/// The window bound as a TIMESTAMP_LTZ binding; open bounds as the ends of Snowflake's range.
fn bound_value(window: &ReadWindow, b: Bound) -> Result<snowflake_connector_rs::bind::TimestampLtz, String> {
    let us = match b {
        Bound::Start => window.start_us.unwrap_or(-62_135_596_800_000_000), // 0001-01-01
        Bound::End => window.end_us.unwrap_or(253_402_214_400_000_000),     // 9999-12-31
    };
    let t = chrono::DateTime::from_timestamp_micros(us).ok_or("window bound out of range")?;
    snowflake_connector_rs::bind::TimestampLtz::try_from(t).map_err(|e| e.to_string())
}

/// Called with the result's column names and types before any row.
type OnSchema<'a> = &'a mut dyn FnMut(&[String], &[ColumnType]) -> Result<(), (ErrorKind, String)>;

/// Log in, run `sql` with its bindings, and hand every row to `each` (partitions streamed).
async fn run_query<R: FromRow + Send + 'static>(
    cfg: &SnowflakeConfig,
    sql_text: &str,
    binds: &[BindValue],
    on_schema: OnSchema<'_>,
    each: &mut dyn FnMut(R) -> Result<(), ConnectorError>,
) -> Result<u64, Failure> {
    let client = cfg.client().map_err(|(k, m)| Failure::Fatal(k, m))?;
    let session = client.create_session().await.map_err(|e| classify(e, &format!("cannot log in to {}", cfg.target())))?;
    let mut stmt = Statement::new_positional(sql_text.to_string());
    for b in binds {
        stmt = match b {
            BindValue::Ts(t) => stmt.bind(*t),
            BindValue::Text(s) => stmt.bind(s.clone()),
            BindValue::Int(i) => stmt.bind(*i),
        };
    }
    let mut cursor = session.query(stmt).await.map_err(|e| classify(e, "the query failed"))?;
    let names: Vec<String> = cursor.schema().columns().iter().map(|c| c.name().to_string()).collect();
    let types: Vec<ColumnType> = cursor.schema().columns().iter().map(|c| c.ty().clone()).collect();
    on_schema(&names, &types).map_err(|(k, m)| Failure::Fatal(k, m))?;
    let mut rows = 0u64;
    while let Some(table) = cursor.next_table().await.map_err(|e| classify(e, &format!("reading the result after row {rows}")))? {
        for r in table.rows::<R>().map_err(|e| classify(e, "decoding the result"))? {
            let r = r.map_err(|e| classify(e, &format!("decoding row {}", rows + 1)))?;
            rows += 1;
            each(r).map_err(|e| Failure::Fatal(e.kind, e.message))?;
        }
    }
    Ok(rows)
}

enum BindValue {
    Ts(snowflake_connector_rs::bind::TimestampLtz),
    Text(String),
    Int(i64),
}

/// Retry `attempt` on transient failures with the shared backoff.
async fn with_retries<T, F, Fut>(cfg: &SnowflakeConfig, label: &str, mut attempt: F) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(kind, msg)) => return Err(ConnectorError::new(CONNECTOR, &cfg.name, label, kind, msg)),
            Err(Failure::Transient(msg)) if tries < cfg.retries => {
                let wait = sql::backoff(tries);
                tries += 1;
                tracing::warn!(source = %cfg.name, target = %cfg.target(), attempt = tries, of = cfg.retries, wait_ms = wait.as_millis() as u64, error = %msg, "snowflake: transient failure, retrying");
                tokio::time::sleep(wait).await;
            }
            Err(Failure::Transient(msg)) => {
                return Err(ConnectorError::new(
                    CONNECTOR,
                    &cfg.name,
                    label,
                    ErrorKind::Io,
                    format!("{msg} (gave up after {} attempt(s); nothing was read)", tries + 1),
                ))
            }
        }
    }
}

fn window_binds(params: &[Bound], window: &ReadWindow) -> Result<Vec<BindValue>, String> {
    params.iter().map(|b| bound_value(window, *b).map(BindValue::Ts)).collect()
}

/// Read a Snowflake source over `window`.
pub async fn read_snowflake(cfg: &SnowflakeConfig, window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    let text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = sql::query_label(&text);
    let (sql_text, params) = sql::bind_window(&text, false, |_| "?".into());
    let binds = window_binds(&params, window).map_err(|m| ConnectorError::new(CONNECTOR, &cfg.name, &label, ErrorKind::Config, m))?;
    with_retries(cfg, &label, || async {
        let batcher: std::cell::RefCell<Option<SqlBatcher>> = std::cell::RefCell::new(None);
        let rows = run_query::<SfRow>(
            cfg,
            &sql_text,
            &binds,
            &mut |names, types| {
                let kinds: Vec<ColKind> = types.iter().map(col_kind).collect();
                let plan = ColumnPlan::new(names, &kinds, cfg.mapping.as_ref())?;
                *batcher.borrow_mut() = Some(SqlBatcher::new(plan, &label));
                Ok(())
            },
            &mut |row: SfRow| {
                let mut b = batcher.borrow_mut();
                let b = b.as_mut().expect("schema seen before rows");
                b.push(&row.0).map_err(|e| ConnectorError { connector: CONNECTOR, source_name: cfg.name.clone(), ..e })
            },
        )
        .await?;
        let b = batcher.into_inner().expect("schema seen");
        let (batches, bad_records) = b.finish().map_err(|e| Failure::Fatal(e.kind, e.message))?;
        tracing::info!(source = %cfg.name, target = %cfg.target(), rows, bad = bad_records.len(), "snowflake source read");
        Ok(SourceOutput { batches, bad_records, files: Vec::new() })
    })
    .await
}

/// The columns of the source's query (name, kind, declared scale of NUMBER columns), from a
/// run that returns no row.
pub async fn describe_snowflake(cfg: &SnowflakeConfig, window: &ReadWindow) -> Result<Vec<sql::DescribedColumn>, ConnectorError> {
    let text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = sql::query_label(&text);
    let wrapped = format!("SELECT * FROM (\n{text}\n) AS billrun_source LIMIT 0");
    let (sql_text, params) = sql::bind_window(&wrapped, false, |_| "?".into());
    let binds = window_binds(&params, window).map_err(|m| ConnectorError::new(CONNECTOR, &cfg.name, &label, ErrorKind::Config, m))?;
    with_retries(cfg, &label, || async {
        let mut out = Vec::new();
        run_query::<TextRow>(
            cfg,
            &sql_text,
            &binds,
            &mut |names, types| {
                out = names
                    .iter()
                    .zip(types)
                    .map(|(n, t)| sql::DescribedColumn { name: n.clone(), kind: col_kind(t), scale: t.scale().map(u32::from) })
                    .collect();
                Ok(())
            },
            &mut |_| Ok(()),
        )
        .await?;
        Ok(out)
    })
    .await
}

/// Run an aggregate query (meter pushdown) whose every column is text. `${startTime}` /
/// `${endTime}` and `${param:N}` (1-based into `params`) become positional bindings.
pub async fn aggregate_snowflake(
    cfg: &SnowflakeConfig,
    query: &str,
    params: &[Param],
    window: &ReadWindow,
) -> Result<AggregateOutput, ConnectorError> {
    let user_text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = format!("pushdown of {}", sql::query_label(&user_text));
    let err = |m: String| ConnectorError::new(CONNECTOR, &cfg.name, &label, ErrorKind::Config, m);
    let (sql_text, order) = sql::bind_all(query, false, |_| "?".into());
    let mut binds = Vec::with_capacity(order.len());
    for p in &order {
        binds.push(match p {
            sql::Placeholder::Window(b) => BindValue::Ts(bound_value(window, *b).map_err(err)?),
            sql::Placeholder::Param(i) => match params.get(*i) {
                Some(Param::Text(s)) => BindValue::Text(s.clone()),
                Some(Param::Int(v)) => BindValue::Int(*v),
                Some(Param::TextArray(_) | Param::IntArray(_)) => {
                    return Err(err("array parameters are not supported by Snowflake".into()))
                }
                None => return Err(err(format!("no parameter {}", i + 1))),
            },
        });
    }
    with_retries(cfg, &label, || async {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        run_query::<TextRow>(
            cfg,
            &sql_text,
            &binds,
            &mut |names, types| {
                for (n, t) in names.iter().zip(types) {
                    if sf_kind(t) != SfKind::Text {
                        return Err((ErrorKind::Format, format!("aggregate column `{n}` is {}, not text", t.as_str())));
                    }
                }
                columns = names.to_vec();
                Ok(())
            },
            &mut |r: TextRow| {
                rows.push(r.0);
                Ok(())
            },
        )
        .await?;
        tracing::info!(source = %cfg.name, target = %cfg.target(), rows = rows.len(), "snowflake pushdown read");
        Ok(AggregateOutput { columns, rows })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_text_is_exact() {
        assert_eq!(epoch_micros("1790812800.123456000"), Ok(1_790_812_800_123_456));
        assert_eq!(epoch_micros("1790812800"), Ok(1_790_812_800_000_000));
        assert_eq!(epoch_micros("-1.100000000"), Ok(-1_100_000));
        assert!(epoch_micros("1.000000001").unwrap_err().contains("finer than a microsecond"));
        assert!(epoch_micros("x").is_err());
        assert_eq!(decode(SfKind::EpochTz, Some("1790812800.000000000 1560")), Cell::Ts(1_790_812_800_000_000));
        assert_eq!(decode(SfKind::Date, Some("20727")), Cell::Ts(20727 * 86_400_000_000));
        assert_eq!(decode(SfKind::Fixed, Some("-12.500")), Cell::Dec(-12500, 3));
        assert_eq!(decode(SfKind::Bool, Some("1")), Cell::Bool(true));
        assert!(matches!(decode(SfKind::Fixed, Some("1e3")), Cell::Bad(_)));
    }

    #[test]
    fn secrets_are_not_debug_printed_and_auth_is_required() {
        let c: SnowflakeConfig = serde_json::from_value(serde_json::json!({
            "name": "sf", "account": "a", "user": "u", "password": "hunter2", "query": "select 1"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut out = Vec::new();
        c.validate(&mut out);
        assert!(out.is_empty(), "{out:?}");
        let mut c2 = c.clone();
        c2.password = None;
        c2.url = Some("http://127.0.0.1:1/x".into());
        let mut out = Vec::new();
        c2.validate(&mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
