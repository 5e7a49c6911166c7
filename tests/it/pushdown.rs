//! Meter pushdown against the real servers: the usage table computed inside Postgres / Snowflake
//! equals, exactly, the one the local path (read the rows, ingest and meter them in polars) computes
//! from the same rows — with COUNT, filtered SUM, first-truthy matcher/computation pairs with
//! 4-decimal half-up division, products, aliases, duplicates and every reject reason in the data.
//! And a run with `pushdown = true` bills the same invoices as the local files.

use std::path::Path;

use billrun::ingest::{self, IngestOutput};
use billrun::pushdown::{pushdown, PushdownOutput};
use billrun::windows::plan_windows;
use billrun_connectors::{read_source, ReadWindow, SourceConfig};

use crate::connectors::{env, local_outputs, pg_load, pg_query, pg_source, psql, run_to, scenario, unique};
use crate::snapshot;
use crate::snowflake::{sf_exec, sf_load, sf_query, sf_source, Auth};

const CATALOG: &str = r#"
eventSchemas:
  - name: inference
    attributes: [{name: tokens}, {name: ms}]
    dimensions: [{name: region}, {name: tier}]
  - name: storage
    attributes: [{name: gb}]
    dimensions: [{name: bucket}]
usageMeters:
  - id: um.batch_calls
    name: batch-calls
    billableName: Batch calls
    type: COUNTER
    aggregation: COUNT
    eventSchemaName: inference
    filters: [{field: tier, value: batch}]
    computations:
      - order: 1
        computation: '1'
  - id: um.eu_units
    name: eu-units
    billableName: EU compute units
    type: COUNTER
    aggregation: SUM
    eventSchemaName: inference
    filters: [{field: region, value: eu-west}]
    computations:
      - order: 2
        matcher: '{"in": [{"var": "dimension.tier"}, ["batch", "realtime"]]}'
        computation: '{"/": [{"var": "attribute.tokens"}, 1000]}'
      - order: 1
        matcher: '{"==": [{"var": "dimension.tier"}, "batch"]}'
        computation: '{"/": [{"var": "attribute.tokens"}, 3]}'
  - id: um.us_tokens
    name: us-tokens
    billableName: US tokens
    type: COUNTER
    aggregation: SUM
    eventSchemaName: inference
    filters: [{field: region, value: us-east}]
    computations:
      - order: 1
        matcher: '{"in": [{"var": "dimensions.tier"}, ["batch", "realtime"]]}'
        computation: '{"var": "attributes.tokens"}'
  - id: um.slow_weighted
    name: slow-weighted
    billableName: Slow calls, weighted
    type: COUNTER
    aggregation: SUM
    eventSchemaName: inference
    computations:
      - order: 1
        matcher: '{"and": [{">": [{"var": "attribute.ms"}, 250]}, {"!=": [{"var": "dimension.region"}, "ap-south"]}]}'
        computation: '{"+": [{"*": [{"var": "attribute.tokens"}, 0.5]}, {"max": [{"var": ["attribute.ms", 0]}, 1]}]}'
      - order: 2
        matcher: '{"<=": [0, {"var": "attribute.ms"}, 250]}'
        computation: '{"if": [{"==": [{"var": "dimension.tier"}, "realtime"]}, {"-": [{"var": "attribute.ms"}, 0.125]}, 2]}'
  - id: um.mars
    name: mars
    billableName: Never used
    type: COUNTER
    aggregation: SUM
    eventSchemaName: inference
    filters: [{field: region, value: mars}]
    computations:
      - order: 1
        computation: '{"var": "attribute.tokens"}'
  - id: um.storage_gb
    name: storage-gb
    billableName: Storage (GB)
    type: COUNTER
    aggregation: SUM
    eventSchemaName: storage
    computations:
      - order: 1
        computation: '{"var": "attribute.gb"}'
pricePlans:
  - id: pp.main
    name: Main
    type: BILLING
    status: ACTIVE
    pricingCycleConfig:
      interval: MONTHLY
      startOffset: {dayOffset: '1', monthOffset: NIL}
      gracePeriod: 5
    supportedCurrencies: [USD]
    rateCards:
      - type: USAGE
        displayName: EU compute units
        rateCardDetails:
          usageRateCard:
            usageMeterId: um.eu_units
            ratePlan:
              pricingModel: TIERED
              slabs:
                - {order: 1, startAfter: 0, priceType: PER_UNIT}
            rateValues:
              - currency: USD
                slabRates:
                  - {order: 1, rate: '2.00'}
customers:
  - {id: cust.neuron, name: Neuron Works, primaryEmail: billing@neuron.test}
