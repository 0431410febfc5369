//! `containerd-shim-uvm-v2`: containerd's runtime v2 shim for uvm
//! (DESIGN §12). containerd's tasks run as containers in a Utility VM:
//! one UVM per container, or per pod when the CRI sandbox annotations
//! group containers (one shim per pod). Built on containerd's
//! rust-extensions (`containerd-shim`, ttrpc) and `uvm::Manager`.

#![warn(missing_docs)]

pub mod config;
pub mod error;
mod guest_cmd;
mod metrics;
pub mod private_containerd;
mod process;
pub mod rootfs;
pub mod sandbox;
mod service;
mod shim;
mod spec;
mod stdio;

pub use error::ShimError;
pub use service::Service;
pub use shim::{socket_address, UvmShim, RUNTIME_ID};
