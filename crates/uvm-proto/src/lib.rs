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

/// Where runtime mounts may go and how shares reach the guest; both sides
/// agree on these.
pub mod mounts {
    /// Guest directories under which `Mount` targets may lie.
    pub const ALLOWED_ROOTS: &[&str] = &["/mnt", "/run/uvm/mounts"];
    /// 9p mount tag of the VM's share export (its runtime dir's `shares/`).
    pub const SHARES_TAG: &str = "uvm-shares";
    /// Where the agent mounts the share export in the guest (once, on the
    /// first share mount); share `n` is `SHARES_GUEST_DIR/n`.
    pub const SHARES_GUEST_DIR: &str = "/run/uvm/shares";
    /// File systems the agent mounts from a disk.
    pub const DISK_FS_TYPES: &[&str] = &[
        "ext4", "ext3", "ext2", "xfs", "btrfs", "erofs", "squashfs", "vfat",
    ];
}

/// Version of the GCS protocol this crate speaks.
pub const PROTOCOL_VERSION: u32 = gcs::ProtocolVersion::V1 as u32;

/// Names of the virtio-serial ports, one per channel. Each port is named after
/// the channel's HCS/winio vsock service id (`XXXXXXXX-FACB-11E6-BD58-64006A7986D3`,
/// first field = the vsock port), in lower case.
pub mod ports {
    /// vsock port of the Linux GCS (`LINUX_GCS_VSOCK_PORT`).
    pub const GCS_VSOCK_PORT: u32 = 0x4000_0000;
    /// vsock port of the guest log stream (`LINUX_LOG_VSOCK_PORT`).
    pub const LOG_VSOCK_PORT: u32 = 109;
    /// vsock port of the entropy channel (`LINUX_ENTROPY_VSOCK_PORT`).
    pub const ENTROPY_VSOCK_PORT: u32 = 1;
    /// Default port carrying the gRPC GCS stream (overridable with `uvm.gcs_port`).
    pub const GCS: &str = "40000000-facb-11e6-bd58-64006a7986d3";
    /// Port carrying the agent's JSON log lines to the host.
    pub const LOG: &str = "0000006d-facb-11e6-bd58-64006a7986d3";
    /// Port on which the host writes entropy for the guest.
    pub const ENTROPY: &str = "00000001-facb-11e6-bd58-64006a7986d3";
    /// Bytes of entropy the host sends on the entropy channel.
    pub const ENTROPY_BYTES: usize = 512;
    /// The agent's answer on the entropy port once it has re-seeded after a
    /// restore and dropped the GCS connection the snapshot captured.
    pub const RESEEDED_ACK: u8 = b'R';

    /// vsock port of the first stdout port; port `i` is `STDOUT_VSOCK_PORT_BASE + i`.
    pub const STDOUT_VSOCK_PORT_BASE: u32 = 0x4000_1000;
    /// Stdout ports each VM gets: that many processes at once can write
    /// their stdout straight to the host; the others' goes through gRPC.
    pub const STDOUT_PORTS: u32 = 1;
    /// Most stdout ports a VM may have (virtio-serial has 31 ports per device).
    pub const MAX_STDOUT_PORTS: u32 = 16;

    /// Name of stdout port `i` (`i < MAX_STDOUT_PORTS`).
    pub fn stdout_port_name(i: u32) -> String {
        service_port_name(STDOUT_VSOCK_PORT_BASE + i)
    }

    /// The port name (service id string) for a vsock port number.
    pub fn service_port_name(port: u32) -> String {
        format!("{port:08x}-facb-11e6-bd58-64006a7986d3")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn well_known_names_match_their_ports() {
            assert_eq!(service_port_name(GCS_VSOCK_PORT), GCS);
            assert_eq!(service_port_name(LOG_VSOCK_PORT), LOG);
            assert_eq!(service_port_name(ENTROPY_VSOCK_PORT), ENTROPY);
        }
    }
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
