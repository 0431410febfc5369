//! Devices and resources of a running QEMU VM: SCSI disks over QMP
//! (`blockdev-add` + `device_add scsi-hd`, `device_del` + `DEVICE_DELETED` +
//! `blockdev-del`), share binds, the balloon, the vCPU cgroup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::cmdline::{disk_device_id, disk_node_name, Disk};
use super::devices;
use super::vm::QemuVm;
use crate::cgroup::{CpuLimits, Hierarchy, VmCgroup};
use crate::qmp::QmpEvent;
use crate::{share_export, stats, DiskAttachment, ScsiInventory, UtilityVm, VmmError};

/// Bound on QEMU confirming a device's removal (`DEVICE_DELETED`).
pub const DEVICE_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl QemuVm {
    fn running_pid(&self) -> Result<u32, VmmError> {
        if self.exit_reason().is_some() {
            return Err(VmmError::State("not running"));
        }
        self.pid().ok_or(VmmError::State("not running"))
    }

    /// `blockdev-add` then `device_add`; the node is deleted again when the
    /// device cannot be added.
    pub(crate) async fn add_disk(&self, a: &DiskAttachment) -> Result<(), VmmError> {
        self.running_pid()?;
        let path = devices::absolute("disk", &a.path)?;
        if path.is_dir() {
            return Err(VmmError::File {
                what: "disk",
                path,
                source: std::io::Error::from_raw_os_error(libc::EISDIR),
            });
        }
        let format = devices::image_format(&path)?;
        let disk = Disk {
            path,
            format,
            read_only: a.read_only,
            controller: a.controller,
            lun: a.lun,
        };
        self.qmp_execute("blockdev-add", Some(disk.blockdev_json()))
            .await?;
        if let Err(e) = self
            .qmp_execute("device_add", Some(disk.device_json()))
            .await
        {
            let undo = json!({"node-name": disk.node_name()});
            if let Err(u) = self.qmp_execute("blockdev-del", Some(undo)).await {
                tracing::warn!(vm = %self.shared.id, error = %u, "undoing blockdev-add");
            }
            return Err(e);
        }
        Ok(())
    }

    /// `device_del`, wait for `DEVICE_DELETED` (bounded), `blockdev-del`.
    pub(crate) async fn remove_disk(&self, controller: u32, lun: u32) -> Result<(), VmmError> {
        self.running_pid()?;
        let id = disk_device_id(controller, lun);
        let mut events = self.qmp.events();
        self.qmp_execute("device_del", Some(json!({ "id": id })))
            .await?;
        let deleted = async {
            loop {
                match events.recv().await {
                    Ok(QmpEvent::Other { name, data })
                        if name == "DEVICE_DELETED"
                            && data.get("device").and_then(Value::as_str) == Some(&id) =>
                    {
                        return true
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        };
        match tokio::time::timeout(DEVICE_REMOVE_TIMEOUT, deleted).await {
            Ok(true) => {}
            Ok(false) => return Err(VmmError::State("not running")),
            Err(_) => {
                return Err(VmmError::Timeout {
                    what: "QEMU to confirm the disk's removal (DEVICE_DELETED)",
                    timeout: DEVICE_REMOVE_TIMEOUT,
                })
            }
        }
        let node = json!({ "node-name": disk_node_name(controller, lun) });
        self.qmp_execute("blockdev-del", Some(node)).await?;
        Ok(())
    }

    /// The scsi-hd devices (from `/machine/peripheral`) and named block nodes.
    pub(crate) async fn inventory(&self) -> Result<ScsiInventory, VmmError> {
        let peripherals = self
            .qmp_execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
            .await?;
        let mut disks: Vec<(u32, u32)> = peripherals
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["type"].as_str() == Some("child<scsi-hd>"))
            .filter_map(|p| parse_device_id(p["name"].as_str()?))
            .collect();
        disks.sort_unstable();
        let nodes = self.qmp_execute("query-named-block-nodes", None).await?;
        let mut block_nodes: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["node-name"].as_str().map(str::to_string))
            .collect();
        block_nodes.sort();
        Ok(ScsiInventory { disks, block_nodes })
    }

    /// The share export (`<runtime dir>/shares`).
    pub fn share_export(&self) -> PathBuf {
        self.dir_path.join(share_export::SHARES_DIR)
    }

    pub(crate) async fn bind(
        &self,
        name: &str,
        host: &Path,
        read_only: bool,
    ) -> Result<(), VmmError> {
        self.running_pid()?;
        let (export, name, host) = (self.share_export(), name.to_string(), host.to_path_buf());
        blocking(move || share_export::bind(&export, &name, &host, read_only).map(drop)).await
    }

    pub(crate) async fn unbind(&self, name: &str) -> Result<(), VmmError> {
        let (export, name) = (self.share_export(), name.to_string());
        blocking(move || share_export::unbind(&export, &name)).await
    }

    pub(crate) async fn balloon(&self, bytes: u64) -> Result<(), VmmError> {
        self.running_pid()?;
        self.qmp_execute("balloon", Some(json!({ "value": bytes })))
            .await
            .map(drop)
    }

    pub(crate) async fn balloon_actual(&self) -> Result<u64, VmmError> {
        let r = self.qmp_execute("query-balloon", None).await?;
        r["actual"].as_u64().ok_or_else(|| VmmError::Qmp {
            command: "query-balloon".into(),
            message: format!("no actual size in {r}"),
        })
    }

    pub(crate) async fn cpu_limits(&self, limits: &CpuLimits) -> Result<PathBuf, VmmError> {
        limits.validate()?;
        let pid = self.running_pid()?;
        let reply = self.qmp_execute("query-cpus-fast", None).await?;
        let tids = stats::vcpu_thread_ids(&reply);
        let mut cg = self.cgroup.lock().await;
        if cg.is_none() {
            let id = self.shared.id.clone();
            let made =
                blocking(move || VmCgroup::create(&Hierarchy::detect()?, &id, pid, &tids)).await?;
            *cg = Some(made);
        }
        let c = cg.as_ref().expect("made above");
        c.apply(limits)?;
        Ok(c.vcpus())
    }

    /// Removes the VM's cgroup once QEMU is gone.
    pub(crate) async fn remove_cgroup(&self) {
        if let Some(c) = self.cgroup.lock().await.take() {
            c.remove();
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VmmError> + Send + 'static,
) -> Result<T, VmmError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VmmError::Io {
            context: "host mount work".into(),
            source: std::io::Error::other(e),
        })?
}

/// (controller, LUN) from a device id `scsi-<c>-<l>`.
fn parse_device_id(id: &str) -> Option<(u32, u32)> {
    let (c, l) = id.strip_prefix("scsi-")?.split_once('-')?;
    Some((c.parse().ok()?, l.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_ids_round_trip() {
        let id = super::disk_device_id(2, 17);
        assert_eq!(super::parse_device_id(&id), Some((2, 17)));
        assert_eq!(super::parse_device_id("vser0"), None);
        assert_eq!(super::parse_device_id("scsi-x-1"), None);
    }
}
