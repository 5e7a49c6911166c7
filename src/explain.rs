//! `billrun explain`: how each line of an account's invoices for one cycle was computed — the
//! events counted and rejected, the meter quantities, the slab split, clamps, proration and the
//! rounding applied. Reads the same pipeline as `run`, writes nothing.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use polars::prelude::*;
use serde_json::{json, Value};

use crate::ingest::{Reason, ACCOUNT, REASON};
use crate::invoice::LineItem;
use crate::run::{compute, Computed, RunError, RunOptions};
use billrun_connectors::schema::TIMESTAMP;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("account `{account}` has no billing window containing {date} up to the as-of date {as_of}")]
    NoWindow { account: String, date: NaiveDate, as_of: NaiveDate },
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
}

fn lines_json(li: &LineItem) -> Vec<Value> {
    let mut out = Vec::new();
    if crate::render::is_billed_line(li.kind) {
        let parts: Vec<Value> = li
            .line_items
            .iter()
            .map(|c| {
                json!({
                    "type": c.kind, "description": c.description, "quantity": c.quantity,
                    "rate": c.value_per_quantity, "value": c.value, "metadata": c.metadata,
                })
            })
            .collect();
        out.push(json!({
            "type": li.kind, "description": li.description, "quantity": li.quantity,
            "rate": li.value_per_quantity, "exactValue": li.metadata.get("exactValue").map(crate::money::Text::from).or(li.value_per_quantity.clone()),
            "billed": li.value, "metadata": li.metadata, "parts": parts,
        }));
    } else {
        for c in &li.line_items {
            out.extend(lines_json(c));
        }
    }
    out
}

