//! OCI image archives: unpacking them into a layer cache, and writing a
//! small busybox image.
//!
//! [`unpack_archive`] reads either an OCI image layout tar (`oci-layout`,
//! `index.json`, `blobs/sha256/…`; nested indexes are followed and the
//! linux/amd64 manifest is picked when there are several) or a `docker save`
//! tar (`manifest.json`). The outer archive is indexed by seeking and each
//! member is read in place, so layers stream from the file and are never held
//! in memory. Every blob is hashed while it is read: manifests, configs and
//! OCI layers against their descriptor digests, and every layer's
//! uncompressed stream against the config's `rootfs.diff_ids`.
//!
//! Layers are unpacked into a [`LayerCache`], keyed by chain ID, with these
//! rules:
//!
//! - **Safety.** Absolute paths and `..` components are refused; no entry is
//!   written through a symlink (each existing parent is checked with
//!   `symlink_metadata`), and no symlink is ever followed on the host.
//!   Symlinks are written as they are: absolute targets resolve in the guest,
//!   inside the container's rootfs. Hard links must point at a file already
//!   unpacked in the same layer. Modes (setuid included), owners (`lchown`)
//!   and mtimes are kept; device nodes and fifos are made with `mknod`, so
//!   unpacking runs as root.
//! - **Whiteouts.** `.wh.NAME` removes NAME from the layer being built and
//!   becomes an overlayfs whiteout, a character device 0:0 named NAME.
//! - **Opaque directories** (`D/.wh..wh..opq`) are *converted*: overlayfs in
//!   the guest cannot read the opaque xattr through 9p, so every name that a
//!   lower layer of this image has in D, and that this layer does not provide
//!   in D itself, gets a whiteout in D. This depends on the parents, which is
//!   why the cache is keyed by chain ID rather than diff ID.
//!   `user.overlay.opaque=y` is also set on D where the file system allows.
//!
//! [`write_busybox_archive`] writes a deterministic single-layer OCI archive
//! around a static busybox, for tests and demos.

mod archive;
mod busybox;
mod cache;
mod error;
mod layer;
mod manifest;
mod stream;
mod sys;
mod whiteout;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

pub use busybox::{write_busybox_archive, WrittenImage, BUSYBOX_REFERENCE};
pub use cache::{chain_ids, LayerCache, COMPLETE};
pub use error::OciError;

/// The two archive formats [`unpack_archive`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    OciLayout,
    /// The output of `docker save` (`manifest.json`).
    DockerSave,
}

/// An image whose layers are unpacked in a [`LayerCache`].
#[derive(Debug, Clone)]
pub struct UnpackedImage {
    /// The layers' `rootfs/` directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// The image configuration (entrypoint, env, diff IDs, ...).
    pub config: ImageConfiguration,
    /// How many layers this call unpacked: 0 when all were cached.
    pub unpacked_now: usize,
    /// The format the archive was in.
    pub format: ArchiveFormat,
    /// The image's name when the archive records one
    /// (`org.opencontainers.image.ref.name`, `io.containerd.image.name`, or
    /// the first `RepoTags` entry of a `docker save`).
    pub reference: Option<String>,
}

/// Unpacks the image in `archive` into `cache`, verifying every blob, and
/// returns its layers and config. Layers already in the cache are not read
/// again; a failed call leaves no partial layer behind.
pub fn unpack_archive(archive: &Path, cache: &LayerCache) -> Result<UnpackedImage, OciError> {
    let ar = archive::OuterArchive::open(archive)?;
    let plan = manifest::plan(&ar)?;
    let diff_ids = plan.config.rootfs().diff_ids();
    let chain = chain_ids(diff_ids).map_err(|digest| OciError::UnsupportedDigest {
        archive: archive.to_owned(),
        digest,
    })?;
    let mut layers: Vec<PathBuf> = Vec::with_capacity(chain.len());
    let mut unpacked_now = 0;
    for ((src, diff_id), chain_id) in plan.layers.iter().zip(diff_ids).zip(&chain) {
        let dir = cache
            .layer_dir(chain_id)
            .ok_or_else(|| OciError::UnsupportedDigest {
                archive: archive.to_owned(),
                digest: chain_id.clone(),
            })?;
        let rootfs = if cache.is_complete(chain_id) {
            tracing::debug!(layer = %src.name, chain_id = %chain_id, "layer cached");
            dir.join("rootfs")
        } else {
            tracing::debug!(layer = %src.name, chain_id = %chain_id, "unpacking layer");
            unpacked_now += 1;
            cache.build(&dir, chain_id, |root| {
                stream::unpack_layer(&ar, src, diff_id, root, &layers)
            })?
        };
        layers.push(rootfs);
    }
    Ok(UnpackedImage {
        layers,
        config: plan.config,
        unpacked_now,
        format: plan.format,
        reference: plan.reference,
    })
}
