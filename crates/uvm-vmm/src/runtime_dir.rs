//! Per-VM runtime directories: `<root>/<id>`, mode 0700, with an owner file
//! (`owner.pid`: the controller's pid, `flock`ed for the VM's lifetime) so a
//! later sweep can remove directories left by a dead controller.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::VmmError;

/// Name of the owner file inside a runtime dir.
pub const OWNER_FILE: &str = "owner.pid";

/// The runtime root: `$UVM_RUNTIME_DIR`, else `/run/uvm` as root, else
/// `$XDG_RUNTIME_DIR/uvm`, else `<tmp>/uvm-<uid>`.
pub fn default_runtime_root() -> PathBuf {
    if let Some(d) = std::env::var_os("UVM_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/uvm");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("uvm");
    }
    std::env::temp_dir().join(format!("uvm-{uid}"))
}

/// Whether `id` is a valid VM id: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`.
pub fn valid_vm_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn rt_err(path: &Path, source: std::io::Error) -> VmmError {
    VmmError::RuntimeDir {
        path: path.to_path_buf(),
        source,
    }
}

/// A VM's runtime dir, owned (locked) by this process until dropped or removed.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    lock: Option<File>,
}

impl RuntimeDir {
    /// Creates `<root>/<id>` (0700; the root too if missing), writes and locks
    /// the owner file. Fails if the directory already exists.
    pub fn create(root: &Path, id: &str) -> Result<RuntimeDir, VmmError> {
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| rt_err(root, e))?;
        }
        let path = root.join(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| rt_err(&path, e))?;
        // The umask may have narrowed the mode; make it exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .map_err(|e| rt_err(&path, e))?;
        let mut dir = RuntimeDir { path, lock: None };
        let owner = dir.path.join(OWNER_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&owner)
            .map_err(|e| rt_err(&owner, e))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = dir.remove();
            return Err(rt_err(&owner, e));
        }
        if let Err(e) = writeln!(f, "{}", std::process::id()) {
            let _ = dir.remove();
            return Err(rt_err(&owner, e));
        }
        dir.lock = Some(f);
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts whatever is mounted below it (share binds), then removes the
    /// directory and everything in it, releasing the lock. Idempotent. A mount
    /// that will not go keeps the directory (deleting through it would delete
    /// host files) and is the error.
    pub fn remove(&mut self) -> Result<(), VmmError> {
        if self.path.exists() {
            crate::share_export::unmount_all_under(&self.path)?;
        }
        let r = match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(rt_err(&self.path, e)),
        };
        self.lock = None;
        r
    }
}

/// Sets a socket (or any file) to mode 0600.
pub fn restrict_socket(path: &Path) -> Result<(), VmmError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| rt_err(path, e))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether the runtime dir at `dir` is stale: its owner pid is dead, or the
/// pid lives but nobody holds the owner lock (the pid was reused).
/// Directories without a readable pid are never stale (they may be being created).
fn is_stale(dir: &Path) -> bool {
    let owner = dir.join(OWNER_FILE);
    let Ok(mut f) = File::open(&owner) else {
        return false;
    };
    let mut s = String::new();
    if f.read_to_string(&mut s).is_err() {
        return false;
    }
    let Ok(pid) = s.trim().parse::<i32>() else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if !pid_alive(pid) {
        return true;
    }
    // SAFETY: flock on an fd we own; a shared non-blocking try.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
}

/// Removes the runtime dirs under `root` whose owner is gone; returns them.
/// A missing root is not an error.
pub fn sweep_stale_runtime_dirs(root: &Path) -> Result<Vec<PathBuf>, VmmError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(rt_err(root, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) || !is_stale(&path) {
            continue;
        }
        if let Err(e) = crate::share_export::unmount_all_under(&path) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot unmount inside a stale runtime dir; keeping it");
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed stale VM runtime dir");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove stale runtime dir")
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_vm_id("a"));
        assert!(valid_vm_id("vm-1.test_X"));
        assert!(valid_vm_id(&"a".repeat(64)));
        for bad in ["", ".", "..", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_vm_id(bad), "{bad}");
        }
    }

    #[test]
    fn create_is_private_and_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().join("rt");
        let mut d = RuntimeDir::create(&r, "vm1").unwrap();
        let mode = fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            fs::metadata(&r).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(RuntimeDir::create(&r, "vm1").is_err());
        // Live and locked: not swept.
        assert!(sweep_stale_runtime_dirs(&r).unwrap().is_empty());
        d.remove().unwrap();
        d.remove().unwrap();
        assert!(!d.path().exists());
    }

    #[test]
    fn sweep_removes_dead_and_unlocked_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Dead owner: a reaped child's pid.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        for (name, content) in [
            ("dead", dead.to_string()),
            ("reused", std::process::id().to_string()),
        ] {
            fs::create_dir(r.join(name)).unwrap();
            fs::write(r.join(name).join(OWNER_FILE), content).unwrap();
        }
        fs::create_dir(r.join("nopid")).unwrap();
        let _live = RuntimeDir::create(r, "live").unwrap();
        let mut removed = sweep_stale_runtime_dirs(r).unwrap();
        removed.sort();
        assert_eq!(removed, vec![r.join("dead"), r.join("reused")]);
        assert!(r.join("live").exists());
        assert!(r.join("nopid").exists());
        assert!(sweep_stale_runtime_dirs(&r.join("missing"))
            .unwrap()
            .is_empty());
    }
}
