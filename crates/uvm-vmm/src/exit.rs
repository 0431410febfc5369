//! Why a VM stopped, and what it costs while it runs.

use std::time::Duration;

/// Why the VM (the hypervisor process) exited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5 / QEMU `guest-shutdown`): a clean exit.
    #[error("guest powered off")]
    GuestPoweroff,
    /// The guest reset while the VM is configured to stop on reset.
    #[error("guest reset")]
    GuestReset,
    /// The guest kernel panicked (pvpanic / `GUEST_PANICKED`).
    #[error("guest panicked; console tail:\n{console_tail}")]
    GuestPanic {
        /// Last lines of the guest console, for the error report.
        console_tail: String,
    },
    /// The hypervisor process was killed by a signal nobody asked for.
    #[error("hypervisor killed by signal {signal}")]
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// The hypervisor exited with an error status of its own.
    #[error("hypervisor exited with status {code}: {stderr_tail}")]
    HypervisorError {
        /// Process exit code.
        code: i32,
        /// Last lines of the hypervisor's stderr.
        stderr_tail: String,
    },
    /// The VM was terminated on request (`terminate`), gracefully or by SIGKILL
    /// after the grace period.
    #[error("terminated on request{}", if *.forced { " (killed after the grace period)" } else { "" })]
    TerminatedByRequest {
        /// Whether the grace period ran out and the process was SIGKILLed.
        forced: bool,
    },
}

impl ExitReason {
    /// Whether this is a clean exit: the guest powered off, or the host asked for it.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::GuestPoweroff | ExitReason::TerminatedByRequest { .. })
    }
}

/// Host-side statistics of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStatistics {
    /// user+system time of all vCPU threads.
    pub vcpu_runtime: Duration,
    /// Resident set of the VM process (bytes).
    pub working_set_bytes: u64,
    /// Memory assigned to the guest by the document (bytes).
    pub assigned_memory_bytes: u64,
    /// NUMA nodes backing guest memory.
    pub virtual_node_count: u32,
}
