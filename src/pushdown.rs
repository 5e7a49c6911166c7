//! Meter pushdown: for a SQL source marked `pushdown = true` (Postgres, Snowflake) the usage
//! meters are compiled to one SQL query that wraps the source's own query and aggregates inside
//! the database, so only the usage table travels: per (window, reason) the number of events and,
//! for events that count, each meter's COUNT or exact SUM.
//!
//! The query mirrors `ingest` + `meter` step for step (see ARCHITECTURE.md): validity, first-arrival
//! dedup (`ROW_NUMBER` over the account group and event id), known schema, account or alias valid at the event's
//! time, as-of, billing window (half-open, joined on account and time), grace period, then every
//! meter's filters (AND of equality tests), first-truthy matcher/computation pairs, and the
//! UNITS_INVALID / NO_MATCHING_METERS reasons. JSON-logic division keeps 4 decimals half-up and is
//! computed exactly (integer quotient and remainder, never a rounded division). Every value of
//! the catalog (ids, names, strings of meters) and every window is a bind parameter; numbers of
//! meters are inlined from their exact decimal text. What SQL cannot compute exactly the same way
//! is refused with [`PushdownError::Unsupported`] before anything runs.
//!
//! The connectors crate only binds and runs the query and returns text; quantities are parsed
//! here, exactly, into `rust_decimal`.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use crate::catalog::{Aggregation, Catalog, FilterField, Meter};
use crate::ingest::{Reason, Usage};
use crate::jsonlogic::{Ast, Lit, Op, VarRef};
use crate::numeric;
use crate::windows::Window;
use billrun_connectors::source::{aggregate_source, describe_source, source_mapping, source_query};
use billrun_connectors::sql::{ColKind, DescribedColumn, Dialect, Param};
use billrun_connectors::{ConnectorError, ReadWindow, SourceConfig};

/// The largest scale an intermediate value may have (as in `meter`).
const MAX_SCALE: u32 = numeric::MAX_SCALE;

#[derive(Debug, thiserror::Error)]
pub enum PushdownError {
    /// The catalog or the source uses something the SQL compiler cannot compute exactly as the
    /// local path does.
    #[error("source `{source_name}`: meter pushdown cannot compute {what}: {why}; remove `pushdown = true` to meter it locally")]
    Unsupported { source_name: String, what: String, why: String },
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    /// The database answered something that is not the aggregate the query asks for.
    #[error("source `{source_name}`: the pushdown query returned {message}")]
    Result { source_name: String, message: String },
}

impl PushdownError {
    /// A problem in what the user wrote (config/catalog), as opposed to the environment.
    pub fn is_user_input(&self) -> bool {
        matches!(self, PushdownError::Unsupported { .. })
    }
}

/// What a pushed-down source contributes to a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushdownOutput {
    pub usage: Usage,
    pub counts: BTreeMap<Reason, u64>,
    pub events_read: u64,
    pub events_used: u64,
    pub used_by_window: BTreeMap<u32, u64>,
}

impl PushdownOutput {
    /// Add another source's (or the local path's) contribution. COUNT and SUM add up.
    pub fn merge_into(
        self,
        usage: &mut Usage,
        counts: &mut BTreeMap<Reason, u64>,
        events_read: &mut u64,
        events_used: &mut u64,
        used_by_window: &mut BTreeMap<u32, u64>,
    ) {
        for (k, v) in self.usage {
            *usage.entry(k).or_insert(Decimal::ZERO) += v;
        }
        for (r, n) in self.counts {
            *counts.entry(r).or_insert(0) += n;
        }
        *events_read += self.events_read;
        *events_used += self.events_used;
        for (w, n) in self.used_by_window {
            *used_by_window.entry(w).or_insert(0) += n;
        }
    }
}

/// Compute the usage of `source` inside its database.
pub async fn pushdown(
    source: &SourceConfig,
    catalog: &Catalog,
    windows: &[Window],
    as_of_us: i64,
    read: &ReadWindow,
) -> Result<PushdownOutput, PushdownError> {
    let dialect = source.pushdown().ok_or_else(|| PushdownError::Unsupported {
        source_name: source.name().into(),
        what: "this source".into(),
        why: "only postgres and snowflake sources can push meters down".into(),
    })?;
    let columns = describe_source(source, read).await?;
    let user_sql = source_query(source)?;
    let q = compile(source, dialect, &columns, &user_sql, catalog, windows, as_of_us)?;
    let out = aggregate_source(source, &q.sql, &q.params, read).await?;
    q.parse(source.name(), &out.columns, &out.rows)
}

/// A compiled pushdown query and how to read its answer.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<Param>,
    /// Meter ids in the order of the `q_<i>` columns, with their aggregation.
    pub meters: Vec<(String, Aggregation)>,
}

impl Compiled {
    /// Read the aggregate rows: `w`, `reason`, `n`, `q_0`… (all text).
    pub fn parse(&self, source_name: &str, columns: &[String], rows: &[Vec<Option<String>>]) -> Result<PushdownOutput, PushdownError> {
        let bad = |message: String| PushdownError::Result { source_name: source_name.into(), message };
        let want: Vec<String> =
            ["w", "reason", "n"].iter().map(|s| s.to_string()).chain((0..self.meters.len()).map(|i| format!("q_{i}"))).collect();
        let got: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
        if got != want {
            return Err(bad(format!("columns {got:?}, expected {want:?}")));
        }
        let int = |v: &Option<String>, what: &str| -> Result<u64, PushdownError> {
            v.as_deref().and_then(|t| t.trim().parse::<u64>().ok()).ok_or_else(|| bad(format!("{what} {v:?}, not a count")))
        };
        let mut out = PushdownOutput::default();
        for row in rows {
            let reason = int(&row[1], "reason")?;
            let n = int(&row[2], "event count")?;
            out.events_read += n;
            if reason != 0 {
                let r = Reason::from_code(u8::try_from(reason).unwrap_or(0)).ok_or_else(|| bad(format!("reason code {reason}")))?;
                *out.counts.entry(r).or_insert(0) += n;
                continue;
            }
            let w = u32::try_from(int(&row[0], "window")?).map_err(|_| bad("a window id out of range".into()))?;
            out.events_used += n;
            *out.used_by_window.entry(w).or_insert(0) += n;
            for (i, (meter, _)) in self.meters.iter().enumerate() {
                // a window whose events none of a SUM meter's hits: the local path sums nothing to 0
                let value = match row[3 + i].as_deref() {
                    None => Decimal::ZERO,
                    Some(t) => numeric::parse_text(t)
                        .and_then(|(m, s)| numeric::to_decimal(m, s))
                        .ok_or_else(|| bad(format!("`{t}` for meter `{meter}`, not an exact decimal that fits")))?,
                };
                *out.usage.entry((w, meter.clone())).or_insert(Decimal::ZERO) += value;
            }
        }
        Ok(out)
    }
}

