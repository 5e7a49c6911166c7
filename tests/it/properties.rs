//! Property tests of the pipeline's invariants over generated usage for the quickstart catalog:
//! line amounts add up to totals; splitting the usage into more files or reordering it changes
//! no output byte; running twice gives byte-identical outputs.

use std::path::Path;

use proptest::prelude::*;
use rust_decimal::Decimal;

use billrun::run::{run, RunOptions};

use crate::{copy_dir, repo, snapshot};

#[derive(Debug, Clone)]
struct Ev {
    id: u32,
    account: usize,
    api: bool,
    day: u32,
    gb_cents: u32,
}

const ACCOUNTS: [&str; 4] = ["ACC-ACME-PROD", "ACC-ACME-STG", "ACC-GLOBEX", "ACC-NOBODY"];

fn line(e: &Ev) -> String {
    let acc = ACCOUNTS[e.account];
    let ts = format!("2026-10-{:02}T{:02}:00:00Z", e.day, e.id % 24);
    if e.api {
        format!(
            r#"{{"id":"p-{}","schemaName":"api_call","accountId":"{acc}","timestamp":"{ts}","attributes":[],"dimensions":{{"endpoint":"/v1/x","region":"us-east"}}}}"#,
            e.id
        )
    } else {
        let gb = Decimal::new(e.gb_cents as i64, 2);
        format!(
            r#"{{"id":"p-{}","schemaName":"storage_usage","accountId":"{acc}","timestamp":"{ts}","attributes":[{{"name":"gb","value":"{gb}"}}],"dimensions":{{"bucket":"b"}}}}"#,
            e.id
        )
    }
}

fn arb_events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0u32..40, 0usize..4, any::<bool>(), 1u32..32, 0u32..100_000), 1..60)
        .prop_map(|v| v.into_iter().map(|(id, account, api, day, gb_cents)| Ev { id, account, api, day, gb_cents }).collect())
}

/// Write the events as `files` NDJSON files (round-robin after a permutation) and run.
fn run_with(dir: &Path, lines: &[String], files: usize, order: &[usize], out: &Path) -> billrun::run::RunReport {
    let usage = dir.join("usage");
    let _ = std::fs::remove_dir_all(&usage);
    std::fs::create_dir_all(&usage).unwrap();
    let mut parts = vec![String::new(); files];
    for (k, i) in order.iter().enumerate() {
        parts[k % files].push_str(&lines[*i]);
        parts[k % files].push('\n');
    }
    for (f, p) in parts.iter().enumerate() {
        std::fs::write(usage.join(format!("part-{f:03}.ndjson")), p).unwrap();
    }
    run(&RunOptions { config: dir.join("billrun.toml"), out: Some(out.to_path_buf()), ..Default::default() }).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn outputs_depend_on_the_events_only(evs in arb_events(), files in 1usize..5, seed in any::<u64>()) {
        // distinct ids, except that duplicates are exact copies (so arrival order cannot matter)
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s");
        copy_dir(&repo().join("fixtures/01-quickstart"), &dir);
        let mut by_id = std::collections::BTreeMap::new();
        for e in &evs {
            by_id.entry(e.id).or_insert_with(|| line(e));
        }
        let lines: Vec<String> = evs.iter().map(|e| by_id[&e.id].clone()).collect();
        let identity: Vec<usize> = (0..lines.len()).collect();
        let base = run_with(&dir, &lines, 1, &identity, &t.path().join("a"));
        let mut order = identity.clone();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        run_with(&dir, &lines, files, &order, &t.path().join("b"));
        prop_assert_eq!(snapshot(&t.path().join("a")), snapshot(&t.path().join("b")));
        // a re-run of the same inputs is byte-identical
        run_with(&dir, &lines, 1, &identity, &t.path().join("c"));
        prop_assert_eq!(snapshot(&t.path().join("a")), snapshot(&t.path().join("c")));
        // lines add up to totals, totals and trees agree, every event is accounted for
        for b in &base.invoices {
            let sum: Decimal = b.lines.iter().map(|(_, a)| *a).sum();
            prop_assert_eq!(sum, b.total);
            prop_assert_eq!(b.invoice.total_amount.parse::<Decimal>().unwrap(), b.total);
            prop_assert_eq!(b.invoice.revenue_info.value.parse::<Decimal>().unwrap(), b.total);
        }
        prop_assert_eq!(base.events_read, base.events_used + base.counts.values().sum::<u64>());
        prop_assert_eq!(base.events_read, evs.len() as u64);
    }
}
