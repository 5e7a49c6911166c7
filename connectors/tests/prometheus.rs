//! The Prometheus source against a real Prometheus (scripts/test backfills and starts it).

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Decimal128Type, TimestampMicrosecondType};
use billrun_connectors::prometheus::{read_prometheus, PrometheusConfig};
use billrun_connectors::{parse_timestamp_micros, ErrorKind, ReadWindow, SourceOutput};
use common::env;

fn us(s: &str) -> i64 {
    parse_timestamp_micros(s).unwrap()
}

fn cfg(query: &str, mode: &str, scale: u32) -> PrometheusConfig {
    serde_json::from_value(serde_json::json!({
        "name": "metrics", "url": env("BILLRUN_TEST_PROM_URL"), "query": query, "mode": mode,
        "account_label": "account_id", "schema_name": "api_call", "attribute": "requests", "scale": scale, "retries": 1,
    }))
    .unwrap()
}

fn october() -> ReadWindow {
    ReadWindow { start_us: Some(us("2026-10-01T00:00:00Z")), end_us: Some(us("2026-11-01T00:00:00Z")) }
}

/// The quickstart's api_call events per account in October (what the counters count).
fn expected_counts() -> BTreeMap<String, i128> {
    let mut m = BTreeMap::new();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/01-quickstart/usage/2026-10-api-calls.ndjson")).unwrap();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *m.entry(v["accountId"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

fn per_account(out: &SourceOutput) -> BTreeMap<String, i128> {
    let mut m = BTreeMap::new();
    for b in &out.batches {
        let acct = b.column_by_name("account_id").unwrap().as_string::<i32>();
        let q = b.column_by_name("attributes.requests").unwrap().as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            *m.entry(acct.value(i).to_string()).or_default() += q.value(i);
        }
    }
    m
}

#[tokio::test]
async fn counters_give_exact_increases_across_a_reset_with_deterministic_ids() {
    let c = cfg("billrun_api_requests_total", "counter", 0);
    let out = read_prometheus(&c, &october()).await.unwrap();
    assert!(out.bad_records.is_empty(), "{:?}", out.bad_records);
    assert_eq!(per_account(&out), expected_counts(), "the base of 1000 and the reset add nothing, lose nothing");
    let b = &out.batches[0];
    billrun_connectors::schema::check_canonical(b).unwrap();
    let names: Vec<_> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "schema_name",
            "account_id",
            "timestamp",
            "ingested_at",
            "attributes.requests",
            "dimensions.endpoint",
            "dimensions.region"
        ]
    );
    // events at the start of the hour in which the calls happened
    let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
    assert!(ts.values().iter().all(|t| t % 3_600_000_000 == 0 && *t >= us("2026-10-01T00:00:00Z") && *t < us("2026-11-01T00:00:00Z")));
    // the same read again gives the same ids (the core dedups re-runs)
    let again = read_prometheus(&c, &october()).await.unwrap();
    assert_eq!(
        b.column(0).as_string::<i32>().iter().collect::<Vec<_>>(),
        again.batches[0].column(0).as_string::<i32>().iter().collect::<Vec<_>>()
    );
    // two half windows give the same events as the whole
    let mid = us("2026-10-15T07:00:00Z");
    let a = read_prometheus(&c, &ReadWindow { start_us: october().start_us, end_us: Some(mid) }).await.unwrap();
    let z = read_prometheus(&c, &ReadWindow { start_us: Some(mid), end_us: october().end_us }).await.unwrap();
    let mut halves = per_account(&a);
    for (k, v) in per_account(&z) {
        *halves.entry(k).or_default() += v;
    }
    assert_eq!(halves, expected_counts());
}

#[tokio::test]
async fn gauges_are_converted_once_at_the_declared_scale() {
    let out = read_prometheus(
        &cfg("billrun_storage_gb", "gauge", 3),
        &ReadWindow { start_us: Some(us("2026-09-30T00:00:00Z")), end_us: Some(us("2026-10-03T00:00:00Z")) },
    )
    .await
    .unwrap();
    let b = &out.batches[0];
    let q = b.column_by_name("attributes.requests").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(q.scale(), 3);
    // a gauge is seen at every step within Prometheus' 5-minute lookback: one sample each here
    let vals: Vec<String> = (0..q.len()).map(|i| q.value_as_string(i)).collect();
    assert_eq!(vals, ["120.500", "0.100"]);
    assert!(b.column_by_name("ingested_at").unwrap().is_null(0));
}

#[tokio::test]
async fn bad_queries_and_unreachable_servers_name_the_query() {
    let e = read_prometheus(&cfg("sum(", "gauge", 0), &october()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.to_string().starts_with("prometheus source `metrics`: query `sum(`: HTTP 400"), "{e}");
    let mut c = cfg("up", "gauge", 0);
    c.url = format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let e = read_prometheus(&c, &october()).await.unwrap_err().to_string();
    assert!(e.contains("cannot reach") && e.contains("gave up after 2 attempt(s)"), "{e}");
    let e = read_prometheus(&cfg("up", "gauge", 0), &ReadWindow::default()).await.unwrap_err().to_string();
    assert!(e.contains("bounded window"), "{e}");
}
