//! Benchmarks of the uvm lifecycle, each next to its baseline or peer
//! (DESIGN §9): boot vs raw QEMU boot to the first guest byte, exec vs
//! qemu-guest-agent, stdout vs raw virtio-serial, terminate and stats
//! latency, idle memory and density, runtime devices, and containers vs a
//! plain exec.
//!
//! Baselines run interleaved with ours in the same process, with the same
//! kernel, machine type, memory and accelerator. `uvmctl bench` calls [`run`].
#![warn(missing_docs)]

pub mod container;
pub mod containerd;
pub mod density;
pub mod hostfs;
pub mod hotplug;
pub mod memory;
pub mod ours;
pub mod qemu;
pub mod qga;
pub mod qga_image;
pub mod raw;
pub mod report;
pub mod restore;
mod run;
pub mod setup;
pub mod stats;

pub use report::Report;
pub use run::{chain, run};

use std::time::Duration;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An I/O step failed.
    #[error("{what}")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait expired.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// The bound.
        secs: u64,
    },
    /// QEMU exited while we waited for the guest.
    #[error("QEMU exited ({status}) while waiting for {what}; stderr: {stderr}")]
    QemuExited {
        /// What we waited for.
        what: &'static str,
        /// Exit status.
        status: String,
        /// Tail of QEMU's stderr.
        stderr: String,
    },
    /// A peer spoke something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The qemu-guest-agent peer image lacks an input (binary, library).
    #[error("image: {0}")]
    Image(String),
    /// uvm-image could not provide an image.
    #[error("image")]
    ImageBuild(#[from] uvm_image::Error),
    /// A call on the guest connection failed.
    #[error("guest {what} failed")]
    Guest {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: uvm_guest::GuestError,
    },
    /// An OCI image step failed.
    #[error("OCI image: {what}")]
    Oci {
        /// The step.
        what: &'static str,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<uvm_image::OciError>,
    },
    /// The controller under test failed.
    #[error("controller {what} failed")]
    Controller {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: uvm::Error,
    },
}

impl BenchError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

pub use uvm_image::KernelKind;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Quick mode (few runs, tuned kernel, small payload).
    pub quick: bool,
    /// Iterations per interleaved measurement.
    pub runs: usize,
    /// Kernels for the boot benchmark; the other benchmarks use the tuned
    /// kernel when listed, else the first.
    pub kernels: Vec<KernelKind>,
    /// Concurrent VM counts for the density benchmark.
    pub density_counts: Vec<usize>,
    /// Stdout throughput payload in MiB.
    pub throughput_mib: usize,
    /// Guest sizes for the memory benchmark.
    pub memory_sizes_mb: Vec<u32>,
    /// Guest memory for boot/exec/throughput/density.
    pub memory_mb: u32,
    /// Interval between `guest-exec-status` polls of the peer.
    pub qga_poll: Duration,
    /// Iterations of the in-guest fork+exec+wait floor loop.
    pub floor_iterations: usize,
    /// vCPUs per guest.
    pub cpus: u32,
    /// TCG translation-cache cap for the raw baselines; defaults to the
    /// backend's (`uvm_vmm::QemuConfig::tb_size_mb`) so both sides match.
    pub tb_size_mb: Option<u32>,
    /// Sections to run (names of [`SECTIONS`]); empty: all.
    pub only: Vec<String>,
}

/// The sections of a run, as `--only` names them.
pub const SECTIONS: &[&str] = &[
    "boot",
    "exec",
    "stdout",
    "hotplug",
    "container",
    "containerd",
    "restore",
    "memory",
    "density",
];

impl BenchOptions {
    /// `uvmctl bench --quick`: 3 runs, tuned kernel, 32 MiB, density 1/2/4.
    pub fn quick() -> Self {
        BenchOptions {
            quick: true,
            runs: 3,
            kernels: vec![KernelKind::Tuned],
            density_counts: vec![1, 2, 4],
            throughput_mib: 32,
            memory_sizes_mb: vec![128, 512],
            memory_mb: 128,
            qga_poll: Duration::from_millis(1),
            floor_iterations: 200,
            cpus: 1,
            tb_size_mb: Some(uvm_vmm::QemuConfig::default().tb_size_mb),
            only: Vec::new(),
        }
    }

    /// These options running only `sections` (empty: all).
    pub fn only(self, sections: Vec<String>) -> Self {
        BenchOptions {
            only: sections,
            ..self
        }
    }

    /// Whether `section` (one of [`SECTIONS`]) runs.
    pub fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    /// `uvmctl bench`: 10 runs, both kernels, 256 MiB, density 1..16.
    pub fn full() -> Self {
        BenchOptions {
            quick: false,
            runs: 10,
            kernels: vec![KernelKind::Tuned, KernelKind::Stock],
            density_counts: vec![1, 2, 4, 8, 16],
            throughput_mib: 256,
            ..Self::quick()
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self::full()
    }
}
