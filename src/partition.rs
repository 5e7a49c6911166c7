//! Partitioning of the input by account group, so that memory follows a partition, not the month.
//!
//! Batches arrive from the sources in arrival order and get their global arrival number
//! (`__seq`). Up to `memory_rows` rows stay in memory and form a single partition. Past that,
//! every row goes to one of [`BUCKETS`] spill files (Arrow IPC written narrow by `spill`, in a
//! temporary directory removed afterwards) chosen by a hash of its account group
//! ([`Assigner::partition`]): every event that can share a dedup key, an account or a window
//! with another lands in the same bucket. Buckets
//! are then ingested in groups of consecutive buckets of about `memory_rows` rows each.
//!
//! Results never depend on the partitioning (see `assign.rs`); the golden fixtures are run both
//! ways to show it.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::assign::Assigner;
use crate::frame::SEQ;
use billrun_connectors::schema::ACCOUNT_ID;

/// Number of spill files (at most 256: a row's bucket is a byte).
pub const BUCKETS: usize = 64;

/// Write buffer per spill file: 64 of them are open while the input is read.
const SPILL_BUFFER: usize = 256 << 10;

/// Rows gathered (at most `memory_rows`) before they are scattered to the spill files: the
/// sources' batches (64K rows) made a batch of ~1K rows per bucket, and every spilled batch
/// costs its own IPC message, dictionaries and arrays to write, read back and widen.
const SCATTER_ROWS: usize = 1 << 19;

/// Rows held in memory (and ingested at once) by default: about 0.3 GiB of events.
pub const DEFAULT_MEMORY_ROWS: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("spilling events to {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("spilling events to {dir}: {source}")]
    Arrow { dir: String, source: arrow::error::ArrowError },
    #[error("more than {} events in one run", u32::MAX)]
    TooMany,
}

/// One bucket's spill file for one batch schema (opened on first use).
type BucketWriter = Option<StreamWriter<BufWriter<File>>>;

/// The writers of one batch schema as read (the first) and as spilled (`spill::narrow`).
struct SchemaWriters {
    original: SchemaRef,
    narrow: SchemaRef,
    /// One per bucket.
    buckets: Vec<BucketWriter>,
}

struct Spill {
    dir: tempfile::TempDir,
    writers: Vec<SchemaWriters>,
    rows: Vec<usize>,
}

/// `batch` with its rows' arrival numbers (`__seq`) from `first` on, as the last column.
pub fn numbered(batch: RecordBatch, first: u64) -> Result<RecordBatch, PartitionError> {
    let n = batch.num_rows() as u64;
    if first + n > u32::MAX as u64 {
        return Err(PartitionError::TooMany);
    }
    let seq: ArrayRef = Arc::new(UInt32Array::from_iter_values(first as u32..(first + n) as u32));
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(SEQ, DataType::UInt32, false)));
    let mut cols = batch.columns().to_vec();
    cols.push(seq);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| PartitionError::Arrow { dir: "memory".into(), source: e })
}

/// Takes batches in arrival order; gives back partitions of whole account groups.
pub struct Partitioner<'a> {
    assigner: &'a Assigner<'a>,
    memory_rows: usize,
    next_seq: u64,
    held: Vec<RecordBatch>,
    held_rows: usize,
    /// Batches waiting to be scattered together (spilling only), all of one schema.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    spill: Option<Spill>,
    error: Option<PartitionError>,
}

impl<'a> Partitioner<'a> {
    pub fn new(assigner: &'a Assigner<'a>, memory_rows: usize) -> Self {
        Partitioner {
            assigner,
            memory_rows: memory_rows.max(1),
            next_seq: 0,
            held: Vec::new(),
            held_rows: 0,
            pending: Vec::new(),
            pending_rows: 0,
            spill: None,
            error: None,
        }
    }

    /// Rows taken so far.
    pub fn rows(&self) -> u64 {
        self.next_seq
    }

