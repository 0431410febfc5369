//! The VM's share export: `<runtime dir>/shares`, exported to the guest over
//! virtio-9p from create (virtio-mmio cannot hot-plug a 9p device). A share
//! added at runtime is a bind mount of a host path inside it; a read-only
//! share is a read-only bind, so the host kernel enforces it whatever the
//! guest or QEMU do.
//!
//! The export becomes a private mount point (bound onto itself) at create,
//! before QEMU opens it: QEMU holds the export's directory open, so a mount
//! made over the export later would hide every bind below it from the
//! guest. Being private, no bind inside it propagates to other mount
//! namespaces. Where the caller may not mount (not root), the export stays
//! a plain directory and binds fail with their own error. Nothing
//! under a runtime dir is ever deleted while a mount lies below it:
//! [`unmount_all_under`] runs first and is checked.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::VmmError;

/// Name of the export directory inside a runtime dir.
pub const SHARES_DIR: &str = "shares";

/// Whether `name` may name a share: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`.
pub fn valid_share_name(name: &str) -> bool {
    crate::runtime_dir::valid_vm_id(name)
}

fn mount_err(action: &'static str, path: &Path, e: nix::Error) -> VmmError {
    VmmError::HostMount {
        action,
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    }
}

/// Makes `<dir>/shares` (0700), a private mount point where this process
/// may mount, and returns it.
pub(crate) fn create(dir: &Path) -> Result<PathBuf, VmmError> {
    use std::os::unix::fs::DirBuilderExt;
    let p = dir.join(SHARES_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&p)
        .map_err(|source| VmmError::RuntimeDir {
            path: p.clone(),
            source,
        })?;
    if let Err(e) = make_private(&p) {
        tracing::debug!(error = %e, "share export left a plain directory");
    }
    Ok(p)
}

/// Bind-mounts `host` (a directory or a file) at `<export>/<name>`, read-only
/// when asked, and returns that path. Undoes itself on any failure.
pub fn bind(export: &Path, name: &str, host: &Path, read_only: bool) -> Result<PathBuf, VmmError> {
    if !valid_share_name(name) {
        return Err(VmmError::Unsupported(format!(
            "share name {name:?}: must match [A-Za-z0-9._-]{{1,64}}"
        )));
    }
    let source = std::fs::canonicalize(host).map_err(|source| VmmError::File {
        what: "share",
        path: host.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&source).map_err(|e| VmmError::File {
        what: "share",
        path: source.clone(),
        source: e,
    })?;
    let target = export.join(name);
    let made = if meta.is_dir() {
        std::fs::create_dir(&target)
    } else {
        std::fs::File::create_new(&target).map(drop)
    };
    made.map_err(|source| VmmError::RuntimeDir {
        path: target.clone(),
        source,
    })?;
    let undo = |e: VmmError| {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        remove_entry(&target);
        e
    };
    mount(
        Some(&source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| mount_err("bind-mounting the share", &target, e))
    .map_err(undo)?;
    if read_only {
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .map_err(|e| mount_err("making the share bind read-only", &target, e))
            .map_err(undo)?;
    }
    Ok(target)
}

/// Unmounts `<export>/<name>` and removes its mount point.
pub fn unbind(export: &Path, name: &str) -> Result<(), VmmError> {
    let target = export.join(name);
    if !valid_share_name(name) || !mount_points_under(&target)?.contains(&target) {
        return Err(VmmError::Unsupported(format!(
            "no share {name:?} in {}",
            export.display()
        )));
    }
    umount2(&target, MntFlags::MNT_DETACH)
        .map_err(|e| mount_err("unmounting the share", &target, e))?;
    remove_entry(&target);
    Ok(())
}

fn remove_entry(p: &Path) {
    if std::fs::remove_dir(p).is_err() {
        let _ = std::fs::remove_file(p);
    }
}

/// Binds the export onto itself as a private mount (once), so binds inside
/// it never propagate to peer mount namespaces.
fn make_private(export: &Path) -> Result<(), VmmError> {
    if mount_points_under(export)?.iter().any(|m| m == export) {
        return Ok(());
    }
    mount(
        Some(export),
        export,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| mount_err("making the share export a mount point", export, e))?;
    mount(
        None::<&str>,
        export,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = umount2(export, MntFlags::MNT_DETACH);
        mount_err("making the share export private", export, e)
    })
}

/// Mount points at or below `dir` in this process's mount namespace, deepest
/// first.
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, VmmError> {
    let info = std::fs::read("/proc/self/mountinfo").map_err(|source| VmmError::Io {
        context: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    let mut out: Vec<PathBuf> = String::from_utf8_lossy(&info)
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// Decodes mountinfo's octal escapes (`\040` = space, ...).
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Lazily unmounts every mount at or below `dir`, deepest first, and checks
/// that none is left: only then may `dir` be deleted (deleting through a live
/// bind would delete the host files it shows).
pub fn unmount_all_under(dir: &Path) -> Result<(), VmmError> {
    for m in mount_points_under(dir)? {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "unmounting under a runtime dir");
        }
    }
    match mount_points_under(dir)?.first() {
        None => Ok(()),
        Some(left) => Err(VmmError::HostMount {
            action: "unmounting before removing the runtime dir",
            path: left.clone(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\134c"),
            PathBuf::from(r"/a b\c")
        );
        assert_eq!(unescape_mountinfo(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo(r"/end\04"), PathBuf::from(r"/end\04"));
    }

    #[test]
    fn share_names() {
        assert!(valid_share_name("s0") && valid_share_name("data.v1"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(!valid_share_name(bad), "{bad}");
        }
    }

    #[test]
    fn mount_points_are_found_deepest_first() {
        let all = mount_points_under(Path::new("/")).unwrap();
        assert!(all.contains(&PathBuf::from("/proc")), "{all:?}");
        assert_eq!(all.last().unwrap(), Path::new("/"));
        let tmp = tempfile::tempdir().unwrap();
        assert!(mount_points_under(tmp.path()).unwrap().is_empty());
        unmount_all_under(tmp.path()).unwrap();
    }
}
