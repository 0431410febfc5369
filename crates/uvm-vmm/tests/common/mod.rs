//! Helpers for the real-QEMU tests: a tiny busybox initramfs, the guest
//! kernel, per-test runtime roots, and guards that leave nothing behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uvm_vmm::{QemuConfig, QemuHypervisor, QemuVm, UtilityVm};

/// Generous bound for anything a TCG guest does on a loaded 2-core machine.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// One VM boot at a time per test binary: TCG on 2 loaded cores is slow enough.
pub static BOOT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The guest kernel: `$UVM_TEST_KERNEL`, else the tuned vmlinux if built, else
/// the stock distro bzImage (booted on q35, virtio drivers loaded from modules
/// packed into the test initramfs). `None` only when there is no kernel at all.
pub fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("UVM_TEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        let cache = home.join(".cache/uvm/kernel");
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with("build-"))
            .map(|e| e.path().join("vmlinux"))
            .filter(|p| p.is_file())
            .collect();
        found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        if let Some(k) = found.pop() {
            return Some(k);
        }
    }
    stock_kernel().map(|(k, _)| k)
}

/// The newest `/boot/vmlinuz-*` with its modules dir.
fn stock_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            let m = PathBuf::from("/lib/modules").join(&ver);
            m.is_dir().then(|| (e.path(), m))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Modules a stock kernel needs for the tests, dependencies first.
const STOCK_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "pvpanic-mmio",
    "virtio_scsi",
    "sd_mod",
    "virtio_balloon",
];

/// The `.ko` files (dependencies first) to load when `kernel` is the stock kernel.
fn modules_for(kernel: &Path) -> Vec<PathBuf> {
    let Some((stock, dir)) = stock_kernel() else {
        return Vec::new();
    };
    if stock != kernel {
        return Vec::new();
    }
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let by_name = |n: &str| {
        deps.keys()
            .find(|k| k.ends_with(&format!("/{n}.ko")))
            .cloned()
    };
    let mut out: Vec<String> = Vec::new();
    fn add(m: &str, deps: &std::collections::HashMap<String, Vec<String>>, out: &mut Vec<String>) {
        if out.iter().any(|x| x == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            add(d, deps, out);
        }
        out.push(m.to_string());
    }
    for n in STOCK_MODULES {
        if let Some(m) = by_name(n) {
            add(&m, &deps, &mut out);
        }
    }
    out.into_iter()
        .map(|m| dir.join(m))
        .filter(|p| p.is_file())
        .collect()
}

/// Host TSC frequency in kHz from /proc/cpuinfo, for `tsc_early_khz=` (microvm
/// has no HPET/PM timer; under TCG on a loaded host PIT calibration fails).
pub fn tsc_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Kernel command line for test guests.
pub fn cmdline() -> String {
    let mut c = "console=ttyS0 panic=-1 quiet".to_string();
    if let Some(k) = tsc_khz() {
        c.push_str(&format!(" tsc_early_khz={k}"));
    }
    c
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let namez = name.len() + 1;
    let hdr = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namez:08x}{:08x}",
        0, 0, 1, 0, data.len(), 0, 0, 0, 0, 0
    );
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() & 3 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

