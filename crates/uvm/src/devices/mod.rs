//! Devices and resources of a running UVM (DESIGN §10), what hcsshim's
//! controller calls `SCSIController()`, `Plan9Controller()`, `UpdateMemory`
//! and `UpdateCPU`:
//!
//! * SCSI disks hot-added on the VM's virtio-scsi controller
//!   ([`Manager::add_disk`], [`Manager::remove_disk`]) and mounted in the
//!   guest by address ([`Manager::mount_disk`]); a read-only image attached
//!   twice is one LUN with two users. [`Manager::attach_disk`] does both and
//!   frees the LUN when the mount fails.
//! * Shares: bind mounts into the VM's 9p share export
//!   ([`Manager::add_share`], [`Manager::remove_share`]), mounted in the
//!   guest with [`Manager::mount_share`].
//! * [`Manager::update_memory`] (virtio-balloon), [`Manager::update_cpu`]
//!   (a cgroup v2 of the VM's own).
//!
//! Each needs Running, and fails with the seed's [`Error::InvalidState`]
//! otherwise. Device changes are serialized per VM.

mod fs_type;
mod scsi;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uvm_guest::{Guest, MountRequest};
use uvm_proto::gcs::{mount_request, ScsiAddress as WireAddress};
use uvm_vmm::{CpuLimits, DiskAttachment, ScsiInventory, UtilityVm};

pub use fs_type::detect_fs_type;
pub use scsi::{ScsiAddress, LUNS_PER_CONTROLLER};

use crate::manager::Inner;
use crate::{Error, Manager, State};
use scsi::{Claim, ClaimError, Luns};

/// Bound on a hot-added disk appearing in the guest.
pub const DISK_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the balloon reaching a new size.
pub const BALLOON_TIMEOUT: Duration = Duration::from_secs(20);
/// Smallest memory size `update_memory` accepts.
pub const MIN_MEMORY_BYTES: u64 = 64 << 20;

/// How to mount a disk in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskMount {
    /// ext4, xfs, btrfs, erofs, squashfs or vfat; empty = read it from the
    /// image's superblock ([`detect_fs_type`], raw images only).
    pub fs_type: String,
    /// Mount read-only (always so for a read-only disk).
    pub read_only: bool,
    /// File-system data options (`mount -o`), no `ro`/`rw`.
    pub options: String,
}

/// A runtime share in the VM's share export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareAttachment {
    /// Its name in the export.
    pub name: String,
    /// The host path shown.
    pub host_path: PathBuf,
    /// Read-only (a read-only bind on the host).
    pub read_only: bool,
    /// Where the guest sees it once the export is mounted (the agent
    /// mounts the export on the first share mount).
    pub guest_path: String,
}

/// Where a guest mount came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MountSource {
    Disk(ScsiAddress),
    Share(String),
}

/// Runtime device state of one VM.
#[derive(Debug)]
pub(crate) struct Devices {
    luns: Luns,
    /// Runtime shares by name.
    shares: BTreeMap<String, ShareAttachment>,
    next_share: u64,
    /// Guest mounts made through the manager, by target.
    mounts: BTreeMap<String, MountSource>,
    /// Containers made through the manager and the shares they hold.
    pub(crate) containers: crate::containers::Book,
}

impl Devices {
    /// The device state of a VM made from `doc`.
    pub(crate) fn for_document(doc: &uvm_schema::ComputeSystem) -> Devices {
        let disks = doc.scsi_disks();
        let reserved = disks
            .iter()
            .map(|d| ScsiAddress {
                controller: d.controller_index,
                lun: d.lun,
            })
            .collect();
        let controllers = doc.devices().scsi.len() as u32;
        Devices {
            luns: Luns::new(controllers, LUNS_PER_CONTROLLER, reserved),
            shares: BTreeMap::new(),
            next_share: 0,
            mounts: BTreeMap::new(),
            containers: Default::default(),
        }
    }

    /// Binds `host` (canonical) into the share export under a fresh name.
    pub(crate) async fn bind_share(
        &mut self,
        vm: &dyn UtilityVm,
        host: PathBuf,
        read_only: bool,
    ) -> Result<ShareAttachment, Error> {
        let name = format!("s{}", self.next_share);
        self.next_share += 1;
        vm.bind_share(&name, &host, read_only)
            .await
            .map_err(|source| Error::ShareBind {
                path: host.clone(),
                source: Box::new(source),
            })?;
        let share = ShareAttachment {
            guest_path: format!("{}/{name}", uvm_proto::mounts::SHARES_GUEST_DIR),
            name: name.clone(),
            host_path: host,
            read_only,
        };
        self.shares.insert(name, share.clone());
        Ok(share)
    }

