//! Loading JSON and YAML documents without ever passing a number through binary floating point.
//!
//! Both formats are parsed with one YAML 1.2 event parser (JSON is YAML). Plain scalars that look
//! like non-integer numbers are kept as their literal text, wrapped as `{"$decimal": "<text>"}`
//! in the resulting `serde_json::Value`; integers that fit i64 stay JSON integers. Fields typed
//! [`Dec`] accept either, so `0.1`, `1.10` and `0.123456789012345678` load exactly. The position
//! (line, column) of every node is kept so errors can point at the source.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The key that marks an exact decimal literal inside a `serde_json::Value`.
pub const DECIMAL_KEY: &str = "$decimal";

/// Most values YAML aliases (`*name`) may copy into one document: aliases are expanded by
/// copying, so without a bound a few lines of nested aliases ("billion laughs") would exhaust
/// memory.
pub const MAX_ALIAS_VALUES: usize = 1_000_000;

/// How many path segments deep positions are kept while parsing: a catalog's items
/// (`accounts[5]`, `accountSchedules.acc-1[0]`), which every loaded object carries as its origin.
/// Deeper positions are only wanted for an error; a catalog of 100k accounts has a million
/// nodes, and keeping each one's path was a quarter of loading it.
const SHALLOW_DEPTH: usize = 3;

type Positions = FxHashMap<String, (usize, usize)>;

/// A parsed document: its value and the position of its nodes by path.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    /// Nodes at most [`SHALLOW_DEPTH`] segments deep, kept while parsing.
    shallow: Positions,
    /// The text, parsed again for every node's position the first time one is asked for.
    text: String,
    every: std::sync::OnceLock<Positions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl Doc {
    /// Line and column (1-based) of the node at `path` (as printed by `serde_path_to_error`),
    /// or of its nearest ancestor that has a position. The first call parses the text again.
    pub fn position(&self, path: &str) -> Option<(usize, usize)> {
        let every = self.every.get_or_init(|| build(&self.text, true).map(|b| b.positions).unwrap_or_default());
        nearest(every, path)
    }

    /// [`Self::position`] of a node at most three segments deep (a catalog item), or of its
    /// nearest such ancestor, without parsing again.
    pub fn item_position(&self, path: &str) -> Option<(usize, usize)> {
        nearest(&self.shallow, path)
    }
}

/// The position of `path` or of its nearest ancestor (a prefix ending before `.` or `[`).
fn nearest(positions: &Positions, path: &str) -> Option<(usize, usize)> {
    let mut p = path;
    loop {
        if let Some(pos) = positions.get(p) {
            return Some(*pos);
        }
        p = &p[..p.rfind(['.', '['])?];
    }
}

/// Parse JSON or YAML text. An empty document is `null`.
pub fn parse(text: &str) -> Result<Doc, DocError> {
    let b = build(text, false)?;
    Ok(Doc { value: b.root.unwrap_or(Value::Null), shallow: b.positions, text: text.to_string(), every: Default::default() })
}

/// The parse, keeping the position of every node (`every`) or of the shallow ones.
fn build(text: &str, every: bool) -> Result<Builder, DocError> {
    let mut b = Builder { every, ..Default::default() };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, false).map_err(|e| DocError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    match b.error.take() {
        Some(err) => Err(err),
        None => Ok(b),
    }
}

/// A collection being built: its items, (a map's) pending key, its anchor, and whether it took a
/// path segment (`false` for a collection written as a key, an error the parse reports).
enum Frame {
    Seq(Vec<Value>, usize, bool),
    Map(Map<String, Value>, Option<String>, usize, bool),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    path: Vec<String>,
    root: Option<Value>,
    /// Anchored values with their number of nodes.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes copied by aliases so far.
    alias_values: usize,
    positions: Positions,
    /// Keep every node's position, not only the first [`SHALLOW_DEPTH`] segments'.
    every: bool,
    /// Segments of the value being built (the path holds them only while they are kept).
    depth: usize,
    error: Option<DocError>,
}

/// Number of nodes in a value (without recursion: documents may be deeply nested).
fn count_nodes(v: &Value) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    n
}

