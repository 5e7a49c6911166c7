//! Rendering invoices through handlebars templates (HTML and plain text).
//!
//! Templates see a documented view model (templates/README.md) of pre-formatted strings: no
//! arithmetic and no money logic in templates. Handlebars runs in strict mode, so a missing
//! field is an error naming the template and the field, not an empty string. HTML output escapes
//! every value; the text template is not HTML-escaped. A template directory in the config
//! overrides the shipped defaults file by file. A template within what `program` covers (the
//! shipped ones are) is rendered by its compiled program, byte for byte as handlebars would.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use handlebars::{no_escape, Handlebars};
use serde::Serialize;

use crate::invoice::{Invoice, LineItem};

mod program;
use program::{Program, Scope, Value};

pub const HTML: &str = "invoice.html";
pub const TEXT: &str = "invoice.txt";
const DEFAULT_HTML: &str = include_str!("../templates/invoice.html.hbs");
const DEFAULT_TEXT: &str = include_str!("../templates/invoice.txt.hbs");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template `{template}`: {message}")]
    Template { template: String, message: String },
    #[error("cannot read template {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// One template: handlebars, and the same template compiled when it can be (`program`).
struct Compiled {
    name: &'static str,
    handlebars: Handlebars<'static>,
    program: Option<Program>,
    /// The size of the last document, to size the next one's buffer.
    last_len: AtomicUsize,
}

pub struct Renderer {
    html: Compiled,
    text: Compiled,
}

// The views borrow the invoice's strings. Templates read them through `Scope` (compiled
// programs) or through a JSON copy made by `Serialize` (handlebars); the two list the same
// fields under the same names (`render::tests::scope_and_json_agree`).

#[derive(Serialize)]
struct PartyView<'a> {
    name: &'a str,
    email: &'a str,
    address: Vec<String>,
}

#[derive(Serialize)]
struct DetailView<'a> {
    description: &'a str,
    quantity: &'a str,
    rate: &'a str,
    amount: &'a str,
}

#[derive(Serialize)]
struct LineView<'a> {
    description: Cow<'a, str>,
    quantity: &'a str,
    unit_price: &'a str,
    amount: &'a str,
    details: Vec<DetailView<'a>>,
}

#[derive(Serialize)]
struct UsageView<'a> {
    description: &'a str,
    quantity: &'a str,
}

/// What templates see. Every field is a string or a list; all money is pre-formatted.
#[derive(Serialize)]
struct InvoiceView<'a> {
    number: &'a str,
    id: &'a str,
    status: &'a str,
    is_draft: bool,
    invoice_type: &'a str,
    currency: &'a str,
    period_start: String,
    period_end: String,
    invoice_date: String,
    due_date: String,
    plan: &'a str,
    total: &'a str,
    /// Paid from the wallet (empty when nothing was paid).
    paid: &'a str,
    organization: PartyView<'a>,
    customer: PartyView<'a>,
    account: PartyView<'a>,
    lines: Vec<LineView<'a>>,
    usage: Vec<UsageView<'a>>,
}

impl Scope for PartyView<'_> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        Some(match name {
            "name" => Value::Str(self.name),
            "email" => Value::Str(self.email),
            "address" => Value::List(&self.address),
            _ => return None,
        })
    }
}

impl Scope for DetailView<'_> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        Some(Value::Str(match name {
            "description" => self.description,
            "quantity" => self.quantity,
            "rate" => self.rate,
            "amount" => self.amount,
            _ => return None,
        }))
    }
}

impl Scope for LineView<'_> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        Some(match name {
            "description" => Value::Str(&self.description),
            "quantity" => Value::Str(self.quantity),
            "unit_price" => Value::Str(self.unit_price),
            "amount" => Value::Str(self.amount),
            "details" => Value::List(&self.details),
            _ => return None,
        })
    }
}

impl Scope for UsageView<'_> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        Some(Value::Str(match name {
            "description" => self.description,
            "quantity" => self.quantity,
            _ => return None,
        }))
    }
}

impl Scope for InvoiceView<'_> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        Some(match name {
            "number" => Value::Str(self.number),
            "id" => Value::Str(self.id),
            "status" => Value::Str(self.status),
            "is_draft" => Value::Bool(self.is_draft),
            "invoice_type" => Value::Str(self.invoice_type),
            "currency" => Value::Str(self.currency),
            "period_start" => Value::Str(&self.period_start),
            "period_end" => Value::Str(&self.period_end),
            "invoice_date" => Value::Str(&self.invoice_date),
            "due_date" => Value::Str(&self.due_date),
            "plan" => Value::Str(self.plan),
            "total" => Value::Str(self.total),
            "paid" => Value::Str(self.paid),
            "organization" => Value::Scope(&self.organization),
            "customer" => Value::Scope(&self.customer),
            "account" => Value::Scope(&self.account),
            "lines" => Value::List(&self.lines),
            "usage" => Value::List(&self.usage),
            _ => return None,
        })
    }
}

