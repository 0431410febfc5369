//! A deterministic busybox image: one plain-tar layer, written as an OCI
//! image layout tar.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use tar::{EntryType, Header};

use super::archive::sha256_digest;
use super::error::OciError;

/// The reference recorded in the busybox image's `index.json`.
pub const BUSYBOX_REFERENCE: &str = "uvm/busybox:latest";

/// The marker file in the busybox image, and its content.
pub const MARKER: (&str, &str) = ("etc/uvm-image-marker", "uvm busybox image\n");

/// Applets linked when `busybox --list` gives nothing.
const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "ps", "mount", "hostname", "id", "sleep", "true", "false", "head",
    "dd", "mkdir", "rm", "touch", "env", "grep", "wc", "kill", "top", "free",
];

/// What [`write_busybox_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    /// The image's reference, `uvm/busybox:latest`.
    pub reference: String,
    /// The digest of its manifest (`sha256:<hex>`).
    pub manifest_digest: String,
    /// The digest of its single layer, also its diff ID.
    pub layer_digest: String,
}

/// One file of a tar being built.
enum Item {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(&'static str),
}

/// Writes to `out` an OCI image layout tar of a single-layer image around the
/// static `busybox`: `/bin/busybox`, a `/bin/<applet>` symlink per applet of
/// `busybox --list` (a fixed list if that fails), `/etc/passwd`, `/etc/group`,
/// `/etc/uvm-image-marker`, and empty `/proc /sys /dev /tmp /root`. The same
/// binary gives the same bytes: entries are sorted, mtimes 0, owners 0.
pub fn write_busybox_archive(busybox: &Path, out: &Path) -> Result<WrittenImage, OciError> {
    let binary = std::fs::read(busybox).map_err(|e| OciError::io("read", busybox, e))?;
    let spec = |what| {
        move |source| OciError::Spec {
            out: out.to_owned(),
            what,
            source,
        }
    };
    let mut items: Vec<(String, Item)> = vec![
        ("bin".into(), Item::Dir(0o755)),
        ("bin/busybox".into(), Item::File(0o755, binary)),
        ("dev".into(), Item::Dir(0o755)),
        ("etc".into(), Item::Dir(0o755)),
        (
            "etc/passwd".into(),
            Item::File(
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                    .to_vec(),
            ),
        ),
        (
            "etc/group".into(),
            Item::File(0o644, b"root:x:0:\nnobody:x:65534:\n".to_vec()),
        ),
        (
            MARKER.0.into(),
            Item::File(0o644, MARKER.1.as_bytes().to_vec()),
        ),
        ("proc".into(), Item::Dir(0o555)),
        ("root".into(), Item::Dir(0o700)),
        ("sys".into(), Item::Dir(0o555)),
        ("tmp".into(), Item::Dir(0o1777)),
    ];
    for applet in applets(busybox) {
        items.push((format!("bin/{applet}"), Item::Symlink("busybox")));
    }
    let layer = tar_of(items).map_err(|e| OciError::io("build the layer of", out, e))?;
    let layer_digest = sha256_digest(&layer);

    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ])
                .cmd(vec!["sh".to_owned()])
                .working_dir("/".to_owned())
                .build()
                .map_err(spec("image config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .diff_ids(vec![layer_digest.clone()])
                .build()
                .map_err(spec("image config"))?,
        )
        .build()
        .map_err(spec("image config"))?;
    let config = json(&config, out)?;
    let descriptor = |media: MediaType, bytes: &[u8]| -> Result<Descriptor, OciError> {
        let digest = Digest::from_str(&sha256_digest(bytes)).map_err(spec("descriptor"))?;
        Ok(Descriptor::new(media, bytes.len() as u64, digest))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config)?)
        .layers(vec![descriptor(MediaType::ImageLayer, &layer)?])
        .build()
        .map_err(spec("image manifest"))?;
    let manifest = json(&manifest, out)?;
    let mut manifest_desc = descriptor(MediaType::ImageManifest, &manifest)?;
    manifest_desc.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()
            .map_err(spec("image index"))?,
    ));
    manifest_desc.set_annotations(Some(HashMap::from([(
        "org.opencontainers.image.ref.name".to_owned(),
        BUSYBOX_REFERENCE.to_owned(),
    )])));
    let manifest_digest = manifest_desc.digest().to_string();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(spec("image index"))?;
    let index = json(&index, out)?;

    let mut items: Vec<(String, Item)> = vec![
        ("blobs".into(), Item::Dir(0o755)),
        ("blobs/sha256".into(), Item::Dir(0o755)),
        ("index.json".into(), Item::File(0o644, index)),
        (
            "oci-layout".into(),
            Item::File(0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ),
    ];
    for blob in [config, manifest, layer] {
        let name = format!("blobs/sha256/{}", &sha256_digest(&blob)["sha256:".len()..]);
        items.push((name, Item::File(0o644, blob)));
    }
    let bytes = tar_of(items).map_err(|e| OciError::io("build", out, e))?;
    write_atomic(out, &bytes)?;
    Ok(WrittenImage {
        reference: BUSYBOX_REFERENCE.to_owned(),
        manifest_digest,
        layer_digest,
    })
}

/// The applets `busybox --list` names, else [`FALLBACK_APPLETS`]; sorted.
fn applets(busybox: &Path) -> Vec<String> {
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut names: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.contains('/') && !matches!(*n, "." | ".." | "busybox"))
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        tracing::debug!(busybox = %busybox.display(), "busybox --list gave nothing; using the fixed applet list");
        names = FALLBACK_APPLETS.iter().map(|s| (*s).to_owned()).collect();
    }
    names.sort();
    names.dedup();
    names
}

/// A deterministic tar of `items`, sorted by path.
fn tar_of(mut items: Vec<(String, Item)>) -> io::Result<Vec<u8>> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(Vec::new());
    for (path, item) in items {
        let mut h = Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::Dir(mode) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Item::File(mode, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &path, data.as_slice())?;
            }
            Item::Symlink(target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, &path, target)?;
            }
        }
    }
    b.into_inner()
}

fn json<T: serde::Serialize>(value: &T, out: &Path) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(value)
        .map_err(|e| OciError::io("serialize JSON for", out, io::Error::other(e)))
}

fn write_atomic(out: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| OciError::io("create directory", dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| OciError::io("create a file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| OciError::io("write", tmp.path().to_owned(), e))?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file()
        .set_permissions(perms)
        .map_err(|e| OciError::io("chmod", tmp.path().to_owned(), e))?;
    tmp.persist(out)
        .map_err(|e| OciError::io("rename into", out, e.error))?;
    Ok(())
}