impl Builder {
    fn current_path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            if seg.starts_with('[') || s.is_empty() {
                s.push_str(seg);
            } else {
                s.push('.');
                s.push_str(seg);
            }
        }
        s
    }

    fn kept(&self) -> bool {
        self.every || self.depth <= SHALLOW_DEPTH
    }

    /// Path segment the next value will take, pushed before the value is built.
    fn enter(&mut self, mark: Marker) -> bool {
        let is_root = match self.stack.last() {
            Some(Frame::Map(_, None, ..)) => return false, // this value is a key
            Some(_) => false,
            None => true,
        };
        if !is_root {
            self.depth += 1;
            if !self.kept() {
                return true;
            }
            let seg = match self.stack.last() {
                Some(Frame::Seq(items, ..)) => format!("[{}]", items.len()),
                Some(Frame::Map(_, Some(k), ..)) => k.clone(),
                _ => unreachable!("a value in a sequence or under a key"),
            };
            self.path.push(seg);
        }
        let p = self.current_path();
        self.positions.insert(p, (mark.line(), mark.col() + 1));
        true
    }

    fn leave(&mut self, had_segment: bool) {
        if had_segment && !self.stack.is_empty() {
            if self.kept() {
                self.path.pop();
            }
            self.depth -= 1;
        }
    }

    fn attach(&mut self, v: Value, mark: Marker) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Seq(items, ..)) => items.push(v),
            Some(Frame::Map(map, key, ..)) => match key.take() {
                None => {
                    let k = match v {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".into(),
                        Value::Object(o) if o.contains_key(DECIMAL_KEY) => o[DECIMAL_KEY].as_str().unwrap_or_default().to_string(),
                        _ => {
                            self.error.get_or_insert(DocError {
                                line: mark.line(),
                                col: mark.col() + 1,
                                message: "a mapping key must be a plain value".into(),
                            });
                            String::new()
                        }
                    };
                    if map.contains_key(&k) {
                        self.error.get_or_insert(DocError {
                            line: mark.line(),
                            col: mark.col() + 1,
                            message: format!("duplicate key `{k}`"),
                        });
                    }
                    *key = Some(k);
                }
                Some(k) => {
                    map.insert(k, v);
                }
            },
        }
    }
}

fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if is_integer(s) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
        return decimal_value(s);
    }
    if is_number(s) {
        return decimal_value(s);
    }
    Value::String(s.to_string())
}

fn decimal_value(text: &str) -> Value {
    let mut m = Map::new();
    m.insert(DECIMAL_KEY.to_string(), Value::String(text.to_string()));
    Value::Object(m)
}

fn is_integer(s: &str) -> bool {
    let t = s.strip_prefix(['-', '+']).unwrap_or(s);
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn is_number(s: &str) -> bool {
    let t = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut parts = mant.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mant_ok = match frac {
        None => !int.is_empty() && digits(int),
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mant_ok && exp_ok
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let seg = self.enter(mark);
                let v = if style == TScalarStyle::Plain { resolve_plain(&text) } else { Value::String(text) };
                if anchor > 0 {
                    self.anchors.insert(anchor, (v.clone(), 1));
                }
                self.leave(seg);
                self.attach(v, mark);
            }
            Event::Alias(id) => {
                let seg = self.enter(mark);
                self.leave(seg);
                let v = match self.anchors.get(&id) {
                    Some((v, n)) if self.alias_values + n <= MAX_ALIAS_VALUES => {
                        self.alias_values += n;
                        v.clone()
                    }
                    Some(_) => {
                        self.error.get_or_insert(DocError {
                            line: mark.line(),
                            col: mark.col() + 1,
                            message: format!("aliases expand to more than {MAX_ALIAS_VALUES} values"),
                        });
                        Value::Null
                    }
                    None => Value::Null,
                };
                self.attach(v, mark);
            }
            Event::SequenceStart(anchor, _) => {
                let seg = self.enter(mark);
                if !seg && !self.stack.is_empty() {
                    self.error.get_or_insert(DocError {
                        line: mark.line(),
                        col: mark.col() + 1,
                        message: "a mapping key must be a plain value".into(),
                    });
                }
                self.stack.push(Frame::Seq(Vec::new(), anchor, seg));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, anchor, seg)) = self.stack.pop() {
                    let v = Value::Array(items);
                    if anchor > 0 {
                        let n = count_nodes(&v);
                        self.anchors.insert(anchor, (v.clone(), n));
                    }
                    self.leave(seg);
                    self.attach(v, mark);
                }
            }
            Event::MappingStart(anchor, _) => {
                let seg = self.enter(mark);
                if !seg && !self.stack.is_empty() {
                    self.error.get_or_insert(DocError {
                        line: mark.line(),
                        col: mark.col() + 1,
                        message: "a mapping key must be a plain value".into(),
                    });
                }
                self.stack.push(Frame::Map(Map::new(), None, anchor, seg));
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(map, _, anchor, seg)) = self.stack.pop() {
                    let v = Value::Object(map);
                    if anchor > 0 {
                        let n = count_nodes(&v);
                        self.anchors.insert(anchor, (v.clone(), n));
                    }
                    self.leave(seg);
                    self.attach(v, mark);
                }
            }
            _ => {}
        }
    }
}

/// Parse decimal text exactly: plain (`12.50`) or scientific (`1.5e-3`). No float step.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let t = text.trim();
    if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).ok()
    } else {
        Decimal::from_str_exact(t.strip_prefix('+').unwrap_or(t)).ok()
    }
}

