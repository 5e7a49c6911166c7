//! End-to-end tests of the local-files source.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Decimal128Array, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use billrun_connectors::schema::{check_canonical, timestamp_type, SOURCE_FILE_METADATA_KEY};
use billrun_connectors::{
    read_files, ColumnMapping, ConnectorError, ErrorKind, FileFormat, FileSourceConfig, SourceOutput, MAX_BATCH_ROWS,
};
use parquet::arrow::ArrowWriter;

// 2022-06-15T07:30:35Z
const T0: i64 = 1_655_278_235_000_000;

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn cfg(root: &Path, format: Option<FileFormat>, mapping: Option<ColumnMapping>) -> FileSourceConfig {
    FileSourceConfig { name: "usage".into(), root: root.to_path_buf(), format, mapping }
}

fn mapping() -> ColumnMapping {
    ColumnMapping {
        event_id: "id".into(),
        account_id: "customer".into(),
        timestamp: "occurred_at".into(),
        schema_name: None,
        schema_name_value: Some("api_calls".into()),
        ingested_at: None,
        attributes: BTreeMap::from([("calls".into(), "call_count".into())]),
        dimensions: BTreeMap::from([("region".into(), "region".into())]),
    }
}

/// All values of a text column (`Utf8` or string views) across batches, by column name.
fn strings(out: &SourceOutput, col: &str) -> Vec<Option<String>> {
    out.batches
        .iter()
        .flat_map(|b| {
            assert!(b.column_by_name(col).is_some(), "no column {col}");
            let a = billrun_connectors::schema::Text::of(b, col).unwrap();
            (0..b.num_rows()).map(|i| a.get(i).map(str::to_string)).collect::<Vec<_>>()
        })
        .collect()
}

fn micros(out: &SourceOutput, col: &str) -> Vec<Option<i64>> {
    out.batches
        .iter()
        .flat_map(|b| b.column_by_name(col).unwrap().as_primitive::<TimestampMicrosecondType>().iter().collect::<Vec<_>>())
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn read_err(c: &FileSourceConfig) -> ConnectorError {
    read_files(c).await.expect_err("expected a ConnectorError")
}

#[tokio::test]
async fn ndjson_numbers_wrapped_nulls_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"schemaName":"api_calls","id":"e1","timestamp":"2022-06-15T07:30:35Z","accountId":"acme","attributes":[{"name":"calls","value":"0.123456789012345678","unit":"calls"}],"dimensions":{"region":"eu"}}"#,
        r#"{"schemaName":"api_calls","id":"e2","timestamp":"2022-06-15T09:30:35+02:00","accountId":"acme","attributes":[{"name":"calls","value":0.123456789012345678}]}"#,
        "",
        r#"{"schemaName":"api_calls","id":"e3","timestamp":"#,
        r#"{"event":{"schemaName":"api_calls","timestamp":"2022-06-15T07:30:35.123","attributes":[{"name":"bytes","value":50}],"ingestedAt":"2022-06-15T07:30:36Z"}}"#,
        r#"{"schemaName":"api_calls","id":"e5","timestamp":"15/06/2022","accountId":"acme"}"#,
        r#"{"schemaName":"api_calls","id":"e6","accountId":"acme"}"#,
        r#"{"schemaName":"api_calls","id":null,"accountId":null,"timestamp":"2026-10-01"}  "#,
    ];
    write(dir.path(), "usage/day1.ndjson", (lines.join("\r\n") + "\n").as_bytes());
    write(dir.path(), "README.md", b"# not data\n");

    let out = read_files(&cfg(dir.path(), None, None)).await.unwrap();
    assert_eq!(out.files.len(), 1);
    assert_eq!(out.files[0].path, "usage/day1.ndjson");
    assert_eq!(out.files[0].bytes, std::fs::metadata(dir.path().join("usage/day1.ndjson")).unwrap().len());
    for b in &out.batches {
        check_canonical(b).unwrap();
        assert_eq!(b.schema().metadata()[SOURCE_FILE_METADATA_KEY], "usage/day1.ndjson");
    }
    assert_eq!(out.num_rows(), 4);
    assert_eq!(strings(&out, "event_id"), vec![s("e1"), s("e2"), None, None]);
    assert_eq!(strings(&out, "account_id"), vec![s("acme"), s("acme"), None, None]);
    assert_eq!(strings(&out, "schema_name"), vec![s("api_calls"); 4]);
    assert_eq!(strings(&out, "attributes.calls"), vec![s("0.123456789012345678"), s("0.123456789012345678"), None, None]);
    assert_eq!(strings(&out, "attributes.bytes"), vec![None, None, s("50"), None]);
    assert_eq!(strings(&out, "dimensions.region"), vec![s("eu"), None, None, None]);
    assert_eq!(micros(&out, "timestamp"), vec![Some(T0), Some(T0), Some(T0 + 123_000), Some(1_790_812_800_000_000)]);
    assert_eq!(micros(&out, "ingested_at"), vec![None, None, Some(T0 + 1_000_000), None]);
    assert_eq!(out.batches[0].schema().field_with_name("timestamp").unwrap().data_type(), &timestamp_type());

    let bad: Vec<(&str, &str)> = out.bad_records.iter().map(|b| (b.location.as_str(), b.raw.as_str())).collect();
    assert_eq!(bad, vec![("usage/day1.ndjson:4", lines[3]), ("usage/day1.ndjson:6", lines[5]), ("usage/day1.ndjson:7", lines[6])]);
    assert!(out.bad_records[0].error.starts_with("invalid JSON"), "{}", out.bad_records[0].error);
    assert_eq!(
        out.bad_records[1].error,
        "timestamp: invalid timestamp `15/06/2022`: expected ISO-8601 / RFC 3339 like \
         2024-05-01T12:00:00Z, 2024-05-01T12:00:00.123 (UTC) or 2024-05-01"
    );
    assert!(out.bad_records[2].error.contains("missing field `timestamp`"), "{}", out.bad_records[2].error);
}

