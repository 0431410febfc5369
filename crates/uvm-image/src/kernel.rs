//! Guest kernels: the tuned one built by `guest/kernel/build.sh`, the stock
//! distro one from `/boot`, or any file given by path.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// `guest/kernel/build.sh`, embedded so the build works from any directory.
pub const BUILD_SCRIPT: &str = include_str!("../../../guest/kernel/build.sh");
/// `guest/kernel/uvm.config`, the config fragment of the tuned kernel.
pub const CONFIG_FRAGMENT: &str = include_str!("../../../guest/kernel/uvm.config");
/// `guest/kernel/patches/*.patch` in name order (`build.sh` applies them to
/// the kernel source with `patch -p1`), embedded like the script.
pub const KERNEL_PATCHES: &[(&str, &str)] = &[
    (
        "lapic-bus-hz.patch",
        include_str!("../../../guest/kernel/patches/lapic-bus-hz.patch"),
    ),
    (
        "tsc-early-khz-cpu.patch",
        include_str!("../../../guest/kernel/patches/tsc-early-khz-cpu.patch"),
    ),
    (
        "virtio-console-rx-buffers.patch",
        include_str!("../../../guest/kernel/patches/virtio-console-rx-buffers.patch"),
    ),
];
/// Base command line for the tuned kernel on `-M microvm` (`guest/kernel/cmdline`).
pub const TUNED_CMDLINE: &str = include_str!("../../../guest/kernel/cmdline");
/// Base command line for a stock kernel on `-M q35` (measurements: `guest/kernel/NOTES.md`).
pub const STOCK_CMDLINE: &str =
    "console=ttyS0 panic=-1 quiet no_timer_check tsc=reliable noreplace-smp cryptomgr.notests i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1";
/// Default kernel source tarball (`UVM_KERNEL_SOURCE` overrides it).
pub const DEFAULT_KERNEL_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Which kernel a guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// The tuned vmlinux from `guest/kernel/` (built and cached on demand).
    Tuned,
    /// The distro kernel from `/boot` with its virtio modules in the initramfs.
    Stock,
    /// A kernel file: an ELF vmlinux (PVH, microvm) or a bzImage (q35).
    Path(PathBuf),
}

/// The QEMU machine an image is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineHint {
    /// `-M microvm`: ELF vmlinux booted through its PVH entry, virtio-mmio.
    Microvm,
    /// `-M q35`: bzImage, virtio-pci.
    Q35,
}

/// What a kernel file is, from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux.
    Elf,
    /// An x86 bzImage, with the release read from its setup header if present.
    BzImage {
        /// Kernel release (`6.1.0-56-cloud-amd64`), when readable.
        release: Option<String>,
    },
}

fn kernel_source() -> PathBuf {
    std::env::var_os("UVM_KERNEL_SOURCE")
        .map_or_else(|| PathBuf::from(DEFAULT_KERNEL_SOURCE), PathBuf::from)
}

/// Identity of the source tarball as `build.sh` computes it: `name:size:mtime`.
fn source_identity(path: &Path) -> Result<String> {
    let md = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::KernelSourceMissing {
            path: path.to_owned(),
        },
        _ => Error::io("stat", path, e),
    })?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!("{name}:{}:{mtime}", md.len()))
}

/// The hash `build.sh` names its output directory with.
pub(crate) fn tuned_hash(
    fragment: &str,
    script: &str,
    patches: &[(&str, &str)],
    source_id: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(fragment.as_bytes());
    h.update(script.as_bytes());
    for (_, patch) in patches {
        h.update(patch.as_bytes());
    }
    h.update(source_id.as_bytes());
    h.update(b"\n");
    crate::short_hex(&h.finalize())
}

/// Where `build.sh` puts (or has put) the tuned vmlinux:
/// `<cache>/kernel/<hash>/vmlinux`. Errors only if the kernel source is missing.
pub fn tuned_kernel_location() -> Result<PathBuf> {
    let id = source_identity(&kernel_source())?;
    let hash = tuned_hash(CONFIG_FRAGMENT, BUILD_SCRIPT, KERNEL_PATCHES, &id);
    Ok(crate::cache_dir().join("kernel").join(hash).join("vmlinux"))
}

