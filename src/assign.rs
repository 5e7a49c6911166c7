//! Row assignment, natively: each event's first reject reason among dedup, schema, account,
//! as-of, window and grace period, or its account and billing window.
//!
//! This is the part of ingest that is a lookup per row rather than a column expression. Done with
//! hash joins on text keys it cost most of a run (the 36-character event ids, 100k accounts);
//! here it is one pass over the rows with hash maps built once per run:
//! - dedup keeps the first arrival (ingested-at, nulls last, then arrival number `__seq`) of
//!   each (account group, event id), whatever the order of the frame's rows, on 128-bit keys for
//!   canonical UUIDs and on the text otherwise (exact either way);
//! - the account is the raw value when it names an account, else the alias valid at the event's
//!   timestamp;
//! - the window is found by binary search in the account's windows (sorted by start).
//!
//! Account groups tie together accounts that share an alias value, so that every event that can
//! resolve to an account has the same partition ([`Assigner::partition`]) and the same
//! dedup scope, whatever the partitioning: results never depend on how a run is partitioned.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use polars::prelude::*;

use crate::catalog::Catalog;
use crate::ingest::Reason;
use crate::windows::Window;

type Map<K, V> = HashMap<K, V, FixedState>;
type Set<K> = HashSet<K, FixedState>;

/// One alias of an account: (account index, valid from, valid until) in µs, half-open.
type AliasSpan = (u32, i64, i64);

/// One window of an account: (start, end, window id, due) in µs.
type Span = (i64, i64, u32, i64);

/// The catalog's accounts, aliases and windows, indexed for per-row lookups. Built once per run.
pub struct Assigner<'c> {
    index: Map<&'c str, u32>,
    /// The account ids of at most [`SHORT`] bytes by their [`short_key`], for the per-row
    /// lookup: a key of the row's own bytes, hashed and compared as one integer, and no read of
    /// the catalog's text (at 100k accounts that read was a cache miss on every row). A short
    /// value missing here names no account id.
    short: Map<u128, u32>,
    ids: Vec<&'c str>,
    /// Account index → index of its group's representative (the smallest account of the group).
    group: Vec<u32>,
    aliases: Map<&'c str, Vec<AliasSpan>>,
    /// Alias value → group representative.
    alias_group: Map<&'c str, u32>,
    /// Every account's windows, sorted by start, one account after another: account `i`'s are
    /// `spans[span_at[i]..span_at[i + 1]]` (one vector, not one per account: a row's window is
    /// one memory read fewer).
    spans: Vec<Span>,
    span_at: Vec<u32>,
    /// The event schema names: compared one by one when they are few, else hashed.
    schema_list: Vec<&'c str>,
    schemas: Set<&'c str>,
    /// The account field values whose partition hash is not that of their own text (accounts
    /// that are not their group's representative, alias values) → their group's hash.
    redirect: Map<&'c str, u64>,
}

/// The hash that picks an account group's partition.
fn partition_hash(key: &str) -> u64 {
    FixedState::with_seed(0x6269_6c6c_7275_6e00).hash_one(key)
}

/// The longest text a [`short_key`] holds.
const SHORT: usize = 15;

/// A text of at most [`SHORT`] bytes as one integer: its bytes, then its length in the last
/// byte (so that texts that differ only by trailing zero bytes differ).
fn short_key(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() > SHORT {
        return None;
    }
    let mut k = [0u8; 16];
    k[..b.len()].copy_from_slice(b);
    k[15] = b.len() as u8;
    Some(u128::from_le_bytes(k))
}

/// Rows per parallel chunk of [`Assigner::assign`]'s lookups.
const ROW_CHUNK: usize = 1 << 16;

/// Dedup shards, each scanning every row for its own ids.
const DEDUP_SHARDS: usize = 2;