#[tokio::test]
async fn ndjson_large_file_is_split_into_batches() {
    let dir = tempfile::tempdir().unwrap();
    let n = MAX_BATCH_ROWS + 10;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"schemaName\":\"s\",\"id\":\"e{i}\",\"timestamp\":\"2022-06-15T07:30:35Z\",\"accountId\":\"a\",\"attributes\":[{{\"name\":\"n\",\"value\":{i}}}]}}\n"
        ));
    }
    write(dir.path(), "big.jsonl", text.as_bytes());
    let out = read_files(&cfg(dir.path(), Some(FileFormat::Ndjson), None)).await.unwrap();
    let sizes: Vec<usize> = out.batches.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, vec![MAX_BATCH_ROWS, 10]);
    let ids = strings(&out, "event_id");
    assert_eq!(ids[0], s("e0"));
    assert_eq!(ids[n - 1], Some(format!("e{}", n - 1)));
    assert_eq!(strings(&out, "attributes.n")[MAX_BATCH_ROWS], Some(MAX_BATCH_ROWS.to_string()));
}

#[tokio::test]
async fn csv_with_mapping_and_constant_schema_name() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "id,customer,occurred_at,call_count,region,note\n\
               e1,acme,2022-06-15T07:30:35Z,0.123456789012345678,eu,x\n\
               e2,acme,2022-06-15T07:30:35.5,007,,\"multi\nline\"\n\
               e3,beta,not-a-time,1,us,y\n\
               ,beta,,1e3,us,z\n\
               e5,beta,2022-06-15\n\
               \n\
               e6,gamma,2026-10-01,,apac,w\n";
    write(dir.path(), "exports/usage.csv", csv.as_bytes());

    let out = read_files(&cfg(dir.path(), None, Some(mapping()))).await.unwrap();
    for b in &out.batches {
        check_canonical(b).unwrap();
    }
    let names: Vec<String> = out.batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["event_id", "schema_name", "account_id", "timestamp", "ingested_at", "attributes.calls", "dimensions.region"]);
    assert_eq!(strings(&out, "event_id"), vec![s("e1"), s("e2"), None, s("e6")]);
    assert_eq!(strings(&out, "schema_name"), vec![s("api_calls"); 4]);
    assert_eq!(strings(&out, "account_id"), vec![s("acme"), s("acme"), s("beta"), s("gamma")]);
    assert_eq!(strings(&out, "attributes.calls"), vec![s("0.123456789012345678"), s("007"), s("1e3"), None]);
    assert_eq!(strings(&out, "dimensions.region"), vec![s("eu"), None, s("us"), s("apac")]);
    assert_eq!(micros(&out, "timestamp"), vec![Some(T0), Some(T0 + 500_000), None, Some(1_790_812_800_000_000)]);
    assert_eq!(micros(&out, "ingested_at"), vec![None; 4]);

    let bad: Vec<(&str, &str)> = out.bad_records.iter().map(|b| (b.location.as_str(), b.raw.as_str())).collect();
    assert_eq!(bad, vec![("exports/usage.csv:5", "e3,beta,not-a-time,1,us,y"), ("exports/usage.csv:7", "e5,beta,2022-06-15"),]);
    assert!(out.bad_records[0].error.starts_with("column `occurred_at`: invalid timestamp `not-a-time`"), "{}", out.bad_records[0].error);
    assert_eq!(out.bad_records[1].error, "row has 3 fields but the header has 6");
}

