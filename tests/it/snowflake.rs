//! billrun with its usage in the Snowflake emulator (fakesnow + billrun's JSON shim, started by
//! `scripts/test`): the quickstart read from Snowflake gives byte-identical outputs to the same
//! usage read from local files; errors name the connector, the source and the query; a refused
//! login says so; the server lost mid-read fails the run cleanly and the same run then succeeds.

use std::io::Write;

use crate::connectors::{assert_same_outputs, env, local_outputs, quickstart_events, run_to, scenario, unique, Relay};
use crate::snapshot;

/// Run statements in a fresh schema of the test database (with the emulator venv's Python
/// connector); returns the schema.
pub(crate) fn sf_exec(schema: &str, statements: &serde_json::Value) {
    let script = crate::repo().join("tests/support/snowflake/sf_exec.py");
    let mut child = std::process::Command::new(env("BILLRUN_TEST_SF_PYTHON"))
        .arg(script)
        .arg(schema)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("the emulator's python (tests/support/servers/40-snowflake.sh)");
    child.stdin.take().unwrap().write_all(statements.to_string().as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sf_exec failed: {statements}");
}

/// The quickstart events (plus `noise` unknown-schema events) in a new table; returns (schema, table).
pub(crate) fn sf_load(noise: usize) -> (String, String) {
    let schema = unique("S").to_uppercase();
    let table = "EVENTS".to_string();
    let dim = |e: &crate::connectors::Ev, k: &str| e.dims.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut rows = Vec::new();
    for (i, e) in quickstart_events().iter().enumerate() {
        rows.push(serde_json::json!([
            i,
            e.id,
            e.schema,
            e.account,
            e.ts,
            e.ingested.as_deref().map(|t| t.trim_end_matches('Z').replace('T', " ")),
            e.gb,
            dim(e, "endpoint"),
            dim(e, "region"),
            dim(e, "bucket")
        ]));
    }
    for i in 0..noise {
        rows.push(serde_json::json!([
            1000 + i,
            format!("noise-{i:07}"),
            "noise_schema",
            "ACC-NOISE",
            "2026-10-05T00:00:00Z",
            null,
            null,
            "/v1/noise-padding-padding-padding",
            null,
            null
        ]));
    }
    sf_exec(
        &schema,
        &serde_json::json!([
            {"sql": format!("CREATE TABLE {table} (seq INT, event_id VARCHAR, schema_name VARCHAR, account_id VARCHAR, ts TIMESTAMP_TZ, ingested_at TIMESTAMP_NTZ, gb NUMBER(20, 6), endpoint VARCHAR, region VARCHAR, bucket VARCHAR)")},
            {"sql": format!("INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"), "rows": rows},
        ]),
    );
    (schema, table)
}

/// Togai's column aliases, quoted: Snowflake upper-cases unquoted names. (The column is not
/// called `id`: the emulator drops an alias equal to its column, `id AS "id"`, and upper-cases it.)
pub(crate) fn sf_query(table: &str) -> String {
    format!(
        "SELECT event_id AS \"id\", schema_name AS \"schemaName\", account_id AS \"accountId\", ts AS \"timestamp\", ingested_at AS \"ingestedAt\",\n\
         gb AS \"attributes.gb\", endpoint AS \"dimensions.endpoint\", region AS \"dimensions.region\", bucket AS \"dimensions.bucket\"\n\
         FROM {table}\nWHERE ts >= ${{startTime}} AND ts < ${{endTime}}\nORDER BY seq\n"
    )
}

pub(crate) enum Auth {
    Password(&'static str),
    KeyPair,
}

pub(crate) fn sf_source(url: &str, schema: &str, auth: Auth, extra: &str) -> String {
    let auth = match auth {
        Auth::Password(var) => format!("password = \"${{{var}}}\"\n"),
        Auth::KeyPair => format!("private_key_file = \"{}\"\n", env("BILLRUN_TEST_SF_PRIVATE_KEY_FILE")),
    };
    format!(
        "[[sources]]\nname = \"events\"\ntype = \"snowflake\"\naccount = \"{}\"\nuser = \"{}\"\n{auth}url = \"{url}\"\ndatabase = \"{}\"\nschema = \"{schema}\"\nwarehouse = \"BILLING_WH\"\nquery_file = \"usage.sql\"\nretries = 1\n{extra}",
        env("BILLRUN_TEST_SF_ACCOUNT"),
        env("BILLRUN_TEST_SF_USER"),
        env("BILLRUN_TEST_SF_DATABASE"),
    )
}

#[test]
fn snowflake_source_gives_the_same_invoices_as_local_files() {
    let (schema, table) = sf_load(0);
    let s = scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::KeyPair, ""), &[("usage.sql", &sf_query(&table))]);
    let out = s.path().join("out");
    let report = run_to(s.path(), &out).unwrap();
    assert_eq!(report.events_read, 28);
    assert_same_outputs(&out, "snowflake");
}

