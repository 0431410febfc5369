//! The few system calls `std` does not offer: mknod, utimensat without
//! following symlinks, and lsetxattr.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The kinds of node [`mknod`] creates.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// Creates a device node or fifo (the mode is then subject to the umask;
/// callers chmod afterwards).
pub(crate) fn mknod(
    path: &Path,
    kind: NodeKind,
    perm: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let p = cpath(path)?;
    let kind = match kind {
        NodeKind::Char => libc::S_IFCHR,
        NodeKind::Block => libc::S_IFBLK,
        NodeKind::Fifo => libc::S_IFIFO,
    };
    let dev = libc::makedev(major, minor);
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(p.as_ptr(), kind | (perm & 0o7777), dev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An overlayfs whiteout: a character device 0:0.
pub(crate) fn whiteout(path: &Path) -> io::Result<()> {
    mknod(path, NodeKind::Char, 0, 0, 0)
}

/// Sets atime and mtime of `path` (a symlink itself, never its target).
pub(crate) fn set_mtime_nofollow(path: &Path, mtime: u64) -> io::Result<()> {
    let p = cpath(path)?;
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `p` is NUL-terminated and `times` is an array of two timespecs,
    // both valid for the duration of the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets xattr `name` on `path` itself (not following a symlink).
pub(crate) fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: `p` and `n` are NUL-terminated; `value` is valid for
    // `value.len()` bytes; all outlive the call.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
