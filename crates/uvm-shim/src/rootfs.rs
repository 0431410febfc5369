//! The task's root file system on the host: containerd hands the shim the
//! snapshot's mounts (an overlay of snapshot dirs, a bind for the native
//! snapshotter, a file system on a block device for devmapper); the shim
//! mounts them at `<bundle>/rootfs`, as runc's shim does, and the UVM gets
//! that directory as a share. Unmounted on delete,
//! and by `shim delete` after a crash.

use std::path::{Path, PathBuf};

use containerd_shim::mount::{mount_rootfs, umount_recursive};
use containerd_shim_protos::api::Mount;

use crate::error::{Result, ShimError};

/// `<bundle>/rootfs`.
pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts `mounts` at `<bundle>/rootfs` in order; on failure unmounts what
/// it mounted. Returns the directory.
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<PathBuf> {
    let target = rootfs_dir(bundle);
    std::fs::create_dir_all(&target).map_err(|e| ShimError::io("create", &target, e))?;
    for m in mounts {
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = mount_rootfs(fs_type, source, &m.options, &target) {
            let _ = unmount(bundle);
            return Err(ShimError::Rootfs(format!(
                "cannot mount the container's root file system ({} {} at {}): {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    Ok(target)
}

/// Unmounts everything at or under `<bundle>/rootfs` (nothing mounted is fine).
pub fn unmount(bundle: &Path) -> Result<()> {
    let target = rootfs_dir(bundle);
    let t = target.to_string_lossy().to_string();
    umount_recursive(Some(&t), libc::MNT_DETACH).map_err(|e| {
        ShimError::Rootfs(format!(
            "cannot unmount the container's root file system {}: {e}",
            target.display()
        ))
    })
}

/// Whether anything is mounted at or under `dir` (from `/proc/self/mountinfo`).
pub fn mounted_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(mp).starts_with(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mount_and_unmount() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("marker"), b"m").unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let m = Mount {
            type_: "bind".into(),
            source: src.path().display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        let dir = mount(bundle.path(), &[m]).unwrap();
        assert!(dir.join("marker").exists());
        assert!(mounted_under(bundle.path()));
        unmount(bundle.path()).unwrap();
        assert!(!mounted_under(bundle.path()));
        assert!(!dir.join("marker").exists());
        unmount(bundle.path()).unwrap();
    }

    /// Detaches a loop device when dropped.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// A block snapshotter (devmapper) hands the shim a file system on a
    /// block device: it is mounted on the host like the others and reaches
    /// the guest as the same share. Here a loop device stands in for the
    /// thin device (this host has no device-mapper).
    #[test]
    fn a_block_device_mount_is_mounted_like_the_others() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let content = work.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("marker"), b"from the block device").unwrap();
        let image = work.path().join("snapshot.img");
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(&content)
            .arg(&image)
            .arg("16M")
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipping: mkfs.ext4 (e2fsprogs) unavailable");
            return;
        }
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => {
                eprintln!("skipping: no loop device to attach");
                return;
            }
        };
        let _loop = Loop(dev.clone());
        let bundle = tempfile::tempdir().unwrap();
        let m = Mount {
            type_: "ext4".into(),
            source: dev,
            options: vec!["rw".into()],
            ..Default::default()
        };
        let dir = mount(bundle.path(), &[m]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("marker")).unwrap(),
            "from the block device"
        );
        unmount(bundle.path()).unwrap();
        assert!(!mounted_under(bundle.path()));
    }

    #[test]
    fn a_bad_mount_is_a_sentence_and_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let bundle = tempfile::tempdir().unwrap();
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/nonexistent/lower".into()],
            ..Default::default()
        };
        let e = mount(bundle.path(), &[m]).unwrap_err().sentence();
        assert!(
            e.contains("cannot mount the container's root file system"),
            "{e}"
        );
        assert!(!mounted_under(bundle.path()));
    }
}