#[tokio::test]
async fn csv_schema_name_column_and_ingested_at() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "u.csv",
        b"\xEF\xBB\xBFid,customer,occurred_at,kind,loaded,call_count,region\n\
          e1,acme,2022-06-15T07:30:35Z,storage,2022-06-15T07:30:36Z,5,eu\n",
    );
    let mut m = mapping();
    m.schema_name = Some("kind".into());
    m.schema_name_value = None;
    m.ingested_at = Some("loaded".into());
    let out = read_files(&cfg(dir.path(), Some(FileFormat::Csv), Some(m))).await.unwrap();
    assert_eq!(strings(&out, "schema_name"), vec![s("storage")]);
    assert_eq!(micros(&out, "ingested_at"), vec![Some(T0 + 1_000_000)]);
    assert_eq!(strings(&out, "event_id"), vec![s("e1")]);
}

#[tokio::test]
async fn csv_missing_column_or_mapping_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/u.csv", b"id,customer,when,call_count,region\ne1,acme,2022-06-15,1,eu\n");
    let e = read_err(&cfg(dir.path(), None, Some(mapping()))).await;
    assert_eq!(e.kind, ErrorKind::Config);
    assert_eq!(e.location, "a/u.csv");
    assert_eq!(
        e.to_string(),
        "files source `usage`: a/u.csv: mapped column `occurred_at` (for timestamp) is not in the header; \
         the header has: `id`, `customer`, `when`, `call_count`, `region`"
    );

    let e = read_err(&cfg(dir.path(), None, None)).await;
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.to_string().starts_with("files source `usage`: a/u.csv: CSV files need a column mapping"), "{e}");
}

fn write_parquet(root: &Path, rel: &str, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let file = std::fs::File::create(p).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn parquet_mapping() -> ColumnMapping {
    ColumnMapping {
        event_id: "id".into(),
        account_id: "customer".into(),
        timestamp: "ts".into(),
        schema_name: Some("kind".into()),
        schema_name_value: None,
        ingested_at: None,
        attributes: BTreeMap::from([
            ("amount".into(), "amount".into()),
            ("calls".into(), "calls".into()),
            ("small".into(), "small".into()),
        ]),
        dimensions: BTreeMap::from([("region".into(), "region".into()), ("zone".into(), "zone".into())]),
    }
}

#[tokio::test]
async fn parquet_is_read_into_the_canonical_schema() {
    let dir = tempfile::tempdir().unwrap();
    let dict = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>()) };
    write_parquet(
        dir.path(),
        "p/usage.parquet",
        vec![
            ("id", Arc::new(StringArray::from(vec![Some("e1"), Some("e2"), None])) as ArrayRef),
            ("customer", dict(vec![Some("acme"), Some("beta"), Some("acme")])),
            ("kind", dict(vec![Some("api_calls"), Some("api_calls"), None])),
            (
                "ts",
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(T0 * 1000), Some(T0 * 1000 + 123_456_000), None]).with_timezone("+02:00"),
                ),
            ),
            ("calls", Arc::new(Int64Array::from(vec![Some(5), None, Some(-7)]))),
            ("amount", Arc::new(Decimal128Array::from(vec![Some(123_456_789), Some(1), None]).with_precision_and_scale(20, 6).unwrap())),
            ("small", Arc::new(Int32Array::from(vec![1, 2, 3]))),
            ("region", dict(vec![Some("eu"), None, Some("us")])),
            ("zone", Arc::new(Int32Array::from(vec![Some(5), Some(6), None]))),
            // Not mapped: projected away, so its float type is no problem.
            ("price", Arc::new(Float64Array::from(vec![0.1, 0.2, 0.3]))),
        ],
    );
    let out = read_files(&cfg(dir.path(), None, Some(parquet_mapping()))).await.unwrap();
    assert_eq!(out.files.len(), 1);
    assert_eq!(out.batches.len(), 1);
    assert!(out.bad_records.is_empty());
    let b = &out.batches[0];
    check_canonical(b).unwrap();
    let types: Vec<(String, DataType)> = b.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    assert_eq!(
        types,
        vec![
            // text (plain or dictionary-encoded) is decoded into string views
            ("event_id".into(), DataType::Utf8View),
            ("schema_name".into(), DataType::Utf8View),
            ("account_id".into(), DataType::Utf8View),
            ("timestamp".into(), timestamp_type()),
            ("ingested_at".into(), timestamp_type()),
            ("attributes.amount".into(), DataType::Decimal128(20, 6)),
            ("attributes.calls".into(), DataType::Int64),
            ("attributes.small".into(), DataType::Int64),
            ("dimensions.region".into(), DataType::Utf8View),
            ("dimensions.zone".into(), DataType::Utf8),
        ]
    );
    assert_eq!(strings(&out, "event_id"), vec![s("e1"), s("e2"), None]);
    assert_eq!(strings(&out, "account_id"), vec![s("acme"), s("beta"), s("acme")]);
    assert_eq!(strings(&out, "schema_name"), vec![s("api_calls"), s("api_calls"), None]);
    assert_eq!(micros(&out, "timestamp"), vec![Some(T0), Some(T0 + 123_456), None]);
    assert_eq!(micros(&out, "ingested_at"), vec![None, None, None]);
    let amount = b.column_by_name("attributes.amount").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(amount.iter().collect::<Vec<_>>(), vec![Some(123_456_789), Some(1), None]);
    assert_eq!(amount.value_as_string(0), "123.456789");
    let calls = b.column_by_name("attributes.calls").unwrap().as_primitive::<Int64Type>();
    assert_eq!(calls.iter().collect::<Vec<_>>(), vec![Some(5), None, Some(-7)]);
    let small = b.column_by_name("attributes.small").unwrap().as_primitive::<Int64Type>();
    assert_eq!(small.values().to_vec(), vec![1, 2, 3]);
    assert_eq!(strings(&out, "dimensions.region"), vec![s("eu"), None, s("us")]);
    assert_eq!(strings(&out, "dimensions.zone"), vec![s("5"), s("6"), None]);
}