/// Quote an identifier (Postgres and Snowflake alike).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A numeric literal from its exact decimal text (digits, `.`, `-` only); Postgres gets a
/// `numeric` (an integer literal would be `int4`, with integer overflow and a `double` SIGN).
fn num_lit(dialect: Dialect, d: Decimal) -> String {
    match dialect {
        Dialect::Postgres => format!("CAST({d} AS NUMERIC)"),
        Dialect::Snowflake => format!("({d})"),
    }
}

struct Gen {
    dialect: Dialect,
    params: Vec<Param>,
    source_name: String,
}

impl Gen {
    fn text(&mut self, s: &str) -> String {
        self.params.push(Param::Text(s.to_string()));
        let p = format!("${{param:{}}}", self.params.len());
        match self.dialect {
            Dialect::Postgres => format!("CAST({p} AS TEXT)"),
            Dialect::Snowflake => p,
        }
    }

    fn int(&mut self, v: i64) -> String {
        self.params.push(Param::Int(v));
        let p = format!("${{param:{}}}", self.params.len());
        match self.dialect {
            Dialect::Postgres => format!("CAST({p} AS BIGINT)"),
            Dialect::Snowflake => p,
        }
    }

    /// `x IN (strings…)`, never null.
    fn in_texts(&mut self, x: &str, items: &[String]) -> String {
        if items.is_empty() {
            return "FALSE".into();
        }
        match self.dialect {
            Dialect::Postgres => {
                self.params.push(Param::TextArray(items.to_vec()));
                format!("COALESCE({x} = ANY(CAST(${{param:{}}} AS TEXT[])), FALSE)", self.params.len())
            }
            Dialect::Snowflake => {
                let ps: Vec<String> = items.iter().map(|s| self.text(s)).collect();
                format!("COALESCE({x} IN ({}), FALSE)", ps.join(", "))
            }
        }
    }

    /// A table of literal rows: PG `unnest` of array parameters, Snowflake `VALUES` of bindings.
    fn table(&mut self, name: &str, cols: &[(&str, bool)], rows: Vec<Vec<Param>>) -> String {
        let names: Vec<String> = cols.iter().map(|(c, _)| c.to_string()).collect();
        match self.dialect {
            Dialect::Postgres => {
                let mut arrays = Vec::new();
                for (k, (_, is_text)) in cols.iter().enumerate() {
                    let p = if *is_text {
                        Param::TextArray(rows.iter().map(|r| if let Param::Text(s) = &r[k] { s.clone() } else { String::new() }).collect())
                    } else {
                        Param::IntArray(rows.iter().map(|r| if let Param::Int(v) = &r[k] { *v } else { 0 }).collect())
                    };
                    self.params.push(p);
                    arrays.push(format!("CAST(${{param:{}}} AS {})", self.params.len(), if *is_text { "TEXT[]" } else { "BIGINT[]" }));
                }
                format!("{name} AS (SELECT * FROM unnest({}) AS t({}))", arrays.join(", "), names.join(", "))
            }
            Dialect::Snowflake => {
                if rows.is_empty() {
                    let nulls: Vec<String> = cols
                        .iter()
                        .map(|(c, is_text)| format!("CAST(NULL AS {}) AS {c}", if *is_text { "VARCHAR" } else { "NUMBER(38, 0)" }))
                        .collect();
                    return format!("{name} AS (SELECT {} WHERE 1 = 0)", nulls.join(", "));
                }
                let mut values = Vec::with_capacity(rows.len());
                for r in rows {
                    let vs: Vec<String> = r
                        .into_iter()
                        .map(|p| match p {
                            Param::Text(s) => self.text(&s),
                            Param::Int(v) => self.int(v),
                            other => unreachable!("{other:?}"),
                        })
                        .collect();
                    values.push(format!("({})", vs.join(", ")));
                }
                format!("{name} AS (SELECT * FROM (VALUES {}) AS t({}))", values.join(", "), names.join(", "))
            }
        }
    }

    fn text_type(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "TEXT",
            Dialect::Snowflake => "VARCHAR",
        }
    }

    /// Microseconds since the epoch of a timestamp/date column (no zone: taken as UTC).
    fn epoch_us(&self, col: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST(EXTRACT(EPOCH FROM {col}) * 1000000 AS BIGINT)"),
            Dialect::Snowflake => format!("DATE_PART(epoch_microsecond, {col})"),
        }
    }

    fn unsupported(&self, what: impl Into<String>, why: impl Into<String>) -> PushdownError {
        PushdownError::Unsupported { source_name: self.source_name.clone(), what: what.into(), why: why.into() }
    }
}

/// Where each canonical field is in the source's result.
struct Fields {
    event_id: String,
    schema_name: String,
    account_id: String,
    timestamp: String,
    ingested_at: Option<String>,
    /// name → (column, declared scale)
    attributes: BTreeMap<String, (String, Option<u32>)>,
    dimensions: BTreeMap<String, String>,
}

