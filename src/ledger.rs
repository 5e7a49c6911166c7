//! The ledger: what billrun has issued and what it owes or holds, carried from run to run.
//!
//! It lives in the store as immutable generations, `ledger/<generation>.json`; a run reads the
//! latest and commits the next with a create-only (conditional) write, so two runs of the same
//! period cannot both commit. Pure data and its (de)serialisation; reading and writing the store
//! is `run`'s job.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: &str = "billrun.ledger.v1";
pub const PREFIX: &str = "ledger/";

/// One ledger generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ledger {
    pub schema_version: String,
    /// 0 is the empty ledger of a new store (never written).
    pub generation: u64,
    /// The as-of date of the run that committed this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<NaiveDate>,
    /// The next invoice sequence number (monotonic and gap-free across runs).
    pub next_sequence: u64,
    /// Issued invoices by id. An issued invoice is never rewritten.
    pub issued: BTreeMap<String, IssuedInvoice>,
    /// Credits by id, with their transactions.
    pub credits: BTreeMap<String, CreditBalance>,
    /// Wallets by account id.
    pub wallets: BTreeMap<String, WalletBalance>,
    /// Miscellaneous charge id → the invoice that billed it.
    pub misc_charges: BTreeMap<String, String>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            schema_version: SCHEMA_VERSION.into(),
            generation: 0,
            as_of: None,
            next_sequence: 1,
            issued: BTreeMap::new(),
            credits: BTreeMap::new(),
            wallets: BTreeMap::new(),
            misc_charges: BTreeMap::new(),
        }
    }
}

/// An issued invoice in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuedInvoice {
    pub account_id: String,
    pub owner_id: String,
    pub invoice_type: String,
    /// DUE, PAID, PARTIALLY_PAID, MERGED or COMPOSITE's own status.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_id: Option<String>,
    pub currency: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub invoice_date: NaiveDate,
    /// The invoice's total after credits (what the customer owes before wallet payments).
    pub total: Decimal,
    /// Paid from the wallet when issued.
    pub paid: Decimal,
    /// What rating billed (rate-card line id → amount, before credits and charges): late usage
    /// is measured against it.
    pub rated: BTreeMap<String, Decimal>,
    /// Line changes billed since by adjustments (adjustment invoices or credits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adjusted: BTreeMap<String, Decimal>,
    /// The composite invoice a MERGED invoice was consolidated into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// Adjustment invoices (or credits) issued for this invoice's late usage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<String>,
    /// The run (as-of date) that issued it.
    pub issued_as_of: NaiveDate,
    /// Store key → sha256 of the files written for it (JSON, HTML, text).
    pub files: BTreeMap<String, String>,
}

/// A credit's state (Togai's `Credit` with its transactions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditBalance {
    pub account_id: String,
    pub currency: String,
    /// CATALOG, CREDIT_GRANT, REFUND or ADJUSTMENT.
    pub source: String,
    pub amount: Decimal,
    pub remaining: Decimal,
    pub priority: i64,
    pub effective_from: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_until: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applicable_entity_ids: Vec<String>,
    /// Oldest first among equals: the grant's creation (RFC 3339, sortable).
    pub created_at: String,
    /// ACTIVE, CONSUMED, EXPIRED or VOIDED.
    pub status: String,
    pub transactions: Vec<CreditTransaction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditTransaction {
    /// CREDITED, DEBITED, EXPIRED or VOIDED.
    pub transaction_type: String,
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// The line (rate-card id) a DEBITED amount covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    pub date: NaiveDate,
}

/// An account's wallet (Togai's wallet balance and entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WalletBalance {
    pub currency: String,
    pub balance: Decimal,
    pub entries: Vec<WalletEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WalletEntry {
    pub id: String,
    /// CREDITED or DEBITED.
    pub transaction_type: String,
    pub amount: Decimal,
    /// The invoice paid, or the top-up / refund that credited.
    pub entity_id: String,
    pub date: NaiveDate,
    pub closing_balance: Decimal,
}

impl WalletBalance {
    pub fn has_entry(&self, id: &str) -> bool {
        self.entries.iter().any(|e| e.id == id)
    }
}

/// The store key of a generation.
pub fn key(generation: u64) -> String {
    format!("{PREFIX}{generation:010}.json")
}

/// The generation a ledger key names, if it is one.
pub fn generation_of(key: &str) -> Option<u64> {
    let n = key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
    (n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {key}: {message}")]
pub struct LedgerError {
    pub key: String,
    pub message: String,
}

/// Parse a generation read from `key`; it must name itself.
pub fn parse(key: &str, bytes: &[u8]) -> Result<Ledger, LedgerError> {
    let err = |m: String| LedgerError { key: key.to_string(), message: m };
    let l: Ledger = serde_json::from_slice(bytes).map_err(|e| err(format!("not a billrun ledger: {e}")))?;
    if l.schema_version != SCHEMA_VERSION {
        return Err(err(format!("schemaVersion `{}`, expected `{SCHEMA_VERSION}`", l.schema_version)));
    }
    if generation_of(key) != Some(l.generation) {
        return Err(err(format!("holds generation {}, which its key does not name", l.generation)));
    }
    Ok(l)
}

/// Serialise a generation (compact, trailing newline: byte-identical for equal ledgers).
pub fn to_bytes(l: &Ledger) -> Vec<u8> {
    // compact: at 100k invoices the indentation was half of its 120 MB (`jq .` shows it indented)
    let mut b = serde_json::to_vec(l).expect("ledger serializes");
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_generation() {
        assert_eq!(key(12), "ledger/0000000012.json");
        assert_eq!(generation_of(&key(12)), Some(12));
        assert_eq!(generation_of("ledger/12.json"), None);
        assert_eq!(generation_of("ledger/.0000000012.json.tmp"), None);
    }

    #[test]
    fn round_trips_and_checks_its_generation() {
        let mut l = Ledger { generation: 3, ..Default::default() };
        l.wallets.insert("A".into(), WalletBalance { currency: "USD".into(), balance: Decimal::new(1050, 2), entries: Vec::new() });
        let b = to_bytes(&l);
        assert_eq!(parse(&key(3), &b).unwrap(), l);
        let e = parse(&key(4), &b).unwrap_err();
        assert!(e.to_string().contains("holds generation 3"), "{e}");
        assert!(String::from_utf8(b).unwrap().contains("\"balance\":\"10.50\""));
    }
}