/// The dedup shard of an event id: any function of the id text alone keeps the first arrival
/// (equal keys have equal ids); the last byte spreads hex digits evenly and is read before any
/// parsing, so each shard parses only its own ids.
fn shard_of(id: &str) -> usize {
    id.as_bytes().last().map_or(0, |b| *b as usize) % DEDUP_SHARDS
}

/// One row's lookups, before dedup: its account (direct or by alias), account group, window,
/// and the reason it gets unless it is a duplicate.
#[derive(Clone, Copy, Default)]
struct Row<'a> {
    acc: Option<u32>,
    group: Option<u32>,
    win: Option<&'a Span>,
    reason: u8,
    /// Whether dedup applies (no earlier reason).
    dedup: bool,
    /// Whether `acc` came from an alias (a duplicate keeps only a direct account).
    aliased: bool,
}

/// The reason and assignment columns of a frame, in its row order.
pub struct Assigned {
    pub reason: UInt32Chunked,
    pub account: StringChunked,
    pub window: UInt32Chunked,
    pub due: Int64Chunked,
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let up = parent[parent[x as usize] as usize];
        parent[x as usize] = up;
        x = up;
    }
    x
}

/// Hex digit values by byte; 0xFF for every byte that is not `0-9` or `a-f`.
const HEX: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Positions of the 32 hex digits in a hyphenated UUID.
const DIGITS: [usize; 32] =
    [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35];

/// The 128 bits of a canonical (lowercase, hyphenated) UUID; `None` for any other text, which is
/// then compared as text: the mapping is one-to-one, so dedup stays exact.
pub fn uuid_bits(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let (mut v, mut bad) = (0u128, 0u8);
    for &i in &DIGITS {
        let d = HEX[b[i] as usize];
        bad |= d;
        v = (v << 4) | (d & 15) as u128;
    }
    (bad & 0xF0 == 0).then_some(v)
}

impl<'c> Assigner<'c> {
    pub fn new(catalog: &'c Catalog, windows: &[Window]) -> Self {
        let ids: Vec<&str> = catalog.accounts.keys().map(String::as_str).collect();
        let index: Map<&str, u32> = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        let mut aliases: Map<&str, Vec<AliasSpan>> = Map::default();
        for (i, acc) in catalog.accounts.values().enumerate() {
            for al in &acc.aliases {
                let from = al.from.map_or(i64::MIN, |t| t.timestamp_micros());
                let until = al.until.map_or(i64::MAX, |t| t.timestamp_micros());
                aliases.entry(al.value.as_str()).or_default().push((i as u32, from, until));
            }
        }
        let mut parent: Vec<u32> = (0..ids.len() as u32).collect();
        for spans in aliases.values() {
            let first = find(&mut parent, spans[0].0);
            for s in &spans[1..] {
                let other = find(&mut parent, s.0);
                let (lo, hi) = (first.min(other), first.max(other));
                parent[hi as usize] = lo;
            }
        }
        let group: Vec<u32> = (0..ids.len() as u32).map(|i| find(&mut parent, i)).collect();
        let alias_group = aliases.iter().map(|(k, v)| (*k, group[v[0].0 as usize])).collect();
        let mut spans: Vec<(u32, Span)> =
            windows.iter().filter_map(|w| Some((*index.get(w.account_id.as_str())?, (w.start_us, w.end_us, w.id, w.due_us)))).collect();
        spans.sort_unstable();
        let mut span_at = Vec::with_capacity(ids.len() + 1);
        let mut k = 0;
        for i in 0..=ids.len() as u32 {
            while k < spans.len() && spans[k].0 < i {
                k += 1;
            }
            span_at.push(k as u32);
        }
        let spans = spans.into_iter().map(|s| s.1).collect();
        let short = ids.iter().enumerate().filter_map(|(i, id)| Some((short_key(id)?, i as u32))).collect();
        let schema_list: Vec<&str> = catalog.event_schemas.keys().map(String::as_str).collect();
        let schemas = schema_list.iter().copied().collect();
        let mut a =
            Assigner { index, short, ids, group, aliases, alias_group, spans, span_at, schema_list, schemas, redirect: Map::default() };
        a.redirect =
            a.group_table().into_iter().filter(|(value, rep)| value != rep).map(|(value, rep)| (value, partition_hash(rep))).collect();
        a
    }

