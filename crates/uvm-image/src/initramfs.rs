//! The initramfs: `/init` (the agent), busybox, kernel modules, extra files.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cpio::Archive;
use crate::error::{Error, Result};
use crate::modules::{KernelModules, LOAD_ORDER_FILE};

/// Directories every initramfs has, with their modes.
pub const BASE_DIRS: &[(&str, u32)] = &[
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/sys/fs/cgroup", 0o755),
    ("/dev", 0o755),
    ("/tmp", 0o1777),
    ("/run", 0o755),
    ("/etc", 0o755),
    ("/root", 0o700),
    ("/mnt", 0o755),
    ("/lib/modules", 0o755),
];

/// Bump when the archive layout changes, so cached images are rebuilt.
const LAYOUT_VERSION: &str = "uvm-initramfs-v2";

/// What goes into an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsSpec {
    /// Host path of the program that becomes `/init` (mode 0755), normally `uvm-gcs`.
    pub agent: PathBuf,
    /// Host path of a static busybox, installed as `/bin/busybox` with one
    /// symlink per applet (where no other file has that path).
    pub busybox: Option<PathBuf>,
    /// Kernel modules for a stock kernel, with `/lib/modules/uvm-load-order`.
    pub modules: Option<KernelModules>,
    /// Additional files: (guest path, host path, mode).
    pub extra_files: Vec<(String, PathBuf, u32)>,
}

/// All bytes that go into the archive, read once.
struct Inputs {
    agent: Vec<u8>,
    busybox: Option<Vec<u8>>,
    /// (guest path, bytes), in load order.
    modules: Vec<(String, Vec<u8>)>,
    extra: Vec<(String, Vec<u8>, u32)>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read", path, e))
}

