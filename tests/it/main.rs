//! The integration-test binary: the CLI as a user runs it, and the pipeline's invariants as
//! property tests over generated usage.

mod cli;
mod connectors;
mod hostile;
mod nightly;
mod properties;
mod pushdown;
mod rerate;
mod snowflake;

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copy a folder recursively (skipping expected/ and out/).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "expected" || name == "out" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

/// Every file under `root` with its bytes, by relative path.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue; // the store's lock file (it holds the last writer's pid)
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                // a manifest's `performance` (timings of one execution) left out, compact JSON
                // indented (`scenario::comparable`)
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let bytes = billrun::scenario::comparable(&rel, std::fs::read(&p).unwrap());
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}
