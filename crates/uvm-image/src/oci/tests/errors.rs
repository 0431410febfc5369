use std::path::PathBuf;

use serde_json::json;
use tar::EntryType;

use super::super::{unpack_archive, LayerCache, OciError};
use super::{cache_entries, oci_archive, sha, write_tar, LayerTar, Spoil};

/// Unpacks an OCI archive of `layers` that must fail; checks that the cache
/// holds no temporary directory and no layer, and returns the error.
fn fails(tmp: &tempfile::TempDir, layers: &[Vec<u8>], spoil: Spoil) -> (OciError, PathBuf) {
    let archive = oci_archive(tmp.path(), layers, spoil);
    let cache = LayerCache::new(tmp.path().join("cache"));
    let err = unpack_archive(&archive, &cache).expect_err("unpack must fail");
    assert_eq!(
        cache_entries(&cache),
        Vec::<String>::new(),
        "cache left dirty by: {err}"
    );
    (err, archive)
}

#[test]
fn altered_layer_names_both_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerTar::new().file("f", b"hello").finish();
    let mut altered = layer.clone();
    altered[512] ^= 0x20;
    let (err, archive) = fails(
        &tmp,
        std::slice::from_ref(&layer),
        Spoil {
            tamper: Some(0),
            ..Spoil::default()
        },
    );
    let msg = err.to_string();
    // The blob digest is checked first (here it equals the diff ID).
    assert!(
        matches!(
            err,
            OciError::DigestMismatch {
                check: "digest",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&sha(&layer)) && msg.contains(&sha(&altered)),
        "{msg}"
    );
    assert!(msg.contains(&archive.display().to_string()), "{msg}");
}

#[test]
fn missing_layer_blob_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = LayerTar::new().file("f", b"1").finish();
    let upper = LayerTar::new().file("g", b"2").finish();
    let digest = sha(&upper);
    let (err, archive) = fails(
        &tmp,
        &[lower, upper],
        Spoil {
            omit: Some(1),
            ..Spoil::default()
        },
    );
    assert_eq!(
        err.to_string(),
        format!("layer {digest} is missing from {}", archive.display())
    );
}

#[test]
fn dotdot_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerTar::new()
        .file("ok", b"fine")
        .raw(EntryType::Regular, b"../evil", b"", b"evil")
        .finish();
    let (err, _) = fails(&tmp, &[layer], Spoil::default());
    let msg = err.to_string();
    assert!(
        msg.contains("entry ../evil") && msg.contains("`..`"),
        "{msg}"
    );
    assert!(!tmp.path().join("cache/layers/evil").exists());
    assert!(!tmp.path().join("cache/evil").exists());
}

#[test]
fn absolute_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerTar::new()
        .raw(EntryType::Regular, b"/etc/evil-uvm-test", b"", b"evil")
        .finish();
    let (err, _) = fails(&tmp, &[layer], Spoil::default());
    let msg = err.to_string();
    assert!(
        msg.contains("entry /etc/evil-uvm-test") && msg.contains("absolute"),
        "{msg}"
    );
    assert!(!std::path::Path::new("/etc/evil-uvm-test").exists());
}

#[test]
fn entry_through_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let layer = LayerTar::new()
        .link(EntryType::Symlink, "link", target)
        .file("link/evil", b"evil")
        .finish();
    let (err, _) = fails(&tmp, &[layer], Spoil::default());
    let msg = err.to_string();
    assert!(
        msg.contains("entry link/evil") && msg.contains("goes through symlink link"),
        "{msg}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn hard_links_must_stay_inside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    let target = outside.path().to_str().unwrap();
    for (layer, want) in [
        (
            LayerTar::new()
                .raw(EntryType::Link, b"h", b"../x", b"")
                .finish(),
            "`..`",
        ),
        (
            LayerTar::new()
                .link(EntryType::Symlink, "link", target)
                .link(EntryType::Link, "h", "link/secret")
                .finish(),
            "goes through symlink link",
        ),
        (
            LayerTar::new()
                .link(EntryType::Link, "h", "nothere")
                .finish(),
            "not a file already in this layer",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (err, _) = fails(&tmp, &[layer], Spoil::default());
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn escaping_whiteout_is_refused() {
    for name in [".wh...", "a/.wh..."] {
        let tmp = tempfile::tempdir().unwrap();
        let layer = LayerTar::new()
            .file("a/keep", b"k")
            .file(name, b"")
            .finish();
        let (err, _) = fails(&tmp, &[layer], Spoil::default());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("entry {name}")) && msg.contains("whiteout"),
            "{msg}"
        );
    }
}

#[test]
fn foreign_and_unknown_layers_and_non_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(b"l")]},
    }))
    .unwrap();
    let blob = |b: &[u8]| (format!("blobs/sha256/{}", &sha(b)[7..]), b.to_vec());
    let cache = LayerCache::new(tmp.path().join("cache"));
    for (media, want) in [
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "non-distributable",
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "non-distributable",
        ),
        ("application/x-squashfs", "cannot unpack"),
    ] {
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": config.len(), "digest": sha(&config)},
            "layers": [{"mediaType": media, "size": 1, "digest": sha(b"l")}],
        }))
        .unwrap();
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "size": manifest.len(), "digest": sha(&manifest)}]}))
        .unwrap();
        let archive = tmp.path().join("foreign.tar");
        write_tar(
            &archive,
            &[
                ("oci-layout".into(), b"{}".to_vec()),
                ("index.json".into(), index),
                blob(&manifest),
                blob(&config),
            ],
        );
        let err = unpack_archive(&archive, &cache).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(&sha(b"l")), "{err}");
    }
    let archive = tmp.path().join("plain.tar");
    write_tar(&archive, &[("README".into(), b"hi".to_vec())]);
    let err = unpack_archive(&archive, &cache).unwrap_err();
    assert!(matches!(err, OciError::NotAnImage { .. }), "{err}");
    assert_eq!(cache_entries(&cache), Vec::<String>::new());
}
