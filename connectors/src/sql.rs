//! What the SQL sources (Postgres, Snowflake) share: the query contract (`${startTime}` /
//! `${endTime}` become bind parameters, never text), the column plan (a [`ColumnMapping`] or
//! Togai-style column aliases), and the columnar assembly of result rows into canonical batches.
//!
//! A driver turns each result value into a [`Cell`]; [`SqlBatcher`] checks the row (timestamps
//! parse, values fit) and appends it to per-column builders, cutting a batch every
//! [`MAX_BATCH_ROWS`] rows. Rows that cannot become events are [`BadRecord`]s at `row N`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Int64Builder, StringBuilder, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::error::{ConnectorError, ErrorKind};
use crate::file::{BadRecord, ColumnMapping};
use crate::rows::MAX_BATCH_ROWS;
use crate::schema::{self, UTC};

/// Schema-metadata key set on every batch of a SQL source: the source's query, abbreviated.
pub const QUERY_METADATA_KEY: &str = "billrun.source_query";

/// Placeholder replaced by the window start (bound as a parameter).
pub const START_TIME: &str = "${startTime}";
/// Placeholder replaced by the window end (bound as a parameter).
pub const END_TIME: &str = "${endTime}";

/// A secret configuration value (e.g. a password from `${ENV}`): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The SQL text of a source: inline `query` or `query_file` (a path relative to the config file).
/// `query_file` is the way to write `${startTime}` in a billrun.toml today: the core expands
/// `${NAME}` in the TOML text, but not in the files it points to.
pub fn load_query(
    connector: &'static str,
    source: &str,
    query: &Option<String>,
    query_file: &Option<PathBuf>,
) -> Result<String, ConnectorError> {
    match (query, query_file) {
        (Some(q), None) => Ok(q.clone()),
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| {
            ConnectorError::new(connector, source, p.display().to_string(), ErrorKind::Io, format!("cannot read query_file: {e}"))
        }),
        _ => Err(ConnectorError::new(connector, source, "query", ErrorKind::Config, "set exactly one of `query` and `query_file`")),
    }
}

/// Config checks shared by the SQL sources.
pub fn validate_query_keys(query: &Option<String>, query_file: &Option<PathBuf>, out: &mut Vec<(String, String)>) {
    match (query, query_file) {
        (Some(_), Some(_)) => out.push(("query".into(), "set only one of `query` and `query_file`".into())),
        (None, None) => out.push(("query".into(), "a SQL source needs `query` or `query_file`".into())),
        (Some(q), None) if q.trim().is_empty() => out.push(("query".into(), "the query is empty".into())),
        _ => {}
    }
}

/// Which window bound each placeholder of the query stands for, in parameter order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Start,
    End,
}

/// Replace `${startTime}` / `${endTime}` by driver placeholders (`placeholder(n)`, n = 1-based
/// parameter number). Returns the SQL and which bound each parameter is. With `numbered`
/// placeholders (Postgres `$n`) each bound is one parameter however often it appears; with
/// positional ones (Snowflake `?`) every occurrence is its own parameter.
pub fn bind_window(sql: &str, numbered: bool, placeholder: impl Fn(usize) -> String) -> (String, Vec<Bound>) {
    let mut out = String::with_capacity(sql.len());
    let mut params: Vec<Bound> = Vec::new();
    let mut rest = sql;
    loop {
        let next = [(START_TIME, Bound::Start), (END_TIME, Bound::End)]
            .into_iter()
            .filter_map(|(p, b)| rest.find(p).map(|i| (i, p, b)))
            .min_by_key(|(i, _, _)| *i);
        let Some((i, p, b)) = next else { break };
        out.push_str(&rest[..i]);
        let n = match params.iter().position(|x| *x == b) {
            Some(k) if numbered => k + 1,
            _ => {
                params.push(b);
                params.len()
            }
        };
        out.push_str(&placeholder(n));
        rest = &rest[i + p.len()..];
    }
    out.push_str(rest);
    (out, params)
}