    /// Unmounts the share's guest mounts and removes its host bind.
    pub(crate) async fn unbind_share(
        &mut self,
        guest: &Guest,
        vm: &dyn UtilityVm,
        name: &str,
        rpc_timeout: Duration,
    ) -> Result<(), Error> {
        for target in self.mounts_of(&MountSource::Share(name.to_string())) {
            guest
                .unmount(&target, rpc_timeout)
                .await
                .map_err(|e| Error::guest("unmount", e))?;
            self.mounts.remove(&target);
        }
        let share = self.shares.remove(name).ok_or_else(|| Error::NotAttached {
            what: format!("share {name:?}"),
        })?;
        vm.unbind_share(name)
            .await
            .map_err(|source| Error::ShareBind {
                path: share.host_path,
                source: Box::new(source),
            })
    }

    fn mounts_of(&self, src: &MountSource) -> Vec<String> {
        self.mounts
            .iter()
            .filter(|(_, s)| *s == src)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn claim_error(path: &Path, e: ClaimError) -> Error {
    match e {
        ClaimError::Full { controllers } => Error::ScsiFull {
            path: path.to_path_buf(),
            controllers,
        },
        ClaimError::InUse { at, read_only } => Error::DiskInUse {
            path: path.to_path_buf(),
            at,
            read_only,
        },
    }
}

impl Inner {
    /// The guest and VM of a Running VM, else the seed's state error.
    pub(crate) fn running(
        &self,
        op: &'static str,
    ) -> Result<(Arc<Guest>, Arc<dyn UtilityVm>), Error> {
        let guest = self.require_running(op)?;
        let vm = self.vm().ok_or(Error::InvalidState {
            op,
            state: self.state(),
        })?;
        Ok((guest, vm))
    }
}

fn host_file(path: &Path) -> Result<PathBuf, Error> {
    let p = std::fs::canonicalize(path).map_err(|source| Error::HostPath {
        what: "disk image",
        path: path.to_path_buf(),
        source,
    })?;
    if p.is_dir() {
        return Err(Error::HostPath {
            what: "disk image",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory, not a disk image",
            ),
        });
    }
    Ok(p)
}

impl Manager {
    pub(crate) fn devices_lock(&self) -> &tokio::sync::Mutex<Option<Devices>> {
        &self.inner().devices
    }

    /// Hot-adds the image at `path` on the VM's SCSI controller and returns
    /// its address; the same image added read-only again shares the LUN (one
    /// more user). The disk is not mounted (see [`Manager::mount_disk`]).
    pub async fn add_disk(&self, path: &Path, read_only: bool) -> Result<ScsiAddress, Error> {
        let (_, vm) = self.inner().running("add_disk")?;
        let path = host_file(path)?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::InvalidState {
            op: "add_disk",
            state: self.inner().state(),
        })?;
        let at = match d
            .luns
            .claim(&path, read_only)
            .map_err(|e| claim_error(&path, e))?
        {
            Claim::Shared(at) => return Ok(at),
            Claim::New(at) => at,
        };
        let attach = DiskAttachment {
            path: path.clone(),
            read_only,
            controller: at.controller,
            lun: at.lun,
        };
        match vm.hot_add_disk(&attach).await {
            Ok(()) => {
                d.luns.confirm(at);
                tracing::debug!(vm_id = %self.inner().id(), disk = %path.display(), %at, read_only, "disk added");
                Ok(at)
            }
            Err(source) => {
                d.luns.release(at);
                let e = Error::DiskAttach {
                    path,
                    at,
                    source: Box::new(source),
                };
                Err(self.inner().or_vm_exit("add_disk", e).await)
            }
        }
    }

