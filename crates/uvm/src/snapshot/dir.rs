//! The snapshot directory: made 0700 for a new snapshot, checked (owner,
//! mode) before a restore reads it. It holds guest RAM: nobody but its
//! owner may read it, or plant a state for us to load.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SnapshotError;

/// A snapshot dir being written: removed again (what was written, and the
/// dir if it was made here) when dropped before [`SnapshotDir::keep`].
pub(crate) struct SnapshotDir {
    path: PathBuf,
    created: bool,
    kept: bool,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

impl SnapshotDir {
    /// Makes `path` (mode 0700), or takes an empty dir of ours and sets it 0700.
    pub fn create(path: &Path) -> Result<SnapshotDir, SnapshotError> {
        let unsafe_dir = |reason: String| SnapshotError::UnsafeDir {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {
                // The umask may have narrowed it further; never widened.
                return Ok(SnapshotDir {
                    path: path.to_path_buf(),
                    created: true,
                    kept: false,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(SnapshotError::Dir(source)),
        }
        let meta = std::fs::symlink_metadata(path).map_err(SnapshotError::Dir)?;
        if !meta.is_dir() {
            return Err(unsafe_dir("exists and is not a directory".into()));
        }
        if meta.uid() != euid() {
            return Err(unsafe_dir(format!(
                "is owned by uid {}, not by us (uid {})",
                meta.uid(),
                euid()
            )));
        }
        let empty = std::fs::read_dir(path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(unsafe_dir(
                "is not empty: a snapshot is written into a dir of its own".into(),
            ));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(SnapshotError::Dir)?;
        Ok(SnapshotDir {
            path: path.to_path_buf(),
            created: false,
            kept: false,
        })
    }

    /// Keeps the snapshot.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Checks that `path` is a dir of ours that nobody else may read or write.
pub(crate) fn check(path: &Path) -> Result<(), SnapshotError> {
    let meta = std::fs::metadata(path).map_err(SnapshotError::Dir)?;
    let unsafe_dir = |reason: String| SnapshotError::UnsafeDir {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    if meta.uid() != euid() {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by us (uid {}): refusing to load another user's VM state",
            meta.uid(),
            euid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "has mode {mode:04o}; it must be 0700 (it holds guest memory)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_0700_checked_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("snap");
        let d = SnapshotDir::create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        check(&p).unwrap();
        std::fs::write(p.join("state"), b"x").unwrap();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn a_readable_dir_or_a_full_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("snap");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0755") && e.contains("0700"), "{e}");
        std::fs::write(p.join("other"), b"x").unwrap();
        let e = SnapshotDir::create(&p).err().unwrap().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(p.join("other").exists());
    }

    #[test]
    fn an_empty_dir_of_ours_is_taken_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("snap");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = SnapshotDir::create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        drop(d);
        assert!(p.exists(), "a dir we did not make stays");
    }
}