/// A placeholder of an aggregate (pushdown) query, in order of appearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `${startTime}` / `${endTime}` of the source's query.
    Window(Bound),
    /// `${param:N}`: the N-th (1-based) [`Param`], here 0-based.
    Param(usize),
}

/// A bind parameter of an aggregate (pushdown) query. Arrays are Postgres only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
    TextArray(Vec<String>),
    IntArray(Vec<i64>),
}

/// A result column of a source's query, as described by the database before reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedColumn {
    pub name: String,
    pub kind: ColKind,
    /// Declared scale of a decimal column, when the database reports one.
    pub scale: Option<u32>,
}

/// The rows of an aggregate (pushdown) query: every value as text (the query casts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggregateOutput {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Which SQL a source speaks (for the pushdown compiler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Snowflake,
}

/// Like [`bind_window`], for aggregate queries: `${startTime}`, `${endTime}` and `${param:N}`
/// become driver placeholders. With `numbered` placeholders each distinct one is one parameter;
/// with positional ones every occurrence is its own. Returns the SQL and the parameters' order.
pub fn bind_all(sql: &str, numbered: bool, placeholder: impl Fn(usize) -> String) -> (String, Vec<Placeholder>) {
    let mut out = String::with_capacity(sql.len());
    let mut order: Vec<Placeholder> = Vec::new();
    let mut rest = sql;
    while let Some(i) = rest.find("${") {
        let tail = &rest[i..];
        let (ph, len) = if tail.starts_with(START_TIME) {
            (Some(Placeholder::Window(Bound::Start)), START_TIME.len())
        } else if tail.starts_with(END_TIME) {
            (Some(Placeholder::Window(Bound::End)), END_TIME.len())
        } else if let Some(body) = tail.strip_prefix("${param:") {
            match body.find('}').map(|j| (j, body[..j].parse::<usize>())) {
                Some((j, Ok(n))) if n >= 1 => (Some(Placeholder::Param(n - 1)), "${param:".len() + j + 1),
                _ => (None, 2),
            }
        } else {
            (None, 2)
        };
        out.push_str(&rest[..i]);
        match ph {
            Some(p) => {
                let n = match order.iter().position(|x| *x == p) {
                    Some(k) if numbered => k + 1,
                    _ => {
                        order.push(p);
                        order.len()
                    }
                };
                out.push_str(&placeholder(n));
            }
            None => out.push_str(&tail[..len]),
        }
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    (out, order)
}

/// The first line of a query, shortened, for error locations and logs.
pub fn query_label(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 {
        format!("query `{}…`", one.chars().take(80).collect::<String>())
    } else {
        format!("query `{one}`")
    }
}

/// The declared type of a result column, as far as billrun cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColKind {
    Text,
    Int,
    Decimal,
    Timestamp,
    Bool,
    Float,
    /// Any other type (name for the error message).
    Other(String),
}

/// One result value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Text(Cow<'a, str>),
    Int(i64),
    /// Exact decimal: mantissa and scale.
    Dec(i128, u32),
    /// Microseconds since the epoch, UTC.
    Ts(i64),
    Bool(bool),
    /// A value the driver could not convert (the row becomes a bad record with this reason).
    Bad(String),
}

