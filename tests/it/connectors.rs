//! billrun end to end with its usage in real servers (started by `scripts/test`): the quickstart
//! scenario read from each connector gives byte-identical outputs to the same usage read from
//! local files; a server lost mid-read fails the run cleanly and writes nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billrun::run::{run, RunOptions};

use crate::{copy_dir, repo, snapshot};

pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test needs the real servers; run `scripts/test` (it starts them and exports {name})")
    })
}

pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// The quickstart's events, in the order the local files source reads them (files by path,
/// rows in file order).
pub(crate) struct Ev {
    pub id: String,
    pub schema: String,
    pub account: String,
    pub ts: String,
    pub ingested: Option<String>,
    pub gb: Option<String>,
    pub dims: Vec<(String, String)>,
}

pub(crate) fn quickstart_events() -> Vec<Ev> {
    let dir = repo().join("fixtures/01-quickstart/usage");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let gb =
                v["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "gb").map(|a| a["value"].as_str().unwrap().to_string());
            let dims = v["dimensions"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
                .unwrap_or_default();
            out.push(Ev {
                id: v["id"].as_str().unwrap().into(),
                schema: v["schemaName"].as_str().unwrap().into(),
                account: v["accountId"].as_str().unwrap().into(),
                ts: v["timestamp"].as_str().unwrap().into(),
                ingested: v["ingestedAt"].as_str().map(String::from),
                gb,
                dims,
            });
        }
    }
    assert_eq!(out.len(), 28);
    out
}

/// A copy of the quickstart whose `[[sources]]` is `source_toml`, plus `extra` files.
pub(crate) fn scenario(source_toml: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/01-quickstart"), t.path());
    let cfg = std::fs::read_to_string(t.path().join("billrun.toml")).unwrap();
    let block = "[[sources]]\nname = \"events\"\ntype = \"files\"\npath = \"usage\"\n";
    assert!(cfg.contains(block));
    std::fs::write(t.path().join("billrun.toml"), cfg.replace(block, source_toml)).unwrap();
    std::fs::remove_dir_all(t.path().join("usage")).unwrap();
    for (name, text) in extra {
        std::fs::write(t.path().join(name), text).unwrap();
    }
    t
}

pub(crate) fn run_to(dir: &Path, out: &Path) -> Result<billrun::run::RunReport, billrun::run::RunError> {
    run(&RunOptions { config: dir.join("billrun.toml"), out: Some(out.to_path_buf()), ..Default::default() })
}

pub(crate) fn local_outputs() -> std::collections::BTreeMap<String, Vec<u8>> {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/01-quickstart"), t.path());
    run_to(t.path(), &t.path().join("out")).unwrap();
    snapshot(&t.path().join("out"))
}

pub(crate) fn assert_same_outputs(got: &Path, what: &str) {
    let want = local_outputs();
    let got = snapshot(got);
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: the same files");
    assert!(got.keys().any(|k| k.starts_with("invoices/")));
    for (k, v) in &want {
        assert!(got[k] == *v, "{what}: {k} differs from the local-files run:\n{}", String::from_utf8_lossy(&got[k]));
    }
}

// ---------------------------------------------------------------- Postgres

pub(crate) fn psql(sql: &str, stdin: Option<&str>) {
    let mut cmd = std::process::Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        &env("BILLRUN_TEST_PG_HOST"),
        "-p",
        &env("BILLRUN_TEST_PG_PORT"),
        "-U",
        &env("BILLRUN_TEST_PG_USER"),
        "-d",
        &env("BILLRUN_TEST_PG_DB"),
        "-c",
        sql,
    ])
    .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("psql (installed by tests/support/servers/10-postgres.sh)");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "psql failed: {sql}");
}

pub(crate) fn csv_field(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some(s) => format!("\"{}\"", s.replace('"', "\"\"")),
    }
}

/// Load the quickstart events (plus `noise` unknown-schema events) into a new table.
pub(crate) fn pg_load(noise: usize) -> String {
    let t = unique("quickstart");
    psql(&format!("CREATE TABLE {t} (seq int, id text, schema_name text, account_id text, ts timestamptz, ingested_at timestamptz, gb numeric, endpoint text, region text, bucket text)"), None);
    let mut data = String::new();
    let dim = |e: &Ev, k: &str| e.dims.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    for (i, e) in quickstart_events().iter().enumerate() {
        let row = [
            Some(i.to_string()),
            Some(e.id.clone()),
            Some(e.schema.clone()),
            Some(e.account.clone()),
            Some(e.ts.clone()),
            e.ingested.clone(),
            e.gb.clone(),
            dim(e, "endpoint"),
            dim(e, "region"),
            dim(e, "bucket"),
        ];
        data.push_str(&row.iter().map(|v| csv_field(v.as_deref())).collect::<Vec<_>>().join(","));
        data.push('\n');
    }
    for i in 0..noise {
        data.push_str(&format!(
            "{},noise-{i:07},noise_schema,ACC-NOISE,2026-10-05T00:00:00Z,,,/v1/noise-padding-padding-padding,,\n",
            1000 + i
        ));
    }
    psql(&format!("\\copy {t} FROM STDIN WITH (FORMAT csv)"), Some(&data));
    t
}

