//! Tests of [`crate::oci`], on archives built in memory.

mod busybox;
mod errors;
mod unpack;

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::LayerCache;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A layer tar under construction.
struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    fn new() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry whose name bytes go into the header as they are (the
    /// builder would refuse or normalise `..` and absolute paths).
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    /// Appends a prepared header (devices, owners, modes).
    fn with(mut self, path: &str, mut h: Header, data: &[u8]) -> Self {
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// How to spoil an OCI archive.
#[derive(Default, Clone, Copy)]
struct Spoil {
    /// Flip one content byte of this layer after its digests are taken.
    tamper: Option<usize>,
    /// Leave this layer's blob out.
    omit: Option<usize>,
}

/// Writes a tar of `members` (sorted as given) to `path`.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = LayerTar::header(EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// An OCI layout archive of plain-tar `layers` (bottom first).
fn oci_archive(dir: &Path, layers: &[Vec<u8>], spoil: Spoil) -> PathBuf {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let desc =
        |media: &str, b: &[u8]| json!({"mediaType": media, "size": b.len(), "digest": sha(b)});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [desc("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha(b)[7..]);
    let mut members = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index),
        (blob(&manifest), manifest.clone()),
        (blob(&config), config.clone()),
    ];
    for (i, l) in layers.iter().enumerate() {
        if spoil.omit == Some(i) {
            continue;
        }
        let mut bytes = l.clone();
        if spoil.tamper == Some(i) {
            bytes[512] ^= 0x20; // the first entry's first content byte
        }
        members.push((blob(l), bytes));
    }
    let path = dir.join("image.tar");
    write_tar(&path, &members);
    path
}

/// What is left in the cache's `layers/` directory.
fn cache_entries(cache: &LayerCache) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(cache.layers_dir()) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
