//! `uvm-gcs`: the guest agent of a uvm Utility VM.
//!
//! As PID 1 it mounts the basic file systems, loads kernel modules for a
//! stock kernel, reaps orphans, credits host entropy, logs JSON lines on the
//! `log` port and serves the `uvm.gcs.v1.Gcs` gRPC service over the `gcs`
//! virtio-serial port. Run as an ordinary process (`--serve-unix PATH`) it
//! serves the same service on a unix socket, for tests and development.
#![warn(missing_docs)]

pub mod boot_marks;
pub mod config;
pub mod container;
pub mod exec;
pub mod fdio;
pub mod init;
pub mod logging;
pub mod mounts;
pub mod newroot;
pub mod policy;
pub mod ports;
pub mod reaper;
pub mod resync;
pub mod server;
pub mod service;
pub mod spawn;
pub mod stacks;
pub mod stats;
pub mod stdout_port;