/// The tuned vmlinux if it has been built already.
pub fn tuned_kernel_path() -> Option<PathBuf> {
    tuned_kernel_location().ok().filter(|p| p.is_file())
}

/// Writes [`KERNEL_PATCHES`] into `dir/patches` for `build.sh`.
fn write_patches(dir: &Path) -> Result<PathBuf> {
    let patches = dir.join("patches");
    std::fs::create_dir(&patches).map_err(|e| Error::io("create", &patches, e))?;
    for (name, text) in KERNEL_PATCHES {
        let path = patches.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(patches)
}

/// Builds the tuned kernel if needed (minutes) and returns its path. Each
/// line of build output is passed to `progress`. Cached: when it exists,
/// this costs only a hash.
pub fn build_tuned_kernel(progress: &dyn Fn(&str)) -> Result<PathBuf> {
    if let Some(p) = tuned_kernel_path() {
        return Ok(p);
    }
    let source = kernel_source();
    source_identity(&source)?;
    let dir = tempfile::Builder::new()
        .prefix("uvm-kernel-build")
        .tempdir()
        .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    let script = dir.path().join("build.sh");
    let fragment = dir.path().join("uvm.config");
    std::fs::write(&script, BUILD_SCRIPT).map_err(|e| Error::io("write", &script, e))?;
    std::fs::write(&fragment, CONFIG_FRAGMENT).map_err(|e| Error::io("write", &fragment, e))?;
    let patches = write_patches(dir.path())?;
    tracing::info!(source = %source.display(), "building the tuned guest kernel (several minutes)");
    let mut child = Command::new("bash")
        .arg(&script)
        .env("UVM_CACHE_DIR", crate::cache_dir())
        .env("UVM_KERNEL_SOURCE", &source)
        .env("UVM_KERNEL_FRAGMENT", &fragment)
        .env("UVM_KERNEL_PATCHES", &patches)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "bash guest/kernel/build.sh".into(),
            source,
        })?;
    let mut tail = std::collections::VecDeque::with_capacity(40);
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            progress(&line);
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        program: "bash guest/kernel/build.sh".into(),
        source,
    })?;
    let tail = Vec::from(tail).join("\n");
    let path = out.lines().last().map(PathBuf::from);
    match path {
        Some(p) if status.success() && p.is_file() => Ok(p),
        _ => Err(Error::KernelBuild { status, tail }),
    }
}

/// Finds the stock kernel in `/boot`: the running kernel's `vmlinuz` if there
/// is one, else the newest `vmlinuz-*` by version. Returns the path and release.
pub fn stock_kernel() -> Result<(PathBuf, String)> {
    stock_kernel_in(
        Path::new("/boot"),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .as_deref(),
    )
}

fn stock_kernel_in(boot: &Path, running: Option<&str>) -> Result<(PathBuf, String)> {
    let not_found = || Error::StockKernelNotFound {
        dir: boot.to_owned(),
    };
    let mut releases: Vec<String> = std::fs::read_dir(boot)
        .map_err(|_| not_found())?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    if let Some(r) = running
        .map(str::trim)
        .filter(|r| releases.iter().any(|x| x == r))
    {
        return Ok((boot.join(format!("vmlinuz-{r}")), r.to_owned()));
    }
    releases.sort_by_key(|r| version_key(r));
    let r = releases.pop().ok_or_else(not_found)?;
    Ok((boot.join(format!("vmlinuz-{r}")), r))
}

/// Splits a release into numeric and text chunks so `6.10` sorts after `6.9`.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            out.push((0, rest[..text].to_owned()));
            rest = &rest[text..];
        }
    }
    out
}

/// Tells an ELF vmlinux from a bzImage by its header.
pub fn kernel_format(path: &Path) -> Result<KernelFormat> {
    let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    Ok(kernel_format_of(&data))
}

