//! The bill run: config → catalog → sources → ingest and meter → rate → invoice → render →
//! store, with the manifest written last. The only module that sequences I/O around the pure
//! stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::NaiveDate;
use polars::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::assign::Assigner;
use crate::catalog::{self, Catalog, LoadContext};
use crate::config::{self, Config, ConfigError};
use crate::cycles::day_start;
use crate::diag::Diagnostics;
use crate::frame;
use crate::ingest::{self, Reason};
use crate::invoice::{build_invoices, BuiltInvoice};
use crate::ledger::{self, Ledger};
use crate::lineitems::LineItemRow;
use crate::money::{format_amount, Text};
use crate::partition::Partitioner;
use crate::render::Renderer;
use crate::windows::plan_windows;
use billrun_connectors::file::BadRecord;
use billrun_connectors::s3::S3Store;
use billrun_connectors::store::{Created, LocalStore, Store};
use billrun_connectors::{read_source_into, ReadWindow, SourceConfig};

pub const MANIFEST: &str = "manifest.json";
/// The manifest's key for the stage timings and peak memory of the run that wrote it; the
/// only part of a manifest that differs between two runs that produce the same state.
pub const PERFORMANCE: &str = "performance";
pub const REJECTS: &str = "rejects.ndjson";
/// Credits, feature credits and refunds rating hands to settlement (see `handoff`).
pub const SETTLEMENT: &str = "settlement.json";
/// Issued invoices whose cycle was rated again with different usage (see `settle::LateUsage`).
pub const LATE_USAGE: &str = "late_usage.json";
/// One row per line item of the invoices a run issued (`lineitems`).
pub const LINE_ITEMS: &str = "line_items.parquet";

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub as_of: Option<NaiveDate>,
    /// Write here instead of the configured store.
    pub out: Option<PathBuf>,
    /// Fail (and write nothing) if any event is rejected.
    pub strict: bool,
    /// Rate with this catalog folder instead of the configured one (re-rating with a proposal).
    pub catalog: Option<PathBuf>,
    /// Leave the configured event corrections out (re-rating tells their effect apart).
    pub no_corrections: bool,
    /// Events held in memory at once (overrides `[run] memory_rows`); past it, the input is
    /// partitioned by account (src/partition.rs).
    pub memory_rows: Option<usize>,
    /// Leave the issued invoices out of the report: each chunk's trees are dropped once it is
    /// rendered and its line items taken, rather than all held until the run returns (the CLI
    /// needs only the counts; 100 000 trees are ~2 GB).
    pub discard_invoices: bool,
    /// Read every source once, partitioned by account (src/partition.rs), even where the
    /// two-pass path (src/twopass.rs) could be taken.
    pub one_pass: bool,
    /// Evaluate every meter in polars (`meter`), also the simple ones `tally` evaluates natively
    /// otherwise: polars' is the definition, and the golden harness compares the two.
    pub polars_meters: bool,
}

/// Everything a run produced, in memory.
pub struct RunReport {
    pub as_of: NaiveDate,
    /// Where the outputs went (a directory or an s3:// prefix).
    pub store: String,
    /// The invoices issued (unless `discard_invoices`) and the DRAFT previews.
    pub invoices: Vec<BuiltInvoice>,
    /// How many invoices this run issued (also with `discard_invoices`).
    pub issued: usize,
    pub counts: BTreeMap<Reason, u64>,
    pub events_read: u64,
    pub events_used: u64,
    pub manifest: Value,
    pub late: Vec<crate::settle::LateUsage>,
    /// The ledger after the run.
    pub ledger: Ledger,
    /// Wall time per stage and peak memory (also the manifest's `performance` when this run
    /// wrote the manifest).
    pub timings: Timings,
}

/// Wall time of each stage of a run, in order, and the process's peak resident memory. Logged at
/// the end of a run, written by `billrun run --timings FILE`, and the manifest's `performance`
/// (of the run that wrote the manifest: a re-run with the same result keeps it byte for byte).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// load (config, catalog, windows) · keys (the two-pass path's first pass: which event ids
    /// repeat, src/twopass.rs) · read (sources → Arrow) · frame (Arrow → polars) · ingest
    /// (reject reasons, dedup, accounts, windows, enrichments) · meter (meter columns, usage
    /// group-by, rejected rows) · rate (invoices) · settle (store, lock, ledger, settlement) ·
    /// render (invoice files) · rejects (rejects.ndjson) · line_items · write (the store, up to
    /// the manifest itself). `read` includes partitioning (spill writes); `frame` the reads back.
    pub stages: Vec<StageTime>,
    pub total_seconds: f64,
    /// Peak resident set size of the process so far (`getrusage`), MiB.
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub seconds: f64,
    /// The process's peak RSS at the end of the stage (MiB): where the peak grows.
    pub peak_rss_mib: f64,
    /// The process's RSS at the end of the stage (MiB): what the stage left held.
    pub rss_mib: f64,
}

impl Timings {
    /// Record `stage` as the time since `since`, and restart `since`.
    fn lap(&mut self, stage: &'static str, since: &mut Instant) {
        self.add(stage, since.elapsed().as_secs_f64());
        *since = Instant::now();
    }

    /// Move `seconds` of `from` (the last stage) into a new stage `to` that ran inside it; both
    /// report the peak RSS at the end of `from`.
    fn split_off(&mut self, from: &'static str, to: &'static str, seconds: f64) {
        if let Some(i) = self.stages.iter().position(|s| s.stage == from) {
            self.stages[i].seconds -= seconds;
            let (peak_rss_mib, rss_mib) = (self.stages[i].peak_rss_mib, self.stages[i].rss_mib);
            match self.stages.iter_mut().find(|s| s.stage == to) {
                Some(s) => {
                    s.seconds += seconds;
                    s.peak_rss_mib = peak_rss_mib;
                    s.rss_mib = rss_mib;
                }
                None => self.stages.push(StageTime { stage: to, seconds, peak_rss_mib, rss_mib }),
            }
        }
    }

    /// Record stages that ran side by side (`(stage, seconds on its thread)`): the wall time
    /// since `since` is split between them in proportion to their thread time; restart `since`.
    fn lap_shared(&mut self, stages: &[(&'static str, f64)], since: &mut Instant) {
        let wall = since.elapsed().as_secs_f64();
        let total: f64 = stages.iter().map(|s| s.1).sum();
        for (stage, x) in stages {
            self.add(stage, if total > 0.0 { wall * x / total } else { 0.0 });
        }
        *since = Instant::now();
    }

    fn add(&mut self, stage: &'static str, seconds: f64) {
        let (peak_rss_mib, rss_mib) = (peak_rss_mib(), rss_mib());
        match self.stages.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.seconds += seconds;
                s.peak_rss_mib = peak_rss_mib;
                s.rss_mib = rss_mib;
            }
            None => self.stages.push(StageTime { stage, seconds, peak_rss_mib, rss_mib }),
        }
    }
}

