//! The backend seam: how the controller creates and drives a VM.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::net::UnixListener;
use uvm_schema::ComputeSystem;

use crate::{ChannelSet, ExitReason, VmStatistics, VmmError};

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
}
