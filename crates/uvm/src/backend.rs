//! The default VM backend.

use std::sync::Arc;

use uvm_vmm::{Hypervisor, QemuHypervisor};

/// The backend `Manager::new()` uses: QEMU (KVM when usable, else TCG).
pub(crate) fn default_hypervisor() -> Arc<dyn Hypervisor> {
    Arc::new(QemuHypervisor::new())
}
