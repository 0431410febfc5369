//! `Mount`, `Unmount` and `RemoveScsiDisk`: disks found by SCSI address and
//! shares from the VM's 9p export, mounted where the host asks within the
//! allowed roots (DESIGN §10).
//!
//! Every path goes through a root (`/` in a VM, a temp dir in tests), so
//! the policy, the sysfs lookup and the bookkeeping are tested without
//! touching the machine's mount table.

pub mod failure;
pub mod mountinfo;
pub mod scsi;
pub mod target;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use uvm_proto::gcs::mount_failure::Kind;
use uvm_proto::gcs::{mount_request, MountRequest, MountResponse, ScsiAddress};
use uvm_proto::mounts::{DISK_FS_TYPES, SHARES_GUEST_DIR, SHARES_TAG};

pub use failure::Failure;
use target::{Made, Shape};

/// Bound on a disk appearing when the request says 0.
pub const DEFAULT_DISK_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
pub const MAX_DISK_WAIT: Duration = Duration::from_secs(120);
/// Bound on the kernel dropping a deleted disk.
pub const DISK_DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// Options the 9p share export is mounted with.
pub const SHARES_MOUNT_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=524288,cache=none";

/// A mount made through the service.
#[derive(Debug)]
struct Record {
    made: Made,
}

#[derive(Debug, Default)]
struct State {
    /// Mounts made, by guest target.
    table: BTreeMap<String, Record>,
}

/// The guest's mounts made for the host. Calls are blocking and serialized;
/// run them off the async runtime.
#[derive(Debug)]
pub struct Mounts {
    root: PathBuf,
    state: Mutex<State>,
}

impl Default for Mounts {
    fn default() -> Self {
        Self::with_root("/")
    }
}