    /// (account field value, its group's representative id) for every account id and alias
    /// value, each value once (an account id wins over an alias of the same text): what SQL
    /// pushdown joins to dedup per account group, as [`Assigner::assign`] does.
    pub fn group_table(&self) -> Vec<(&'c str, &'c str)> {
        let mut out: Vec<(&str, &str)> = self.ids.iter().enumerate().map(|(i, id)| (*id, self.ids[self.group[i] as usize])).collect();
        let mut aliases: Vec<(&str, &str)> =
            self.alias_group.iter().filter(|(k, _)| !self.index.contains_key(*k)).map(|(k, g)| (*k, self.ids[*g as usize])).collect();
        aliases.sort_unstable();
        out.extend(aliases);
        out
    }

    /// The partition (of `n`) of an account field: the hash of its account group's
    /// representative id, or of the raw text when it names no account. That is the hash of the
    /// text itself except for the few values in `redirect` (none without aliases): a lookup of
    /// every row in the 100k accounts was a tenth of the read stage. Events that can share a
    /// dedup key or a window always share it.
    pub fn partition(&self, raw: Option<&str>, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        (self.group_hash(raw) % n as u64) as usize
    }

    /// The hash of an account field's group: its representative's id, or the raw text when it
    /// names no account (what [`Self::partition`] reduces).
    fn group_hash(&self, raw: Option<&str>) -> u64 {
        let raw = raw.unwrap_or("");
        // an empty map would still hash `raw` to look in it
        if self.redirect.is_empty() {
            return partition_hash(raw);
        }
        self.redirect.get(raw).copied().unwrap_or_else(|| partition_hash(raw))
    }

    /// A hash of a row's dedup key (account group, event id): rows with equal keys have equal
    /// hashes, so a hash met once names a row that cannot be a duplicate nor have one
    /// (`twopass.rs`). `None` for a row without an id, which dedup never looks at.
    pub fn key_hash(&self, raw: Option<&str>, id: Option<&str>) -> Option<u64> {
        let id = id.filter(|id| !id.is_empty())?;
        Some(FixedState::with_seed(0x6b65_7973_6361_6e00).hash_one((self.group_hash(raw), id)))
    }

    fn resolve(&self, raw: &str, ts: i64) -> Option<u32> {
        if let Some(i) = self.account(raw) {
            return Some(i);
        }
        self.aliases.get(raw)?.iter().find(|(_, from, until)| ts >= *from && ts < *until).map(|s| s.0)
    }

    /// The account id `raw` is, if any.
    fn account(&self, raw: &str) -> Option<u32> {
        match short_key(raw) {
            Some(k) => self.short.get(&k).copied(),
            None => self.index.get(raw).copied(),
        }
    }

    fn is_schema(&self, name: &str) -> bool {
        if self.schema_list.len() <= 8 {
            self.schema_list.contains(&name)
        } else {
            self.schemas.contains(name)
        }
    }

    fn window(&self, account: u32, ts: i64) -> Option<&Span> {
        let a = account as usize;
        let spans = &self.spans[self.span_at[a] as usize..self.span_at[a + 1] as usize];
        // the last window starting at or before ts, if ts is before its end
        let k = spans.partition_point(|s| s.0 <= ts);
        spans[..k].iter().rev().find(|s| ts < s.1)
    }

