//! Event corrections (Togai's `POST /events/correction`): `UNDO` removes an event, `REDO`
//! re-ingests it unchanged, `REDO_EVENT` replaces it with a corrected payload. billrun rates from
//! the events every run, with the current catalog, so a correction is applied to the events
//! before ingest: the original (by id) is taken out and, for REDO_EVENT, the corrected payload
//! goes in its place. REDO changes nothing here (the event is re-rated anyway) and is counted.
//!
//! Files (`[corrections] path`, a file or a folder of `*.ndjson` / `*.jsonl`): one correction per
//! line, `{"action": "UNDO" | "REDO" | "REDO_EVENT", "event": {...}}`; UNDO and REDO need only
//! `event.id`, REDO_EVENT the whole corrected Togai `Event`. Later lines win for the same id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use billrun_connectors::schema::EVENT_ID;

use crate::frame::{EventFrame, SEQ};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Action {
    #[serde(rename = "UNDO")]
    Undo,
    #[serde(rename = "REDO")]
    Redo,
    #[serde(rename = "REDO_EVENT")]
    RedoEvent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCorrection {
    action: Action,
    event: Value,
}

/// One correction: the action, the event id, the corrected payload (REDO_EVENT), and where it
/// was written.
#[derive(Debug, Clone)]
pub struct Correction {
    pub action: Action,
    pub id: String,
    pub payload: Option<String>,
    pub location: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CorrectionsError {
    #[error("corrections {location}: {message}")]
    Invalid { location: String, message: String },
    #[error("corrections: {0}")]
    Polars(#[from] PolarsError),
    #[error("{0}")]
    Decode(#[from] billrun_connectors::error::ConnectorError),
}

fn files(path: &Path) -> Result<Vec<PathBuf>, CorrectionsError> {
    let err = |m: String| CorrectionsError::Invalid { location: path.display().to_string(), message: m };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("ndjson" | "jsonl")))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    out.sort();
    Ok(out)
}

/// Read every correction under `path`, in file and line order; the last one for an id wins.
pub fn load(path: &Path) -> Result<Vec<Correction>, CorrectionsError> {
    let mut by_id: BTreeMap<String, Correction> = BTreeMap::new();
    for f in files(path)? {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| CorrectionsError::Invalid { location: f.display().to_string(), message: format!("cannot read: {e}") })?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let location = format!("{}:{}", f.display(), i + 1);
            let bad = |m: String| CorrectionsError::Invalid { location: location.clone(), message: m };
            let raw: RawCorrection = serde_json::from_str(line)
                .map_err(|e| bad(format!("expected {{\"action\": \"UNDO\" | \"REDO\" | \"REDO_EVENT\", \"event\": {{...}}}}: {e}")))?;
            let id = raw.event.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
            let id = id.ok_or_else(|| bad("`event.id` is missing: a correction names the event it corrects".into()))?.to_string();
            let payload = (raw.action == Action::RedoEvent).then(|| raw.event.to_string());
            by_id.insert(id.clone(), Correction { action: raw.action, id, payload, location });
        }
    }
    Ok(by_id.into_values().collect())
}

/// What the corrections did to a run's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub undone: u64,
    pub redone: u64,
    pub replaced: u64,
    /// Ids of corrections that named no event of the sources (nothing to correct).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<String>,
}

/// The corrected payloads (REDO_EVENT) as canonical batches, to append after the sources' events.
pub fn payloads(corrections: &[Correction]) -> Result<billrun_connectors::SourceOutput, CorrectionsError> {
    let mut text = String::new();
    for c in corrections.iter().filter_map(|c| c.payload.as_ref()) {
        text.push_str(c);
        text.push('\n');
    }
    Ok(billrun_connectors::file::decode_ndjson("corrections", "corrections (REDO_EVENT payloads)", text.as_bytes())?)
}

/// Which corrected ids the sources have: noted batch by batch while the sources are read (the
/// input may be partitioned afterwards, so this is decided over all of it).
#[derive(Debug, Default)]
pub struct Presence {
    wanted: std::collections::HashSet<String>,
    found: std::collections::BTreeSet<String>,
}

impl Presence {
    pub fn new(corrections: &[Correction]) -> Self {
        Presence { wanted: corrections.iter().map(|c| c.id.clone()).collect(), found: Default::default() }
    }

    /// Note the named ids among one batch of the sources' events.
    pub fn note(&mut self, batch: &arrow::record_batch::RecordBatch) {
        if self.wanted.is_empty() {
            return;
        }
        let Some(ids) = batch.column_by_name(EVENT_ID) else { return };
        let Ok(ids) = arrow::compute::cast(ids, &arrow::datatypes::DataType::Utf8) else { return };
        use arrow::array::AsArray;
        for id in ids.as_string::<i32>().iter().flatten() {
            if self.wanted.contains(id) && !self.found.contains(id) {
                self.found.insert(id.to_string());
            }
        }
    }
}

/// What the corrections do to this run's events: counts, and which ids go.
#[derive(Debug, Default)]
pub struct Plan {
    pub applied: Applied,
    remove: Vec<String>,
}

/// Decide the corrections against the ids the sources have.
pub fn plan(corrections: &[Correction], presence: &Presence) -> Plan {
    let mut plan = Plan::default();
    for c in corrections {
        if !presence.found.contains(&c.id) {
            plan.applied.not_found.push(c.id.clone());
            continue;
        }
        match c.action {
            Action::Undo => plan.applied.undone += 1,
            Action::Redo => plan.applied.redone += 1,
            Action::RedoEvent => plan.applied.replaced += 1,
        }
        if c.action != Action::Redo {
            plan.remove.push(c.id.clone());
        }
    }
    for id in &plan.applied.not_found {
        tracing::warn!(event = %id, "a correction names an event the sources do not have; nothing to correct");
    }
    plan
}

/// Take the corrected events out of the frame: every original (arrival number below
/// `originals`) whose id an UNDO or REDO_EVENT names. The payloads appended after them stay,
/// but for an event the sources do not have (a corrected payload is not a new event either).
pub fn apply(frame: EventFrame, plan: &Plan, originals: u64) -> Result<EventFrame, CorrectionsError> {
    if plan.remove.is_empty() && plan.applied.not_found.is_empty() {
        return Ok(frame);
    }
    let EventFrame { df, columns } = frame;
    let original = col(SEQ).cast(DataType::Int64).lt(lit(originals as i64));
    let gone = col(EVENT_ID).is_in(lit(Series::new("gone".into(), plan.remove.clone())).implode(true), false).fill_null(lit(false));
    let orphan =
        col(EVENT_ID).is_in(lit(Series::new("orphans".into(), plan.applied.not_found.clone())).implode(true), false).fill_null(lit(false));
    let drop = original.clone().and(gone).or(original.not().and(orphan));
    let df = df.lazy().filter(drop.not()).collect()?;
    Ok(EventFrame { df, columns })
}
