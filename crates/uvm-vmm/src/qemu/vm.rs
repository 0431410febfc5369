//! [`QemuVm`]: one running QEMU process, driven over QMP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::process::{read_file_tail, Shared, CONSOLE_TAIL_BYTES};
use crate::qmp::{QmpClient, QmpError};
use crate::runtime_dir::RuntimeDir;
use crate::{stats, ExitReason, UtilityVm, VmStatistics, VmmError, LIFECYCLE};

/// Bound on QMP commands issued by the backend itself.
pub const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reaping QEMU after SIGKILL.
pub const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM backed by a QEMU process.
pub struct QemuVm {
    pub(crate) shared: Arc<Shared>,
    pub(crate) qmp: QmpClient,
    pub(crate) kill_tx: mpsc::Sender<()>,
    pub(crate) exit_rx: watch::Receiver<Option<ExitReason>>,
    pub(crate) channels: Mutex<HashMap<String, UnixListener>>,
    pub(crate) started: Mutex<Option<SystemTime>>,
    pub(crate) dir: Mutex<RuntimeDir>,
    pub(crate) dir_path: PathBuf,
    pub(crate) closed: tokio::sync::Mutex<bool>,
    pub(crate) terminate_grace: Duration,
    pub(crate) assigned_memory_bytes: u64,
    pub(crate) argv: Vec<String>,
    pub(crate) memory: super::cmdline::GuestMemory,
    pub(crate) info: crate::HypervisorInfo,
    pub(crate) cgroup: tokio::sync::Mutex<Option<crate::cgroup::VmCgroup>>,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm")
            .field("id", &self.shared.id)
            .field("dir", &self.dir_path)
            .finish_non_exhaustive()
    }
}

pub(crate) fn qmp_err(command: &str, e: QmpError) -> VmmError {
    VmmError::Qmp {
        command: command.to_string(),
        message: e.to_string(),
    }
}

impl QemuVm {
    /// Runs a QMP command (for diagnostics and tests).
    pub async fn qmp_execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        self.qmp
            .execute(command, arguments, QMP_COMMAND_TIMEOUT)
            .await
            .map_err(|e| qmp_err(command, e))
    }

    /// The QMP session (events, raw commands).
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// The last bytes the guest wrote to its console (serial port 0).
    pub fn console_tail(&self) -> String {
        read_file_tail(&self.shared.console_log, CONSOLE_TAIL_BYTES)
    }

    /// The console log file in the runtime dir.
    pub fn console_log_path(&self) -> &Path {
        &self.shared.console_log
    }

    /// The tail of QEMU's stderr.
    pub fn stderr_tail(&self) -> String {
        self.shared.stderr_tail.lock().unwrap().text()
    }

    /// The argv QEMU was started with (without the binary).
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    async fn wait_exit(&self) -> ExitReason {
        let mut rx = self.exit_rx.clone();
        let r = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match r {
            Ok(Some(reason)) => reason,
            // The owner task always publishes before dropping the sender.
            _ => ExitReason::HypervisorError {
                code: -1,
                stderr_tail: "VM owner task vanished".into(),
            },
        }
    }
}

#[async_trait]
impl UtilityVm for QemuVm {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn take_channel(&self, role: &str) -> Option<UnixListener> {
        self.channels.lock().unwrap().remove(role)
    }

    async fn start(&self) -> Result<(), VmmError> {
        if let Some(reason) = self.exit_reason() {
            return Err(VmmError::Exited {
                step: "start",
                reason,
            });
        }
        if self.started.lock().unwrap().is_some() {
            return Ok(());
        }
        match self.qmp.execute("cont", None, QMP_COMMAND_TIMEOUT).await {
            Ok(_) => {}
            Err(e) => {
                // Prefer the exit reason when QEMU died under us.
                if let Ok(Some(reason)) =
                    tokio::time::timeout(Duration::from_secs(2), self.wait_exit())
                        .await
                        .map(Some)
                {
                    return Err(VmmError::Exited {
                        step: "start",
                        reason,
                    });
                }
                return Err(qmp_err("cont", e));
            }
        }
        let now = SystemTime::now();
        self.started.lock().unwrap().get_or_insert(now);
        tracing::info!(target: LIFECYCLE, vm = %self.shared.id, "VM started");
        Ok(())
    }

