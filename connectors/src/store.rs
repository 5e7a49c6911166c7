//! Stores (sinks and the previous state of billrun): the [`Store`] trait, an incremental store
//! of whole objects with a conditional create and a single-writer lock, and [`LocalStore`], its
//! local-directory implementation (the S3 one is [`crate::s3::S3Store`]).
//!
//! Keys are relative `/`-separated paths; a key that could escape the store is refused
//! ([`check_key`]). Names starting with `.` are the store's own (temporary files, the lock):
//! [`Store::list`] never returns a key with such a segment.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ConnectorError, ErrorKind};

const CONNECTOR: &str = "local store";

fn err(location: &Path, message: impl Into<String>) -> ConnectorError {
    ConnectorError::new(CONNECTOR, "store", location.display().to_string(), ErrorKind::Io, message)
}

/// Outcome of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now holds the given bytes.
    Created,
    /// The object existed already; it was left as it was.
    AlreadyExists,
}

/// A store billrun reads its previous state from and writes a run's outputs to. Keys are
/// relative `/`-separated paths checked by [`check_key`] (never escape the store root/prefix).
pub trait Store: Send + Sync {
    /// A path or `s3://bucket/prefix` (never a secret).
    fn describe(&self) -> String;
    /// Whole object, or None when absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ConnectorError>;
    /// Keys under `prefix` ("" = all; otherwise a key prefix such as "drafts/"), recursive,
    /// sorted, relative to the store root; never the store's own temp or lock objects.
    ///
    /// `prefix` is matched as a string (`"drafts/inv-"` lists `drafts/inv-1.json`); keys with a
    /// segment starting with `.` are never listed.
    fn list(&self, prefix: &str) -> Result<Vec<String>, ConnectorError>;
    /// Write whole: a reader sees the old bytes or the new ones, never a part.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError>;
    /// [`Store::put`], whole as well, but durable only after the next [`Store::sync`]: for the
    /// many objects of a run, one barrier instead of one per object.
    fn put_deferred(&self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        self.put(key, bytes)
    }
    /// Make every [`Store::put_deferred`] so far durable.
    fn sync(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
    /// Create only if absent: of two concurrent callers exactly one gets `Created`.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<Created, ConnectorError>;
    /// Remove (absent is fine).
    fn delete(&self, key: &str) -> Result<(), ConnectorError>;
    /// The store's single-writer lock, held until the guard drops. When another run holds it:
    /// an error whose message says another run is writing this store (and what is known of it).
    fn lock(&self) -> Result<Box<dyn StoreLock>, ConnectorError>;
}

/// The single-writer lock of a [`Store`] (see [`Store::lock`]); released when dropped.
pub trait StoreLock: Send {}

/// Name of the lock object at the root of a store (hidden from [`Store::list`]).
pub const LOCK_NAME: &str = ".billrun.lock";

/// Check that a key stays inside the store: relative, no empty, `.` or `..` segments.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.starts_with('/') || key.contains('\\') || key.contains('\0') {
        return Err(format!("store key `{key}` is not a relative path"));
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("store key `{key}` has an empty, `.` or `..` segment"));
    }
    Ok(())
}

/// The directory part of a [`Store::list`] prefix (`"a/b/c"` → `"a/b"`, `"x"` → `""`), checked
/// like a key.
pub(crate) fn prefix_dir(prefix: &str) -> Result<&str, String> {
    let dir = match prefix.rfind('/') {
        None => "",
        Some(i) => &prefix[..i],
    };
    if prefix.contains('\\') || prefix.contains('\0') || (prefix.contains('/') && check_key(dir).is_err()) {
        return Err(format!("store key prefix `{prefix}` is not a relative path without empty, `.` or `..` segments"));
    }
    Ok(dir)
}

/// Whether `key` is one of the store's own objects (a segment starting with `.`).
pub(crate) fn is_hidden(key: &str) -> bool {
    key.split('/').any(|s| s.starts_with('.'))
}

/// What a lock holder writes into the lock: `{"pid", "host", "startedAt"}` as one JSON line.
pub(crate) fn holder_json() -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    serde_json::json!({ "pid": std::process::id(), "host": host, "startedAt": started }).to_string()
}

