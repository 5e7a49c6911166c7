//! The golden-fixture harness: every scenario folder under fixtures/ is run through the real
//! pipeline and compared with its expected/ outputs and its hand-computed hand.toml.
//! `BILLRUN_BLESS=1 cargo test --test golden` rewrites expected/ (hand.toml is still checked).
//! Every scenario runs four times: as configured, with its input split (in chunks of arrival
//! where files are read twice, and partitioned by account), and with every meter evaluated in
//! polars rather than natively where a meter is simple (src/tally.rs).

fn main() {
    let bless = std::env::var("BILLRUN_BLESS").is_ok_and(|v| v == "1");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let (_, failed) = billrun::scenario::run_scenarios(&[root.clone()], bless);
    // and again with one event in memory at once, which splits every input: files read twice
    // and ingested in chunks of arrival (src/twopass.rs) where a scenario allows it, and read
    // once and partitioned by account (src/partition.rs); the outputs must be the same files,
    // byte for byte
    use billrun::scenario::Mode;
    eprintln!("-- again, in chunks where files are read twice (memory_rows = 1)");
    let (_, failed_chunked) =
        billrun::scenario::run_scenarios_with(&[root.clone()], false, Mode { memory_rows: Some(1), one_pass: false, ..Mode::default() });
    eprintln!("-- again, every input read once and partitioned by account (memory_rows = 1)");
    let (_, failed_partitioned) =
        billrun::scenario::run_scenarios_with(&[root.clone()], false, Mode { memory_rows: Some(1), one_pass: true, ..Mode::default() });
    eprintln!("-- again, every meter evaluated in polars (the definition of the native simple meters)");
    let (_, failed_polars) = billrun::scenario::run_scenarios_with(&[root], false, Mode { polars_meters: true, ..Mode::default() });
    if failed + failed_chunked + failed_partitioned + failed_polars > 0 {
        std::process::exit(1);
    }
}
