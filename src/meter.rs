//! Usage meters compiled once into polars expressions and evaluated column-wise.
//!
//! Each meter becomes two columns over the event frame: `hit` (the event passes the meter's
//! schema, filters and some matcher) and, for SUM meters, `units` (the computation of the
//! first matching pair, as an exact `Decimal(38, s)`). Arithmetic runs through the checked
//! kernels in `numeric`; a null where a number is needed marks the event UNITS_INVALID.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use rust_decimal::Decimal;

use crate::catalog::{Aggregation, FilterField, Meter};
use crate::jsonlogic::{Ast, Lit, Op, VarRef};
use crate::numeric::{self, MAX_SCALE};
use billrun_connectors::schema::{ATTR_PREFIX, DIM_PREFIX, SCHEMA_NAME};

/// Columns present in the event frame: attribute name → scale, dimension names.
#[derive(Debug, Clone, Default)]
pub struct FrameColumns {
    pub attributes: BTreeMap<String, u32>,
    pub dimensions: BTreeSet<String>,
}

#[derive(Clone)]
enum Num {
    Const(Decimal),
    Col { expr: Expr, scale: u32 },
}

#[derive(Clone)]
enum Val {
    Bool(Expr),
    Num(Num),
    Str(Expr),
    Null,
}

fn dec_lit(v: i128, scale: u32) -> Expr {
    lit(Scalar::new(numeric::dtype(scale), AnyValue::Decimal(v, 38, scale as usize)))
}

fn null_dec(scale: u32) -> Expr {
    lit(Null {}).cast(numeric::dtype(scale))
}

fn scale_of(n: &Num) -> u32 {
    match n {
        Num::Const(d) => d.scale(),
        Num::Col { scale, .. } => *scale,
    }
}

/// The numeric value as a column expression at `scale` (>= its own scale).
fn at_scale(n: &Num, scale: u32) -> Result<Expr, String> {
    match n {
        Num::Const(d) => {
            let (m, s) = numeric::const_parts(*d);
            let v = numeric::upscale(m, s, scale).ok_or("a constant does not fit 38 digits")?;
            Ok(dec_lit(v, scale))
        }
        Num::Col { expr, scale: s } if *s == scale => Ok(expr.clone()),
        Num::Col { expr, scale: s } => {
            let from = *s;
            Ok(expr.clone().map(
                move |c| numeric::unary(&c, scale, |v| numeric::upscale(v, from, scale)),
                move |_, f| Ok(Field::new(f.name().clone(), numeric::dtype(scale))),
            ))
        }
    }
}

fn binary_num(a: Num, b: Num, op: Op) -> Result<Val, String> {
    let (sa, sb) = (scale_of(&a), scale_of(&b));
    let out = match op {
        Op::Add | Op::Sub | Op::Min | Op::Max => sa.max(sb),
        // a product with more than MAX_SCALE places keeps MAX_SCALE, exactly: an event whose
        // product has non-zero digits beyond it gets no units (rejected), never a rounded value
        Op::Mul => (sa + sb).min(MAX_SCALE),
        Op::Div => 4,
        _ => unreachable!(),
    };
    if out > MAX_SCALE {
        return Err(format!("the result needs {out} decimal places, more than {MAX_SCALE}"));
    }
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
        return Ok(match r {
            Some(d) => Val::Num(Num::Const(d)),
            None => Val::Null,
        });
    }
    let (ea, eb) = match op {
        Op::Mul | Op::Div => (at_scale(&a, sa)?, at_scale(&b, sb)?),
        _ => (at_scale(&a, out)?, at_scale(&b, out)?),
    };
    let f = move |cols: &mut [Column]| -> PolarsResult<Column> {
        let (x, y) = (&cols[0], &cols[1]);
        match op {
            Op::Add => numeric::binary(x, y, out, |p, q| p.checked_add(q)),
            Op::Sub => numeric::binary(x, y, out, |p, q| p.checked_sub(q)),
            Op::Min => numeric::binary(x, y, out, |p, q| Some(p.min(q))),
            Op::Max => numeric::binary(x, y, out, |p, q| Some(p.max(q))),
            Op::Mul => {
                let drop = sa + sb - out;
                numeric::binary(x, y, out, move |p, q| {
                    let v = p.checked_mul(q)?;
                    let f = numeric::pow10(drop)?;
                    if v % f != 0 {
                        return None;
                    }
                    numeric::upscale(v / f, 0, 0)
                })
            }
            Op::Div => numeric::binary(x, y, out, |p, q| numeric::div4(p, sa, q, sb)),
            _ => unreachable!(),
        }
    };
    let expr = map_multiple(f, [ea, eb], move |_, fields| Ok(Field::new(fields[0].name().clone(), numeric::dtype(out))));
    Ok(Val::Num(Num::Col { expr, scale: out }))
}