    /// Take one batch (in arrival order). Errors are kept and returned by [`Self::finish`].
    pub fn push(&mut self, batch: RecordBatch) {
        if self.error.is_some() || batch.num_rows() == 0 {
            return;
        }
        if let Err(e) = self.try_push(batch) {
            self.error = Some(e);
        }
    }

    /// Take one batch that already has its arrival numbers (`__seq`, see [`numbered`]), e.g. a
    /// part of a batch another path numbered (`twopass.rs`).
    pub fn push_numbered(&mut self, batch: RecordBatch) {
        if self.error.is_some() || batch.num_rows() == 0 {
            return;
        }
        self.next_seq += batch.num_rows() as u64;
        if let Err(e) = self.take(batch) {
            self.error = Some(e);
        }
    }

    fn try_push(&mut self, batch: RecordBatch) -> Result<(), PartitionError> {
        let batch = numbered(batch, self.next_seq)?;
        self.next_seq += batch.num_rows() as u64;
        self.take(batch)
    }

    fn take(&mut self, batch: RecordBatch) -> Result<(), PartitionError> {
        if self.spill.is_none() {
            self.held_rows += batch.num_rows();
            self.held.push(batch);
            if self.held_rows <= self.memory_rows {
                return Ok(());
            }
            let dir = tempfile::Builder::new()
                .prefix("billrun-spill-")
                .tempdir()
                .map_err(|e| PartitionError::Io { dir: "a temporary directory".into(), source: e })?;
            tracing::info!(dir = %dir.path().display(), rows = self.held_rows, "more events than fit in memory at once: partitioning by account");
            self.spill = Some(Spill { dir, writers: Vec::new(), rows: vec![0; BUCKETS] });
            self.held_rows = 0;
            for b in std::mem::take(&mut self.held) {
                self.gather(b)?;
            }
            return Ok(());
        }
        self.gather(batch)
    }

    /// Scatter `batch` together with the batches before it, once they are `SCATTER_ROWS` (or
    /// `memory_rows`) rows or the schema changes.
    fn gather(&mut self, batch: RecordBatch) -> Result<(), PartitionError> {
        if self.pending.first().is_some_and(|p| p.schema() != batch.schema()) {
            self.flush()?;
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= SCATTER_ROWS.min(self.memory_rows) {
            self.flush()?;
        }
        Ok(())
    }

    /// Scatter the gathered batches as one.
    fn flush(&mut self) -> Result<(), PartitionError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let batch = match pending.len() {
            0 => return Ok(()),
            1 => pending.into_iter().next().expect("one"),
            _ => arrow::compute::concat_batches(&pending[0].schema(), &pending).map_err(|e| self.arrow(e))?,
        };
        self.scatter(&batch)
    }

    fn arrow(&self, e: arrow::error::ArrowError) -> PartitionError {
        let dir = self.spill.as_ref().map_or_else(|| "memory".to_string(), |s| s.dir.path().display().to_string());
        PartitionError::Arrow { dir, source: e }
    }