fn address(a: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let get = |k: &str| a.get(k).cloned().unwrap_or_default();
    let city = [get("postalCode"), get("city"), get("state")].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    [get("line1"), get("line2"), city, get("country")].into_iter().filter(|s| !s.is_empty()).collect()
}

fn party(p: &crate::invoice::Party) -> PartyView<'_> {
    PartyView { name: &p.name, email: p.primary_email.as_deref().unwrap_or_default(), address: address(&p.address) }
}

/// Is this formatted number zero (`0`, `0.00`, `-0`)?
fn is_zero(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0' | b'.' | b'-' | b'+')) && s.bytes().any(|b| b == b'0')
}

/// Is this line item a billed line (shown as a row), rather than a total that groups others?
pub fn is_billed_line(kind: &str) -> bool {
    crate::invoice::line_class(kind).is_some()
}

/// Billed lines in tree order; inside a COMPOSITE invoice each merged invoice's lines are
/// prefixed with its account (the merged invoice's node carries `invoiceId`).
fn rate_card_lines<'a>(li: &'a LineItem, prefix: &str, out: &mut Vec<LineView<'a>>) {
    if is_billed_line(li.kind) {
        // a detail that carries nothing (no quantity, no amount: a slab the usage never
        // reached) stays in the JSON invoice but not in the documents a person reads
        let details = li
            .line_items
            .iter()
            .filter(|c| !(is_zero(&c.value) && c.quantity.as_deref().is_none_or(is_zero)))
            .map(|c| DetailView {
                description: &c.description,
                quantity: c.quantity.as_deref().unwrap_or_default(),
                rate: c.value_per_quantity.as_deref().unwrap_or_default(),
                amount: &c.value,
            })
            .collect();
        out.push(LineView {
            description: if prefix.is_empty() {
                Cow::Borrowed(&li.description)
            } else {
                Cow::Owned(format!("{prefix}: {}", li.description))
            },
            quantity: li.quantity.as_deref().unwrap_or_default(),
            unit_price: li.value_per_quantity.as_deref().unwrap_or_default(),
            amount: &li.value,
            details,
        });
    } else {
        let prefix = if li.metadata.contains_key("invoiceId") { &*li.description } else { prefix };
        for c in &li.line_items {
            rate_card_lines(c, prefix, out);
        }
    }
}

fn view(inv: &Invoice) -> InvoiceView<'_> {
    let mut lines = Vec::new();
    rate_card_lines(&inv.revenue_info, "", &mut lines);
    InvoiceView {
        number: inv.sequence_id.as_deref().unwrap_or("DRAFT"),
        id: &inv.id,
        status: inv.status,
        is_draft: inv.status == "DRAFT",
        invoice_type: inv.invoice_type,
        currency: &inv.currency,
        period_start: inv.start_date.to_string(),
        period_end: inv.end_date_inclusive.to_string(),
        invoice_date: inv.invoice_date.to_string(),
        due_date: inv.due_date.to_string(),
        plan: &inv.invoice_details.price_plan_name,
        total: &inv.total_amount,
        paid: inv.paid_amount.as_deref().unwrap_or_default(),
        organization: party(&inv.invoice_details.organization),
        customer: party(&inv.invoice_details.customer),
        account: party(&inv.invoice_details.account),
        lines,
        usage: inv.usage_info.iter().map(|u| UsageView { description: &u.description, quantity: &u.value }).collect(),
    }
}

fn register(name: &'static str, dir: Option<&Path>, default: &str, escape: bool) -> Result<Compiled, RenderError> {
    let file = format!("{name}.hbs");
    let (source, label) = match dir.map(|d| d.join(&file)).filter(|p| p.exists()) {
        Some(p) => (
            std::fs::read_to_string(&p).map_err(|source| RenderError::Read { path: p.display().to_string(), source })?,
            p.display().to_string(),
        ),
        None => (default.to_string(), format!("templates/{file} (built in)")),
    };
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    if !escape {
        h.register_escape_fn(no_escape);
    }
    h.register_template_string(name, source).map_err(|e| RenderError::Template { template: label, message: e.to_string() })?;
    let program = h.get_template(name).and_then(|t| Program::compile(t, escape));
    Ok(Compiled { name, handlebars: h, program, last_len: AtomicUsize::new(0) })
}

