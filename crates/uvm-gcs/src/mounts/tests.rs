use super::*;
use std::os::unix::fs::PermissionsExt;

fn disk_req(target: &str, fs: &str) -> MountRequest {
    MountRequest {
        source: Some(mount_request::Source::Scsi(ScsiAddress {
            controller: 0,
            lun: 1,
        })),
        target: target.into(),
        fs_type: fs.into(),
        wait_ms: 40,
        ..Default::default()
    }
}

fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let proc = root.path().join("proc/self");
    std::fs::create_dir_all(&proc).unwrap();
    std::fs::write(
        root.path().join("proc/filesystems"),
        "nodev\tproc\n\text4\n\tsquashfs\n",
    )
    .unwrap();
    std::fs::write(proc.join("mountinfo"), "").unwrap();
    root
}

#[test]
fn options_are_checked() {
    check_options("").unwrap();
    check_options("noatime,data=ordered,errors=remount-ro").unwrap();
    for bad in ["ro", "noatime,rw", "a,,b", "x;y", "uid=0 gid=0", "a/b"] {
        assert_eq!(
            check_options(bad).unwrap_err().kind,
            Kind::BadOptions,
            "{bad}"
        );
    }
}

#[test]
fn disk_fs_types_are_checked_against_the_list_then_the_kernel() {
    let root = fake_root();
    let m = Mounts::with_root(root.path());
    let f = m.mount(&disk_req("/mnt/d", "ntfs")).unwrap_err();
    assert_eq!(f.kind, Kind::BadFsType);
    let f = m.mount(&disk_req("/mnt/d", "xfs")).unwrap_err();
    assert_eq!(f.kind, Kind::FsNotInKernel);
    assert!(f.message.contains("no xfs"), "{}", f.message);
    // Nothing was made for a refused mount.
    assert!(!root.path().join("mnt").exists());
}

#[test]
fn a_missing_disk_is_not_found_within_the_bound_and_nothing_is_made() {
    let root = fake_root();
    scsi::fake::host(root.path(), 0);
    let m = Mounts::with_root(root.path());
    let f = m.mount(&disk_req("/mnt/d", "ext4")).unwrap_err();
    assert_eq!(f.kind, Kind::DiskNotFound);
    assert!(f.message.contains("controller 0, LUN 1"), "{}", f.message);
    assert!(!root.path().join("mnt").exists());
}

#[test]
fn an_existing_mount_point_is_busy() {
    let root = fake_root();
    let at = root.path().join("mnt/d");
    std::fs::write(
        root.path().join("proc/self/mountinfo"),
        format!("40 22 8:0 / {} rw - ext4 /dev/sda rw\n", at.display()),
    )
    .unwrap();
    let m = Mounts::with_root(root.path());
    assert_eq!(
        m.mount(&disk_req("/mnt/d", "ext4")).unwrap_err().kind,
        Kind::Busy
    );
}

#[test]
fn requests_without_source_or_with_bad_share_names_are_refused() {
    let root = fake_root();
    let m = Mounts::with_root(root.path());
    let mut req = disk_req("/mnt/d", "ext4");
    req.source = None;
    assert_eq!(m.mount(&req).unwrap_err().kind, Kind::Unspecified);
    for name in ["", "..", "a/b"] {
        req.source = Some(mount_request::Source::Share(name.into()));
        req.fs_type.clear();
        assert_eq!(
            m.mount(&req).unwrap_err().kind,
            Kind::ShareNotFound,
            "{name:?}"
        );
    }
    req.source = Some(mount_request::Source::Share("s0".into()));
    req.fs_type = "9p".into();
    assert_eq!(m.mount(&req).unwrap_err().kind, Kind::BadFsType);
}

#[test]
fn targets_outside_the_roots_are_refused_for_mount_and_unmount() {
    let root = fake_root();
    let m = Mounts::with_root(root.path());
    assert_eq!(
        m.mount(&disk_req("/etc", "ext4")).unwrap_err().kind,
        Kind::TargetNotAllowed
    );
    assert_eq!(m.unmount("/").unwrap_err().kind, Kind::TargetNotAllowed);
    assert_eq!(
        m.unmount("/mnt/../etc").unwrap_err().kind,
        Kind::TargetNotAllowed
    );
}

#[test]
fn removing_a_mounted_disk_is_busy_and_an_absent_one_is_false() {
    let root = fake_root();
    scsi::fake::host(root.path(), 0);
    let m = Mounts::with_root(root.path());
    let addr = ScsiAddress {
        controller: 0,
        lun: 1,
    };
    assert_eq!(m.remove_disk(&addr), Ok(false));
    scsi::fake::disk(root.path(), 0, 0, 1, "sda", "8:0");
    std::fs::write(
        root.path().join("proc/self/mountinfo"),
        "40 22 8:0 / /mnt/d rw - ext4 /dev/sda rw\n",
    )
    .unwrap();
    let f = m.remove_disk(&addr).unwrap_err();
    assert_eq!(f.kind, Kind::Busy);
    assert!(
        f.message.contains("still mounted at /mnt/d"),
        "{}",
        f.message
    );
    assert_eq!(f.device, "/dev/sda");
    // Unmounted, the delete is written (the fake device does not go).
    std::fs::write(root.path().join("proc/self/mountinfo"), "").unwrap();
    let f = m.remove_disk(&addr).unwrap_err();
    assert!(f.message.contains("did not go"), "{}", f.message);
    let sysfs = root.path().join("sys/bus/scsi/devices/0:0:0:1");
    assert_eq!(std::fs::read_to_string(sysfs.join("delete")).unwrap(), "1");
    // A delete the kernel refuses is reported with its errno.
    std::fs::remove_file(sysfs.join("delete")).unwrap();
    std::fs::create_dir(sysfs.join("delete")).unwrap();
    std::fs::set_permissions(sysfs.join("delete"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = m.remove_disk(&addr).unwrap_err();
    assert_eq!(f.kind, Kind::MountFailed);
    assert_eq!(f.errno, Some(Errno::EISDIR));
}
