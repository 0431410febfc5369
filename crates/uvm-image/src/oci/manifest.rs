//! Reading what an archive holds: the OCI layout (`index.json` → manifest →
//! config and layers) or a `docker save` `manifest.json`, every JSON blob
//! verified against its digest.

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use serde::Deserialize;

use super::archive::{sha256_digest, sha256_hex, OuterArchive};
use super::error::OciError;
use super::ArchiveFormat;

/// Image indexes are followed at most this deep.
const MAX_DEPTH: usize = 4;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer to unpack.
#[derive(Debug, Clone)]
pub(crate) struct LayerSource {
    /// How the layer is named in messages: its digest (OCI) or its path in
    /// the archive (`docker save`).
    pub name: String,
    /// Its member path in the archive.
    pub member: String,
    pub compression: Compression,
    /// The digest of the (compressed) blob, when the archive names one.
    pub blob_digest: Option<String>,
}

/// What an archive holds.
pub(crate) struct Plan {
    pub format: ArchiveFormat,
    pub reference: Option<String>,
    pub config: ImageConfiguration,
    /// Bottom layer first.
    pub layers: Vec<LayerSource>,
}

/// Reads and verifies the manifest and config of `ar`, and checks that every
/// layer they name is present.
pub(crate) fn plan(ar: &OuterArchive) -> Result<Plan, OciError> {
    let plan = if ar.contains("oci-layout") && ar.contains("index.json") {
        oci_plan(ar)?
    } else if ar.contains("manifest.json") {
        docker_plan(ar)?
    } else {
        return Err(OciError::NotAnImage {
            archive: ar.path().to_owned(),
        });
    };
    let diff_ids = plan.config.rootfs().diff_ids().len();
    if diff_ids != plan.layers.len() {
        return Err(OciError::LayerCount {
            archive: ar.path().to_owned(),
            layers: plan.layers.len(),
            diff_ids,
        });
    }
    if let Some(l) = plan.layers.iter().find(|l| !ar.contains(&l.member)) {
        return Err(OciError::MissingBlob {
            archive: ar.path().to_owned(),
            what: "layer",
            name: l.name.clone(),
        });
    }
    Ok(plan)
}

fn parse<T: for<'de> Deserialize<'de>>(
    ar: &OuterArchive,
    member: &str,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| OciError::Json {
        archive: ar.path().to_owned(),
        member: member.to_owned(),
        what,
        source,
    })
}

/// `blobs/sha256/<hex>` for a `sha256:<hex>` digest.
fn blob_path(ar: &OuterArchive, digest: &str) -> Result<String, OciError> {
    let hex = sha256_hex(digest).ok_or_else(|| OciError::UnsupportedDigest {
        archive: ar.path().to_owned(),
        digest: digest.to_owned(),
    })?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Reads blob `digest` whole and checks its digest.
fn read_verified(ar: &OuterArchive, digest: &str, what: &'static str) -> Result<Vec<u8>, OciError> {
    let member = blob_path(ar, digest)?;
    if !ar.contains(&member) {
        return Err(OciError::MissingBlob {
            archive: ar.path().to_owned(),
            what,
            name: digest.to_owned(),
        });
    }
    let bytes = ar.read_small(&member, what)?;
    check(ar, format!("{what} {digest}"), digest, &bytes)?;
    Ok(bytes)
}

fn check(ar: &OuterArchive, what: String, expected: &str, bytes: &[u8]) -> Result<(), OciError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(OciError::DigestMismatch {
            archive: ar.path().to_owned(),
            what,
            check: "digest",
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn oci_plan(ar: &OuterArchive) -> Result<Plan, OciError> {
    let bytes = ar.read_small("index.json", "image index")?;
    let index: ImageIndex = parse(ar, "index.json", "image index", &bytes)?;
    let mut found = Vec::new();
    for d in index.manifests() {
        let reference = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)).cloned());
        collect(ar, d, reference, 0, &mut found)?;
    }
    let (desc, reference) = select(ar, found)?;
    let digest = desc.digest().to_string();
    let bytes = read_verified(ar, &digest, "image manifest")?;
    let manifest: ImageManifest = parse(ar, &blob_path(ar, &digest)?, "image manifest", &bytes)?;
    let config_digest = manifest.config().digest().to_string();
    let bytes = read_verified(ar, &config_digest, "image config")?;
    let config = parse(ar, &blob_path(ar, &config_digest)?, "image config", &bytes)?;
    let layers = manifest
        .layers()
        .iter()
        .map(|l| oci_layer(ar, l))
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        format: ArchiveFormat::OciLayout,
        reference,
        config,
        layers,
    })
}

