//! Helpers of the real-VM tests: the image, a serialising lock, and a guard
//! that terminates its VM on drop (even on panic) and checks nothing is left.
//!
//! Prerequisites: `qemu-system-x86_64`, a static `uvm-gcs`
//! (`RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile agent -p uvm-gcs
//! --target x86_64-unknown-linux-gnu`), busybox, and the kernel picked by
//! `UVM_TEST_KERNEL` (`tuned` (default), `stock` or a path). When they are
//! missing each test prints why and passes, unless `UVM_REQUIRE_REAL_VM=1`
//! (CI), which turns a missing prerequisite into a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uvm::{
    Controller, CreateOptions, Error, ExecRequest, Manager, ManagerConfig, StartOptions, State,
};
use uvm_image::KernelKind;

pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn skip<T>(why: String) -> Option<T> {
    if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
        panic!("real-VM prerequisite missing: {why}");
    }
    eprintln!("skipping real-VM test: {why}");
    None
}

/// The image, built or found once per test binary.
pub async fn image() -> Option<uvm_image::Image> {
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

/// A one-vCPU document for the test image with `mem_mb` of memory.
pub fn document(img: &uvm_image::Image, mem_mb: u64) -> uvm_schema::ComputeSystem {
    uvm_schema::LcowDocumentBuilder::new(&img.kernel, &img.initrd)
        .memory_mb(mem_mb)
        .processors(1)
        .cmdline(img.cmdline.clone())
        .build()
}

/// Terminates every manager still running when dropped (panics included).
#[allow(dead_code)] // not every test binary uses every helper
pub struct TerminateOnDrop(pub Vec<Arc<Manager>>);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        for m in &self.0 {
            if m.state() == State::Terminated {
                continue;
            }
            let m = m.clone();
            // Multi-thread runtime: block this worker while the VM is terminated.
            tokio::task::block_in_place(|| {
                let _ = tokio::runtime::Handle::current().block_on(m.terminate_vm());
            });
        }
    }
}

/// A live VM for one test: terminated on drop, runtime root checked empty.
pub struct VmGuard {
    pub mgr: Arc<Manager>,
    pub runtime_root: tempfile::TempDir,
    pub pid: Option<u32>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl VmGuard {
    /// Boots a VM, or None when prerequisites are missing.
    pub async fn boot(mem_mb: u64) -> Option<VmGuard> {
        Self::boot_with(mem_mb, StartOptions::default()).await
    }

    /// Boots a VM started with `opts`, or None when prerequisites are missing.
    pub async fn boot_with(mem_mb: u64, opts: StartOptions) -> Option<VmGuard> {
        let g = Self::create(mem_mb).await?;
        g.mgr.start_vm(opts).await.expect("start_vm");
        assert_eq!(g.mgr.state(), State::Running);
        assert!(g.mgr.start_time().is_some());
        Some(g)
    }

    /// Boots a VM on a Manager with `config` (its gcs_timeout raised to 120 s).
    #[allow(dead_code)] // not every test binary uses every helper
    pub async fn boot_config(mem_mb: u64, config: ManagerConfig) -> Option<VmGuard> {
        let g = Self::create_config(mem_mb, config).await?;
        g.mgr
            .start_vm(StartOptions::default())
            .await
            .expect("start_vm");
        assert_eq!(g.mgr.state(), State::Running);
        Some(g)
    }

    /// Creates (does not start) a VM, or None when prerequisites are missing.
    pub async fn create(mem_mb: u64) -> Option<VmGuard> {
        Self::create_config(mem_mb, ManagerConfig::default()).await
    }

    /// [`VmGuard::create`] on a Manager with `config` (gcs_timeout 120 s).
    pub async fn create_config(mem_mb: u64, config: ManagerConfig) -> Option<VmGuard> {
        let serial = SERIAL.lock().await;
        let img = image().await?;
        let runtime_root = tempfile::tempdir().unwrap();
        std::env::set_var("UVM_RUNTIME_DIR", runtime_root.path());
        let doc = document(&img, mem_mb);
        let mgr = Arc::new(Manager::from_config(ManagerConfig {
            gcs_timeout: Duration::from_secs(120),
            ..config
        }));
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
        assert_eq!(mgr.state(), State::Created);
        let pid = mgr.utility_vm().and_then(|v| v.pid());
        Some(VmGuard {
            mgr,
            runtime_root,
            pid,
            _serial: serial,
        })
    }

    /// Terminates (if needed) and checks that no QEMU, socket or dir is left.
    pub async fn finish(self) {
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

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

pub fn assert_nothing_left(root: &Path, pid: Option<u32>) {
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

pub fn req(args: &[&str]) -> ExecRequest {
    ExecRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Waits (bounded) until `guest` has `n` idle stdout ports: they are
/// accepted in the background once the GCS connection is up.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn stdout_ports_ready(guest: &uvm_guest::Guest, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while guest.idle_stdout_ports() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} stdout ports after 10 s",
            guest.idle_stdout_ports()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a guest process left behind.
#[allow(dead_code)] // not every test binary uses every field
pub struct Finished {
    pub stdout: String,
    /// None on a terminal (merged into stdout).
    pub stderr: Option<String>,
    pub status: uvm_guest::ExitOutcome,
    pub on_port: bool,
}

/// Runs `spec` with stdin closed and collects both outputs (bounded: 120 s).
#[allow(dead_code)]
pub async fn run_spec(guest: &uvm_guest::Guest, spec: uvm_guest::ProcessSpec) -> Finished {
    collect(guest.spawn(spec).await.unwrap()).await.0
}

/// Closes `p`'s stdin, collects both outputs (bounded: 120 s) and its exit.
#[allow(dead_code)]
pub async fn collect(mut p: uvm_guest::Process) -> (Finished, uvm_guest::ProcessExit) {
    use tokio::io::AsyncReadExt;
    drop(p.stdin.take());
    let mut out = p.stdout.take().unwrap();
    let err = p.stderr.take();
    let has_stderr = err.is_some();
    let (mut o, mut e) = (String::new(), String::new());
    let read = async {
        let stderr = async {
            match err {
                Some(mut err) => err.read_to_string(&mut e).await.map(drop),
                None => Ok(()),
            }
        };
        tokio::try_join!(out.read_to_string(&mut o), stderr).unwrap();
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("output bounded");
    let exit = p.wait_exit().await.unwrap();
    let f = Finished {
        status: exit.outcome,
        on_port: p.stdout_on_port(),
        stdout: o,
        stderr: has_stderr.then_some(e),
    };
    (f, exit)
}

/// [`run_spec`] of `sh -c script`.
#[allow(dead_code)]
pub async fn sh(guest: &uvm_guest::Guest, script: &str) -> Finished {
    let spec = uvm_guest::ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    run_spec(guest, spec).await
}
