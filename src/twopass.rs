//! The two-pass event path: for sources that can be read twice (files, S3 objects), dedup
//! without partitioning the input by account.
//!
//! First-arrival dedup needs every row of a key (account group, event id) together, which is why
//! the one-pass path (`partition.rs`) spills whole events by account group past `memory_rows`.
//! Here a first pass reads only the id and account columns and keeps 40 bits of a hash of each
//! row's key ([`KeyScan`]: 4 bytes a row, in 256 buckets by the first 8 bits); the keys whose
//! hash occurs more than once are [`Repeated`]. A row whose hash is not repeated has a key no
//! other row has: it is neither a duplicate nor has one. The second pass reads everything in
//! arrival order and [`Repeated::split`]s each batch: the rows with keys of their own are
//! ingested in chunks of arrival without dedup, their usage merged (`usage.rs`); the others
//! (every row of each repeated key, and a few more for colliding hashes) go through the one-pass
//! path with its exact dedup. Results are the same as the one-pass path's: the golden fixtures
//! run both ways.
//!
//! Not taken ([`eligible`]) when a source is read once only (SQL, Prometheus) or with event
//! corrections (they look events up by id across the input).

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use billrun_connectors::file::ColumnMapping;
use billrun_connectors::schema::{Text, ACCOUNT_ID, EVENT_ID};
use billrun_connectors::source::SourceConfig;
use foldhash::fast::FixedState;

use crate::assign::Assigner;

/// Whether a run can take the two-pass path: every source read locally can be read again, and
/// nothing looks events up across the input (corrections).
pub fn eligible<'s>(mut local: impl Iterator<Item = &'s SourceConfig>, corrections: bool) -> bool {
    !corrections && local.all(|s| matches!(s, SourceConfig::Files { .. } | SourceConfig::S3(_)))
}

/// `source` reading only what the first pass needs: the id, account and timestamp columns (the
/// timestamp because a mapping must name one). A row the full read turns away (a bad value in
/// another column) is still counted here, which can only make a key look repeated, never hide
/// a repetition. Sources without a mapping (Togai's event shape) are read whole.
pub fn keys_only(source: &SourceConfig) -> SourceConfig {
    let narrow = |m: &Option<ColumnMapping>| {
        m.as_ref().map(|m| ColumnMapping {
            event_id: m.event_id.clone(),
            account_id: m.account_id.clone(),
            timestamp: m.timestamp.clone(),
            schema_name: None,
            schema_name_value: Some("-".into()),
            ingested_at: None,
            attributes: Default::default(),
            dimensions: Default::default(),
        })
    };
    let mut s = source.clone();
    match &mut s {
        SourceConfig::Files { mapping, .. } => *mapping = narrow(mapping),
        SourceConfig::S3(c) => c.mapping = narrow(&c.mapping),
        _ => {}
    }
    s
}

/// Each row's key hash ([`Assigner::key_hash`]), on every core.
fn key_hashes(assigner: &Assigner, batch: &RecordBatch) -> Result<Vec<Option<u64>>, ArrowError> {
    use rayon::prelude::*;
    let (ids, accounts) = (Text::of(batch, EVENT_ID)?, Text::of(batch, ACCOUNT_ID)?);
    Ok((0..batch.num_rows()).into_par_iter().with_min_len(4096).map(|i| assigner.key_hash(accounts.get(i), ids.get(i))).collect())
}

/// The 40 bits of a key hash the scan keeps: (bucket, the next 32 bits).
fn short(h: u64) -> (usize, u32) {
    ((h >> 56) as usize, (h >> 24) as u32)
}

/// The first pass: 40 bits of every row's key hash.
pub struct KeyScan<'a> {
    assigner: &'a Assigner<'a>,
    buckets: Vec<Vec<u32>>,
    rows: u64,
}

impl<'a> KeyScan<'a> {
    pub fn new(assigner: &'a Assigner<'a>) -> Self {
        KeyScan { assigner, buckets: vec![Vec::new(); 256], rows: 0 }
    }

    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.rows += batch.num_rows() as u64;
        for h in key_hashes(self.assigner, batch)?.into_iter().flatten() {
            let (b, low) = short(h);
            self.buckets[b].push(low);
        }
        Ok(())
    }

    /// Rows scanned.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The hashes met more than once (each bucket sorted on its own, on every core).
    pub fn finish(self) -> Repeated {
        use rayon::prelude::*;
        let found: Vec<Vec<u64>> = self
            .buckets
            .into_par_iter()
            .enumerate()
            .map(|(b, mut v)| {
                v.sort_unstable();
                let mut out = Vec::new();
                for w in v.windows(2) {
                    if w[0] == w[1] && out.last() != Some(&((b as u64) << 32 | w[0] as u64)) {
                        out.push((b as u64) << 32 | w[0] as u64);
                    }
                }
                out
            })
            .collect();
        let mut set = HashSet::with_capacity_and_hasher(found.iter().map(Vec::len).sum(), FixedState::default());
        set.extend(found.into_iter().flatten());
        Repeated { set }
    }
}

/// The 40-bit key hashes met more than once in the first pass.
pub struct Repeated {
    set: HashSet<u64, FixedState>,
}

impl Repeated {
    /// How many hashes repeat.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether a row of this key hash may share its key with another row.
    fn has(&self, h: u64) -> bool {
        let (b, low) = short(h);
        self.set.contains(&((b as u64) << 32 | low as u64))
    }

