//! Real VMs that stop under a guest call: a guest panic or poweroff during
//! exec, and QEMU SIGKILLed during exec, dump_stacks and stats. Each call
//! returns `Error::VmExited` (or `GuestError::VmExited` from a `Process`)
//! with the typed reason, and no transport text. Each case runs
//! `UVM_VM_EXIT_LOOPS` times (default 20), so the broken stream and the exit
//! watcher race both ways. See `common/real.rs` for prerequisites.

mod common;

use std::time::Duration;

use common::real::{req, VmGuard};
use uvm::{Controller, Error, ExitReason};
use uvm_guest::{GuestError, ProcessSpec};

const FORBIDDEN: [&str; 4] = ["MetadataMap", "h2", "status: ", "details: ["];

fn loops() -> usize {
    std::env::var("UVM_VM_EXIT_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn rendered(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn assert_plain(e: &dyn std::error::Error) {
    let text = rendered(e);
    for w in FORBIDDEN {
        assert!(!text.contains(w), "{w:?} in {text:?}");
    }
}

/// The reason an `Error::VmExited` carries, or a panic naming the error.
fn vm_exit_reason(e: &Error) -> ExitReason {
    assert_plain(e);
    e.vm_exit_reason()
        .cloned()
        .unwrap_or_else(|| panic!("expected VmExited, got {e:?}: {}", rendered(e)))
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn kill_qemu(vm: &VmGuard, signal: nix::sys::signal::Signal) {
    let pid = vm.pid.expect("QEMU pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

async fn ends_terminated(vm: VmGuard, expect_clean: bool) {
    tokio::time::timeout(Duration::from_secs(30), vm.mgr.wait())
        .await
        .expect("wait bounded")
        .unwrap();
    let status = vm.mgr.exit_status().unwrap();
    assert_eq!(status.err.is_none(), expect_clean, "{status:?}");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_panic_during_exec_reports_the_panic() {
    for i in 0..loops() {
        let Some(vm) = VmGuard::boot(128).await else {
            return;
        };
        let guest = vm.mgr.guest().unwrap();
        // Half through the streaming Process, half through exec_into_host.
        let script = "sleep 0.05; echo c > /proc/sysrq-trigger; sleep 30";
        let reason = if i % 2 == 0 {
            let mut p = guest.spawn(sh(script)).await.unwrap();
            let e = tokio::time::timeout(Duration::from_secs(60), p.wait())
                .await
                .expect("bounded")
                .unwrap_err();
            assert_plain(&e);
            match e {
                GuestError::VmExited { reason } => reason,
                other => panic!("iteration {i}: {other:?}"),
            }
        } else {
            let e = vm
                .mgr
                .exec_into_host(req(&["sh", "-c", script]))
                .await
                .unwrap_err();
            assert_eq!(e.cli_exit_code(), 125);
            vm_exit_reason(&e)
        };
        match &reason {
            ExitReason::GuestPanic { console_tail } => {
                assert!(console_tail.contains("Kernel panic"), "{console_tail}")
            }
            other => panic!("iteration {i}: {other:?}"),
        }
        ends_terminated(vm, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_poweroff_during_exec_is_a_clean_stop() {
    for i in 0..loops() {
        let Some(vm) = VmGuard::boot(128).await else {
            return;
        };
        let e = vm
            .mgr
            .exec_into_host(req(&["sh", "-c", "sleep 0.05; poweroff -f"]))
            .await
            .unwrap_err();
        assert_eq!(
            vm_exit_reason(&e),
            ExitReason::GuestPoweroff,
            "iteration {i}"
        );
        assert_eq!(
            rendered(&e),
            "the VM stopped during exec: the guest powered off"
        );
        ends_terminated(vm, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_killed_during_exec_names_the_signal() {
    for i in 0..loops() {
        let Some(vm) = VmGuard::boot(128).await else {
            return;
        };
        let guest = vm.mgr.guest().unwrap();
        let mut p = guest.spawn(sh("sleep 100")).await.unwrap();
        // Vary the delay so the stream breaks before and after the reap.
        tokio::time::sleep(Duration::from_millis((i as u64 % 4) * 10)).await;
        kill_qemu(&vm, nix::sys::signal::Signal::SIGKILL);
        let e = tokio::time::timeout(Duration::from_secs(60), p.wait())
            .await
            .expect("bounded")
            .unwrap_err();
        assert_plain(&e);
        assert!(
            matches!(
                &e,
                GuestError::VmExited {
                    reason: ExitReason::Signaled { signal: 9 }
                }
            ),
            "iteration {i}: {e:?}"
        );
        assert!(rendered(&e).contains("killed by signal 9 (SIGKILL)"));
        ends_terminated(vm, false).await;
    }
}

/// Kills QEMU while `call` is in flight: on even iterations QEMU is stopped
/// first (the call is surely in flight), on odd ones it races the call.
async fn kill_during<F, Fut, T>(what: &str, call: F)
where
    F: Fn(std::sync::Arc<uvm::Manager>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let mut interrupted = 0;
    for i in 0..loops() {
        let Some(vm) = VmGuard::boot(128).await else {
            return;
        };
        if i % 2 == 0 {
            kill_qemu(&vm, nix::sys::signal::Signal::SIGSTOP);
        }
        let task = tokio::spawn(call(vm.mgr.clone()));
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 {
            50
        } else {
            i as u64 % 3
        }))
        .await;
        kill_qemu(&vm, nix::sys::signal::Signal::SIGKILL);
        let r = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("bounded")
            .unwrap();
        match r {
            Ok(_) => assert!(i % 2 == 1, "{what} {i}: answered by a stopped QEMU"),
            Err(e) => {
                let reason = vm_exit_reason(&e);
                assert_eq!(reason, ExitReason::Signaled { signal: 9 }, "{what} {i}");
                interrupted += 1;
            }
        }
        ends_terminated(vm, false).await;
    }
    assert!(
        interrupted >= loops() / 2,
        "{what}: {interrupted} interrupted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_killed_during_dump_stacks() {
    kill_during("dump_stacks", |m| async move { m.dump_stacks().await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_killed_during_stats() {
    kill_during("stats", |m| async move { m.stats().await }).await;
}
