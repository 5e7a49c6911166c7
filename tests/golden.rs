//! The golden-fixture harness: every scenario folder under fixtures/ is run through the real
//! pipeline and compared with its expected/ outputs and its hand-computed hand.toml.
//! `BILLRUN_BLESS=1 cargo test --test golden` rewrites expected/ (hand.toml is still checked).

fn main() {
    let bless = std::env::var("BILLRUN_BLESS").is_ok_and(|v| v == "1");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let (_, failed) = billrun::scenario::run_scenarios(&[root], bless);
    if failed > 0 {
        std::process::exit(1);
    }
}
