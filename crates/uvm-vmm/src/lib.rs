//! Host side of a Utility VM ("vmmanager").
//!
//! [`Hypervisor`] creates VMs, [`UtilityVm`] drives one. The QEMU backend
//! implements both; tests swap in fakes behind the same traits.
#![warn(missing_docs)]

mod channel;
mod error;
mod exit;
mod traits;

pub use channel::{ChannelSet, ChannelSpec};
pub use error::VmmError;
pub use exit::{ExitReason, VmStatistics};
pub use traits::{Hypervisor, UtilityVm};