pub(crate) fn pg_query(table: &str) -> String {
    format!(
        "SELECT id, schema_name AS \"schemaName\", account_id AS \"accountId\", ts AS \"timestamp\", ingested_at AS \"ingestedAt\",\n\
         gb AS \"attributes.gb\", endpoint AS \"dimensions.endpoint\", region AS \"dimensions.region\", bucket AS \"dimensions.bucket\"\n\
         FROM {table}\nWHERE ts >= ${{startTime}} AND ts < ${{endTime}}\nORDER BY seq\n"
    )
}

pub(crate) fn pg_source(port: &str) -> String {
    format!(
        "[[sources]]\nname = \"events\"\ntype = \"postgres\"\nhost = \"{}\"\nport = {port}\nuser = \"{}\"\ndbname = \"{}\"\nquery_file = \"usage.sql\"\nretries = 1\n",
        env("BILLRUN_TEST_PG_HOST"),
        env("BILLRUN_TEST_PG_USER"),
        env("BILLRUN_TEST_PG_DB")
    )
}

/// A password given through `${ENV}` reaches the server but no log line, output file, manifest
/// or message of a successful run (this server trusts local connections, so any password works).
#[test]
fn a_postgres_password_never_appears_in_a_successful_run() {
    const SECRET: &str = "pg-Secret-7f3a9c-do-not-leak";
    let table = pg_load(0);
    let source =
        pg_source(&env("BILLRUN_TEST_PG_PORT")).replace("retries = 1\n", "retries = 1\npassword = \"${BILLRUN_IT_PG_PASSWORD}\"\n");
    assert!(source.contains("password"));
    let s = scenario(&source, &[("usage.sql", &pg_query(&table))]);
    let out = s.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_billrun"))
        .args(["run", "--json", "--config"])
        .arg(s.path().join("billrun.toml"))
        .arg("--out")
        .arg(&out)
        .env("BILLRUN_IT_PG_PASSWORD", SECRET)
        .env("BILLRUN_LOG", "trace")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{all}");
    assert!(!all.contains(SECRET), "the password is in the run's output or logs");
    let files = snapshot(&out);
    assert!(files.keys().any(|k| k.ends_with("/manifest.json")) && files.len() > 3);
    for (k, v) in files {
        assert!(!String::from_utf8_lossy(&v).contains(SECRET), "{k} holds the password");
    }
}

#[test]
fn postgres_source_gives_the_same_invoices_as_local_files() {
    let table = pg_load(0);
    let s = scenario(&pg_source(&env("BILLRUN_TEST_PG_PORT")), &[("usage.sql", &pg_query(&table))]);
    let out = s.path().join("out");
    let report = run_to(s.path(), &out).unwrap();
    assert_eq!(report.events_read, 28);
    assert_same_outputs(&out, "postgres");
}

