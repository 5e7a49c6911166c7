//! Templates compiled to a small program that reads the view directly.
//!
//! Handlebars renders from a JSON copy of the view and resolves every `{{name}}` by building its
//! path from the context root, so that rendering 100 000 invoices was mostly allocation. A
//! template made only of text, `{{path}}` / `{{{path}}}`, `{{#if}}` / `{{#unless}}` and
//! `{{#each}}` over lists (with `{{else}}`), with plain paths (`name`, `a.b`, `this`), compiles
//! to a [`Program`] that writes the very bytes handlebars writes: the whitespace rules are
//! already applied in the parsed template, values are escaped with the same table, and truth
//! is handlebars' (an empty string or list is false).
//!
//! Anything else (other helpers, `@index`, `../`, partials, decorators, hash arguments) does
//! not compile, and a value the program cannot find while rendering ([`Miss`]) sends that
//! document back to handlebars, whose strict mode then names the missing field. Handlebars
//! stays the definition; the golden fixtures' documents and `render::tests` hold the two equal.

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::Path;

/// A value of the view as templates see it.
#[derive(Clone, Copy)]
pub(super) enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Scope(&'a dyn Scope),
    List(&'a dyn List),
}

/// An object of the view: its fields by name.
pub(super) trait Scope {
    fn get(&self, name: &str) -> Option<Value<'_>>;
}

/// A list of the view.
pub(super) trait List {
    fn len(&self) -> usize;
    fn item(&self, i: usize) -> Value<'_>;
}

impl<T: Scope> List for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn item(&self, i: usize) -> Value<'_> {
        Value::Scope(&self[i])
    }
}

impl List for Vec<String> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn item(&self, i: usize) -> Value<'_> {
        Value::Str(&self[i])
    }
}

impl Value<'_> {
    /// Handlebars' truth (`JsonTruthy` without `includeZero`): the view has no numbers or nulls.
    fn truthy(self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Bool(b) => b,
            Value::List(l) => l.len() > 0,
            Value::Scope(_) => true,
        }
    }
}

/// A value the program could not find or write: the document goes to handlebars.
#[derive(Debug)]
pub(super) struct Miss;

enum Node {
    Text(Box<str>),
    /// `{{path}}` (escaped unless the registry does not escape) or `{{{path}}}`.
    Value {
        path: Box<[Box<str>]>,
        escape: bool,
    },
    /// `{{#if path}}` (`truth`) or `{{#unless path}}` (not `truth`).
    If {
        path: Box<[Box<str>]>,
        truth: bool,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Each {
        path: Box<[Box<str>]>,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// A compiled template.
pub(super) struct Program {
    nodes: Vec<Node>,
}

/// The helpers handlebars registers itself: a `{{name}}` of one of these calls it.
const BUILT_IN_HELPERS: &[&str] =
    &["if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len"];

/// A plain path's segments (`name`, `a.b`; `this` is the scope itself); `None` for any other
/// kind of path (`../`, `@index`, `[segment]`, `a/b`), which handlebars renders.
fn path(p: &Parameter) -> Option<Box<[Box<str>]>> {
    let Parameter::Path(Path::Relative((_, raw))) = p else { return None };
    let named = |s: &str| !s.is_empty() && s != "this" && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let mut segs = raw.split('.').peekable();
    segs.next_if_eq(&"this");
    segs.map(|s| named(s).then(|| s.into())).collect()
}

/// The single plain path argument of a block helper without hash or block parameters.
fn block_path(h: &HelperTemplate) -> Option<Box<[Box<str>]>> {
    match (&h.params[..], h.hash.is_empty(), h.block_param.is_none()) {
        ([p], true, true) => path(p),
        _ => None,
    }
}

fn compile(t: &Template, escape: bool) -> Option<Vec<Node>> {
    let optional = |t: &Option<Template>| t.as_ref().map_or(Some(Vec::new()), |t| compile(t, escape));
    let mut nodes = Vec::with_capacity(t.elements.len());
    for e in &t.elements {
        nodes.push(match e {
            TemplateElement::RawString(s) => Node::Text(s.as_str().into()),
            TemplateElement::Comment(_) => continue,
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                if h.block || !h.params.is_empty() || !h.hash.is_empty() || h.name.as_name().is_none_or(|n| BUILT_IN_HELPERS.contains(&n)) {
                    return None;
                }
                Node::Value { path: path(&h.name)?, escape: escape && matches!(e, TemplateElement::Expression(_)) }
            }
            TemplateElement::HelperBlock(h) => {
                let path = block_path(h)?;
                match h.name.as_name()? {
                    name @ ("if" | "unless") => {
                        Node::If { path, truth: name == "if", then: optional(&h.template)?, otherwise: optional(&h.inverse)? }
                    }
                    "each" => Node::Each { path, body: optional(&h.template)?, otherwise: optional(&h.inverse)? },
                    _ => return None,
                }
            }
            _ => return None,
        });
    }
    Some(nodes)
}

fn resolve<'a>(scope: Value<'a>, path: &[Box<str>]) -> Result<Value<'a>, Miss> {
    path.iter().try_fold(scope, |v, seg| match v {
        Value::Scope(s) => s.get(seg).ok_or(Miss),
        _ => Err(Miss),
    })
}

/// Handlebars' `html_escape`, written straight into `out`.
fn escape_into(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(i) = rest.find(['<', '>', '"', '&', '\'', '`', '=']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'&' => "&amp;",
            b'\'' => "&#x27;",
            b'`' => "&#x60;",
            _ => "&#x3D;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn run(nodes: &[Node], scope: Value<'_>, out: &mut String) -> Result<(), Miss> {
    for n in nodes {
        match n {
            Node::Text(s) => out.push_str(s),
            Node::Value { path, escape } => {
                let text = match resolve(scope, path)? {
                    Value::Str(s) => s,
                    Value::Bool(true) => "true",
                    Value::Bool(false) => "false",
                    // handlebars writes lists and objects as JSON-ish text: not in a template of ours
                    Value::Scope(_) | Value::List(_) => return Err(Miss),
                };
                if *escape {
                    escape_into(text, out)
                } else {
                    out.push_str(text)
                }
            }
            Node::If { path, truth, then, otherwise } => {
                let branch = if resolve(scope, path)?.truthy() == *truth { then } else { otherwise };
                run(branch, scope, out)?;
            }
            Node::Each { path, body, otherwise } => match resolve(scope, path)? {
                Value::List(l) if l.len() > 0 => {
                    for i in 0..l.len() {
                        run(body, l.item(i), out)?;
                    }
                }
                Value::List(_) => run(otherwise, scope, out)?,
                // handlebars iterates an object's values: not in a view of ours
                _ => return Err(Miss),
            },
        }
    }
    Ok(())
}

impl Program {
    /// `None` when the template uses more than a program does (handlebars renders it).
    pub(super) fn compile(t: &Template, escape: bool) -> Option<Program> {
        compile(t, escape).map(|nodes| Program { nodes })
    }

    /// Render `root` into `out` (appended); on a [`Miss`], `out` holds a partial document.
    pub(super) fn render(&self, root: &dyn Scope, out: &mut String) -> Result<(), Miss> {
        run(&self.nodes, Value::Scope(root), out)
    }
}
