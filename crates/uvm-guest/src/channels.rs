//! The host↔guest channels a Utility VM is created with.

use uvm_proto::ports;
use uvm_vmm::ChannelSet;

/// Role (socket stem) of the GCS channel.
pub const GCS_ROLE: &str = "gcs";
/// Role of the guest log channel.
pub const LOG_ROLE: &str = "log";
/// Role of the entropy channel (LCOW only).
pub const ENTROPY_ROLE: &str = "entropy";

/// Role of stdout port `i` (`stdout0`, `stdout1`, ...).
pub fn stdout_role(i: u32) -> String {
    format!("stdout{i}")
}

/// The channels for a guest: `gcs` (port named `gcs_port`, the GCS service id
/// string), `log`, `entropy` when `with_entropy` (LCOW; WCOW has none), and
/// `stdout_ports` stdout ports (at most [`ports::MAX_STDOUT_PORTS`]).
pub fn channel_set(gcs_port: &str, with_entropy: bool, stdout_ports: u32) -> ChannelSet {
    let mut set = ChannelSet::default()
        .with(GCS_ROLE, gcs_port)
        .with(LOG_ROLE, ports::LOG);
    if with_entropy {
        set = set.with(ENTROPY_ROLE, ports::ENTROPY);
    }
    for i in 0..stdout_ports.min(ports::MAX_STDOUT_PORTS) {
        set = set.with(stdout_role(i), ports::stdout_port_name(i));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcow_has_entropy_wcow_does_not() {
        let l = channel_set(ports::GCS, true, 4);
        let roles: Vec<_> = l.channels.iter().map(|c| c.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                GCS_ROLE,
                LOG_ROLE,
                ENTROPY_ROLE,
                "stdout0",
                "stdout1",
                "stdout2",
                "stdout3"
            ]
        );
        assert_eq!(l.channels[0].port_name, ports::GCS);
        assert_eq!(
            l.channels[3].port_name,
            "40001000-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(channel_set(ports::GCS, true, 0).channels.len(), 3);
        assert_eq!(channel_set(ports::GCS, true, 1000).channels.len(), 3 + 16);
        let w: Vec<_> = channel_set(ports::GCS, false, 4)
            .channels
            .into_iter()
            .map(|c| c.role)
            .collect();
        assert!(!w.iter().any(|r| r == ENTROPY_ROLE), "{w:?}");
    }
}