/// A lock holder's description for an error message: its text, shortened, or `holder unknown`.
pub(crate) fn describe_holder(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "holder unknown".into();
    }
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

// ------------------------------------------------------------------------------- local store

/// Distinguishes the temporary files of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A [`Store`] in a local directory. Objects are files below the root; writes go to a hidden
/// temporary file in the target's directory (`.<name>.tmp-<pid>-<n>`), are fsynced, then
/// renamed over the target (`put`) or hard-linked to it (`put_if_absent`, so the file system
/// must support hard links). Empty directories left by `delete` stay. A killed run can leave
/// hidden temporary files behind; they are never listed.
///
/// The lock is an OS file lock (`flock`) on `<root>/.billrun.lock`, released by the OS when the
/// process ends however it ends. The lock file itself is never removed (removing it would let
/// two runs lock two different files). File locks on network file systems are only as good as
/// the file system's own.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// The lock of a [`LocalStore`]: the open, locked lock file.
struct LocalLock {
    file: File,
}

impl StoreLock for LocalLock {}

impl Drop for LocalLock {
    fn drop(&mut self) {
        // best effort: the next holder rewrites it; closing the file releases the lock
        let _ = self.file.set_len(0);
    }
}

impl LocalStore {
    /// Open (and create, if needed) the store directory `root`.
    pub fn open(root: &Path) -> Result<LocalStore, ConnectorError> {
        std::fs::create_dir_all(root).map_err(|e| err(root, format!("cannot create the store directory: {e}")))?;
        Ok(LocalStore { root: root.to_path_buf() })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, ConnectorError> {
        check_key(key).map_err(|m| ConnectorError::new(CONNECTOR, "store", self.root.display().to_string(), ErrorKind::Config, m))?;
        Ok(self.root.join(key))
    }

    /// Write `bytes` to a new temporary file beside `target` and fsync it.
    fn write_temp(&self, target: &Path, bytes: &[u8]) -> Result<PathBuf, ConnectorError> {
        self.write_temp_with(target, bytes, true)
    }

    fn write_temp_with(&self, target: &Path, bytes: &[u8], durable: bool) -> Result<PathBuf, ConnectorError> {
        let dir = target.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create the directory: {e}")))?;
        let name = target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let written = OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&tmp, format!("cannot write a temporary file: {e}")));
        }
        Ok(tmp)
    }
}

/// Make a rename or link in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err(dir, format!("cannot sync the directory: {e}")))
}

/// Make everything written to the file system of `dir` durable (data and renames): `syncfs(2)`.
#[cfg(target_os = "linux")]
fn sync_fs(dir: &Path) -> Result<(), ConnectorError> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(|e| err(dir, format!("cannot open the store to sync it: {e}")))?;
    // SAFETY: syncfs takes an open descriptor, which `d` holds for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(err(dir, format!("cannot sync the file system: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Elsewhere: a global `sync(2)` (no per-file-system barrier).
#[cfg(all(unix, not(target_os = "linux")))]
fn sync_fs(_dir: &Path) -> Result<(), ConnectorError> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

#[cfg(not(unix))]
fn sync_fs(_dir: &Path) -> Result<(), ConnectorError> {
    Ok(())
}

/// Directories cannot be opened for fsync here; renames are as durable as the file system makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), ConnectorError> {
    Ok(())
}

