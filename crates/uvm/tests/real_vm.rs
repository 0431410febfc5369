//! Real Utility VMs: QEMU (TCG here, KVM where it works) booting the uvm image
//! with the `uvm-gcs` agent, driven through `Manager::new()`.
//!
//! Prerequisites: `qemu-system-x86_64`, a static `uvm-gcs`
//! (`RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p uvm-gcs
//! --target x86_64-unknown-linux-gnu`), busybox, and the kernel picked by
//! `UVM_TEST_KERNEL` (`tuned` (default), `stock` or a path). When they are
//! missing each test prints why and passes, unless `UVM_REQUIRE_REAL_VM=1`
//! (CI), which turns a missing prerequisite into a failure.
//!
//! Tests run one at a time (boots are slow under TCG, and each sets its own
//! `UVM_RUNTIME_DIR`), each under a guard that terminates the VM on drop, even
//! when the test panics, and checks nothing is left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uvm::{Controller, CreateOptions, Error, ExecRequest, Manager, StartOptions, State};
use uvm_image::KernelKind;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip<T>(why: String) -> Option<T> {
    if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
        panic!("real-VM prerequisite missing: {why}");
    }
    eprintln!("skipping real-VM test: {why}");
    None
}

/// The image, built or found once per test binary.
async fn image() -> Option<uvm_image::Image> {
    static IMAGE: tokio::sync::OnceCell<Result<uvm_image::Image, String>> =
        tokio::sync::OnceCell::const_new();
    match IMAGE.get_or_init(find_image).await {
        Ok(img) => Some(img.clone()),
        Err(why) => skip(why.clone()),
    }
}

async fn find_image() -> Result<uvm_image::Image, String> {
    let kind = match std::env::var("UVM_TEST_KERNEL").as_deref() {
        Ok("stock") => KernelKind::Stock,
        Ok("tuned") | Err(_) => KernelKind::Tuned,
        Ok(path) => KernelKind::Path(PathBuf::from(path)),
    };
    match tokio::task::spawn_blocking(move || {
        uvm_image::ensure_image(&kind, &|p| eprintln!("image: {p}"))
    })
    .await
    {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(format!("image: {e}")),
        Err(e) => Err(format!("image task: {e}")),
    }
}

/// A live VM for one test: terminated on drop, runtime root checked empty.
struct VmGuard {
    mgr: Arc<Manager>,
    runtime_root: tempfile::TempDir,
    pid: Option<u32>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl VmGuard {
    /// Boots a VM, or None when prerequisites are missing.
    async fn boot(mem_mb: u64) -> Option<VmGuard> {
        let serial = SERIAL.lock().await;
        let img = image().await?;
        let runtime_root = tempfile::tempdir().unwrap();
        std::env::set_var("UVM_RUNTIME_DIR", runtime_root.path());
        let doc = uvm_schema::LcowDocumentBuilder::new(&img.kernel, &img.initrd)
            .memory_mb(mem_mb)
            .processors(1)
            .cmdline(img.cmdline.clone())
            .build();
        let mgr = Arc::new(Manager::new().with_gcs_timeout(Duration::from_secs(120)));
        let id = format!("rt-{}", std::process::id());
        if let Err(e) = mgr.create_vm(CreateOptions { id, document: doc }).await {
            if matches!(
                &e,
                Error::Vmm {
                    source: uvm_vmm::VmmError::HypervisorNotFound { .. },
                    ..
                }
            ) {
                return skip(format!("backend: {e}: {}", chain(&e)));
            }
            panic!("create_vm: {e:?}");
        }
        let mut g = VmGuard {
            mgr,
            runtime_root,
            pid: None,
            _serial: serial,
        };
        g.pid = g.mgr.utility_vm().and_then(|v| v.pid());
        g.mgr
            .start_vm(StartOptions::default())
            .await
            .expect("start_vm");
        assert_eq!(g.mgr.state(), State::Running);
        assert!(g.mgr.start_time().is_some());
        Some(g)
    }

    /// Terminates (if needed) and checks that no QEMU, socket or dir is left.
    async fn finish(self) {
        self.mgr.terminate_vm().await.expect("terminate_vm");
        tokio::time::timeout(Duration::from_secs(30), self.mgr.wait())
            .await
            .expect("wait bounded")
            .unwrap();
        assert_eq!(self.mgr.state(), State::Terminated);
        assert_nothing_left(self.runtime_root.path(), self.pid);
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if self.mgr.state() == State::Terminated {
            return;
        }
        let mgr = self.mgr.clone();
        // Multi-thread runtime: block this worker while the VM is terminated.
        tokio::task::block_in_place(|| {
            let _ = tokio::runtime::Handle::current().block_on(mgr.terminate_vm());
        });
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

fn assert_nothing_left(root: &Path, pid: Option<u32>) {
    let left: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "runtime dir left behind: {left:?}");
    if let Some(pid) = pid {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "QEMU {pid} still running");
    }
}

fn req(args: &[&str]) -> ExecRequest {
    ExecRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

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