accounts:
  - {id: ACC-1, name: Neuron Prod, customerId: cust.neuron, invoiceCurrency: USD, aliases: [neuron-prod]}
  - {id: ACC-2, name: Neuron Lab, customerId: cust.neuron, invoiceCurrency: USD}
  - {id: ACC-3, name: Neuron Idle, customerId: cust.neuron, invoiceCurrency: USD}
accountAliases:
  ACC-2:
    - {value: lab-legacy, effectiveFrom: '2026-10-10T00:00:00Z', effectiveUntil: '2026-10-20T00:00:00Z'}
accountSchedules:
  ACC-1:
    - {pricePlanId: pp.main, startDate: '2026-09-01T00:00:00Z'}
  ACC-2:
    - {pricePlanId: pp.main, startDate: '2026-10-01T00:00:00Z', endDate: '2026-11-01T00:00:00Z'}
"#;

/// One generated event: (seq, id, schema, account, ts, ingested_at, tokens, ms, gb, region, tier, bucket).
type Row = (
    u32,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A deterministic data set that exercises every meter and every reject reason.
fn events(n: u32) -> Vec<Row> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let accounts = ["ACC-1", "ACC-2", "ACC-3", "neuron-prod", "lab-legacy", "ACC-NOPE"];
    let regions = [Some("eu-west"), Some("us-east"), Some("ap-south"), None];
    let tiers = [Some("batch"), Some("realtime"), Some("spot"), None];
    let mut out = Vec::new();
    for seq in 0..n {
        // Sep 20 .. Nov 10 (as-of Nov 6): some before ACC-2's schedule, some after the as-of
        let ts_us = 1_789_862_400_000_000i64 + (next(51 * 86_400) as i64) * 1_000_000 + (next(1000) as i64) * 1000;
        let ts = chrono::DateTime::from_timestamp_micros(ts_us).unwrap();
        let ingested = match next(10) {
            0 => None,
            1 => Some(ts + chrono::Duration::days(9)), // past the 5-day grace for some
            _ => Some(ts + chrono::Duration::seconds(next(60) as i64)),
        };
        let id = match next(40) {
            0 => None,
            1 => Some(String::new()),
            2..=4 => Some(format!("ev-{:05}", next(u64::from(seq.max(1))))), // duplicates of earlier ids
            _ => Some(format!("ev-{seq:05}")),
        };
        let schema = match next(20) {
            0 => "nope",
            1..=4 => "storage",
            _ => "inference",
        };
        let account = accounts[next(accounts.len() as u64) as usize].to_string();
        let dec = |v: u64, scale: u32| {
            let s = v.to_string();
            if scale == 0 {
                return s;
            }
            let s = format!("{:0>width$}", s, width = scale as usize + 1);
            let (a, b) = s.split_at(s.len() - scale as usize);
            format!("{a}.{b}")
        };
        let (tokens, ms, gb, region, tier, bucket) = if schema == "storage" {
            // a storage event with a `tier` is invalid (undeclared dimension)
            let tier = if next(25) == 0 { Some("batch".to_string()) } else { None };
            (None, None, Some(dec(next(100_000), 2)), None, tier, Some(format!("b{}", next(3))))
        } else {
            let tokens = if next(30) == 0 { None } else { Some(dec(next(2_000_000), 3)) };
            let ms = if next(5) == 0 { None } else { Some(dec(next(600), 0)) };
            let region = regions[next(4) as usize].map(String::from);
            let tier = tiers[next(4) as usize].map(String::from);
            // an inference event with a bucket is invalid (undeclared dimension)
            let bucket = if next(50) == 0 { Some("stray".to_string()) } else { None };
            (tokens, ms, None, region, tier, bucket)
        };
        out.push((
            seq,
            id,
            schema.to_string(),
            account,
            ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ingested.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            tokens,
            ms,
            gb,
            region,
            tier,
            bucket,
        ));
    }
    out
}

fn catalog_scenario(source: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("catalog")).unwrap();
    std::fs::write(t.path().join("catalog/catalog.yaml"), CATALOG).unwrap();
    std::fs::write(
        t.path().join("billrun.toml"),
        format!("[organization]\nbase_currency = \"USD\"\n\n[run]\nas_of = \"2026-11-06\"\n\n[catalog]\ndir = \"catalog\"\n\n{source}\n[store]\ntype = \"local\"\npath = \"out\"\n"),
    )
    .unwrap();
    t
}

fn q_columns() -> &'static str {
    "event_id AS \"id\", schema_name AS \"schemaName\", account_id AS \"accountId\", ts AS \"timestamp\", ingested_at AS \"ingestedAt\", \
     tokens AS \"attributes.tokens\", ms AS \"attributes.ms\", gb AS \"attributes.gb\", region AS \"dimensions.region\", \
     tier AS \"dimensions.tier\", bucket AS \"dimensions.bucket\""
}