/// Format an exact decimal.
pub fn dec_to_string(m: i128, scale: u32) -> String {
    if scale == 0 {
        return m.to_string();
    }
    let neg = m < 0;
    let digits = m.unsigned_abs().to_string();
    let s = scale as usize;
    let padded = if digits.len() <= s { format!("{}{}", "0".repeat(s + 1 - digits.len()), digits) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// Parse exact decimal text (`-12.500`, `3`, `1e3` is refused) into mantissa and scale.
pub fn parse_dec(text: &str) -> Option<(i128, u32)> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut m: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        m = m.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    Some((if neg { -m } else { m }, frac.len() as u32))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    EventId,
    SchemaName,
    AccountId,
    Timestamp,
    IngestedAt,
    Attribute(String),
    Dimension(String),
}

impl Role {
    fn describe(&self) -> String {
        match self {
            Role::EventId => "event_id".into(),
            Role::SchemaName => "schema_name".into(),
            Role::AccountId => "account_id".into(),
            Role::Timestamp => "timestamp".into(),
            Role::IngestedAt => "ingested_at".into(),
            Role::Attribute(n) => format!("attribute `{n}`"),
            Role::Dimension(n) => format!("dimension `{n}`"),
        }
    }
}

/// Togai-style column aliases used when a SQL source has no `mapping`.
pub const ALIAS_HELP: &str = "without a [sources.mapping], the query's columns must be named with Togai's aliases: \
`id`, `schemaName`, `accountId`, `timestamp`, optional `ingestedAt`, and `attributes.<name>` / `dimensions.<name>` \
(e.g. SELECT event_id AS id, 'api_call' AS \"schemaName\", ...)";

/// How result columns become canonical columns.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    /// (role, result column index), core roles first.
    targets: Vec<(Role, usize)>,
    /// Constant schema name (mapping `schema_name_value`).
    schema_const: Option<String>,
    kinds: Vec<ColKind>,
    names: Vec<String>,
}

impl ColumnPlan {
    /// Plan from the result's column names and kinds. With `mapping`, columns are looked up by
    /// the mapped names; without, by Togai's aliases, and any other column is an error (nothing
    /// read is silently ignored).
    pub fn new(names: &[String], kinds: &[ColKind], mapping: Option<&ColumnMapping>) -> Result<ColumnPlan, (ErrorKind, String)> {
        let find = |col: &str, role: &Role| -> Result<usize, (ErrorKind, String)> {
            let hits: Vec<usize> = names.iter().enumerate().filter(|(_, n)| n.as_str() == col).map(|(i, _)| i).collect();
            match hits.as_slice() {
                [i] => Ok(*i),
                [] => Err((
                    ErrorKind::Config,
                    format!(
                        "column `{col}` (for {}) is not in the result; the query returns: {}",
                        role.describe(),
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    ),
                )),
                _ => Err((ErrorKind::Config, format!("column `{col}` appears more than once in the result"))),
            }
        };
        let mut targets = Vec::new();
        let mut schema_const = None;
        match mapping {
            Some(m) => {
                for (role, col) in [(Role::EventId, &m.event_id), (Role::AccountId, &m.account_id), (Role::Timestamp, &m.timestamp)] {
                    let i = find(col, &role)?;
                    targets.push((role, i));
                }
                match (&m.schema_name, &m.schema_name_value) {
                    (Some(c), _) => targets.push((Role::SchemaName, find(c, &Role::SchemaName)?)),
                    (None, Some(v)) => schema_const = Some(v.clone()),
                    (None, None) => return Err((ErrorKind::Config, "mapping: set `schema_name` or `schema_name_value`".into())),
                }
                if let Some(c) = &m.ingested_at {
                    targets.push((Role::IngestedAt, find(c, &Role::IngestedAt)?));
                }
                for (a, c) in &m.attributes {
                    let r = Role::Attribute(a.clone());
                    targets.push((r.clone(), find(c, &r)?));
                }
                for (d, c) in &m.dimensions {
                    let r = Role::Dimension(d.clone());
                    targets.push((r.clone(), find(c, &r)?));
                }
            }
            None => {
                let mut attrs = BTreeMap::new();
                let mut dims = BTreeMap::new();
                let mut seen = std::collections::BTreeSet::new();
                for (i, n) in names.iter().enumerate() {
                    if !seen.insert(n.as_str()) {
                        return Err((ErrorKind::Config, format!("column `{n}` appears more than once in the result")));
                    }
                    let role = match n.as_str() {
                        "id" => Role::EventId,
                        "schemaName" => Role::SchemaName,
                        "accountId" => Role::AccountId,
                        "timestamp" => Role::Timestamp,
                        "ingestedAt" => Role::IngestedAt,
                        other => {
                            if let Some(a) = other.strip_prefix("attributes.").filter(|a| !a.is_empty()) {
                                attrs.insert(a.to_string(), i);
                                continue;
                            }
                            if let Some(d) = other.strip_prefix("dimensions.").filter(|d| !d.is_empty()) {
                                dims.insert(d.to_string(), i);
                                continue;
                            }
                            return Err((ErrorKind::Config, format!("result column `{other}` is not a Togai alias; {ALIAS_HELP}")));
                        }
                    };
                    targets.push((role, i));
                }
                for required in [Role::EventId, Role::SchemaName, Role::AccountId, Role::Timestamp] {
                    if !targets.iter().any(|(r, _)| *r == required) {
                        return Err((ErrorKind::Config, format!("the result has no column for {}; {ALIAS_HELP}", required.describe())));
                    }
                }
                targets.extend(attrs.into_iter().map(|(a, i)| (Role::Attribute(a), i)));
                targets.extend(dims.into_iter().map(|(d, i)| (Role::Dimension(d), i)));
            }
        }
        // Canonical order: core columns, attributes by name, dimensions by name.
        let rank = |r: &Role| match r {
            Role::EventId => (0, String::new()),
            Role::SchemaName => (1, String::new()),
            Role::AccountId => (2, String::new()),
            Role::Timestamp => (3, String::new()),
            Role::IngestedAt => (4, String::new()),
            Role::Attribute(a) => (5, a.clone()),
            Role::Dimension(d) => (6, d.clone()),
        };
        targets.sort_by_key(|(r, _)| rank(r));
        for (role, i) in &targets {
            check_kind(&names[*i], role, &kinds[*i])?;
        }
        Ok(ColumnPlan { targets, schema_const, kinds: kinds.to_vec(), names: names.to_vec() })
    }
}

