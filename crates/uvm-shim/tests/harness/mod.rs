//! A real containerd of the test's own: its root, state, sockets, FIFOs
//! and config under a temp dir (never the system's `/run/containerd`),
//! the freshly built shim first on its PATH, the UVM runtime dir inside
//! the temp dir too. Dropping it stops containerd, kills any shim or QEMU
//! of its own that is left, unmounts and removes everything.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};
use uvm_shim::private_containerd::{tail, PrivateContainerd};

/// The image name `uvmctl image oci-busybox` writes.
pub const IMAGE: &str = "uvm/busybox:latest";
/// The shim's runtime name.
pub const RUNTIME: &str = "io.containerd.uvm.v2";

/// A prerequisite is missing: fail under `UVM_REQUIRE_REAL_VM=1`, else skip.
pub fn skip(why: &str) -> Option<Containerd> {
    if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
        panic!("containerd test prerequisite missing: {why}");
    }
    eprintln!("skipping containerd test: {why}");
    None
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The boot files, built or found once (kernel, initramfs with the agent).
fn image() -> Result<uvm_image::Image, String> {
    static IMAGE: std::sync::OnceLock<Result<uvm_image::Image, String>> =
        std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            uvm_image::ensure_image(&uvm_image::KernelKind::Tuned, &|_| {})
                .map_err(|e| format!("no guest image: {e}"))
        })
        .clone()
}

/// One containerd and its temp dir.
pub struct Containerd {
    inner: PrivateContainerd,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd, imports the busybox image; None (skip) when a
    /// prerequisite is missing and not required.
    pub fn start() -> Option<Self> {
        for bin in ["containerd", "ctr", "script"] {
            if !on_path(bin) {
                return skip(&format!(
                    "{bin} not found; fix: apt-get install containerd bsdutils (scripts/install-deps.sh)"
                ));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            return skip("containerd needs root");
        }
        let image = match image() {
            Ok(i) => i,
            Err(why) => return skip(&why),
        };
        // Short path: the shim's socket lives in <dir>/s/<64 hex>.
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let config = dir.path().join("uvm-shim.toml");
        let toml = uvm_shim::config::RuntimeConfig::for_boot_files(
            &image.kernel,
            &image.initrd,
            &image.cmdline,
            256,
            1,
        )
        .to_toml();
        std::fs::write(&config, toml).unwrap();
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-uvm-v2"));
        let inner = PrivateContainerd::start(
            dir.path(),
            shim.parent().unwrap(),
            vec![("UVM_SHIM_CONFIG".into(), config.clone())],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = Self { inner, config, dir };
        let busybox = uvm_image::locate_busybox().expect("busybox");
        let archive = c.path("busybox.tar");
        uvm_image::write_busybox_archive(&busybox, &archive).expect("busybox archive");
        let out = c.ctr(&["images", "import", &archive.display().to_string()]);
        assert!(out.status.success(), "import: {}", text(&out));
        Some(c)
    }

    /// Starts containerd again.
    /// A snapshot of the test image (256 MiB, 1 vCPU, `cmdline_extra`
    /// appended to its command line) in `<dir>/snap`, made as `uvmctl
    /// snapshot create` makes one, and a runtime config restoring it.
    pub fn snapshot_config(&self, cmdline_extra: &str) -> PathBuf {
        use std::sync::Arc;
        use uvm::{AfterSnapshot, Controller, CreateOptions, Manager, StartOptions};
        let img = image().expect("the image was found at start");
        let document = uvm_schema::LcowDocumentBuilder::new(img.kernel, img.initrd)
            .cmdline(format!("{} {cmdline_extra}", img.cmdline))
            .memory_mb(256)
            .processors(1)
            .owner("uvm-shim-test")
            .build();
        let dir = self.path("snap");
        let hv = uvm_vmm::QemuHypervisor::with_config(uvm_vmm::QemuConfig {
            shared_memory: true,
            ..uvm_vmm::QemuConfig::default()
        });
        let manager = Manager::with_hypervisor(Arc::new(hv));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let made = rt.block_on(async {
            let id = format!("shim-snap-{}", std::process::id());
            manager.create_vm(CreateOptions { id, document }).await?;
            manager.start_vm(StartOptions::default()).await?;
            manager.snapshot(&dir, AfterSnapshot::Terminate).await
        });
        let _ = rt.block_on(manager.terminate_vm());
        made.unwrap_or_else(|e| panic!("snapshot: {e}"));
        let config = self.path("uvm-shim-snapshot.toml");
        let toml = uvm_shim::config::RuntimeConfig::for_snapshot(&dir).to_toml();
        std::fs::write(&config, toml).unwrap();
        config
    }

    pub fn spawn_containerd(&mut self) {
        self.inner.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops containerd, leaving shims running.
    pub fn stop_containerd(&mut self) {
        self.inner.stop();
    }

    /// A path in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.inner.path(name)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// `ctr` against this containerd, stdin from /dev/null, bounded.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.inner.ctr(args).expect("run ctr")
    }

    /// The `ctr` command line as a string (for `script`), quoting `args`.
    pub fn ctr_line(&self, args: &[&str]) -> String {
        let mut s = format!("ctr --address {}", self.path("containerd.sock").display());
        for a in args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }

    /// `ctr run` with our runtime and FIFO dir: `opts` before the image,
    /// then the container id and the command.
    pub fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(opts, id, cmd);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&refs)
    }

    /// The arguments of [`Containerd::run`].
    pub fn run_args(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        self.inner.run_args(Some(RUNTIME), opts, IMAGE, id, cmd)
    }

    /// `ctr task exec` with the FIFO dir.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        let fifo = self.path("fifo").display().to_string();
        let mut a = vec![
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
        ];
        a.extend_from_slice(cmd);
        self.ctr(&a)
    }

    /// Pids of processes whose command line contains `needle`.
    pub fn pids_with(&self, needle: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && pid != std::process::id() as i32 {
                out.push(pid);
            }
        }
        out
    }

    /// Pids of processes whose command line contains `needle` and whose
    /// executable's path contains `exe`.
    fn processes(&self, needle: &str, exe: &str) -> Vec<i32> {
        self.pids_with(needle)
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|e| e.to_string_lossy().contains(exe))
            })
            .collect()
    }

    /// Our QEMU processes (their runtime dir is in our temp dir).
    pub fn qemus(&self) -> Vec<i32> {
        self.processes(&self.path("uvm-run").display().to_string(), "qemu-system")
    }

    /// Our shim processes.
    pub fn shims(&self) -> Vec<i32> {
        let sock = self.path("containerd.sock").display().to_string();
        self.processes(&sock, "containerd-shim-uvm-v2")
    }

    /// Mount points under our temp dir.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    /// VM runtime dirs left.
    pub fn runtime_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path("uvm-run"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Waits (bounded) until no shim, QEMU, mount or runtime dir of ours is
    /// left, and asserts so.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = (
                self.shims(),
                self.qemus(),
                self.mounts(),
                self.runtime_dirs(),
            );
            if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() && left.3.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind: shims {:?}, QEMU {:?}, mounts {:?}, runtime dirs {:?}\n{}",
                    left.0,
                    left.1,
                    left.2,
                    left.3,
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop_containerd();
        for pid in self.shims().into_iter().chain(self.qemus()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// stdout and stderr of `out`, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
