//! `uvmctl run` when the VM stops under the command: a guest panic, a guest
//! poweroff and a killed QEMU each print one plain sentence (the console tail
//! after a panic), exit 125, and leave nothing behind. Each runs
//! `UVM_VM_EXIT_LOOPS` times (default 20).

mod common;

use common::{code, stderr, Sandbox};

const FORBIDDEN: [&str; 4] = ["MetadataMap", "h2", "status: ", "details: ["];

fn loops() -> usize {
    std::env::var("UVM_VM_EXIT_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn check(sb: &Sandbox, script: &str, first_line: &str, rest: Option<&str>) {
    let out = sb.run(&["run", "--", "sh", "-c", script], None);
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "stderr: {err}");
    assert_eq!(err.lines().next(), Some(first_line), "stderr: {err}");
    if let Some(r) = rest {
        assert!(err.contains(r), "stderr: {err}");
    }
    for w in FORBIDDEN {
        assert!(!err.contains(w), "{w:?} in stderr: {err}");
    }
    sb.assert_clean();
}

#[test]
fn guest_panic_poweroff_and_killed_qemu_read_as_sentences() {
    let sb = Sandbox::new();
    for _ in 0..loops() {
        check(
            &sb,
            "sleep 0.05; echo c > /proc/sysrq-trigger; sleep 30",
            "uvmctl: the VM stopped while the command ran: guest kernel panic",
            Some("Kernel panic - not syncing"),
        );
        check(
            &sb,
            "sleep 0.05; poweroff -f",
            "uvmctl: the VM stopped while the command ran: the guest powered off",
            None,
        );
    }
}

#[test]
fn killed_qemu_names_the_signal() {
    let sb = Sandbox::new();
    for _ in 0..loops() {
        let child = sb
            .cmd()
            .args(["run", "--", "sleep", "100"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the VM to run the command, then kill its QEMU.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let pid = loop {
            if let Some(&pid) = sb.qemu_pids().first() {
                // Give the exec a moment to start.
                std::thread::sleep(std::time::Duration::from_millis(1500));
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "no QEMU started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "stderr: {err}");
        assert!(
            err.contains("the VM stopped") && err.contains("signal 9 (SIGKILL)"),
            "stderr: {err}"
        );
        for w in FORBIDDEN {
            assert!(!err.contains(w), "{w:?} in stderr: {err}");
        }
        sb.assert_clean();
    }
}
