//! Raw QEMU for the baselines: accelerator choice, a typed argv builder that
//! mirrors the uvm-vmm backend's machine flags, and a process guard that kills
//! and reaps QEMU on drop.

use crate::BenchError;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The QEMU binary used for every baseline (and, through uvm-vmm, for ours).
pub const QEMU: &str = "qemu-system-x86_64";

/// Hardware or software execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM: `/dev/kvm` opens and the CPU advertises vmx or svm.
    Kvm,
    /// TCG software emulation.
    Tcg,
}

impl Accel {
    /// The same rule as the backend (DESIGN §5): KVM only when `/dev/kvm`
    /// opens read-write **and** `/proc/cpuinfo` has `vmx` or `svm`.
    pub fn detect() -> Accel {
        let opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let flags = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.split_whitespace().any(|w| w == "vmx" || w == "svm"))
            .unwrap_or(false);
        if opens && flags {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// Name as QEMU spells it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Machine type, which also picks the virtio transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `-M microvm`, virtio-mmio, PVH boot of an ELF vmlinux.
    Microvm,
    /// `-M q35`, virtio-pci, bzImage boot.
    Q35,
}

/// One raw QEMU launch: kernel, initrd, cmdline and virtio-serial ports on host sockets.
#[derive(Debug, Clone)]
pub struct RawVm {
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// TCG translation-cache cap in MiB (`-accel tcg,tb-size=N`); ignored under KVM.
    pub tb_size_mb: Option<u32>,
    /// Guest memory.
    pub memory_mb: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// `(port name, unix socket path)`; QEMU connects to each socket as a client.
    pub ports: Vec<(String, PathBuf)>,
    /// Where the guest serial console goes (`None`: nowhere).
    pub console: Option<PathBuf>,
}

impl RawVm {
    /// The argv after the binary name.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        match self.machine {
            Machine::Microvm => push(&["-machine", "microvm,x-option-roms=off"]),
            Machine::Q35 => push(&["-machine", "q35"]),
        }
        let accel = match (self.accel, self.tb_size_mb) {
            (Accel::Tcg, Some(tb)) => format!("tcg,tb-size={tb}"),
            (acc, _) => acc.name().to_string(),
        };
        let (mem, smp) = (self.memory_mb.to_string(), self.cpus.to_string());
        push(&["-accel", &accel]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-m", &format!("{mem}M"), "-smp", &smp]);
        let kernel = self.kernel.display().to_string();
        let initrd = self.initrd.display().to_string();
        push(&[
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            // Same hint the uvm-vmm backend adds: microvm under TCG hangs without it.
            &uvm_vmm::with_tsc_hint(&self.cmdline, self.machine == Machine::Microvm),
        ]);
        let serial = match &self.console {
            Some(p) => format!("file:{}", p.display()),
            None => "none".into(),
        };
        push(&["-serial", &serial]);
        let bus = match self.machine {
            Machine::Microvm => "virtio-serial-device",
            Machine::Q35 => "virtio-serial-pci",
        };
        push(&["-device", bus]);
        for (i, (name, path)) in self.ports.iter().enumerate() {
            let chardev = format!("socket,id=ch{i},path={}", path.display());
            let port = format!("virtserialport,chardev=ch{i},name={name}");
            push(&["-chardev", &chardev, "-device", &port]);
        }
        a
    }

    /// Spawns QEMU with stderr captured in `stderr_file`.
    pub fn spawn(&self, stderr_file: &Path) -> Result<QemuProcess, BenchError> {
        let err = File::create(stderr_file).map_err(|e| BenchError::io("create qemu stderr", e))?;
        let mut cmd = Command::new(QEMU);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| BenchError::io("spawn qemu", e))?;
        Ok(QemuProcess {
            child,
            stderr: stderr_file.to_path_buf(),
        })
    }
}

/// A running QEMU; killed (SIGKILL) and reaped on drop.
pub struct QemuProcess {
    child: Child,
    stderr: PathBuf,
}

impl QemuProcess {
    /// Host pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if QEMU has already exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last 2 KiB of QEMU's stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read(&self.stderr).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(2048)..]).into_owned()
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qemu-system-x86_64 --version`, first line.
pub fn version() -> String {
    Command::new(QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(machine: Machine) -> RawVm {
        RawVm {
            machine,
            accel: Accel::Tcg,
            tb_size_mb: Some(64),
            memory_mb: 128,
            cpus: 1,
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "quiet".into(),
            ports: vec![("uvm.raw".into(), "/s".into())],
            console: None,
        }
    }

    #[test]
    fn microvm_args() {
        let a = vm(Machine::Microvm).args().join(" ");
        assert!(a.contains("-machine microvm,x-option-roms=off"), "{a}");
        assert!(a.contains("-accel tcg,tb-size=64"), "{a}");
        assert!(a.contains("-device virtio-serial-device"), "{a}");
        assert!(a.contains(
            "-chardev socket,id=ch0,path=/s -device virtserialport,chardev=ch0,name=uvm.raw"
        ));
    }

    #[test]
    fn q35_args_kvm() {
        let mut v = vm(Machine::Q35);
        v.accel = Accel::Kvm;
        let a = v.args().join(" ");
        assert!(
            a.contains("-machine q35") && a.contains("virtio-serial-pci"),
            "{a}"
        );
        assert!(a.contains("-accel kvm -cpu host -m 128M"), "{a}");
    }
}
