//! Host side of the guest connection ("guestmanager").
//!
//! A Utility VM talks to its host over a few byte channels (DESIGN §6), each a
//! unix socket on the host bound by the VM backend:
//!
//! * `gcs`: gRPC (`uvm.gcs.v1.Gcs`) with the agent; the host is the HTTP/2
//!   client over that single stream ([`Guest`]).
//! * `log`: the agent's JSON log lines, re-emitted as `tracing` events
//!   ([`relay_logs`]).
//! * `entropy` (LCOW): 512 random bytes for the guest's pool ([`send_entropy`]).
//!
//! [`Guest`] offers the handshake ([`Guest::negotiate`] with [`ConfigOption`]s),
//! the security policy ([`ConfidentialOptions`]), a streaming exec API
//! ([`Guest::spawn`] → [`Process`]), exec with host stdio paths
//! ([`Guest::exec_with_paths`]), dump stacks, stats and shutdown.
#![warn(missing_docs)]

mod channels;
mod config;
mod containers;
mod error;
mod exec_paths;
mod guest;
mod handover;
mod logs;
mod process;
mod stdout_port;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod vm_exit;

pub use channels::{channel_set, stdout_role, ENTROPY_ROLE, GCS_ROLE, LOG_ROLE};
pub use config::{
    initial_state, ConfidentialOptions, ConfigOption, InitialState, SecurityPolicy, ShutdownMode,
};
pub use containers::{
    container_rootfs, ContainerInfo, ContainerRootfs, ContainerStatistics, ContainerStatus,
    CreateContainerRequest, CreateContainerResponse, OverlayRootfs, DELETE_CONTAINER_TIMEOUT,
};
pub use error::{GuestError, MountErrorKind};
pub use exec_paths::{ExecRequest, FIFO_OPEN_TIMEOUT};
pub use guest::{GcsIo, Guest, Negotiated, DEFAULT_RPC_TIMEOUT};
pub use handover::{Handover, HandoverStream};
pub use logs::{relay_logs, reseed_restored, send_entropy, MAX_LOG_LINE};
pub use process::{
    ContainerTarget, ExitOutcome, Process, ProcessControl, ProcessExit, ProcessOutput, ProcessSpec,
    ProcessStdin,
};
pub use uvm_proto::gcs::{Capabilities, GuestStats, MountRequest, MountResponse, ScsiAddress};
