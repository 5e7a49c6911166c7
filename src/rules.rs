//! Pricing rules: ordered JSON-logic conditions and computations over the invoice's usage and
//! revenue (`usage.<key>`, `revenue.<key>`, keys `urc.<usage meter id>` and `ff.<add-on id>`),
//! with ADD (a new line) and UPDATE (replace a line's revenue, or its usage and re-rate) actions.
//! Pure: scalar evaluation in exact decimals; `/` keeps 4 decimals, half-up, as in meters.

use rust_decimal::Decimal;

use crate::jsonlogic::{Ast, Lit, Op, VarRef};
use crate::numeric;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A new line with the computation as its value.
    Add { description: String },
    /// Replace the revenue of the line with this key.
    UpdateRevenue(String),
    /// Replace the usage of the usage card with this key and re-rate it.
    UpdateUsage(String),
}

#[derive(Debug, Clone)]
pub struct PricingRule {
    pub id: String,
    pub name: String,
    pub order: i64,
    pub condition: Option<Ast>,
    pub computation: Ast,
    pub action: Action,
    /// Which invoice the rule applies to: the arrears invoice or the advance invoice.
    pub timing: crate::catalog::Timing,
}

/// A scalar JSON-logic value.
#[derive(Debug, Clone, PartialEq)]
pub enum SVal {
    Null,
    Bool(bool),
    Num(Decimal),
    Str(String),
}

impl SVal {
    pub fn truthy(&self) -> bool {
        match self {
            SVal::Null => false,
            SVal::Bool(b) => *b,
            SVal::Num(d) => !d.is_zero(),
            SVal::Str(s) => !s.is_empty(),
        }
    }
    fn num(&self) -> Option<Decimal> {
        match self {
            SVal::Num(d) => Some(*d),
            SVal::Str(s) => crate::doc::parse_decimal(s),
            _ => None,
        }
    }
}

fn div4(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (am, asc) = numeric::const_parts(a);
    let (bm, bsc) = numeric::const_parts(b);
    numeric::div4(am, asc, bm, bsc).and_then(|q| numeric::to_decimal(q, 4))
}

fn compare(op: Op, a: &SVal, b: &SVal) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (SVal::Str(x), SVal::Str(y)) => Some(x.cmp(y)),
        (SVal::Null, SVal::Null) => Some(Ordering::Equal),
        (SVal::Bool(x), SVal::Bool(y)) => Some(x.cmp(y)),
        _ => match (a.num(), b.num()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => None,
        },
    };
    match (op, ord) {
        (Op::Eq, Some(o)) => o == Ordering::Equal,
        (Op::Ne, Some(o)) => o != Ordering::Equal,
        (Op::Ne, None) => true,
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Le, Some(o)) => o != Ordering::Greater,
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (Op::Ge, Some(o)) => o != Ordering::Less,
        _ => false,
    }
}

/// Evaluate an expression; `Err` for an arithmetic failure (division by zero, overflow).
pub fn eval(ast: &Ast, vars: &dyn Fn(&str) -> Option<Decimal>) -> Result<SVal, String> {
    Ok(match ast {
        Ast::Lit(Lit::Null) => SVal::Null,
        Ast::Lit(Lit::Bool(b)) => SVal::Bool(*b),
        Ast::Lit(Lit::Num(d)) => SVal::Num(*d),
        Ast::Lit(Lit::Str(s)) => SVal::Str(s.clone()),
        Ast::Var { var: VarRef::Named(n), default } => match (vars(n), default) {
            (Some(d), _) => SVal::Num(d),
            (None, Some(Lit::Num(d))) => SVal::Num(*d),
            _ => SVal::Null,
        },
        Ast::Var { .. } => return Err("event variables are not available in pricing rules".into()),
        Ast::Op { op, args } => {
            let vals = || args.iter().map(|a| eval(a, vars)).collect::<Result<Vec<_>, _>>();
            match op {
                Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    let v = vals()?;
                    SVal::Bool(v.windows(2).all(|w| compare(*op, &w[0], &w[1])))
                }
                Op::And => SVal::Bool(vals()?.iter().all(SVal::truthy)),
                Op::Or => SVal::Bool(vals()?.iter().any(SVal::truthy)),
                Op::Not => SVal::Bool(!eval(&args[0], vars)?.truthy()),
                Op::Truthy => SVal::Bool(eval(&args[0], vars)?.truthy()),
                Op::If => {
                    let mut i = 0;
                    while i + 1 < args.len() {
                        if eval(&args[i], vars)?.truthy() {
                            return eval(&args[i + 1], vars);
                        }
                        i += 2;
                    }
                    if args.len() % 2 == 1 {
                        eval(&args[args.len() - 1], vars)?
                    } else {
                        SVal::Null
                    }
                }
                Op::In => {
                    let v = vals()?;
                    SVal::Bool(v[1..].iter().any(|x| compare(Op::Eq, &v[0], x)))
                }
                Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max => {
                    let v = vals()?;
                    let nums: Option<Vec<Decimal>> = v.iter().map(SVal::num).collect();
                    let Some(nums) = nums else { return Ok(SVal::Null) };
                    let r = match op {
                        Op::Sub if nums.len() == 1 => Some(-nums[0]),
                        Op::Div => div4(nums[0], nums[1]),
                        _ => {
                            let mut acc = Some(nums[0]);
                            for x in &nums[1..] {
                                acc = acc.and_then(|a| match op {
                                    Op::Add => a.checked_add(*x),
                                    Op::Sub => a.checked_sub(*x),
                                    Op::Mul => a.checked_mul(*x),
                                    Op::Min => Some(a.min(*x)),
                                    Op::Max => Some(a.max(*x)),
                                    _ => None,
                                });
                            }
                            acc
                        }
                    };
                    match r {
                        Some(d) => SVal::Num(d),
                        None => return Err(format!("arithmetic failed in `{op:?}` (division by zero or overflow)")),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonlogic::{parse_rule, Scope};

    struct Rules;
    impl Scope for Rules {
        fn has_attribute(&self, _: &str) -> bool {
            false
        }
        fn has_dimension(&self, _: &str) -> bool {
            false
        }
        fn has_named(&self, p: &str) -> bool {
            p.starts_with("usage.") || p.starts_with("revenue.")
        }
    }

    fn run(rule: &str) -> Result<SVal, String> {
        let ast = parse_rule(&serde_json::Value::String(rule.into()), &Rules).unwrap();
        eval(&ast, &|n| match n {
            "usage.urc.um.a" => Some(Decimal::new(100, 0)),
            "revenue.urc.um.a" => Some(Decimal::new(20000, 2)),
            _ => None,
        })
    }

    #[test]
    fn evaluates_togai_style_rules_exactly() {
        assert_eq!(run(r#"{">": [{"+": [{"var": "revenue.urc.um.a"}, {"var": "usage.urc.um.a"}]}, 100]}"#).unwrap(), SVal::Bool(true));
        assert_eq!(run(r#"{"*": [{"var": "revenue.urc.um.a"}, -0.1]}"#).unwrap(), SVal::Num(Decimal::new(-20000, 3)));
        assert_eq!(run(r#"{"/": [{"var": "usage.urc.um.a"}, 3]}"#).unwrap(), SVal::Num(Decimal::new(333333, 4)));
        assert!(run(r#"{"/": [1, 0]}"#).is_err());
        assert_eq!(run(r#"{"if": [{"<": [{"var": "usage.urc.um.a"}, 50]}, 1, 2]}"#).unwrap(), SVal::Num(Decimal::new(2, 0)));
    }
}