fn check_kind(col: &str, role: &Role, kind: &ColKind) -> Result<(), (ErrorKind, String)> {
    let ok = match (role, kind) {
        (_, ColKind::Float) => {
            let (what, store) = if matches!(role, Role::Attribute(_)) {
                ("a quantity", "NUMERIC/DECIMAL or text")
            } else {
                ("an identifier or label", "text")
            };
            return Err((
                ErrorKind::UnsupportedType,
                format!(
                    "column `{col}` (for {}) is binary floating point: billrun does not read it as {what}; cast it to {store} in the query",
                    role.describe()
                ),
            ));
        }
        (Role::Timestamp | Role::IngestedAt, k) => matches!(k, ColKind::Timestamp | ColKind::Text),
        (Role::Attribute(_), k) => matches!(k, ColKind::Int | ColKind::Decimal | ColKind::Text),
        (_, k) => matches!(k, ColKind::Text | ColKind::Int | ColKind::Decimal | ColKind::Bool),
    };
    if ok {
        return Ok(());
    }
    let need = match role {
        Role::Timestamp | Role::IngestedAt => "a timestamp, date or ISO-8601 text column",
        Role::Attribute(_) => "an integer, NUMERIC/DECIMAL or text column",
        _ => "a text, integer, decimal or boolean column",
    };
    let got = match kind {
        ColKind::Other(n) => n.clone(),
        k => format!("{k:?}").to_lowercase(),
    };
    Err((ErrorKind::UnsupportedType, format!("column `{col}` (for {}) has type {got}; billrun needs {need}", role.describe())))
}

enum Builder {
    Text(StringBuilder),
    Ts(Vec<Option<i64>>),
    Int(Int64Builder),
    Dec(Vec<Option<(i128, u32)>>),
}