#[tokio::test]
async fn parquet_text_and_millisecond_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = parquet_mapping();
    m.attributes = BTreeMap::from([("calls".into(), "calls".into())]);
    m.dimensions = BTreeMap::new();
    m.ingested_at = Some("loaded".into());
    write_parquet(
        dir.path(),
        "x.parquet",
        vec![
            ("id", Arc::new(StringArray::from(vec!["e1", "e2", "e3"])) as ArrayRef),
            ("customer", Arc::new(StringArray::from(vec!["a", "a", "a"]))),
            ("kind", Arc::new(StringArray::from(vec!["s", "s", "s"]))),
            ("ts", Arc::new(StringArray::from(vec!["2022-06-15T07:30:35Z", "garbage", "2026-10-01"]))),
            ("loaded", Arc::new(TimestampMillisecondArray::from(vec![T0 / 1000 + 1, T0 / 1000, T0 / 1000]))),
            ("calls", Arc::new(StringArray::from(vec!["0.123456789012345678", "2", "3"]))),
        ],
    );
    let out = read_files(&cfg(dir.path(), Some(FileFormat::Parquet), Some(m))).await.unwrap();
    assert_eq!(strings(&out, "event_id"), vec![s("e1"), s("e3")]);
    assert_eq!(micros(&out, "timestamp"), vec![Some(T0), Some(1_790_812_800_000_000)]);
    assert_eq!(micros(&out, "ingested_at"), vec![Some(T0 + 1_000), Some(T0)]);
    assert_eq!(strings(&out, "attributes.calls"), vec![s("0.123456789012345678"), s("3")]);
    assert_eq!(out.bad_records.len(), 1);
    assert_eq!(out.bad_records[0].location, "x.parquet:row 2");
    assert_eq!(out.bad_records[0].raw, "ts=garbage");
    assert!(out.bad_records[0].error.contains("invalid timestamp `garbage`"));
}

