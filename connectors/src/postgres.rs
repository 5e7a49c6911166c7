//! The Postgres source: one SQL query over the run's window, rows streamed (`query_raw`, binary
//! results) into canonical Arrow batches.
//!
//! - `${startTime}` / `${endTime}` in the query become `$1` / `$2`, bound as `timestamptz`
//!   parameters from the [`ReadWindow`]; the window is never spliced into the SQL text. An open
//!   bound is bound as `-infinity` / `infinity`.
//! - Values are decoded from Postgres' binary format here (no float on the way): `numeric` →
//!   exact Decimal128 (the batch's largest scale), integers → Int64, text → Utf8, `timestamptz` →
//!   µs UTC (`timestamp` without zone is taken as UTC, `date` as midnight UTC). `float4/float8`
//!   anywhere in the mapping is an error.
//! - Connection failures (connect, or the connection lost while reading) are retried with
//!   exponential backoff, `retries` times; each retry restarts the query and discards what was
//!   read. SQL errors are not retried. The password is never logged.

use std::borrow::Cow;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use futures::TryStreamExt;
use serde::Deserialize;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::error::{ConnectorError, ErrorKind};
use crate::file::{ColumnMapping, SourceOutput};
use crate::source::ReadWindow;
use crate::sql::{self, AggregateOutput, Bound, Cell, ColKind, ColumnPlan, Param, Placeholder, Secret, SqlBatcher};

pub const CONNECTOR: &str = "postgres";

/// TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS if the server offers it (certificate verified when used).
    Prefer,
    /// TLS, certificate verified against the system roots (and `ssl_root_cert`).
    Require,
}

/// `[[sources]] type = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// Only as `${ENV_VAR}` in billrun.toml; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    pub dbname: String,
    #[serde(default)]
    pub sslmode: SslMode,
    /// Extra PEM root certificate(s) for TLS, relative to the config file.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// The SQL; `${startTime}` / `${endTime}` are bound as parameters.
    #[serde(default)]
    pub query: Option<String>,
    /// The SQL in a file, relative to the config file.
    #[serde(default)]
    pub query_file: Option<PathBuf>,
    /// Column mapping; without one, Togai's column aliases are expected.
    #[serde(default)]
    pub mapping: Option<ColumnMapping>,
    /// Compute the usage meters inside Postgres (see billrun's pushdown); only the usage table
    /// comes back.
    #[serde(default)]
    pub pushdown: bool,
    /// Retries on connection failures (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Connect timeout in seconds (default 10).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_retries() -> u32 {
    3
}
fn default_connect_timeout() -> u64 {
    10
}

