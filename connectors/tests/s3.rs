//! The S3 source and store against a real S3-compatible server (scripts/test starts moto).

mod common;

use std::sync::Arc;

use arrow::array::{AsArray, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use billrun_connectors::s3::{read_s3, S3SourceConfig, S3Staging, S3StoreConfig, Store, COMMITTED, LATEST};
use billrun_connectors::{parse_timestamp_micros, ReadWindow};
use common::{s3_keys, s3_store, unique};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn us(s: &str) -> i64 {
    parse_timestamp_micros(s).unwrap()
}

async fn put(key: &str, bytes: Vec<u8>) {
    s3_store().put(&Path::from(key), PutPayload::from(bytes)).await.unwrap();
}

fn parquet_bytes() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("eid", DataType::Utf8, false),
        Field::new("acct", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("gb", DataType::Decimal128(18, 3), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["p1", "p2"])),
            Arc::new(StringArray::from(vec!["acme", "globex"])),
            Arc::new(TimestampMicrosecondArray::from(vec![us("2026-10-02T01:00:00Z"), us("2026-10-02T02:00:00Z")]).with_timezone("UTC")),
            Arc::new(Decimal128Array::from(vec![1500, 2]).with_precision_and_scale(18, 3).unwrap()),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

fn source(prefix: &str, extra: serde_json::Value) -> S3SourceConfig {
    let mut m = s3_keys();
    m.insert("name".into(), "lake".into());
    m.insert("prefix".into(), prefix.into());
    m.insert("partition".into(), "dt={YYYY}-{MM}-{DD}".into());
    for (k, v) in extra.as_object().unwrap() {
        m.insert(k.clone(), v.clone());
    }
    serde_json::from_value(serde_json::Value::Object(m)).unwrap()
}

#[tokio::test]
async fn partitions_outside_the_window_are_never_listed_and_formats_share_the_file_decoders() {
    let p = unique("usage");
    put(&format!("{p}/dt=2026-09-30/x.ndjson"), b"not json: if this were read it would be a bad record\n".to_vec()).await;
    put(
        &format!("{p}/dt=2026-10-01/a.ndjson"),
        br#"{"id":"n1","schemaName":"s","accountId":"acme","timestamp":"2026-10-01T10:00:00Z","attributes":[{"name":"gb","value":"0.5"}]}
{"id":"n2","schemaName":"s","accountId":"acme","timestamp":"2026-10-01T11:00:00Z","attributes":[{"name":"gb","value":"2"}]}
oops
"#
        .to_vec(),
    )
    .await;
    put(&format!("{p}/dt=2026-10-01/README.md"), b"ignored: not a usage format".to_vec()).await;
    put(&format!("{p}/dt=2026-10-02/b.parquet"), parquet_bytes()).await;
    put(&format!("{p}/dt=2026-10-03/c.csv"), b"eid,acct,ts,gb\nc1,acme,2026-10-03T00:00:00Z,7\n".to_vec()).await;
    put(&format!("{p}/dt=2026-10-04/later.ndjson"), b"also never read\n".to_vec()).await;

    let w = ReadWindow { start_us: Some(us("2026-10-01T00:00:00Z")), end_us: Some(us("2026-10-04T00:00:00Z")) };
    // NDJSON only (format set): CSV/Parquet partitions are listed but skipped
    let out = read_s3(&source(&p, serde_json::json!({"format": "ndjson"})), &w).await.unwrap();
    let b = std::env::var("BILLRUN_TEST_S3_BUCKET").unwrap();
    assert_eq!(out.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(), [format!("s3://{b}/{p}/dt=2026-10-01/a.ndjson")]);
    assert_eq!(out.num_rows(), 2);
    assert_eq!(out.bad_records.len(), 1);
    assert_eq!(out.bad_records[0].location, format!("s3://{b}/{p}/dt=2026-10-01/a.ndjson:3"));
    assert_eq!(out.batches[0].column_by_name("attributes.gb").unwrap().as_string::<i32>().value(0), "0.5");

    // with a mapping: every format of the window's partitions, in key order
    let mapping = serde_json::json!({"mapping": {"event_id": "eid", "account_id": "acct", "timestamp": "ts", "schema_name_value": "s", "attributes": {"gb": "gb"}}});
    let mut cfg = source(&p, mapping);
    cfg.format = None;
    let e = read_s3(&cfg, &w).await;
    // the NDJSON file needs no mapping; CSV and Parquet use it
    let out = e.unwrap();
    let files: Vec<_> = out.files.iter().map(|f| f.path.rsplit('/').next().unwrap().to_string()).collect();
    assert_eq!(files, ["a.ndjson", "b.parquet", "c.csv"]);
    assert_eq!(out.num_rows(), 5);
    let dec = out.batches[1].column_by_name("attributes.gb").unwrap();
    assert_eq!(dec.data_type(), &DataType::Decimal128(18, 3));

    // an unreachable endpoint: a clear error naming connector, source and location
    let mut bad = source(&p, serde_json::json!({}));
    bad.endpoint = Some(format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()));
    bad.retries = 0;
    let e = read_s3(&bad, &w).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("s3 source `lake`: s3://{b}/{p}/dt=2026-10-01/: cannot list objects")), "{e}");
    assert!(!e.contains(&std::env::var("BILLRUN_TEST_S3_SECRET").unwrap_or_default().repeat(3)));
}

fn store_cfg(prefix: &str) -> S3StoreConfig {
    let mut m = s3_keys();
    m.insert("prefix".into(), prefix.into());
    serde_json::from_value(serde_json::Value::Object(m)).unwrap()
}

async fn keys(prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut v: Vec<String> = s3_store().list(Some(&Path::from(prefix))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    v.sort();
    v
}

#[test]
fn the_store_writes_a_run_prefix_manifest_last_commits_once_and_cleans_up_failed_runs() {
    let p = unique("store");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // a failed run (dropped before commit) leaves nothing
    let mut s: Box<dyn Store> = Box::new(S3Staging::begin(&store_cfg(&p), "2026-11-06").unwrap());
    s.put("invoices/acme/inv.json", b"{}").unwrap();
    drop(s);
    assert!(rt.block_on(keys(&p)).is_empty());

    let mut s: Box<dyn Store> = Box::new(S3Staging::begin(&store_cfg(&p), "2026-11-06").unwrap());
    s.put("invoices/acme/inv.json", b"{\"a\":1}").unwrap();
    s.put("manifest.json", b"{}").unwrap();
    s.commit().unwrap();
    assert_eq!(
        rt.block_on(keys(&p)),
        [
            format!("{p}/{LATEST}"),
            format!("{p}/runs/2026-11-06/{COMMITTED}"),
            format!("{p}/runs/2026-11-06/invoices/acme/inv.json"),
            format!("{p}/runs/2026-11-06/manifest.json")
        ]
    );
    let latest = rt.block_on(async { s3_store().get(&Path::from(format!("{p}/{LATEST}"))).await.unwrap().bytes().await.unwrap() });
    assert_eq!(&latest[..], format!("{p}/runs/2026-11-06\n").as_bytes());

    // a second run with the same id cannot commit over the first
    let mut s: Box<dyn Store> = Box::new(S3Staging::begin(&store_cfg(&p), "2026-11-06").unwrap());
    s.put("manifest.json", b"{\"second\":true}").unwrap();
    let e = s.commit().unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert!(S3Staging::begin(&store_cfg(&p), "../x").is_err());
}