/// Appends result rows to canonical batches.
pub struct SqlBatcher {
    plan: ColumnPlan,
    builders: Vec<Builder>,
    rows: usize,
    rows_seen: u64,
    metadata: HashMap<String, String>,
    pub batches: Vec<RecordBatch>,
    pub bad_records: Vec<BadRecord>,
    label: String,
}

impl SqlBatcher {
    pub fn new(plan: ColumnPlan, label: &str) -> SqlBatcher {
        let metadata = HashMap::from([(QUERY_METADATA_KEY.to_string(), label.to_string())]);
        let mut b = SqlBatcher {
            builders: Vec::new(),
            plan,
            rows: 0,
            rows_seen: 0,
            metadata,
            batches: Vec::new(),
            bad_records: Vec::new(),
            label: label.to_string(),
        };
        b.builders = b.fresh_builders();
        b
    }

    fn fresh_builders(&self) -> Vec<Builder> {
        self.plan
            .targets
            .iter()
            .map(|(role, i)| match (role, &self.plan.kinds[*i]) {
                (Role::Timestamp | Role::IngestedAt, _) => Builder::Ts(Vec::with_capacity(1024)),
                (Role::Attribute(_), ColKind::Int) => Builder::Int(Int64Builder::new()),
                (Role::Attribute(_), ColKind::Decimal) => Builder::Dec(Vec::with_capacity(1024)),
                _ => Builder::Text(StringBuilder::new()),
            })
            .collect()
    }

