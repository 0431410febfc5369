//! The container init's file system, set up by the init itself (in its new
//! mount namespace, before it executes): the spec's mounts under the
//! rootfs, `/dev`, the switch to the container's root, masked and
//! read-only paths.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::plan::{DevicePlan, FailKind, Failure, InitPlan, MountPlan};

/// Device nodes every container gets: name, major, minor.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// Links in `/dev`: name → target.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];
/// Bound on symlinks followed while resolving one path in the rootfs.
const MAX_LINKS: usize = 255;

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Failure {
    Failure::sys(what, e)
}

/// `path` (absolute, in the container) resolved inside `root`: symlinks in
/// the rootfs are followed as the container would see them, never out of
/// `root`. The last component need not exist.
pub fn secure_join(root: &Path, path: &str) -> Result<PathBuf, Failure> {
    let mut todo: Vec<PathBuf> = vec![PathBuf::from(path)];
    let mut done = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(p) = todo.pop() {
        let mut comps = p.components().peekable();
        while let Some(c) = comps.next() {
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    done.pop();
                }
                Component::Normal(name) => {
                    let candidate = done.join(name);
                    let full = root.join(&candidate);
                    match std::fs::read_link(&full) {
                        Ok(target) => {
                            links += 1;
                            if links > MAX_LINKS {
                                return Err(Failure::new(
                                    FailKind::Invalid,
                                    format!("{path}: too many symbolic links in the rootfs"),
                                ));
                            }
                            let rest: PathBuf = comps.collect();
                            todo.push(rest);
                            if target.is_absolute() {
                                done = PathBuf::new();
                            }
                            todo.push(target);
                            break;
                        }
                        Err(_) => done = candidate,
                    }
                }
            }
        }
    }
    Ok(root.join(done))
}

fn mkdir_all(p: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(p).map_err(|e| fail(format!("mkdir {}", p.display()), e))
}

/// Makes the mount point: a file for a bind of a file, else a directory.
fn make_target(target: &Path, file: bool) -> Result<(), Failure> {
    if file {
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        if !target.exists() {
            std::fs::File::create(target)
                .map_err(|e| fail(format!("create {}", target.display()), e))?;
        }
        Ok(())
    } else {
        mkdir_all(target)
    }
}