impl Mounts {
    /// Mounts whose paths (`/sys`, `/proc`, `/dev`, targets) lie under `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn at(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mount_table(&self) -> Vec<mountinfo::Entry> {
        mountinfo::read(&self.at("/proc/self/mountinfo"))
    }

    fn is_mount_point(&self, at: &Path) -> bool {
        let at = at.to_string_lossy();
        self.mount_table().iter().any(|e| e.mount_point == at)
    }

    /// Mounts what `req` asks for.
    pub fn mount(&self, req: &MountRequest) -> Result<MountResponse, Failure> {
        target::check(&req.target)?;
        check_options(&req.options)?;
        let mut state = self.lock();
        let at = self.at(&req.target);
        if state.table.contains_key(&req.target) || self.is_mount_point(&at) {
            return Err(Failure::new(
                Kind::Busy,
                format!("{} is already a mount point", req.target),
            ));
        }
        let (device, made) = match &req.source {
            Some(mount_request::Source::Scsi(addr)) => self.mount_disk(req, addr)?,
            Some(mount_request::Source::Share(name)) => self.mount_share(req, name)?,
            None => {
                return Err(Failure::new(
                    Kind::Unspecified,
                    "a mount request needs a source: a SCSI address or a share name",
                ))
            }
        };
        tracing::info!(target = %req.target, device = %device, read_only = req.read_only, "mounted");
        state.table.insert(req.target.clone(), Record { made });
        Ok(MountResponse { device })
    }

    fn mount_disk(
        &self,
        req: &MountRequest,
        addr: &ScsiAddress,
    ) -> Result<(String, Made), Failure> {
        self.check_disk_fs(&req.fs_type)?;
        let wait = match req.wait_ms {
            0 => DEFAULT_DISK_WAIT,
            ms => Duration::from_millis(ms.into()).min(MAX_DISK_WAIT),
        };
        let (c, l) = (addr.controller, addr.lun);
        let deadline = std::time::Instant::now() + wait;
        let found = scsi::wait(&self.root, c, l, wait).ok_or_else(|| {
            Failure::new(
                Kind::DiskNotFound,
                format!(
                    "no SCSI disk at controller {c}, LUN {l} appeared within {} ms",
                    wait.as_millis()
                ),
            )
        })?;
        let (at, made) = target::prepare(&self.root, &req.target, Shape::Dir)?;
        let flags = flags(req);
        let data = (!req.options.is_empty()).then_some(req.options.as_str());
        let node = self.at(&found.node);
        let fs = req.fs_type.as_str();
        let mut r = nix::mount::mount(Some(&node), &at, Some(fs), flags, data);
        let mut pause = Duration::from_millis(1);
        // A disk whose probe has not finished opens with ENXIO: retry
        // within the same bound.
        while r == Err(Errno::ENXIO) && std::time::Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
            r = nix::mount::mount(Some(&node), &at, Some(fs), flags, data);
        }
        if r == Err(Errno::EROFS) && req.read_only && matches!(fs, "ext3" | "ext4") {
            // A journal that needs replaying cannot be replayed on a
            // read-only disk: mount what the journal has not changed.
            tracing::warn!(device = %found.node, "journal needs recovery on a read-only disk; mounting without replaying it");
            let noload = match data {
                Some(d) => format!("{d},noload"),
                None => "noload".to_string(),
            };
            r = nix::mount::mount(Some(&node), &at, Some(fs), flags, Some(noload.as_str()));
        }
        if let Err(e) = r {
            made.remove();
            return Err(Failure::new(
                Kind::MountFailed,
                format!(
                    "mounting {} ({}) at {} failed: {e}",
                    found.node, req.fs_type, req.target
                ),
            )
            .errno(e)
            .device(found.node));
        }
        Ok((found.node, made))
    }

    fn check_disk_fs(&self, fs_type: &str) -> Result<(), Failure> {
        if !DISK_FS_TYPES.contains(&fs_type) {
            return Err(Failure::new(
                Kind::BadFsType,
                format!(
                    "file system {fs_type:?} is not one the agent mounts from a disk ({})",
                    DISK_FS_TYPES.join(", ")
                ),
            ));
        }
        let known = std::fs::read_to_string(self.at("/proc/filesystems")).unwrap_or_default();
        if !known
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs_type))
        {
            return Err(Failure::new(
                Kind::FsNotInKernel,
                format!("the guest kernel has no {fs_type} file system"),
            ));
        }
        Ok(())
    }

    fn mount_share(&self, req: &MountRequest, name: &str) -> Result<(String, Made), Failure> {
        if !req.fs_type.is_empty() {
            return Err(Failure::new(
                Kind::BadFsType,
                format!(
                    "a share is bind-mounted; fs type {:?} must be empty",
                    req.fs_type
                ),
            ));
        }
        if name.is_empty()
            || name.len() > 255
            || name.contains(['/', '\0'])
            || name == "."
            || name == ".."
        {
            return Err(Failure::new(
                Kind::ShareNotFound,
                format!("{name:?} is not a share name"),
            ));
        }
        self.mount_export()?;
        let source = self.at(&format!("{SHARES_GUEST_DIR}/{name}"));
        let shape = match std::fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Shape::Dir,
            Ok(m) if m.is_file() => Shape::File,
            _ => {
                return Err(Failure::new(
                    Kind::ShareNotFound,
                    format!("there is no share {name:?} in the VM's share export"),
                ))
            }
        };
        let (at, made) = target::prepare(&self.root, &req.target, shape)?;
        let fail = |e: Errno, what: &str| {
            Failure::new(
                Kind::MountFailed,
                format!("{what} share {name:?} at {} failed: {e}", req.target),
            )
            .errno(e)
        };
        if let Err(e) = nix::mount::mount(
            Some(&source),
            &at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            made.remove();
            return Err(fail(e, "binding"));
        }
        let extra = flags(req);
        if !extra.is_empty() {
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
            if let Err(e) =
                nix::mount::mount(None::<&str>, &at, None::<&str>, remount, None::<&str>)
            {
                let _ = nix::mount::umount2(&at, MntFlags::MNT_DETACH);
                made.remove();
                return Err(fail(e, "making read-only the bind of"));
            }
        }
        Ok((String::new(), made))
    }

    /// Mounts the VM's 9p share export at [`SHARES_GUEST_DIR`] unless it is
    /// (container layers are shares the overlay uses in place).
    pub fn mount_export(&self) -> Result<(), Failure> {
        let dir = self.at(SHARES_GUEST_DIR);
        if self.is_mount_point(&dir) {
            return Ok(());
        }
        let _ = std::fs::create_dir_all(&dir);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(Some(SHARES_TAG), &dir, Some("9p"), flags, Some(SHARES_MOUNT_OPTIONS))
            .map_err(|e| {
                let kind = if e == Errno::ENOENT { Kind::ShareNotFound } else { Kind::MountFailed };
                Failure::new(
                    kind,
                    format!("mounting the share export (9p tag {SHARES_TAG}) at {SHARES_GUEST_DIR} failed: {e}"),
                )
                .errno(e)
            })
    }

    /// Unmounts `target`, removing what the mount made for it.
    pub fn unmount(&self, target: &str) -> Result<(), Failure> {
        target::check(target)?;
        let mut state = self.lock();
        let at = self.at(target);
        if let Err(e) = nix::mount::umount2(&at, MntFlags::empty()) {
            let kind = match e {
                Errno::EINVAL | Errno::ENOENT => Kind::NotMounted,
                Errno::EBUSY => Kind::Busy,
                _ => Kind::MountFailed,
            };
            let what = match kind {
                Kind::NotMounted => format!("{target} is not mounted"),
                Kind::Busy => format!("{target} is busy: a process uses it"),
                _ => format!("unmounting {target} failed: {e}"),
            };
            if kind == Kind::NotMounted {
                // Forget a record whose mount is gone anyway.
                if let Some(r) = state.table.remove(target) {
                    r.made.remove();
                }
            }
            return Err(Failure::new(kind, what).errno(e));
        }
        if let Some(r) = state.table.remove(target) {
            r.made.remove();
        }
        tracing::info!(target, "unmounted");
        Ok(())
    }

    /// Drops the disk at `addr` from the guest (the host unplugs it next).
    /// Refused while it is mounted; `Ok(false)` when no disk is there.
    pub fn remove_disk(&self, addr: &ScsiAddress) -> Result<bool, Failure> {
        let _state = self.lock();
        let (c, l) = (addr.controller, addr.lun);
        let Some(found) = scsi::find(&self.root, c, l) else {
            return Ok(false);
        };
        let users: Vec<String> = self
            .mount_table()
            .into_iter()
            .filter(|e| e.dev == found.dev)
            .map(|e| e.mount_point)
            .collect();
        if !users.is_empty() {
            return Err(Failure::new(
                Kind::Busy,
                format!(
                    "the disk at controller {c}, LUN {l} ({}) is still mounted at {}",
                    found.node,
                    users.join(", ")
                ),
            )
            .device(found.node));
        }
        match scsi::delete(&found, DISK_DELETE_TIMEOUT) {
            Ok(true) => {
                tracing::info!(controller = c, lun = l, device = %found.node, "disk removed");
                Ok(true)
            }
            Ok(false) => Err(Failure::new(
                Kind::Busy,
                format!(
                    "the disk at controller {c}, LUN {l} ({}) did not go within {} s",
                    found.node,
                    DISK_DELETE_TIMEOUT.as_secs()
                ),
            )
            .device(found.node)),
            Err(e) => {
                let f = Failure::new(
                    Kind::MountFailed,
                    format!("deleting the disk {} failed: {e}", found.node),
                )
                .device(found.node);
                Err(match e.raw_os_error() {
                    Some(n) => f.errno(Errno::from_raw(n)),
                    None => f,
                })
            }
        }
    }
}

/// The mount flags a request asks for.
fn flags(req: &MountRequest) -> MsFlags {
    let mut f = MsFlags::empty();
    f.set(MsFlags::MS_RDONLY, req.read_only);
    f.set(MsFlags::MS_NOSUID, req.nosuid);
    f.set(MsFlags::MS_NODEV, req.nodev);
    f.set(MsFlags::MS_NOEXEC, req.noexec);
    f
}

/// Data options: `[A-Za-z0-9_=.:,-]` only, no empty item, no `ro`/`rw`.
pub fn check_options(options: &str) -> Result<(), Failure> {
    if options.is_empty() {
        return Ok(());
    }
    let bad = |why: String| {
        Err(Failure::new(
            Kind::BadOptions,
            format!("mount options {options:?} refused: {why}"),
        ))
    };
    if options.len() > 1024 {
        return bad("longer than 1024 bytes".into());
    }
    if let Some(c) = options
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_=.:,-".contains(*c)))
    {
        return bad(format!("the character {c:?} is not allowed"));
    }
    for item in options.split(',') {
        match item {
            "" => return bad("an empty option".into()),
            "ro" | "rw" => return bad(format!("{item:?} is set with read_only")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