fn fields(g: &mut Gen, source: &SourceConfig, columns: &[DescribedColumn]) -> Result<Fields, PushdownError> {
    let find = |name: &str| columns.iter().find(|c| c.name == name);
    let need = |name: &str, role: &str| {
        find(name).ok_or_else(|| {
            let have: Vec<String> = columns.iter().map(|c| format!("`{}`", c.name)).collect();
            PushdownError::Unsupported {
                source_name: source.name().into(),
                what: role.into(),
                why: format!("column `{name}` is not in the query's result ({})", have.join(", ")),
            }
        })
    };
    let mut f = Fields {
        event_id: String::new(),
        schema_name: String::new(),
        account_id: String::new(),
        timestamp: String::new(),
        ingested_at: None,
        attributes: BTreeMap::new(),
        dimensions: BTreeMap::new(),
    };
    let text_of = |g: &Gen, c: &DescribedColumn, role: &str| -> Result<String, PushdownError> {
        match c.kind {
            ColKind::Text => Ok(ident(&c.name)),
            ColKind::Int | ColKind::Decimal | ColKind::Bool => Ok(format!("CAST({} AS {})", ident(&c.name), g.text_type())),
            _ => Err(g.unsupported(role, format!("column `{}` has type {:?}; a text column is needed", c.name, c.kind))),
        }
    };
    let ts_of = |g: &Gen, c: &DescribedColumn, role: &str| -> Result<String, PushdownError> {
        match c.kind {
            ColKind::Timestamp => Ok(g.epoch_us(&ident(&c.name))),
            _ => Err(g.unsupported(role, format!("column `{}` is {:?}; pushdown needs a timestamp or date column", c.name, c.kind))),
        }
    };
    let attr_of = |g: &Gen, c: &DescribedColumn, name: &str| -> Result<(String, Option<u32>), PushdownError> {
        match c.kind {
            // Postgres integers become numeric: integer arithmetic overflows and divides differently
            ColKind::Int if g.dialect == Dialect::Postgres => Ok((format!("CAST({} AS NUMERIC)", ident(&c.name)), Some(0))),
            ColKind::Int => Ok((ident(&c.name), Some(0))),
            ColKind::Decimal => Ok((ident(&c.name), c.scale)),
            _ => Err(g.unsupported(
                format!("attribute `{name}`"),
                format!(
                    "column `{}` is {:?}; pushdown reads attributes from integer or NUMERIC columns (cast text in the query)",
                    c.name, c.kind
                ),
            )),
        }
    };
    match source_mapping(source) {
        Some(m) => {
            f.event_id = text_of(g, need(&m.event_id, "event_id")?, "event_id")?;
            f.account_id = text_of(g, need(&m.account_id, "account_id")?, "account_id")?;
            f.timestamp = ts_of(g, need(&m.timestamp, "timestamp")?, "timestamp")?;
            f.schema_name = match (&m.schema_name, &m.schema_name_value) {
                (Some(c), _) => text_of(g, need(c, "schema_name")?, "schema_name")?,
                (None, Some(v)) => g.text(v),
                (None, None) => return Err(g.unsupported("schema_name", "the mapping sets neither `schema_name` nor `schema_name_value`")),
            };
            if let Some(c) = &m.ingested_at {
                f.ingested_at = Some(ts_of(g, need(c, "ingested_at")?, "ingested_at")?);
            }
            for (a, c) in &m.attributes {
                f.attributes.insert(a.clone(), attr_of(g, need(c, &format!("attribute `{a}`"))?, a)?);
            }
            for (d, c) in &m.dimensions {
                f.dimensions.insert(d.clone(), text_of(g, need(c, &format!("dimension `{d}`"))?, &format!("dimension `{d}`"))?);
            }
        }
        None => {
            let mut seen = BTreeSet::new();
            for c in columns {
                if !seen.insert(c.name.as_str()) {
                    return Err(g.unsupported("the query", format!("column `{}` appears more than once", c.name)));
                }
                match c.name.as_str() {
                    "id" => f.event_id = text_of(g, c, "id")?,
                    "schemaName" => f.schema_name = text_of(g, c, "schemaName")?,
                    "accountId" => f.account_id = text_of(g, c, "accountId")?,
                    "timestamp" => f.timestamp = ts_of(g, c, "timestamp")?,
                    "ingestedAt" => f.ingested_at = Some(ts_of(g, c, "ingestedAt")?),
                    n => {
                        if let Some(a) = n.strip_prefix("attributes.").filter(|a| !a.is_empty()) {
                            f.attributes.insert(a.to_string(), attr_of(g, c, a)?);
                        } else if let Some(d) = n.strip_prefix("dimensions.").filter(|d| !d.is_empty()) {
                            f.dimensions.insert(d.to_string(), text_of(g, c, n)?);
                        } else {
                            return Err(g.unsupported(
                                "the query",
                                format!("result column `{n}` is not a Togai alias; {}", billrun_connectors::sql::ALIAS_HELP),
                            ));
                        }
                    }
                }
            }
            for (v, role) in
                [(&f.event_id, "id"), (&f.schema_name, "schemaName"), (&f.account_id, "accountId"), (&f.timestamp, "timestamp")]
            {
                if v.is_empty() {
                    return Err(
                        g.unsupported("the query", format!("the result has no `{role}` column; {}", billrun_connectors::sql::ALIAS_HELP))
                    );
                }
            }
        }
    }
    Ok(f)
}

// ---------------------------------------------------------------- JSON-logic → SQL

#[derive(Clone)]
enum Num {
    Const(Decimal),
    /// SQL expression and its scale (`None`: not known, e.g. Postgres' unconstrained numeric).
    Col(String, Option<u32>),
}

#[derive(Clone)]
enum Val {
    Bool(String),
    Num(Num),
    Str(String),
    Null,
}

