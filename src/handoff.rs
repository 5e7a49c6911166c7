//! What rating hands to settlement besides invoices: credits granted by credit-grant rate cards,
//! feature-credit entries of billing entitlements and overage, and prorated license refunds.
//! Rating only records them (each tied to the invoice that caused it); settlement (credits,
//! wallet, ledger) applies them. Written as `settlement.json` by the run. Pure data.

use chrono::NaiveDate;
use serde::Serialize;

/// Credits granted to an account (Togai's `Credit`, from a credit-grant rate card or a refund).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreditGrant {
    /// `<schedule>#<window start>$<add-on>`, like Togai's entry ids: stable across re-runs.
    pub id: String,
    pub account_id: String,
    pub invoice_id: String,
    pub source: &'static str,
    pub add_on_id: String,
    pub description: String,
    pub currency: String,
    /// The credit amount, exact (money, in `currency`).
    pub amount: String,
    pub priority: i64,
    pub expiry_type: &'static str,
    pub effective_from: NaiveDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_until: Option<NaiveDate>,
    pub applicable_entity_ids: Vec<String>,
    /// GRANTED, or ON_PAYMENT: PREPAID credits exist once the invoice is paid.
    pub status: &'static str,
}

/// One feature-credit entry (Togai's `FeatureCreditEntry`) for a window: `granted = used + balance`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureCreditEntry {
    /// `<schedule>#<window start>$PRICE_PLAN` or `…$OVERAGE`.
    pub id: String,
    pub account_id: String,
    pub invoice_id: String,
    pub feature_id: String,
    /// PRICE_PLAN (a billing entitlement's grant) or OVERAGE (use billed as overage).
    pub source: &'static str,
    pub effective_from: NaiveDate,
    pub effective_until: NaiveDate,
    pub granted: String,
    pub used: String,
    pub balance: String,
    /// PRICE_PLAN: all use of the feature in the window. OVERAGE: use beyond the credits that
    /// `maxQuantity` left unbilled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbilled: Option<String>,
}

/// A prorated refund of an in-advance license decrease (`proratedRefundMode`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    /// `<schedule>#<window start>$<add-on>$<date>`.
    pub id: String,
    pub account_id: String,
    /// The advance invoice whose charge is partly refunded.
    pub invoice_id: String,
    pub add_on_id: String,
    /// CREDITS (a credit grant), WALLET (a wallet top-up) or PAYMENT (money back).
    pub mode: &'static str,
    pub date: NaiveDate,
    pub currency: String,
    /// Rounded once to the currency's minor unit, like an invoice line.
    pub amount: String,
    pub description: String,
    pub proration_factor: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub credit_grants: Vec<CreditGrant>,
    pub feature_credits: Vec<FeatureCreditEntry>,
    pub refunds: Vec<Refund>,
}

impl Handoff {
    pub fn is_empty(&self) -> bool {
        self.credit_grants.is_empty() && self.feature_credits.is_empty() && self.refunds.is_empty()
    }
    pub fn extend(&mut self, other: &Handoff) {
        self.credit_grants.extend(other.credit_grants.iter().cloned());
        self.feature_credits.extend(other.feature_credits.iter().cloned());
        self.refunds.extend(other.refunds.iter().cloned());
    }
}
