//! Real Utility VMs: QEMU (TCG here, KVM where it works) booting the uvm image
//! with the `uvm-gcs` agent, driven through `Manager::new()`. See
//! `common/real.rs` for prerequisites and how missing ones are handled.
//!
//! Tests run one at a time (boots are slow under TCG, and each sets its own
//! `UVM_RUNTIME_DIR`), each under a guard that terminates the VM on drop, even
//! when the test panics, and checks nothing is left behind.

mod common;

use std::time::Duration;

use common::real::{req, VmGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uvm::{Controller, Error, ExecRequest, StartOptions, State};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_full_lifecycle() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let m = &vm.mgr;
    assert_eq!(m.exec_into_host(req(&["true"])).await.unwrap(), 0);
    assert_eq!(
        m.exec_into_host(req(&["sh", "-c", "exit 3"]))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        m.exec_into_host(req(&["sh", "-c", "kill -9 $$"]))
            .await
            .unwrap(),
        137
    );
    let nf = m
        .exec_into_host(req(&["/no/such/binary"]))
        .await
        .unwrap_err();
    assert_eq!(nf.cli_exit_code(), 127, "{nf:?}");
    let caps = m.guest().unwrap().capabilities().unwrap();
    let stacks = m.dump_stacks().await.unwrap();
    assert_eq!(stacks.is_empty(), !caps.dump_stacks);
    // start on Running is a no-op.
    m.start_vm(StartOptions::default()).await.unwrap();
    assert!(matches!(m.exit_status(), Err(Error::InvalidState { .. })));
    let started = m.start_time().unwrap();
    let mgr = vm.mgr.clone();
    vm.finish().await;
    let st = mgr.exit_status().unwrap();
    assert!(
        st.err.is_none(),
        "terminate on request is clean: {:?}",
        st.err
    );
    assert!(st.stopped_time >= started);
    assert_eq!(mgr.start_time(), Some(started));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_exec_stdio_through_fifos() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (i, o, e) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("err"),
    );
    for p in [&i, &o, &e] {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }
    let r = ExecRequest {
        args: vec![
            "sh".into(),
            "-c".into(),
            "cat; echo oops >&2; exit 5".into(),
        ],
        stdin: Some(i.clone()),
        stdout: Some(o.clone()),
        stderr: Some(e.clone()),
        ..Default::default()
    };
    let w = tokio::task::spawn_blocking(move || std::fs::write(i, b"through the fifo\n"));
    let ro = tokio::task::spawn_blocking(move || std::fs::read_to_string(o));
    let re = tokio::task::spawn_blocking(move || std::fs::read_to_string(e));
    assert_eq!(vm.mgr.exec_into_host(r).await.unwrap(), 5);
    w.await.unwrap().unwrap();
    assert_eq!(ro.await.unwrap().unwrap(), "through the fifo\n");
    assert_eq!(re.await.unwrap().unwrap(), "oops\n");
    // Regular files work too; terminal + stderr is refused before any I/O.
    let f = dir.path().join("file-out");
    let r = ExecRequest {
        stdout: Some(f.clone()),
        ..req(&["echo", "to a file"])
    };
    assert_eq!(vm.mgr.exec_into_host(r).await.unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "to a file\n");
    let tty = ExecRequest {
        terminal: true,
        stderr: Some(f),
        ..req(&["true"])
    };
    assert_eq!(
        vm.mgr.exec_into_host(tty).await.unwrap_err().grpc_code(),
        tonic::Code::FailedPrecondition
    );
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_streaming_exec() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    let spec = uvm_guest::ProcessSpec {
        args: vec!["cat".into()],
        ..Default::default()
    };
    let mut p = guest.spawn(spec).await.unwrap();
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"streamed").await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut out = String::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "streamed");
    assert_eq!(p.wait().await.unwrap(), uvm_guest::ExitOutcome::Code(0));
    let spec = uvm_guest::ProcessSpec {
        args: vec!["tty".into()],
        terminal: true,
        window: Some((40, 100)),
        ..Default::default()
    };
    let f = common::real::run_spec(&guest, spec).await;
    assert!(f.stderr.is_none(), "a terminal merges stderr into stdout");
    assert!(f.stdout.contains("/dev/pts/"), "{:?}", f.stdout);
    assert_eq!(f.status, uvm_guest::ExitOutcome::Code(0));
    let spec = uvm_guest::ProcessSpec {
        args: vec!["sleep".into(), "100".into()],
        ..Default::default()
    };
    let mut p = guest.spawn(spec).await.unwrap();
    p.signal(15).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), uvm_guest::ExitOutcome::Signal(15));
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_stats_grow() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let a = vm.mgr.stats().await.unwrap();
    let busy = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done";
    assert_eq!(
        vm.mgr
            .exec_into_host(req(&["sh", "-c", busy]))
            .await
            .unwrap(),
        0
    );
    let b = vm.mgr.stats().await.unwrap();
    let cpu = |s: &uvm::VirtualMachineStatistics| s.processor.as_ref().unwrap().total_runtime_ns;
    assert!(
        cpu(&b) > cpu(&a),
        "vCPU time grows: {} -> {}",
        cpu(&a),
        cpu(&b)
    );
    let mem = b.memory.unwrap();
    assert!(mem.working_set_bytes > 1 << 20);
    let vmm = mem.vm_memory.unwrap();
    assert_eq!(vmm.assigned_memory, 256 << 20);
    assert!(
        vmm.available_memory > 0 && vmm.available_memory < 256,
        "{}",
        vmm.available_memory
    );
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_poweroff_is_clean() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    vm.mgr
        .guest()
        .unwrap()
        .shutdown(uvm_guest::ShutdownMode::PowerOff)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), vm.mgr.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rx = vm.mgr.subscribe_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == State::Terminated),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(vm.mgr.exit_status().unwrap().err, None);
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sigkill_of_qemu_is_an_error_exit() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let pid = vm.pid.expect("QEMU pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), vm.mgr.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rx = vm.mgr.subscribe_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == State::Terminated),
    )
    .await
    .unwrap()
    .unwrap();
    let err = vm.mgr.exit_status().unwrap().err.expect("an error exit");
    assert_eq!(err.0, uvm_vmm::ExitReason::Signaled { signal: 9 });
    assert!(matches!(
        vm.mgr.stats().await,
        Err(Error::InvalidState {
            state: State::Terminated,
            ..
        })
    ));
    vm.finish().await;
}