impl PostgresConfig {
    pub fn validate(&self, out: &mut Vec<(String, String)>) {
        sql::validate_query_keys(&self.query, &self.query_file, out);
        if self.retries > 10 {
            out.push(("retries".into(), "at most 10 retries".into()));
        }
        if self.ssl_root_cert.is_some() && self.sslmode == SslMode::Disable {
            out.push(("ssl_root_cert".into(), "set sslmode = \"require\" (or \"prefer\") to use ssl_root_cert".into()));
        }
    }

    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.query_file, &mut self.ssl_root_cert].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user).dbname(&self.dbname).application_name("billrun");
        c.connect_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)));
        if let Some(p) = &self.password {
            c.password(p.0.as_bytes());
        }
        c.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        });
        c
    }

    /// `user@host:port/dbname` — for messages; no password.
    fn target(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// Any value, as raw binary bytes (decoded by [`decode`] with the column's type).
struct RawValue<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Microseconds between 1970-01-01 and Postgres' epoch 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A window bound as `timestamptz` (µs since the Unix epoch; `None` = ±infinity).
#[derive(Debug)]
struct PgTimestamp(Option<i64>, Bound);

impl ToSql for PgTimestamp {
    fn to_sql(&self, _: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let v = match (self.0, self.1) {
            (Some(us), _) => us.checked_sub(PG_EPOCH_US).ok_or("timestamp out of range")?,
            (None, Bound::Start) => i64::MIN,
            (None, Bound::End) => i64::MAX,
        };
        out.extend_from_slice(&v.to_be_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }
    tokio_postgres::types::to_sql_checked!();
}

fn kind_of(ty: &Type) -> ColKind {
    match *ty {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UUID => ColKind::Text,
        Type::INT2 | Type::INT4 | Type::INT8 => ColKind::Int,
        Type::NUMERIC => ColKind::Decimal,
        Type::TIMESTAMPTZ | Type::TIMESTAMP | Type::DATE => ColKind::Timestamp,
        Type::BOOL => ColKind::Bool,
        Type::FLOAT4 | Type::FLOAT8 => ColKind::Float,
        _ => ColKind::Other(ty.name().to_string()),
    }
}

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into().map_err(|_| format!("expected {N} bytes, got {}", raw.len()))
}

/// Postgres binary `numeric` → exact (mantissa, scale); NaN/±Infinity and more than 38 digits
/// are errors.
pub(crate) fn decode_numeric(raw: &[u8]) -> Result<(i128, u32), String> {
    if raw.len() < 8 {
        return Err("truncated numeric".into());
    }
    let h = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    let ndigits = h(0) as usize;
    let weight = h(2) as i16 as i64;
    let sign = h(4);
    let dscale = h(6) as u32;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN is not a quantity".into()),
        0xD000 | 0xF000 => return Err("Infinity is not a quantity".into()),
        _ => return Err("bad numeric sign".into()),
    }
    if raw.len() != 8 + 2 * ndigits {
        return Err("truncated numeric".into());
    }
    let too_big = || "more than 38 significant digits".to_string();
    let mut m: i128 = 0;
    for k in 0..ndigits {
        m = m.checked_mul(10_000).and_then(|m| m.checked_add(i128::from(h(8 + 2 * k)))).ok_or_else(too_big)?;
    }
    // value = m · 10000^(weight − ndigits + 1); mantissa at dscale = value · 10^dscale.
    let e = 4 * (weight - ndigits as i64 + 1) + i64::from(dscale);
    if e >= 0 {
        let f = 10i128.checked_pow(u32::try_from(e).map_err(|_| too_big())?).ok_or_else(too_big)?;
        m = m.checked_mul(f).ok_or_else(too_big)?;
    } else if m != 0 {
        let f = 10i128.checked_pow(u32::try_from(-e).map_err(|_| too_big())?);
        match f {
            Some(f) if m % f == 0 => m /= f,
            _ => return Err("numeric digits beyond its scale".into()),
        }
    }
    if m.unsigned_abs() >= 10u128.pow(38) {
        return Err(too_big());
    }
    Ok((if sign == 0x4000 { -m } else { m }, dscale))
}

fn decode<'a>(ty: &Type, raw: Option<&'a [u8]>) -> Cell<'a> {
    let Some(raw) = raw else { return Cell::Null };
    let r: Result<Cell<'a>, String> = (|| {
        Ok(match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Cell::Text(Cow::Borrowed(std::str::from_utf8(raw).map_err(|e| e.to_string())?))
            }
            Type::UUID => Cell::Text(Cow::Owned({
                let h = hex::encode(raw);
                if h.len() != 32 {
                    return Err("bad uuid".into());
                }
                format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
            })),
            Type::INT2 => Cell::Int(i64::from(i16::from_be_bytes(be(raw)?))),
            Type::INT4 => Cell::Int(i64::from(i32::from_be_bytes(be(raw)?))),
            Type::INT8 => Cell::Int(i64::from_be_bytes(be(raw)?)),
            Type::BOOL => Cell::Bool(raw.first().is_some_and(|b| *b != 0)),
            Type::NUMERIC => {
                let (m, s) = decode_numeric(raw)?;
                Cell::Dec(m, s)
            }
            Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                let v = i64::from_be_bytes(be(raw)?);
                if v == i64::MAX || v == i64::MIN {
                    return Err("infinite timestamp".into());
                }
                Cell::Ts(v.checked_add(PG_EPOCH_US).ok_or("timestamp out of range")?)
            }
            Type::DATE => {
                let d = i32::from_be_bytes(be(raw)?);
                if d == i32::MAX || d == i32::MIN {
                    return Err("infinite date".into());
                }
                Cell::Ts(i64::from(d) * 86_400_000_000 + PG_EPOCH_US)
            }
            _ => return Err(format!("unsupported type {}", ty.name())),
        })
    })();
    r.unwrap_or_else(Cell::Bad)
}

