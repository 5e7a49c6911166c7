//! Fault points for crash tests. With `BILLRUN_PAUSE_AT=<point>[:<n>]` in the environment, the
//! n-th time (default 1) the run reaches `<point>` it prints `billrun: paused at <point>` to
//! stderr and waits (for `BILLRUN_PAUSE_SECS` seconds, else for ever), so a test can kill it
//! there with SIGKILL or start a second run meanwhile. Without the variable a point costs
//! one cached lookup. Points: `reading`, `rating`, `settling`, `writing` (after each new object),
//! `committing` (before the ledger write), `committed` (after it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// (point, n-th hit, pause seconds).
fn target() -> &'static Option<(String, u64, Option<u64>)> {
    static T: OnceLock<Option<(String, u64, Option<u64>)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var("BILLRUN_PAUSE_AT").ok()?;
        let (p, n) = v.split_once(':').map_or((v.as_str(), 1), |(p, n)| (p, n.parse().unwrap_or(1)));
        let secs = std::env::var("BILLRUN_PAUSE_SECS").ok().and_then(|s| s.parse().ok());
        Some((p.to_string(), n, secs))
    })
}

/// Mark that the run reached `name`.
pub fn point(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((p, n, secs)) = target() else { return };
    if p != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("billrun: paused at {name}");
        match secs {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs(*s)),
            None => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
        }
    }
}