/// Captures every tracing event of this test binary (installed once).
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static BUF: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sub = tracing_subscriber::fmt()
            .with_writer(move || W(buf))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_logs_and_entropy_reach_the_host() {
    let logs = captured_logs();
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    assert_eq!(vm.mgr.exec_into_host(req(&["true"])).await.unwrap(), 0);
    let id = vm.mgr.guest().unwrap().vm_id().to_string();
    let text = || String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for _ in 0..100 {
        if text().contains("process started") && text().contains("entropy credited") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = text();
    let guest_lines: Vec<&str> = t.lines().filter(|l| l.contains("uvm::guest")).collect();
    assert!(
        guest_lines.iter().any(|l| l.contains("process started")),
        "{t}"
    );
    assert!(
        guest_lines.iter().all(|l| l.contains(&id)),
        "every guest line names the VM: {guest_lines:?}"
    );
    assert!(
        guest_lines
            .iter()
            .any(|l| l.contains("entropy credited") && l.contains("512")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.contains("uvm::lifecycle") && l.contains("VM started")),
        "{t}"
    );
    vm.finish().await;
    assert!(text()
        .lines()
        .any(|l| l.contains("uvm::lifecycle") && l.contains("VM exited")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_exec_allow_list_policy_is_enforced() {
    let opts = StartOptions {
        confidential_options: Some(uvm::ConfidentialOptions {
            security_policy: uvm::SecurityPolicy::ExecAllowList(vec!["true".into()]),
        }),
        ..Default::default()
    };
    let Some(vm) = VmGuard::boot_with(256, opts).await else {
        return;
    };
    assert_eq!(vm.mgr.exec_into_host(req(&["true"])).await.unwrap(), 0);
    let denied = vm
        .mgr
        .exec_into_host(req(&["sh", "-c", "true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &denied,
            Error::Guest {
                source: uvm_guest::GuestError::DeniedByPolicy { .. },
                ..
            }
        ),
        "{denied:?}"
    );
    assert_eq!(denied.grpc_code(), tonic::Code::FailedPrecondition);
    vm.finish().await;
}