/// If `v` is an exact decimal literal (wrapped or integer), its text.
pub fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) if o.len() == 1 => o.get(DECIMAL_KEY).and_then(|t| t.as_str()).map(str::to_string),
        _ => None,
    }
}

/// A decimal read exactly from its literal text: a number or a string holding a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dec(pub Decimal);

impl<'de> serde::Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number (e.g. 12.5 or \"12.5\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dec, E> {
                Ok(Dec(Decimal::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dec, E> {
                Ok(Dec(Decimal::from(v)))
            }
            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Dec, E> {
                Err(E::custom("binary floating point is not accepted for exact values"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dec, E> {
                parse_decimal(v).map(Dec).ok_or_else(|| E::custom(format!("`{v}` is not a decimal number (at most 28 significant digits)")))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Dec, A::Error> {
                let key: Option<String> = map.next_key()?;
                match key.as_deref() {
                    Some(DECIMAL_KEY) => {
                        let text: String = map.next_value()?;
                        self.visit_str(&text)
                    }
                    _ => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl FromStr for Dec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_decimal(s).map(Dec).ok_or_else(|| format!("`{s}` is not a decimal number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_literal_text() {
        let doc = parse("a: 0.1\nb: 1.10\nc: 0.123456789012345678\nd: 7\ne: '0.5'\nf: [1e-3, x]\n").unwrap();
        let v = &doc.value;
        assert_eq!(number_text(&v["a"]).unwrap(), "0.1");
        assert_eq!(number_text(&v["b"]).unwrap(), "1.10");
        assert_eq!(number_text(&v["c"]).unwrap(), "0.123456789012345678");
        assert_eq!(v["d"], Value::from(7));
        assert_eq!(v["e"], Value::from("0.5"));
        assert_eq!(number_text(&v["f"][0]).unwrap(), "1e-3");
        let c: Dec = serde_json::from_value(v["c"].clone()).unwrap();
        assert_eq!(c.0.to_string(), "0.123456789012345678");
        let b: Dec = serde_json::from_value(v["b"].clone()).unwrap();
        assert_eq!(b.0.to_string(), "1.10");
        let f: Dec = serde_json::from_value(v["f"][0].clone()).unwrap();
        assert_eq!(f.0.to_string(), "0.001");
    }

    #[test]
    fn json_is_read_by_the_same_parser() {
        let doc = parse(r#"{"rate": 0.123456789012345678, "name": "x", "n": [1, 2.50]}"#).unwrap();
        assert_eq!(number_text(&doc.value["rate"]).unwrap(), "0.123456789012345678");
        assert_eq!(number_text(&doc.value["n"][1]).unwrap(), "2.50");
    }

    #[test]
    fn positions_are_kept_by_path() {
        let doc = parse("plans:\n  - id: a\n    cards:\n      - type: X\n").unwrap();
        assert_eq!(doc.position("plans[0].cards[0].type"), Some((4, 15)));
        assert_eq!(doc.position("plans[0].cards[0].missing").map(|p| p.0), Some(4));
    }

    #[test]
    fn a_collection_as_a_key_is_an_error_at_any_depth() {
        for text in ["{[x]: 1}", "a: {b: {c: {d: {[x]: 1}}}}", "a:\n  b:\n    c:\n      d:\n        ? {x: 1}\n        : 1\n"] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.message, "a mapping key must be a plain value", "{text}");
        }
    }

    #[test]
    fn item_positions_are_kept_while_parsing_and_deeper_ones_found_on_demand() {
        let doc = parse("plans:\n  - id: a\n    cards:\n      - type: X\nschedules:\n  acc-1:\n    - plan: a\n").unwrap();
        // three segments deep: kept while parsing, no second parse
        assert_eq!(doc.item_position("plans[0].id"), Some((2, 9)));
        assert_eq!(doc.item_position("schedules.acc-1[0]").map(|p| p.0), Some(7));
        assert!(doc.every.get().is_none());
        // deeper: the nearest kept ancestor without a second parse, the node itself with one
        assert_eq!(doc.item_position("plans[0].cards[0].type"), Some((4, 7)));
        assert_eq!(doc.position("plans[0].cards[0].type"), Some((4, 15)));
        assert!(doc.every.get().is_some());
        // the second parse finds the kept ones where the first did
        for p in ["plans", "plans[0]", "plans[0].id", "plans[0].cards", "schedules.acc-1", "schedules.acc-1[0]"] {
            assert_eq!(doc.item_position(p), doc.position(p), "{p}");
        }
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = format!("*a{}", i - 1);
            s.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
        }
        let e = parse(&s).unwrap_err();
        assert!(e.message.contains("aliases expand to more than"), "{e}");
        let ok = parse("a: &a {b: 1}\nc: *a\n").unwrap();
        assert_eq!(ok.value["c"]["b"], Value::from(1));
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_positions() {
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.line >= 1);
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate key `a`"), "{e}");
    }
}
