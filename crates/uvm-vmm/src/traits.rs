//! The backend seam: how the controller creates and drives a VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::net::UnixListener;
use uvm_schema::ComputeSystem;

use crate::{ChannelSet, CpuLimits, ExitReason, VmStatistics, VmmError};

/// A disk to put on the VM's SCSI controller while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAttachment {
    /// Host image (raw, qcow2, vhd, vhdx: read from its magic bytes).
    pub path: PathBuf,
    /// The guest sees a write-protected disk; the image is opened read-only.
    pub read_only: bool,
    /// Controller index (the guest's SCSI target).
    pub controller: u32,
    /// LUN.
    pub lun: u32,
}

/// What the hypervisor holds on its SCSI controller, as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScsiInventory {
    /// (controller, LUN) of each disk device.
    pub disks: Vec<(u32, u32)>,
    /// Node names of the disks' block nodes.
    pub block_nodes: Vec<String>,
}

/// File of a saved VM's device (and, without a memory file, RAM) state.
pub const STATE_FILE: &str = "state";
/// File of a saved VM's RAM when it was a shared memfd (sparse: only the
/// pages the guest touched hold data).
pub const MEMORY_FILE: &str = "memory";

/// What [`UtilityVm::save_state`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Size of [`STATE_FILE`].
    pub state_bytes: u64,
    /// Whether guest RAM went to [`MEMORY_FILE`] instead of the state stream.
    pub memory_file: bool,
    /// Bytes of RAM data written to [`MEMORY_FILE`] (the rest is holes).
    pub memory_data_bytes: u64,
}

/// How a VM created for a restore gets its state (see
/// [`Hypervisor::create_incoming`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The snapshot's [`MEMORY_FILE`], mapped copy-on-write as guest RAM;
    /// `None` when RAM comes in the state stream.
    pub memory_file: Option<PathBuf>,
}

/// The hypervisor facts a snapshot records and a restore compares.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HypervisorInfo {
    /// `major.minor.micro`.
    pub version: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Machine type (`microvm`, `q35`).
    pub machine: String,
    /// The argv the VM runs with (without the binary).
    pub argv: Vec<String>,
}

fn unsupported(what: &str) -> VmmError {
    VmmError::Unsupported(format!("{what} is not supported by this backend"))
}

/// Creates Utility VMs. The QEMU backend is the default implementation.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Creates the VM described by `doc` with its vCPUs stopped: runtime dir
    /// made, channel listeners bound, hypervisor spawned and its control
    /// connection established. Nothing is left behind when this fails.
    async fn create(
        &self,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
    ) -> Result<Arc<dyn UtilityVm>, VmmError>;

    /// Like [`Hypervisor::create`], but the VM waits for a saved state
    /// ([`UtilityVm::load_state`]) instead of booting. `doc` and `channels`
    /// must be the ones the state was saved with.
    async fn create_incoming(
        &self,
        _id: &str,
        _doc: &ComputeSystem,
        _channels: &ChannelSet,
        _incoming: &Incoming,
    ) -> Result<Arc<dyn UtilityVm>, VmmError> {
        Err(unsupported("restoring a saved VM"))
    }

    /// The facts [`HypervisorInfo`] holds for VMs this backend would create
    /// now (version, accelerator), without creating one.
    async fn probe_info(&self) -> Result<HypervisorInfo, VmmError> {
        Err(unsupported("describing the hypervisor"))
    }
}

/// One VM created by a [`Hypervisor`].
#[async_trait]
pub trait UtilityVm: Send + Sync {
    /// The VM id given at create.
    fn id(&self) -> &str;
    /// Takes the listener bound for the channel with this role (once).
    fn take_channel(&self, role: &str) -> Option<UnixListener>;
    /// Starts the vCPUs.
    async fn start(&self) -> Result<(), VmmError>;
    /// Stops the VM: graceful quit, SIGKILL after the grace period, reap.
    /// Returns once the process is gone. A no-op once it has exited.
    async fn terminate(&self) -> Result<(), VmmError>;
    /// Releases host resources (terminates first if needed, removes the
    /// runtime dir). Idempotent.
    async fn close(&self) -> Result<(), VmmError>;
    /// Waits until the VM process has exited and returns why. Any number of
    /// callers may wait at once; all get the same reason.
    async fn wait(&self) -> ExitReason;
    /// Why the VM exited, once it has.
    fn exit_reason(&self) -> Option<ExitReason>;
    /// The exit reason when it is not a clean one (see [`ExitReason::is_clean`]).
    fn exit_error(&self) -> Option<ExitReason> {
        self.exit_reason().filter(|r| !r.is_clean())
    }
    /// When the vCPUs were started.
    fn started_time(&self) -> Option<SystemTime>;
    /// When the VM process was seen to exit.
    fn stopped_time(&self) -> Option<SystemTime>;
    /// Host-side statistics.
    async fn statistics(&self) -> Result<VmStatistics, VmmError>;
    /// Host pid of the hypervisor process, while it runs.
    fn pid(&self) -> Option<u32>;
    /// The VM's private runtime directory.
    fn runtime_dir(&self) -> &Path;

