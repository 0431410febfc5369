//! The `Controller` trait (the seed's interface).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::{
    CreateOptions, Error, ExecRequest, ExitStatus, Guest, StartOptions, State,
    VirtualMachineStatistics,
};

/// Lifecycle of one Utility VM. Object-safe: `Arc<dyn Controller>` works.
#[async_trait]
pub trait Controller: Send + Sync {
    /// The guest connection, once the VM is created.
    fn guest(&self) -> Option<Arc<Guest>>;
    /// The current state. Never blocks, even during `start_vm`.
    fn state(&self) -> State;
    /// Validates the document and creates the VM (vCPUs stopped). NotCreated → Created;
    /// fails with [`Error::AlreadyCreated`] in any other state.
    async fn create_vm(&self, opts: CreateOptions) -> Result<(), Error>;
    /// Starts the VM, connects to the guest and negotiates. Created → Running;
    /// a no-op when Running; any failure → Invalid.
    async fn start_vm(&self, opts: StartOptions) -> Result<(), Error>;
    /// Runs a process in the guest with host paths as stdio; returns its exit
    /// code (128+N for signal N). Needs Running.
    async fn exec_into_host(&self, req: ExecRequest) -> Result<i32, Error>;
    /// Stacks of the guest agent; "" when the guest lacks the capability. Needs Running.
    async fn dump_stacks(&self) -> Result<String, Error>;
    /// Waits until the VM exited and its log stream drained. Fails in NotCreated.
    async fn wait(&self) -> Result<(), Error>;
    /// Runtime statistics. Needs Running.
    ///
    /// Filled from: `processor.total_runtime_ns` = user+system CPU time of the
    /// vCPU threads; `memory.working_set_bytes` = resident set of the VM
    /// process; `memory.virtual_node_count` = NUMA nodes backing guest memory;
    /// `vm_memory.assigned_memory` = document memory in bytes;
    /// `vm_memory.available_memory` = the guest's MemAvailable in MiB (asked
    /// from the agent, bounded by the RPC timeout). Always 0/false because
    /// QEMU here has no such mechanism: `available_memory_buffer`,
    /// `reserved_memory` (all memory is assigned at boot), `slp_active`,
    /// `balancing_enabled`, `dm_operation_in_progress` (no dynamic memory).
    async fn stats(&self) -> Result<VirtualMachineStatistics, Error>;
    /// Terminates the VM and releases everything. No-op in NotCreated/Terminated;
    /// aborts an in-flight start; a failed terminate/close → Invalid.
    async fn terminate_vm(&self) -> Result<(), Error>;
    /// When the VM started; Some only in Running and Terminated.
    fn start_time(&self) -> Option<SystemTime>;
    /// How the VM ended; only in Terminated.
    fn exit_status(&self) -> Result<ExitStatus, Error>;
}