/// Column references of the event CTE: attribute → (column, scale), dimension → column.
struct Scope<'a> {
    attrs: &'a BTreeMap<String, (String, Option<u32>)>,
    dims: &'a BTreeMap<String, String>,
}

fn scale_of(n: &Num) -> Option<u32> {
    match n {
        Num::Const(d) => Some(d.scale()),
        Num::Col(_, s) => *s,
    }
}

fn max_scale(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    Some(a?.max(b?))
}

fn num_sql(g: &Gen, n: &Num) -> String {
    match n {
        Num::Const(d) => num_lit(g.dialect, *d),
        Num::Col(e, _) => e.clone(),
    }
}

fn truthy(v: &Val) -> String {
    match v {
        Val::Bool(e) => format!("COALESCE({e}, FALSE)"),
        Val::Num(Num::Const(d)) => if d.is_zero() { "FALSE" } else { "TRUE" }.into(),
        Val::Num(Num::Col(e, _)) => format!("COALESCE({e} <> 0, FALSE)"),
        Val::Str(e) => format!("COALESCE({e} <> '', FALSE)"),
        Val::Null => "FALSE".into(),
    }
}

fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        _ => unreachable!(),
    }
}

fn compare(g: &Gen, a: Val, b: Val, op: Op) -> Result<String, PushdownError> {
    Ok(match (a, b) {
        (Val::Null, Val::Null) => if matches!(op, Op::Eq | Op::Le | Op::Ge) { "TRUE" } else { "FALSE" }.into(),
        (Val::Null, x) | (x, Val::Null) => match (op, x) {
            (Op::Eq, Val::Bool(e) | Val::Str(e) | Val::Num(Num::Col(e, _))) => format!("({e} IS NULL)"),
            (Op::Ne, Val::Bool(e) | Val::Str(e) | Val::Num(Num::Col(e, _))) => format!("({e} IS NOT NULL)"),
            (Op::Ne, Val::Num(Num::Const(_))) => "TRUE".into(),
            _ => "FALSE".into(),
        },
        (Val::Str(x), Val::Str(y)) => match (g.dialect, op) {
            (_, Op::Eq | Op::Ne) => format!("({x} {} {y})", sql_op(op)),
            // byte order, as polars compares strings
            (Dialect::Postgres, _) => format!("(({x}) COLLATE \"C\" {} ({y}) COLLATE \"C\")", sql_op(op)),
            (Dialect::Snowflake, _) => format!("({x} {} {y})", sql_op(op)),
        },
        (Val::Bool(x), Val::Bool(y)) => match op {
            Op::Eq | Op::Ne => format!("({x} {} {y})", sql_op(op)),
            _ => return Err(g.unsupported("a meter", "ordering comparisons of booleans")),
        },
        (Val::Num(x), Val::Num(y)) => {
            if let (Num::Const(p), Num::Const(q)) = (&x, &y) {
                let o = p.cmp(q);
                let r = match op {
                    Op::Eq => o.is_eq(),
                    Op::Ne => o.is_ne(),
                    Op::Lt => o.is_lt(),
                    Op::Le => o.is_le(),
                    Op::Gt => o.is_gt(),
                    Op::Ge => o.is_ge(),
                    _ => unreachable!(),
                };
                return Ok(if r { "TRUE" } else { "FALSE" }.into());
            }
            format!("({} {} {})", num_sql(g, &x), sql_op(op), num_sql(g, &y))
        }
        (Val::Str(_), Val::Num(_)) | (Val::Num(_), Val::Str(_)) => {
            return Err(g.unsupported("a meter", "comparing text with a number (text parsed as a number) is not pushed down"))
        }
        _ => return Err(g.unsupported("a meter", "comparing a boolean with a number or text")),
    })
}

fn as_num(g: &Gen, v: Val) -> Result<Option<Num>, PushdownError> {
    match v {
        Val::Num(n) => Ok(Some(n)),
        Val::Null => Ok(None),
        Val::Str(_) => Err(g.unsupported("a meter", "arithmetic on text (text parsed as a number) is not pushed down")),
        Val::Bool(_) => Err(g.unsupported("a meter", "arithmetic on a boolean")),
    }
}

/// Exact JSON-logic division: 4 decimals, half away from zero, from the integer quotient and
/// remainder of `a · 10⁴ / b` (never a rounded division); NULL when `b` is 0.
fn div_sql(g: &Gen, a: &str, b: &str) -> String {
    let n = format!("(({a}) * 10000)");
    let d = format!("NULLIF({b}, 0)");
    let r = format!("MOD({n}, {d})");
    let q = match g.dialect {
        Dialect::Postgres => format!("(({n} - {r}) / {d})"),
        // an exact multiple: Snowflake divides it exactly; the cast keeps it NUMBER
        Dialect::Snowflake => format!("CAST(({n} - {r}) / {d} AS NUMBER(38, 0))"),
    };
    let rounded = format!("({q} + CASE WHEN 2 * ABS({r}) >= ABS({d}) THEN SIGN({n}) * SIGN({d}) ELSE 0 END)");
    match g.dialect {
        Dialect::Postgres => format!("ROUND({rounded} * 0.0001, 4)"),
        Dialect::Snowflake => format!("CAST({rounded} * 0.0001 AS NUMBER(38, 4))"),
    }
}