impl Compiled {
    /// Through the program, or through handlebars (`json`: the view's JSON context, made once
    /// for both templates when one of them needs it) when it has none or misses a value.
    fn render(&self, view: &InvoiceView, json: &mut Option<handlebars::Context>) -> Result<String, RenderError> {
        let err = |message: String| RenderError::Template { template: format!("{}.hbs", self.name), message };
        if let Some(p) = &self.program {
            let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
            if p.render(view, &mut out).is_ok() {
                self.last_len.store(out.len(), Ordering::Relaxed);
                return Ok(out);
            }
        }
        let ctx = match json {
            Some(c) => c,
            None => json.insert(handlebars::Context::wraps(view).map_err(|e| err(e.to_string()))?),
        };
        self.handlebars.render_with_context(self.name, ctx).map_err(|e| err(e.to_string()))
    }
}

impl Renderer {
    pub fn new(dir: Option<&Path>) -> Result<Self, RenderError> {
        Ok(Renderer { html: register(HTML, dir, DEFAULT_HTML, true)?, text: register(TEXT, dir, DEFAULT_TEXT, false)? })
    }

    /// Render one invoice to (HTML, text).
    pub fn render(&self, inv: &Invoice) -> Result<(String, String), RenderError> {
        let view = view(inv);
        let mut json = None;
        Ok((self.html.render(&view, &mut json)?, self.text.render(&view, &mut json)?))
    }
}

#[cfg(test)]
mod tests {
    use super::program::{Program, Scope, Value};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_is_any_spelling_of_zero_only() {
        for z in ["0", "0.00", "-0", "0.000000", "+0.0"] {
            assert!(is_zero(z), "{z}");
        }
        for n in ["", "1", "0.01", "-0.5", "10", "0.0000001", "."] {
            assert!(!is_zero(n), "{n}");
        }
    }

