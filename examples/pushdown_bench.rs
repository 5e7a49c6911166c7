//! Throughput of the Postgres source and of meter pushdown on 1M events (release build):
//!
//!   cargo run --release --example pushdown_bench            # or with `-- <rows>`
//!
//! Connects to BILLRUN_TEST_PG_HOST/PORT/USER/DB (default 127.0.0.1:5432, postgres/postgres; the
//! variables `scripts/test` exports), creates `billrun_bench_<rows>` once (`generate_series`,
//! through `psql`), then times, three times each: the Postgres source into Arrow batches (rows/s),
//! the local path (read + ingest + meter in polars) and the pushed-down meters (one SQL query), on
//! the catalog of fixtures/08-filtered-sum-jsonlogic (two SUM meters with filters, matchers and
//! 4-decimal division), and checks that both paths give the same usage table.

use std::time::Instant;

use billrun::ingest;
use billrun::pushdown::pushdown;
use billrun::windows::plan_windows;
use billrun_connectors::{read_source, ReadWindow, SourceConfig};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn psql(host: &str, port: &str, user: &str, db: &str, sql: &str) -> String {
    let o = std::process::Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", user, "-d", db, "-c", sql])
        .output()
        .expect("psql");
    assert!(o.status.success(), "psql: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn main() {
    let rows: u64 = std::env::args().nth(1).map(|a| a.parse().expect("rows")).unwrap_or(1_000_000);
    let (host, port, user, db) = (
        var("BILLRUN_TEST_PG_HOST", "127.0.0.1"),
        var("BILLRUN_TEST_PG_PORT", "5432"),
        var("BILLRUN_TEST_PG_USER", "postgres"),
        var("BILLRUN_TEST_PG_DB", "postgres"),
    );
    let table = format!("billrun_bench_{rows}");
    let exists = psql(&host, &port, &user, &db, &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"));
    if exists == "0" {
        let t0 = Instant::now();
        psql(&host, &port, &user, &db, &format!(
            "CREATE TABLE {table} AS SELECT i AS seq, 'ev-' || i AS id, CASE WHEN i % 2 = 0 THEN 'ACC-1' ELSE 'ACC-2' END AS account_id, \
             TIMESTAMPTZ '2026-10-01 00:00:00+00' + (i % 2678400) * INTERVAL '1 second' AS ts, \
             TIMESTAMPTZ '2026-10-01 00:00:05+00' + (i % 2678400) * INTERVAL '1 second' AS ingested_at, \
             CAST((i * 7919) % 100000 AS numeric(12, 3)) / 1000 AS tokens, \
             (ARRAY['eu-west', 'us-east', 'ap-south'])[1 + i % 3] AS region, (ARRAY['batch', 'realtime', 'spot', 'batch'])[1 + i % 4] AS tier \
             FROM generate_series(CAST(1 AS BIGINT), {rows}) AS i; ANALYZE {table}"
        ));
        eprintln!("created {table} in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let dir = tempfile::tempdir().unwrap();
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/08-filtered-sum-jsonlogic/catalog");
    std::fs::write(
        dir.path().join("billrun.toml"),
        format!(
            "[organization]\nbase_currency = \"USD\"\n\n[run]\nas_of = \"2026-11-06\"\n\n[catalog]\ndir = \"{}\"\n\n\
             [[sources]]\nname = \"bench\"\ntype = \"postgres\"\nhost = \"{host}\"\nport = {port}\nuser = \"{user}\"\ndbname = \"{db}\"\npushdown = true\n\
             query = \"\"\"\nSELECT id, 'inference' AS \"schemaName\", account_id AS \"accountId\", ts AS \"timestamp\", ingested_at AS \"ingestedAt\",\n\
             tokens AS \"attributes.tokens\", region AS \"dimensions.region\", tier AS \"dimensions.tier\"\n\
             FROM {table} WHERE ts >= ${{startTime}} AND ts < ${{endTime}} ORDER BY seq\n\"\"\"\n\n[store]\ntype = \"local\"\npath = \"out\"\n",
            catalog.display()
        ),
    )
    .unwrap();
    let (cfg, cat) = billrun::run::load(&dir.path().join("billrun.toml")).expect("config");
    let tz = cfg.organization.time_zone;
    let as_of = cfg.as_of.unwrap();
    let as_of_us = billrun::cycles::day_start(tz, as_of).timestamp_micros();
    let windows = plan_windows(&cat, tz, as_of);
    let read = ReadWindow { start_us: windows.iter().map(|w| w.start_us).min(), end_us: Some(as_of_us) };
    let pushed_source = cfg.sources[0].clone();
    let local_source = match pushed_source.clone() {
        SourceConfig::Postgres(mut c) => {
            c.pushdown = false;
            SourceConfig::Postgres(c)
        }
        _ => unreachable!(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut local_usage = None;
    let mut pushed_usage = None;
    for round in 1..=3 {
        let t0 = Instant::now();
        let out = rt.block_on(read_source(&local_source, &read)).expect("read");
        let read_s = t0.elapsed().as_secs_f64();
        let n = out.num_rows();
        let frame = billrun::frame::build(&out.batches).expect("frame");
        drop(out);
        let ing =
            ingest::ingest(frame, &cat, &windows, &billrun::assign::Assigner::new(&cat, &windows), as_of_us, true, false).expect("ingest");
        let local_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let p = rt.block_on(pushdown(&pushed_source, &cat, &windows, as_of_us, &read)).expect("pushdown");
        let push_s = t1.elapsed().as_secs_f64();
        println!(
            "round {round}: postgres → arrow {n} rows in {read_s:.3} s = {:.2} M rows/s | local meter (read + ingest) {local_s:.3} s | pushed-down meter {push_s:.3} s",
            n as f64 / read_s / 1e6
        );
        local_usage = Some((ing.usage.finish().expect("usage"), ing.events_used));
        pushed_usage = Some((p.usage, p.events_used));
    }
    assert_eq!(local_usage, pushed_usage, "the two paths must give the same usage table");
    println!("usage tables identical ({} entries)", local_usage.map(|u| u.0.len()).unwrap_or(0));
}
