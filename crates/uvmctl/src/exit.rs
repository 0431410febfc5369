//! Exit codes, as container CLIs use them, and how errors are shown.

/// uvmctl itself failed: bad flag, bad document, the VM failed.
pub const UVMCTL_FAILED: i32 = 125;
/// CMD was found but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// CMD was not found.
pub const NOT_FOUND: i32 = 127;

/// Exit code for a command killed by signal `n`.
pub fn signaled(n: i32) -> i32 {
    128 + n
}

/// The guest console's last lines when `e` says the VM stopped because the
/// guest kernel panicked (shown after the one-line error).
pub fn console_tail(e: &anyhow::Error) -> Option<&str> {
    e.chain().find_map(|c| {
        let reason = c
            .downcast_ref::<uvm::ExitReason>()
            .or_else(|| c.downcast_ref::<uvm::ExitError>().map(|e| e.reason()))
            .or_else(|| {
                c.downcast_ref::<uvm::Error>()
                    .and_then(|e| e.vm_exit_reason())
            })?;
        reason
            .console_tail()
            .map(str::trim_end)
            .filter(|t| !t.is_empty())
    })
}

/// Prints `uvmctl: ` and the one-line error to stderr, then the console tail
/// when the guest panicked.
pub fn report(e: &anyhow::Error) {
    eprintln!("uvmctl: {}", describe(e));
    if let Some(tail) = console_tail(e) {
        eprintln!("guest console (last lines):\n{tail}");
    }
}

/// One line: the error and its chain of causes, each said once.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_skips_repeated_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(inner).context("reading doc.json");
        assert_eq!(describe(&e), "reading doc.json: no such file");
    }

    #[test]
    fn signal_codes() {
        assert_eq!(signaled(9), 137);
    }
}