    fn scatter(&mut self, batch: &RecordBatch) -> Result<(), PartitionError> {
        let accounts = billrun_connectors::schema::Text::of(batch, ACCOUNT_ID).map_err(|e| self.arrow(e))?;
        // each row's bucket on every core: the account lookup was a fifth of the read stage
        let buckets: Vec<u8> = {
            use rayon::prelude::*;
            let assigner = self.assigner;
            (0..batch.num_rows()).into_par_iter().with_min_len(4096).map(|i| assigner.partition(accounts.get(i), BUCKETS) as u8).collect()
        };
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
        for (i, b) in buckets.into_iter().enumerate() {
            rows[b as usize].push(i as u32);
        }
        let spill = self.spill.as_mut().expect("spilling");
        let dir = spill.dir.path().to_path_buf();
        let io = |e: std::io::Error| PartitionError::Io { dir: dir.display().to_string(), source: e };
        let ar = |e: arrow::error::ArrowError| PartitionError::Arrow { dir: dir.display().to_string(), source: e };
        // written narrow (src/spill.rs): half the bytes to write and read back
        let original = batch.schema();
        let narrowed = crate::spill::narrow(batch).map_err(ar)?;
        let batch = &narrowed;
        let schema = batch.schema();
        let k = match spill.writers.iter().position(|w| w.original == original && w.narrow == schema) {
            Some(k) => k,
            None => {
                spill.writers.push(SchemaWriters { original, narrow: schema.clone(), buckets: (0..BUCKETS).map(|_| None).collect() });
                spill.writers.len() - 1
            }
        };
        // each bucket's rows are taken and encoded on every core: one thread doing it for all
        // 64 buckets bounded the read stage while decoding left a core idle
        let written: Vec<Result<usize, PartitionError>> = {
            use rayon::prelude::*;
            spill.writers[k]
                .buckets
                .par_iter_mut()
                .zip(rows.into_par_iter())
                .enumerate()
                .map(|(b, (slot, idx))| {
                    if idx.is_empty() {
                        return Ok(0);
                    }
                    let part = if idx.len() == batch.num_rows() {
                        batch.clone()
                    } else {
                        arrow::compute::take_record_batch(batch, &UInt32Array::from(idx)).map_err(ar)?
                    };
                    if slot.is_none() {
                        let f = File::create(dir.join(format!("{b:02}-{k}.arrow"))).map_err(io)?;
                        *slot = Some(StreamWriter::try_new(BufWriter::with_capacity(SPILL_BUFFER, f), &schema).map_err(ar)?);
                    }
                    slot.as_mut().expect("opened").write(&part).map_err(ar)?;
                    Ok(part.num_rows())
                })
                .collect()
        };
        for (b, w) in written.into_iter().enumerate() {
            spill.rows[b] += w?;
        }
        Ok(())
    }

    /// The partitions: the held batches as one, or the spilled buckets in groups.
    pub fn finish(mut self) -> Result<Partitions, PartitionError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.spill.is_some() {
            self.flush()?;
        }
        let Some(mut spill) = self.spill.take() else {
            let part = Part { held: std::mem::take(&mut self.held), files: Vec::new(), rows: self.held_rows };
            return Ok(Partitions { parts: vec![part], dir: None });
        };
        let dir = spill.dir.path().to_path_buf();
        let mut files: Vec<Vec<(PathBuf, SchemaRef)>> = vec![Vec::new(); BUCKETS];
        for (k, writers) in spill.writers.iter_mut().enumerate() {
            for (b, w) in writers.buckets.iter_mut().enumerate() {
                if let Some(w) = w.take() {
                    let inner = w.into_inner().map_err(|e| PartitionError::Arrow { dir: dir.display().to_string(), source: e })?;
                    inner.into_inner().map_err(|e| PartitionError::Io { dir: dir.display().to_string(), source: e.into_error() })?;
                    files[b].push((dir.join(format!("{b:02}-{k}.arrow")), Arc::clone(&writers.original)));
                }
            }
        }
        // consecutive buckets, about memory_rows rows per group
        let mut parts = Vec::new();
        let mut cur = Part::default();
        for (b, f) in files.into_iter().enumerate() {
            if !cur.files.is_empty() && cur.rows + spill.rows[b] > self.memory_rows {
                parts.push(std::mem::take(&mut cur));
            }
            cur.files.extend(f);
            cur.rows += spill.rows[b];
        }
        if !cur.files.is_empty() {
            parts.push(cur);
        }
        Ok(Partitions { parts, dir: Some(spill.dir) })
    }
}

/// The partitions of a run's input, each a set of whole account groups. The spill directory
/// lives as long as this value.
pub struct Partitions {
    pub parts: Vec<Part>,
    dir: Option<tempfile::TempDir>,
}