fn str_to_num(e: Expr) -> Num {
    const S: u32 = 18;
    let expr = e.map(
        move |c| {
            let ca = c.str()?;
            let out: Int128Chunked = ca
                .iter()
                .map(|s| s.and_then(numeric::parse_text).and_then(|(v, sc)| if sc <= S { numeric::upscale(v, sc, S) } else { None }))
                .collect();
            Ok(out.with_name(c.name().clone()).into_decimal_unchecked(38, S as usize).into_series().into_column())
        },
        |_, f| Ok(Field::new(f.name().clone(), numeric::dtype(S))),
    );
    Num::Col { expr, scale: S }
}

fn as_num(v: Val) -> Result<Option<Num>, String> {
    match v {
        Val::Num(n) => Ok(Some(n)),
        Val::Str(e) => Ok(Some(str_to_num(e))),
        Val::Null => Ok(None),
        Val::Bool(_) => Err("arithmetic on a boolean is not supported".into()),
    }
}

/// JSON-logic truthiness as a non-null boolean expression.
fn truthy(v: Val) -> Expr {
    match v {
        Val::Bool(e) => e.fill_null(lit(false)),
        Val::Num(Num::Const(d)) => lit(!d.is_zero()),
        Val::Num(Num::Col { expr, .. }) => expr
            .map(|c| numeric::predicate(&c, |v| v != 0), |_, f| Ok(Field::new(f.name().clone(), DataType::Boolean)))
            .fill_null(lit(false)),
        Val::Str(e) => e.neq(lit("")).fill_null(lit(false)),
        Val::Null => lit(false),
    }
}

fn compare(a: Val, b: Val, op: Op) -> Result<Expr, String> {
    Ok(match (a, b) {
        (Val::Null, Val::Null) => lit(matches!(op, Op::Eq | Op::Le | Op::Ge)),
        (Val::Null, x) | (x, Val::Null) => match (op, x) {
            (Op::Eq, Val::Bool(e) | Val::Str(e)) => e.is_null(),
            (Op::Ne, Val::Bool(e) | Val::Str(e)) => e.is_not_null(),
            (Op::Eq, Val::Num(Num::Col { expr, .. })) => expr.is_null(),
            (Op::Ne, Val::Num(Num::Col { expr, .. })) => expr.is_not_null(),
            (Op::Ne, Val::Num(Num::Const(_))) => lit(true),
            _ => lit(false),
        },
        (Val::Str(x), Val::Str(y)) => match op {
            Op::Eq => x.eq(y),
            Op::Ne => x.neq(y),
            Op::Lt => x.lt(y),
            Op::Le => x.lt_eq(y),
            Op::Gt => x.gt(y),
            Op::Ge => x.gt_eq(y),
            _ => unreachable!(),
        },
        (Val::Bool(x), Val::Bool(y)) => match op {
            Op::Eq => x.eq(y),
            Op::Ne => x.neq(y),
            _ => return Err("ordering comparisons of booleans are not supported".into()),
        },
        (x, y) => {
            let (Some(x), Some(y)) = (as_num(x)?, as_num(y)?) else { return Ok(lit(false)) };
            let s = scale_of(&x).max(scale_of(&y));
            if let (Num::Const(p), Num::Const(q)) = (&x, &y) {
                return Ok(lit(cmp_op(op)(p.cmp(q))));
            }
            let (ex, ey) = (at_scale(&x, s)?, at_scale(&y, s)?);
            map_multiple(
                move |cols: &mut [Column]| numeric::compare(&cols[0], &cols[1], |p, q| cmp_op(op)(p.cmp(&q))),
                [ex, ey],
                |_, fields| Ok(Field::new(fields[0].name().clone(), DataType::Boolean)),
            )
        }
    })
}

fn cmp_op(op: Op) -> fn(std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => |o| o == Equal,
        Op::Ne => |o| o != Equal,
        Op::Lt => |o| o == Less,
        Op::Le => |o| o != Greater,
        Op::Gt => |o| o == Greater,
        Op::Ge => |o| o != Less,
        _ => unreachable!(),
    }
}

