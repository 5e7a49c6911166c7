//! billrun: offline batch billing. Togai catalog and usage in, rated invoices out.
//! See ARCHITECTURE.md for the map of modules and their invariants.

pub mod assign;
pub mod bundle;
pub mod catalog;
pub mod config;
pub mod corrections;
pub mod cycles;
pub mod diag;
pub mod doc;
pub mod entitlements;
pub mod explain;
pub mod faults;
pub mod frame;
pub mod handoff;
pub mod ingest;
pub mod invoice;
pub mod jsonlogic;
pub mod ledger;
pub mod licenses;
pub mod lineitems;
pub mod meter;
pub mod money;
pub mod numeric;
pub mod partition;
pub mod pushdown;
pub mod rate;
pub mod render;
pub mod report;
pub mod rerate;
pub mod rules;
pub mod run;
pub mod scenario;
pub mod settle;
pub mod simulate;
pub mod spill;
pub mod windows;
