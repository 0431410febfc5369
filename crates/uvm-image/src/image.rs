//! Ready-to-boot images: kernel + initramfs + base command line + machine.

use std::path::PathBuf;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::initramfs::{ensure_initramfs, InitramfsSpec};
use crate::kernel::{self, KernelFormat, KernelKind, MachineHint};
use crate::modules::KernelModules;

/// `guest/rawinit/rawinit.c`, the `/init` of the raw boot baseline.
pub const RAWINIT_SOURCE: &str = include_str!("../../../guest/rawinit/rawinit.c");

/// A bootable guest: what the host backend passes to QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Kernel file (`-kernel`): ELF vmlinux for microvm, bzImage for q35.
    pub kernel: PathBuf,
    /// Initramfs (`-initrd`), an uncompressed newc cpio.
    pub initrd: PathBuf,
    /// Base kernel command line; the backend appends its own settings (for
    /// microvm, the host TSC frequency: `uvm_vmm::with_tsc_hint`).
    pub cmdline: String,
    /// Which kernel this is.
    pub kind: KernelKind,
    /// The QEMU machine to boot it on.
    pub machine: MachineHint,
    /// Kernel release when known (stock kernels).
    pub release: Option<String>,
}

/// A kernel picked for a [`KernelKind`], before the initramfs is added.
struct Kernel {
    path: PathBuf,
    machine: MachineHint,
    cmdline: &'static str,
    release: Option<String>,
}

impl Kernel {
    fn pick(kind: &KernelKind, progress: &dyn Fn(&str)) -> Result<Self> {
        match kind {
            KernelKind::Tuned => Ok(Self {
                path: kernel::build_tuned_kernel(progress)?,
                machine: MachineHint::Microvm,
                cmdline: kernel::TUNED_CMDLINE.trim(),
                release: None,
            }),
            KernelKind::Stock => {
                let (path, release) = kernel::stock_kernel()?;
                std::fs::File::open(&path).map_err(|e| Error::io("read", &path, e))?;
                Ok(Self {
                    path,
                    machine: MachineHint::Q35,
                    cmdline: kernel::STOCK_CMDLINE,
                    release: Some(release),
                })
            }
            KernelKind::Path(p) => Ok(match kernel::kernel_format(p)? {
                KernelFormat::Elf => Self {
                    path: p.clone(),
                    machine: MachineHint::Microvm,
                    cmdline: kernel::TUNED_CMDLINE.trim(),
                    release: None,
                },
                KernelFormat::BzImage { release } => Self {
                    path: p.clone(),
                    machine: MachineHint::Q35,
                    cmdline: kernel::STOCK_CMDLINE,
                    release,
                },
            }),
        }
    }

    /// Modules to ship: only for a bzImage whose release has a module tree.
    fn modules(&self, make: fn(&str) -> KernelModules) -> Result<Option<KernelModules>> {
        let Some(release) = &self.release else {
            return Ok(None);
        };
        let m = make(release);
        if self.machine == MachineHint::Q35 && !m.dir.join("modules.dep").is_file() {
            if matches!(self.path.parent(), Some(p) if p == std::path::Path::new("/boot")) {
                return Err(Error::ModulesMissing {
                    release: release.clone(),
                    path: m.dir.join("modules.dep"),
                });
            }
            tracing::warn!(release = %release, "no module tree for this kernel; booting without modules");
            return Ok(None);
        }
        Ok(Some(m))
    }

    fn image(self, kind: &KernelKind, initrd: PathBuf) -> Image {
        Image {
            kernel: self.path,
            initrd,
            cmdline: self.cmdline.to_owned(),
            kind: kind.clone(),
            machine: self.machine,
            release: self.release,
        }
    }
}

/// Returns the image for `kind`: builds the tuned kernel if needed (minutes,
/// once), finds the agent and busybox, and builds or reuses the cached
/// initramfs. Progress lines of long steps go to `progress`.
pub fn ensure_image(kind: &KernelKind, progress: &dyn Fn(&str)) -> Result<Image> {
    let k = Kernel::pick(kind, progress)?;
    let spec = InitramfsSpec {
        agent: crate::locate_agent()?,
        busybox: Some(crate::locate_busybox()?),
        modules: k.modules(KernelModules::stock)?,
        extra_files: Vec::new(),
    };
    let initrd = ensure_initramfs(&spec, progress)?;
    Ok(k.image(kind, initrd))
}

/// The raw boot baseline image for `kind`: same kernel and command line as
/// [`ensure_image`], but `/init` is `guest/rawinit` (compiled and cached),
/// with only the modules a virtio-serial guest needs. Append
/// `uvm.raw_port=NAME` / `uvm.raw_bytes=N` to the command line as needed.
pub fn raw_baseline_image(kind: &KernelKind, progress: &dyn Fn(&str)) -> Result<Image> {
    let k = Kernel::pick(kind, progress)?;
    let spec = InitramfsSpec {
        agent: compile_rawinit(progress)?,
        busybox: None,
        modules: k.modules(KernelModules::minimal)?,
        extra_files: Vec::new(),
    };
    let initrd = ensure_initramfs(&spec, progress)?;
    Ok(k.image(kind, initrd))
}

/// Compiles [`RAWINIT_SOURCE`] with `gcc -static -Os` into
/// `<cache>/rawinit/<hash of source>/rawinit`, once.
pub fn compile_rawinit(progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let hash = crate::short_hex(&Sha256::digest(RAWINIT_SOURCE.as_bytes()));
    let dir = crate::cache_dir().join("rawinit").join(hash);
    let out = dir.join("rawinit");
    if out.is_file() {
        return Ok(out);
    }
    progress("compiling guest/rawinit/rawinit.c");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let src = dir.join("rawinit.c");
    std::fs::write(&src, RAWINIT_SOURCE).map_err(|e| Error::io("write", &src, e))?;
    let tmp = dir.join(format!(".rawinit.{}", std::process::id()));
    let program = "gcc -static -Os (fix: apt-get install gcc libc6-dev)".to_owned();
    let res = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    if !res.status.success() {
        let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
        return Err(Error::Command {
            program,
            status: res.status,
            stderr,
        });
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(out)
}
