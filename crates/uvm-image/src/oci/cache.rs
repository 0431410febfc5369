//! The layer cache: `<root>/layers/sha256-<hex>/{rootfs/,complete}`, keyed by
//! chain ID.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::archive::{hex, sha256_hex};
use super::error::OciError;

/// Name of the marker written last into a layer's cache directory.
pub const COMPLETE: &str = "complete";

/// Unpacked layers, shared by every image that has them.
///
/// A layer lives in `<root>/layers/<algo>-<hex>/` where the key is its
/// **chain ID** (OCI image spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`): the same diff
/// on top of different parents unpacks differently, since opaque directories
/// are converted into whiteouts for the parents' names. The directory holds
/// `rootfs/` and the `complete` marker; it is built in a temporary directory
/// beside it and renamed into place with the marker already inside, so a
/// crash never leaves a half layer that looks complete.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
}

impl LayerCache {
    /// A cache under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LayerCache { root: root.into() }
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/layers`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// The cache directory of the layer with `chain_id` (`sha256:<hex>`), or
    /// `None` when it is not a sha256 digest.
    pub fn layer_dir(&self, chain_id: &str) -> Option<PathBuf> {
        let hex = sha256_hex(chain_id)?;
        Some(self.layers_dir().join(format!("sha256-{hex}")))
    }

    /// Whether the layer with `chain_id` is unpacked and complete.
    pub fn is_complete(&self, chain_id: &str) -> bool {
        self.layer_dir(chain_id)
            .is_some_and(|d| d.join(COMPLETE).is_file())
    }

    /// Builds layer `chain_id` with `fill` (given an empty `rootfs/` to fill)
    /// unless it is complete already, and returns its `rootfs/`. On error
    /// nothing is left behind.
    pub(crate) fn build(
        &self,
        dir: &Path,
        chain_id: &str,
        fill: impl FnOnce(&Path) -> Result<(), OciError>,
    ) -> Result<PathBuf, OciError> {
        let layers = self.layers_dir();
        fs::create_dir_all(&layers).map_err(|e| OciError::io("create directory", &layers, e))?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{name}-"))
            .tempdir_in(&layers)
            .map_err(|e| OciError::io("create a directory in", &layers, e))?;
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).map_err(|e| OciError::io("create directory", &rootfs, e))?;
        fill(&rootfs)?;
        let marker = tmp.path().join(COMPLETE);
        fs::write(&marker, format!("{chain_id}\n"))
            .map_err(|e| OciError::io("write", &marker, e))?;
        // Readable by whoever serves the layer to the guest.
        set_mode(tmp.path(), 0o755)?;
        match fs::rename(tmp.path(), dir) {
            Ok(()) => {}
            // Another unpacker finished first: keep theirs, drop ours.
            Err(_) if dir.join(COMPLETE).is_file() => {}
            Err(_) => {
                // A stale directory without the marker (an interrupted older
                // layout): replace it.
                fs::remove_dir_all(dir).map_err(|e| OciError::io("remove", dir, e))?;
                fs::rename(tmp.path(), dir).map_err(|e| OciError::io("rename into", dir, e))?;
            }
        }
        // After a successful rename the TempDir's path is gone; dropping it
        // removes nothing.
        drop(tmp);
        Ok(dir.join("rootfs"))
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), OciError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| OciError::io("chmod", p, e))
}

/// The chain IDs of layers with `diff_ids` (bottom first); `Err` returns the
/// first diff ID that is not `sha256:<64 hex>`.
pub fn chain_ids(diff_ids: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        if sha256_hex(d).is_none() {
            return Err(d.clone());
        }
        let id = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex(&h))
            }
        };
        out.push(id);
    }
    Ok(out)
}
