//! The S3 source and store against a real S3-compatible server (scripts/test starts moto).

mod common;

use std::sync::Arc;

use arrow::array::{AsArray, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use billrun_connectors::s3::{read_s3, S3SourceConfig, S3Store, S3StoreConfig};
use billrun_connectors::store::{Created, Store};
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
fn the_incremental_store_puts_gets_lists_and_deletes_whole_objects_under_its_prefix() {
    let p = unique("incr");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = std::env::var("BILLRUN_TEST_S3_BUCKET").unwrap();
    let s = S3Store::open(&store_cfg(&format!("/{p}/"))).unwrap();
    assert_eq!(s.describe(), format!("s3://{b}/{p}"));
    assert_eq!(s.get("ledger/2026-10.json").unwrap(), None);
    assert!(s.list("").unwrap().is_empty());
    for k in
        ["ledger/2026-10.json", "drafts/b.json", "drafts/a.json", "drafts/sub/c.json", "draftsy.json", "z.json", "invoices/acct%2F1/x.json"]
    {
        s.put(k, k.as_bytes()).unwrap();
    }
    s.put("z.json", b"second").unwrap();
    assert_eq!(s.get("z.json").unwrap().unwrap(), b"second");
    assert_eq!(s.get("invoices/acct%2F1/x.json").unwrap().unwrap(), b"invoices/acct%2F1/x.json");
    // objects of a neighbouring prefix and hidden ones are not the store's keys
    rt.block_on(put(&format!("{p}x/other.json"), b"{}".to_vec()));
    rt.block_on(put(&format!("{p}/drafts/.tmp/d.json"), b"{}".to_vec()));
    assert_eq!(
        s.list("").unwrap(),
        [
            "drafts/a.json",
            "drafts/b.json",
            "drafts/sub/c.json",
            "draftsy.json",
            "invoices/acct%2F1/x.json",
            "ledger/2026-10.json",
            "z.json"
        ]
    );
    assert_eq!(s.list("drafts/").unwrap(), ["drafts/a.json", "drafts/b.json", "drafts/sub/c.json"]);
    assert_eq!(s.list("drafts").unwrap(), ["drafts/a.json", "drafts/b.json", "drafts/sub/c.json", "draftsy.json"]);
    assert_eq!(s.list("drafts/s").unwrap(), ["drafts/sub/c.json"]);
    assert!(s.list("nothing/").unwrap().is_empty());
    // keys are stored verbatim under the prefix
    assert!(rt.block_on(keys(&p)).contains(&format!("{p}/invoices/acct%2F1/x.json")));
    s.delete("drafts/a.json").unwrap();
    s.delete("drafts/a.json").unwrap(); // absent is fine
    assert_eq!(s.get("drafts/a.json").unwrap(), None);
    assert_eq!(s.list("drafts/").unwrap(), ["drafts/b.json", "drafts/sub/c.json"]);
    for k in ["../x", "a//b", "/etc/passwd", ""] {
        let e = s.put(k, b"x").unwrap_err().to_string();
        assert!(e.starts_with(&format!("s3 store source `store`: s3://{b}/{p}: store key")), "{e}");
        assert!(s.get(k).is_err() && s.delete(k).is_err() && s.put_if_absent(k, b"x").is_err() && s.list(&format!("{k}/")).is_err(), "{k}");
    }
    // a store at the bucket root sees every key of the bucket, the prefix included
    let root = S3Store::open(&store_cfg("")).unwrap();
    assert_eq!(root.describe(), format!("s3://{b}"));
    assert_eq!(root.list(&format!("{p}/drafts/")).unwrap(), [format!("{p}/drafts/b.json"), format!("{p}/drafts/sub/c.json")]);
}

#[test]
fn the_incremental_store_creates_once() {
    let p = unique("incr");
    let s = S3Store::open(&store_cfg(&p)).unwrap();
    assert_eq!(s.put_if_absent("ledger/0001.json", b"first").unwrap(), Created::Created);
    assert_eq!(s.put_if_absent("ledger/0001.json", b"second").unwrap(), Created::AlreadyExists);
    let other = S3Store::open(&store_cfg(&p)).unwrap();
    assert_eq!(other.put_if_absent("ledger/0001.json", b"third").unwrap(), Created::AlreadyExists);
    assert_eq!(s.get("ledger/0001.json").unwrap().unwrap(), b"first");
}

#[test]
fn the_incremental_store_lock_is_exclusive_names_its_object_and_is_released_on_drop() {
    let p = unique("incr");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = std::env::var("BILLRUN_TEST_S3_BUCKET").unwrap();
    let s = S3Store::open(&store_cfg(&p)).unwrap();
    let other = S3Store::open(&store_cfg(&p)).unwrap();
    let guard = s.lock().unwrap();
    let lock_url = format!("s3://{b}/{p}/.billrun.lock");
    let e = other.lock().err().expect("the lock is held").to_string();
    assert!(e.starts_with(&format!("s3 store source `store`: {lock_url}: another run is writing this store")), "{e}");
    assert!(e.contains(&format!("\"pid\":{}", std::process::id())), "the holder is named: {e}");
    assert!(e.contains("delete it once you are sure no run is active"), "{e}");
    assert!(s.lock().is_err(), "not reentrant");
    assert!(s.list("").unwrap().is_empty(), "the lock object is not a key");
    drop(guard);
    assert!(rt.block_on(keys(&p)).is_empty(), "released: the lock object is gone");
    let again = other.lock().unwrap();
    assert!(s.lock().is_err());
    drop(again);
    drop(s.lock().unwrap());

    // a lock left behind by a killed run stays until an operator deletes it
    rt.block_on(put(&format!("{p}/.billrun.lock"), b"{\"pid\":1,\"host\":\"gone\"}\n".to_vec()));
    let e = s.lock().err().expect("a stale lock is not taken over").to_string();
    assert!(e.contains(&lock_url) && e.contains("\"host\":\"gone\""), "{e}");
    rt.block_on(s3_store().delete(&Path::from(format!("{p}/.billrun.lock")))).unwrap();
    drop(s.lock().unwrap());
}

#[test]
fn the_incremental_store_errors_name_the_connector_and_object_and_never_a_secret() {
    let p = unique("incr");
    let b = std::env::var("BILLRUN_TEST_S3_BUCKET").unwrap();
    let mut cfg = store_cfg(&p);
    cfg.endpoint = Some(format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()));
    cfg.retries = 0;
    cfg.secret_access_key = Some(billrun_connectors::sql::Secret("sEcReT-never-shown".into()));
    let s = S3Store::open(&cfg).unwrap();
    let errors = [
        s.get("ledger/1.json").unwrap_err(),
        s.put("ledger/1.json", b"x").unwrap_err(),
        s.put_if_absent("ledger/1.json", b"x").unwrap_err(),
        s.delete("ledger/1.json").unwrap_err(),
        s.lock().err().unwrap(),
    ];
    for e in errors.iter().map(|e| e.to_string()) {
        assert!(e.starts_with("s3 store source `store`: s3://"), "{e}");
        assert!(!e.contains("sEcReT"), "{e}");
    }
    assert!(
        errors[0].to_string().starts_with(&format!("s3 store source `store`: s3://{b}/{p}/ledger/1.json: cannot read")),
        "{}",
        errors[0]
    );
    let e = s.list("drafts/").unwrap_err().to_string();
    assert!(e.starts_with(&format!("s3 store source `store`: s3://{b}/{p}/drafts/: cannot list objects")), "{e}");
}