/// The usage of the scenario's one source, by the local path and by pushdown.
fn both_paths(dir: &Path) -> (PushdownOutput, PushdownOutput) {
    let (cfg, cat) = billrun::run::load(&dir.join("billrun.toml")).unwrap();
    let tz = cfg.organization.time_zone;
    let as_of = cfg.as_of.unwrap();
    let as_of_us = billrun::cycles::day_start(tz, as_of).timestamp_micros();
    let windows = plan_windows(&cat, tz, as_of);
    let read = ReadWindow { start_us: windows.iter().map(|w| w.start_us).min(), end_us: Some(as_of_us) };
    let source = cfg.sources[0].clone();
    assert!(source.pushdown().is_some());
    let local_source = match source.clone() {
        SourceConfig::Postgres(mut c) => {
            c.pushdown = false;
            SourceConfig::Postgres(c)
        }
        SourceConfig::Snowflake(mut c) => {
            c.pushdown = false;
            SourceConfig::Snowflake(c)
        }
        other => panic!("{other:?}"),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t0 = std::time::Instant::now();
    let out = rt.block_on(read_source(&local_source, &read)).unwrap();
    assert!(out.bad_records.is_empty(), "{:?}", out.bad_records);
    let assigner = billrun::assign::Assigner::new(&cat, &windows);
    let ingest_with = |polars_meters: bool| {
        let frame = billrun::frame::build(&out.batches).unwrap();
        ingest::ingest(frame, &cat, &windows, &assigner, as_of_us, true, polars_meters).unwrap()
    };
    let IngestOutput { usage, counts, events_read, events_used, used_by_window, .. } = ingest_with(false);
    let local = PushdownOutput { usage: usage.finish().unwrap(), counts, events_read, events_used, used_by_window };
    // the meters in polars (the definition) give the same, where src/tally.rs takes simple ones
    let polars = ingest_with(true);
    assert_eq!(polars.usage.finish().unwrap(), local.usage);
    assert_eq!((&polars.counts, &polars.used_by_window), (&local.counts, &local.used_by_window));
    let t1 = std::time::Instant::now();
    let pushed = rt.block_on(pushdown(&source, &cat, &windows, as_of_us, &read)).unwrap();
    eprintln!("local path {:?}, pushdown {:?}", t1 - t0, t1.elapsed());
    (local, pushed)
}

fn assert_same_usage(local: &PushdownOutput, pushed: &PushdownOutput, what: &str) {
    // the data set is not trivial: every meter has usage, every reason its events
    let meters: std::collections::BTreeSet<&str> = local.usage.iter().filter(|(_, v)| !v.is_zero()).map(|((_, m), _)| m.as_str()).collect();
    assert_eq!(meters.len(), 5, "{what}: every meter but um.mars has usage: {meters:?}");
    // um.mars never counts an event: its usage is what a SUM of nothing is in a window with events
    assert!(local.usage.keys().any(|(_, m)| m == "um.mars") || !pushed.usage.keys().any(|(_, m)| m == "um.mars"));
    assert!(local.counts.len() >= 8, "{what}: most reject reasons occur: {:?}", local.counts);
    assert!(
        local.usage.values().any(|v| v.scale() == 4 && !(v * rust_decimal::Decimal::from(1000)).fract().is_zero()),
        "{what}: divisions"
    );
    assert_eq!(pushed.events_read, local.events_read, "{what}: events read");
    assert_eq!(pushed.counts, local.counts, "{what}: rejects by reason");
    assert_eq!(pushed.events_used, local.events_used, "{what}: events used");
    assert_eq!(pushed.used_by_window, local.used_by_window, "{what}: events per window");
    for (k, v) in &local.usage {
        assert_eq!(pushed.usage.get(k), Some(v), "{what}: usage of {k:?}");
    }
    assert_eq!(pushed.usage, local.usage, "{what}: the usage tables");
}

#[test]
fn postgres_pushdown_gives_exactly_the_local_usage() {
    let t = unique("pd");
    psql(&format!("CREATE TABLE {t} (seq int, event_id text, schema_name text, account_id text, ts timestamptz, ingested_at timestamptz, tokens numeric(20,3), ms int, gb numeric, region text, tier text, bucket text)"), None);
    let mut data = String::new();
    let f = |v: &Option<String>| v.as_deref().map(|s| format!("\"{s}\"")).unwrap_or_default();
    for r in events(6000) {
        data.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.0,
            f(&r.1),
            r.2,
            r.3,
            r.4,
            f(&r.5),
            f(&r.6),
            f(&r.7),
            f(&r.8),
            f(&r.9),
            f(&r.10),
            f(&r.11)
        ));
    }
    psql(&format!("\\copy {t} FROM STDIN WITH (FORMAT csv)"), Some(&data));
    let query = format!("SELECT {} FROM {t} WHERE ts >= ${{startTime}} AND ts < ${{endTime}} ORDER BY seq", q_columns());
    let source =
        pg_source(&env("BILLRUN_TEST_PG_PORT")).replace("query_file = \"usage.sql\"\n", "query_file = \"usage.sql\"\npushdown = true\n");
    let s = catalog_scenario(&source);
    std::fs::write(s.path().join("usage.sql"), query).unwrap();
    let (local, pushed) = both_paths(s.path());
    assert_same_usage(&local, &pushed, "postgres");
}