fn binary(g: &Gen, a: Num, b: Num, op: Op) -> Result<Val, PushdownError> {
    let (sa, sb) = (scale_of(&a), scale_of(&b));
    let out = match op {
        Op::Add | Op::Sub | Op::Min | Op::Max => max_scale(sa, sb),
        Op::Mul => match (sa, sb) {
            (Some(x), Some(y)) => {
                if x + y > MAX_SCALE {
                    return Err(g.unsupported(
                        "a meter",
                        format!("a product needs {} decimal places, more than {MAX_SCALE}: the local path keeps {MAX_SCALE} and rejects inexact events", x + y),
                    ));
                }
                if g.dialect == Dialect::Snowflake && x + y > x.max(y).max(12) {
                    return Err(g.unsupported(
                        "a meter",
                        format!(
                            "a product of scales {x} and {y}: Snowflake keeps max(s1, s2, 12) = {} decimal places of a product, not {}",
                            x.max(y).max(12),
                            x + y
                        ),
                    ));
                }
                Some(x + y)
            }
            _ => None,
        },
        Op::Div => Some(4),
        _ => unreachable!(),
    };
    if let (Num::Const(x), Num::Const(y)) = (&a, &b) {
        let r = match op {
            Op::Add => x.checked_add(*y),
            Op::Sub => x.checked_sub(*y),
            Op::Mul => x.checked_mul(*y),
            Op::Min => Some(*x.min(y)),
            Op::Max => Some(*x.max(y)),
            Op::Div => {
                let (mx, sx) = numeric::const_parts(*x);
                let (my, sy) = numeric::const_parts(*y);
                numeric::div4(mx, sx, my, sy).and_then(|q| numeric::to_decimal(q, 4))
            }
            _ => unreachable!(),
        };
        return Ok(r.map_or(Val::Null, |d| Val::Num(Num::Const(d))));
    }
    let (x, y) = (num_sql(g, &a), num_sql(g, &b));
    let e = match op {
        Op::Add => format!("({x} + {y})"),
        Op::Sub => format!("({x} - {y})"),
        Op::Mul => format!("({x} * {y})"),
        Op::Min => format!("(CASE WHEN {x} IS NULL OR {y} IS NULL THEN NULL WHEN {x} <= {y} THEN {x} ELSE {y} END)"),
        Op::Max => format!("(CASE WHEN {x} IS NULL OR {y} IS NULL THEN NULL WHEN {x} >= {y} THEN {x} ELSE {y} END)"),
        Op::Div => div_sql(g, &x, &y),
        _ => unreachable!(),
    };
    Ok(Val::Num(Num::Col(e, out)))
}

fn lit_val(g: &mut Gen, l: &Lit) -> Val {
    match l {
        Lit::Null => Val::Null,
        Lit::Bool(b) => Val::Bool(if *b { "TRUE" } else { "FALSE" }.into()),
        Lit::Num(d) => Val::Num(Num::Const(*d)),
        Lit::Str(s) => Val::Str(g.text(s)),
    }
}

fn null_num(g: &Gen, scale: Option<u32>) -> String {
    match g.dialect {
        Dialect::Postgres => "CAST(NULL AS NUMERIC)".into(),
        Dialect::Snowflake => format!("CAST(NULL AS NUMBER(38, {}))", scale.unwrap_or(0)),
    }
}

/// `CASE WHEN c THEN v … ELSE otherwise END` over values of one kind.
fn branch(g: &Gen, conds: Vec<String>, values: Vec<Val>) -> Result<Val, PushdownError> {
    let kind_num = values.iter().any(|v| matches!(v, Val::Num(_)));
    let kind_str = values.iter().any(|v| matches!(v, Val::Str(_)));
    let kind_bool = values.iter().any(|v| matches!(v, Val::Bool(_)));
    if (kind_num as u8 + kind_str as u8 + kind_bool as u8) > 1 {
        return Err(g.unsupported("a meter", "the branches of `if` give different kinds of value"));
    }
    if conds.is_empty() {
        return Ok(values.into_iter().next().unwrap_or(Val::Null));
    }
    let scale =
        values.iter().filter_map(|v| if let Val::Num(n) = v { Some(scale_of(n)) } else { None }).try_fold(0u32, |a, s| s.map(|s| a.max(s)));
    let to_sql = |v: &Val| -> String {
        match v {
            Val::Num(n) => num_sql(g, n),
            Val::Str(e) | Val::Bool(e) => e.clone(),
            Val::Null if kind_num => null_num(g, scale),
            Val::Null if kind_str => format!("CAST(NULL AS {})", g.text_type()),
            Val::Null => "CAST(NULL AS BOOLEAN)".into(),
        }
    };
    let otherwise = to_sql(values.last().expect("otherwise"));
    let mut e = String::from("(CASE");
    for (c, v) in conds.iter().zip(values.iter()) {
        e.push_str(&format!(" WHEN {c} THEN {}", to_sql(v)));
    }
    e.push_str(&format!(" ELSE {otherwise} END)"));
    Ok(if kind_num {
        Val::Num(Num::Col(e, scale))
    } else if kind_str {
        Val::Str(e)
    } else {
        Val::Bool(e)
    })
}