    /// What a row gets unless it is a duplicate: its account (direct, or the alias valid at its
    /// timestamp) and the first reason among schema, account, as-of, window and grace period.
    fn row(&self, raw: Option<&str>, schema: Option<&str>, t: Option<i64>, ing: Option<i64>, r1: u32, as_of_us: i64) -> Row<'_> {
        let direct = raw.and_then(|a| self.account(a));
        let mut row = Row { acc: direct, group: None, win: None, reason: r1 as u8, dedup: r1 == 0, aliased: false };
        if r1 != 0 {
            return row;
        }
        // the account's group, or the alias's: the direct lookup is not repeated
        row.group = match direct {
            Some(i) => Some(self.group[i as usize]),
            None => raw.and_then(|a| self.alias_group.get(a).copied()),
        };
        if !schema.is_some_and(|s| self.is_schema(s)) {
            row.reason = Reason::SchemaNotDefined as u8;
            return row;
        }
        let t = t.expect("a row without a timestamp is an invalid event");
        if row.acc.is_none() {
            row.acc = raw.and_then(|a| self.resolve(a, t));
            row.aliased = row.acc.is_some();
        }
        match row.acc {
            None => row.reason = Reason::AccountNotFound as u8,
            Some(_) if t >= as_of_us || ing.is_some_and(|i| i >= as_of_us) => row.reason = Reason::AfterAsOf as u8,
            Some(a) => match self.window(a, t) {
                None => row.reason = Reason::NotMetered as u8,
                Some(span) => {
                    row.win = Some(span);
                    if ing.is_some_and(|i| i >= span.3) {
                        row.reason = Reason::PastGracePeriod as u8;
                    }
                }
            },
        }
        row
    }

    /// Assign every row of `df` (in any order: arrival is read from ingested-at and `__seq`),
    /// given each row's reason so far (`r1`: invalid event or no id, else 0).
    ///
    /// Three steps, the first two on every core: each row's lookups on its own (chunks of rows
    /// in parallel); first-arrival dedup, sharded by event id (equal keys have equal ids, so a
    /// key always falls in one shard; each key keeps the earliest arrival it meets and every
    /// other row of it is a duplicate, so the order rows are met in does not matter); then each
    /// row's outcome (a duplicate is rejected before any later reason).
    ///
    /// Without `dedup` no row is a duplicate: for frames whose rows are known to have keys of
    /// their own (the two-pass path, `twopass.rs`).
    pub fn assign(&self, df: &DataFrame, r1: &UInt32Chunked, as_of_us: i64, dedup: bool) -> PolarsResult<Assigned> {
        use crate::frame::SEQ;
        use billrun_connectors::schema::{ACCOUNT_ID, EVENT_ID, INGESTED_AT, SCHEMA_NAME, TIMESTAMP};
        use rayon::prelude::*;
        let n = df.height();
        let ids = df.column(EVENT_ID)?.str()?;
        let raws = df.column(ACCOUNT_ID)?.str()?;
        let schemas = df.column(SCHEMA_NAME)?.str()?;
        let ts = df.column(TIMESTAMP)?.i64()?;
        let ingested = df.column(INGESTED_AT)?.i64()?;

        let mut rows: Vec<Row> = vec![Row::default(); n];
        rows.par_chunks_mut(ROW_CHUNK).enumerate().for_each(|(c, out)| {
            let (at, len) = ((c * ROW_CHUNK) as i64, out.len());
            let (raw, schema, t, ing, r) =
                (raws.slice(at, len), schemas.slice(at, len), ts.slice(at, len), ingested.slice(at, len), r1.slice(at, len));
            let it = raw.iter().zip(schema.iter()).zip(t.iter()).zip(ing.iter()).zip(r.iter());
            for (slot, ((((raw, schema), t), ing), r)) in out.iter_mut().zip(it) {
                *slot = self.row(raw, schema, t, ing, r.unwrap_or(0), as_of_us);
            }
        });

        // arrival order: ingested-at (nulls last), then the arrival number `__seq`; each key
        // keeps the row that arrived first, whatever the frame's row order (a partition of
        // several spill buckets is in arrival order only within each bucket)
        let seq: Vec<IdxSize> = if dedup { df.column(SEQ)?.idx()?.into_no_null_iter().collect() } else { Vec::new() };
        let arrival: Option<Vec<(bool, i64)>> =
            (dedup && ingested.null_count() < n).then(|| ingested.iter().map(|i| (i.is_none(), i.unwrap_or(0))).collect());
        let earlier = |a: u32, b: u32| -> bool {
            let (a, b) = (a as usize, b as usize);
            match &arrival {
                Some(ing) => (ing[a], seq[a]) < (ing[b], seq[b]),
                None => seq[a] < seq[b],
            }
        };
        let rows_ref = &rows;
        let shards = if dedup { DEDUP_SHARDS } else { 0 };
        let duplicates: Vec<Vec<u32>> = (0..shards)
            .into_par_iter()
            .map(|shard| {
                let mut seen_uuid: Map<(u32, [u32; 4]), u32> = Map::with_capacity_and_hasher(n / DEDUP_SHARDS + 1, FixedState::default());
                let mut seen_text: Map<(Option<u32>, &str, &str), u32> = Map::default();
                let mut out = Vec::new();
                // the row that stays of two with one key; the other is a duplicate
                let mut meet = |kept: &mut u32, i: u32| {
                    if earlier(i, *kept) {
                        out.push(std::mem::replace(kept, i));
                    } else {
                        out.push(i);
                    }
                };
                for (i, ((id, raw), row)) in ids.iter().zip(raws.iter()).zip(rows_ref).enumerate() {
                    if !row.dedup {
                        continue;
                    }
                    let id = id.unwrap_or("");
                    if shard_of(id) != shard {
                        continue;
                    }
                    let i = i as u32;
                    match (row.group, uuid_bits(id)) {
                        (Some(g), Some(bits)) => {
                            // 20 bytes a key: (u32, u128) would be padded to 32
                            let w = [bits as u32, (bits >> 32) as u32, (bits >> 64) as u32, (bits >> 96) as u32];
                            match seen_uuid.entry((g, w)) {
                                Entry::Vacant(v) => {
                                    v.insert(i);
                                }
                                Entry::Occupied(mut o) => meet(o.get_mut(), i),
                            }
                        }
                        (g, _) => match seen_text.entry((g, if g.is_some() { "" } else { raw.unwrap_or("") }, id)) {
                            Entry::Vacant(v) => {
                                v.insert(i);
                            }
                            Entry::Occupied(mut o) => meet(o.get_mut(), i),
                        },
                    }
                }
                out
            })
            .collect();
        let mut duplicate = vec![false; n];
        for i in duplicates.into_iter().flatten() {
            duplicate[i as usize] = true;
        }

        let mut reason = Vec::with_capacity(n);
        let aliased = rows.iter().any(|r| r.aliased);
        let mut account: Vec<Option<&str>> = Vec::with_capacity(if aliased { n } else { 0 });
        let mut window = Vec::with_capacity(n);
        let mut due = Vec::with_capacity(n);
        for ((row, dup), raw) in rows.iter().zip(duplicate).zip(raws.iter()) {
            let (r, acc, win) = if dup {
                (Reason::Duplicate as u32, if row.aliased { None } else { row.acc }, None)
            } else {
                (row.reason as u32, row.acc, row.win)
            };
            reason.push(r);
            // a direct account is the row's own text (already in cache), an alias's the catalog's
            if aliased {
                account.push(acc.map(|i| if row.aliased { self.ids[i as usize] } else { raw.expect("a direct account has a raw value") }));
            }
            window.push(win.map(|s| s.2));
            due.push(win.map(|s| s.3));
        }
        use crate::ingest::{ACCOUNT, REASON, WINDOW};
        let account = if aliased {
            StringChunked::from_iter_options(ACCOUNT.into(), account.into_iter())
        } else {
            // no alias: every account is the row's own text where it names one, so the column is
            // the raw column's views (no string copied) with the rows without an account null
            let raw = raws.rechunk();
            let views = raw
                .downcast_iter()
                .next()
                .cloned()
                .unwrap_or_else(|| polars_arrow::array::Utf8ViewArray::new_empty(ArrowDataType::Utf8View));
            let found: polars_arrow::bitmap::Bitmap = rows.iter().map(|r| r.acc.is_some()).collect();
            StringChunked::with_chunk(ACCOUNT.into(), views.with_validity(Some(found)))
        };
        Ok(Assigned {
            reason: UInt32Chunked::from_vec(REASON.into(), reason),
            account,
            window: UInt32Chunked::from_iter_options(WINDOW.into(), window.into_iter()),
            due: Int64Chunked::from_iter_options(DUE.into(), due.into_iter()),
        })
    }
}

