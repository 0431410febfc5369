//! The `containerd` section: `ctr run --rm IMAGE ID true` wall time through
//! containerd with our shim (`io.containerd.uvm.v2`: a UVM booted per
//! container, and one restored from a snapshot per container) next to
//! containerd's default runtime (`io.containerd.runc.v2`) on the same
//! image, in turn, against one private containerd
//! (`uvm_shim::private_containerd`) started for the section.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use uvm_image::Image;
use uvm_shim::config::RuntimeConfig;
use uvm_shim::private_containerd::PrivateContainerd;

use crate::report::Latency;
use crate::stats::median;
use crate::{BenchError, BenchOptions};

/// Our runtime's name.
pub const UVM_RUNTIME: &str = "io.containerd.uvm.v2";
/// The image `uvmctl image oci-busybox` writes.
const IMAGE: &str = "uvm/busybox:latest";
/// The shim binary's name.
pub const SHIM_BINARY: &str = "containerd-shim-uvm-v2";

/// What the section reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerdBench {
    /// Median `ctr run --rm … true` with our runtime, ms.
    pub uvm_median_ms: Option<f64>,
    /// The same with runc, ms (None when runc does not work here).
    pub runc_median_ms: Option<f64>,
    /// uvm / runc.
    pub ratio: Option<f64>,
    /// Our runs.
    pub uvm: Latency,
    /// runc's runs.
    pub runc: Latency,
    /// Why runc was not measured, if it was not.
    pub runc_unavailable: Option<String>,
    /// Median `ctr run --rm … true` with our runtime restoring a snapshot
    /// (runtime config `vm.snapshot`) instead of booting, ms.
    pub uvm_restored_median_ms: Option<f64>,
    /// Restored / runc.
    pub restored_ratio: Option<f64>,
    /// Our restored runs.
    pub uvm_restored: Latency,
    /// Why the restored runs were not measured, if they were not.
    pub restored_unavailable: Option<String>,
    /// The shim measured.
    pub shim: String,
}

/// The shim: `$UVM_SHIM_BINARY`, else next to the running executable.
pub fn find_shim() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os("UVM_SHIM_BINARY").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::io("current exe", e))?;
    let beside = exe.with_file_name(SHIM_BINARY);
    if beside.is_file() {
        return Ok(beside);
    }
    Err(BenchError::Image(format!(
        "{SHIM_BINARY} not found beside {}; fix: cargo build --release -p uvm-shim (make build), or set UVM_SHIM_BINARY",
        exe.display()
    )))
}

