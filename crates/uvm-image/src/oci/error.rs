//! The error type of [`crate::oci`].

use std::path::PathBuf;

/// Everything that can go wrong while reading, verifying, unpacking or
/// writing an OCI image archive.
///
/// Messages are sentences that name the archive, the layer (by digest, or by
/// its path in a `docker save` archive) and the entry or path involved; they
/// never repeat the text of their `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file system operation outside any layer (the cache, the output
    /// archive, the busybox binary) failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done ("create directory", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The outer archive cannot be opened or read as a tar archive.
    #[error("cannot read {archive} as a tar archive")]
    Archive {
        /// The archive.
        archive: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The archive has neither an OCI layout nor a `docker save` manifest.
    #[error("{archive} is neither an OCI image layout (oci-layout and index.json) nor a docker save archive (manifest.json)")]
    NotAnImage {
        /// The archive.
        archive: PathBuf,
    },
    /// A JSON member of the archive does not parse.
    #[error("{member} in {archive} is not a valid {what}")]
    Json {
        /// The archive.
        archive: PathBuf,
        /// The member's path in the archive.
        member: String,
        /// What it should be ("image manifest", ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON member is too large to be read into memory.
    #[error(
        "{member} in {archive} is {size} bytes, more than the {limit} bytes allowed for a {what}"
    )]
    TooLarge {
        /// The archive.
        archive: PathBuf,
        /// The member's path in the archive.
        member: String,
        /// What it should be.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A blob the image names is not in the archive.
    #[error("{what} {name} is missing from {archive}")]
    MissingBlob {
        /// The archive.
        archive: PathBuf,
        /// "layer", "config", "image manifest", ...
        what: &'static str,
        /// Its digest, or its path for `docker save` archives.
        name: String,
    },
    /// A blob's content does not hash to the digest it is named by.
    #[error("{what} in {archive} has {check} {actual}, but {expected} was expected")]
    DigestMismatch {
        /// The archive.
        archive: PathBuf,
        /// The blob ("layer sha256:…", "config blobs/sha256/…").
        what: String,
        /// What was hashed ("digest", "uncompressed digest").
        check: &'static str,
        /// The digest the image names.
        expected: String,
        /// The digest of the content found.
        actual: String,
    },
    /// A digest is not of the form `sha256:<64 hex digits>`.
    #[error("{archive} names digest {digest:?}, which is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
    UnsupportedDigest {
        /// The archive.
        archive: PathBuf,
        /// The digest as written.
        digest: String,
    },
    /// `index.json` lists no image manifest.
    #[error("{archive} has no image manifest in its index.json")]
    NoManifest {
        /// The archive.
        archive: PathBuf,
    },
    /// Several manifests, none for linux/amd64.
    #[error("{archive} has several image manifests ({}) and none is for linux/amd64", .platforms.join(", "))]
    NoPlatform {
        /// The archive.
        archive: PathBuf,
        /// The platforms offered.
        platforms: Vec<String>,
    },
    /// Image indexes nested deeper than uvm follows.
    #[error("{archive} nests image indexes more than {depth} deep")]
    IndexTooDeep {
        /// The archive.
        archive: PathBuf,
        /// The depth followed.
        depth: usize,
    },
    /// A `docker save` archive of several images.
    #[error(
        "{archive} holds {count} images; uvm unpacks archives of one image (docker save IMAGE)"
    )]
    SeveralImages {
        /// The archive.
        archive: PathBuf,
        /// How many `manifest.json` lists.
        count: usize,
    },
    /// The manifest and the config disagree on the number of layers.
    #[error("{archive} lists {layers} layers but its config has {diff_ids} diff IDs")]
    LayerCount {
        /// The archive.
        archive: PathBuf,
        /// Layers in the manifest.
        layers: usize,
        /// `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },
    /// A layer media type uvm does not unpack.
    #[error("layer {layer} in {archive} has media type {media_type}, which uvm cannot unpack (supported: tar, tar+gzip, tar+zstd)")]
    UnsupportedMediaType {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// A non-distributable ("foreign") layer: its content is not in the archive.
    #[error("layer {layer} in {archive} is a non-distributable (foreign) layer ({media_type}) whose content is not in the archive")]
    ForeignLayer {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer's stream cannot be read, decompressed or parsed as tar.
    #[error("cannot read layer {layer} of {archive}")]
    LayerRead {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layer entry that would escape the layer directory, or otherwise
    /// cannot be unpacked safely.
    #[error("refusing entry {entry} of layer {layer} in {archive}: {reason}")]
    UnsafeEntry {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// The entry's path as written in the layer.
        entry: String,
        /// Why ("it has a `..` component", "it goes through symlink a").
        reason: String,
    },
    /// A layer entry of a type uvm does not unpack (GNU sparse, ...).
    #[error("entry {entry} of layer {layer} in {archive} has tar type {kind}, which uvm does not unpack")]
    UnsupportedEntry {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// The entry's path.
        entry: String,
        /// The tar entry type.
        kind: String,
    },
    /// Writing an entry into the layer directory failed.
    #[error("cannot {action} {path} (entry {entry} of layer {layer} in {archive})")]
    Extract {
        /// The archive.
        archive: PathBuf,
        /// The layer digest.
        layer: String,
        /// The entry's path.
        entry: String,
        /// What was being done.
        action: &'static str,
        /// The host path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An OCI document could not be built (writing an archive).
    #[error("cannot build the {what} of {out}")]
    Spec {
        /// The archive being written.
        out: PathBuf,
        /// Which document ("image config", ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

impl OciError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        OciError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