fn lit_val(l: &Lit) -> Val {
    match l {
        Lit::Null => Val::Null,
        Lit::Bool(b) => Val::Bool(lit(*b)),
        Lit::Num(d) => Val::Num(Num::Const(*d)),
        Lit::Str(s) => Val::Str(lit(s.clone())),
    }
}

fn compile(ast: &Ast, cols: &FrameColumns) -> Result<Val, String> {
    match ast {
        Ast::Lit(l) => Ok(lit_val(l)),
        Ast::Var { var, default } => {
            let v = match var {
                VarRef::Attribute(n) => match cols.attributes.get(n) {
                    Some(s) => Val::Num(Num::Col { expr: col(format!("{ATTR_PREFIX}{n}")), scale: *s }),
                    None => Val::Null,
                },
                VarRef::Dimension(n) => {
                    if cols.dimensions.contains(n) {
                        Val::Str(col(format!("{DIM_PREFIX}{n}")))
                    } else {
                        Val::Null
                    }
                }
                VarRef::Named(n) => return Err(format!("`{n}` is not an event variable")),
            };
            match (default, v) {
                (None | Some(Lit::Null), v) => Ok(v),
                (Some(d), Val::Null) => Ok(lit_val(d)),
                (Some(Lit::Str(s)), Val::Str(e)) => Ok(Val::Str(e.fill_null(lit(s.clone())))),
                (Some(Lit::Num(d)), Val::Num(n)) => {
                    let s = scale_of(&n).max(d.scale());
                    let (m, ds) = numeric::const_parts(*d);
                    let dv = numeric::upscale(m, ds, s).ok_or("default does not fit")?;
                    Ok(Val::Num(Num::Col { expr: at_scale(&n, s)?.fill_null(dec_lit(dv, s)), scale: s }))
                }
                _ => Err("the default of `var` does not match the variable's kind".into()),
            }
        }
        Ast::Op { op, args } => {
            let mut vals = args.iter().map(|a| compile(a, cols)).collect::<Result<Vec<_>, _>>()?;
            match op {
                Op::Eq | Op::Ne => {
                    let b = vals.pop().expect("2 args");
                    let a = vals.pop().expect("2 args");
                    Ok(Val::Bool(compare(a, b, *op)?))
                }
                Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    if vals.len() == 3 {
                        let c = vals.pop().expect("3");
                        let b = vals.pop().expect("3");
                        let a = vals.pop().expect("3");
                        Ok(Val::Bool(compare(a, b.clone(), *op)?.and(compare(b, c, *op)?)))
                    } else {
                        let b = vals.pop().expect("2");
                        let a = vals.pop().expect("2");
                        Ok(Val::Bool(compare(a, b, *op)?))
                    }
                }
                Op::And => Ok(Val::Bool(vals.into_iter().map(truthy).reduce(|a, b| a.and(b)).expect("1+"))),
                Op::Or => Ok(Val::Bool(vals.into_iter().map(truthy).reduce(|a, b| a.or(b)).expect("1+"))),
                Op::Not => Ok(Val::Bool(truthy(vals.pop().expect("1")).not())),
                Op::Truthy => Ok(Val::Bool(truthy(vals.pop().expect("1")))),
                Op::In => {
                    let needle = vals.remove(0);
                    let items: Vec<Lit> = args[1..]
                        .iter()
                        .map(|a| match a {
                            Ast::Lit(l) => l.clone(),
                            _ => Lit::Null,
                        })
                        .collect();
                    match needle {
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
                            Ok(Val::Bool(e.is_in(lit(Series::new("in".into(), strs)).implode(true), false).fill_null(lit(false))))
                        }
                        Val::Num(n) => {
                            let nums: Vec<Decimal> = items
                                .iter()
                                .filter_map(|l| match l {
                                    Lit::Num(d) => Some(*d),
                                    Lit::Str(s) => crate::doc::parse_decimal(s),
                                    _ => None,
                                })
                                .collect();
                            let s = nums.iter().map(|d| d.scale()).chain([scale_of(&n)]).max().unwrap_or(0);
                            let set: BTreeSet<i128> = nums
                                .iter()
                                .filter_map(|d| {
                                    let (m, ds) = numeric::const_parts(*d);
                                    numeric::upscale(m, ds, s)
                                })
                                .collect();
                            let e = at_scale(&n, s)?;
                            Ok(Val::Bool(e.map(
                                move |c| numeric::predicate(&c, |v| set.contains(&v)),
                                |_, f| Ok(Field::new(f.name().clone(), DataType::Boolean)),
                            )))
                        }
                        Val::Bool(_) | Val::Null => Ok(Val::Bool(lit(false))),
                    }
                }
                Op::Add | Op::Mul | Op::Min | Op::Max | Op::Sub | Op::Div => {
                    if *op == Op::Sub && vals.len() == 1 {
                        return match as_num(vals.pop().expect("1"))? {
                            None => Ok(Val::Null),
                            Some(Num::Const(d)) => Ok(Val::Num(Num::Const(-d))),
                            Some(Num::Col { expr, scale }) => Ok(Val::Num(Num::Col {
                                expr: expr.map(
                                    move |c| numeric::unary(&c, scale, |v| v.checked_neg()),
                                    move |_, f| Ok(Field::new(f.name().clone(), numeric::dtype(scale))),
                                ),
                                scale,
                            })),
                        };
                    }
                    let mut acc: Option<Val> = None;
                    for v in vals {
                        acc = Some(match acc {
                            None => match as_num(v)? {
                                Some(n) => Val::Num(n),
                                None => Val::Null,
                            },
                            Some(Val::Null) => Val::Null,
                            Some(Val::Num(a)) => match as_num(v)? {
                                None => Val::Null,
                                Some(b) => binary_num(a, b, *op)?,
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
                        conds.push(truthy(vals[i].clone()));
                        values.push(vals[i + 1].clone());
                        i += 2;
                    }
                    let otherwise = if n % 2 == 1 { vals[n - 1].clone() } else { Val::Null };
                    values.push(otherwise);
                    branch(conds, values)
                }
            }
        }
    }
}

/// when(c1).then(v1)…otherwise(vn) over values of one kind.
fn branch(conds: Vec<Expr>, values: Vec<Val>) -> Result<Val, String> {
    let kind_num = values.iter().any(|v| matches!(v, Val::Num(_)));
    let kind_str = values.iter().any(|v| matches!(v, Val::Str(_)));
    let kind_bool = values.iter().any(|v| matches!(v, Val::Bool(_)));
    if (kind_num as u8 + kind_str as u8 + kind_bool as u8) > 1 {
        return Err("the branches of `if` give different kinds of value".into());
    }
    if conds.is_empty() {
        return Ok(values.into_iter().next().unwrap_or(Val::Null));
    }
    let scale = values.iter().filter_map(|v| if let Val::Num(n) = v { Some(scale_of(n)) } else { None }).max().unwrap_or(0);
    let to_expr = |v: &Val| -> Result<Expr, String> {
        Ok(match v {
            Val::Num(n) => at_scale(n, scale)?,
            Val::Str(e) | Val::Bool(e) => e.clone(),
            Val::Null if kind_num => null_dec(scale),
            Val::Null if kind_str => lit(Null {}).cast(DataType::String),
            Val::Null => lit(Null {}).cast(DataType::Boolean),
        })
    };
    let last = values.last().expect("otherwise");
    let mut e = to_expr(last)?;
    for (c, v) in conds.iter().zip(values.iter()).rev() {
        e = when(c.clone()).then(to_expr(v)?).otherwise(e);
    }
    Ok(if kind_num {
        Val::Num(Num::Col { expr: e, scale })
    } else if kind_str {
        Val::Str(e)
    } else {
        Val::Bool(e)
    })
}

/// A meter compiled against the columns of one event frame.
pub struct CompiledMeter {
    pub meter_id: String,
    pub aggregation: Aggregation,
    /// Non-null boolean: the meter counts this event.
    pub hit: Expr,
    /// Meters that read units: the event's units (null where the computation gives none).
    pub units: Option<Expr>,
    pub scale: u32,
}

/// Compile a meter. `Err` explains which expression cannot be evaluated exactly.
pub fn compile_meter(m: &Meter, cols: &FrameColumns) -> Result<CompiledMeter, String> {
    let mut base = col(SCHEMA_NAME).eq(lit(m.schema.clone())).fill_null(lit(false));
    for f in &m.filters {
        let cond = match f {
            FilterField::Dimension(n, v) => {
                if cols.dimensions.contains(n) {
                    col(format!("{DIM_PREFIX}{n}")).eq(lit(v.clone())).fill_null(lit(false))
                } else {
                    lit(false)
                }
            }
            FilterField::Attribute(n, v) => match cols.attributes.get(n) {
                Some(s) => {
                    compare(Val::Num(Num::Col { expr: col(format!("{ATTR_PREFIX}{n}")), scale: *s }), Val::Num(Num::Const(*v)), Op::Eq)?
                        .fill_null(lit(false))
                }
                None => lit(false),
            },
        };
        base = base.and(cond);
    }
    if m.computations.is_empty() {
        return Ok(CompiledMeter { meter_id: m.id.clone(), aggregation: m.aggregation, hit: base, units: None, scale: 0 });
    }
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for c in &m.computations {
        let cond = match &c.matcher {
            None => lit(true),
            Some(a) => truthy(compile(a, cols)?),
        };
        conds.push(cond);
        let v = compile(&c.computation, cols)?;
        values.push(match v {
            Val::Num(_) | Val::Null => v,
            Val::Str(e) if m.aggregation == Aggregation::UniqueCount => Val::Str(e),
            Val::Str(e) => Val::Num(str_to_num(e)),
            Val::Bool(_) => return Err("a computation must give a number".into()),
        });
    }
    let any_match = conds.iter().cloned().reduce(|a, b| a.or(b)).expect("1+");
    let hit = base.and(any_match);
    if m.aggregation == Aggregation::Count {
        return Ok(CompiledMeter { meter_id: m.id.clone(), aggregation: m.aggregation, hit, units: None, scale: 0 });
    }
    values.push(Val::Null);
    let text_units = m.aggregation == Aggregation::UniqueCount && values.iter().any(|v| matches!(v, Val::Str(_)));
    if text_units {
        // distinct values of a text computation (e.g. a user id dimension)
        let values = values
            .into_iter()
            .map(|v| match v {
                Val::Num(n) => at_scale(&n, scale_of(&n)).map(|e| Val::Str(e.cast(DataType::String))),
                other => Ok(other),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let units = match branch(conds, values)? {
            Val::Str(e) => e,
            _ => lit(Null {}).cast(DataType::String),
        };
        return Ok(CompiledMeter { meter_id: m.id.clone(), aggregation: m.aggregation, hit, units: Some(units), scale: 0 });
    }
    let (units, scale) = match branch(conds, values)? {
        Val::Num(Num::Col { expr, scale }) => (expr, scale),
        Val::Num(Num::Const(d)) => (dec_lit(d.mantissa(), d.scale()), d.scale()),
        _ => (null_dec(0), 0),
    };
    Ok(CompiledMeter { meter_id: m.id.clone(), aggregation: m.aggregation, hit, units: Some(units), scale })
}

/// The column an enrichment field produces for events of `schema` (other events keep the
/// field's current value), and the field's new scale for attributes. Compiled against the
/// frame's current columns, so a field can read the fields enriched before it.
pub fn enrichment_column(ast: &Ast, attribute: bool, schema: &str, name: &str, cols: &FrameColumns) -> Result<(Expr, Option<u32>), String> {
    let here = col(SCHEMA_NAME).eq(lit(schema.to_string())).fill_null(lit(false));
    if attribute {
        let column = format!("{ATTR_PREFIX}{name}");
        let current = cols.attributes.get(name).map(|s| Num::Col { expr: col(column.as_str()), scale: *s });
        let v = match compile(ast, cols)? {
            Val::Num(n) => Some(n),
            Val::Null => None,
            Val::Str(e) => Some(str_to_num(e)),
            Val::Bool(_) => return Err("an ATTRIBUTE enrichment must give a number".into()),
        };
        let scale = v.iter().chain(current.iter()).map(scale_of).max().unwrap_or(0);
        let then = match &v {
            Some(n) => at_scale(n, scale)?,
            None => null_dec(scale),
        };
        let otherwise = match &current {
            Some(n) => at_scale(n, scale)?,
            None => null_dec(scale),
        };
        Ok((when(here).then(then).otherwise(otherwise).alias(column), Some(scale)))
    } else {
        let column = format!("{DIM_PREFIX}{name}");
        let then = match compile(ast, cols)? {
            Val::Str(e) => e,
            Val::Null => lit(Null {}).cast(DataType::String),
            Val::Num(n) => at_scale(&n, scale_of(&n))?.cast(DataType::String),
            Val::Bool(_) => return Err("a DIMENSION enrichment must give text".into()),
        };
        let otherwise = if cols.dimensions.contains(name) { col(column.as_str()) } else { lit(Null {}).cast(DataType::String) };
        Ok((when(here).then(then).otherwise(otherwise).alias(column), None))
    }
}