/// The explanation as JSON (the text form is rendered from it).
pub fn explain(opts: &RunOptions, account: &str, date: NaiveDate) -> Result<Value, ExplainError> {
    let c: Computed = compute(opts)?;
    let w = c
        .windows
        .iter()
        .find(|w| w.account_id == account && w.start <= date && date < w.end)
        .ok_or_else(|| ExplainError::NoWindow { account: account.into(), date, as_of: c.as_of })?;
    // rejected events of this account whose timestamp falls in the window
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let r = c
        .rejects
        .clone()
        .lazy()
        .filter(col(ACCOUNT).eq(lit(account)).and(col(TIMESTAMP).gt_eq(lit(w.start_us))).and(col(TIMESTAMP).lt(lit(w.end_us))))
        .select([col(REASON)])
        .collect()?;
    for code in r.column(REASON)?.u32()?.iter().flatten() {
        if let Some(reason) = Reason::from_code(code as u8) {
            *rejected.entry(reason.as_str().to_string()).or_insert(0) += 1;
        }
    }
    let org = &c.cfg.organization;
    let invoices: Vec<Value> = c
        .invoices
        .iter()
        .filter(|b| b.invoice.account_id == account && b.invoice.start_date == w.start)
        .map(|b| {
            let inv = &b.invoice;
            json!({
                "id": inv.id, "invoiceType": inv.invoice_type, "status": inv.status, "sequenceId": inv.sequence_id,
                "invoiceDate": inv.invoice_date, "currency": inv.currency,
                "rounding": format!("{} to {} decimal(s), once per line", org.rounding.as_str(), b.currency.minor_units),
                "usage": inv.usage_info.iter().map(|u| json!({"meter": u.id, "description": u.description, "quantity": u.value})).collect::<Vec<_>>(),
                "lines": lines_json(&inv.revenue_info),
                "total": inv.total_amount,
                "settlement": b.handoff,
            })
        })
        .collect();
    Ok(json!({
        "account": account,
        "pricePlan": w.plan_id,
        "schedule": w.schedule_id,
        "window": {"start": w.start, "endInclusive": w.end.pred_opt(), "cycleStart": w.cycle_start, "cycleEndInclusive": w.cycle_end.pred_opt(), "cycleNumber": w.cycle_index, "dueOn": w.due},
        "asOf": c.as_of,
        "events": {"counted": c.used_by_window.get(&w.id).copied().unwrap_or(0), "rejected": rejected},
        "invoices": invoices,
    }))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The explanation as text for a person.
pub fn to_text(e: &Value) -> String {
    let mut t = String::new();
    let w = &e["window"];
    t.push_str(&format!(
        "Account {} · plan {} · window {} – {} (cycle {} – {}, cycle #{} of the schedule) · grace ends {} · as of {}\n",
        s(&e["account"]),
        s(&e["pricePlan"]),
        s(&w["start"]),
        s(&w["endInclusive"]),
        s(&w["cycleStart"]),
        s(&w["cycleEndInclusive"]),
        s(&w["cycleNumber"]),
        s(&w["dueOn"]),
        s(&e["asOf"])
    ));
    t.push_str(&format!("Events counted in this window: {}\n", s(&e["events"]["counted"])));
    if let Some(r) = e["events"]["rejected"].as_object().filter(|r| !r.is_empty()) {
        t.push_str("Events of this account rejected in this window:\n");
        for (k, v) in r {
            t.push_str(&format!("  {k}: {v}\n"));
        }
    }
    for inv in e["invoices"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "\nInvoice {} ({}, {}{}) in {}, rounding {}\n",
            s(&inv["id"]),
            s(&inv["invoiceType"]),
            s(&inv["status"]),
            inv["sequenceId"].as_str().map(|x| format!(", {x}")).unwrap_or_default(),
            s(&inv["currency"]),
            s(&inv["rounding"])
        ));
        for u in inv["usage"].as_array().into_iter().flatten() {
            t.push_str(&format!("  meter {} ({}): quantity {}\n", s(&u["meter"]), s(&u["description"]), s(&u["quantity"])));
        }
        for l in inv["lines"].as_array().into_iter().flatten() {
            let q = l["quantity"].as_str().map(|q| format!(", quantity {q}")).unwrap_or_default();
            t.push_str(&format!("  {} [{}{}]\n", s(&l["description"]), s(&l["type"]), q));
            for p in l["parts"].as_array().into_iter().flatten() {
                match p["type"].as_str() {
                    Some("RATE_CONFIG_ADJUSTMENT_AMOUNT")
                    | Some("PRICING_RULE_REVENUE_UPDATE_AMOUNT")
                    | Some("PRICING_RULE_USAGE_UPDATE_AMOUNT") => {
                        t.push_str(&format!("    {}: adjustment {}\n", s(&p["description"]), s(&p["value"])))
                    }
                    _ => {
                        let pk = p["metadata"]["packageQuantity"].as_str().map(|x| format!(" ({x} packages)")).unwrap_or_default();
                        t.push_str(&format!(
                            "    {}: {} × {}{} = {}\n",
                            s(&p["description"]),
                            s(&p["quantity"]),
                            s(&p["rate"]),
                            pk,
                            s(&p["value"])
                        ));
                    }
                }
            }
            if let Some(f) = l["metadata"]["prorationFactor"].as_str() {
                t.push_str(&format!("    prorated: {} × {} = {}\n", s(&l["rate"]), f, s(&l["exactValue"])));
            }
            if let Some(m) = l["metadata"]["minimumCommitment"].as_str() {
                t.push_str(&format!("    minimum commitment {m} − subtotal = true-up\n"));
            }
            t.push_str(&format!("    exact {} → billed {}\n", s(&l["exactValue"]), s(&l["billed"])));
        }
        t.push_str(&format!("  total {} (sum of the billed lines)\n", s(&inv["total"])));
        let h = &inv["settlement"];
        for g in h["creditGrants"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "  hands to settlement: {} credits {} {} ({}, priority {}) from {} until {}\n",
                s(&g["status"]),
                s(&g["amount"]),
                s(&g["currency"]),
                s(&g["expiryType"]),
                s(&g["priority"]),
                s(&g["effectiveFrom"]),
                g["effectiveUntil"].as_str().unwrap_or("no expiry")
            ));
        }
        for f in h["featureCredits"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "  feature {} {} [{} – {}): granted {}, used {}, balance {}{}{}\n",
                s(&f["featureId"]),
                s(&f["source"]),
                s(&f["effectiveFrom"]),
                s(&f["effectiveUntil"]),
                s(&f["granted"]),
                s(&f["used"]),
                s(&f["balance"]),
                f["consumed"].as_str().map(|c| format!(", consumed in the window {c}")).unwrap_or_default(),
                f["unbilled"].as_str().map(|c| format!(", unbilled beyond maxQuantity {c}")).unwrap_or_default()
            ));
        }
        for r in h["refunds"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "  refund {} {} {} on {} ({}, prorated {})\n",
                s(&r["mode"]),
                s(&r["amount"]),
                s(&r["currency"]),
                s(&r["date"]),
                s(&r["description"]),
                s(&r["prorationFactor"])
            ));
        }
    }
    t
}
