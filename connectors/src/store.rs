//! The local-directory store (a sink): a run's outputs are written into a staging directory
//! beside the store and swapped in whole on commit, so a failed or killed run never leaves a
//! half-written result that looks complete. The manifest is written last by the caller.
//! Keys are relative `/`-separated paths; a key that could escape the store is refused.

use std::path::{Path, PathBuf};

use crate::error::{ConnectorError, ErrorKind};

const CONNECTOR: &str = "local store";

fn err(location: &Path, message: impl Into<String>) -> ConnectorError {
    ConnectorError::new(CONNECTOR, "store", location.display().to_string(), ErrorKind::Io, message)
}

/// A store being written. Dropped without `commit`, it removes its staging directory.
pub struct Staging {
    root: PathBuf,
    dir: PathBuf,
    committed: bool,
}

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

impl Staging {
    /// Start writing a new version of the store at `root`.
    pub fn begin(root: &Path) -> Result<Staging, ConnectorError> {
        let name = root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "store".into());
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&parent).map_err(|e| err(&parent, e.to_string()))?;
        let dir = parent.join(format!(".{name}.staging-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err(&dir, e.to_string()))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e.to_string()))?;
        Ok(Staging { root: root.to_path_buf(), dir, committed: false })
    }

    /// Write one object.
    pub fn put(&mut self, key: &str, bytes: &[u8]) -> Result<(), ConnectorError> {
        check_key(key).map_err(|m| err(&self.root, m))?;
        let path = self.dir.join(key);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| err(p, e.to_string()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| err(&self.root.join(key), e.to_string()))
    }

    /// Replace the store with what was written: the old version is moved aside, the new one
    /// renamed into place, then the old one removed.
    pub fn commit(mut self) -> Result<(), ConnectorError> {
        let old =
            self.dir.with_file_name(format!("{}.old", self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()));
        if self.root.exists() {
            std::fs::rename(&self.root, &old).map_err(|e| err(&self.root, format!("cannot move the previous version aside: {e}")))?;
        }
        if let Err(e) = std::fs::rename(&self.dir, &self.root) {
            let _ = std::fs::rename(&old, &self.root);
            return Err(err(&self.root, format!("cannot move the new version into place: {e}")));
        }
        self.committed = true;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| err(&old, e.to_string()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_swaps_whole_versions_and_drop_leaves_the_old_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("out");
        let mut s = Staging::begin(&root).unwrap();
        s.put("a/b.txt", b"one").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(root.join("a/b.txt")).unwrap(), b"one");
        let mut s = Staging::begin(&root).unwrap();
        s.put("c.txt", b"two").unwrap();
        drop(s); // a failed run
        assert!(root.join("a/b.txt").exists() && !root.join("c.txt").exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no staging left behind");
    }

    #[test]
    fn keys_cannot_escape_the_store() {
        for k in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ""] {
            assert!(check_key(k).is_err(), "{k}");
        }
        assert!(check_key("invoices/acct%2F1/x.json").is_ok());
    }
}