/// Gathers the image manifests under descriptor `d`, following indexes.
fn collect(
    ar: &OuterArchive,
    d: &Descriptor,
    reference: Option<String>,
    depth: usize,
    found: &mut Vec<(Descriptor, Option<String>)>,
) -> Result<(), OciError> {
    match d.media_type().as_ref() {
        "application/vnd.oci.image.index.v1+json" | DOCKER_LIST => {
            if depth >= MAX_DEPTH {
                return Err(OciError::IndexTooDeep {
                    archive: ar.path().to_owned(),
                    depth: MAX_DEPTH,
                });
            }
            let digest = d.digest().to_string();
            let bytes = read_verified(ar, &digest, "image index")?;
            let index: ImageIndex = parse(ar, &blob_path(ar, &digest)?, "image index", &bytes)?;
            for m in index.manifests() {
                collect(ar, m, reference.clone(), depth + 1, found)?;
            }
        }
        "application/vnd.oci.image.manifest.v1+json" | DOCKER_MANIFEST => {
            found.push((d.clone(), reference));
        }
        // Attestations, signatures and other artifacts are not images.
        other => tracing::debug!(media_type = other, "skipping index entry"),
    }
    Ok(())
}

/// The single manifest, else the linux/amd64 one.
fn select(
    ar: &OuterArchive,
    mut found: Vec<(Descriptor, Option<String>)>,
) -> Result<(Descriptor, Option<String>), OciError> {
    if found.len() <= 1 {
        return found.pop().ok_or_else(|| OciError::NoManifest {
            archive: ar.path().to_owned(),
        });
    }
    let is_amd64 = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    };
    if let Some(i) = found.iter().position(|(d, _)| is_amd64(d)) {
        return Ok(found.swap_remove(i));
    }
    let platforms = found
        .iter()
        .map(|(d, _)| match d.platform() {
            Some(p) => format!("{}/{}", p.os(), p.architecture()),
            None => "no platform".to_owned(),
        })
        .collect();
    Err(OciError::NoPlatform {
        archive: ar.path().to_owned(),
        platforms,
    })
}

fn oci_layer(ar: &OuterArchive, d: &Descriptor) -> Result<LayerSource, OciError> {
    let digest = d.digest().to_string();
    let media_type = d.media_type().to_string();
    let compression = match d.media_type() {
        MediaType::ImageLayer => Compression::None,
        MediaType::ImageLayerGzip => Compression::Gzip,
        MediaType::ImageLayerZstd => Compression::Zstd,
        MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => {
            return Err(OciError::ForeignLayer {
                archive: ar.path().to_owned(),
                layer: digest,
                media_type,
            })
        }
        MediaType::Other(m) if m == DOCKER_GZIP => Compression::Gzip,
        MediaType::Other(m) if m == DOCKER_TAR => Compression::None,
        MediaType::Other(m) if m == DOCKER_FOREIGN => {
            return Err(OciError::ForeignLayer {
                archive: ar.path().to_owned(),
                layer: digest,
                media_type,
            })
        }
        _ => {
            return Err(OciError::UnsupportedMediaType {
                archive: ar.path().to_owned(),
                layer: digest,
                media_type,
            })
        }
    };
    Ok(LayerSource {
        member: blob_path(ar, &digest)?,
        name: digest.clone(),
        compression,
        blob_digest: Some(digest),
    })
}

/// One image of a `docker save` `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_plan(ar: &OuterArchive) -> Result<Plan, OciError> {
    let bytes = ar.read_small("manifest.json", "docker manifest")?;
    let mut images: Vec<DockerImage> = parse(ar, "manifest.json", "docker manifest", &bytes)?;
    if images.len() != 1 {
        return Err(OciError::SeveralImages {
            archive: ar.path().to_owned(),
            count: images.len(),
        });
    }
    let image = images.remove(0);
    let bytes = ar.read_small(&image.config, "image config")?;
    // `<hex>.json` (classic) or `blobs/sha256/<hex>` (docker 25+) name the
    // config by its digest.
    if let Some(digest) = digest_in_name(&image.config) {
        check(
            ar,
            format!("image config {}", image.config),
            &digest,
            &bytes,
        )?;
    }
    let config = parse(ar, &image.config, "image config", &bytes)?;
    let mut layers = Vec::new();
    for member in image.layers {
        // docker save stores layers uncompressed, but accept compressed ones.
        let magic = ar.peek(&member, 4)?;
        let compression = match magic.as_slice() {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
            _ => Compression::None,
        };
        layers.push(LayerSource {
            name: member.clone(),
            blob_digest: digest_in_name(&member).filter(|_| member.contains("blobs/")),
            member,
            compression,
        });
    }
    Ok(Plan {
        format: ArchiveFormat::DockerSave,
        reference: image.repo_tags.and_then(|t| t.into_iter().next()),
        config,
        layers,
    })
}

/// `sha256:<hex>` when `member`'s file name is `<hex>` or `<hex>.json`.
fn digest_in_name(member: &str) -> Option<String> {
    let file = member.rsplit('/').next()?;
    let stem = file.strip_suffix(".json").unwrap_or(file);
    let digest = format!("sha256:{stem}");
    sha256_hex(&digest).is_some().then_some(digest)
}
