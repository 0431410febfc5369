//! Host side of a Utility VM ("vmmanager").
//!
//! [`Hypervisor`] creates VMs, [`UtilityVm`] drives one. The QEMU backend
//! ([`QemuHypervisor`], [`QemuVm`]) implements both; tests swap in fakes
//! behind the same traits. [`qmp`] is the async QMP client it uses.
#![warn(missing_docs)]

mod channel;
mod error;
mod exit;
pub mod qemu;
pub mod qmp;
pub mod runtime_dir;
pub mod stats;
mod traits;

pub use channel::{ChannelSet, ChannelSpec};
pub use error::VmmError;
pub use exit::{exit_reason, ExitFacts, ExitReason, VmStatistics};
pub use qemu::{Accel, QemuConfig, QemuHypervisor, QemuVm};
pub use runtime_dir::sweep_stale_runtime_dirs;
pub use traits::{Hypervisor, UtilityVm};