/// The password reaches the emulator (which checks it) and nothing else; a wrong one is a clear
/// login error that names the connector, the source and the query.
#[test]
fn snowflake_password_auth_and_a_refused_login() {
    const VAR: &str = "BILLRUN_IT_SF_PASSWORD";
    let (schema, table) = sf_load(0);
    let s = scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::Password(VAR), ""), &[("usage.sql", &sf_query(&table))]);
    let run = |password: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_billrun"))
            .args(["run", "--config"])
            .arg(s.path().join("billrun.toml"))
            .arg("--out")
            .arg(s.path().join("out"))
            .env(VAR, password)
            .env("BILLRUN_LOG", "trace")
            .output()
            .unwrap()
    };
    let wrong = "Wrong-Secret-5d1e-never-logged";
    let o = run(wrong);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success());
    assert!(all.contains("snowflake source `events`: query `SELECT event_id AS \"id\""), "{all}");
    assert!(all.contains("login refused") && all.contains("Incorrect username or password"), "{all}");
    assert!(!all.contains(wrong), "the password is in the output");
    assert!(!s.path().join("out").exists(), "nothing written");

    let right = env("BILLRUN_TEST_SF_PASSWORD");
    let o = run(&right);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{all}");
    assert!(!all.contains(&right), "the password is in the run's output or logs");
    for (k, v) in snapshot(&s.path().join("out")) {
        assert!(!String::from_utf8_lossy(&v).contains(&right), "{k} holds the password");
    }
}

#[test]
fn snowflake_sql_errors_name_the_connector_and_the_query() {
    let (schema, _) = sf_load(0);
    let s = scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::KeyPair, ""), &[("usage.sql", &sf_query("NO_SUCH_TABLE"))]);
    let e = run_to(s.path(), &s.path().join("out")).err().expect("a missing table fails the run");
    let msg = e.to_string();
    assert!(msg.starts_with("snowflake source `events`: query `SELECT event_id AS \"id\""), "{msg}");
    assert!(msg.to_lowercase().contains("no_such_table"), "{msg}");
    assert!(!msg.contains("gave up"), "SQL errors are not retried: {msg}");

    // a FLOAT quantity is refused, naming the column
    let q = "SELECT event_id AS \"id\", schema_name AS \"schemaName\", account_id AS \"accountId\", ts AS \"timestamp\", CAST(gb AS FLOAT) AS \"attributes.gb\" FROM EVENTS WHERE ts >= ${startTime} AND ts < ${endTime}";
    let s = scenario(&sf_source(&env("BILLRUN_TEST_SF_URL"), &schema, Auth::KeyPair, ""), &[("usage.sql", q)]);
    let msg = run_to(s.path(), &s.path().join("out")).err().expect("a float attribute is refused").to_string();
    assert!(msg.contains("snowflake source `events`") && msg.contains("`attributes.gb`") && msg.contains("binary floating point"), "{msg}");
}