/// A TCP relay to Postgres that can cut the connection after `limit` bytes from the server and
/// then stop accepting — the server going away mid-read, as the client sees it.
pub(crate) struct Relay {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(port: u16, upstream: String, limit: Option<u64>) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let server = TcpStream::connect(&upstream).unwrap();
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || pump(c2, s2, None, None));
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || pump(server, client, limit, Some(stop3)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // dropping the listener: new connections are refused
        });
        Relay { port, stop, thread: Some(thread) }
    }

    pub fn wait_stopped(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<u64>, stop: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(l) = limit {
            if sent + n as u64 > l {
                // the server "stops": no more listening, both sides cut
                if let Some(s) = &stop {
                    s.store(true, Ordering::SeqCst);
                }
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn postgres_lost_mid_read_fails_cleanly_and_the_same_run_then_succeeds() {
    let table = pg_load(50_000);
    let upstream = format!("{}:{}", env("BILLRUN_TEST_PG_HOST"), env("BILLRUN_TEST_PG_PORT"));
    let relay = Relay::start(0, upstream.clone(), Some(256 * 1024));
    let port = relay.port;
    let s = scenario(&pg_source(&port.to_string()), &[("usage.sql", &pg_query(&table))]);
    let out = s.path().join("out");

    let e = run_to(s.path(), &out).err().expect("the run must fail when the server goes away");
    let msg = e.to_string();
    assert!(msg.starts_with("postgres source `events`: query `SELECT id, schema_name"), "{msg}");
    assert!(msg.contains("gave up after 2 attempt(s); nothing was read"), "{msg}");
    assert_eq!(e.exit_code(), 3);
    assert!(!out.exists(), "nothing written");
    assert!(std::fs::read_dir(s.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("staging")));
    relay.wait_stopped();

    // the server is back (same port): the same run succeeds
    let relay = Relay::start(port, upstream, None);
    let report = run_to(s.path(), &out).unwrap();
    assert_eq!(report.events_read, 28 + 50_000);
    let got = snapshot(&out);
    let want = local_outputs();
    for (k, v) in want.iter().filter(|(k, _)| k.starts_with("invoices/")) {
        assert!(got[k] == *v, "{k} differs from the local-files run");
    }
    relay.wait_stopped();
}

// ---------------------------------------------------------------- S3

#[test]
fn s3_source_over_date_partitions_gives_the_same_invoices_as_local_files() {
    use object_store::{path::Path as Key, ObjectStoreExt, PutPayload};
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(env("BILLRUN_TEST_S3_ENDPOINT"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(env("BILLRUN_TEST_S3_BUCKET"))
        .with_access_key_id(env("BILLRUN_TEST_S3_KEY_ID"))
        .with_secret_access_key(env("BILLRUN_TEST_S3_SECRET"))
        .build()
        .unwrap();
    let prefix = unique("lake");
    // the quickstart's NDJSON lines, one object per UTC day: usage/dt=YYYY-MM-DD/events.ndjson
    let mut days: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let dir = repo().join("fixtures/01-quickstart/usage");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let day = v["timestamp"].as_str().unwrap()[..10].to_string();
            let e = days.entry(day).or_default();
            e.push_str(line);
            e.push('\n');
        }
    }
    // a partition outside the window: never listed, so its garbage is never read
    days.insert("2026-08-31".into(), "garbage that would be a bad record\n".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (day, text) in &days {
            store
                .put(&Key::from(format!("{prefix}/usage/dt={day}/events.ndjson")), PutPayload::from(text.clone().into_bytes()))
                .await
                .unwrap();
        }
    });
    let toml = format!(
        "[[sources]]\nname = \"events\"\ntype = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\nallow_http = true\naccess_key_id = \"${{BILLRUN_TEST_S3_KEY_ID}}\"\nsecret_access_key = \"${{BILLRUN_TEST_S3_SECRET}}\"\nprefix = \"{prefix}/usage\"\npartition = \"dt={{YYYY}}-{{MM}}-{{DD}}\"\nformat = \"ndjson\"\n",
        env("BILLRUN_TEST_S3_BUCKET"),
        env("BILLRUN_TEST_S3_ENDPOINT"),
    );
    let s = scenario(&toml, &[]);
    let out = s.path().join("out");
    let report = run_to(s.path(), &out).unwrap();
    assert_eq!(report.events_read, 28);
    assert_same_outputs(&out, "s3");
}

#[test]
fn the_store_can_be_an_s3_bucket_and_commits_once() {
    use object_store::{path::Path as Key, ObjectStoreExt};
    let prefix = unique("store");
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("fixtures/01-quickstart"), t.path());
    let cfg = std::fs::read_to_string(t.path().join("billrun.toml")).unwrap();
    let local = "[store]\ntype = \"local\"\npath = \"out\"\n";
    assert!(cfg.contains(local));
    let s3 = format!(
        "[store]\ntype = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\nallow_http = true\naccess_key_id = \"${{BILLRUN_TEST_S3_KEY_ID}}\"\nsecret_access_key = \"${{BILLRUN_TEST_S3_SECRET}}\"\nprefix = \"{prefix}\"\n",
        env("BILLRUN_TEST_S3_BUCKET"),
        env("BILLRUN_TEST_S3_ENDPOINT"),
    );
    std::fs::write(t.path().join("billrun.toml"), cfg.replace(local, &s3)).unwrap();
    let opts = RunOptions { config: t.path().join("billrun.toml"), ..Default::default() };
    let report = run(&opts).unwrap();
    assert_eq!(report.store, format!("s3://{}/{prefix}", env("BILLRUN_TEST_S3_BUCKET")));
    // every file of the local run, byte for byte, under the prefix, the ledger among them
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(env("BILLRUN_TEST_S3_ENDPOINT"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(env("BILLRUN_TEST_S3_BUCKET"))
        .with_access_key_id(env("BILLRUN_TEST_S3_KEY_ID"))
        .with_secret_access_key(env("BILLRUN_TEST_S3_SECRET"))
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let want = local_outputs();
    assert!(want.contains_key("ledger/0000000001.json"));
    let listed = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            use futures::TryStreamExt;
            use object_store::ObjectStore;
            let mut all = std::collections::BTreeMap::new();
            let objects: Vec<_> = store.list(Some(&Key::from(prefix.as_str()))).try_collect().await.unwrap();
            for o in objects {
                let k = o.location.as_ref().strip_prefix(&format!("{prefix}/")).unwrap().to_string();
                let v = store.get(&o.location).await.unwrap().bytes().await.unwrap().to_vec();
                all.insert(k, (v, o.last_modified));
            }
            all
        })
    };
    let first = listed(&rt);
    for (k, v) in &want {
        // (a manifest's `performance` is of one execution: left out, as `snapshot` does)
        let same = first.get(k).is_some_and(|g| billrun::scenario::comparable(k, g.0.clone()) == *v);
        assert!(same, "{k} differs from the local run");
    }
    assert!(!first.contains_key(".billrun.lock"), "the lock is released");
    // a second run of the same as-of date issues nothing new and rewrites no object
    let again = run(&opts).unwrap();
    assert!(again.invoices.iter().all(|b| b.invoice.status == "DRAFT"), "nothing issued twice");
    assert_eq!(again.ledger.generation, 1);
    let second = listed(&rt);
    assert_eq!(first, second, "no object was rewritten");
}

