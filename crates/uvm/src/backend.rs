//! The default VM backend.

use std::sync::Arc;

use async_trait::async_trait;
use uvm_schema::ComputeSystem;
use uvm_vmm::{ChannelSet, Hypervisor, UtilityVm, VmmError};

/// The backend `Manager::new()` uses.
pub(crate) fn default_hypervisor() -> Arc<dyn Hypervisor> {
    Arc::new(NoBackend)
}

/// Placeholder until the QEMU backend is linked: every create fails cleanly.
struct NoBackend;

#[async_trait]
impl Hypervisor for NoBackend {
    async fn create(
        &self,
        _id: &str,
        _doc: &ComputeSystem,
        _channels: &ChannelSet,
    ) -> Result<Arc<dyn UtilityVm>, VmmError> {
        Err(VmmError::HypervisorNotFound {
            binary: "qemu-system-x86_64".into(),
        })
    }
}
