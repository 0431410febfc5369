//! Why a VM stopped, and what it costs while it runs.

use std::time::Duration;

/// Why the VM (the hypervisor process) exited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5 / QEMU `guest-shutdown`): a clean exit.
    #[error("the guest powered off")]
    GuestPoweroff,
    /// The guest reset while the VM is configured to stop on reset.
    #[error("the guest rebooted (the VM stops on reset)")]
    GuestReset,
    /// The guest kernel panicked (pvpanic / `GUEST_PANICKED`). The console
    /// tail is kept in the variant, not in the message: see
    /// [`ExitReason::console_tail`].
    #[error("guest kernel panic")]
    GuestPanic {
        /// Last lines of the guest console, for the error report.
        console_tail: String,
    },
    /// The hypervisor process was killed by a signal nobody asked for.
    #[error("the hypervisor process was killed by signal {signal} ({})", signal_name(*.signal))]
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// The hypervisor exited with an error status of its own.
    #[error("the hypervisor exited with status {code}: {}", last_line(.stderr_tail))]
    HypervisorError {
        /// Process exit code.
        code: i32,
        /// Last lines of the hypervisor's stderr.
        stderr_tail: String,
    },
    /// The VM was live-migrated: it runs on as VM `to`, this one stopped.
    #[error("migrated to VM {to}")]
    Migrated {
        /// Id of the destination VM.
        to: String,
    },
    /// The VM was terminated on request (`terminate`), gracefully or by SIGKILL
    /// after the grace period.
    #[error("terminated on request{}", if *.forced { " (killed after the grace period)" } else { "" })]
    TerminatedByRequest {
        /// Whether the grace period ran out and the process was SIGKILLed.
        forced: bool,
    },
}

/// `SIGKILL` for 9, and so on; `signal N` for numbers Linux does not name.
pub fn signal_name(signal: i32) -> String {
    // Linux's standard signals, by number (glibc's sigabbrev_np is too new
    // to rely on).
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(signal).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("signal {signal}"),
    }
}

/// The last non-empty line of `text` (QEMU's stderr ends with the reason).
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error output")
}

impl ExitReason {
    /// The last lines of the guest console when the guest panicked.
    pub fn console_tail(&self) -> Option<&str> {
        match self {
            ExitReason::GuestPanic { console_tail } => Some(console_tail),
            _ => None,
        }
    }

    /// Whether this is a clean exit: the guest powered off, or the host asked for it.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestPoweroff | ExitReason::TerminatedByRequest { .. }
        )
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

/// Everything known when the hypervisor process has been reaped, from which
/// [`exit_reason`] decides why it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitFacts {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// Reason of the last QMP `SHUTDOWN` event seen.
    pub shutdown_reason: Option<String>,
    /// Whether a QMP `GUEST_PANICKED` event was seen.
    pub panicked: bool,
    /// `Some(forced)` when the host asked for termination (`forced`: the grace
    /// period ran out and SIGKILL was sent).
    pub requested: Option<bool>,
    /// Tail of the hypervisor's stderr.
    pub stderr_tail: String,
    /// Tail of the guest console.
    pub console_tail: String,
}

/// Marker a Linux guest prints on the console when it panics.
const PANIC_MARKER: &str = "Kernel panic - not syncing";

