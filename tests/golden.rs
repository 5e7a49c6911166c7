//! The golden-fixture harness: every scenario folder under fixtures/ is run through the real
//! pipeline and compared with its expected/ outputs and its hand-computed hand.toml.
//! `BILLRUN_BLESS=1 cargo test --test golden` rewrites expected/ (hand.toml is still checked).
//! Every scenario runs twice: as configured, and with its input partitioned by account.

fn main() {
    let bless = std::env::var("BILLRUN_BLESS").is_ok_and(|v| v == "1");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let (_, failed) = billrun::scenario::run_scenarios(&[root.clone()], bless);
    // and again with every input partitioned by account (one event in memory at once): the
    // outputs must be the same files, byte for byte
    eprintln!("-- again, partitioned (memory_rows = 1)");
    let (_, failed_partitioned) = billrun::scenario::run_scenarios_with(&[root], false, Some(1));
    if failed + failed_partitioned > 0 {
        std::process::exit(1);
    }
}