enum Failure {
    /// Worth another attempt (connection refused, reset, closed).
    Transient(String),
    Fatal(ConnectorError),
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        // The server answered: admin shutdown / crash codes are transient, SQL errors are not.
        return e.code().is_some_and(|c| matches!(c.code(), "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006"));
    }
    true
}

fn tls_connector(cfg: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs();
    for c in native {
        let _ = roots.add(c);
    }
    if let Some(p) = &cfg.ssl_root_cert {
        let pem = std::fs::read(p).map_err(|e| format!("cannot read ssl_root_cert {}: {e}", p.display()))?;
        let mut n = 0;
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: rustls::pki_types::CertificateDer<'static> = c.map_err(|e| format!("ssl_root_cert {}: {e}", p.display()))?;
            roots.add(c).map_err(|e| format!("ssl_root_cert {}: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("ssl_root_cert {} holds no PEM certificate", p.display()));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn rustls_native_certs() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let r = rustls_native_certs::load_native_certs();
    for e in &r.errors {
        tracing::debug!(error = %e, "postgres: a system root certificate could not be loaded");
    }
    r.certs
}

async fn connect(cfg: &PostgresConfig, label: &str) -> Result<tokio_postgres::Client, Failure> {
    let fatal = |kind, msg: String| Failure::Fatal(ConnectorError::new(CONNECTOR, &cfg.name, label, kind, msg));
    let pg = cfg.pg_config();
    let client = if cfg.sslmode == SslMode::Disable {
        let (client, conn) =
            pg.connect(tokio_postgres::NoTls).await.map_err(|e| Failure::Transient(format!("cannot connect to {}: {e}", cfg.target())))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        client
    } else {
        let tls = tls_connector(cfg).map_err(|m| fatal(ErrorKind::Config, m))?;
        let (client, conn) = pg.connect(tls).await.map_err(|e| Failure::Transient(format!("cannot connect to {}: {e}", cfg.target())))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        client
    };
    Ok(client)
}

fn classify(cfg: &PostgresConfig, label: &str, e: tokio_postgres::Error, what: &str) -> Failure {
    let msg = match e.as_db_error() {
        Some(db) => {
            format!("{what}: {} ({}){}", db.message(), db.code().code(), db.hint().map(|h| format!("; hint: {h}")).unwrap_or_default())
        }
        None => format!("{what} on {}: {e}", cfg.target()),
    };
    if is_transient(&e) {
        Failure::Transient(msg)
    } else {
        Failure::Fatal(ConnectorError::new(CONNECTOR, &cfg.name, label, ErrorKind::Config, msg))
    }
}

async fn attempt(
    cfg: &PostgresConfig,
    sql_text: &str,
    params: &[Bound],
    window: &ReadWindow,
    label: &str,
) -> Result<SourceOutput, Failure> {
    let fatal = |kind, msg: String| Failure::Fatal(ConnectorError::new(CONNECTOR, &cfg.name, label, kind, msg));
    let client = connect(cfg, label).await?;
    let classify = |e: tokio_postgres::Error, what: &str| classify(cfg, label, e, what);
    let types: Vec<Type> = params.iter().map(|_| Type::TIMESTAMPTZ).collect();
    let stmt = client.prepare_typed(sql_text, &types).await.map_err(|e| classify(e, "the query does not prepare"))?;
    let names: Vec<String> = stmt.columns().iter().map(|c| c.name().to_string()).collect();
    let col_types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    let kinds: Vec<ColKind> = col_types.iter().map(kind_of).collect();
    let plan = ColumnPlan::new(&names, &kinds, cfg.mapping.as_ref()).map_err(|(k, m)| fatal(k, m))?;
    let bound: Vec<PgTimestamp> = params.iter().map(|b| bound(window, *b)).collect();
    let stream = client.query_raw(&stmt, bound.iter().map(|p| p as &dyn ToSql)).await.map_err(|e| classify(e, "the query failed"))?;
    let mut stream = pin!(stream);
    let mut batcher = SqlBatcher::new(plan, label);
    while let Some(row) = stream.try_next().await.map_err(|e| classify(e, &format!("reading row {}", batcher.rows_seen() + 1)))? {
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(names.len());
        for (i, ty) in col_types.iter().enumerate() {
            let raw: Option<RawValue<'_>> = row.try_get(i).map_err(|e| fatal(ErrorKind::Format, format!("column `{}`: {e}", names[i])))?;
            cells.push(decode(ty, raw.map(|r| r.0)));
        }
        batcher.push(&cells).map_err(|e| Failure::Fatal(ConnectorError { connector: CONNECTOR, source_name: cfg.name.clone(), ..e }))?;
    }
    let rows = batcher.rows_seen();
    let (batches, bad_records) =
        batcher.finish().map_err(|e| Failure::Fatal(ConnectorError { connector: CONNECTOR, source_name: cfg.name.clone(), ..e }))?;
    tracing::info!(source = %cfg.name, target = %cfg.target(), rows, bad = bad_records.len(), "postgres source read");
    Ok(SourceOutput { batches, bad_records, files: Vec::new() })
}

async fn with_retries<T, F, Fut>(cfg: &PostgresConfig, label: &str, mut attempt: F) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Ok(out) => return Ok(out),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(msg)) if tries < cfg.retries => {
                let wait = sql::backoff(tries);
                tries += 1;
                tracing::warn!(source = %cfg.name, target = %cfg.target(), attempt = tries, of = cfg.retries, wait_ms = wait.as_millis() as u64, error = %msg, "postgres: transient failure, retrying");
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

fn bound(window: &ReadWindow, b: Bound) -> PgTimestamp {
    PgTimestamp(if b == Bound::Start { window.start_us } else { window.end_us }, b)
}

/// The columns of the source's query (name, kind, declared scale of `numeric(p, s)`), from the
/// prepared statement; no row is read.
pub async fn describe_postgres(cfg: &PostgresConfig) -> Result<Vec<sql::DescribedColumn>, ConnectorError> {
    let text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = sql::query_label(&text);
    let (sql_text, params) = sql::bind_window(&text, true, |n| format!("${n}"));
    with_retries(cfg, &label, || async {
        let client = connect(cfg, &label).await?;
        let types: Vec<Type> = params.iter().map(|_| Type::TIMESTAMPTZ).collect();
        let stmt = client.prepare_typed(&sql_text, &types).await.map_err(|e| classify(cfg, &label, e, "the query does not prepare"))?;
        let mut out = Vec::new();
        for c in stmt.columns() {
            // a numeric column's declared scale is not in the prepared statement: ask the catalog
            let scale = match (c.type_(), c.table_oid(), c.column_id()) {
                (&Type::NUMERIC, Some(t), Some(a)) => client
                    .query_opt("SELECT CASE WHEN atttypmod >= 4 THEN (atttypmod - 4) & 65535 END FROM pg_attribute WHERE attrelid = $1 AND attnum = $2", &[&t, &a])
                    .await
                    .map_err(|e| classify(cfg, &label, e, "reading a column's scale"))?
                    .and_then(|r| r.get::<_, Option<i32>>(0))
                    .map(|s| s as u32),
                _ => None,
            };
            out.push(sql::DescribedColumn { name: c.name().to_string(), kind: kind_of(c.type_()), scale });
        }
        Ok(out)
    })
    .await
}

/// A bind value of an aggregate query.
#[derive(Debug)]
enum PgParam<'a> {
    Ts(PgTimestamp),
    Other(&'a Param),
}

impl ToSql for PgParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            PgParam::Ts(t) => t.to_sql(ty, out),
            PgParam::Other(Param::Text(s)) => s.to_sql(ty, out),
            PgParam::Other(Param::Int(v)) => v.to_sql(ty, out),
            PgParam::Other(Param::TextArray(v)) => v.to_sql(ty, out),
            PgParam::Other(Param::IntArray(v)) => v.to_sql(ty, out),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

fn param_type(p: &Param) -> Type {
    match p {
        Param::Text(_) => Type::TEXT,
        Param::Int(_) => Type::INT8,
        Param::TextArray(_) => Type::TEXT_ARRAY,
        Param::IntArray(_) => Type::INT8_ARRAY,
    }
}

/// Run an aggregate query (meter pushdown) whose every column is text. `${startTime}` /
/// `${endTime}` and `${param:N}` (1-based into `params`) become bind parameters.
pub async fn aggregate_postgres(
    cfg: &PostgresConfig,
    query: &str,
    params: &[Param],
    window: &ReadWindow,
) -> Result<AggregateOutput, ConnectorError> {
    let user_text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = format!("pushdown of {}", sql::query_label(&user_text));
    let (sql_text, order) = sql::bind_all(query, true, |n| format!("${n}"));
    let mut values: Vec<PgParam<'_>> = Vec::with_capacity(order.len());
    let mut types = Vec::with_capacity(order.len());
    for p in &order {
        match p {
            Placeholder::Window(b) => {
                values.push(PgParam::Ts(bound(window, *b)));
                types.push(Type::TIMESTAMPTZ);
            }
            Placeholder::Param(i) => {
                let v = params.get(*i).ok_or_else(|| {
                    ConnectorError::new(CONNECTOR, &cfg.name, &label, ErrorKind::Config, format!("no parameter {}", i + 1))
                })?;
                types.push(param_type(v));
                values.push(PgParam::Other(v));
            }
        }
    }
    with_retries(cfg, &label, || async {
        let client = connect(cfg, &label).await?;
        let stmt =
            client.prepare_typed(&sql_text, &types).await.map_err(|e| classify(cfg, &label, e, "the pushdown query does not prepare"))?;
        let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_string()).collect();
        for c in stmt.columns() {
            if kind_of(c.type_()) != ColKind::Text {
                let msg = format!("aggregate column `{}` is {}, not text", c.name(), c.type_().name());
                return Err(Failure::Fatal(ConnectorError::new(CONNECTOR, &cfg.name, &label, ErrorKind::Format, msg)));
            }
        }
        let rows = client
            .query(&stmt, &values.iter().map(|v| v as &(dyn ToSql + Sync)).collect::<Vec<_>>())
            .await
            .map_err(|e| classify(cfg, &label, e, "the pushdown query failed"))?;
        let rows: Vec<Vec<Option<String>>> =
            rows.iter().map(|r| (0..columns.len()).map(|i| r.get::<_, Option<String>>(i)).collect()).collect();
        tracing::info!(source = %cfg.name, target = %cfg.target(), rows = rows.len(), "postgres pushdown read");
        Ok(AggregateOutput { columns, rows })
    })
    .await
}

/// Read a Postgres source over `window`.
pub async fn read_postgres(cfg: &PostgresConfig, window: &ReadWindow) -> Result<SourceOutput, ConnectorError> {
    let text = sql::load_query(CONNECTOR, &cfg.name, &cfg.query, &cfg.query_file)?;
    let label = sql::query_label(&text);
    let (sql_text, params) = sql::bind_window(&text, true, |n| format!("${n}"));
    with_retries(cfg, &label, || attempt(cfg, &sql_text, &params, window, &label)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[u16], weight: i16, neg: bool, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_is_exact() {
        // 12.5 at scale 1: digits [12, 5000], weight 0
        assert_eq!(decode_numeric(&numeric(&[12, 5000], 0, false, 1)), Ok((125, 1)));
        // 120 at scale 6
        assert_eq!(decode_numeric(&numeric(&[120], 0, false, 6)), Ok((120_000_000, 6)));
        // -0.000123 : digits [1, 2300] (0.0001 2300), weight -1, dscale 6
        assert_eq!(decode_numeric(&numeric(&[1, 2300], -1, true, 6)), Ok((-123, 6)));
        // 1e8 = [1, 0, 0]? PG strips trailing zeros: [1], weight 2
        assert_eq!(decode_numeric(&numeric(&[1], 2, false, 0)), Ok((100_000_000, 0)));
        assert_eq!(decode_numeric(&numeric(&[], 0, false, 2)), Ok((0, 2)));
        let nan = [0u8, 0, 0, 0, 0xC0, 0, 0, 0];
        assert!(decode_numeric(&nan).unwrap_err().contains("NaN"));
        assert!(decode_numeric(&numeric(&[1], 10, false, 0)).unwrap_err().contains("38"));
    }

    #[test]
    fn password_is_not_debug_printed() {
        let c: PostgresConfig = serde_json::from_value(serde_json::json!({
            "name": "pg", "user": "u", "dbname": "d", "password": "hunter2", "query": "select 1"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