impl Inputs {
    fn load(spec: &InitramfsSpec) -> Result<Self> {
        let modules = match &spec.modules {
            Some(m) => m
                .resolve()?
                .into_iter()
                .map(|r| Ok((r.guest_path, read(&r.host_path)?)))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(Self {
            agent: read(&spec.agent)?,
            busybox: spec.busybox.as_deref().map(read).transpose()?,
            modules,
            extra: spec
                .extra_files
                .iter()
                .map(|(g, h, m)| Ok((g.clone(), read(h)?, *m)))
                .collect::<Result<_>>()?,
        })
    }

    /// Cache key: sha256 over every input, length-prefixed, 16 hex chars.
    fn key(&self) -> String {
        let mut h = Sha256::new();
        let mut feed = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        feed("layout", LAYOUT_VERSION.as_bytes());
        feed("agent", &self.agent);
        feed("busybox", self.busybox.as_deref().unwrap_or(b"<none>"));
        for (path, bytes) in &self.modules {
            feed("module", path.as_bytes());
            feed("data", bytes);
        }
        for (path, bytes, mode) in &self.extra {
            feed("extra", path.as_bytes());
            feed("mode", &mode.to_le_bytes());
            feed("data", bytes);
        }
        crate::short_hex(&h.finalize())
    }

    fn archive(self, busybox_path: Option<&Path>) -> Result<Archive> {
        let mut a = Archive::new();
        for (dir, mode) in BASE_DIRS {
            a.dir(dir, *mode)?;
        }
        a.char_dev("/dev/console", 0o600, 5, 1)?;
        // Before /dev is mounted, Rust's runtime reopens a missing fd 0/1/2
        // on /dev/null and aborts if it cannot: that happens to PID 1 when
        // the console (a virtio `hvc0`) is not up yet as the kernel opens it.
        a.char_dev("/dev/null", 0o666, 1, 3)?;
        a.file("/init", 0o755, self.agent)?;
        if !self.modules.is_empty() {
            let order: String = self.modules.iter().map(|(p, _)| format!("{p}\n")).collect();
            a.file(LOAD_ORDER_FILE, 0o644, order.into_bytes())?;
        }
        for (path, bytes) in self.modules {
            a.file(&path, 0o644, bytes)?;
        }
        for (path, bytes, mode) in self.extra {
            a.file(&path, mode, bytes)?;
        }
        if let (Some(bytes), Some(host)) = (self.busybox, busybox_path) {
            a.file("/bin/busybox", 0o755, bytes)?;
            for applet in busybox_applets(host)? {
                if !a.contains(&applet) {
                    a.symlink(&applet, "/bin/busybox")?;
                }
            }
        }
        Ok(a)
    }
}

/// Applet paths (`bin/sh`, `usr/bin/env`, ...) from `busybox --list-full`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let program = format!("{} --list-full", busybox.display());
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(Error::Command {
            program,
            status: out.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Builds the initramfs described by `spec` as newc cpio bytes (uncompressed).
/// The same inputs always give the same bytes.
pub fn build_initramfs(spec: &InitramfsSpec) -> Result<Vec<u8>> {
    Inputs::load(spec)?
        .archive(spec.busybox.as_deref())?
        .to_bytes()
}

/// Builds the initramfs into the cache, `<cache>/initramfs/<key>.cpio`, unless
/// it is there already (then this costs reading and hashing the inputs).
/// A build also prunes the cache to the [`KEEP`](crate::prune::KEEP) most
/// recently used archives plus any used within the last hour.
pub fn ensure_initramfs(spec: &InitramfsSpec, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let inputs = Inputs::load(spec)?;
    let dir = crate::cache_dir().join("initramfs");
    let path = dir.join(format!("{}.cpio", inputs.key()));
    if path.is_file() {
        tracing::debug!(path = %path.display(), "initramfs cached");
        crate::prune::touch(&path);
        return Ok(path);
    }
    progress(&format!("building initramfs {}", path.display()));
    let bytes = inputs.archive(spec.busybox.as_deref())?.to_bytes()?;
    crate::write_atomic(&path, &bytes)?;
    tracing::info!(path = %path.display(), bytes = bytes.len(), "initramfs built");
    crate::prune::prune(
        &dir,
        crate::prune::KEEP,
        crate::prune::GRACE,
        std::time::SystemTime::now(),
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, agent: &[u8]) -> InitramfsSpec {
        std::fs::write(dir.join("agent"), agent).unwrap();
        std::fs::write(dir.join("extra"), b"hello").unwrap();
        InitramfsSpec {
            agent: dir.join("agent"),
            busybox: None,
            modules: None,
            extra_files: vec![("/etc/hello".into(), dir.join("extra"), 0o644)],
        }
    }

    #[test]
    fn key_changes_when_inputs_change() {
        let d = tempfile::tempdir().unwrap();
        let k1 = Inputs::load(&spec(d.path(), b"agent-1")).unwrap().key();
        assert_eq!(k1, Inputs::load(&spec(d.path(), b"agent-1")).unwrap().key());
        assert_ne!(k1, Inputs::load(&spec(d.path(), b"agent-2")).unwrap().key());
        let mut s = spec(d.path(), b"agent-1");
        s.extra_files[0].2 = 0o600;
        assert_ne!(k1, Inputs::load(&s).unwrap().key());
        s.extra_files[0].0 = "/etc/other".into();
        assert_ne!(k1, Inputs::load(&s).unwrap().key());
    }

    #[test]
    fn layout_and_determinism() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path(), b"\x7fELF-agent");
        let busybox = crate::locate_busybox().ok();
        s.busybox = busybox.clone();
        let a = Inputs::load(&s)
            .unwrap()
            .archive(busybox.as_deref())
            .unwrap();
        assert_eq!(build_initramfs(&s).unwrap(), build_initramfs(&s).unwrap());
        for (dir, _) in BASE_DIRS {
            assert!(a.contains(dir), "{dir}");
        }
        assert!(a.contains("/dev/console") && a.contains("/init") && a.contains("/etc/hello"));
        assert!(
            a.contains("/dev/null"),
            "the agent's runtime needs /dev/null before /dev is mounted"
        );
        assert!(!a.contains(LOAD_ORDER_FILE));
        if busybox.is_some() {
            assert_eq!(
                a.get("/bin/sh"),
                Some(&crate::cpio::Node::Symlink {
                    target: "/bin/busybox".into()
                })
            );
        }
    }

    #[test]
    fn missing_agent_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path(), b"x");
        s.agent = d.path().join("nope");
        let err = build_initramfs(&s).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read {}", d.path().join("nope").display())
        );
    }
}