fn compile_ast(g: &mut Gen, ast: &Ast, s: &Scope) -> Result<Val, PushdownError> {
    match ast {
        Ast::Lit(l) => Ok(lit_val(g, l)),
        Ast::Var { var, default } => {
            let v = match var {
                VarRef::Attribute(n) => match s.attrs.get(n) {
                    Some((c, scale)) => Val::Num(Num::Col(c.clone(), *scale)),
                    None => Val::Null,
                },
                VarRef::Dimension(n) => match s.dims.get(n) {
                    Some(c) => Val::Str(c.clone()),
                    None => Val::Null,
                },
                VarRef::Named(n) => return Err(g.unsupported("a meter", format!("`{n}` is not an event variable"))),
            };
            match (default, v) {
                (None | Some(Lit::Null), v) => Ok(v),
                (Some(d), Val::Null) => Ok(lit_val(g, d)),
                (Some(Lit::Str(d)), Val::Str(e)) => {
                    let p = g.text(d);
                    Ok(Val::Str(format!("COALESCE({e}, {p})")))
                }
                (Some(Lit::Num(d)), Val::Num(n)) => {
                    let scale = scale_of(&n).map(|s| s.max(d.scale()));
                    Ok(Val::Num(Num::Col(format!("COALESCE({}, {})", num_sql(g, &n), num_lit(g.dialect, *d)), scale)))
                }
                _ => Err(g.unsupported("a meter", "the default of `var` does not match the variable's kind")),
            }
        }
        Ast::Op { op, args } => {
            if *op == Op::In {
                let needle = compile_ast(g, &args[0], s)?;
                let items: Vec<Lit> = args[1..].iter().map(|a| if let Ast::Lit(l) = a { l.clone() } else { Lit::Null }).collect();
                return Ok(match needle {
                    Val::Str(e) => {
                        let strs: Vec<String> = items
                            .iter()
                            .filter_map(|l| match l {
                                Lit::Str(s) => Some(s.clone()),
                                Lit::Num(d) => Some(d.to_string()),
                                Lit::Bool(b) => Some(b.to_string()),
                                Lit::Null => None,
                            })
                            .collect();
                        Val::Bool(g.in_texts(&e, &strs))
                    }
                    Val::Num(n) => {
                        let nums: BTreeSet<Decimal> = items
                            .iter()
                            .filter_map(|l| match l {
                                Lit::Num(d) => Some(d.normalize()),
                                Lit::Str(s) => crate::doc::parse_decimal(s).map(|d| d.normalize()),
                                _ => None,
                            })
                            .collect();
                        match n {
                            Num::Const(d) => Val::Bool(if nums.contains(&d.normalize()) { "TRUE" } else { "FALSE" }.into()),
                            Num::Col(e, _) if nums.is_empty() => Val::Bool(format!("(CASE WHEN {e} IS NULL THEN NULL ELSE FALSE END)")),
                            Num::Col(e, _) => Val::Bool(format!(
                                "({e} IN ({}))",
                                nums.iter().map(|d| num_lit(g.dialect, *d)).collect::<Vec<_>>().join(", ")
                            )),
                        }
                    }
                    Val::Bool(_) | Val::Null => Val::Bool("FALSE".into()),
                });
            }
            let mut vals = args.iter().map(|a| compile_ast(g, a, s)).collect::<Result<Vec<_>, _>>()?;
            match op {
                Op::Eq | Op::Ne => {
                    let b = vals.pop().expect("2 args");
                    let a = vals.pop().expect("2 args");
                    Ok(Val::Bool(compare(g, a, b, *op)?))
                }
                Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    if vals.len() == 3 {
                        let c = vals.pop().expect("3");
                        let b = vals.pop().expect("3");
                        let a = vals.pop().expect("3");
                        Ok(Val::Bool(format!("({} AND {})", compare(g, a, b.clone(), *op)?, compare(g, b, c, *op)?)))
                    } else {
                        let b = vals.pop().expect("2");
                        let a = vals.pop().expect("2");
                        Ok(Val::Bool(compare(g, a, b, *op)?))
                    }
                }
                Op::And => Ok(Val::Bool(format!("({})", vals.iter().map(truthy).collect::<Vec<_>>().join(" AND ")))),
                Op::Or => Ok(Val::Bool(format!("({})", vals.iter().map(truthy).collect::<Vec<_>>().join(" OR ")))),
                Op::Not => Ok(Val::Bool(format!("(NOT {})", truthy(&vals[0])))),
                Op::Truthy => Ok(Val::Bool(truthy(&vals[0]))),
                Op::Add | Op::Mul | Op::Min | Op::Max | Op::Sub | Op::Div => {
                    if *op == Op::Sub && vals.len() == 1 {
                        return Ok(match as_num(g, vals.pop().expect("1"))? {
                            None => Val::Null,
                            Some(Num::Const(d)) => Val::Num(Num::Const(-d)),
                            Some(Num::Col(e, scale)) => Val::Num(Num::Col(format!("(-{e})"), scale)),
                        });
                    }
                    let mut acc: Option<Val> = None;
                    for v in vals {
                        acc = Some(match acc {
                            None => as_num(g, v)?.map_or(Val::Null, Val::Num),
                            Some(Val::Null) => {
                                as_num(g, v)?;
                                Val::Null
                            }
                            Some(Val::Num(a)) => match as_num(g, v)? {
                                None => Val::Null,
                                Some(b) => binary(g, a, b, *op)?,
                            },
                            Some(_) => unreachable!(),
                        });
                    }
                    Ok(acc.unwrap_or(Val::Null))
                }
                Op::If => {
                    let n = vals.len();
                    let mut conds = Vec::new();
                    let mut values = Vec::new();
                    let mut i = 0;
                    while i + 1 < n {
                        conds.push(truthy(&vals[i]));
                        values.push(vals[i + 1].clone());
                        i += 2;
                    }
                    values.push(if n % 2 == 1 { vals[n - 1].clone() } else { Val::Null });
                    branch(g, conds, values)
                }
                Op::In => unreachable!(),
            }
        }
    }
}

/// A meter as SQL over the event CTE: `hit` (never null) and, for SUM, `units` with its scale.
struct MeterSql {
    hit: String,
    units: Option<(String, Option<u32>)>,
}