#[test]
fn snowflake_lost_mid_read_fails_cleanly_and_the_same_run_then_succeeds() {
    let (schema, table) = sf_load(400);
    let url = env("BILLRUN_TEST_SF_URL");
    let upstream = url.trim_start_matches("http://").to_string();
    // the login answer passes, the query's answer (~60 KB) is cut
    let relay = Relay::start(0, upstream.clone(), Some(16 * 1024));
    let port = relay.port;
    let s = scenario(&sf_source(&format!("http://127.0.0.1:{port}"), &schema, Auth::KeyPair, ""), &[("usage.sql", &sf_query(&table))]);
    let out = s.path().join("out");
    let e = run_to(s.path(), &out).err().expect("the run must fail when the server goes away");
    let msg = e.to_string();
    assert!(msg.starts_with("snowflake source `events`: query `SELECT event_id AS \"id\""), "{msg}");
    assert!(msg.contains("gave up after 2 attempt(s); nothing was read"), "{msg}");
    assert_eq!(e.exit_code(), 3);
    assert!(!out.exists(), "nothing written");
    relay.wait_stopped();

    let relay = Relay::start(port, upstream, None);
    let report = run_to(s.path(), &out).unwrap();
    assert_eq!(report.events_read, 28 + 400);
    let got = snapshot(&out);
    for (k, v) in local_outputs().iter().filter(|(k, _)| k.starts_with("invoices/")) {
        assert!(got[k] == *v, "{k} differs from the local-files run");
    }
    relay.wait_stopped();
}

/// Types arrive exactly: a 29-digit NUMBER, microsecond NTZ / TZ timestamps, a DATE, a BOOLEAN
/// dimension, NULLs. (A timestamp finer than a microsecond is a bad record, not a truncation: a unit
/// test of `snowflake.rs`, since the emulator's timestamps are microseconds.)
#[test]
fn snowflake_values_are_exact() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, TimestampMicrosecondType};
    let schema = unique("T").to_uppercase();
    sf_exec(
        &schema,
        &serde_json::json!([
            {"sql": "CREATE TABLE T (k INT, event_id VARCHAR, ts TIMESTAMP_NTZ(9), tz TIMESTAMP_TZ, d DATE, amount NUMBER(38, 9), flag BOOLEAN)"},
            {"sql": "INSERT INTO T VALUES (1, 'e1', '2026-10-01 00:00:00.123456', '2026-10-01 02:00:00+02:00', '2026-10-02', 12345678901234567890.123456789, TRUE), \
                     (2, 'e2', '2026-10-01 00:00:01', NULL, NULL, NULL, NULL), \
                     (3, 'e3', '2026-10-03 00:00:00', NULL, NULL, -0.000000001, FALSE)"},
        ]),
    );
    let cfg: billrun_connectors::SourceConfig = toml::from_str(&format!(
        "type = \"snowflake\"\nname = \"t\"\naccount = \"{}\"\nuser = \"{}\"\nprivate_key_file = \"{}\"\nurl = \"{}\"\ndatabase = \"{}\"\nschema = \"{schema}\"\n\
         query = \"SELECT event_id AS \\\"id\\\", 'x' AS \\\"schemaName\\\", 'acct' AS \\\"accountId\\\", ts AS \\\"timestamp\\\", tz AS \\\"ingestedAt\\\", amount AS \\\"attributes.amount\\\", flag AS \\\"dimensions.flag\\\" FROM T ORDER BY k\"\n",
        env("BILLRUN_TEST_SF_ACCOUNT"),
        env("BILLRUN_TEST_SF_USER"),
        env("BILLRUN_TEST_SF_PRIVATE_KEY_FILE"),
        env("BILLRUN_TEST_SF_URL"),
        env("BILLRUN_TEST_SF_DATABASE"),
    ))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(billrun_connectors::read_source(&cfg, &billrun_connectors::ReadWindow::default())).unwrap();
    assert!(out.bad_records.is_empty(), "{:?}", out.bad_records);
    let b = &out.batches[0];
    billrun_connectors::schema::check_canonical(b).unwrap();
    assert_eq!(b.num_rows(), 3);
    let ts = b.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_790_812_800_123_456);
    let ing = b.column_by_name("ingested_at").unwrap().as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ing.value(0), 1_790_812_800_000_000, "TIMESTAMP_TZ +02:00 is converted to UTC");
    assert!(ing.is_null(1));
    let amount = b.column_by_name("attributes.amount").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(amount.scale(), 9);
    assert_eq!(amount.value(0), 12_345_678_901_234_567_890_123_456_789);
    assert!(amount.is_null(1));
    assert_eq!(amount.value(2), -1);
    let flag = b.column_by_name("dimensions.flag").unwrap().as_string::<i32>();
    assert_eq!((flag.value(0), flag.is_null(1), flag.value(2)), ("true", true, "false"));
}