/// Peak resident set size of this process, in MiB (0 where `getrusage` is unavailable).
pub fn peak_rss_mib() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    // Linux reports kilobytes
    ru.ru_maxrss as f64 / 1024.0
}

/// Resident set size of this process now, in MiB (0 where `/proc/self/statm` is unavailable).
pub fn rss_mib() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as f64;
    let pages = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok());
    pages.map_or(0.0, |p| p * page / 1048576.0)
}

/// Give back to the OS the pages the allocator holds free, on this thread and on every rayon
/// thread. mimalloc (the binary's allocator) purges a thread's free pages only after a delay and
/// only on that thread, so a phase's garbage (the catalog's parse trees, the event frames) stays
/// resident: the RSS after loading the bench's 100 000-account catalog is 142 MiB with this,
/// 463 without. The run's peak, set by the invoice trees, moves little: rating reuses such pages.
/// Called at phase boundaries, not per free (`MIMALLOC_PURGE_DELAY=0` doubled system time).
fn release_free_memory() {
    // SAFETY: mi_collect takes no arguments to check; it frees only the calling thread's pages
    // the allocator holds free (a no-op where mimalloc is not the global allocator).
    let collect = || unsafe { libmimalloc_sys::mi_collect(true) };
    collect();
    rayon::broadcast(|_| collect());
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("invalid catalog:\n{0}")]
    Catalog(Diagnostics),
    #[error("no as-of date: pass --as-of YYYY-MM-DD or set `as_of` in the [run] table of {0}")]
    NoAsOf(String),
    #[error("{0}")]
    Source(#[from] billrun_connectors::error::ConnectorError),
    #[error("reading events: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Ingest(#[from] ingest::IngestError),
    #[error("rendering: {0}")]
    Render(#[from] crate::render::RenderError),
    #[error("{0} event(s) rejected and --strict was given; nothing was written (see the reasons above)")]
    Strict(u64),
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    #[error("{0}")]
    Pushdown(#[from] crate::pushdown::PushdownError),
    #[error("{0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("{0}")]
    Corrections(#[from] crate::corrections::CorrectionsError),
    #[error("line items: {0}")]
    LineItems(#[from] crate::lineitems::LineItemsError),
    #[error("{0}")]
    Partition(#[from] crate::partition::PartitionError),
    #[error("finding repeated event ids: {0}")]
    Keys(arrow::error::ArrowError),
    #[error("source `{name}` changed while it was read (its files differ between the two passes); run again")]
    SourceChanged { name: String },
    #[error("{0}")]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("another run is writing this store: {0}")]
    Locked(billrun_connectors::error::ConnectorError),
    #[error("another run committed ledger generation {generation} first; nothing of this run was committed (run again to see its result)")]
    Conflict { generation: u64 },
    #[error("the store's ledger is at as-of {last} (generation {generation}); a bill run as of the earlier {as_of} would reissue history (use a fresh store with --out to preview the past)")]
    AsOfBehind { as_of: NaiveDate, last: NaiveDate, generation: u64 },
}

impl RunError {
    /// Exit code: 2 for problems in what the user wrote, 3 for the environment, 1 for --strict,
    /// 4 when another run holds or committed the store first.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(ConfigError::Invalid(_)) | RunError::Catalog(_) | RunError::NoAsOf(_) => 2,
            RunError::Pushdown(e) if e.is_user_input() => 2,
            RunError::Strict(_) => 1,
            RunError::Locked(_) | RunError::Conflict { .. } => 4,
            RunError::AsOfBehind { .. } => 2,
            _ => 3,
        }
    }
}

/// Load and validate the configuration and its catalog (no event is read).
pub fn load(config_path: &Path) -> Result<(Config, Catalog), RunError> {
    load_with(config_path, None)
}

/// Load the configuration, and the catalog from `catalog` if given, else the configured one.
pub fn load_with(config_path: &Path, catalog: Option<&Path>) -> Result<(Config, Catalog), RunError> {
    let mut cfg = config::load(config_path)?;
    if let Some(c) = catalog {
        cfg.catalog_dir = c.to_path_buf();
    }
    let ctx = LoadContext { base_currency: &cfg.organization.base_currency, time_zone: cfg.organization.time_zone };
    let cat = catalog::load_dir(&cfg.catalog_dir, &ctx).map_err(RunError::Catalog)?;
    Ok((cfg, cat))
}

fn progress(msg: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    tracing::info!("{msg}");
    if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(pb)
    } else {
        None
    }
}

/// Percent-encode an id so it is one safe path segment (`acct/1` → `acct%2F1`, `..` → `%2E%2E`).
pub fn safe_segment(id: &str) -> String {
    let mut s = String::new();
    for (i, b) in id.bytes().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if ok {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        "%00".into()
    } else {
        s
    }
}

/// Everything a run computes before anything is written.
pub struct Computed {
    pub cfg: Config,
    pub catalog: Catalog,
    pub as_of: NaiveDate,
    pub windows: Vec<crate::windows::Window>,
    pub invoices: Vec<BuiltInvoice>,
    pub rejects: DataFrame,
    pub bad_records: Vec<BadRecord>,
    pub meter_ids: Vec<String>,
    pub counts: BTreeMap<Reason, u64>,
    pub events_read: u64,
    pub events_used: u64,
    pub used_by_window: BTreeMap<u32, u64>,
    /// The usage table: (window id, meter id) → quantity.
    pub usage: crate::ingest::Usage,
    /// What the configured event corrections did (`None` without `[corrections]`).
    pub corrected: Option<crate::corrections::Applied>,
    /// Stages load … rate.
    pub timings: Timings,
}

/// Read, ingest, meter, rate and build invoices; no output is written.
pub fn compute(opts: &RunOptions) -> Result<Computed, RunError> {
    let mut timings = Timings::default();
    let mut lap = Instant::now();
    let (cfg, cat) = load_with(&opts.config, opts.catalog.as_deref())?;
    release_free_memory();
    let as_of = opts.as_of.or(cfg.as_of).ok_or_else(|| RunError::NoAsOf(opts.config.display().to_string()))?;
    let tz = cfg.organization.time_zone;
    let as_of_us = day_start(tz, as_of).timestamp_micros();

    let pb = progress("reading sources");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let mut bad = Vec::new();
    let windows = plan_windows(&cat, tz, as_of);
    let window = ReadWindow { start_us: windows.iter().map(|w| w.start_us).min(), end_us: Some(as_of_us) };
    timings.lap("load", &mut lap);
    // meter pushdown (src/pushdown.rs): these sources are metered in their database; only
    // their usage table comes back, merged below with the local path's
    let mut pushed = Vec::new();
    for s in cfg.sources.iter().filter(|s| s.pushdown().is_some()) {
        pushed.push(rt.block_on(crate::pushdown::pushdown(s, &cat, &windows, as_of_us, &window))?);
    }
    drop(pb);
    // the other sources: read twice, in chunks of arrival (src/twopass.rs), or once into the
    // partitioner (src/partition.rs), which past `memory_rows` events spills them by account
    // group so that memory follows a partition
    let corrections = match &cfg.corrections {
        Some(p) if !opts.no_corrections => crate::corrections::load(p)?,
        _ => Vec::new(),
    };
    let assigner = Assigner::new(&cat, &windows);
    let memory_rows = opts.memory_rows.or(cfg.memory_rows).unwrap_or(crate::partition::DEFAULT_MEMORY_ROWS);
    let local: Vec<&SourceConfig> = cfg.sources.iter().filter(|s| s.pushdown().is_none()).collect();
    let keys = if !opts.one_pass && crate::twopass::eligible(local.iter().copied(), !corrections.is_empty()) {
        let keys = first_pass(&rt, &local, &window, &assigner)?;
        timings.lap("keys", &mut lap);
        // what fits in memory is read again whole: one partition, no chunks to merge
        Some(keys).filter(|k| k.rows > memory_rows as u64)
    } else {
        None
    };
    let mut presence = crate::corrections::Presence::new(&corrections);
    let plan = std::sync::OnceLock::new();
    let originals = std::sync::atomic::AtomicU64::new(0);
    let work = |batches: Vec<arrow::array::RecordBatch>, dedup: bool| {
        let t = Instant::now();
        let frame = frame::build(&batches)?;
        drop(batches);
        let frame = crate::corrections::apply(
            frame,
            plan.get().expect("planned after reading"),
            originals.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let framed = t.elapsed().as_secs_f64();
        let out = ingest::ingest(frame, &cat, &windows, &assigner, as_of_us, dedup, opts.polars_meters)?;
        Ok((out, framed))
    };
    let outs = match keys {
        Some(keys) => {
            let _ = plan.set(crate::corrections::plan(&corrections, &presence));
            let (outs, rows) = read_two_pass(&rt, &local, &window, &assigner, keys, memory_rows, &work, &mut bad, &mut timings, &mut lap)?;
            originals.store(rows, std::sync::atomic::Ordering::Relaxed);
            outs
        }
        None => {
            let pb = progress("reading sources");
            let mut parts = Partitioner::new(&assigner, memory_rows);
            for s in &local {
                let before = parts.rows();
                let out = rt.block_on(read_source_into(s, &window, &mut |b| {
                    presence.note(&b);
                    parts.push(b);
                }))?;
                tracing::info!(source = %s.name(), files = out.files.len(), rows = parts.rows() - before, bad = out.bad_records.len(), "source read");
                bad.extend(out.bad_records);
            }
            originals.store(parts.rows(), std::sync::atomic::Ordering::Relaxed);
            if !corrections.is_empty() {
                let extra = crate::corrections::payloads(&corrections)?;
                for b in extra.batches {
                    parts.push(b);
                }
                bad.extend(extra.bad_records);
            }
            let partitions = parts.finish()?;
            drop(pb);
            timings.lap("read", &mut lap);
            let _ = plan.set(crate::corrections::plan(&corrections, &presence));
            ingest_in_partitions(partitions, memory_rows, &work, &mut timings, &mut lap)?
        }
    };
    let plan = plan.into_inner().expect("planned");
    crate::faults::point("reading");

    let pb = progress("merging usage");
    let mut parts = crate::usage::PartialUsage::default();
    let mut rejects = Vec::new();
    let (mut counts, mut events_read, mut events_used) = (BTreeMap::new(), 0u64, 0u64);
    // events used by window id (ids are dense: `plan_windows` numbers them), summed over the
    // parts (a chunk of arrival meets most windows)
    let mut used: Vec<u64> = Vec::new();
    let mut meter_ids = Vec::new();
    let n_parts = outs.len();
    for out in outs {
        parts.merge(out.usage)?;
        rejects.push(out.rejects);
        for (r, n) in out.counts {
            *counts.entry(r).or_insert(0) += n;
        }
        events_read += out.events_read;
        events_used += out.events_used;
        for (w, n) in out.used_by_window {
            let w = w as usize;
            if used.len() <= w {
                used.resize(w + 1, 0);
            }
            used[w] += n;
        }
        meter_ids = out.meter_ids;
    }
    let mut usage = parts.finish()?;
    let mut used_by_window: BTreeMap<u32, u64> = used.into_iter().enumerate().filter(|(_, n)| *n > 0).map(|(w, n)| (w as u32, n)).collect();
    if n_parts > 1 {
        tracing::info!(parts = n_parts, "ingested in parts");
    }
    let rejects = crate::partition::stack(rejects)?;
    let corrected = plan.applied;
    let corrected = cfg.corrections.is_some().then_some(corrected);
    for p in pushed {
        p.merge_into(&mut usage, &mut counts, &mut events_read, &mut events_used, &mut used_by_window);
    }
    if !bad.is_empty() {
        *counts.entry(Reason::InvalidEvent).or_insert(0) += bad.len() as u64;
    }
    let events_read = events_read + bad.len() as u64;
    drop(pb);
    for (r, n) in &counts {
        tracing::warn!(reason = r.as_str(), count = n, "events rejected");
    }
    crate::faults::point("rating");
    // the event phase's state and garbage go before the invoice trees come
    drop((assigner, rt));
    release_free_memory();
    let invoices = build_invoices(&cat, &cfg.organization, &windows, &usage, as_of);
    timings.lap("rate", &mut lap);
    Ok(Computed {
        timings,
        usage,
        corrected,
        cfg,
        catalog: cat,
        as_of,
        windows,
        invoices,
        rejects,
        bad_records: bad,
        meter_ids,
        counts,
        events_read,
        events_used,
        used_by_window,
    })
}

/// Invoices rendered (in parallel) before their files are written.
const RENDER_CHUNK: usize = 2048;

/// Objects to write: (store key, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// What ingests one part of the input (with dedup, or for rows known to have keys of their
/// own without): its output and the seconds spent framing it.
type PartitionWork<'a> = dyn Fn(Vec<arrow::array::RecordBatch>, bool) -> Result<(ingest::IngestOutput, f64), RunError> + Sync + 'a;

/// The first pass of the two-pass path: which dedup keys repeat, and what was read.
struct Keys {
    repeated: crate::twopass::Repeated,
    rows: u64,
    /// Per source, the files read: the second pass must read the same.
    files: Vec<Vec<billrun_connectors::SourceFile>>,
}

fn first_pass(rt: &tokio::runtime::Runtime, local: &[&SourceConfig], window: &ReadWindow, assigner: &Assigner) -> Result<Keys, RunError> {
    let pb = progress("finding repeated event ids");
    let mut scan = crate::twopass::KeyScan::new(assigner);
    let mut failed = None;
    let mut files = Vec::new();
    for s in local {
        let out = rt.block_on(read_source_into(&crate::twopass::keys_only(s), window, &mut |b| {
            if failed.is_none() {
                failed = scan.push(&b).err();
            }
        }))?;
        files.push(out.files);
    }
    if let Some(e) = failed {
        return Err(RunError::Keys(e));
    }
    let rows = scan.rows();
    let repeated = scan.finish();
    drop(pb);
    tracing::info!(rows, repeated = repeated.len(), "first pass: event ids whose (account, id) key may repeat");
    Ok(Keys { repeated, rows, files })
}

/// The second pass (src/twopass.rs): every source read again in arrival order; the rows whose
/// key is their own are ingested without dedup in chunks of about `memory_rows`, one at a time
/// on a thread of its own while the next is read; the others go through the partitioner and are
/// ingested with dedup. Returns the parts' outputs and the rows read.
#[allow(clippy::too_many_arguments)]
fn read_two_pass(
    rt: &tokio::runtime::Runtime,
    local: &[&SourceConfig],
    window: &ReadWindow,
    assigner: &Assigner,
    keys: Keys,
    memory_rows: usize,
    work: &PartitionWork<'_>,
    bad: &mut Vec<BadRecord>,
    timings: &mut Timings,
    lap: &mut Instant,
) -> Result<(Vec<ingest::IngestOutput>, u64), RunError> {
    use arrow::array::RecordBatch;
    /// What the read callback holds.
    struct Reading<'a> {
        assigner: &'a Assigner<'a>,
        repeated: &'a crate::twopass::Repeated,
        memory_rows: usize,
        next_seq: u64,
        chunk: Vec<RecordBatch>,
        chunk_rows: usize,
        aside: Partitioner<'a>,
        /// To the ingest thread; dropped when the reading ends.
        tx: Option<std::sync::mpsc::SyncSender<Vec<RecordBatch>>>,
        /// Time spent waiting for the ingest thread to take a chunk.
        blocked: std::time::Duration,
        failed: Option<RunError>,
    }
    impl Reading<'_> {
        fn take(&mut self, b: RecordBatch) {
            if self.failed.is_some() || b.num_rows() == 0 {
                return;
            }
            let r = crate::partition::numbered(b, self.next_seq).map_err(RunError::from).and_then(|b| {
                self.next_seq += b.num_rows() as u64;
                self.repeated.split(self.assigner, &b).map_err(RunError::Keys)
            });
            match r {
                Ok((mut own, shared)) => {
                    self.aside.push_numbered(shared);
                    // chunks of exactly `memory_rows` (the last one fewer), of slices that
                    // share the batch's buffers
                    while own.num_rows() > 0 {
                        let n = (self.memory_rows - self.chunk_rows).min(own.num_rows());
                        self.chunk.push(own.slice(0, n));
                        self.chunk_rows += n;
                        own = own.slice(n, own.num_rows() - n);
                        if self.chunk_rows >= self.memory_rows {
                            self.send();
                        }
                    }
                }
                Err(e) => self.failed = Some(e),
            }
        }
        fn send(&mut self) {
            let t = Instant::now();
            self.chunk_rows = 0;
            let chunk = std::mem::take(&mut self.chunk);
            // the ingest thread stops taking chunks only after an error, which it reports
            if let Some(tx) = &self.tx {
                let _ = tx.send(chunk);
            }
            self.blocked += t.elapsed();
        }
    }

    let pb = progress("reading and ingesting");
    let Keys { repeated, files, .. } = keys;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<RecordBatch>>(1);
    let mut reading = Reading {
        assigner,
        repeated: &repeated,
        memory_rows,
        next_seq: 0,
        chunk: Vec::new(),
        chunk_rows: 0,
        aside: Partitioner::new(assigner, memory_rows),
        tx: Some(tx),
        blocked: std::time::Duration::ZERO,
        failed: None,
    };
    let start = Instant::now();
    type Chunked = (Vec<ingest::IngestOutput>, Option<RunError>, ThreadSeconds);
    let ((outs, failed, split), read_seconds): (Chunked, f64) = std::thread::scope(|sc| {
        let ingesting = sc.spawn(move || {
            let (mut outs, mut failed, mut split) = (Vec::new(), None, ThreadSeconds::default());
            // the chunks' usage, merged as they come (each chunk has an entry for most windows)
            let mut usage = crate::usage::PartialUsage::default();
            for chunk in rx {
                if failed.is_some() {
                    continue;
                }
                let t = Instant::now();
                let r = work(chunk, false).and_then(|(mut out, framed)| {
                    usage.merge(std::mem::take(&mut out.usage))?;
                    Ok((out, framed))
                });
                match r {
                    Ok((out, framed)) => {
                        split.add(&out, framed, t.elapsed().as_secs_f64());
                        outs.push(out);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(first) = outs.first_mut() {
                first.usage = usage;
            }
            (outs, failed, split)
        });
        for (s, listed) in local.iter().zip(&files) {
            let before = reading.next_seq;
            let r = &mut reading;
            let out = rt.block_on(read_source_into(s, window, &mut move |b| r.take(b)));
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    reading.failed.get_or_insert(e.into());
                    break;
                }
            };
            if out.files != *listed {
                reading.failed.get_or_insert(RunError::SourceChanged { name: s.name().to_string() });
                break;
            }
            tracing::info!(source = %s.name(), files = out.files.len(), rows = reading.next_seq - before, bad = out.bad_records.len(), "source read");
            bad.extend(out.bad_records);
        }
        if !reading.chunk.is_empty() && reading.failed.is_none() {
            reading.send();
        }
        let read_seconds = (start.elapsed() - reading.blocked).as_secs_f64();
        // the ingest thread ends with the channel
        reading.tx = None;
        (ingesting.join().expect("the ingest thread does not panic"), read_seconds)
    });
    if let Some(e) = reading.failed.take().or(failed) {
        return Err(e);
    }
    let rows = reading.next_seq;
    drop(pb);
    // reading and ingesting ran side by side
    let [frame, ingest, meter] = split.stages();
    tracing::info!(
        wall = lap.elapsed().as_secs_f64(),
        read = read_seconds,
        waiting = reading.blocked.as_secs_f64(),
        frame = frame.1,
        ingest = ingest.1,
        meter = meter.1,
        aside = reading.aside.rows(),
        "second pass: seconds on the reading thread and on the ingest thread by stage"
    );
    timings.lap_shared(&[("read", read_seconds), frame, ingest, meter], lap);
    let mut outs = outs;
    if reading.aside.rows() > 0 {
        let aside = reading.aside.finish()?;
        outs.extend(ingest_in_partitions(aside, memory_rows, work, timings, lap)?);
    }
    Ok((outs, rows))
}

/// [`ingest_partitions`] with the phase's stage timings.
fn ingest_in_partitions(
    partitions: crate::partition::Partitions,
    memory_rows: usize,
    work: &PartitionWork<'_>,
    timings: &mut Timings,
    lap: &mut Instant,
) -> Result<Vec<ingest::IngestOutput>, RunError> {
    let pb = progress("ingesting and metering");
    let (outs, split) = ingest_partitions(partitions, memory_rows, work)?;
    drop(pb);
    // partitions ran two at a time
    timings.lap_shared(&split.stages(), lap);
    Ok(outs)
}

/// Seconds that parts of the input took on their threads, by stage.
#[derive(Default)]
struct ThreadSeconds {
    frame: f64,
    ingest: f64,
    meter: f64,
}

impl ThreadSeconds {
    /// One part: `total` seconds, of which `framed` framing it and `out.meter_seconds` metering.
    fn add(&mut self, out: &ingest::IngestOutput, framed: f64, total: f64) {
        self.frame += framed;
        self.ingest += total - framed - out.meter_seconds;
        self.meter += out.meter_seconds;
    }

    fn stages(&self) -> [(&'static str, f64); 3] {
        [("frame", self.frame), ("ingest", self.ingest), ("meter", self.meter)]
    }
}

/// The partitions' outputs in partition order, and the threads' seconds.
type Ingested = (Vec<ingest::IngestOutput>, ThreadSeconds);

/// Read, frame and ingest every partition with `work`, two at a time (one per core: each is
/// partly single-threaded), but never more than `2 × memory_rows` events in flight unless a
/// partition alone is larger (it then runs alone). The outputs come back in partition order, so
/// results do not depend on which finished first. Also returns the threads' seconds by stage.
fn ingest_partitions(
    mut partitions: crate::partition::Partitions,
    memory_rows: usize,
    work: &PartitionWork<'_>,
) -> Result<Ingested, RunError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    let dir = partitions.dir();
    let parts: Vec<Mutex<crate::partition::Part>> = std::mem::take(&mut partitions.parts).into_iter().map(Mutex::new).collect();
    let n = parts.len();
    let budget = memory_rows.saturating_mul(2);
    let in_flight = Mutex::new(0usize);
    let freed = Condvar::new();
    let next = AtomicUsize::new(0);
    type Slot = Option<Result<(ingest::IngestOutput, f64, f64), RunError>>;
    let results: Vec<Mutex<Slot>> = (0..n).map(|_| Mutex::new(None)).collect();
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= n {
            break;
        }
        let mut part = parts[i].lock().expect("a partition is taken once");
        let rows = part.rows;
        {
            let mut used = in_flight.lock().expect("budget");
            while *used > 0 && *used + rows > budget {
                used = freed.wait(used).expect("budget");
            }
            *used += rows;
        }
        let t = Instant::now();
        let r = part.take(&dir).map_err(RunError::from).and_then(|batches| work(batches, true));
        drop(part);
        let r = r.map(|(out, framed)| {
            let total = t.elapsed().as_secs_f64();
            (out, framed, total)
        });
        let failed = r.is_err();
        *results[i].lock().expect("result slot") = Some(r);
        *in_flight.lock().expect("budget") -= rows;
        freed.notify_all();
        if failed {
            // the other worker stops at its next partition
            next.store(n, Ordering::SeqCst);
        }
    };
    let worker = &worker;
    std::thread::scope(|s| {
        if n > 1 {
            s.spawn(worker);
        }
        worker();
    });
    drop(partitions);
    let (mut outs, mut split) = (Vec::with_capacity(n), ThreadSeconds::default());
    for r in results {
        // a slot left empty was skipped after another partition failed: that error returns first
        let Some(r) = r.into_inner().expect("result slot") else { continue };
        let (out, framed, total) = r?;
        split.add(&out, framed, total);
        outs.push(out);
    }
    Ok((outs, split))
}

/// The objects a run created before its ledger commit: removed when the run fails (returns an
/// error) before committing, so nothing of it looks complete.
struct Uncommitted<'a> {
    store: &'a dyn Store,
    keys: Vec<String>,
}

