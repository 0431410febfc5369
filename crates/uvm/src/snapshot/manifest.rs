//! The snapshot manifest (`manifest.json`): what a restore needs to rebuild
//! the VM around its saved state, and what it checks first.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uvm_schema::ComputeSystem;
use uvm_vmm::HypervisorInfo;

use super::SnapshotError;

/// File name of the manifest in a snapshot dir.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// A file the snapshot depends on, as it was when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

impl FileFingerprint {
    /// Fingerprints `path` (reads it whole).
    pub fn of(what: &'static str, path: &Path) -> Result<Self, SnapshotError> {
        let io = |source| SnapshotError::File {
            what,
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        Ok(FileFingerprint {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            sha256: sha256_file(path).map_err(io)?,
        })
    }

    /// Checks that the file is still the one fingerprinted: same size, and
    /// the same mtime or else the same contents (hashing only then).
    pub fn check(&self, what: &'static str) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::File {
            what,
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let differs = |here: String, snapshot: String| SnapshotError::Mismatch {
            what,
            snapshot,
            here,
        };
        if meta.len() != self.size {
            return Err(differs(
                format!("{} is {} bytes", self.path.display(), meta.len()),
                format!("{} bytes", self.size),
            ));
        }
        if mtime_ns(&meta) == self.mtime_ns {
            return Ok(());
        }
        let sha = sha256_file(&self.path).map_err(io)?;
        if sha != self.sha256 {
            return Err(differs(
                format!("{} has sha256 {sha}", self.path.display()),
                format!("sha256 {}", self.sha256),
            ));
        }
        Ok(())
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A saved file of the snapshot and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Name inside the snapshot dir.
    pub file: String,
    /// Size in bytes (apparent size for the sparse memory file).
    pub bytes: u64,
}

/// What `manifest.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Id of the VM the snapshot was taken of.
    pub source_vm_id: String,
    /// When, seconds since the epoch.
    pub created_unix_s: u64,
    /// The VM document as the VM ran it (agent settings on its command line).
    pub document: ComputeSystem,
    /// Stdout ports the VM was wired with (the device set must match).
    pub stdout_ports: u32,
    /// QEMU version, accelerator, machine and argv.
    pub hypervisor: HypervisorInfo,
    /// The kernel the VM booted.
    pub kernel: FileFingerprint,
    /// The initrd it booted, if any.
    pub initrd: Option<FileFingerprint>,
    /// Version of the guest agent.
    pub agent_version: String,
    /// The device (and, without `memory`, RAM) state stream.
    pub state: SavedFile,
    /// Guest RAM as a file restored VMs map copy-on-write, when saved so.
    pub memory: Option<SavedFile>,
}

impl SnapshotManifest {
    /// Reads and parses `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| SnapshotError::File {
            what: "snapshot manifest",
            path: path.clone(),
            source,
        })?;
        let m: SnapshotManifest =
            serde_json::from_str(&text).map_err(|e| SnapshotError::BadManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if m.format != MANIFEST_FORMAT {
            return Err(SnapshotError::BadManifest {
                path,
                reason: format!(
                    "format {} (this build reads format {MANIFEST_FORMAT})",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` (through a temporary file, so a reader
    /// never sees half of it: a dir without one is no snapshot).
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(".manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("the manifest always serializes");
        let io = |source| SnapshotError::File {
            what: "snapshot manifest",
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Checks the saved files are there at the sizes recorded (a truncated
    /// state stream would otherwise only fail inside QEMU).
    pub fn check_files(&self, dir: &Path) -> Result<(), SnapshotError> {
        for (what, f) in std::iter::once(("snapshot state", &self.state))
            .chain(self.memory.as_ref().map(|m| ("snapshot memory", m)))
        {
            let path = dir.join(&f.file);
            let meta = std::fs::metadata(&path).map_err(|source| SnapshotError::File {
                what,
                path: path.clone(),
                source,
            })?;
            if meta.len() != f.bytes {
                return Err(SnapshotError::Truncated {
                    path,
                    bytes: meta.len(),
                    expected: f.bytes,
                });
            }
        }
        Ok(())
    }

    /// Checks the kernel and initrd are the ones the snapshot booted.
    pub fn check_boot_files(&self) -> Result<(), SnapshotError> {
        self.kernel.check("kernel")?;
        if let Some(i) = &self.initrd {
            i.check("initrd")?;
        }
        Ok(())
    }

    /// Checks this host's hypervisor can load the state.
    pub fn check_hypervisor(&self, here: &HypervisorInfo) -> Result<(), SnapshotError> {
        let differs = |what, snapshot: &str, here: &str| SnapshotError::Mismatch {
            what,
            snapshot: snapshot.to_string(),
            here: here.to_string(),
        };
        if here.version != self.hypervisor.version {
            return Err(differs(
                "QEMU version",
                &self.hypervisor.version,
                &here.version,
            ));
        }
        if here.accel != self.hypervisor.accel {
            return Err(differs("accelerator", &self.hypervisor.accel, &here.accel));
        }
        Ok(())
    }
}