    /// Number of result rows seen so far (events + bad records).
    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// Append one result row (`cells` indexed like the result columns). A row whose values
    /// cannot become an event is recorded as a bad record and not appended.
    pub fn push(&mut self, cells: &[Cell<'_>]) -> Result<(), ConnectorError> {
        self.rows_seen += 1;
        // Validate first, so a bad row leaves no partial column values behind.
        let mut ts_vals: Vec<Option<i64>> = Vec::with_capacity(2);
        let mut problems: Vec<String> = Vec::new();
        for (role, i) in &self.plan.targets {
            let cell = &cells[*i];
            if let Cell::Bad(why) = cell {
                problems.push(format!("column `{}`: {why}", self.plan.names[*i]));
                continue;
            }
            if matches!(role, Role::Timestamp | Role::IngestedAt) {
                let v = match cell {
                    Cell::Null => None,
                    Cell::Ts(us) => Some(*us),
                    Cell::Text(t) => match schema::parse_timestamp_micros(t) {
                        Ok(us) => Some(us),
                        Err(e) => {
                            problems.push(format!("column `{}`: {e}", self.plan.names[*i]));
                            None
                        }
                    },
                    other => {
                        problems.push(format!("column `{}`: {other:?} is not a timestamp", self.plan.names[*i]));
                        None
                    }
                };
                ts_vals.push(v);
            }
        }
        if !problems.is_empty() {
            let raw = self
                .plan
                .targets
                .iter()
                .map(|(_, i)| format!("{}={}", self.plan.names[*i], cell_text(&cells[*i]).unwrap_or_else(|| "NULL".into())))
                .collect::<Vec<_>>()
                .join(" ");
            self.bad_records.push(BadRecord {
                location: format!("{}:row {}", self.label, self.rows_seen),
                raw,
                error: problems.join("; "),
            });
            return Ok(());
        }
        let mut ts_iter = ts_vals.into_iter();
        for ((_, i), b) in self.plan.targets.iter().zip(self.builders.iter_mut()) {
            let cell = &cells[*i];
            match b {
                Builder::Ts(v) => v.push(ts_iter.next().flatten()),
                Builder::Text(sb) => match cell_text(cell) {
                    Some(t) => sb.append_value(t),
                    None => sb.append_null(),
                },
                Builder::Int(ib) => match cell {
                    Cell::Int(v) => ib.append_value(*v),
                    _ => ib.append_null(),
                },
                Builder::Dec(v) => v.push(match cell {
                    Cell::Dec(m, s) => Some((*m, *s)),
                    Cell::Int(x) => Some((i128::from(*x), 0)),
                    _ => None,
                }),
            }
        }
        self.rows += 1;
        if self.rows >= MAX_BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn err(&self, msg: String) -> ConnectorError {
        ConnectorError::new("sql", "", &self.label, ErrorKind::Format, msg)
    }

    /// Cut the rows so far into a batch.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.rows == 0 {
            return Ok(());
        }
        let n = self.rows;
        let fresh = self.fresh_builders();
        let builders = std::mem::replace(&mut self.builders, fresh);
        self.rows = 0;
        let mut fields = schema::core_fields();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len() + 4);
        let mut slots: Vec<Option<ArrayRef>> = vec![None; 5];
        for ((role, i), b) in self.plan.targets.iter().zip(builders) {
            let arr: ArrayRef = match b {
                Builder::Text(mut sb) => Arc::new(sb.finish()),
                Builder::Ts(v) => Arc::new(TimestampMicrosecondArray::from(v).with_timezone(UTC)),
                Builder::Int(mut ib) => Arc::new(ib.finish()),
                Builder::Dec(v) => {
                    let scale = v.iter().flatten().map(|(_, s)| *s).max().unwrap_or(0);
                    if scale > 38 {
                        return Err(self.err(format!("column `{}`: scale {scale} is more than 38 digits", self.plan.names[*i])));
                    }
                    let mut out = Vec::with_capacity(v.len());
                    for x in v {
                        out.push(match x {
                            None => None,
                            Some((m, s)) => Some(
                                pow10(scale - s).and_then(|f| m.checked_mul(f)).filter(|r| r.unsigned_abs() < 10u128.pow(38)).ok_or_else(
                                    || {
                                        self.err(format!(
                                            "column `{}`: {} does not fit 38 digits at scale {scale}",
                                            self.plan.names[*i],
                                            dec_to_string(m, s)
                                        ))
                                    },
                                )?,
                            ),
                        });
                    }
                    Arc::new(Decimal128Array::from(out).with_precision_and_scale(38, scale as i8).map_err(|e| self.err(e.to_string()))?)
                }
            };
            match role {
                Role::EventId => slots[0] = Some(arr),
                Role::SchemaName => slots[1] = Some(arr),
                Role::AccountId => slots[2] = Some(arr),
                Role::Timestamp => slots[3] = Some(arr),
                Role::IngestedAt => slots[4] = Some(arr),
                Role::Attribute(a) => {
                    fields.push(Field::new(schema::attribute_column(a), arr.data_type().clone(), true));
                    columns.push(arr);
                }
                Role::Dimension(d) => {
                    fields.push(Field::new(schema::dimension_column(d), DataType::Utf8, true));
                    columns.push(arr);
                }
            }
        }
        if slots[1].is_none() {
            slots[1] = Some(match &self.plan.schema_const {
                Some(v) => Arc::new(arrow::array::StringArray::from(vec![Some(v.as_str()); n])),
                None => Arc::new(arrow::array::StringArray::new_null(n)),
            });
        }
        if slots[4].is_none() {
            slots[4] = Some(Arc::new(TimestampMicrosecondArray::new_null(n).with_timezone(UTC)));
        }
        let mut all: Vec<ArrayRef> = slots.into_iter().map(|s| s.expect("core column")).collect();
        all.extend(columns);
        let schema = Arc::new(Schema::new(fields).with_metadata(self.metadata.clone()));
        let batch = RecordBatch::try_new(schema, all).map_err(|e| self.err(format!("building Arrow batch: {e}")))?;
        debug_assert!(schema::check_canonical(&batch).is_ok());
        self.batches.push(batch);
        Ok(())
    }

    /// Flush and return (batches, bad records).
    pub fn finish(mut self) -> Result<(Vec<RecordBatch>, Vec<BadRecord>), ConnectorError> {
        self.flush()?;
        Ok((self.batches, self.bad_records))
    }
}