fn compile_meter(g: &mut Gen, m: &Meter, s: &Scope, schema_col: &str) -> Result<MeterSql, PushdownError> {
    let what = || format!("usage meter `{}`", m.id);
    if !matches!(m.aggregation, Aggregation::Count | Aggregation::Sum) {
        return Err(g.unsupported(what(), format!("aggregation {:?}: only COUNT and SUM are pushed down", m.aggregation)));
    }
    let mut base = vec![format!("COALESCE({schema_col} = {}, FALSE)", g.text(&m.schema))];
    for f in &m.filters {
        base.push(match f {
            FilterField::Dimension(n, v) => match s.dims.get(n) {
                Some(c) => {
                    let p = g.text(v);
                    format!("COALESCE({c} = {p}, FALSE)")
                }
                None => "FALSE".into(),
            },
            FilterField::Attribute(n, v) => match s.attrs.get(n) {
                Some((c, _)) => format!("COALESCE({c} = {}, FALSE)", num_lit(g.dialect, *v)),
                None => "FALSE".into(),
            },
        });
    }
    let base = base.join(" AND ");
    let wrap = |e: PushdownError| match e {
        PushdownError::Unsupported { source_name, why, .. } => PushdownError::Unsupported { source_name, what: what(), why },
        other => other,
    };
    if m.computations.is_empty() {
        if m.aggregation == Aggregation::Sum {
            return Err(g.unsupported(what(), "a SUM meter without computations"));
        }
        return Ok(MeterSql { hit: base, units: None });
    }
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for c in &m.computations {
        conds.push(match &c.matcher {
            None => "TRUE".into(),
            Some(a) => truthy(&compile_ast(g, a, s).map_err(wrap)?),
        });
        let v = compile_ast(g, &c.computation, s).map_err(wrap)?;
        values.push(match v {
            Val::Num(_) | Val::Null => v,
            Val::Str(_) => return Err(g.unsupported(what(), "a computation that gives text (parsed as a number) is not pushed down")),
            Val::Bool(_) => return Err(g.unsupported(what(), "a computation must give a number")),
        });
    }
    let hit = format!("({base} AND ({}))", conds.join(" OR "));
    if m.aggregation == Aggregation::Count {
        return Ok(MeterSql { hit, units: None });
    }
    values.push(Val::Null);
    let units = match branch(g, conds, values).map_err(wrap)? {
        Val::Num(n) => (num_sql(g, &n), scale_of(&n)),
        _ => (null_num(g, Some(0)), Some(0)),
    };
    Ok(MeterSql { hit, units: Some(units) })
}