    /// Drops one user of the disk at `at`; the last one unmounts what the
    /// manager mounted from it, detaches it in the guest and unplugs it. The
    /// LUN is free again once QEMU confirms the removal (bounded by
    /// [`uvm_vmm::qemu::DEVICE_REMOVE_TIMEOUT`]).
    pub async fn remove_disk(&self, at: ScsiAddress) -> Result<(), Error> {
        let (guest, vm) = self.inner().running("remove_disk")?;
        let rpc = self.inner().config.rpc_timeout;
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::NotAttached {
            what: at.to_string(),
        })?;
        match d.luns.unref(at) {
            None => {
                return Err(Error::NotAttached {
                    what: at.to_string(),
                })
            }
            Some(left) if left > 0 => return Ok(()),
            Some(_) => {}
        }
        let undo = |d: &mut Devices, e: Error| {
            d.luns.reref(at);
            e
        };
        for target in d.mounts_of(&MountSource::Disk(at)) {
            if let Err(e) = guest.unmount(&target, rpc).await {
                return Err(undo(d, Error::guest("unmount", e)));
            }
            d.mounts.remove(&target);
        }
        if let Err(e) = guest.remove_scsi_disk(at.controller, at.lun, rpc).await {
            return Err(undo(d, Error::guest("remove disk", e)));
        }
        if let Err(source) = vm.hot_remove_disk(at.controller, at.lun).await {
            let path = d.luns.get(at).map(|s| s.path.clone()).unwrap_or_default();
            // The LUN stays taken: QEMU may still hold the device.
            let e = Error::DiskDetach {
                path,
                at,
                source: Box::new(source),
            };
            return Err(undo(d, self.inner().or_vm_exit("remove_disk", e).await));
        }
        d.luns.release(at);
        tracing::debug!(vm_id = %self.inner().id(), %at, "disk removed");
        Ok(())
    }

    /// Mounts the disk at `at` on `target` in the guest (a path under
    /// `/mnt` or `/run/uvm/mounts`). A read-only disk is always mounted
    /// read-only. Returns the guest device (`/dev/sdb`).
    pub async fn mount_disk(
        &self,
        at: ScsiAddress,
        target: &str,
        how: &DiskMount,
    ) -> Result<String, Error> {
        let (guest, _) = self.inner().running("mount_disk")?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::NotAttached {
            what: at.to_string(),
        })?;
        let slot = d.luns.get(at).cloned();
        let fs_type = match (&how.fs_type, &slot) {
            (t, _) if !t.is_empty() => t.clone(),
            (_, Some(s)) => detect_fs_type(&s.path)
                .ok()
                .flatten()
                .ok_or_else(|| Error::UnknownFileSystem {
                    path: s.path.clone(),
                })?
                .to_string(),
            (_, None) => {
                return Err(Error::FailedPrecondition(
                    "mounting a document disk needs its fs type",
                ))
            }
        };
        let req = MountRequest {
            source: Some(mount_request::Source::Scsi(WireAddress {
                controller: at.controller,
                lun: at.lun,
            })),
            target: target.to_string(),
            fs_type,
            read_only: how.read_only || slot.as_ref().is_some_and(|s| s.read_only),
            options: how.options.clone(),
            wait_ms: DISK_APPEAR_TIMEOUT.as_millis() as u32,
            ..Default::default()
        };
        let rpc = self.inner().config.rpc_timeout;
        match guest.mount(req, rpc).await {
            Ok(r) => {
                d.mounts.insert(target.to_string(), MountSource::Disk(at));
                Ok(r.device)
            }
            Err(source) => {
                let e = match slot {
                    Some(s) if !matches!(source, uvm_guest::GuestError::VmExited { .. }) => {
                        Error::DiskMount {
                            path: s.path,
                            at,
                            source: Box::new(source),
                        }
                    }
                    _ => Error::guest("mount", source),
                };
                Err(self.inner().or_vm_exit("mount_disk", e).await)
            }
        }
    }

    /// [`Manager::add_disk`] then [`Manager::mount_disk`]; when the mount
    /// fails the disk is removed again (the LUN is free) and the error names
    /// the image.
    pub async fn attach_disk(
        &self,
        path: &Path,
        read_only: bool,
        target: &str,
        how: &DiskMount,
    ) -> Result<(ScsiAddress, String), Error> {
        let at = self.add_disk(path, read_only).await?;
        match self.mount_disk(at, target, how).await {
            Ok(dev) => Ok((at, dev)),
            Err(e) => {
                if self.inner().state() == State::Running {
                    if let Err(r) = self.remove_disk(at).await {
                        tracing::warn!(vm_id = %self.inner().id(), %at, error = %r, "removing a disk whose mount failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// Unmounts `target` in the guest (a mount made by this manager).
    pub async fn unmount(&self, target: &str) -> Result<(), Error> {
        let (guest, _) = self.inner().running("unmount")?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::NotAttached {
            what: target.into(),
        })?;
        if !d.mounts.contains_key(target) {
            return Err(Error::NotAttached {
                what: format!("mount at {target}"),
            });
        }
        guest
            .unmount(target, self.inner().config.rpc_timeout)
            .await
            .map_err(|e| Error::guest("unmount", e))?;
        d.mounts.remove(target);
        Ok(())
    }

    /// Bind-mounts `host_path` (a directory or a file) into the VM's share
    /// export, read-only when asked (the host kernel enforces it).
    pub async fn add_share(
        &self,
        host_path: &Path,
        read_only: bool,
    ) -> Result<ShareAttachment, Error> {
        let (_, vm) = self.inner().running("add_share")?;
        let host = std::fs::canonicalize(host_path).map_err(|source| Error::HostPath {
            what: "share",
            path: host_path.to_path_buf(),
            source,
        })?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::InvalidState {
            op: "add_share",
            state: self.inner().state(),
        })?;
        d.bind_share(vm.as_ref(), host, read_only).await
    }

    /// Bind-mounts the share `name` at `target` in the guest (read-only when
    /// asked; a read-only share is read-only whatever is asked).
    pub async fn mount_share(
        &self,
        name: &str,
        target: &str,
        read_only: bool,
    ) -> Result<(), Error> {
        let (guest, _) = self.inner().running("mount_share")?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices
            .as_mut()
            .ok_or(Error::NotAttached { what: name.into() })?;
        let share = d
            .shares
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotAttached {
                what: format!("share {name:?}"),
            })?;
        let req = MountRequest {
            source: Some(mount_request::Source::Share(name.to_string())),
            target: target.to_string(),
            read_only: read_only || share.read_only,
            ..Default::default()
        };
        guest
            .mount(req, self.inner().config.rpc_timeout)
            .await
            .map_err(|e| Error::guest("mount share", e))?;
        d.mounts
            .insert(target.to_string(), MountSource::Share(name.to_string()));
        Ok(())
    }

    /// Unmounts the share's guest mounts and removes its host bind.
    pub async fn remove_share(&self, name: &str) -> Result<(), Error> {
        let (guest, vm) = self.inner().running("remove_share")?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices
            .as_mut()
            .ok_or(Error::NotAttached { what: name.into() })?;
        if !d.shares.contains_key(name) {
            return Err(Error::NotAttached {
                what: format!("share {name:?}"),
            });
        }
        d.unbind_share(&guest, vm.as_ref(), name, self.inner().config.rpc_timeout)
            .await
    }

    /// Sets the guest's memory to `bytes` through the balloon and waits
    /// (bounded by [`BALLOON_TIMEOUT`]) until the guest has it. `bytes` is
    /// at least [`MIN_MEMORY_BYTES`] and at most the document's memory.
    pub async fn update_memory(&self, bytes: u64) -> Result<(), Error> {
        let (_, vm) = self.inner().running("update_memory")?;
        let max = self
            .inner()
            .info()
            .map(|i| i.assigned_memory_bytes)
            .unwrap_or(0);
        if bytes < MIN_MEMORY_BYTES || bytes > max {
            return Err(Error::InvalidMemory {
                bytes,
                min: MIN_MEMORY_BYTES,
                max,
            });
        }
        let bytes = bytes & !((1 << 20) - 1);
        vm.set_memory_target(bytes)
            .await
            .map_err(|e| Error::vmm("update_memory", e))?;
        let reached = async {
            loop {
                match vm.memory_actual().await {
                    Ok(actual) if actual == bytes => return Ok(()),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(BALLOON_TIMEOUT, reached).await {
            Ok(r) => r.map_err(|e| Error::vmm("update_memory", e)),
            Err(_) => Err(Error::Timeout {
                op: "the balloon reaching the new memory size",
                timeout: BALLOON_TIMEOUT,
            }),
        }
    }

    /// Limits the VM's vCPU threads (a cgroup v2 of the VM's own, made under
    /// the caller's cgroup or `$UVM_CGROUP_PARENT` on first use); returns
    /// the cgroup. Fails with a sentence saying why where the host offers no
    /// writable cgroup v2 with the cpu controller.
    pub async fn update_cpu(&self, limits: CpuLimits) -> Result<PathBuf, Error> {
        let (_, vm) = self.inner().running("update_cpu")?;
        vm.set_cpu_limits(&limits)
            .await
            .map_err(|e| Error::vmm("update_cpu", e))
    }

    /// What QEMU holds on the SCSI controller (disks, block nodes).
    pub async fn scsi_inventory(&self) -> Result<ScsiInventory, Error> {
        let (_, vm) = self.inner().running("scsi_inventory")?;
        vm.scsi_inventory()
            .await
            .map_err(|e| Error::vmm("scsi_inventory", e))
    }

    /// The runtime disks attached now.
    pub async fn attached_disks(&self) -> Vec<ScsiAddress> {
        let devices = self.devices_lock().lock().await;
        devices
            .as_ref()
            .map(|d| d.luns.attached())
            .unwrap_or_default()
    }

    /// The runtime shares attached now.
    pub async fn shares(&self) -> Vec<ShareAttachment> {
        let devices = self.devices_lock().lock().await;
        devices
            .as_ref()
            .map(|d| d.shares.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes every runtime share and disk (all their users), unmounting
    /// in the guest first so what was written reaches the host images.
    /// Stops at the first failure.
    pub async fn detach_all(&self) -> Result<(), Error> {
        for share in self.shares().await {
            self.remove_share(&share.name).await?;
        }
        for at in self.attached_disks().await {
            while self.attached_disks().await.contains(&at) {
                self.remove_disk(at).await?;
            }
        }
        Ok(())
    }
}
