//! PID 1 leaves the initramfs for a tmpfs root, the way `switch_root` does:
//! the initramfs files are copied into a tmpfs (files of 1 MiB or more,
//! the agent and busybox, bind-mounted instead: copying them cost 32 ms
//! under TCG), deleted from the rootfs, and the tmpfs is moved onto `/`.
//! Only the agent's own executable stays in the rootfs.
//!
//! Why: the kernel's rootfs has no parent mount, so `pivot_root(2)` refuses
//! any namespace whose root it is, and a container could only `chroot`
//! into its root, leaving the guest's files one `chroot` escape away. With
//! a tmpfs root, each container pivots into its own root and detaches the
//! guest's whole tree; what is left below is the emptied rootfs.
//! Runs synchronously before the agent serves: about 22 ms under TCG.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use crate::mounts::mountinfo;

/// Regular files this large are bind-mounted into the new root, not copied.
const BIND_FROM_BYTES: u64 = 1 << 20;
/// Where the new root is mounted while it is filled.
const STAGING: &str = "/.uvm-root";

/// What [`leave_initramfs`] did, for the log once logging is up.
#[derive(Debug)]
pub enum Outcome {
    /// The root is a tmpfs now; copying and deleting took this long.
    Moved {
        /// Time spent in all.
        took: Duration,
        /// Time spent copying.
        copy: Duration,
        /// Bytes of regular files copied.
        bytes: u64,
    },
    /// The root was not the initramfs (nothing to do).
    NotInitramfs,
    /// The move failed at this step; the guest stays on its initramfs.
    Failed(String),
}

/// `true` when `/` is the kernel's rootfs (the mount that is its own parent).
pub fn root_is_initramfs() -> bool {
    mountinfo::read(Path::new("/proc/self/mountinfo"))
        .iter()
        .any(|e| e.mount_point == "/" && e.parent == e.id)
}

/// Moves PID 1 out of the initramfs into a tmpfs root (see the module doc).
/// Needs `/proc`, which is moved along; runs before any other mount and
/// before any thread or child exists. On failure the guest keeps running
/// on the initramfs and [`Outcome::Failed`] says what failed.
pub fn leave_initramfs() -> Outcome {
    if !root_is_initramfs() {
        return Outcome::NotInitramfs;
    }
    let t = Instant::now();
    match switch() {
        Ok((bytes, copy)) => Outcome::Moved {
            took: t.elapsed(),
            copy,
            bytes,
        },
        Err(e) => Outcome::Failed(e),
    }
}

fn step<T>(what: &str, r: Result<T, impl std::fmt::Display>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn switch() -> Result<(u64, Duration), String> {
    let root_meta = step("stat /", fs::metadata("/"))?;
    let staging = Path::new(STAGING);
    step("mkdir the new root", fs::create_dir(staging))?;
    let mode = format!("mode={:o}", root_meta.permissions().mode() & 0o7777);
    if let Err(e) = mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(mode.as_str()),
    ) {
        let _ = fs::remove_dir(staging);
        return Err(format!("mount a tmpfs for the new root: {e}"));
    }
    let t = Instant::now();
    let copied = copy_tree(Path::new("/"), staging, root_meta.dev());
    let copy = t.elapsed();
    let bytes = match copied {
        Ok(b) => b,
        Err(e) => {
            let _ = umount2(staging, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(staging);
            return Err(format!("copy the initramfs: {e}"));
        }
    };
    // From here on the initramfs is being emptied: no way back.
    remove_initramfs(root_meta.dev());
    step(
        "mkdir proc in the new root",
        fs::create_dir_all(staging.join("proc")),
    )?;
    step(
        "move /proc",
        mount(
            Some("/proc"),
            &staging.join("proc"),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ),
    )?;
    let old_root = step("open /", fs::File::open("/"))?;
    step("chdir to the new root", std::env::set_current_dir(staging))?;
    step(
        "move the new root onto /",
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    step("chroot", nix::unistd::chroot("."))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    // The staging directory is all that is left of the initramfs.
    let _ = nix::unistd::unlinkat(
        Some(old_root.as_raw_fd()),
        STAGING.trim_start_matches('/'),
        nix::unistd::UnlinkatFlags::RemoveDir,
    );
    Ok((bytes, copy))
}

/// Copies the entries of `from` on device `dev` into `to`, keeping modes
/// and owners; bytes copied.
fn copy_tree(from: &Path, to: &Path, dev: u64) -> io::Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(from)? {
        let src = entry?.path();
        let meta = fs::symlink_metadata(&src)?;
        if meta.dev() != dev || src == Path::new(STAGING) {
            continue; // a mount point (/proc), or the new root itself
        }
        let dst = to.join(src.file_name().unwrap_or_default());
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            bytes += copy_tree(&src, &dst, dev)?;
            fs::set_permissions(&dst, meta.permissions())?;
        } else if ft.is_file() {
            bytes += place_file(&src, &dst, &meta)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                continue; // a socket: meaningless once copied
            };
            let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
            mknod(&dst, kind, perm, meta.rdev()).map_err(io::Error::from)?;
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(bytes)
}

/// Puts regular file `src` at `dst`: copied when small, bound when large
/// (the agent itself, busybox). A bound file outlives the deletion of its
/// initramfs name; copying the 9 MB took 32 ms under TCG.
fn place_file(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<u64> {
    if meta.len() < BIND_FROM_BYTES {
        return fs::copy(src, dst);
    }
    fs::File::create(dst)?;
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)?;
    Ok(0)
}

/// Deletes the initramfs's entries (those on `dev`, never a mount point),
/// as switch_root does; what cannot be deleted is left. The agent's own
/// executable (top level: `/init`) stays: `/proc/self/exe` must keep
/// naming a file that exists, or its backtraces lose their symbols (the
/// new root has it bound at the same path).
fn remove_initramfs(dev: u64) {
    let exe = fs::metadata("/proc/self/exe")
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let Ok(entries) = fs::read_dir("/") else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.dev() != dev || p == Path::new(STAGING) || exe == Some((meta.dev(), meta.ino())) {
            continue;
        }
        let _ = if meta.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_files_links_dirs_and_modes() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let f = from.path();
        fs::create_dir_all(f.join("etc/deep")).unwrap();
        fs::write(f.join("etc/deep/conf"), "x=1\n").unwrap();
        fs::set_permissions(f.join("etc/deep/conf"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(f.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("deep/conf", f.join("etc/link")).unwrap();
        let dev = fs::metadata(f).unwrap().dev();
        let bytes = copy_tree(f, to.path(), dev).unwrap();
        let t = to.path();
        assert_eq!(bytes, 4);
        assert_eq!(fs::read_to_string(t.join("etc/link")).unwrap(), "x=1\n");
        assert_eq!(
            fs::read_link(t.join("etc/link")).unwrap(),
            Path::new("deep/conf")
        );
        let mode = |p: &str| fs::metadata(t.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/deep/conf"), 0o640);
        assert_eq!(mode("etc"), 0o750);
    }

    #[test]
    fn entries_of_another_device_are_not_copied() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::write(from.path().join("file"), "x").unwrap();
        let other_dev = fs::metadata(from.path()).unwrap().dev() + 1;
        assert_eq!(copy_tree(from.path(), to.path(), other_dev).unwrap(), 0);
        assert!(fs::read_dir(to.path()).unwrap().next().is_none());
    }
}