    async fn terminate(&self) -> Result<(), VmmError> {
        if self.exit_reason().is_some() {
            return Ok(());
        }
        self.shared.requested.lock().unwrap().get_or_insert(false);
        let grace = self.terminate_grace;
        let graceful = tokio::time::timeout(grace, async {
            if let Err(e) = self.qmp.execute("quit", None, grace).await {
                tracing::debug!(vm = %self.shared.id, error = %e, "QMP quit");
            }
            self.wait_exit().await
        })
        .await;
        if graceful.is_err() {
            tracing::warn!(vm = %self.shared.id, ?grace, "QEMU did not quit in time; killing it");
            *self.shared.requested.lock().unwrap() = Some(true);
            let _ = self.kill_tx.try_send(());
            tokio::time::timeout(KILL_REAP_TIMEOUT, self.wait_exit())
                .await
                .map_err(|_| VmmError::Timeout {
                    what: "QEMU to die after SIGKILL",
                    timeout: KILL_REAP_TIMEOUT,
                })?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), VmmError> {
        let mut closed = self.closed.lock().await;
        if *closed {
            return Ok(());
        }
        self.terminate().await?;
        self.remove_cgroup().await;
        self.channels.lock().unwrap().clear();
        self.dir.lock().unwrap().remove()?;
        *closed = true;
        Ok(())
    }

    async fn wait(&self) -> ExitReason {
        self.wait_exit().await
    }

    fn exit_reason(&self) -> Option<ExitReason> {
        self.exit_rx.borrow().clone()
    }

    fn started_time(&self) -> Option<SystemTime> {
        *self.started.lock().unwrap()
    }

    fn stopped_time(&self) -> Option<SystemTime> {
        *self.shared.stopped.lock().unwrap()
    }

    async fn statistics(&self) -> Result<VmStatistics, VmmError> {
        let pid = self.pid().ok_or(VmmError::State("not running"))?;
        let reply = self.qmp_execute("query-cpus-fast", None).await?;
        let tids = stats::vcpu_thread_ids(&reply);
        let (vcpu_runtime, rss) = tokio::task::spawn_blocking(move || {
            (
                stats::threads_cpu_time(pid, &tids),
                stats::process_rss_bytes(pid),
            )
        })
        .await
        .map_err(|e| VmmError::Io {
            context: "statistics".into(),
            source: std::io::Error::other(e),
        })?;
        let working_set_bytes = rss.map_err(|source| VmmError::Io {
            context: format!("reading /proc/{pid}/smaps_rollup"),
            source,
        })?;
        Ok(VmStatistics {
            vcpu_runtime,
            working_set_bytes,
            // What the balloon has left the guest (the boot size until it moves).
            assigned_memory_bytes: self
                .balloon_actual()
                .await
                .unwrap_or(self.assigned_memory_bytes),
            virtual_node_count: 1,
        })
    }

    fn pid(&self) -> Option<u32> {
        *self.shared.pid.lock().unwrap()
    }

    fn runtime_dir(&self) -> &Path {
        &self.dir_path
    }

    async fn hot_add_disk(&self, disk: &crate::DiskAttachment) -> Result<(), VmmError> {
        self.add_disk(disk).await
    }

    async fn hot_remove_disk(&self, controller: u32, lun: u32) -> Result<(), VmmError> {
        self.remove_disk(controller, lun).await
    }

    async fn scsi_inventory(&self) -> Result<crate::ScsiInventory, VmmError> {
        self.inventory().await
    }

    async fn bind_share(&self, name: &str, host: &Path, read_only: bool) -> Result<(), VmmError> {
        self.bind(name, host, read_only).await
    }

    async fn unbind_share(&self, name: &str) -> Result<(), VmmError> {
        self.unbind(name).await
    }

    async fn set_memory_target(&self, bytes: u64) -> Result<(), VmmError> {
        self.balloon(bytes).await
    }

    async fn memory_actual(&self) -> Result<u64, VmmError> {
        self.balloon_actual().await
    }

    async fn set_cpu_limits(&self, limits: &crate::CpuLimits) -> Result<PathBuf, VmmError> {
        self.cpu_limits(limits).await
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.qmp_execute("stop", None).await.map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.qmp_execute("cont", None).await.map(drop)
    }

    async fn save_state(&self, dir: &Path) -> Result<crate::SavedState, VmmError> {
        self.save_to(dir).await
    }

    async fn load_state(&self, state: &Path) -> Result<(), VmmError> {
        self.load_from(state).await
    }

    async fn listen_for_migration(&self) -> Result<PathBuf, VmmError> {
        self.listen_incoming().await
    }

    async fn wait_migration_in(&self) -> Result<(), VmmError> {
        self.incoming_done().await
    }

    async fn migrate_out(&self, socket: &Path, max_bandwidth: Option<u64>) -> Result<(), VmmError> {
        self.send_to(socket, max_bandwidth).await
    }

    async fn cancel_migration(&self) -> Result<(), VmmError> {
        self.cancel_outgoing().await
    }

    fn hypervisor_info(&self) -> crate::HypervisorInfo {
        self.info.clone()
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Dropping `kill_tx` makes the owner task kill and reap QEMU.
        if let Ok(mut d) = self.dir.lock() {
            let _ = d.remove();
        }
    }
}
