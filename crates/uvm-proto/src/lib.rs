//! Protobuf and gRPC definitions shared by the uvm host and the `uvm-gcs` agent.
//!
//! * [`gcs`]: the Guest Compute Service spoken over the `gcs` channel.
//! * [`stats`]: `VirtualMachineStatistics`, mirroring hcsshim's `stats.proto`.
//!
//! The well-known channel identities (service ids, port names) live here too,
//! because both sides must agree on them.
#![allow(missing_docs)]

/// Guest Compute Service messages, client and server.
pub mod gcs {
    tonic::include_proto!("uvm.gcs.v1");
}

/// VM statistics, wire-compatible in shape with hcsshim's `stats.proto`.
pub mod stats {
    tonic::include_proto!("uvm.stats.v1");
}

/// Version of the GCS protocol this crate speaks.
pub const PROTOCOL_VERSION: u32 = gcs::ProtocolVersion::V1 as u32;

/// Name of the virtio-serial port (and host socket stem) for each channel.
pub mod ports {
    /// Port carrying the gRPC GCS stream, unless overridden on the cmdline.
    pub const GCS: &str = "uvm.gcs";
    /// Port carrying the agent's JSON log lines to the host.
    pub const LOG: &str = "uvm.log";
    /// Port on which the host writes entropy for the guest.
    pub const ENTROPY: &str = "uvm.entropy";
    /// Bytes of entropy the host sends on the entropy channel.
    pub const ENTROPY_BYTES: usize = 512;
}

/// Kernel command-line keys the agent reads (`key=value`).
pub mod cmdline {
    /// VM id; becomes the default hostname.
    pub const ID: &str = "uvm.id";
    /// Port name of the GCS channel (default [`super::ports::GCS`]).
    pub const GCS_PORT: &str = "uvm.gcs_port";
    /// Agent log level (`error`, `warn`, `info`, `debug`, `trace`).
    pub const LOG_LEVEL: &str = "uvm.log_level";
    /// `lcow` (entropy + log) or `wcow` (no entropy).
    pub const PLATFORM: &str = "uvm.platform";
}
