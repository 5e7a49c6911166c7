//! billrun's connectors: sources that turn usage data into Arrow
//! [`RecordBatch`](arrow::record_batch::RecordBatch)es in billrun's canonical
//! event schema ([`schema`]).
//!
//! Invariants every connector keeps:
//!
//! - **No money, no meters, no plans.** A connector only moves events; it does
//!   not know what they cost or which meter counts them.
//! - **No aggregation.** One input event is one output row.
//! - **Every row accounted for.** A row is either in a batch or in the bad
//!   records (with its location, raw text and reason); nothing is dropped
//!   silently and a bad row never panics or stops the run.
//! - **Deterministic order.** Files in path order, rows in file order.
//! - **No binary floating point for quantities.** Attribute values stay exact
//!   decimal text, Int64 or Decimal128; JSON numbers keep their literal text.
//! - **Errors name the connector and the location** (source, file, line).
//!
//! See the crate README for the contract future sources must follow.

pub mod error;
pub mod file;
pub mod postgres;
pub mod prometheus;
mod rows;
pub mod s3;
pub mod schema;
pub mod snowflake;
pub mod source;
pub mod sql;
pub mod store;

pub use error::{ConnectorError, ErrorKind};
pub use file::{read_files, BadRecord, BatchSink, ColumnMapping, FileFormat, FileSourceConfig, SourceFile, SourceOutput};
pub use rows::MAX_BATCH_ROWS;
pub use schema::{parse_timestamp_micros, ACCOUNT_ID, ATTR_PREFIX, DIM_PREFIX, EVENT_ID, INGESTED_AT, SCHEMA_NAME, TIMESTAMP};
pub use source::{read_source, read_source_into, ReadWindow, SourceConfig};
