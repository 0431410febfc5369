//! The host↔guest channels a Utility VM is created with.

use uvm_proto::ports;
use uvm_vmm::ChannelSet;

/// Role (socket stem) of the GCS channel.
pub const GCS_ROLE: &str = "gcs";
/// Role of the guest log channel.
pub const LOG_ROLE: &str = "log";
/// Role of the entropy channel (LCOW only).
pub const ENTROPY_ROLE: &str = "entropy";

/// The channels for a guest: `gcs` (port named `gcs_port`, the GCS service id
/// string), `log`, and `entropy` when `with_entropy` (LCOW; WCOW has none).
pub fn channel_set(gcs_port: &str, with_entropy: bool) -> ChannelSet {
    let set = ChannelSet::default()
        .with(GCS_ROLE, gcs_port)
        .with(LOG_ROLE, ports::LOG);
    if with_entropy {
        set.with(ENTROPY_ROLE, ports::ENTROPY)
    } else {
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcow_has_entropy_wcow_does_not() {
        let l = channel_set(ports::GCS, true);
        let roles: Vec<_> = l.channels.iter().map(|c| c.role.as_str()).collect();
        assert_eq!(roles, [GCS_ROLE, LOG_ROLE, ENTROPY_ROLE]);
        assert_eq!(l.channels[0].port_name, ports::GCS);
        assert_eq!(channel_set(ports::GCS, false).channels.len(), 2);
    }
}