pub(crate) fn kernel_format_of(b: &[u8]) -> KernelFormat {
    if b.starts_with(b"\x7fELF") {
        return KernelFormat::Elf;
    }
    // x86 boot protocol: "HdrS" at 0x202; kernel_version (u16) at 0x20e points
    // to a NUL-terminated string at 0x200 + value: "6.1.0-56-cloud-amd64 (...)".
    let release = (b.len() > 0x210 && &b[0x202..0x206] == b"HdrS")
        .then(|| 0x200 + u16::from_le_bytes([b[0x20e], b[0x20f]]) as usize)
        .and_then(|o| b.get(o..))
        .and_then(|s| s.split(|c| *c == 0 || *c == b' ').next())
        .and_then(|s| std::str::from_utf8(s).ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    KernelFormat::BzImage { release }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory `build.sh --print-path` names, run on the real script
    /// with a fake source tarball in a temporary cache.
    fn script_hash(fragment: &str, patches: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let (frag, script, tar) = (
            dir.path().join("uvm.config"),
            dir.path().join("build.sh"),
            dir.path().join("src.tar.xz"),
        );
        std::fs::write(&frag, fragment).unwrap();
        std::fs::write(&script, BUILD_SCRIPT).unwrap();
        std::fs::write(&tar, b"not a tarball").unwrap();
        let pdir = dir.path().join("patches");
        std::fs::create_dir(&pdir).unwrap();
        for (name, text) in patches {
            std::fs::write(pdir.join(name), text).unwrap();
        }
        let out = Command::new("bash")
            .arg(&script)
            .arg("--print-path")
            .env("UVM_CACHE_DIR", dir.path().join("cache"))
            .env("UVM_KERNEL_SOURCE", &tar)
            .env("UVM_KERNEL_FRAGMENT", &frag)
            .env("UVM_KERNEL_PATCHES", &pdir)
            .output()
            .unwrap();
        // Exit 1: not built, which is expected; the path is printed anyway.
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let id = source_identity(&tar).unwrap();
        assert_eq!(
            path,
            dir.path()
                .join("cache/kernel")
                .join(tuned_hash(fragment, BUILD_SCRIPT, patches, &id))
                .join("vmlinux"),
            "uvm-image and build.sh disagree on the cache key"
        );
        path.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn hash_matches_build_script() {
        let none = script_hash("CONFIG_X=y\n", &[]);
        let ours = script_hash(CONFIG_FRAGMENT, KERNEL_PATCHES);
        let two = script_hash("CONFIG_X=y\n", &[("a.patch", "A\n"), ("b.patch", "B\n")]);
        assert_ne!(none, two);
        assert_ne!(ours, none);
    }

    #[test]
    fn every_patch_file_is_embedded_in_name_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/kernel/patches");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".patch"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = KERNEL_PATCHES.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, embedded);
        for (name, text) in KERNEL_PATCHES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        }
    }

    /// Runs `build.sh` on a one-file source tree with `patches`, with a fake
    /// `make` that fails (exit 3) so the run stops right after patching.
    /// Returns the script's stderr and the patched file.
    fn patch_step(patches: &[(&str, &str)]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("tree/linux/lib")).unwrap();
        std::fs::write(d.join("tree/linux/lib/a.c"), "one\ntwo\nthree\n").unwrap();
        let tar = d.join("linux.tar.xz");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(d.join("tree"))
            .arg("-cJf")
            .arg(&tar)
            .arg("linux")
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::create_dir(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/make"), "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(
            d.join("bin/make"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(d.join("patches")).unwrap();
        for (name, text) in patches {
            std::fs::write(d.join("patches").join(name), text).unwrap();
        }
        std::fs::write(d.join("build.sh"), BUILD_SCRIPT).unwrap();
        std::fs::write(d.join("uvm.config"), "CONFIG_X=y\n").unwrap();
        let path = format!(
            "{}:{}",
            d.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg(d.join("build.sh"))
            .env("PATH", path)
            .env("UVM_CACHE_DIR", d.join("cache"))
            .env("UVM_KERNEL_SOURCE", &tar)
            .env("UVM_KERNEL_FRAGMENT", d.join("uvm.config"))
            .env("UVM_KERNEL_PATCHES", d.join("patches"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "stopped by the fake make: {out:?}"
        );
        let src = std::fs::read_dir(d.join("cache/kernel"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("src-"))
            .unwrap();
        let file = std::fs::read_to_string(src.join("lib/a.c")).unwrap();
        (String::from_utf8_lossy(&out.stderr).into_owned(), file)
    }

    #[test]
    fn build_script_applies_patches_and_skips_ones_that_do_not_fit() {
        let fits = "--- a/lib/a.c\n+++ b/lib/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n";
        let (log, file) = patch_step(&[("1-fits.patch", fits)]);
        assert!(log.contains("applying 1-fits.patch"), "{log}");
        assert_eq!(file, "one\nTWO\nthree\n");
        let other = "--- a/lib/a.c\n+++ b/lib/a.c\n@@ -1,3 +1,3 @@\n uno\n-dos\n+DOS\n tres\n";
        let (log, file) = patch_step(&[("1-fits.patch", fits), ("2-other.patch", other)]);
        assert!(
            log.contains(
                "warning: 2-other.patch does not apply to linux.tar.xz; building without it"
            ),
            "{log}"
        );
        assert_eq!(file, "one\nTWO\nthree\n", "the fitting patch still applied");
    }

    #[test]
    fn cache_key_changes_with_inputs() {
        let p = KERNEL_PATCHES;
        let base = tuned_hash(CONFIG_FRAGMENT, BUILD_SCRIPT, p, "a:1:2");
        assert_eq!(base.len(), 16);
        let more = format!("{CONFIG_FRAGMENT}CONFIG_Y=y\n");
        assert_ne!(base, tuned_hash(&more, BUILD_SCRIPT, p, "a:1:2"));
        let script = format!("{BUILD_SCRIPT}#\n");
        assert_ne!(base, tuned_hash(CONFIG_FRAGMENT, &script, p, "a:1:2"));
        assert_ne!(
            base,
            tuned_hash(CONFIG_FRAGMENT, BUILD_SCRIPT, &[], "a:1:2")
        );
        assert_ne!(base, tuned_hash(CONFIG_FRAGMENT, BUILD_SCRIPT, p, "a:1:3"));
    }

    #[test]
    fn stock_kernel_prefers_running_then_newest() {
        let dir = tempfile::tempdir().unwrap();
        for r in [
            "6.1.0-9-cloud-amd64",
            "6.1.0-10-cloud-amd64",
            "5.10.0-30-amd64",
        ] {
            std::fs::write(dir.path().join(format!("vmlinuz-{r}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("config-6.2.0"), b"").unwrap();
        let (p, r) = stock_kernel_in(dir.path(), Some("5.10.0-30-amd64\n")).unwrap();
        assert_eq!(
            (p, r.as_str()),
            (
                dir.path().join("vmlinuz-5.10.0-30-amd64"),
                "5.10.0-30-amd64"
            )
        );
        let (_, r) = stock_kernel_in(dir.path(), Some("6.18.0-other")).unwrap();
        assert_eq!(r, "6.1.0-10-cloud-amd64");
        let empty = tempfile::tempdir().unwrap();
        let err = stock_kernel_in(empty.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("apt-get install linux-image-cloud-amd64"),
            "{err}"
        );
    }

    #[test]
    fn detects_kernel_formats() {
        assert_eq!(kernel_format_of(b"\x7fELF\x02\x01rest"), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        bz[0x300..0x318].copy_from_slice(b"6.1.0-56-cloud-amd64 (d)");
        assert_eq!(
            kernel_format_of(&bz),
            KernelFormat::BzImage {
                release: Some("6.1.0-56-cloud-amd64".into())
            }
        );
        if let Ok((p, r)) = stock_kernel() {
            if let Ok(KernelFormat::BzImage {
                release: Some(found),
            }) = kernel_format(&p)
            {
                assert_eq!(found, r);
            }
        }
    }
}