impl Drop for Uncommitted<'_> {
    fn drop(&mut self) {
        for k in &self.keys {
            let _ = self.store.delete(k);
        }
    }
}

/// A document's name inside a bundle: its per-invoice key below `invoices/`.
fn member_name(key: &str) -> &str {
    key.strip_prefix("invoices/").unwrap_or(key)
}

/// An invoice's three files (JSON, HTML, text) under `dir/<account>/`.
fn invoice_files(dir: &str, b: &BuiltInvoice, renderer: &Renderer) -> Result<Vec<(String, Vec<u8>)>, RunError> {
    let base = format!("{dir}/{}/{}", safe_segment(&b.invoice.owner_id), safe_segment(&b.invoice.id));
    // compact, as Togai's API sends it: pretty-printed, the indentation was 60% of the bytes
    // (and of the time to serialize, hash and compress them); `jq .` shows it indented. Sized
    // for a typical invoice: growing the buffer by doubling copied it a dozen times
    let mut jsonb = Vec::with_capacity(16 << 10);
    serde_json::to_writer(&mut jsonb, &b.invoice).expect("invoice serializes");
    jsonb.push(b'\n');
    let (html, text) = renderer.render(&b.invoice)?;
    Ok(vec![(format!("{base}.json"), jsonb), (format!("{base}.html"), html.into_bytes()), (format!("{base}.txt"), text.into_bytes())])
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn open_store(target: &crate::config::StoreTarget) -> Result<Box<dyn Store>, RunError> {
    Ok(match target {
        crate::config::StoreTarget::Local(dir) => Box::new(LocalStore::open(dir)?),
        crate::config::StoreTarget::S3(c) => Box::new(S3Store::open(c)?),
    })
}

/// The latest ledger generation in the store (the empty ledger of a new store).
pub fn load_ledger(store: &dyn Store) -> Result<Ledger, RunError> {
    let keys = store.list(ledger::PREFIX)?;
    let Some(key) = keys.iter().filter(|k| ledger::generation_of(k).is_some()).max() else { return Ok(Ledger::default()) };
    let bytes = store
        .get(key)?
        .ok_or_else(|| RunError::Ledger(ledger::LedgerError { key: key.clone(), message: "listed but unreadable".into() }))?;
    Ok(ledger::parse(key, &bytes)?)
}

/// A billed line: (id, type, description, quantity, value).
type BilledLine = (Option<Text>, Text, String, Option<Text>, Text);

/// An invoice's header fields that every one of its line-item rows repeats (inline `Text`: a
/// 100k-invoice run has ~700k rows, and String headers were ten allocations per row).
struct RowHeader {
    account_id: Text,
    owner_id: Text,
    invoice_id: Text,
    sequence_id: Option<Text>,
    invoice_type: Text,
    status: Text,
    cycle_start: NaiveDate,
    cycle_end: NaiveDate,
    currency: Text,
}

fn rows_of(h: RowHeader, items: Vec<BilledLine>) -> Vec<LineItemRow> {
    items
        .into_iter()
        .map(|(id, kind, description, quantity, value)| LineItemRow {
            account_id: h.account_id.clone(),
            owner_id: h.owner_id.clone(),
            invoice_id: h.invoice_id.clone(),
            sequence_id: h.sequence_id.clone(),
            invoice_type: h.invoice_type.clone(),
            status: h.status.clone(),
            cycle_start: h.cycle_start,
            cycle_end: h.cycle_end,
            line_id: id,
            kind,
            description,
            quantity: quantity.as_deref().and_then(crate::doc::parse_decimal),
            amount: crate::doc::parse_decimal(&value).unwrap_or_default(),
            currency: h.currency.clone(),
        })
        .collect()
}

/// Line-item rows of an invoice read back from its JSON (an earlier run of the same date).
fn line_item_rows(v: &Value) -> Vec<LineItemRow> {
    fn walk(l: &Value, out: &mut Vec<BilledLine>) {
        let kind = l["type"].as_str().unwrap_or_default();
        if crate::invoice::line_class(kind).is_some() {
            let s = |k: &str| l[k].as_str().map(Text::from);
            let description = l["description"].as_str().unwrap_or_default().to_string();
            out.push((s("id"), kind.into(), description, s("quantity"), s("value").unwrap_or_default()));
            return;
        }
        for c in l["lineItems"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    let mut items = Vec::new();
    walk(&v["revenueInfo"], &mut items);
    let s = |k: &str| Text::from(v[k].as_str().unwrap_or_default());
    let date = |k: &str| NaiveDate::parse_from_str(v[k].as_str().unwrap_or_default(), "%Y-%m-%d").unwrap_or_default();
    let header = RowHeader {
        account_id: s("accountId"),
        owner_id: s("ownerId"),
        invoice_id: s("id"),
        sequence_id: v["sequenceId"].as_str().map(Text::from),
        invoice_type: s("invoiceType"),
        status: s("status"),
        cycle_start: date("startDate"),
        cycle_end: date("endDate"),
        currency: s("currency"),
    };
    rows_of(header, items)
}

/// Line-item rows of an invoice this run built: the same rows as [`line_item_rows`] of its JSON,
/// without going through JSON.
fn invoice_line_item_rows(inv: &crate::invoice::Invoice) -> Vec<LineItemRow> {
    fn walk(l: &crate::invoice::LineItem, out: &mut Vec<BilledLine>) {
        if crate::invoice::line_class(l.kind).is_some() {
            out.push((l.id.as_deref().map(Text::from), l.kind.into(), l.description.to_string(), l.quantity.clone(), l.value.clone()));
            return;
        }
        for c in &l.line_items {
            walk(c, out);
        }
    }
    let mut items = Vec::new();
    walk(&inv.revenue_info, &mut items);
    let header = RowHeader {
        account_id: inv.account_id.as_str().into(),
        owner_id: inv.owner_id.as_str().into(),
        invoice_id: inv.id.as_str().into(),
        sequence_id: inv.sequence_id.as_deref().map(Text::from),
        invoice_type: inv.invoice_type.into(),
        status: inv.status.into(),
        cycle_start: inv.start_date,
        cycle_end: inv.end_date,
        currency: inv.currency.as_str().into(),
    };
    rows_of(header, items)
}

/// Run the bill run described by `opts`: compute, then settle against the store's ledger and
/// write. Writing order: every new object first (removed again if the run fails), then the
/// ledger generation with a create-only write (the commit), then objects that change (DRAFT
/// previews), stale previews removed, and the run's manifest last.
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    let t0 = Instant::now();
    let c = compute(opts)?;
    let rejected: u64 = c.counts.values().sum();
    if opts.strict && rejected > 0 {
        return Err(RunError::Strict(rejected));
    }
    let Computed {
        cfg,
        catalog: cat,
        as_of,
        invoices,
        rejects,
        bad_records: bad,
        meter_ids,
        counts,
        events_read,
        events_used,
        corrected,
        mut timings,
        ..
    } = c;
    let mut lap = Instant::now();
    let tz = cfg.organization.time_zone;
    let target = match &opts.out {
        Some(dir) => crate::config::StoreTarget::Local(dir.clone()),
        None => cfg.store.clone(),
    };
    let store = open_store(&target)?;
    let _lock = store.lock().map_err(RunError::Locked)?;
    let before = load_ledger(&*store)?;
    if let Some(last) = before.as_of.filter(|last| as_of < *last) {
        return Err(RunError::AsOfBehind { as_of, last, generation: before.generation });
    }
    crate::faults::point("settling");
    let mut rating_handoff = crate::handoff::Handoff::default();
    for b in &invoices {
        rating_handoff.extend(&b.handoff);
    }
    let settled = crate::settle::settle(&cat, &cfg.organization, cfg.late_usage, as_of, invoices, &before);
    let mut ledger = settled.ledger;
    timings.lap("settle", &mut lap);

    let pb = progress("rendering and writing invoices");
    let renderer = Renderer::new(cfg.templates_dir.as_deref())?;
    // new objects are removed again if the run fails before its ledger commit
    let mut created = Uncommitted { store: &*store, keys: Vec::new() };
    // issued invoices: written once, never again; rendered on every core and written a chunk at
    // a time (durable together at the barrier before the commit), so their bytes are not all
    // held at once
    let bundled = cfg.invoice_documents == crate::config::InvoiceDocuments::Bundles;
    // `bundles`: a chunk's documents go in one tar (src/bundle.rs), named by the generation that
    // issues them, so a later run at the same as-of never reuses a name
    let generation = ledger.generation;
    let bundle_key = |n: usize| format!("invoices/{as_of}/{generation:06}-{n:05}.tar.zst");
    // pack (when bundled) and write one chunk's files: the keys it created, and its first error
    let flush = |n: usize, files: Files| -> (Vec<String>, Option<RunError>, f64) {
        use rayon::prelude::*;
        let t = Instant::now();
        let files = if bundled {
            let key = bundle_key(n);
            match crate::bundle::pack(&key, files.iter().map(|(k, v)| (member_name(k), v.as_slice()))) {
                Ok(tar) => vec![(key, tar)],
                Err(e) => return (Vec::new(), Some(e.into()), t.elapsed().as_secs_f64()),
            }
        } else {
            files
        };
        // written on every core too: creating files is most of the cost
        let written: Vec<Result<Option<String>, RunError>> = files
            .into_par_iter()
            .map(|(k, bytes)| {
                // not in the committed ledger: absent, or left by a run that never committed
                if store.get(&k)?.as_deref() == Some(bytes.as_slice()) {
                    return Ok(None);
                }
                store.put_deferred(&k, &bytes)?;
                crate::faults::point("writing");
                Ok(Some(k))
            })
            .collect();
        let (mut keys, mut failed) = (Vec::new(), None);
        for w in written {
            match w {
                Ok(Some(k)) => keys.push(k),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        (keys, failed, t.elapsed().as_secs_f64())
    };
    // chunk n is packed and written while chunk n + 1 renders
    let mut write_seconds = 0.0;
    // a chunk's files, and (with `discard_invoices`) its invoices, to drop off the rendering thread
    let mut pending: Option<(usize, Files, Vec<BuiltInvoice>)> = None;
    let issued_count = settled.issued.len();
    // taken a chunk at a time from the front (the invoices are not copied into chunks up front:
    // at 100 000 invoices a second vector of them was ~100 MB more at the run's peak)
    let mut issued = std::collections::VecDeque::from(settled.issued);
    let mut kept: Vec<BuiltInvoice> = Vec::new();
    // line-item rows of the invoices issued now, by id (the first of equal ids), taken while
    // their chunk renders
    let mut rows_by_id: std::collections::HashMap<String, Vec<LineItemRow>> = std::collections::HashMap::new();
    for n in 0..=issued_count.div_ceil(RENDER_CHUNK) {
        let prev = pending.take();
        let chunk: Vec<BuiltInvoice> = issued.drain(..RENDER_CHUNK.min(issued.len())).collect();
        let (rendered, flushed) = rayon::join(
            || {
                use rayon::prelude::*;
                chunk
                    .par_iter()
                    .map(|b| {
                        let fs = invoice_files("invoices", b, &renderer)?;
                        let hashes: Vec<String> = fs.iter().map(|(_, v)| sha(v)).collect();
                        Ok((fs, hashes, invoice_line_item_rows(&b.invoice)))
                    })
                    .collect::<Vec<Result<_, RunError>>>()
            },
            || {
                prev.map(|(m, files, done)| {
                    let flushed = flush(m, files);
                    // freeing 2048 invoice trees takes as long as rendering a few hundred
                    drop(done);
                    flushed
                })
            },
        );
        // every object made is recorded (to be removed on failure) before any error returns
        if let Some((keys, failed, seconds)) = flushed {
            created.keys.extend(keys);
            write_seconds += seconds;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if chunk.is_empty() {
            break;
        }
        let mut files: Files = Vec::new();
        for (b, r) in chunk.iter().zip(rendered) {
            let (fs, hashes, line_rows) = r?;
            rows_by_id.entry(b.invoice.id.clone()).or_insert(line_rows);
            let entry = ledger.issued.get_mut(&b.invoice.id).expect("settlement indexes what it issues");
            entry.files = fs
                .iter()
                .zip(hashes)
                .map(|((k, _), h)| (if bundled { crate::bundle::member_key(&bundle_key(n), member_name(k)) } else { k.clone() }, h))
                .collect();
            files.extend(fs);
        }
        let done = if opts.discard_invoices {
            chunk
        } else {
            kept.extend(chunk);
            Vec::new()
        };
        pending = Some((n, files, done));
    }
    drop(issued);
    let mut other: Vec<(String, Vec<u8>)> = Vec::new();
    for b in &settled.drafts {
        other.extend(invoice_files("drafts", b, &renderer)?);
    }
    let draft_keys: std::collections::BTreeSet<String> = other.iter().map(|f| f.0.clone()).collect();
    timings.lap("render", &mut lap);
    // packing and writing overlap the next chunk's rendering: `write` is their time, `render` the rest
    timings.split_off("render", "write", write_seconds);
    let run_dir = format!("runs/{as_of}");
    let mut rej = String::new();
    for (_, line) in crate::rejects::lines(&rejects, &bad, &cat, &meter_ids)? {
        rej.push_str(&line);
        rej.push('\n');
    }
    other.push((format!("{run_dir}/{REJECTS}"), rej.into_bytes()));
    timings.lap("rejects", &mut lap);
    let mut hb = serde_json::to_vec_pretty(&rating_handoff).expect("handoff serializes");
    hb.push(b'\n');
    other.push((format!("{run_dir}/{SETTLEMENT}"), hb));
    let mut lb = serde_json::to_vec_pretty(&settled.late).expect("late usage serializes");
    lb.push(b'\n');
    other.push((format!("{run_dir}/{LATE_USAGE}"), lb));
    // the line items of every invoice this as-of date issued (also when re-run: read back)
    let mut rows = Vec::new();
    let mut issued_now: Vec<(&String, &crate::ledger::IssuedInvoice)> =
        ledger.issued.iter().filter(|(_, e)| e.issued_as_of == as_of && e.invoice_type != "COMPOSITE").collect();
    issued_now
        .sort_by(|(a, x), (b, y)| (x.invoice_date, &x.owner_id, x.start_date, a).cmp(&(y.invoice_date, &y.owner_id, y.start_date, b)));
    // a re-run's invoices issued earlier at this as-of are read back; each bundle once
    let mut bundled_json: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    let mut bundles: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (id, e) in &issued_now {
        if !rows_by_id.contains_key(id.as_str()) {
            bundles.extend(e.files.keys().filter(|k| k.ends_with(".json")).filter_map(|k| crate::bundle::split_key(k)).map(|(b, _)| b));
        }
    }
    for b in bundles {
        let bytes = store
            .get(b)?
            .ok_or_else(|| ledger::LedgerError { key: b.to_string(), message: "an issued invoice bundle is missing".into() })?;
        for (name, doc) in crate::bundle::unpack(b, &bytes)? {
            if name.ends_with(".json") {
                bundled_json.insert(crate::bundle::member_key(b, &name), doc);
            }
        }
    }
    let now: Vec<Option<Vec<LineItemRow>>> = issued_now.iter().map(|(id, _)| rows_by_id.remove(id.as_str())).collect();
    let per_invoice: Vec<Result<Vec<LineItemRow>, RunError>> = {
        use rayon::prelude::*;
        issued_now
            .par_iter()
            .zip(now)
            .map(|((_, e), now)| {
                let v: Value = match now {
                    Some(r) => return Ok(r),
                    None => {
                        let key = e.files.keys().find(|k| k.ends_with(".json")).cloned().unwrap_or_default();
                        let fetched;
                        let bytes: &[u8] = match bundled_json.get(&key) {
                            Some(b) => b,
                            None => {
                                fetched = store.get(&key)?.unwrap_or_default();
                                &fetched
                            }
                        };
                        serde_json::from_slice(bytes).map_err(|err| {
                            RunError::Ledger(ledger::LedgerError { key, message: format!("issued invoice unreadable: {err}") })
                        })?
                    }
                };
                Ok(line_item_rows(&v))
            })
            .collect()
    };
    for r in per_invoice {
        rows.extend(r?);
    }
    // the ledger generation to commit is final here: serialized alongside the Parquet export
    let committing = ledger.generation != before.generation;
    let (line_items, ledger_bytes) = rayon::join(|| crate::lineitems::to_parquet(&rows), || committing.then(|| ledger::to_bytes(&ledger)));
    other.push((format!("{run_dir}/{LINE_ITEMS}"), line_items?));
    drop(pb);
    timings.lap("line_items", &mut lap);

    // the run's manifest describes the state as of the date, so a re-run writes the same bytes
    let mut totals: BTreeMap<String, (Decimal, Decimal, crate::money::Currency)> = BTreeMap::new();
    // what was sent: composites and unmerged invoices (a MERGED invoice is inside its composite)
    for e in ledger.issued.values().filter(|e| e.issued_as_of == as_of && e.status != "MERGED") {
        if let Some(cur) = crate::money::Currency::new(&e.currency) {
            totals.entry(e.currency.clone()).or_insert((Decimal::ZERO, Decimal::ZERO, cur)).0 += e.total;
        }
    }
    for d in &settled.drafts {
        totals.entry(d.currency.code.clone()).or_insert((Decimal::ZERO, Decimal::ZERO, d.currency.clone())).1 += d.total;
    }
    let totals: Map<String, Value> = totals
        .into_iter()
        .map(|(c, (issued, draft, cur))| (c, json!({"issued": format_amount(issued, &cur), "draft": format_amount(draft, &cur)})))
        .collect();
    let issued_ids: Vec<&String> = ledger.issued.iter().filter(|(_, e)| e.issued_as_of == as_of).map(|(id, _)| id).collect();
    // sorted by path before they become JSON objects (300 000 of them at 100 000 invoices)
    let other_hashes: Vec<String> = other.iter().map(|(_, b)| sha(b)).collect();
    let mut paths: Vec<(&str, &str)> = ledger
        .issued
        .values()
        .filter(|e| e.issued_as_of == as_of)
        .flat_map(|e| e.files.iter().map(|(k, h)| (k.as_str(), h.as_str())))
        .chain(other.iter().zip(&other_hashes).map(|((k, _), h)| (k.as_str(), h.as_str())))
        .collect();
    paths.sort_by(|a, b| a.0.cmp(b.0));
    let file_list: Vec<Value> = paths.into_iter().map(|(k, h)| json!({"path": k, "sha256": h})).collect();
    let manifest = json!({
        "schemaVersion": "billrun.manifest.v2",
        "asOf": as_of.to_string(),
        "timeZone": tz.name(),
        "rounding": cfg.organization.rounding.as_str(),
        "ledger": {"generation": ledger.generation, "nextSequence": ledger.next_sequence},
        "events": {
            "read": events_read,
            "used": events_used,
            "rejected": rejected,
            "rejectedByReason": counts.iter().map(|(r, n)| (r.as_str().to_string(), json!(n))).collect::<Map<_, _>>(),
        },
        "invoices": {
            "issued": issued_ids,
            "draft": settled.drafts.len(),
            "lateUsage": settled.late.len(),
            "totalsByCurrency": totals,
        },
        "files": file_list,
    });
    let mut manifest = manifest;
    if let Some(c) = &corrected {
        manifest["corrections"] = serde_json::to_value(c).expect("corrections serialize");
    }
    debug_assert_eq!(events_read, events_used + rejected, "every event is used or rejected");
    timings.lap("render", &mut lap);

    let pb = progress("writing the store");
    let mut changed: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, b) in other.iter() {
        match store.get(k)? {
            None => {
                store.put_deferred(k, b)?;
                created.keys.push(k.clone());
                crate::faults::point("writing");
            }
            Some(old) if old != *b => changed.push((k.clone(), b.clone())),
            Some(_) => {}
        }
    }
    if !created.keys.is_empty() {
        store.sync()?;
    }
    if let Some(bytes) = ledger_bytes {
        crate::faults::point("committing");
        match store.put_if_absent(&ledger::key(ledger.generation), &bytes)? {
            Created::Created => {}
            Created::AlreadyExists => return Err(RunError::Conflict { generation: ledger.generation }),
        }
    }
    // committed: what this run wrote stays
    created.keys.clear();
    crate::faults::point("committed");
    for (k, b) in &changed {
        store.put(k, b)?;
    }
    for k in store.list("drafts/")? {
        if !draft_keys.contains(&k) {
            store.delete(&k)?;
        }
    }
    // the manifest's `performance` (stage timings, peak memory) is of the run that wrote it: a
    // re-run that finds the same state keeps the manifest, and so rewrites no byte
    let mkey = format!("{run_dir}/{MANIFEST}");
    let existing = store.get(&mkey)?.and_then(|b| serde_json::from_slice::<Value>(&b).ok()).map(|mut v| {
        if let Some(o) = v.as_object_mut() {
            o.remove(PERFORMANCE);
        }
        v
    });
    timings.lap("write", &mut lap);
    timings.total_seconds = t0.elapsed().as_secs_f64();
    timings.peak_rss_mib = peak_rss_mib();
    if existing.as_ref() != Some(&manifest) {
        manifest[PERFORMANCE] = serde_json::to_value(&timings).expect("timings serialize");
        let mut mb = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        mb.push(b'\n');
        store.put(&mkey, &mb)?;
    }
    drop(pb);
    let split: Vec<String> = timings.stages.iter().map(|s| format!("{} {:.3}", s.stage, s.seconds)).collect();
    tracing::info!(
        total_seconds = timings.total_seconds,
        peak_rss_mib = timings.peak_rss_mib.round(),
        "stage seconds: {}",
        split.join(", ")
    );
    let store_desc = store.describe();
    tracing::info!(
        issued = issued_count,
        drafts = settled.drafts.len(),
        late_usage = settled.late.len(),
        generation = ledger.generation,
        events_read,
        events_used,
        rejected,
        seconds = t0.elapsed().as_secs_f64(),
        store = %store_desc,
        "bill run complete"
    );
    let mut all = kept;
    all.extend(settled.drafts);
    Ok(RunReport {
        as_of,
        store: store_desc,
        invoices: all,
        issued: issued_count,
        counts,
        events_read,
        events_used,
        manifest,
        late: settled.late,
        ledger,
        timings,
    })
}