/// The due instant of the event's window (µs), for the grace-period check.
pub const DUE: &str = "__w_due";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{load_dir, LoadContext};
    use crate::money::Currency;

    /// The per-row account lookup (short texts as integers, long ones by text) finds exactly
    /// the catalog's account ids, whatever their length, and nothing that only resembles one.
    #[test]
    fn account_lookup_finds_exactly_the_account_ids() {
        assert_ne!(short_key("a"), short_key("a\0"));
        assert_ne!(short_key(""), short_key("\0"));
        assert!(short_key("fifteen-bytes-x").is_some() && short_key("sixteen-bytes-xx").is_none());
        let usd = Currency::new("USD").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/01-quickstart/catalog");
        let mut cat = load_dir(&dir, &LoadContext { base_currency: &usd, time_zone: chrono_tz::UTC }).unwrap();
        let template = cat.accounts.values().next().unwrap().clone();
        for id in ["acct-with-a-long-identifier-0001", "x", "fifteen-bytes-x"] {
            cat.accounts.insert(id.into(), crate::catalog::Account { id: id.into(), ..template.clone() });
        }
        let a = Assigner::new(&cat, &[]);
        for (i, id) in a.ids.iter().enumerate() {
            assert_eq!(a.account(id), Some(i as u32), "{id}");
        }
        for other in ["", "\0", "x\0", "X", "fifteen-bytes-", "fifteen-bytes-xy", "acct-with-a-long-identifier-000", "nobody"] {
            assert_eq!(a.account(other), None, "{other:?}");
        }
    }

    /// First arrival per (account group, id) by one plain pass over the rows sorted in arrival
    /// order, for ids of any spelling: what the parallel lookups and the sharded dedup must give
    /// exactly, with the frame's rows in arrival order, shuffled, or arriving by ingested-at.
    #[test]
    fn sharded_dedup_keeps_the_first_arrival_of_each_account_and_id() {
        let usd = Currency::new("USD").unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/01-quickstart/catalog");
        let cat = load_dir(&dir, &LoadContext { base_currency: &usd, time_zone: chrono_tz::UTC }).unwrap();
        let a = Assigner::new(&cat, &[]);
        let accounts = ["ACC-ACME-PROD", "ACC-ACME-STG", "ACC-GLOBEX", "nobody"];
        // more rows than one parallel chunk; ids from a small pool, so most rows repeat one
        let n = ROW_CHUNK + 5000;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ids, mut raws, mut r1, mut ingested) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let x = next();
            let k = x % 3000;
            ids.push(match k % 3 {
                0 => format!("evt-{k}"),
                1 => format!("{:08x}-0000-4000-8000-{:012x}", k, k * 7919),
                _ => format!("{:08X}-0000-4000-8000-{:012X}", k, k * 7919),
            });
            raws.push(accounts[(x >> 20) as usize % accounts.len()]);
            r1.push(if i % 97 == 0 { Reason::NoEventId as u32 } else { 0 });
            ingested.push((x % 5 != 0).then_some((x >> 32) as i64 % 50));
        }
        let shuffled: Vec<usize> = {
            let mut keyed: Vec<(u64, usize)> = (0..n).map(|i| (next(), i)).collect();
            keyed.sort_unstable();
            keyed.into_iter().map(|(_, i)| i).collect()
        };
        // (row order, with ingested-at?)
        let cases = [((0..n).collect::<Vec<_>>(), false), (shuffled.clone(), false), (shuffled, true)];
        for (order, with_ingested) in cases {
            let ing = |i: usize| if with_ingested { ingested[i] } else { None };
            let df = df!(
                "event_id" => order.iter().map(|&i| ids[i].as_str()).collect::<Vec<_>>(),
                "account_id" => order.iter().map(|&i| raws[i]).collect::<Vec<_>>(),
                "schema_name" => vec!["api_call"; n],
                "timestamp" => vec![1_790_000_000_000_000i64; n],
                "ingested_at" => order.iter().map(|&i| ing(i)).collect::<Vec<_>>(),
                "__seq" => order.iter().map(|&i| i as IdxSize).collect::<Vec<_>>(),
            )
            .unwrap();
            let r1_rows = UInt32Chunked::from_vec("r1".into(), order.iter().map(|&i| r1[i]).collect());
            let out = a.assign(&df, &r1_rows, i64::MAX, true).unwrap();
            // the reference: arrival order is ingested-at (nulls last), then the arrival number
            let mut arrival: Vec<usize> = (0..n).collect();
            arrival.sort_by_key(|&i| (ing(i).is_none(), ing(i), i));
            let mut seen = std::collections::HashSet::new();
            let mut want = vec![false; n];
            for &i in &arrival {
                want[i] = r1[i] == 0 && !seen.insert((raws[i], ids[i].as_str()));
            }
            for (row, &i) in order.iter().enumerate() {
                let got = out.reason.get(row) == Some(Reason::Duplicate as u32);
                assert_eq!(got, want[i], "event {i} ({} {}), ingested-at {:?}", raws[i], ids[i], ing(i));
            }
            let dups = want.iter().filter(|d| **d).count();
            assert!(dups > n / 2, "the pool repeats ids: {dups} duplicates");
            // a row rejected earlier keeps its reason; a value that names no account gets none
            let first = order.iter().position(|&i| i == 0).unwrap();
            assert_eq!(out.reason.get(first), Some(Reason::NoEventId as u32));
            let nobody = order.iter().position(|&i| raws[i] == "nobody").unwrap();
            assert_eq!(out.account.get(nobody), None);
            let acme = (0..n).find(|&r| raws[order[r]] == "ACC-ACME-PROD" && out.reason.get(r) == Some(Reason::Duplicate as u32)).unwrap();
            assert_eq!(out.account.get(acme), Some("ACC-ACME-PROD"));
        }
    }

    #[test]
    fn uuid_bits_only_for_canonical_lowercase() {
        assert_eq!(uuid_bits("00000000-0000-0000-0000-000000000001"), Some(1));
        assert_eq!(uuid_bits("ffffffff-ffff-ffff-ffff-ffffffffffff"), Some(u128::MAX));
        assert_eq!(uuid_bits("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"), None);
        assert_eq!(uuid_bits("00000000000000000000000000000000abcd"), None);
        assert_eq!(uuid_bits("0000000-00000-0000-0000-000000000001"), None);
        assert_eq!(uuid_bits("evt-1"), None);
        assert_eq!(uuid_bits("0123456789ab-cdef-0123-4567-89abcdef0123"), None);
        assert_eq!(uuid_bits("01234567-89ab-cdef-0123-456789abcdeg"), None);
        assert_eq!(uuid_bits("01234567-89ab-cdef-0123-456789abcdef"), Some(0x0123456789abcdef0123456789abcdef));
        // every u128 written as a canonical UUID reads back as itself
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..1000 {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d_0000_0000_0000_0001).wrapping_add(0x1234_5678_9abc_def1);
            let h = format!("{x:032x}");
            let text = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            assert_eq!(uuid_bits(&text), Some(x), "{text}");
        }
    }
}
