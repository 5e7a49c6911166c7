//! Shared helpers of the connector tests that talk to real servers (started by scripts/test).
#![allow(dead_code)]

/// A variable exported by tests/support/servers/*.sh; missing means the servers were not started.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test needs the real servers; run `scripts/test` (it starts them and exports {name})")
    })
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

pub async fn pg_client() -> tokio_postgres::Client {
    let conf = format!(
        "host={} port={} user={} dbname={}",
        env("BILLRUN_TEST_PG_HOST"),
        env("BILLRUN_TEST_PG_PORT"),
        env("BILLRUN_TEST_PG_USER"),
        env("BILLRUN_TEST_PG_DB")
    );
    let (client, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await.expect("connect to the test Postgres");
    tokio::spawn(conn);
    client
}

pub fn pg_config(name: &str, query: &str) -> billrun_connectors::postgres::PostgresConfig {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "host": env("BILLRUN_TEST_PG_HOST"),
        "port": env("BILLRUN_TEST_PG_PORT").parse::<u16>().unwrap(),
        "user": env("BILLRUN_TEST_PG_USER"),
        "dbname": env("BILLRUN_TEST_PG_DB"),
        "query": query,
        "retries": 1,
    }))
    .unwrap()
}

pub fn s3_store() -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(env("BILLRUN_TEST_S3_ENDPOINT"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(env("BILLRUN_TEST_S3_BUCKET"))
        .with_access_key_id(env("BILLRUN_TEST_S3_KEY_ID"))
        .with_secret_access_key(env("BILLRUN_TEST_S3_SECRET"))
        .build()
        .unwrap()
}

/// The connection keys of an S3 source/store config for the test server, as JSON.
pub fn s3_keys() -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({
        "bucket": env("BILLRUN_TEST_S3_BUCKET"),
        "endpoint": env("BILLRUN_TEST_S3_ENDPOINT"),
        "allow_http": true,
        "access_key_id": env("BILLRUN_TEST_S3_KEY_ID"),
        "secret_access_key": env("BILLRUN_TEST_S3_SECRET"),
        "retries": 1,
    })
    .as_object()
    .unwrap()
    .clone()
}