    /// Strings made of what escaping and truth depend on.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("<"),
                Just(">"),
                Just("&"),
                Just("\""),
                Just("'"),
                Just("`"),
                Just("="),
                Just("é €"),
                Just("0.00"),
                Just("ab"),
                Just("\n")
            ],
            0..4,
        )
        .prop_map(|v| v.concat())
    }

    #[derive(Debug, Clone)]
    struct Strings {
        top: Vec<String>,
        address: Vec<String>,
        lines: Vec<(Vec<String>, Vec<Vec<String>>)>,
        draft: bool,
    }

    fn strings() -> impl Strategy<Value = Strings> {
        let line = (proptest::collection::vec(text(), 4), proptest::collection::vec(proptest::collection::vec(text(), 4), 0..3));
        (
            proptest::collection::vec(text(), 16),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec(line, 0..4),
            any::<bool>(),
        )
            .prop_map(|(top, address, lines, draft)| Strings { top, address, lines, draft })
    }

    fn party<'a>(s: &'a Strings, i: usize) -> PartyView<'a> {
        PartyView { name: &s.top[i], email: &s.top[i + 1], address: s.address.clone() }
    }

    fn view_of(s: &Strings) -> InvoiceView<'_> {
        let t = |i: usize| s.top[i].as_str();
        InvoiceView {
            number: t(0),
            id: t(1),
            status: t(2),
            is_draft: s.draft,
            invoice_type: t(3),
            currency: t(4),
            period_start: t(5).to_string(),
            period_end: t(6).to_string(),
            invoice_date: t(7).to_string(),
            due_date: t(8).to_string(),
            plan: t(9),
            total: t(10),
            paid: t(11),
            organization: party(s, 12),
            customer: party(s, 13),
            account: party(s, 14),
            lines: s
                .lines
                .iter()
                .map(|(l, d)| LineView {
                    description: Cow::Borrowed(&l[0]),
                    quantity: &l[1],
                    unit_price: &l[2],
                    amount: &l[3],
                    details: d.iter().map(|d| DetailView { description: &d[0], quantity: &d[1], rate: &d[2], amount: &d[3] }).collect(),
                })
                .collect(),
            usage: s.lines.iter().map(|(l, _)| UsageView { description: &l[0], quantity: &l[1] }).collect(),
        }
    }

    /// Templates beyond the shipped ones, in what a program covers.
    const COVERED: &[&str] = &[
        "{{#unless paid}}unpaid{{else}}paid {{{paid}}}{{/unless}}|{{#each usage}}{{this.description}}={{quantity}};{{else}}none{{/each}}",
        "{{#each customer.address}}[{{this}}]{{/each}}{{#if lines}}{{#each lines}}{{#if details}}{{#each details}}{{rate}}{{/each}}{{else if quantity}}q{{/if}}{{/each}}{{/if}}",
        "{{is_draft}} {{! a comment }}{{{customer.name}}}\n  {{#if is_draft}}\n  draft\n  {{/if}}\n{{~account.email~}} .",
    ];

    fn handlebars(source: &str, escape: bool) -> Handlebars<'static> {
        let mut h = Handlebars::new();
        h.set_strict_mode(true);
        if !escape {
            h.register_escape_fn(no_escape);
        }
        h.register_template_string("t", source).unwrap();
        h
    }

    fn both(source: &str, escape: bool, view: &InvoiceView) -> (String, String) {
        let h = handlebars(source, escape);
        let program = Program::compile(h.get_template("t").unwrap(), escape).unwrap_or_else(|| panic!("compiles: {source}"));
        let mut out = String::new();
        program.render(view, &mut out).unwrap_or_else(|_| panic!("renders: {source}"));
        (out, h.render_with_context("t", &handlebars::Context::wraps(view).unwrap()).unwrap())
    }

    proptest! {
        /// A program writes what handlebars writes, for the shipped templates and others.
        #[test]
        fn program_writes_what_handlebars_writes(s in strings()) {
            let view = view_of(&s);
            for (source, escape) in [(DEFAULT_HTML, true), (DEFAULT_TEXT, false)].into_iter().chain(COVERED.iter().flat_map(|c| [(*c, true), (*c, false)])) {
                let (program, handlebars) = both(source, escape, &view);
                prop_assert_eq!(program, handlebars, "template {}", source);
            }
        }
    }

    /// Every field handlebars sees (the view's JSON) is the same value through `Scope`.
    #[test]
    fn scope_and_json_agree() {
        fn same(json: &serde_json::Value, v: Value, at: &str) {
            match (json, v) {
                (serde_json::Value::String(a), Value::Str(b)) => assert_eq!(a, b, "{at}"),
                (serde_json::Value::Bool(a), Value::Bool(b)) => assert_eq!(*a, b, "{at}"),
                (serde_json::Value::Array(a), Value::List(l)) => {
                    assert_eq!(a.len(), l.len(), "{at}");
                    a.iter().enumerate().for_each(|(i, x)| same(x, l.item(i), &format!("{at}.{i}")));
                }
                (serde_json::Value::Object(o), Value::Scope(s)) => {
                    for (k, x) in o {
                        same(x, s.get(k).unwrap_or_else(|| panic!("{at}.{k} is not in the scope")), &format!("{at}.{k}"))
                    }
                }
                (j, _) => panic!("{at}: {j} is another kind of value through the scope"),
            }
        }
        let s = Strings {
            top: (0..16).map(|i| format!("t{i}")).collect(),
            address: vec!["a".into(), "b".into()],
            lines: vec![(vec!["d".into(), "q".into(), "u".into(), "a".into()], vec![vec!["x".into(), "y".into(), "z".into(), "w".into()]])],
            draft: true,
        };
        let view = view_of(&s);
        let json = serde_json::to_value(&view).unwrap();
        assert!(json.as_object().unwrap().len() >= 18);
        same(&json, Value::Scope(&view), "view");
        let scope: &dyn Scope = &view;
        assert!(scope.get("nope").is_none());
    }

    /// What a program does not cover is left to handlebars, which still renders it.
    #[test]
    fn other_templates_are_left_to_handlebars() {
        for source in [
            "{{len lines}}",
            "{{#each lines}}{{@index}}{{/each}}",
            "{{#each lines}}{{../currency}}{{/each}}",
            "{{#with customer}}{{name}}{{/with}}",
            "{{#if paid includeZero=true}}x{{/if}}",
            "{{#each lines as |l|}}{{l.amount}}{{/each}}",
            "{{lookup customer \"name\"}}",
            "{{customer/name}}",
        ] {
            let h = handlebars(source, true);
            assert!(Program::compile(h.get_template("t").unwrap(), true).is_none(), "{source}");
        }
    }

    /// A field the view does not have: handlebars' strict mode names it, as before programs.
    #[test]
    fn a_missing_field_is_handlebars_error() {
        let dir = std::env::temp_dir().join(format!("billrun-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("invoice.html.hbs"), "{{#each lines}}{{amount}} {{nope}}{{/each}}{{customer.name}}").unwrap();
        let r = Renderer::new(Some(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(r.html.program.is_some() && r.text.program.is_some());
        let s = Strings { top: vec![String::new(); 16], address: vec![], lines: vec![(vec![String::new(); 4], vec![])], draft: false };
        let e = r.html.render(&view_of(&s), &mut None).unwrap_err().to_string();
        assert!(e.contains("invoice.html.hbs") && e.contains("nope"), "{e}");
        let s = Strings { lines: vec![], ..s };
        assert_eq!(r.html.render(&view_of(&s), &mut None).unwrap(), "");
    }
}