/// The tests' usual VM: `kernel` + `initrd`, 128 MiB, one vCPU, [`cmdline`].
#[allow(dead_code)] // not every test binary uses every helper
pub fn small_doc(kernel: &Path, initrd: &Path) -> uvm_schema::ComputeSystem {
    uvm_schema::LcowDocumentBuilder::new(kernel, initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build()
}

/// Writes a newc initramfs with busybox and `/init` = `script` (a busybox sh
/// script), plus the modules a stock kernel needs (loaded before `script`).
pub fn initramfs(dir: &Path, script: &str) -> PathBuf {
    let modules = kernel().map(|k| modules_for(&k)).unwrap_or_default();
    let busybox = std::fs::read("/bin/busybox")
        .expect("static busybox at /bin/busybox (apt-get install busybox-static)");
    let mut out = Vec::new();
    let mut ino = 1;
    for d in ["bin", "dev", "proc", "sys", "mnt", "tmp", "m"] {
        cpio_entry(&mut out, ino, d, 0o040755, &[]);
        ino += 1;
    }
    cpio_entry(&mut out, ino, "bin/busybox", 0o100755, &busybox);
    ino += 1;
    let mut load = String::new();
    for m in &modules {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        cpio_entry(
            &mut out,
            ino,
            &format!("m/{name}"),
            0o100644,
            &std::fs::read(m).unwrap(),
        );
        ino += 1;
        load.push_str(&format!("$B insmod /m/{name} 2>/dev/null\n"));
    }
    let init = format!("#!/bin/busybox sh\nB=/bin/busybox\n{load}{script}\n");
    cpio_entry(&mut out, ino, "init", 0o100755, init.as_bytes());
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    let p = dir.join("initramfs.cpio");
    std::fs::write(&p, out).unwrap();
    p
}

/// Script prelude mounting proc, sys and dev.
pub const MOUNTS: &str =
    "$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev";

/// A per-test world: temp dir, runtime root, hypervisor.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub hv: QemuHypervisor,
}

impl World {
    pub fn new() -> World {
        Self::with(|_| {})
    }
    pub fn with(f: impl FnOnce(&mut QemuConfig)) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let mut cfg = QemuConfig {
            runtime_root: Some(root.clone()),
            ..Default::default()
        };
        f(&mut cfg);
        World {
            hv: QemuHypervisor::with_config(cfg),
            root,
            tmp,
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    /// Asserts the runtime root holds nothing.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "runtime dirs left behind: {left:?}");
    }
}

/// Whether a process exists (and is not a zombie we failed to reap).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Asserts no process of ours has `needle` (e.g. the runtime root) in its argv.
pub fn assert_no_qemu_with(needle: &Path) {
    let needle = needle.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(&needle) && alive(pid) {
            panic!("process {pid} still running: {}", cmd.replace('\0', " "));
        }
    }
}

/// Kills QEMU on drop, whatever happened in the test.
pub struct Guard {
    pub vm: Arc<QemuVm>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self.vm.pid() {
            // SAFETY: plain kill(2) of the QEMU child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Waits (bounded) until the console log contains `needle`.
pub async fn wait_console(vm: &QemuVm, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + GUEST_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(vm.console_log_path()).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if tokio::time::Instant::now() > deadline || vm.exit_reason().is_some() {
            panic!(
                "console never showed {needle:?}; exit {:?}; console:\n{text}",
                vm.exit_reason()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Skips (returns None) with a printed reason when there is no guest kernel,
/// or fails when `UVM_REQUIRE_REAL_VM=1` (as `make test` sets it).
pub fn kernel_or_skip(test: &str) -> Option<PathBuf> {
    let k = kernel();
    if k.is_none() {
        let why = format!("{test}: no guest kernel (build guest/kernel or set UVM_TEST_KERNEL)");
        if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
            panic!("UVM_REQUIRE_REAL_VM=1 but {why}");
        }
        eprintln!("SKIP {why}");
    }
    k
}

/// Creates a VM (panicking with the error) under a kill-on-drop guard.
pub async fn boot(
    w: &World,
    id: &str,
    doc: &uvm_schema::ComputeSystem,
    ch: &uvm_vmm::ChannelSet,
) -> Guard {
    let vm =
        w.hv.create_vm(id, doc, ch)
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    Guard { vm: Arc::new(vm) }
}

/// `wait()`, bounded by [`GUEST_TIMEOUT`].
pub async fn wait_bounded(vm: &dyn uvm_vmm::UtilityVm) -> uvm_vmm::ExitReason {
    tokio::time::timeout(GUEST_TIMEOUT, vm.wait())
        .await
        .expect("VM did not exit in time")
}

/// Closes (twice: idempotent) and asserts nothing is left.
pub async fn finish(w: &World, g: Guard) {
    g.vm.close().await.unwrap();
    g.vm.close().await.unwrap(); // idempotent
    assert!(!g.vm.runtime_dir().exists());
    drop(g);
    w.assert_clean();
    assert_no_qemu_with(&w.root);
}