    /// Puts a disk on the running VM's SCSI controller. Nothing is left
    /// attached when it fails.
    async fn hot_add_disk(&self, _disk: &DiskAttachment) -> Result<(), VmmError> {
        Err(unsupported("adding a disk"))
    }
    /// Unplugs the disk at (`controller`, `lun`) and waits, bounded, until
    /// the hypervisor says the device is gone; then drops its block node.
    async fn hot_remove_disk(&self, _controller: u32, _lun: u32) -> Result<(), VmmError> {
        Err(unsupported("removing a disk"))
    }
    /// The disks and block nodes the hypervisor holds.
    async fn scsi_inventory(&self) -> Result<ScsiInventory, VmmError> {
        Err(unsupported("listing disks"))
    }
    /// Bind-mounts `host` into the VM's share export as `name` (read-only
    /// when asked); the guest sees it under the export.
    async fn bind_share(
        &self,
        _name: &str,
        _host: &Path,
        _read_only: bool,
    ) -> Result<(), VmmError> {
        Err(unsupported("adding a share"))
    }
    /// Undoes [`UtilityVm::bind_share`].
    async fn unbind_share(&self, _name: &str) -> Result<(), VmmError> {
        Err(unsupported("removing a share"))
    }
    /// Asks the balloon for a guest memory size of `bytes`.
    async fn set_memory_target(&self, _bytes: u64) -> Result<(), VmmError> {
        Err(unsupported("changing memory"))
    }
    /// The guest memory size the balloon reports now.
    async fn memory_actual(&self) -> Result<u64, VmmError> {
        Err(unsupported("reading the balloon"))
    }
    /// Limits the vCPU threads (a cgroup v2 of the VM's own, made on first
    /// use); returns the cgroup holding them.
    async fn set_cpu_limits(&self, _limits: &CpuLimits) -> Result<PathBuf, VmmError> {
        Err(unsupported("limiting CPU"))
    }

    /// Stops the vCPUs of a running VM (the VM stays, frozen).
    async fn pause(&self) -> Result<(), VmmError> {
        Err(unsupported("pausing"))
    }
    /// Restarts the vCPUs after [`UtilityVm::pause`].
    async fn resume(&self) -> Result<(), VmmError> {
        Err(unsupported("resuming"))
    }
    /// Writes the paused VM's state into `dir` ([`STATE_FILE`], and
    /// [`MEMORY_FILE`] when guest RAM can be written as a file). `dir`
    /// exists; the files must not.
    async fn save_state(&self, _dir: &Path) -> Result<SavedState, VmmError> {
        Err(unsupported("saving a VM"))
    }
    /// Loads `state` (a [`STATE_FILE`]) into a VM made by
    /// [`Hypervisor::create_incoming`]; it stays paused until `start`.
    async fn load_state(&self, _state: &Path) -> Result<(), VmmError> {
        Err(unsupported("loading a saved VM"))
    }
    /// Live migration, destination side (a VM from
    /// [`Hypervisor::create_incoming`] without a memory file): listens for
    /// the source's stream; returns the socket to hand to the source.
    async fn listen_for_migration(&self) -> Result<PathBuf, VmmError> {
        Err(unsupported("receiving a migration"))
    }
    /// Waits until the incoming migration completed (the VM stays paused).
    async fn wait_migration_in(&self) -> Result<(), VmmError> {
        Err(unsupported("receiving a migration"))
    }
    /// Live migration, source side: streams the running VM to `socket`
    /// (at most `max_bandwidth` bytes/s); returns once it completed, the VM
    /// stopped.
    async fn migrate_out(
        &self,
        _socket: &Path,
        _max_bandwidth: Option<u64>,
    ) -> Result<(), VmmError> {
        Err(unsupported("migrating"))
    }
    /// Cancels [`UtilityVm::migrate_out`]; the VM runs on.
    async fn cancel_migration(&self) -> Result<(), VmmError> {
        Err(unsupported("migrating"))
    }
    /// The hypervisor facts of this VM.
    fn hypervisor_info(&self) -> HypervisorInfo {
        HypervisorInfo::default()
    }
}