// ---------------------------------------------------------------- Prometheus

/// The quickstart with its api calls as Prometheus counters (tests/support/prometheus_usage.py:
/// hourly samples, a running base and a counter reset): the api meter sums the hourly increases
/// instead of counting events, the storage events stay in a file. The same usage, so the same
/// invoices as the quickstart from local files.
#[test]
fn prometheus_counters_give_the_same_invoices_as_local_files() {
    let toml = format!(
        "[[sources]]\nname = \"api-metrics\"\ntype = \"prometheus\"\nurl = \"{}\"\nquery = \"billrun_api_requests_total\"\nmode = \"counter\"\nstep_secs = 3600\naccount_label = \"account_id\"\nschema_name = \"api_call\"\nattribute = \"requests\"\nscale = 0\n\n[[sources]]\nname = \"storage\"\ntype = \"files\"\npath = \"usage-storage\"\n",
        env("BILLRUN_TEST_PROM_URL")
    );
    let s = scenario(&toml, &[]);
    std::fs::create_dir_all(s.path().join("usage-storage")).unwrap();
    std::fs::copy(
        repo().join("fixtures/01-quickstart/usage/2026-10-storage.ndjson"),
        s.path().join("usage-storage/2026-10-storage.ndjson"),
    )
    .unwrap();
    let meters = s.path().join("catalog/usage-meters.yaml");
    let text = std::fs::read_to_string(&meters).unwrap();
    let old = "    aggregation: COUNT\n    eventSchemaName: api_call\n    computations:\n      - order: 1\n        computation: '1'\n";
    assert!(text.contains(old));
    std::fs::write(&meters, text.replace(old, "    aggregation: SUM\n    eventSchemaName: api_call\n    computations:\n      - order: 1\n        computation: '{\"var\": \"attribute.requests\"}'\n")).unwrap();
    let schemas = s.path().join("catalog/event-schemas.yaml");
    let text = std::fs::read_to_string(&schemas).unwrap();
    let old = "  - name: api_call\n    attributes: []\n";
    assert!(text.contains(old));
    std::fs::write(&schemas, text.replace(old, "  - name: api_call\n    attributes: [{name: requests}]\n")).unwrap();

    let out = s.path().join("out");
    run_to(s.path(), &out).unwrap();
    let want = local_outputs();
    let got = snapshot(&out);
    let invoices = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
        m.iter().filter(|(k, _)| k.starts_with("invoices/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    let (g, w) = (invoices(&got), invoices(&want));
    assert_eq!(g.iter().map(|x| &x.0).collect::<Vec<_>>(), w.iter().map(|x| &x.0).collect::<Vec<_>>());
    for ((k, a), (_, b)) in g.iter().zip(&w) {
        assert!(a == b, "prometheus: {k} differs from the local-files run:\n{}", String::from_utf8_lossy(a));
    }
}

// ---------------------------------------------------------------- examples

#[test]
fn every_connector_example_config_parses() {
    let dir = repo().join("connectors/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            let cfg = billrun::config::parse(&text, &p, &|k| Some(format!("<{k}>"))).unwrap_or_else(|d| panic!("{}: {d}", p.display()));
            assert!(!cfg.sources.is_empty());
            n += 1;
        }
    }
    assert!(n >= 1, "no example in {}", dir.display());
}
