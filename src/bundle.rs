//! Invoice document bundles (`[output] invoice_documents = "bundles"`): the JSON, HTML and text
//! documents of a chunk of invoices in one zstd-compressed tar file (`.tar.zst`; `tar --zstd -xf`).
//!
//! Writing one file per document costs more than its bytes on most file systems (an inode and
//! a directory entry each) and object stores (a request each); a run of 100 000 accounts writes
//! 300 000 documents. A bundle holds the very documents the per-invoice layout writes, under
//! the same names below `invoices/` (`<account>/<invoice id>.json`), so `tar -x` gives the
//! per-invoice layout back. Members carry fixed metadata (mode 0644, mtime 0, no owner) and the
//! compression is single-threaded at a fixed level, so the same documents always give the same
//! bytes and a re-run rewrites nothing. Invoices of one plan repeat themselves: a bundle
//! compresses 50–70× (64 MB of documents of the benchmark's 2048 invoices to about 1 MB), so the
//! store holds and syncs a few MB where the per-invoice layout writes gigabytes.
//!
//! The ledger indexes a member as `<bundle key>#<member name>` ([`member_key`]).

use std::io::Read;

/// The zstd level of a bundle (zstd's default; level 1 compresses these documents no faster).
const LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("invoice bundle {key}: {message}")]
pub struct BundleError {
    pub key: String,
    pub message: String,
}

/// The ledger's key of a bundle member.
pub fn member_key(bundle: &str, member: &str) -> String {
    format!("{bundle}#{member}")
}

/// `(bundle key, member name)` of a member key; `None` for a key of its own file. Unambiguous
/// because no store key of a document has a `#` of its own: `run::safe_segment` escapes it in
/// account and invoice ids (`%23`), and bundle names are made of the as-of date and numbers.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('#')
}

/// A compressed tar of `members` (name, bytes), in the order given.
pub fn pack<'a>(key: &str, members: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<u8>, BundleError> {
    let err = |m: String| BundleError { key: key.to_string(), message: m };
    let mut b = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(|e| err(e.to_string()))?);
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, bytes).map_err(|e| err(format!("member {name}: {e}")))?;
    }
    b.into_inner().and_then(|z| z.finish()).map_err(|e| err(e.to_string()))
}

/// Every member of a bundle, (name, bytes), in the bundle's order.
pub fn unpack(key: &str, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let err = |m: String| BundleError { key: key.to_string(), message: m };
    let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(bytes).map_err(|e| err(e.to_string()))?);
    let mut out = Vec::new();
    for e in a.entries().map_err(|e| err(e.to_string()))? {
        let mut e = e.map_err(|e| err(e.to_string()))?;
        let name = e.path().map_err(|e| err(e.to_string()))?.to_string_lossy().into_owned();
        let mut v = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut v).map_err(|e| err(format!("member {name}: {e}")))?;
        out.push((name, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_in_order_and_bytes_are_reproducible() {
        let long = format!("{}/inv.{}.json", "a".repeat(120), "b".repeat(120));
        let members: Vec<(&str, &[u8])> = vec![("ACC-1/inv.1.json", b"{}\n"), ("ACC-1/inv.1.html", b""), (long.as_str(), b"x")];
        let one = pack("k.tar.zst", members.iter().copied()).unwrap();
        assert_eq!(one, pack("k.tar.zst", members.iter().copied()).unwrap(), "same members, same bytes");
        let back = unpack("k.tar.zst", &one).unwrap();
        let want: Vec<(String, Vec<u8>)> = members.iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect();
        assert_eq!(back, want);
        assert!(unpack("k.tar.zst", &one[..one.len() / 2]).is_err(), "a cut bundle is an error, not fewer invoices");
        assert_eq!(
            split_key(&member_key("invoices/2026-11-06/000001-00000.tar.zst", "A/x.json")),
            Some(("invoices/2026-11-06/000001-00000.tar.zst", "A/x.json"))
        );
        assert_eq!(split_key("invoices/A/x.json"), None);
    }

    #[test]
    fn a_member_outside_the_bundle_is_an_error_naming_the_bundle() {
        let e = pack("k.tar.zst", [("../escape.json", b"{}".as_slice())]).unwrap_err();
        assert!(e.to_string().starts_with("invoice bundle k.tar.zst: member ../escape.json"), "{e}");
    }
}