fn ctr_ok(c: &PrivateContainerd, what: &str, args: &[&str]) -> Result<(), String> {
    match c.ctr(args) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One `ctr run --rm` of `true` (with `config` as the runtime config), ms.
fn run_once(
    c: &PrivateContainerd,
    runtime: Option<&str>,
    config: Option<&Path>,
    id: &str,
) -> Result<f64, String> {
    let config = config.map(|p| p.display().to_string());
    let mut opts = vec!["--rm"];
    if let Some(p) = &config {
        opts.extend(["--runtime-config-path", p]);
    }
    let args = c.run_args(runtime, &opts, IMAGE, id, &["true"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    ctr_ok(c, &format!("ctr run {}", runtime.unwrap_or("runc")), &refs)?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn measure(
    opts: &BenchOptions,
    image: &Image,
    dir: &Path,
    snapshot: Result<PathBuf, String>,
) -> Result<ContainerdBench, BenchError> {
    let shim = find_shim()?;
    let config = dir.join("uvm-shim.toml");
    let toml = RuntimeConfig::for_boot_files(
        &image.kernel,
        &image.initrd,
        &image.cmdline,
        opts.memory_mb.into(),
        opts.cpus,
    )
    .to_toml();
    std::fs::write(&config, toml).map_err(|e| BenchError::io("write the shim config", e))?;
    let c = PrivateContainerd::start(
        dir,
        shim.parent().unwrap_or(Path::new("/")),
        vec![("UVM_SHIM_CONFIG".into(), config)],
    )
    .map_err(|e| BenchError::Protocol(format!("containerd: {}", crate::run::chain(&e))))?;
    let archive = dir.join("busybox.tar");
    uvm_image::write_busybox_archive(Path::new(crate::container::BUSYBOX), &archive).map_err(
        |e| BenchError::Oci {
            what: "write the busybox archive",
            source: Box::new(e),
        },
    )?;
    ctr_ok(
        &c,
        "ctr images import",
        &["images", "import", &archive.display().to_string()],
    )
    .map_err(BenchError::Protocol)?;
    let restore_config = snapshot.and_then(|snap| {
        let path = dir.join("uvm-shim-snapshot.toml");
        std::fs::write(&path, RuntimeConfig::for_snapshot(&snap).to_toml())
            .map(|()| path)
            .map_err(|e| format!("write the snapshot config: {e}"))
    });
    let uvm = Some(UVM_RUNTIME);
    // One warm-up of each (the image's snapshot, the shim binary's pages).
    run_once(&c, uvm, None, "warm-uvm").map_err(BenchError::Protocol)?;
    let mut runc_unavailable = run_once(&c, None, None, "warm-runc").err();
    let (mut restore_config, mut restored_unavailable) = match restore_config {
        Ok(p) => match run_once(&c, uvm, Some(&p), "warm-restored") {
            Ok(_) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(e)),
    };
    let (mut ours, mut runc, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.runs {
        ours.push(run_once(&c, uvm, None, &format!("uvm-{i}")).map_err(BenchError::Protocol)?);
        if let Some(p) = &restore_config {
            match run_once(&c, uvm, Some(p), &format!("restored-{i}")) {
                Ok(ms) => restored.push(ms),
                Err(e) => restored_unavailable = Some(e),
            }
        }
        if restored_unavailable.is_some() {
            restore_config = None;
        }
        if runc_unavailable.is_none() {
            match run_once(&c, None, None, &format!("runc-{i}")) {
                Ok(ms) => runc.push(ms),
                Err(e) => runc_unavailable = Some(e),
            }
        }
    }
    let (u, r, s) = (median(&ours), median(&runc), median(&restored));
    Ok(ContainerdBench {
        uvm_median_ms: u,
        runc_median_ms: r,
        ratio: u.zip(r).map(|(u, r)| u / r),
        uvm: Latency::of(&ours),
        runc: Latency::of(&runc),
        runc_unavailable,
        uvm_restored_median_ms: s,
        restored_ratio: s.zip(r).map(|(s, r)| s / r),
        uvm_restored: Latency::of(&restored),
        restored_unavailable,
        shim: shim.display().to_string(),
    })
}

/// Runs the section against a containerd of its own in a fresh directory.
pub async fn section(opts: &BenchOptions, image: &Image) -> Result<ContainerdBench, BenchError> {
    for bin in ["containerd", "ctr"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(BenchError::Image(format!(
                "{bin} not found; fix: apt-get install containerd"
            )));
        }
    }
    // Short: the shim's sockets are <dir>/s/<64 hex>.
    let dir = tempfile::Builder::new()
        .prefix("ctd")
        .tempdir_in("/tmp")
        .map_err(|e| BenchError::io("containerd dir", e))?;
    // A snapshot of the same VM for the restored runs (removed with `dir`).
    let snap = dir.path().join("snap");
    let snapshot = crate::restore::take_snapshot(image, opts, &snap)
        .await
        .map(|_| snap)
        .map_err(|e| format!("snapshot: {}", crate::run::chain(&e)));
    let (opts, image, path) = (opts.clone(), image.clone(), dir.path().to_path_buf());
    let r = tokio::task::spawn_blocking(move || measure(&opts, &image, &path, snapshot))
        .await
        .map_err(|e| BenchError::Protocol(format!("containerd section: {e}")))?;
    // containerd is stopped (dropped) inside; no task is left running.
    drop(dir);
    r
}