#[test]
fn snowflake_pushdown_gives_exactly_the_local_usage() {
    let schema = unique("PD").to_uppercase();
    let rows: Vec<serde_json::Value> = events(1500)
        .into_iter()
        .map(|r| {
            let ntz = |t: Option<String>| t.map(|t| t.trim_end_matches('Z').replace('T', " "));
            serde_json::json!([r.0, r.1, r.2, r.3, r.4, ntz(r.5), r.6, r.7, r.8, r.9, r.10, r.11])
        })
        .collect();
    sf_exec(
        &schema,
        &serde_json::json!([
            {"sql": "CREATE TABLE EV (seq INT, event_id VARCHAR, schema_name VARCHAR, account_id VARCHAR, ts TIMESTAMP_TZ, ingested_at TIMESTAMP_NTZ, tokens NUMBER(20, 3), ms INT, gb NUMBER(20, 2), region VARCHAR, tier VARCHAR, bucket VARCHAR)"},
            {"sql": "INSERT INTO EV VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", "rows": rows},
        ]),
    );
    let query = format!("SELECT {} FROM EV WHERE ts >= ${{startTime}} AND ts < ${{endTime}} ORDER BY seq", q_columns());
    let s = catalog_scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::KeyPair, "pushdown = true\n"));
    std::fs::write(s.path().join("usage.sql"), query).unwrap();
    let (local, pushed) = both_paths(s.path());
    assert_same_usage(&local, &pushed, "snowflake");
}

fn assert_same_invoices(out: &Path, what: &str) {
    let want = local_outputs();
    let got = snapshot(out);
    let invoices = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
        m.iter().filter(|(k, _)| k.starts_with("invoices/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    let (g, w) = (invoices(&got), invoices(&want));
    assert!(!w.is_empty());
    assert_eq!(g.iter().map(|x| &x.0).collect::<Vec<_>>(), w.iter().map(|x| &x.0).collect::<Vec<_>>(), "{what}: the same invoices");
    for ((k, a), (_, b)) in g.iter().zip(&w) {
        assert!(a == b, "{what}: {k} differs from the local-files run:\n{}", String::from_utf8_lossy(a));
    }
}

#[test]
fn a_pushed_down_run_bills_the_same_invoices_as_local_files() {
    // Postgres
    let table = pg_load(0);
    let source = pg_source(&env("BILLRUN_TEST_PG_PORT")).replace("retries = 1\n", "retries = 1\npushdown = true\n");
    let s = scenario(&source, &[("usage.sql", &pg_query(&table))]);
    let report = run_to(s.path(), &s.path().join("out")).unwrap();
    assert_eq!(report.events_read, 28);
    assert_same_invoices(&s.path().join("out"), "postgres pushdown");
    // Snowflake
    let (schema, table) = sf_load(0);
    let s =
        scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::KeyPair, "pushdown = true\n"), &[("usage.sql", &sf_query(&table))]);
    let report = run_to(s.path(), &s.path().join("out")).unwrap();
    assert_eq!(report.events_read, 28);
    assert_same_invoices(&s.path().join("out"), "snowflake pushdown");
}

#[test]
fn what_pushdown_cannot_compute_exactly_is_refused() {
    let table = pg_load(0);
    let source = pg_source(&env("BILLRUN_TEST_PG_PORT")).replace("retries = 1\n", "retries = 1\npushdown = true\n");
    let s = scenario(&source, &[("usage.sql", &pg_query(&table))]);
    let meters = s.path().join("catalog/usage-meters.yaml");
    let text = std::fs::read_to_string(&meters).unwrap();
    std::fs::write(&meters, text.replace("    aggregation: SUM\n", "    aggregation: MAX\n")).unwrap();
    let e = run_to(s.path(), &s.path().join("out")).err().expect("a MAX meter is not pushed down");
    let msg = e.to_string();
    assert!(msg.contains("source `events`: meter pushdown cannot compute usage meter `um.storage_gb`: aggregation Max"), "{msg}");
    assert_eq!(e.exit_code(), 2);
    assert!(!s.path().join("out").exists());
}
