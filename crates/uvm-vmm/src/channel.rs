//! The host↔guest byte channels a VM is created with.

/// One channel: a virtio-serial port in the guest, a unix socket on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Short role name, also the socket stem in the runtime dir (`gcs`, `log`, `entropy`).
    pub role: String,
    /// Name of the virtio-serial port the guest opens (a service-id string).
    pub port_name: String,
}

/// The channels to wire into a VM. The backend binds one unix listener per
/// channel in the VM's runtime dir **before** spawning the hypervisor, which
/// connects to each as a client; the controller takes the listeners with
/// [`crate::UtilityVm::take_channel`] and accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSet {
    /// The channels, in port order.
    pub channels: Vec<ChannelSpec>,
}

impl ChannelSet {
    /// Adds a channel.
    pub fn with(mut self, role: impl Into<String>, port_name: impl Into<String>) -> Self {
        self.channels.push(ChannelSpec {
            role: role.into(),
            port_name: port_name.into(),
        });
        self
    }
}
