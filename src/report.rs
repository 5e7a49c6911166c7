//! The re-rating report as one self-contained HTML page: a summary, a bar chart of revenue per
//! plan (issued vs re-rated, inline SVG), the largest account deltas and every invoice that
//! changed. No script, no external resource (the page's Content-Security-Policy forbids both);
//! every value is escaped.

use std::fmt::Write;

use rust_decimal::Decimal;

use crate::rerate::RerateReport;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn signed(d: Decimal) -> String {
    if d > Decimal::ZERO {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

/// Bar heights are drawing coordinates, not money: the one place a ratio of amounts is taken,
/// in exact decimals, then rounded to a pixel.
fn bar(v: Decimal, max: Decimal, height: u32) -> u32 {
    if max <= Decimal::ZERO || v <= Decimal::ZERO {
        return 0;
    }
    let h = (v * Decimal::from(height) / max).round();
    u32::try_from(h.mantissa() / 10i128.pow(h.scale())).unwrap_or(height)
}

fn chart(r: &RerateReport) -> String {
    const H: u32 = 180;
    const GROUP: u32 = 120;
    let max = r.plans.iter().flat_map(|p| [p.issued, p.rerated]).max().unwrap_or(Decimal::ZERO);
    let width = (60 + GROUP * r.plans.len() as u32).max(260);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="revenue-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" role="img" aria-label="Revenue per plan, issued and re-rated">"#,
        H + 70
    );
    let _ = write!(s, r##"<line x1="40" y1="{y}" x2="{width}" y2="{y}" stroke="#444"/>"##, y = H + 20);
    for (i, p) in r.plans.iter().enumerate() {
        let x = 50 + GROUP * i as u32;
        for (j, (v, class, label)) in [(p.issued, "issued", "issued"), (p.rerated, "rerated", "re-rated")].into_iter().enumerate() {
            let h = bar(v, max, H);
            let bx = x + j as u32 * 45;
            let _ = write!(
                s,
                r#"<rect class="bar {class}" x="{bx}" y="{}" width="40" height="{h}"><title>{} {label}: {} {}</title></rect>"#,
                H + 20 - h,
                esc(&p.plan_name),
                esc(&p.currency),
                v
            );
            let _ = write!(s, r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#, bx + 20, H + 15 - h, v);
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{} ({})</text>"#,
            x + 42,
            H + 40,
            esc(&p.plan_name),
            esc(&p.currency)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="50" y="{y}" width="12" height="12" class="bar issued"/><text x="66" y="{t}" font-size="12">issued</text><rect x="130" y="{y}" width="12" height="12" class="bar rerated"/><text x="146" y="{t}" font-size="12">re-rated</text></svg>"##,
        y = H + 50,
        t = H + 61
    );
    s
}

/// The report page.
pub fn html(r: &RerateReport) -> String {
    let changed: Vec<_> = r.invoices.iter().filter(|i| !i.delta.is_zero() || i.lines.iter().any(|l| !l.delta.is_zero())).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Re-rating {from} – {to}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.bar.issued {{ fill: #9aa5b1; }} .bar.rerated {{ fill: #2f6fde; }}
.up {{ color: #a11; }} .down {{ color: #161; }}
</style></head><body>
<h1>Re-rating {from} – {to}</h1>
<p>As of {as_of}, ledger generation {generation}, catalog <code>{catalog}</code>: {n} issued invoices re-rated, {c} changed.
Amounts are what rating bills before credits and charges; a delta is split into late usage, corrected events and plan changes.</p>
<h2>Revenue per plan</h2>
"#,
        from = r.from,
        to = r.to,
        as_of = r.as_of,
        generation = r.ledger_generation,
        catalog = esc(&r.catalog),
        n = r.invoices.len(),
        c = changed.len()
    );
    s.push_str(&chart(r));
    s.push_str("\n<h2>Largest account deltas</h2>\n<table id=\"accounts\"><thead><tr><th>account</th><th>currency</th><th>issued</th><th>re-rated</th><th>delta</th></tr></thead><tbody>\n");
    for a in r.accounts.iter().take(20) {
        let class = if a.delta > Decimal::ZERO {
            "up"
        } else if a.delta < Decimal::ZERO {
            "down"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num {class}">{}</td></tr>"#,
            esc(&a.account_id),
            esc(&a.currency),
            a.issued,
            a.rerated,
            signed(a.delta)
        );
    }
    s.push_str("</tbody></table>\n<h2>Changed invoices</h2>\n<table id=\"invoices\"><thead><tr><th>account</th><th>invoice</th><th>period</th><th>line</th><th>issued</th><th>re-rated</th><th>delta</th><th>late usage</th><th>corrected events</th><th>plan changed</th></tr></thead><tbody>\n");
    for i in &changed {
        for l in i.lines.iter().filter(|l| !l.delta.is_zero()) {
            let _ = writeln!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td>{} – {}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                esc(&i.account_id),
                esc(i.sequence_id.as_deref().unwrap_or(&i.invoice_id)),
                i.start_date,
                i.end_date.pred_opt().unwrap_or(i.end_date),
                esc(if l.description.is_empty() { &l.id } else { &l.description }),
                l.issued,
                l.rerated,
                signed(l.delta),
                signed(l.late_usage),
                signed(l.corrected_events),
                signed(l.plan_changed)
            );
        }
    }
    s.push_str("</tbody></table>\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_exactly_and_escaping_is_complete() {
        assert_eq!(bar(Decimal::new(5000, 2), Decimal::new(10000, 2), 180), 90);
        assert_eq!(bar(Decimal::ZERO, Decimal::new(10000, 2), 180), 0);
        assert_eq!(bar(Decimal::ONE, Decimal::ZERO, 180), 0);
        assert_eq!(esc(r#"<script>alert("x")</script>&'"#), "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;");
    }
}