#[tokio::test]
async fn parquet_float_attribute_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = parquet_mapping();
    m.attributes = BTreeMap::from([("amount".into(), "x".into())]);
    m.dimensions = BTreeMap::new();
    write_parquet(
        dir.path(),
        "f.parquet",
        vec![
            ("id", Arc::new(StringArray::from(vec!["e1"])) as ArrayRef),
            ("customer", Arc::new(StringArray::from(vec!["a"]))),
            ("kind", Arc::new(StringArray::from(vec!["s"]))),
            ("ts", Arc::new(TimestampNanosecondArray::from(vec![T0 * 1000]))),
            ("x", Arc::new(Float64Array::from(vec![0.1]))),
        ],
    );
    let e = read_err(&cfg(dir.path(), None, Some(m))).await;
    assert_eq!(e.kind, ErrorKind::UnsupportedType);
    assert_eq!(
        e.to_string(),
        "files source `usage`: f.parquet: column `x` is Float64: billrun does not read binary \
         floating point as a quantity; store it as DECIMAL or text"
    );
}

#[tokio::test]
async fn parquet_sub_microsecond_timestamp_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = parquet_mapping();
    m.attributes = BTreeMap::new();
    m.dimensions = BTreeMap::new();
    write_parquet(
        dir.path(),
        "n.parquet",
        vec![
            ("id", Arc::new(StringArray::from(vec!["e1", "e2"])) as ArrayRef),
            ("customer", Arc::new(StringArray::from(vec!["a", "a"]))),
            ("kind", Arc::new(StringArray::from(vec!["s", "s"]))),
            ("ts", Arc::new(TimestampNanosecondArray::from(vec![T0 * 1000, T0 * 1000 + 1]))),
        ],
    );
    let e = read_err(&cfg(dir.path(), None, Some(m))).await;
    assert_eq!(e.kind, ErrorKind::UnsupportedType);
    assert_eq!(e.location, "n.parquet");
    assert!(e.message.contains("at row 2 is not a whole microsecond"), "{e}");
}

#[tokio::test]
async fn files_are_read_in_path_order_across_nested_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |id: &str| format!("{{\"schemaName\":\"s\",\"id\":\"{id}\",\"timestamp\":\"2026-10-01\"}}\n");
    write(dir.path(), "b.ndjson", ev("b1").as_bytes());
    write(dir.path(), "a/z.ndjson", (ev("az1") + &ev("az2")).as_bytes());
    write(dir.path(), "a/b/c.jsonl", ev("abc").as_bytes());
    write(dir.path(), "a/b.json", ev("ab").as_bytes());
    write(dir.path(), "README.md", b"docs");
    write(dir.path(), ".hidden.ndjson", ev("hidden").as_bytes());
    write(dir.path(), ".git/x.ndjson", ev("git").as_bytes());
    write(dir.path(), "empty.ndjson", b"");

    let out = read_files(&cfg(dir.path(), None, None)).await.unwrap();
    let paths: Vec<&str> = out.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["a/b.json", "a/b/c.jsonl", "a/z.ndjson", "b.ndjson", "empty.ndjson"]);
    assert_eq!(strings(&out, "event_id"), vec![s("ab"), s("abc"), s("az1"), s("az2"), s("b1")]);
    assert!(out.bad_records.is_empty());

    // A format filter reads only that format's files.
    let out = read_files(&cfg(dir.path(), Some(FileFormat::Parquet), None)).await.unwrap();
    assert!(out.files.is_empty() && out.batches.is_empty());
}

#[tokio::test]
async fn empty_and_missing_roots() {
    let dir = tempfile::tempdir().unwrap();
    let out = read_files(&cfg(dir.path(), None, None)).await.unwrap();
    assert_eq!((out.batches.len(), out.bad_records.len(), out.files.len()), (0, 0, 0));

    let missing = dir.path().join("nope");
    let e = read_err(&cfg(&missing, None, None)).await;
    assert_eq!(e.kind, ErrorKind::Io);
    assert_eq!(e.location, missing.display().to_string());
    assert!(e.to_string().starts_with("files source `usage`: "), "{e}");
}

#[tokio::test]
async fn bad_mapping_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = mapping();
    m.schema_name = Some("kind".into());
    let e = read_err(&cfg(dir.path(), None, Some(m))).await;
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("only one of `schema_name`"), "{e}");
}

#[test]
fn works_without_a_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.ndjson", b"{\"timestamp\":\"2026-10-01\",\"id\":\"x\"}\n");
    let out = futures::executor::block_on(read_files(&cfg(dir.path(), None, None))).unwrap();
    assert_eq!(strings(&out, "event_id"), vec![s("x")]);
}

#[test]
fn canonical_timestamp_type_is_microseconds_utc() {
    assert_eq!(timestamp_type(), DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
}