/// Add the files below `dir` (whose key is `key_dir`, "" for the root) to `out`.
fn walk(dir: &Path, key_dir: &str, out: &mut Vec<String>) -> Result<(), ConnectorError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(err(dir, format!("cannot list: {e}"))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %path.display(), "local store: a file name that is not UTF-8 is not a store key; skipped");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let key = if key_dir.is_empty() { name } else { format!("{key_dir}/{name}") };
        if check_key(&key).is_err() {
            tracing::warn!(path = %path.display(), "local store: a file name that is not a store key; skipped");
            continue;
        }
        let ty = entry.file_type().map_err(|e| err(&path, e.to_string()))?;
        if ty.is_dir() {
            walk(&path, &key, out)?;
        } else if ty.is_file() || (ty.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file())) {
            out.push(key);
        }
    }
    Ok(())
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ConnectorError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&path, format!("cannot read: {e}"))),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, ConnectorError> {
        let dir = prefix_dir(prefix).map_err(|m| err(&self.root, m))?;
        if is_hidden(dir) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        walk(&self.root.join(dir), dir, &mut out)?;
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        let target = self.path(key)?;
        let tmp = self.write_temp(&target, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&target, format!("cannot replace: {e}")));
        }
        sync_dir(target.parent().unwrap_or(&self.root))
    }

    fn put_deferred(&self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        let target = self.path(key)?;
        let tmp = self.write_temp_with(&target, bytes, false)?;
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&target, format!("cannot replace: {e}")));
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), ConnectorError> {
        sync_fs(&self.root)
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<Created, ConnectorError> {
        let target = self.path(key)?;
        let tmp = self.write_temp(&target, bytes)?;
        // link(2) fails with EEXIST, atomically, when the target exists
        let linked = std::fs::hard_link(&tmp, &target);
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "local store: could not remove a temporary file");
        }
        match linked {
            Ok(()) => {
                sync_dir(target.parent().unwrap_or(&self.root))?;
                Ok(Created::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
            Err(e) => Err(err(&target, format!("cannot create (a conditional create needs a file system with hard links): {e}"))),
        }
    }

    fn delete(&self, key: &str) -> Result<(), ConnectorError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path, format!("cannot delete: {e}"))),
        }
    }

    fn lock(&self) -> Result<Box<dyn StoreLock>, ConnectorError> {
        let path = self.root.join(LOCK_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(&path, format!("cannot open the lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = Vec::new();
                let _ = file.read_to_end(&mut holder);
                return Err(err(
                    &path,
                    format!("another run is writing this store ({}); it is locked until that run ends", describe_holder(&holder)),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(&path, format!("cannot lock: {e}"))),
        }
        let written = file.set_len(0).and_then(|()| {
            file.write_all(holder_json().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_data()
        });
        written.map_err(|e| err(&path, format!("cannot write the lock holder: {e}")))?;
        Ok(Box::new(LocalLock { file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        for k in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ""] {
            assert!(check_key(k).is_err(), "{k}");
        }
        assert!(check_key("invoices/acct%2F1/x.json").is_ok());
    }

    fn store() -> (tempfile::TempDir, LocalStore) {
        let t = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&t.path().join("a/new/store")).unwrap();
        (t, s)
    }

    /// Every file below `dir`, hidden ones included (relative, sorted).
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn local_put_get_list_delete() {
        let (_t, s) = store();
        assert!(s.root().is_dir(), "open creates the directory");
        assert_eq!(s.describe(), s.root().display().to_string());
        assert_eq!(s.get("ledger/2026-10.json").unwrap(), None);
        assert!(s.list("").unwrap().is_empty());
        for k in [
            "ledger/2026-10.json",
            "drafts/b.json",
            "drafts/a.json",
            "drafts/sub/c.json",
            "draftsy.json",
            "z.json",
            "invoices/acct%2F1/x.json",
        ] {
            s.put(k, k.as_bytes()).unwrap();
        }
        s.put("z.json", b"second").unwrap();
        assert_eq!(s.get("z.json").unwrap().unwrap(), b"second");
        assert_eq!(s.get("drafts/sub/c.json").unwrap().unwrap(), b"drafts/sub/c.json");
        // the store's own files and anything hidden are never listed
        std::fs::write(s.root().join(".hidden"), b"x").unwrap();
        std::fs::create_dir_all(s.root().join("drafts/.tmpdir")).unwrap();
        std::fs::write(s.root().join("drafts/.tmpdir/d.json"), b"x").unwrap();
        std::fs::write(s.root().join("drafts/.a.json.tmp-1-2"), b"x").unwrap();
        let guard = s.lock().unwrap();
        assert_eq!(
            s.list("").unwrap(),
            [
                "drafts/a.json",
                "drafts/b.json",
                "drafts/sub/c.json",
                "draftsy.json",
                "invoices/acct%2F1/x.json",
                "ledger/2026-10.json",
                "z.json"
            ]
        );
        assert_eq!(s.list("drafts/").unwrap(), ["drafts/a.json", "drafts/b.json", "drafts/sub/c.json"]);
        assert_eq!(s.list("drafts").unwrap(), ["drafts/a.json", "drafts/b.json", "drafts/sub/c.json", "draftsy.json"]);
        assert_eq!(s.list("drafts/s").unwrap(), ["drafts/sub/c.json"]);
        assert!(s.list("nothing/here/").unwrap().is_empty());
        assert!(s.list("z.json/").unwrap().is_empty());
        assert!(s.list("drafts/.tmpdir/").unwrap().is_empty());
        drop(guard);
        for bad in ["../", "a//", "/etc/"] {
            assert!(s.list(bad).is_err(), "{bad}");
        }
        s.delete("drafts/a.json").unwrap();
        s.delete("drafts/a.json").unwrap(); // absent is fine
        assert_eq!(s.get("drafts/a.json").unwrap(), None);
        assert_eq!(s.list("drafts/").unwrap(), ["drafts/b.json", "drafts/sub/c.json"]);
        // no temporary file is left behind by the writes
        assert!(!files(s.root()).iter().any(|f| f.contains(".tmp-") && !f.ends_with(".tmp-1-2")), "{:?}", files(s.root()));
    }

    #[test]
    fn local_errors_name_the_full_path_and_keys_cannot_escape() {
        let (_t, s) = store();
        for k in ["../x", "a//b", "/etc/passwd", ""] {
            let e = s.put(k, b"x").unwrap_err().to_string();
            assert!(e.starts_with(&format!("local store source `store`: {}: store key", s.root().display())), "{e}");
            assert!(s.get(k).is_err() && s.delete(k).is_err() && s.put_if_absent(k, b"x").is_err(), "{k}");
        }
        // a key below an object that is a file
        s.put("a", b"file").unwrap();
        let e = s.put("a/b", b"x").unwrap_err().to_string();
        assert!(e.contains(&s.root().join("a").display().to_string()) && e.contains("cannot create the directory"), "{e}");
        // a key that is a directory
        s.put("d/x", b"x").unwrap();
        let e = s.get("d").unwrap_err().to_string();
        assert!(e.contains(&s.root().join("d").display().to_string()) && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn local_put_if_absent_creates_once() {
        let (_t, s) = store();
        assert_eq!(s.put_if_absent("ledger/0001.json", b"first").unwrap(), Created::Created);
        assert_eq!(s.put_if_absent("ledger/0001.json", b"second").unwrap(), Created::AlreadyExists);
        assert_eq!(s.get("ledger/0001.json").unwrap().unwrap(), b"first");
        assert_eq!(files(s.root()), ["ledger/0001.json"], "no temporary file left");
    }

    #[test]
    fn local_put_if_absent_from_racing_threads_creates_exactly_once() {
        let (_t, s) = store();
        let s = std::sync::Arc::new(s);
        for round in 0..20 {
            let key = format!("ledger/{round:04}.json");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let (s, barrier, key) = (s.clone(), barrier.clone(), key.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        (i, s.put_if_absent(&key, format!("writer {i}").as_bytes()).unwrap())
                    })
                })
                .collect();
            let results: Vec<(usize, Created)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<usize> = results.iter().filter(|r| r.1 == Created::Created).map(|r| r.0).collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            assert_eq!(s.get(&key).unwrap().unwrap(), format!("writer {}", winners[0]).as_bytes());
        }
        assert_eq!(files(s.root()).len(), 20, "no temporary file left");
    }

    #[test]
    fn local_lock_is_exclusive_until_the_guard_drops() {
        let (_t, s) = store();
        let other = LocalStore::open(s.root()).unwrap();
        let guard = s.lock().unwrap();
        let holder = std::fs::read_to_string(s.root().join(LOCK_NAME)).unwrap();
        assert!(holder.contains(&format!("\"pid\":{}", std::process::id())), "{holder}");
        let e = other.lock().err().expect("the lock is held").to_string();
        let path = s.root().join(LOCK_NAME).display().to_string();
        assert!(e.contains(&path) && e.contains("another run is writing this store"), "{e}");
        assert!(e.contains(&format!("\"pid\":{}", std::process::id())), "the holder is named: {e}");
        // the same store instance cannot lock twice either (a second open file)
        assert!(s.lock().is_err());
        drop(guard);
        let again = other.lock().unwrap();
        assert!(s.lock().is_err());
        drop(again);
        drop(s.lock().unwrap());
        assert!(other.list("").unwrap().is_empty(), "the lock file is not a key");
    }
}
