//! Helpers for the CLI end-to-end tests: run the real `uvmctl` binary against
//! real VMs, each test in its own runtime root, and check nothing is left.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn uvmctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_uvmctl")
}

/// A private runtime root; on drop, asserts that no VM dir and no QEMU using
/// it is left (killing any stray QEMU first so one failure doesn't leak).
pub struct Sandbox {
    pub root: tempfile::TempDir,
    check_on_drop: bool,
}

impl Sandbox {
    pub fn new() -> Self {
        prepare_image();
        Sandbox {
            root: tempfile::Builder::new()
                .prefix("uvmctl-test-")
                .tempdir_in(test_tmp())
                .unwrap(),
            check_on_drop: true,
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `uvmctl` with this sandbox's runtime root.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(uvmctl_bin());
        c.env("UVM_RUNTIME_DIR", self.path());
        c
    }

    /// Runs `uvmctl ARGS`, feeding `stdin`, bounded by 180 s.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run_cmd(self.cmd(), args, stdin)
    }

    /// QEMU processes whose command line mentions this sandbox.
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids_mentioning(self.path())
    }

    /// VM dirs left in the runtime root.
    pub fn leftover_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.qemu_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.qemu_pids(), Vec::<u32>::new(), "QEMU left running");
        assert_eq!(
            self.leftover_dirs(),
            Vec::<PathBuf>::new(),
            "runtime dirs left"
        );
    }

    pub fn skip_check(&mut self) {
        self.check_on_drop = false;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let pids = self.qemu_pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
        if self.check_on_drop && !std::thread::panicking() {
            assert!(pids.is_empty(), "QEMU left running: {pids:?}");
            assert_eq!(
                self.leftover_dirs(),
                Vec::<PathBuf>::new(),
                "runtime dirs left"
            );
        }
    }
}

/// Runs `c ARGS`, feeding `stdin`, bounded by 180 s.
pub fn run_cmd(mut c: Command, args: &[&str], stdin: Option<&[u8]>) -> Output {
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().expect("spawn uvmctl");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    wait_output(child, Duration::from_secs(180))
}

/// Where test temp dirs go (short paths: unix socket paths are limited).
fn test_tmp() -> PathBuf {
    std::env::temp_dir()
}

/// Builds (or finds cached) the default image once per test process.
pub fn prepare_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new(uvmctl_bin())
            .args(["image", "build"])
            .output()
            .expect("uvmctl image build");
        assert!(
            out.status.success(),
            "uvmctl image build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Waits for `child` with a bound; kills it if the bound passes.
pub fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "uvmctl did not finish in {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of qemu-system processes whose argv mentions `path`.
pub fn qemu_pids_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let is_qemu = cmdline.starts_with("qemu-system") || cmdline.contains("/qemu-system");
        if is_qemu && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("uvmctl killed: {:?}", out.status))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
