//! The Utility VM controller (the seed's `vm` package).
//!
//! A [`Manager`] drives one Utility VM through the lifecycle of DESIGN §3:
//!
//! ```text
//! NotCreated ─create_vm─► Created ─start_vm─► Running ─VM exits / terminate_vm─► Terminated
//!                            │ start fails / terminate fails ─► Invalid ─terminate_vm─►┘
//! ```
//!
//! Guarantees beyond the seed:
//! * [`Controller::state`] and [`Controller::start_time`] never wait behind a
//!   long operation (the state lives in a `watch` cell, never locked across an await).
//! * [`Controller::terminate_vm`] during an in-flight [`Controller::start_vm`]
//!   aborts the start promptly ([`Error::StartAborted`]); the VM ends Terminated.
//! * Every async method is cancel-safe: lifecycle bodies run in tasks owned by
//!   the manager, so dropping a caller's future never half-applies a
//!   transition or leaks a VM. A dropped `start_vm` aborts the start (Invalid);
//!   `terminate_vm` then cleans up. Dropping the [`Manager`] terminates its VM.
//! * If the VM process dies while `start_vm` waits for the guest, `start_vm`
//!   fails at once with the exit reason ([`Error::VmExited`]), not at the timeout.
//! * The same holds after Running: an exec, dump stacks or stats call in
//!   flight when the VM stops returns [`Error::VmExited`] with the typed
//!   reason (a guest panic, a poweroff, a killed QEMU), never the transport's
//!   words; [`uvm_guest::Process::wait`] returns
//!   [`uvm_guest::GuestError::VmExited`] the same way.
//!
//! Platform variants are runtime values (`uvm_schema::Platform`): LCOW gets
//! 512 bytes of entropy and one log connection whose end releases `wait`;
//! WCOW gets no entropy, a log listener that re-accepts (one connection at a
//! time) and the finalize step (`UpdateHvSocketAddress`) after negotiate.
//!
//! Guest log lines become `tracing` events with target `uvm::guest` and a
//! `vm_id` field; lifecycle events (created, started, exited with reason) are
//! `info!` events with target `uvm::lifecycle`.
//!
//! ```no_run
//! # async fn demo(doc: uvm_schema::ComputeSystem) -> Result<(), uvm::Error> {
//! use uvm::{Controller, CreateOptions, Manager, StartOptions};
//! let ctrl = Manager::new();
//! ctrl.create_vm(CreateOptions { id: "my-uvm".into(), document: doc }).await?;
//! ctrl.start_vm(StartOptions::default()).await?;
//! // ... ctrl.guest() for guest interactions ...
//! ctrl.terminate_vm().await?;
//! ctrl.wait().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod backend;
mod channels;
mod containers;
mod controller;
pub mod devices;
mod error;
mod lifecycle;
mod manager;
mod migration;
mod options;
mod snapshot;
mod start;
mod state;
mod stats;

pub use containers::{default_spec, ContainerRootfs, CreatedContainer};
pub use controller::Controller;
pub use devices::{DiskMount, ScsiAddress, ShareAttachment};
pub use error::{Error, ExitError};
pub use manager::Manager;
pub use migration::{MigrationOptions, MigrationPhase};
pub use options::{
    CreateOptions, ExitStatus, ManagerConfig, StartOptions, VmOrigin, DEFAULT_GCS_TIMEOUT,
    DEFAULT_RPC_TIMEOUT, VM_EXIT_GRACE,
};
pub use snapshot::{
    AfterSnapshot, FileFingerprint, RestoreOptions, SavedFile, SnapshotError, SnapshotManifest,
    MANIFEST_FILE, MANIFEST_FORMAT,
};
pub use state::{transition, Event, InvalidTransition, State, Transition};
pub use uvm_guest::{
    ConfidentialOptions, ConfigOption, ExecRequest, Guest, InitialState, SecurityPolicy,
};
pub use uvm_proto::stats::VirtualMachineStatistics;
pub use uvm_schema::Platform;
pub use uvm_vmm::ExitReason;
pub use uvm_vmm::{CpuLimits, ScsiInventory};

/// vsock port of the Linux GCS.
pub const LINUX_GCS_VSOCK_PORT: u32 = uvm_proto::ports::GCS_VSOCK_PORT;
/// vsock port of the Linux guest log stream.
pub const LINUX_LOG_VSOCK_PORT: u32 = uvm_proto::ports::LOG_VSOCK_PORT;
/// vsock port of the Linux entropy channel.
pub const LINUX_ENTROPY_VSOCK_PORT: u32 = uvm_proto::ports::ENTROPY_VSOCK_PORT;
/// Service id of the Linux GCS (`vsock_service_id(LINUX_GCS_VSOCK_PORT)`).
pub const DEFAULT_GCS_SERVICE_ID: uuid::Uuid = vsock_service_id(LINUX_GCS_VSOCK_PORT);

/// The HCS/winio vsock service GUID for `port`:
/// `XXXXXXXX-FACB-11E6-BD58-64006A7986D3` with the port as first field.
pub const fn vsock_service_id(port: u32) -> uuid::Uuid {
    uuid::Uuid::from_fields(
        port,
        0xfacb,
        0x11e6,
        &[0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_match_port_names() {
        let id = vsock_service_id(LINUX_GCS_VSOCK_PORT);
        assert_eq!(id.to_string(), "40000000-facb-11e6-bd58-64006a7986d3");
        assert_eq!(id.to_string(), uvm_proto::ports::GCS);
        assert_eq!(
            vsock_service_id(LINUX_LOG_VSOCK_PORT).to_string(),
            uvm_proto::ports::LOG
        );
        assert_eq!(
            StartOptions::default().gcs_service_id,
            DEFAULT_GCS_SERVICE_ID
        );
    }

    #[test]
    fn controller_is_object_safe() {
        let m: std::sync::Arc<dyn Controller> = std::sync::Arc::new(Manager::new());
        assert_eq!(m.state(), State::NotCreated);
        assert!(m.start_time().is_none());
        assert!(m.exit_status().is_err());
        assert!(m.guest().is_none());
    }
}
