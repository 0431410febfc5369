//! Options and results of the controller's operations.

use std::time::{Duration, SystemTime};

use uvm_guest::{ConfidentialOptions, ConfigOption};

use crate::{vsock_service_id, ExitError, LINUX_GCS_VSOCK_PORT};

/// What `create_vm` needs.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Unique id of the VM (non-empty, no whitespace; becomes the guest hostname).
    pub id: String,
    /// The VM document.
    pub document: uvm_schema::ComputeSystem,
}

/// Where a new VM comes from (see `Manager::create_vm_from`).
#[derive(Debug, Clone)]
pub enum VmOrigin {
    /// Booted from this document.
    Document(Box<uvm_schema::ComputeSystem>),
    /// Restored from this snapshot dir; the guest takes the VM's id as its
    /// hostname.
    Snapshot(std::path::PathBuf),
}

/// What `start_vm` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Service id of the GCS channel. It must be the one the channel was wired
    /// with at create (the Linux GCS id, [`crate::DEFAULT_GCS_SERVICE_ID`]).
    pub gcs_service_id: uuid::Uuid,
    /// Guest configuration applied during the handshake.
    pub config_options: Vec<ConfigOption>,
    /// Security policy and confidential options; None = the agent's default.
    pub confidential_options: Option<ConfidentialOptions>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            gcs_service_id: vsock_service_id(LINUX_GCS_VSOCK_PORT),
            config_options: Vec::new(),
            confidential_options: None,
        }
    }
}

/// How a VM that reached `Terminated` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// When the VM stopped.
    pub stopped_time: SystemTime,
    /// Why, when it was not a clean exit (guest poweroff and terminate on
    /// request are clean: None).
    pub err: Option<ExitError>,
}

/// Default bound on accepting the GCS connection and negotiating: generous,
/// because under TCG (no KVM) a boot takes seconds and a loaded host more.
pub const DEFAULT_GCS_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of guest RPCs made by the controller (stats, dump stacks, policy).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a guest call whose connection broke waits for the VM's exit to
/// be seen before it reports a lost connection instead of
/// [`crate::Error::VmExited`]: a dying QEMU resets the GCS socket a moment
/// before its process is reaped. Paid only when the connection breaks.
pub const VM_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Tunables of a [`crate::Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Bound on GCS connect + negotiate in `start_vm` ([`DEFAULT_GCS_TIMEOUT`]).
    /// It covers the guest's boot: QEMU connects the GCS channel at spawn, so
    /// the first `Negotiate` is what waits for the agent, and it gets what is
    /// left of this budget.
    pub gcs_timeout: Duration,
    /// Bound of each later guest RPC ([`DEFAULT_RPC_TIMEOUT`]); not of the
    /// first `Negotiate` (see `gcs_timeout`).
    pub rpc_timeout: Duration,
    /// Overrides the platform picked from the document (LinuxKernelDirect ⇒
    /// Lcow). No document that validates selects WCOW today; this runs the
    /// WCOW variant (no entropy, re-accepting log, finalize step).
    pub platform: Option<uvm_schema::Platform>,
    /// Stdout ports per VM ([`uvm_proto::ports::STDOUT_PORTS`], at most
    /// [`uvm_proto::ports::MAX_STDOUT_PORTS`]): that many processes at once
    /// write their stdout straight to the host instead of through gRPC. 0
    /// sends all stdout through gRPC.
    pub stdout_ports: u32,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            gcs_timeout: DEFAULT_GCS_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            platform: None,
            stdout_ports: uvm_proto::ports::STDOUT_PORTS,
        }
    }
}
