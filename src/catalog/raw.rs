//! Togai API object shapes as they appear in catalog files (field names and enums of Togai's
//! public API). Unknown fields are errors. Only loading happens here; meaning is in `mod.rs`.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::doc::Dec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEventSchema {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub attributes: Vec<RawAttribute>,
    #[serde(default)]
    pub dimensions: Vec<RawDimension>,
    #[serde(default)]
    pub enrichments: Option<Value>,
    #[serde(default)]
    pub filter_fields: Option<Vec<String>>,
    #[serde(default)]
    pub event_id_template: Option<String>,
    #[serde(default)]
    pub event_level_revenue: Option<bool>,
    #[serde(default)]
    pub feature_details: Option<Value>,
    #[serde(default)]
    pub usage_meters_count: Option<IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAttribute {
    pub name: String,
    #[serde(default)]
    pub default_unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDimension {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUsageMeter {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub billable_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub aggregation: String,
    pub event_schema_name: String,
    #[serde(default)]
    pub filters: Vec<RawFilter>,
    #[serde(default)]
    pub computations: Vec<RawComputation>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub last_activated_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub field: String,
    pub value: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComputation {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub matcher: Option<Value>,
    pub computation: Value,
    pub order: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAddOn {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub billable_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFeature {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub billable_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub schema_associations: Option<Value>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// A price plan in any of Togai's shapes: v2 (`rateCards`), v1 create (`pricePlanDetails`) or
/// v1 export (`pricingSchedule`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPricePlan {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub reference_id: Option<String>,
    // v2
    #[serde(default)]
    pub pricing_cycle_config: Option<RawPricingCycleConfig>,
    #[serde(default)]
    pub supported_currencies: Option<Vec<String>>,
    #[serde(default)]
    pub rate_cards: Option<Vec<RawRateCard>>,
    #[serde(default)]
    pub pricing_rules: Option<Vec<Value>>,
    #[serde(default)]
    pub deferred_revenue: Option<bool>,
    #[serde(default)]
    pub allow_ongoing_cycle_updates: Option<bool>,
    // v1
    #[serde(default)]
    pub price_plan_details: Option<RawPricePlanDetails>,
    #[serde(default)]
    pub pricing_schedule: Option<Vec<Value>>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPricePlanDetails {
    #[serde(default)]
    pub supported_currencies: Vec<String>,
    #[serde(default)]
    pub active_currencies: Option<Vec<String>>,
    #[serde(default)]
    pub pricing_cycle_config: Option<RawPricingCycleConfig>,
    #[serde(default)]
    pub usage_rate_cards: Vec<RawUsageRateCard>,
    #[serde(default)]
    pub fixed_fee_rate_cards: Vec<RawFixedFeeRateCard>,
    #[serde(default)]
    pub license_rate_cards: Vec<RawLicenseRateCard>,
    #[serde(default)]
    pub billing_entitlement_rate_cards: Vec<Value>,
    #[serde(default)]
    pub entitlement_overage_rate_cards: Vec<Value>,
    #[serde(default)]
    pub minimum_commitment: Option<Value>,
    #[serde(default)]
    pub credit_grant_rate_cards: Vec<Value>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub deferred_revenue: Option<bool>,
    #[serde(default)]
    pub allow_ongoing_cycle_updates: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPricingCycleConfig {
    pub interval: String,
    #[serde(default)]
    pub start_offset: Option<RawStartOffset>,
    pub grace_period: u32,
    #[serde(default)]
    pub anniversary_cycle: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStartOffset {
    pub day_offset: Value,
    #[serde(default)]
    pub month_offset: Option<Value>,
}

/// A v2 rate card: `{type, displayName, rateCardDetails: {usageRateCard | fixedFeeRateCard | …}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateCard {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub billable_id: Option<String>,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(default)]
    pub reference_id: Option<String>,
    #[serde(default)]
    pub reference_type: Option<String>,
    #[serde(default)]
    pub currencies: Option<Vec<String>>,
    #[serde(default)]
    pub price_plan_id: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
    pub rate_card_details: RawRateCardDetails,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateCardDetails {
    #[serde(default)]
    pub usage_rate_card: Option<RawUsageRateCard>,
    #[serde(default)]
    pub fixed_fee_rate_card: Option<RawFixedFeeRateCard>,
    #[serde(default)]
    pub license_rate_card: Option<RawLicenseRateCard>,
    #[serde(default)]
    pub billing_entitlement_rate_card: Option<Value>,
    #[serde(default)]
    pub entitlement_overage_rate_card: Option<Value>,
    #[serde(default)]
    pub credit_grant_rate_card: Option<Value>,
    #[serde(default)]
    pub minimum_commitment_rate_card: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUsageRateCard {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    pub usage_meter_id: String,
    pub rate_plan: RawRatePlan,
    pub rate_values: Vec<RawRateValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRatePlan {
    pub pricing_model: String,
    pub slabs: Vec<RawSlab>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSlab {
    pub order: u32,
    pub start_after: Dec,
    pub price_type: String,
    #[serde(default)]
    pub slab_config: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateValue {
    pub currency: String,
    pub slab_rates: Vec<RawSlabRate>,
    #[serde(default)]
    pub rate_config: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSlabRate {
    pub order: u32,
    pub rate: Dec,
    #[serde(default)]
    pub slab_rate_config: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFixedFeeRateCard {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub rate_values: Vec<RawCurrencyRateValue>,
    #[serde(default)]
    pub enable_proration: bool,
    #[serde(default)]
    pub recurrence_config: Option<RawRecurrenceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCurrencyRateValue {
    pub currency: String,
    pub rate: Dec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRecurrenceConfig {
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAddress {
    #[serde(default)]
    pub phone_number: Option<String>,
    #[serde(default)]
    pub line1: Option<String>,
    #[serde(default)]
    pub line2: Option<String>,
    #[serde(default)]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCustomer {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub primary_email: Option<String>,
    #[serde(default)]
    pub billing_address: Option<String>,
    #[serde(default)]
    pub address: Option<RawAddress>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub togai_customer_id: Option<IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// An alias in the account object: a bare string (create form) or `{alias}` (read form).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAccountAlias {
    Plain(String),
    Object(RawAccountAliasObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccountAliasObject {
    pub alias: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAccount {
    pub id: String,
    pub name: String,
    pub customer_id: String,
    #[serde(default)]
    pub invoice_currency: Option<String>,
    #[serde(default)]
    pub aliases: Vec<RawAccountAlias>,
    #[serde(default)]
    pub net_term_days: Option<u32>,
    #[serde(default)]
    pub address: Option<RawAddress>,
    #[serde(default)]
    pub primary_email: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub settings: Option<Value>,
    #[serde(default)]
    pub invoice_group_details: Option<Value>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub togai_account_id: Option<IgnoredAny>,
    #[serde(default)]
    pub togai_customer_id: Option<IgnoredAny>,
}

/// Togai's `AccountAlias` (GET /accounts/{id}/aliases).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAlias {
    #[serde(default)]
    pub id: Option<String>,
    pub value: String,
    #[serde(default)]
    pub effective_from: Option<String>,
    #[serde(default)]
    pub effective_until: Option<String>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// Togai's `PricingScheduleWithPricePlanId` (GET /accounts/{id}/price_plans).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSchedule {
    #[serde(default)]
    pub id: Option<String>,
    pub price_plan_id: String,
    pub start_date: String,
    #[serde(default)]
    pub end_date: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub price_plan_name: Option<String>,
    #[serde(default)]
    pub price_plan_info: Option<Value>,
    #[serde(default)]
    pub price_plan_details: Option<Value>,
    #[serde(default)]
    pub pricing_rules: Option<Vec<Value>>,
    #[serde(default)]
    pub is_overriden: Option<bool>,
    /// Keep the previous schedule's cycle offsets (Togai's `AssociationConfig.retainStartOffsets`).
    #[serde(default)]
    pub retain_start_offsets: Option<bool>,
}

/// Togai's `MinimumCommitment` (v1 `pricePlanDetails.minimumCommitment`, v2
/// `rateCardDetails.minimumCommitmentRateCard`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMinimumCommitment {
    #[serde(default)]
    pub display_name: Option<String>,
    pub rate_values: Vec<RawCurrencyRateValue>,
}

/// Togai's `PricingRule` (on a price plan).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPricingRule {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub version: Option<u32>,
    pub order: i64,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(default)]
    pub condition: Option<Value>,
    pub computation: Value,
    pub action: RawPricingRuleAction,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricingRuleAction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// Togai's event-schema `enrichments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnrichments {
    #[serde(default)]
    pub dependencies: Vec<Value>,
    #[serde(default)]
    pub fields: Vec<RawEnrichmentField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEnrichmentField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub enrichment_type: String,
    pub value: Value,
    #[serde(default)]
    pub order: i64,
}

/// Togai's `LicenseRateCard`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLicenseRateCard {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(default)]
    pub usage_cycle: Option<Value>,
    #[serde(default)]
    pub enable_proration: bool,
    #[serde(default)]
    pub config: Option<RawLicenseConfig>,
    pub rate_plan: RawRatePlan,
    pub rate_values: Vec<RawRateValue>,
    #[serde(default)]
    pub prorated_refund_mode: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLicenseConfig {
    #[serde(default)]
    pub max_quantity: Option<Dec>,
    #[serde(default)]
    pub max_quantity_breach_action: Option<String>,
}

/// A license update (Togai's `POST /license_updates` request with its account): the quantity of
/// a license from `effectiveFrom` on, ABSOLUTE or RELATIVE to the quantity before.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLicenseUpdate {
    #[serde(default)]
    pub id: Option<String>,
    pub license_id: String,
    pub account_id: String,
    #[serde(default)]
    pub update_type: Option<String>,
    pub quantity: Dec,
    pub effective_from: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
}

/// One version of a v1 price plan (`PricePlan.pricingSchedule[]`): its details over a period.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPlanVersion {
    #[serde(default)]
    pub id: Option<String>,
    pub start_date: String,
    #[serde(default)]
    pub end_date: Option<String>,
    pub version: u32,
    pub price_plan_details: RawPricePlanDetails,
    #[serde(default)]
    pub pricing_rules: Option<Vec<Value>>,
    #[serde(default)]
    pub is_overriden: Option<bool>,
}

/// Togai's `CreditGrantRateCard`: a price charged for credits granted to the account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCreditGrantRateCard {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    pub grant_details: RawGrantDetails,
    pub rate_details: RawCreditRateDetails,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub recurrence_config: Option<RawRecurrenceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawGrantDetails {
    pub priority: i64,
    pub expiry_type: String,
    #[serde(default)]
    pub expiry_duration: Option<String>,
    #[serde(default)]
    pub applicable_entity_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCreditRateDetails {
    pub pricing_model: String,
    pub currency_slab_rate_details: Vec<RawCurrencySlabRateDetail>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCurrencySlabRateDetail {
    pub currency: String,
    pub credit_amount: Dec,
    pub slab_details: Vec<RawSlabDetail>,
    #[serde(default)]
    pub rate_config: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSlabDetail {
    pub start_after: Dec,
    pub price_type: String,
    pub rate: Dec,
    #[serde(default)]
    pub slab_config: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub slab_rate_config: Option<BTreeMap<String, Value>>,
}

/// Togai's `BillingEntitlementRateCard`: feature credits granted each cycle, priced on their number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBillingEntitlementRateCard {
    pub feature_id: String,
    pub feature_configs: Vec<RawFeatureConfig>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub invoice_timing: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub rate_plan: RawRatePlan,
    pub rate_values: Vec<RawRateValue>,
    #[serde(default)]
    pub recurrence_config: Option<RawRecurrenceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFeatureConfig {
    #[serde(default)]
    pub effective_from: Option<String>,
    pub effective_until: String,
    pub feature_credit_limit: Dec,
}

/// Togai's `EntitlementOverageRateCard`: feature use beyond the granted feature credits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEntitlementOverageRateCard {
    pub feature_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub max_quantity: Option<Dec>,
    pub rate_plan: RawRatePlan,
    pub rate_values: Vec<RawRateValue>,
    #[serde(default)]
    pub billing_config: Option<RawBillingConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBillingConfig {
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub start_offset: Option<i64>,
}

/// A feature's link to an event schema: events of `schemaName` consume `attributeName` credits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSchemaAssociation {
    pub schema_name: String,
    pub attribute_name: String,
}

/// An event schema's `featureDetails`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFeatureDetails {
    pub feature_id: String,
    pub attribute_name: String,
}

/// Togai's `Setting`: a value at organisation, customer or account level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSetting {
    pub id: String,
    pub value: String,
    pub entity_type: String,
    pub entity_id: String,
    pub namespace: String,
    pub name: String,
    pub data_type: String,
}

/// An enrichment dependency (`{type: SETTING, key, name}`), read in expressions as `dependencies.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependency {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub name: String,
}

/// Togai's `Credit` (an export: `id`, `status`, amounts consumed and held) or `CreditRequest`
/// (a grant: no `id`, its `idempotencyKey` identifies it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCredit {
    #[serde(default)]
    pub id: Option<String>,
    pub account_id: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    pub purpose: String,
    #[serde(default)]
    pub applicable_entity_ids: Option<Vec<String>>,
    pub effective_from: String,
    #[serde(default)]
    pub effective_until: Option<String>,
    pub credit_amount: Dec,
    pub priority: i64,
    #[serde(default)]
    pub grantor_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub credit_unit: Option<String>,
    #[serde(default)]
    pub hold_amount: Option<Dec>,
    #[serde(default)]
    pub consumed_amount: Option<Dec>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// Togai's `WalletBalanceResponse`: an account's wallet and its balance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWallet {
    pub id: String,
    pub account_id: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    pub balance: Dec,
    #[serde(default)]
    pub credit_unit: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub hold_amount: Option<Dec>,
    pub effective_from: String,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// A wallet top-up: Togai's `TopupWalletRequest` (`topupAmount`) with the account and the date
/// the API takes from the URL and the request time (billrun extension).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWalletTopup {
    pub id: String,
    pub account_id: String,
    pub topup_amount: Dec,
    pub date: String,
}

/// Togai's `InvoiceGroupDetails` with its `accountIds` (or a `CreateInvoiceGroupRequest` with an
/// `id`: `address` is the create request's name for `billingAddress`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawInvoiceGroup {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub daily_invoice_consolidation: bool,
    #[serde(default)]
    pub net_term_days: Option<u32>,
    #[serde(default)]
    pub invoice_currency: Option<String>,
    #[serde(default)]
    pub billing_address: Option<RawAddress>,
    #[serde(default)]
    pub address: Option<RawAddress>,
    pub account_ids: Vec<String>,
    #[serde(default)]
    pub accounts_count: Option<u64>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// Togai's `MiscellaneousCharge` (`PUT /accounts/{id}/miscellaneous_charges`): `value` (a number,
/// or JSON-logic over the invoice's line ids, as text or as an object), or `rate` × `quantity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMiscCharge {
    pub name: String,
    #[serde(default)]
    pub rate: Option<Dec>,
    #[serde(default)]
    pub quantity: Option<Dec>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub consider_for_revenue: Option<bool>,
}

/// Togai's `CreateCustomInvoiceRequest` plus an `id` (billrun extension; else the
/// `idempotencyKey` is the id).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCustomInvoice {
    #[serde(default)]
    pub id: Option<String>,
    pub account_id: String,
    #[serde(default)]
    pub owner_type: Option<String>,
    pub start_date: String,
    pub end_date: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub status: String,
    pub line_items: Vec<RawCustomLine>,
    #[serde(default)]
    pub auto_advance: Option<bool>,
    #[serde(default)]
    pub apply_credits: Option<bool>,
    #[serde(default)]
    pub apply_wallet_balance: Option<bool>,
}

/// Togai's `CustomInvoiceLineItem`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCustomLine {
    #[serde(default)]
    pub id: Option<String>,
    pub description: String,
    #[serde(default)]
    pub value_per_quantity: Option<Dec>,
    #[serde(default)]
    pub quantity: Option<Dec>,
    #[serde(default)]
    pub value: Option<Dec>,
}