fn mount_one(root: &Path, m: &MountPlan) -> Result<(), Failure> {
    let target = secure_join(root, &m.destination)?;
    let flags = MsFlags::from_bits_truncate(m.flags);
    let what = |e: nix::errno::Errno| fail(format!("mount {} on {}", m.source, m.destination), e);
    if m.bind {
        let src = Path::new(&m.source);
        if !src.exists() {
            return Err(Failure::new(
                FailKind::Invalid,
                format!("mount source {} does not exist in the guest", m.source),
            ));
        }
        make_target(&target, !src.is_dir())?;
        let rec = if m.recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        mount(
            Some(src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(what)?;
        if !flags.is_empty() {
            let re = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
            mount(None::<&str>, &target, None::<&str>, re, None::<&str>).map_err(what)?;
        }
    } else {
        make_target(&target, false)?;
        let mut data = m.data.clone();
        if m.fstype == "devpts" && !data.split(',').any(|o| o == "newinstance") {
            data = if data.is_empty() {
                "newinstance".into()
            } else {
                format!("newinstance,{data}")
            };
        }
        let source = if m.source.is_empty() {
            m.fstype.as_str()
        } else {
            m.source.as_str()
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(source), &target, Some(m.fstype.as_str()), flags, data).map_err(what)?;
    }
    if m.propagation != 0 {
        let p = MsFlags::from_bits_truncate(m.propagation);
        mount(None::<&str>, &target, None::<&str>, p, None::<&str>).map_err(what)?;
    }
    Ok(())
}

fn make_node(path: &Path, kind: SFlag, major: u64, minor: u64, mode: u32) -> Result<(), Failure> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let perm = Mode::from_bits_truncate(mode);
    mknod(path, kind, perm, makedev(major, minor))
        .map_err(|e| fail(format!("mknod {}", path.display()), e))?;
    // mknod honours the umask; the spec's mode does not.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(format!("chmod {}", path.display()), e))
}

/// The default device nodes and links in `<root>/dev`, the spec's devices,
/// and `/dev/console` (the pty on fd 0) with a terminal.
fn populate_dev(root: &Path, devices: &[DevicePlan], terminal: bool) -> Result<(), Failure> {
    let dev = secure_join(root, "/dev")?;
    mkdir_all(&dev)?;
    for (name, major, minor) in DEFAULT_DEVICES {
        make_node(&dev.join(name), SFlag::S_IFCHR, major, minor, 0o666)?;
    }
    for (name, target) in DEV_LINKS {
        let link = dev.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(target, &link)
                .map_err(|e| fail(format!("symlink {}", link.display()), e))?;
        }
    }
    for d in ["pts", "shm"] {
        mkdir_all(&dev.join(d))?;
    }
    for d in devices {
        let path = secure_join(root, &d.path)?;
        if let Some(parent) = path.parent() {
            mkdir_all(parent)?;
        }
        let kind = match d.kind {
            'b' => SFlag::S_IFBLK,
            'p' => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        make_node(&path, kind, d.major, d.minor, d.mode)?;
        nix::unistd::chown(&path, Some(d.uid.into()), Some(d.gid.into()))
            .map_err(|e| fail(format!("chown {}", path.display()), e))?;
    }
    if terminal {
        let pty =
            std::fs::read_link("/proc/self/fd/0").map_err(|e| fail("the terminal on fd 0", e))?;
        let console = dev.join("console");
        make_target(&console, true)?;
        mount(
            Some(&pty),
            &console,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind the terminal on /dev/console", e))?;
    }
    Ok(())
}

/// Makes `root` the process's root with `pivot_root(2)` (the way runc
/// does: `pivot_root(".", ".")`, then the old root, stacked on the new one,
/// is detached with every guest mount under it). The guest's own root is
/// a tmpfs (`crate::newroot`); below it lies only the emptied initramfs.
/// A `setns` into the namespace lands on the new root (the kernel looks up
/// `/` with LOOKUP_DOWN).
fn enter_root(root: &Path) -> Result<(), Failure> {
    let old = std::fs::File::open("/").map_err(|e| fail("open /", e))?;
    std::env::set_current_dir(root).map_err(|e| fail(format!("chdir {}", root.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| {
        let why = if crate::newroot::root_is_initramfs() {
            " (the guest could not leave its initramfs at boot: see its log)"
        } else {
            ""
        };
        fail(format!("pivot_root into {}{why}", root.display()), e)
    })?;
    nix::unistd::fchdir(old.as_raw_fd()).map_err(|e| fail("fchdir to the old root", e))?;
    let slave = MsFlags::MS_SLAVE | MsFlags::MS_REC;
    mount(None::<&str>, ".", None::<&str>, slave, None::<&str>)
        .map_err(|e| fail("make the old root a slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the old root", e))?;
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))
}

/// Flags of the mount at `p` that a bind remount must keep.
fn kept_flags(p: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let mut f = MsFlags::empty();
    if let Ok(s) = statvfs(p) {
        let fl = s.flags();
        f.set(MsFlags::MS_NOSUID, fl.contains(FsFlags::ST_NOSUID));
        f.set(MsFlags::MS_NODEV, fl.contains(FsFlags::ST_NODEV));
        f.set(MsFlags::MS_NOEXEC, fl.contains(FsFlags::ST_NOEXEC));
    }
    f
}

fn remount_ro(p: &Path, bind_first: bool) -> Result<(), Failure> {
    if bind_first {
        mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("bind {}", p.display()), e))?;
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | kept_flags(p);
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
        .map_err(|e| fail(format!("remount {} read-only", p.display()), e))
}

/// Masked paths (hidden: `/dev/null` over files, an empty read-only tmpfs
/// over directories), read-only paths and a read-only root, after the
/// switch to the container's root. Paths that do not exist are skipped.
fn protect(init: &InitPlan) -> Result<(), Failure> {
    for p in &init.masked_paths {
        let path = Path::new(p);
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| fail(format!("mask {p}"), e))?;
    }
    for p in &init.readonly_paths {
        if Path::new(p).exists() {
            remount_ro(Path::new(p), true)?;
        }
    }
    if init.root_readonly {
        remount_ro(Path::new("/"), false)?;
    }
    Ok(())
}

/// Sets up the container's file system and host name (in the init).
pub fn prepare(init: &InitPlan, terminal: bool) -> Result<(), Failure> {
    let root = init.rootfs.as_path();
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(None::<&str>, "/", None::<&str>, private, None::<&str>)
        .map_err(|e| fail("make / private", e))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("bind {} onto itself", root.display()), e))?;
    for m in &init.mounts {
        mount_one(root, m)?;
    }
    let dev_bound = init
        .mounts
        .iter()
        .any(|m| m.bind && Path::new(&m.destination) == Path::new("/dev"));
    if !dev_bound {
        populate_dev(root, &init.devices, terminal)?;
    }
    enter_root(root)?;
    protect(init)?;
    if let Some(h) = &init.hostname {
        nix::unistd::sethostname(OsStr::from_bytes(h.as_bytes()))
            .map_err(|e| fail("sethostname", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let j = |p: &str| secure_join(root, p).unwrap();
        assert_eq!(j("/proc"), root.join("proc"));
        assert_eq!(j("/lib/x"), root.join("usr/lib/x"));
        assert_eq!(j("/../../etc"), root.join("etc"));
        assert_eq!(j("/usr/up/etc"), root.join("etc"));
        assert_eq!(j("/usr/abs"), root.join("etc/passwd"));
        assert_eq!(
            secure_join(root, "/loop").unwrap_err().kind,
            FailKind::Invalid
        );
    }
}