/// One partition: held in memory, or spill files to read back (each read once, from any thread).
#[derive(Default)]
pub struct Part {
    held: Vec<RecordBatch>,
    /// Spill files and the schema their batches widen back to.
    files: Vec<(PathBuf, SchemaRef)>,
    /// Its number of events.
    pub rows: usize,
}

impl Partitions {
    /// Where the spill files are (for error messages).
    pub fn dir(&self) -> String {
        self.dir.as_ref().map_or_else(|| "memory".to_string(), |d| d.path().display().to_string())
    }
}

impl Part {
    /// Its batches (read back from the spill files, which are then removed; the text columns
    /// the spill encoded come back as string views, `spill::widen`). `dir` names the
    /// spill directory in errors.
    pub fn take(&mut self, dir: &str) -> Result<Vec<RecordBatch>, PartitionError> {
        let mut out = std::mem::take(&mut self.held);
        let ar = |e: arrow::error::ArrowError| PartitionError::Arrow { dir: dir.to_string(), source: e };
        for (path, original) in std::mem::take(&mut self.files) {
            let f = File::open(&path).map_err(|e| PartitionError::Io { dir: dir.to_string(), source: e })?;
            let r = StreamReader::try_new(BufReader::with_capacity(1 << 20, f), None).map_err(ar)?;
            let spilled = r.collect::<Result<Vec<_>, _>>().map_err(ar)?;
            use rayon::prelude::*;
            let widened: Vec<RecordBatch> =
                spilled.into_par_iter().map(|b| crate::spill::widen(b, &original)).collect::<Result<_, _>>().map_err(ar)?;
            out.extend(widened);
            // the bucket is in memory now: give its disk space back
            let _ = std::fs::remove_file(&path);
        }
        Ok(out)
    }
}

/// The rejected rows of every partition as one frame in arrival order. Partitions can differ in
/// columns (a dimension only some sources have) and in decimal scales (attributes are scaled per
/// frame): missing columns are null, decimals widen to the largest scale. (polars'
/// `concat_df_diagonal` does the first half, but it needs the `diagonal_concat` feature, and with
/// it a rebuild of polars, for a few lines.)
pub fn stack(frames: Vec<polars::prelude::DataFrame>) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let mut frames: Vec<DataFrame> = frames.into_iter().filter(|f| f.height() > 0 || f.width() > 0).collect();
    if frames.len() <= 1 {
        return Ok(frames.pop().unwrap_or_default());
    }
    let mut names: Vec<PlSmallStr> = Vec::new();
    let mut types: std::collections::HashMap<PlSmallStr, DataType> = std::collections::HashMap::new();
    for f in &frames {
        for c in f.columns() {
            let (name, dt) = (c.name().clone(), c.dtype().clone());
            match types.get_mut(&name) {
                None => {
                    names.push(name.clone());
                    types.insert(name, dt);
                }
                Some(have) => match (have.clone(), &dt) {
                    (DataType::Decimal(_, a), DataType::Decimal(_, b)) if *b > a => *have = dt,
                    (DataType::Null, _) => *have = dt,
                    _ => {}
                },
            }
        }
    }
    let mut out: Option<DataFrame> = None;
    for f in frames.drain(..) {
        let h = f.height();
        let mut cols = Vec::with_capacity(names.len());
        for n in &names {
            let dt = &types[n];
            let c = match f.column(n) {
                Ok(c) if c.dtype() == dt => c.clone(),
                Ok(c) => c.cast(dt)?,
                Err(_) => Column::full_null(n.clone(), h, dt),
            };
            cols.push(c);
        }
        let f = DataFrame::new(h, cols)?;
        match out.as_mut() {
            None => out = Some(f),
            Some(o) => {
                o.vstack_mut(&f)?;
            }
        }
    }
    let out = out.expect("at least two frames");
    out.sort([SEQ], SortMultipleOptions::default())
}
