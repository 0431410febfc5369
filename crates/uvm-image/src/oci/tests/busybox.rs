use super::super::{
    unpack_archive, write_busybox_archive, ArchiveFormat, LayerCache, BUSYBOX_REFERENCE,
};

#[test]
fn busybox_archive_is_deterministic_and_round_trips() {
    let busybox = crate::locate_busybox().expect("static busybox (apt-get install busybox-static)");
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.tar");
    let b = tmp.path().join("b.tar");
    let wa = write_busybox_archive(&busybox, &a).unwrap();
    let wb = write_busybox_archive(&busybox, &b).unwrap();
    assert_eq!(wa, wb);
    assert_eq!(wa.reference, BUSYBOX_REFERENCE);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let cache = LayerCache::new(tmp.path().join("cache"));
    let img = unpack_archive(&a, &cache).unwrap();
    assert_eq!(img.format, ArchiveFormat::OciLayout);
    assert_eq!(img.reference.as_deref(), Some("uvm/busybox:latest"));
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.unpacked_now, 1);
    let root = &img.layers[0];
    assert_eq!(
        std::fs::read_to_string(root.join("etc/uvm-image-marker")).unwrap(),
        "uvm busybox image\n"
    );
    let sh = root.join("bin/sh");
    assert!(std::fs::symlink_metadata(&sh)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(&sh).unwrap(),
        std::path::Path::new("busybox")
    );
    let cmd = img.config.config().as_ref().and_then(|c| c.cmd().clone());
    assert_eq!(cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(
        img.config.rootfs().diff_ids(),
        &vec![wa.layer_digest.clone()]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("bin/busybox"), 0o755);
    assert!(cache
        .layer_dir(&wa.layer_digest)
        .unwrap()
        .join("complete")
        .is_file());

    let again = unpack_archive(&b, &cache).unwrap();
    assert_eq!(again.unpacked_now, 0);
    assert_eq!(again.layers, img.layers);
}