fn cell_text(c: &Cell<'_>) -> Option<String> {
    match c {
        Cell::Null => None,
        Cell::Text(t) => Some(t.to_string()),
        Cell::Int(v) => Some(v.to_string()),
        Cell::Dec(m, s) => Some(dec_to_string(*m, *s)),
        Cell::Ts(us) => Some(
            chrono::DateTime::from_timestamp_micros(*us)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_else(|| us.to_string()),
        ),
        Cell::Bool(b) => Some(b.to_string()),
        Cell::Bad(w) => Some(format!("<{w}>")),
    }
}

/// Bounded retries with exponential backoff: attempt `k` (0-based) waits `base · 2^k`, capped.
pub fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((250u64 << attempt.min(5)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_placeholders_become_parameters() {
        let (sql, p) =
            bind_window("SELECT * FROM e WHERE ts >= ${startTime} AND ts < ${endTime} OR ts = ${startTime}", true, |n| format!("${n}"));
        assert_eq!(sql, "SELECT * FROM e WHERE ts >= $1 AND ts < $2 OR ts = $1");
        assert_eq!(p, vec![Bound::Start, Bound::End]);
        let (sql, p) = bind_window("x < ${endTime} and y >= ${startTime} and z < ${endTime}", false, |_| "?".into());
        assert_eq!(sql, "x < ? and y >= ? and z < ?");
        assert_eq!(p, vec![Bound::End, Bound::Start, Bound::End]);
        let (sql, p) = bind_window("'${startTime}' -- no splicing", true, |n| format!("${n}"));
        assert_eq!(sql, "'$1' -- no splicing");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn aggregate_placeholders_in_order() {
        let q =
            "WITH u AS (SELECT * FROM e WHERE ts < ${endTime} AND ts >= ${startTime}) SELECT ${param:2}, ${param:1}, ${param:2}, '${x}'";
        let (sql, p) = bind_all(q, true, |n| format!("${n}"));
        assert_eq!(sql, "WITH u AS (SELECT * FROM e WHERE ts < $1 AND ts >= $2) SELECT $3, $4, $3, '${x}'");
        assert_eq!(
            p,
            vec![Placeholder::Window(Bound::End), Placeholder::Window(Bound::Start), Placeholder::Param(1), Placeholder::Param(0)]
        );
        let (sql, p) = bind_all(q, false, |_| "?".into());
        assert_eq!(sql.matches('?').count(), 5);
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn decimals_round_trip() {
        assert_eq!(dec_to_string(-1250, 3), "-1.250");
        assert_eq!(dec_to_string(5, 3), "0.005");
        assert_eq!(parse_dec("-0.005"), Some((-5, 3)));
        assert_eq!(parse_dec("12"), Some((12, 0)));
        assert_eq!(parse_dec("1e3"), None);
        assert_eq!(parse_dec("."), None);
    }

    #[test]
    fn alias_plan_refuses_unknown_columns_and_floats() {
        let names: Vec<String> =
            ["id", "schemaName", "accountId", "timestamp", "attributes.gb", "dimensions.region"].map(String::from).to_vec();
        let mut kinds = vec![ColKind::Text, ColKind::Text, ColKind::Text, ColKind::Timestamp, ColKind::Decimal, ColKind::Text];
        assert!(ColumnPlan::new(&names, &kinds, None).is_ok());
        kinds[4] = ColKind::Float;
        let e = ColumnPlan::new(&names, &kinds, None).unwrap_err();
        assert!(e.1.contains("attributes.gb") && e.1.contains("binary floating point"), "{}", e.1);
        let mut names2 = names.clone();
        names2[5] = "region".into();
        let e = ColumnPlan::new(&names2, &vec![ColKind::Text; 6], None).unwrap_err();
        assert!(e.1.contains("`region` is not a Togai alias"), "{}", e.1);
    }
}
