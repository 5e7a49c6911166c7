//! JSON-logic as Togai uses it in meters: parsing into a typed AST (no evaluation here).
//! The AST is compiled to column expressions in `meter::compile`; parsing and type checks run
//! at catalog validation so `billrun validate` reports every bad expression.
//!
//! Supported: `var` (with default), `== != === !== < <= > >=` (2 or 3 operands), `and or ! !!`,
//! `if` (any number of branches), `in` (value in a list, Togai's varargs form included),
//! `+ - * /` (division keeps 4 decimals, half-up), `min max`. Numbers are exact decimals.

use rust_decimal::Decimal;
use serde_json::Value;

use crate::doc;

/// Deepest nesting accepted; deeper expressions are rejected, not recursed into.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Num(Decimal),
    Str(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VarRef {
    Attribute(String),
    Dimension(String),
    /// A numeric variable of another scope, e.g. `usage.urc.um.calls` in a pricing rule.
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Not,
    Truthy,
    If,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Lit(Lit),
    Var { var: VarRef, default: Option<Lit> },
    Op { op: Op, args: Vec<Ast> },
}

/// The static kind of an expression's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Num,
    Str,
    Null,
}

/// What a variable refers to: resolved against the event schema.
pub trait Scope {
    fn has_attribute(&self, name: &str) -> bool;
    fn has_dimension(&self, name: &str) -> bool;
    /// A numeric variable outside events (pricing rules: `usage.<key>`, `revenue.<key>`).
    fn has_named(&self, _path: &str) -> bool {
        false
    }
    /// An enrichment dependency (`dependencies.<name>`): `Some(true)` numeric, `Some(false)` text.
    fn dependency(&self, _name: &str) -> Option<bool> {
        None
    }
}

/// The event-frame field name of an enrichment dependency (an attribute or a dimension of the
/// frame, joined per account before the enrichments run).
pub fn dependency_field(name: &str) -> String {
    format!("dependencies.{name}")
}

/// Parse a JSON-logic value. Togai stores matchers/computations as JSON text inside a string;
/// such strings are parsed (exactly) first. `"1"` is the number 1.
pub fn parse_rule(v: &Value, scope: &dyn Scope) -> Result<Ast, String> {
    match v {
        Value::String(s) => {
            let d = doc::parse(s).map_err(|e| format!("not valid JSON: {e}"))?;
            parse(&d.value, scope, 0)
        }
        other => parse(other, scope, 0),
    }
}

fn lit_of(v: &Value) -> Option<Lit> {
    if let Some(t) = doc::number_text(v) {
        return doc::parse_decimal(&t).map(Lit::Num);
    }
    match v {
        Value::Null => Some(Lit::Null),
        Value::Bool(b) => Some(Lit::Bool(*b)),
        Value::String(s) => Some(Lit::Str(s.clone())),
        _ => None,
    }
}

fn resolve_var(path: &str, scope: &dyn Scope) -> Result<VarRef, String> {
    if scope.has_named(path) {
        return Ok(VarRef::Named(path.to_string()));
    }
    for p in ["attributes.", "attribute."] {
        if let Some(n) = path.strip_prefix(p) {
            return if scope.has_attribute(n) {
                Ok(VarRef::Attribute(n.to_string()))
            } else {
                Err(format!("`{path}`: the event schema has no attribute `{n}`"))
            };
        }
    }
    for p in ["dependencies.", "dependency."] {
        if let Some(n) = path.strip_prefix(p) {
            return match scope.dependency(n) {
                Some(true) => Ok(VarRef::Attribute(dependency_field(n))),
                Some(false) => Ok(VarRef::Dimension(dependency_field(n))),
                None => Err(format!("`{path}`: the event schema declares no enrichment dependency `{n}`")),
            };
        }
    }
    for p in ["dimensions.", "dimension."] {
        if let Some(n) = path.strip_prefix(p) {
            return if scope.has_dimension(n) {
                Ok(VarRef::Dimension(n.to_string()))
            } else {
                Err(format!("`{path}`: the event schema has no dimension `{n}`"))
            };
        }
    }
    Err(format!("unsupported variable `{path}` (expected attribute.<name> or dimension.<name>)"))
}