/// Compile the pushdown query of `source` (whose query returns `columns`) for the run.
pub fn compile(
    source: &SourceConfig,
    dialect: Dialect,
    columns: &[DescribedColumn],
    user_sql: &str,
    catalog: &Catalog,
    windows: &[Window],
    as_of_us: i64,
) -> Result<Compiled, PushdownError> {
    let mut g = Gen { dialect, params: Vec::new(), source_name: source.name().into() };
    for m in catalog.meters.values() {
        if catalog.event_schemas.get(&m.schema).is_some_and(|s| !s.enrichments.is_empty()) {
            return Err(g.unsupported(
                format!("usage meter `{}`", m.id),
                format!("event schema `{}` has enrichments, which are evaluated locally only", m.schema),
            ));
        }
    }
    let f = fields(&mut g, source, columns)?;
    let tt = g.text_type();

    // ev: the source's rows as canonical fields; a_i / d_i for attributes / dimensions
    let mut ev_cols = vec![
        match dialect {
            Dialect::Postgres => "ROW_NUMBER() OVER () AS seq".to_string(),
            // Snowflake has no arrival order of a subquery: ties of ingestedAt keep the earliest timestamp
            Dialect::Snowflake => format!("{} AS seq", f.timestamp),
        },
        format!("{} AS eid", f.event_id),
        format!("{} AS sname", f.schema_name),
        format!("{} AS acct", f.account_id),
        format!("{} AS ts", f.timestamp),
        format!("{} AS ing", f.ingested_at.clone().unwrap_or_else(|| "CAST(NULL AS BIGINT)".into())),
    ];
    let mut attrs = BTreeMap::new();
    for (i, (name, (col, scale))) in f.attributes.iter().enumerate() {
        ev_cols.push(format!("{col} AS a_{i}"));
        attrs.insert(name.clone(), (format!("a_{i}"), *scale));
    }
    let mut dims = BTreeMap::new();
    for (i, (name, col)) in f.dimensions.iter().enumerate() {
        ev_cols.push(format!("{col} AS d_{i}"));
        dims.insert(name.clone(), format!("d_{i}"));
    }
    let scope = Scope { attrs: &attrs, dims: &dims };

    // 1: undeclared attributes/dimensions of a known schema; 2: no id
    let mut undeclared = Vec::new();
    for s in catalog.event_schemas.values() {
        let mut extra: Vec<String> =
            attrs.iter().filter(|(a, _)| !s.attributes.contains(*a)).map(|(_, (c, _))| format!("{c} IS NOT NULL")).collect();
        extra.extend(dims.iter().filter(|(d, _)| !s.dimensions.contains(*d)).map(|(_, c)| format!("{c} IS NOT NULL")));
        if !extra.is_empty() {
            let name = g.text(&s.name);
            undeclared.push(format!("(COALESCE(sname = {name}, FALSE) AND ({}))", extra.join(" OR ")));
        }
    }
    let invalid = if undeclared.is_empty() { "FALSE".to_string() } else { undeclared.join(" OR ") };

    let accounts: Vec<Vec<Param>> = catalog.accounts.keys().map(|a| vec![Param::Text(a.clone())]).collect();
    let mut aliases = Vec::new();
    for a in catalog.accounts.values() {
        for al in &a.aliases {
            aliases.push(vec![
                Param::Text(al.value.clone()),
                Param::Text(a.id.clone()),
                Param::Int(al.from.map_or(i64::MIN, |t| t.timestamp_micros())),
                Param::Int(al.until.map_or(i64::MAX, |t| t.timestamp_micros())),
            ]);
        }
    }
    let wins: Vec<Vec<Param>> = windows
        .iter()
        .map(|w| {
            vec![
                Param::Int(i64::from(w.id)),
                Param::Text(w.account_id.clone()),
                Param::Int(w.start_us),
                Param::Int(w.end_us),
                Param::Int(w.due_us),
            ]
        })
        .collect();
    // dedup is per account group (src/assign.rs): every account id and alias value → its group
    let groups: Vec<Vec<Param>> = crate::assign::Assigner::new(catalog, windows)
        .group_table()
        .into_iter()
        .map(|(k, g)| vec![Param::Text(k.to_string()), Param::Text(g.to_string())])
        .collect();
    let grp_t = g.table("grp", &[("gk", true), ("gid", true)], groups);
    let acc_t = g.table("acc", &[("aid", true)], accounts);
    let ali_t = g.table("ali", &[("ak", true), ("aacct", true), ("af", false), ("au", false)], aliases);
    let win_t = g.table("win", &[("wid", false), ("wacct", true), ("ws", false), ("we", false), ("wdue", false)], wins);
    let schemas: Vec<String> = catalog.event_schemas.keys().cloned().collect();
    let known_schema = g.in_texts("sname", &schemas);
    let as_of = g.int(as_of_us);

    let meters: Vec<(&Meter, MeterSql)> =
        catalog.meters.values().map(|m| compile_meter(&mut g, m, &scope, "sname").map(|s| (m, s))).collect::<Result<_, _>>()?;

    let user = user_sql.trim().trim_end_matches(';').trim_end();
    let mut sql = format!("WITH src AS (\n{user}\n),\nev AS (SELECT {} FROM src),\n", ev_cols.join(", "));
    sql.push_str(&format!("{grp_t},\n{acc_t},\n{ali_t},\n{win_t},\n"));
    sql.push_str(&format!(
        "r1 AS (SELECT ev.*, CASE WHEN ts IS NULL OR {invalid} THEN 1 WHEN eid IS NULL OR eid = '' THEN 2 ELSE 0 END AS r0 FROM ev),\n"
    ));
    // byte equality of ids, as polars compares them (and a much cheaper sort than a locale's)
    let (eid_key, group_key) = match dialect {
        Dialect::Postgres => ("eid COLLATE \"C\"", "COALESCE(grp.gid, r1.acct) COLLATE \"C\""),
        Dialect::Snowflake => ("eid", "COALESCE(grp.gid, r1.acct)"),
    };
    sql.push_str(&format!(
        "r2 AS (SELECT r1.*, ROW_NUMBER() OVER (PARTITION BY {group_key}, {eid_key}, r0 ORDER BY ing ASC NULLS LAST, seq ASC) AS rn \
         FROM r1 LEFT JOIN grp ON grp.gk = r1.acct),\n"
    ));
    sql.push_str(
        "r3 AS (SELECT r2.*, COALESCE(acc.aid, ali.aacct) AS account FROM r2 \
         LEFT JOIN acc ON acc.aid = r2.acct \
         LEFT JOIN ali ON acc.aid IS NULL AND ali.ak = r2.acct AND r2.ts >= ali.af AND r2.ts < ali.au),\n",
    );
    sql.push_str(
        "r4 AS (SELECT r3.*, win.wid, win.wdue FROM r3 LEFT JOIN win ON win.wacct = r3.account AND r3.ts >= win.ws AND r3.ts < win.we),\n",
    );
    sql.push_str(&format!(
        "r5 AS (SELECT r4.*, CASE WHEN r0 <> 0 THEN r0 WHEN rn > 1 THEN 3 WHEN NOT {known_schema} THEN 4 WHEN account IS NULL THEN 5 \
         WHEN ts >= {as_of} OR COALESCE(ing >= {as_of}, FALSE) THEN 6 WHEN wid IS NULL THEN 7 WHEN COALESCE(ing >= wdue, FALSE) THEN 8 \
         ELSE 0 END AS r FROM r4),\n"
    ));
    let mut m_cols = vec!["wid".to_string(), "r".to_string()];
    for (i, (_, ms)) in meters.iter().enumerate() {
        m_cols.push(format!("(r = 0 AND {}) AS h_{i}", ms.hit));
        if let Some((u, _)) = &ms.units {
            m_cols.push(format!("{u} AS u_{i}"));
        }
    }
    sql.push_str(&format!("m AS (SELECT {} FROM r5),\n", m_cols.join(", ")));
    let invalid_units: Vec<String> =
        meters.iter().enumerate().filter(|(_, (_, ms))| ms.units.is_some()).map(|(i, _)| format!("(h_{i} AND u_{i} IS NULL)")).collect();
    let any_hit: Vec<String> = (0..meters.len()).map(|i| format!("h_{i}")).collect();
    sql.push_str(&format!(
        "f AS (SELECT m.*, CASE WHEN r <> 0 THEN r WHEN {} THEN 9 WHEN NOT ({}) THEN 10 ELSE 0 END AS reason FROM m)\n",
        if invalid_units.is_empty() { "FALSE".into() } else { invalid_units.join(" OR ") },
        if any_hit.is_empty() { "FALSE".into() } else { any_hit.join(" OR ") },
    ));
    let mut out_cols = vec![
        format!("CAST(CASE WHEN reason = 0 THEN wid END AS {tt}) AS w"),
        format!("CAST(reason AS {tt}) AS reason"),
        format!("CAST(COUNT(*) AS {tt}) AS n"),
    ];
    for (i, (m, ms)) in meters.iter().enumerate() {
        let ok = format!("reason = 0 AND h_{i}");
        out_cols.push(match &ms.units {
            None => format!("CAST(COUNT(CASE WHEN {ok} THEN 1 END) AS {tt}) AS q_{i}"),
            Some((_, scale)) => match dialect {
                Dialect::Postgres => format!("CAST(SUM(CASE WHEN {ok} THEN u_{i} END) AS {tt}) AS q_{i}"),
                Dialect::Snowflake => {
                    let s = scale.ok_or_else(|| g.unsupported(format!("usage meter `{}`", m.id), "the scale of its units is not known"))?;
                    // an exact sum at the units' scale (a cast keeps the emulator from summing doubles)
                    format!("CAST(SUM(CAST(CASE WHEN {ok} THEN u_{i} END AS NUMBER(38, {s}))) AS {tt}) AS q_{i}")
                }
            },
        });
    }
    sql.push_str(&format!("SELECT {} FROM f GROUP BY 1, 2 ORDER BY 1, 2", out_cols.join(", ")));
    Ok(Compiled { sql, params: g.params, meters: meters.iter().map(|(m, _)| (m.id.clone(), m.aggregation)).collect() })
}