fn signal_from_stderr(stderr: &str) -> Option<i32> {
    let i = stderr.rfind("terminating on signal ")?;
    stderr[i + "terminating on signal ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Decides why the VM stopped. Pure: every input is in `f`.
///
/// Order: a guest panic (event, or a reset right after a console panic
/// message) wins; then a host request; then an unrequested signal; then the
/// guest's own shutdown/reset; then QEMU's exit code.
pub fn exit_reason(f: &ExitFacts) -> ExitReason {
    let reason = f.shutdown_reason.as_deref();
    let console_panicked = f.console_tail.contains(PANIC_MARKER);
    if f.panicked || reason == Some("guest-panic") {
        return ExitReason::GuestPanic {
            console_tail: f.console_tail.clone(),
        };
    }
    if let Some(forced) = f.requested {
        return ExitReason::TerminatedByRequest { forced };
    }
    if let Some(signal) = f.signal {
        return ExitReason::Signaled { signal };
    }
    match reason {
        Some("guest-shutdown") => return ExitReason::GuestPoweroff,
        Some("guest-reset" | "guest-triple-fault" | "subsystem-reset") => {
            return if console_panicked {
                ExitReason::GuestPanic {
                    console_tail: f.console_tail.clone(),
                }
            } else {
                ExitReason::GuestReset
            };
        }
        Some("host-qmp-quit" | "host-ui") => {
            return ExitReason::TerminatedByRequest { forced: false }
        }
        Some("host-signal") => {
            return ExitReason::Signaled {
                signal: signal_from_stderr(&f.stderr_tail).unwrap_or(libc::SIGTERM),
            }
        }
        _ => {}
    }
    ExitReason::HypervisorError {
        code: f.code.unwrap_or(-1),
        stderr_tail: f.stderr_tail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(code: Option<i32>, signal: Option<i32>, reason: Option<&str>) -> ExitFacts {
        ExitFacts {
            code,
            signal,
            shutdown_reason: reason.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn messages_are_sentences_with_details_in_the_variant() {
        let panic = ExitReason::GuestPanic {
            console_tail: "Kernel panic - not syncing: sysrq triggered crash".into(),
        };
        assert_eq!(panic.to_string(), "guest kernel panic");
        assert!(panic.console_tail().unwrap().contains("sysrq"));
        assert_eq!(
            ExitReason::Signaled { signal: 9 }.to_string(),
            "the hypervisor process was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(signal_name(64), "signal 64");
        let e = ExitReason::HypervisorError {
            code: 1,
            stderr_tail: "warning: x\nqemu: could not load kernel\n\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "the hypervisor exited with status 1: qemu: could not load kernel"
        );
        assert_eq!(
            ExitReason::GuestPoweroff.to_string(),
            "the guest powered off"
        );
    }

    #[test]
    fn guest_poweroff_is_clean() {
        let r = exit_reason(&facts(Some(0), None, Some("guest-shutdown")));
        assert_eq!(r, ExitReason::GuestPoweroff);
        assert!(r.is_clean());
    }

    #[test]
    fn guest_reset() {
        assert_eq!(
            exit_reason(&facts(Some(0), None, Some("guest-reset"))),
            ExitReason::GuestReset
        );
    }

    #[test]
    fn panic_by_event_or_reason_or_console() {
        let mut f = facts(Some(0), None, Some("guest-panic"));
        f.console_tail = "Kernel panic - not syncing: Attempted to kill init!".into();
        assert_eq!(
            exit_reason(&f),
            ExitReason::GuestPanic {
                console_tail: f.console_tail.clone()
            }
        );
        let mut g = facts(Some(1), None, None);
        g.panicked = true;
        assert!(matches!(exit_reason(&g), ExitReason::GuestPanic { .. }));
        // No pvpanic: panic=-1 reboots, -no-reboot exits with guest-reset.
        let mut h = facts(Some(0), None, Some("guest-reset"));
        h.console_tail = "...\nKernel panic - not syncing: sysrq triggered crash\n".into();
        assert!(matches!(exit_reason(&h), ExitReason::GuestPanic { .. }));
        assert!(!exit_reason(&h).is_clean());
    }

    #[test]
    fn unrequested_signal() {
        assert_eq!(
            exit_reason(&facts(None, Some(9), None)),
            ExitReason::Signaled { signal: 9 }
        );
        let mut f = facts(Some(0), None, Some("host-signal"));
        f.stderr_tail = "qemu-system-x86_64: terminating on signal 2 from pid 77 (bash)\n".into();
        assert_eq!(exit_reason(&f), ExitReason::Signaled { signal: 2 });
        assert_eq!(
            exit_reason(&facts(Some(0), None, Some("host-signal"))),
            ExitReason::Signaled {
                signal: libc::SIGTERM
            }
        );
    }

    #[test]
    fn requested_termination_graceful_and_forced() {
        let mut f = facts(Some(0), None, Some("host-qmp-quit"));
        f.requested = Some(false);
        assert_eq!(
            exit_reason(&f),
            ExitReason::TerminatedByRequest { forced: false }
        );
        let mut g = facts(None, Some(9), None);
        g.requested = Some(true);
        assert_eq!(
            exit_reason(&g),
            ExitReason::TerminatedByRequest { forced: true }
        );
        // Someone else's QMP quit.
        assert_eq!(
            exit_reason(&facts(Some(0), None, Some("host-qmp-quit"))),
            ExitReason::TerminatedByRequest { forced: false }
        );
    }

    #[test]
    fn hypervisor_error_keeps_stderr() {
        let mut f = facts(Some(1), None, None);
        f.stderr_tail = "qemu-system-x86_64: -drive file=x: Could not open 'x'".into();
        assert_eq!(
            exit_reason(&f),
            ExitReason::HypervisorError {
                code: 1,
                stderr_tail: f.stderr_tail.clone()
            }
        );
        assert!(!exit_reason(&f).is_clean());
    }
}
