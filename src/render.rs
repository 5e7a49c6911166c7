//! Rendering invoices through handlebars templates (HTML and plain text).
//!
//! Templates see a documented view model (templates/README.md) of pre-formatted strings: no
//! arithmetic and no money logic in templates. Handlebars runs in strict mode, so a missing
//! field is an error naming the template and the field, not an empty string. HTML output escapes
//! every value; the text template is not HTML-escaped. A template directory in the config
//! overrides the shipped defaults file by file.

use std::borrow::Cow;
use std::path::Path;

use handlebars::{no_escape, Handlebars};
use serde::Serialize;

use crate::invoice::{Invoice, LineItem};

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

pub struct Renderer {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
}

// The views borrow the invoice's strings: handlebars copies them once more into its JSON context.

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
        let prefix = if li.metadata.contains_key("invoiceId") { li.description.as_str() } else { prefix };
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

fn register(h: &mut Handlebars<'static>, name: &str, dir: Option<&Path>, default: &str) -> Result<(), RenderError> {
    let file = format!("{name}.hbs");
    let (source, label) = match dir.map(|d| d.join(&file)).filter(|p| p.exists()) {
        Some(p) => (
            std::fs::read_to_string(&p).map_err(|source| RenderError::Read { path: p.display().to_string(), source })?,
            p.display().to_string(),
        ),
        None => (default.to_string(), format!("templates/{file} (built in)")),
    };
    h.register_template_string(name, source).map_err(|e| RenderError::Template { template: label, message: e.to_string() })
}

impl Renderer {
    pub fn new(dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        register(&mut html, HTML, dir, DEFAULT_HTML)?;
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(no_escape);
        register(&mut text, TEXT, dir, DEFAULT_TEXT)?;
        Ok(Renderer { html, text })
    }

    /// Render one invoice to (HTML, text).
    pub fn render(&self, inv: &Invoice) -> Result<(String, String), RenderError> {
        fn err(t: &'static str) -> impl Fn(handlebars::RenderError) -> RenderError {
            move |e| RenderError::Template { template: format!("{t}.hbs"), message: e.to_string() }
        }
        // one JSON context for both templates
        let ctx = handlebars::Context::wraps(view(inv)).map_err(err(HTML))?;
        Ok((self.html.render_with_context(HTML, &ctx).map_err(err(HTML))?, self.text.render_with_context(TEXT, &ctx).map_err(err(TEXT))?))
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_is_any_spelling_of_zero_only() {
        for z in ["0", "0.00", "-0", "0.000000", "+0.0"] {
            assert!(is_zero(z), "{z}");
        }
        for n in ["", "1", "0.01", "-0.5", "10", "0.0000001", "."] {
            assert!(!is_zero(n), "{n}");
        }
    }
}
