use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::json;
use tar::EntryType;

use super::super::{chain_ids, unpack_archive, ArchiveFormat, LayerCache};
use super::{cache_entries, oci_archive, sha, write_tar, LayerTar, Spoil};

fn is_whiteout(p: &Path) -> bool {
    let m = fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

#[test]
fn docker_save_archive_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = LayerTar::new().file("hello", b"world\n").finish();
    let l2 = LayerTar::new().file("etc/two", b"2").finish();
    let diff_ids = vec![sha(&l1), sha(&l2), sha(&l1)];
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/echo", "hi"], "Env": ["A=b"], "Volumes": null},
        "container_config": {"Hostname": "x"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_name = format!("{}.json", &sha(&config)[7..]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["test/docker:1"],
        // The third layer repeats the first: older docker links it.
        "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = LayerTar::header(EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &manifest);
    add(&config_name, &config);
    add("l1/layer.tar", &l1);
    add("l2/layer.tar", &l2);
    let mut h = LayerTar::header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "l3/layer.tar", "../l1/layer.tar")
        .unwrap();
    let archive = tmp.path().join("docker.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();

    let cache = LayerCache::new(tmp.path().join("cache"));
    let img = unpack_archive(&archive, &cache).unwrap();
    assert_eq!(img.format, ArchiveFormat::DockerSave);
    assert_eq!(img.reference.as_deref(), Some("test/docker:1"));
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.unpacked_now, 3);
    assert_eq!(fs::read(img.layers[0].join("hello")).unwrap(), b"world\n");
    assert_eq!(fs::read(img.layers[1].join("etc/two")).unwrap(), b"2");
    assert_eq!(fs::read(img.layers[2].join("hello")).unwrap(), b"world\n");
    // Same diff, different parents: different chain IDs, different dirs.
    assert_ne!(img.layers[0], img.layers[2]);
    let cmd = img.config.config().as_ref().and_then(|c| c.cmd().clone());
    assert_eq!(cmd, Some(vec!["/bin/echo".to_owned(), "hi".to_owned()]));
    assert_eq!(unpack_archive(&archive, &cache).unwrap().unpacked_now, 0);
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a = sha(b"a");
    let b = sha(b"b");
    let ids = chain_ids(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(ids[0], a);
    assert_eq!(ids[1], sha(format!("{a} {b}").as_bytes()));
    assert_eq!(chain_ids(&["md5:00".to_owned()]).unwrap_err(), "md5:00");
}

#[test]
fn whiteouts_and_opaque_dirs_become_char_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = LayerTar::new()
        .file("a/x", b"x")
        .file("a/y", b"y")
        .file("a/z", b"old z")
        .file("b", b"b")
        .file("c/keep", b"k")
        .finish();
    let upper = LayerTar::new()
        .file(".wh.b", b"")
        .file("a/z", b"new z")
        .file("a/.wh..wh..opq", b"")
        .finish();
    let archive = oci_archive(tmp.path(), &[lower, upper], Spoil::default());
    let cache = LayerCache::new(tmp.path().join("cache"));
    let img = unpack_archive(&archive, &cache).unwrap();
    assert_eq!(img.unpacked_now, 2);
    let (lo, up) = (&img.layers[0], &img.layers[1]);
    assert_eq!(fs::read(lo.join("b")).unwrap(), b"b");
    assert!(is_whiteout(&up.join("b")), "b is a whiteout");
    assert!(is_whiteout(&up.join("a/x")), "a/x is a whiteout");
    assert!(is_whiteout(&up.join("a/y")), "a/y is a whiteout");
    assert_eq!(fs::read(up.join("a/z")).unwrap(), b"new z");
    assert!(!up.join("a/.wh..wh..opq").exists());
    assert!(!up.join(".wh.b").exists());
    assert!(
        !up.join("c").exists(),
        "c is not opaque: nothing hidden there"
    );
    assert_eq!(cache_entries(&cache).len(), 2);
}

#[test]
fn entries_keep_modes_owners_links_and_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let mut suid = LayerTar::header(EntryType::Regular, 0o4755, 3);
    suid.set_uid(1234);
    suid.set_gid(5678);
    suid.set_mtime(1_000_000);
    let mut null = LayerTar::header(EntryType::Char, 0o666, 0);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    let fifo = LayerTar::header(EntryType::Fifo, 0o600, 0);
    let layer = LayerTar::new()
        .with("d/su", suid, b"abc")
        .dir("d", 0o700)
        .link(EntryType::Link, "d/hard", "d/su")
        .link(EntryType::Symlink, "abs", "/etc/passwd")
        .with("dev/null", null, b"")
        .with("fifo", fifo, b"")
        .finish();
    let archive = oci_archive(tmp.path(), &[layer], Spoil::default());
    let cache = LayerCache::new(tmp.path().join("cache"));
    let root = &unpack_archive(&archive, &cache).unwrap().layers[0];
    let su = fs::symlink_metadata(root.join("d/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((su.uid(), su.gid(), su.mtime()), (1234, 5678, 1_000_000));
    let hard = fs::symlink_metadata(root.join("d/hard")).unwrap();
    assert_eq!(hard.ino(), su.ino());
    let d = fs::symlink_metadata(root.join("d")).unwrap();
    assert_eq!(
        d.permissions().mode() & 0o7777,
        0o700,
        "implicit dir mode fixed"
    );
    assert_eq!(d.mtime(), 1_600_000_000);
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn compressed_layers_and_nested_indexes() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let plain = LayerTar::new().file("g", b"gzip").finish();
    let plain2 = LayerTar::new().file("z", b"zstd").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(plain2.as_slice(), 3).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&plain), sha(&plain2)]},
    }))
    .unwrap();
    let desc =
        |media: &str, b: &[u8]| json!({"mediaType": media, "size": b.len(), "digest": sha(b)});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &gz),
                   desc("application/vnd.oci.image.layer.v1.tar+zstd", &zst)],
    }))
    .unwrap();
    let other = b"{}".to_vec();
    let mut amd64 = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    amd64["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm = desc("application/vnd.oci.image.manifest.v1+json", &other);
    arm["platform"] = json!({"os": "linux", "architecture": "arm64"});
    let nested =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [arm, amd64]})).unwrap();
    let mut top = desc("application/vnd.oci.image.index.v1+json", &nested);
    top["annotations"] = json!({"io.containerd.image.name": "docker.io/library/t:1"});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap();
    let blob = |b: &[u8]| (format!("blobs/sha256/{}", &sha(b)[7..]), b.to_vec());
    let archive = tmp.path().join("nested.tar");
    write_tar(
        &archive,
        &[
            ("oci-layout".into(), b"{}".to_vec()),
            ("index.json".into(), index),
            blob(&nested),
            blob(&manifest),
            blob(&config),
            blob(&gz),
            blob(&zst),
        ],
    );
    let cache = LayerCache::new(tmp.path().join("cache"));
    let img = unpack_archive(&archive, &cache).unwrap();
    assert_eq!(img.reference.as_deref(), Some("docker.io/library/t:1"));
    assert_eq!(fs::read(img.layers[0].join("g")).unwrap(), b"gzip");
    assert_eq!(fs::read(img.layers[1].join("z")).unwrap(), b"zstd");
}