fn parse(v: &Value, scope: &dyn Scope, depth: usize) -> Result<Ast, String> {
    if depth > MAX_DEPTH {
        return Err(format!("expression nested deeper than {MAX_DEPTH} levels"));
    }
    if let Some(l) = lit_of(v) {
        return Ok(Ast::Lit(l));
    }
    let obj = match v {
        Value::Object(o) => o,
        Value::Array(_) => return Err("an array is only allowed as the list of `in`".into()),
        _ => return Err(format!("unexpected value {v}")),
    };
    if obj.len() != 1 {
        return Err(format!("an operation must have exactly one operator key, found {}", obj.len()));
    }
    let (name, raw_args) = obj.iter().next().expect("one key");
    let args: Vec<&Value> = match raw_args {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if name == "var" {
        let path = args.first().and_then(|a| a.as_str()).ok_or("`var` needs a variable name")?;
        let default = match args.get(1) {
            None => None,
            Some(d) => Some(lit_of(d).ok_or("the default of `var` must be a literal")?),
        };
        return Ok(Ast::Var { var: resolve_var(path, scope)?, default });
    }
    let op = match name.as_str() {
        "==" | "===" => Op::Eq,
        "!=" | "!==" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "and" => Op::And,
        "or" => Op::Or,
        "!" => Op::Not,
        "!!" => Op::Truthy,
        "if" | "?:" => Op::If,
        "in" => Op::In,
        "+" => Op::Add,
        "-" => Op::Sub,
        "*" => Op::Mul,
        "/" => Op::Div,
        "min" => Op::Min,
        "max" => Op::Max,
        other => {
            return Err(format!("operator `{other}` is not supported (supported: var == != < <= > >= and or ! !! if in + - * / min max)"))
        }
    };
    if op == Op::In {
        // {"in": [needle, [a, b]]} or Togai's {"in": [needle, a, b]}
        let needle = parse(args.first().ok_or("`in` needs a value and a list")?, scope, depth + 1)?;
        let list: Vec<&Value> = match args.get(1) {
            Some(Value::Array(items)) if args.len() == 2 => items.iter().collect(),
            Some(Value::String(_)) if args.len() == 2 => {
                return Err("`in` with a string haystack (substring test) is not supported; give a list".into())
            }
            _ => args[1..].to_vec(),
        };
        let mut out = vec![needle];
        for item in list {
            out.push(Ast::Lit(lit_of(item).ok_or("the list of `in` must hold literals")?));
        }
        return Ok(Ast::Op { op, args: out });
    }
    let parsed = args.iter().map(|a| parse(a, scope, depth + 1)).collect::<Result<Vec<_>, _>>()?;
    let n = parsed.len();
    let ok = match op {
        Op::Eq | Op::Ne => n == 2,
        Op::Lt | Op::Le | Op::Gt | Op::Ge => n == 2 || n == 3,
        Op::Not | Op::Truthy => n == 1,
        Op::And | Op::Or | Op::Min | Op::Max | Op::Add | Op::Mul => n >= 1,
        Op::Sub => n == 1 || n == 2,
        Op::Div => n == 2,
        Op::If => n >= 1,
        Op::In => unreachable!(),
    };
    if !ok {
        return Err(format!("`{name}` does not take {n} operand(s)"));
    }
    Ok(Ast::Op { op, args: parsed })
}

/// The static kind of an expression, or why it cannot be evaluated column-wise.
pub fn kind(ast: &Ast) -> Result<Kind, String> {
    Ok(match ast {
        Ast::Lit(Lit::Null) => Kind::Null,
        Ast::Lit(Lit::Bool(_)) => Kind::Bool,
        Ast::Lit(Lit::Num(_)) => Kind::Num,
        Ast::Lit(Lit::Str(_)) => Kind::Str,
        // a default of another kind than its variable cannot be compiled: refuse it here
        Ast::Var { var: VarRef::Attribute(_), default: Some(Lit::Str(_) | Lit::Bool(_)) } => {
            return Err("the default of `var` must be a number like the attribute".into())
        }
        Ast::Var { var: VarRef::Dimension(_), default: Some(Lit::Num(_) | Lit::Bool(_)) } => {
            return Err("the default of `var` must be text like the dimension".into())
        }
        Ast::Var { var: VarRef::Attribute(_), .. } => Kind::Num,
        Ast::Var { var: VarRef::Dimension(_), .. } => Kind::Str,
        Ast::Var { var: VarRef::Named(_), .. } => Kind::Num,
        Ast::Op { op, args } => match op {
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let kinds = args.iter().map(kind).collect::<Result<Vec<_>, _>>()?;
                if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) && kinds.contains(&Kind::Bool) {
                    return Err("ordering comparisons need numbers or text".into());
                }
                if kinds.contains(&Kind::Bool) && kinds.iter().any(|k| matches!(k, Kind::Num | Kind::Str)) {
                    return Err("comparing a boolean with a number or text is not supported".into());
                }
                Kind::Bool
            }
            Op::And | Op::Or | Op::Not | Op::Truthy | Op::In => {
                for a in args {
                    kind(a)?;
                }
                Kind::Bool
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max => {
                for a in args {
                    match kind(a)? {
                        Kind::Num | Kind::Null | Kind::Str => {}
                        Kind::Bool => return Err("arithmetic on a boolean is not supported".into()),
                    }
                }
                Kind::Num
            }
            Op::If => {
                let mut out = Kind::Null;
                for (i, a) in args.iter().enumerate() {
                    let k = kind(a)?;
                    let is_value = i % 2 == 1 || i == args.len() - 1;
                    if is_value && k != Kind::Null {
                        if out != Kind::Null && out != k {
                            return Err(format!("the branches of `if` give different kinds of value ({out:?} and {k:?})"));
                        }
                        out = k;
                    }
                }
                out
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S;
    impl Scope for S {
        fn has_attribute(&self, n: &str) -> bool {
            n == "distance" || n == "tokens"
        }
        fn has_dimension(&self, n: &str) -> bool {
            n == "city"
        }
    }

    #[test]
    fn parses_togai_string_rules_exactly() {
        let v = Value::String(r#"{"*": [{"var": "attributes.distance"}, 0.123456789012345678]}"#.into());
        let ast = parse_rule(&v, &S).unwrap();
        match ast {
            Ast::Op { op: Op::Mul, args } => {
                assert_eq!(args[0], Ast::Var { var: VarRef::Attribute("distance".into()), default: None });
                assert_eq!(args[1], Ast::Lit(Lit::Num("0.123456789012345678".parse().unwrap())));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_rule(&Value::String("1".into()), &S).unwrap(), Ast::Lit(Lit::Num(Decimal::ONE)));
    }

    #[test]
    fn togai_varargs_in_and_array_var() {
        let v: Value = serde_json::from_str(r#"{"in": [{"var": ["dimension.city"]}, "chennai", "mumbai"]}"#).unwrap();
        let ast = parse_rule(&v, &S).unwrap();
        assert_eq!(kind(&ast).unwrap(), Kind::Bool);
        if let Ast::Op { args, .. } = ast {
            assert_eq!(args.len(), 3);
        }
    }

    #[test]
    fn errors_are_specific() {
        let bad = |s: &str| parse_rule(&Value::String(s.into()), &S).unwrap_err();
        assert!(bad(r#"{"var": "attribute.nope"}"#).contains("no attribute `nope`"));
        assert!(bad(r#"{"%": [1, 2]}"#).contains("operator `%` is not supported"));
        assert!(bad(r#"{"/": [1]}"#).contains("does not take 1"));
        assert!(bad("{").contains("not valid JSON"));
        let mut deep = String::from("1");
        for _ in 0..100 {
            deep = format!("{{\"+\": [{deep}]}}");
        }
        assert!(bad(&deep).contains("deeper than"));
        let mixed = parse_rule(&Value::String(r#"{"if": [true, "a", 1]}"#.into()), &S).unwrap();
        assert!(kind(&mixed).is_err());
        // a default of the wrong kind is refused at validation, not when the meter is compiled
        for bad in [r#"{"var": ["attribute.tokens", "d"]}"#, r#"{"var": ["attribute.tokens", true]}"#, r#"{"var": ["dimension.city", 1]}"#]
        {
            let ast = parse_rule(&Value::String(bad.into()), &S).unwrap();
            assert!(kind(&ast).unwrap_err().contains("default of `var`"), "{bad}");
        }
        let ok = parse_rule(&Value::String(r#"{"var": ["attribute.tokens", 1.5]}"#.into()), &S).unwrap();
        assert_eq!(kind(&ok).unwrap(), Kind::Num);
    }
}