    /// `batch` as (the rows with keys of their own, the rows that may share a key), each in
    /// the batch's order. A row without an id is never a duplicate: it goes with the first.
    pub fn split(&self, assigner: &Assigner, batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch), ArrowError> {
        let shared: BooleanArray = key_hashes(assigner, batch)?.into_iter().map(|h| Some(h.is_some_and(|h| self.has(h)))).collect();
        if shared.true_count() == 0 {
            return Ok((batch.clone(), batch.slice(0, 0)));
        }
        let own = arrow::compute::not(&shared)?;
        Ok((arrow::compute::filter_record_batch(batch, &own)?, detached(arrow::compute::filter_record_batch(batch, &shared)?)?))
    }
}

/// `batch` with its string views' text in buffers of its own: the few rows set aside are held
/// (then spilled) long after their batch, and filtered views still point into all of its text.
fn detached(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    if !batch.columns().iter().any(|c| c.data_type() == &DataType::Utf8View) {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => std::sync::Arc::new(c.as_string_view().gc()) as ArrayRef,
            _ => std::sync::Arc::clone(c),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{load_dir, LoadContext};
    use crate::money::Currency;
    use std::sync::Arc;

    /// Every row of a key that occurs twice or more is set aside, whatever the spelling of the
    /// id and whether the account resolves; rows of keys met once stay, unless their 40-bit hash
    /// collides (which these few thousand rows cannot make happen in practice).
    #[test]
    fn split_sets_aside_every_row_of_a_repeated_key() {
        let usd = Currency::new("USD").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/01-quickstart/catalog");
        let cat = load_dir(&dir, &LoadContext { base_currency: &usd, time_zone: chrono_tz::UTC }).unwrap();
        let a = Assigner::new(&cat, &[]);
        let accounts = ["ACC-ACME-PROD", "ACC-GLOBEX", "nobody"];
        let (mut ids, mut raws) = (Vec::new(), Vec::new());
        for i in 0..3000u64 {
            // ids 0..1000 once each, then every third of them again under the same account, and
            // every fifth under another account (a different key)
            let k = if i < 1000 { i } else { (i % 1000) / 3 * 3 };
            ids.push(if k % 2 == 0 { format!("{k:08x}-0000-4000-8000-000000000000") } else { format!("evt-{k}") });
            let acc = if i >= 2000 && k % 5 == 0 { (k as usize + 1) % 3 } else { k as usize % 3 };
            raws.push(accounts[acc]);
        }
        ids.push(String::new());
        raws.push("ACC-GLOBEX");
        ids.push(String::new());
        raws.push("ACC-GLOBEX");
        // text in either canonical layout: `Utf8`, or string views (what the Parquet reader gives)
        let batch = |ids: &[String], raws: &[&str], views: bool| {
            let column = |v: Vec<Option<&str>>| -> arrow::array::ArrayRef {
                if views {
                    Arc::new(arrow::array::StringViewArray::from(v))
                } else {
                    Arc::new(arrow::array::StringArray::from(v))
                }
            };
            let t = if views { DataType::Utf8View } else { DataType::Utf8 };
            let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new(EVENT_ID, t.clone(), true),
                arrow::datatypes::Field::new(ACCOUNT_ID, t, true),
            ]));
            RecordBatch::try_new(
                schema,
                vec![column(ids.iter().map(|s| Some(s.as_str())).collect()), column(raws.iter().map(|s| Some(*s)).collect())],
            )
            .unwrap()
        };
        // the scan sees the input in two batches, as a source hands it over
        let mut scan = KeyScan::new(&a);
        scan.push(&batch(&ids[..1500], &raws[..1500], true)).unwrap();
        scan.push(&batch(&ids[1500..], &raws[1500..], false)).unwrap();
        assert_eq!(scan.rows(), ids.len() as u64);
        let repeated = scan.finish();
        let mut count = std::collections::HashMap::new();
        for (id, raw) in ids.iter().zip(&raws) {
            *count.entry((raw, id)).or_insert(0) += 1;
        }
        let want_aside: Vec<bool> = ids.iter().zip(&raws).map(|(id, raw)| !id.is_empty() && count[&(raw, id)] > 1).collect();
        assert_eq!(repeated.len(), count.iter().filter(|((_, id), n)| !id.is_empty() && **n > 1).count());
        let want: Vec<(String, String)> =
            (0..ids.len()).filter(|&i| want_aside[i]).map(|i| (raws[i].to_string(), ids[i].clone())).collect();
        let (own, aside) = repeated.split(&a, &batch(&ids, &raws, false)).unwrap();
        let (own_v, aside_v) = repeated.split(&a, &batch(&ids, &raws, true)).unwrap();
        for aside in [&aside, &aside_v] {
            let (accounts, events) = (Text::of(aside, ACCOUNT_ID).unwrap(), Text::of(aside, EVENT_ID).unwrap());
            let aside_ids: Vec<(String, String)> =
                (0..aside.num_rows()).map(|i| (accounts.get(i).unwrap().to_string(), events.get(i).unwrap().to_string())).collect();
            assert_eq!(aside_ids, want);
        }
        assert_eq!(own_v.num_rows(), own.num_rows());
        // the rows set aside hold only their own text, not the whole batch's
        let held: usize = aside_v.column(0).as_string_view().data_buffers().iter().map(|b| b.len()).sum();
        let wanted: usize = want.iter().map(|(_, id)| if id.len() > 12 { id.len() } else { 0 }).sum();
        assert_eq!(held, wanted);
        assert_eq!(own.num_rows() + aside.num_rows(), ids.len());
        // the ids that are multiples of 3 come back 6 more times: 334 of them, 2338 rows aside
        // (but for the ones moved to another account); the rest, and the two rows without an id, stay
        assert!(aside.num_rows() > 2000 && own.num_rows() > 600, "{} aside, {} own", aside.num_rows(), own.num_rows());
    }
}
