//! A container's root file system in the guest's own view, under
//! `/run/uvm/containers/<id>`: an overlay of read-only layers under a
//! writable scratch (a tmpfs, or a host-given directory), or a bind mount of
//! one directory. Undone in reverse order, never by a recursive delete (a
//! bound directory's files are not ours).
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tonic::Status;
use uvm_proto::gcs::{container_rootfs, ContainerRootfs, OverlayRootfs};

/// Where the containers' directories are made.
pub const CONTAINERS_DIR: &str = "/run/uvm/containers";
/// Longest mount data string the kernel takes (one page, with its NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// What was made for a container's root file system.
#[derive(Debug, Default)]
pub struct Rootfs {
    /// `/run/uvm/containers/<id>`.
    pub dir: PathBuf,
    /// The mounted root (`<dir>/rootfs`).
    pub rootfs: PathBuf,
    /// Mount points made, in mount order.
    mounts: Vec<PathBuf>,
    /// Directories made, in order (removed in reverse, only when empty).
    dirs: Vec<PathBuf>,
}

/// `size=` option of the scratch tmpfs (0: the tmpfs default, half of RAM).
pub fn tmpfs_options(size: u64) -> String {
    if size == 0 {
        "mode=0755".into()
    } else {
        format!("mode=0755,size={size}")
    }
}

fn guest_dir(p: &str, field: &str) -> Result<PathBuf, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("rootfs.{field}: {p:?} {why}"));
    if !p.starts_with('/') {
        return Err(bad("must be an absolute guest path"));
    }
    if p.contains([':', ',', '\\', '\n']) {
        return Err(bad("must not contain ':', ',' or '\\'"));
    }
    Ok(PathBuf::from(p))
}

/// The overlay mount data: `lowerdir=` topmost first, joined by ':'.
pub fn overlay_options(lower: &[String], upper: &Path, work: &Path) -> Result<String, Status> {
    if lower.is_empty() {
        return Err(Status::invalid_argument(
            "rootfs.overlay.lower_dirs: at least one layer is needed",
        ));
    }
    let mut dirs = Vec::new();
    for (i, l) in lower.iter().enumerate() {
        let d = guest_dir(l, &format!("overlay.lower_dirs[{i}]"))?;
        dirs.push(d.to_string_lossy().into_owned());
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(Status::invalid_argument(format!(
            "rootfs.overlay.lower_dirs: the overlay options take {} bytes, more than the kernel's {MAX_MOUNT_DATA}",
            data.len()
        )));
    }
    Ok(data)
}

impl Rootfs {
    fn mkdir(&mut self, p: &Path) -> Result<(), Status> {
        match std::fs::create_dir(p) {
            Ok(()) => {
                self.dirs.push(p.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
            Err(e) => Err(Status::internal(format!("mkdir {}: {e}", p.display()))),
        }
    }

    fn mount(
        &mut self,
        src: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Status> {
        mount(Some(src), target, fstype, flags, data).map_err(|e| {
            Status::internal(format!(
                "mount {} on {}: {e}",
                src.display(),
                target.display()
            ))
        })?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// Mounts the root of container `id` from `src` under `base` (normally
    /// [`CONTAINERS_DIR`]). On error, what was done is undone.
    pub fn create(base: &Path, id: &str, src: Option<&ContainerRootfs>) -> Result<Self, Status> {
        let Some(source) = src.and_then(|s| s.source.as_ref()) else {
            return Err(Status::invalid_argument(
                "rootfs: must be set (overlay or directory)",
            ));
        };
        // Validate before touching anything.
        if let container_rootfs::Source::Directory(d) = source {
            let d = guest_dir(d, "directory")?;
            if !d.is_dir() {
                return Err(Status::invalid_argument(format!(
                    "rootfs.directory: {} is not a directory",
                    d.display()
                )));
            }
        }
        let mut r = Rootfs {
            dir: base.join(id),
            rootfs: base.join(id).join("rootfs"),
            ..Default::default()
        };
        let made = std::fs::create_dir_all(base)
            .map_err(|e| Status::internal(format!("mkdir {}: {e}", base.display())))
            .and_then(|_| r.mkdir(&r.dir.clone()))
            .and_then(|_| r.mkdir(&r.rootfs.clone()))
            .and_then(|_| match source {
                container_rootfs::Source::Overlay(o) => r.overlay(o),
                container_rootfs::Source::Directory(d) => {
                    let root = r.rootfs.clone();
                    r.mount(
                        Path::new(d),
                        &root,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )
                }
            });
        match made {
            Ok(()) => Ok(r),
            Err(e) => {
                if let Err(undo) = r.remove() {
                    tracing::warn!(error = %undo, "undoing a failed rootfs left something behind");
                }
                Err(e)
            }
        }
    }

    fn overlay(&mut self, o: &OverlayRootfs) -> Result<(), Status> {
        let scratch = if o.scratch_dir.is_empty() {
            let s = self.dir.join("scratch");
            self.mkdir(&s)?;
            let opts = tmpfs_options(o.scratch_size_bytes);
            self.mount(
                Path::new("tmpfs"),
                &s,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(&opts),
            )?;
            s
        } else {
            let s = guest_dir(&o.scratch_dir, "overlay.scratch_dir")?;
            if std::fs::read_dir(&s).is_ok_and(|mut d| d.next().is_some()) {
                return Err(Status::invalid_argument(format!(
                    "rootfs.overlay.scratch_dir: {} is not empty",
                    s.display()
                )));
            }
            std::fs::create_dir_all(&s)
                .map_err(|e| Status::internal(format!("mkdir {}: {e}", s.display())))?;
            s
        };
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        self.mkdir(&upper)?;
        self.mkdir(&work)?;
        let data = overlay_options(&o.lower_dirs, &upper, &work)?;
        for (i, l) in o.lower_dirs.iter().enumerate() {
            if !Path::new(l).is_dir() {
                return Err(Status::invalid_argument(format!(
                    "rootfs.overlay.lower_dirs[{i}]: {l} is not a directory"
                )));
            }
        }
        let root = self.rootfs.clone();
        self.mount(
            Path::new("overlay"),
            &root,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )
    }

    /// Unmounts and removes what [`Rootfs::create`] made (call once no
    /// process uses it; lazily detached otherwise). Err: what is left.
    pub fn remove(&mut self) -> Result<(), String> {
        let mut left = Vec::new();
        while let Some(m) = self.mounts.pop() {
            if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL {
                    left.push(format!("unmount {}: {e}", m.display()));
                }
            }
        }
        while let Some(d) = self.dirs.pop() {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // The upper/work dirs of a `scratch_dir` are the host's to keep.
                Err(_) if !d.starts_with(&self.dir) => {}
                Err(e) => left.push(format!("rmdir {}: {e}", d.display())),
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_strings() {
        assert_eq!(tmpfs_options(0), "mode=0755");
        assert_eq!(tmpfs_options(1 << 20), "mode=0755,size=1048576");
        let up = Path::new("/s/upper");
        let work = Path::new("/s/work");
        let o = overlay_options(&["/l2".into(), "/l1".into()], up, work).unwrap();
        assert_eq!(o, "lowerdir=/l2:/l1,upperdir=/s/upper,workdir=/s/work");
        assert_eq!(
            overlay_options(&[], up, work).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let e = overlay_options(&["rel".into()], up, work).unwrap_err();
        assert!(e.message().contains("lower_dirs[0]"), "{}", e.message());
        assert!(overlay_options(&["/a:b".into()], up, work).is_err());
        let many: Vec<String> = (0..400).map(|i| format!("/layers/{i:08}")).collect();
        assert!(overlay_options(&many, up, work)
            .unwrap_err()
            .message()
            .contains("bytes"));
    }

    #[test]
    fn bad_sources_are_refused_before_anything_is_made() {
        let base = tempfile::tempdir().unwrap();
        let e = Rootfs::create(base.path(), "c1", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let src = ContainerRootfs {
            source: Some(container_rootfs::Source::Directory("/no/such/dir".into())),
        };
        let e = Rootfs::create(base.path(), "c1", Some(&src)).unwrap_err();
        assert!(e.message().contains("rootfs.directory"), "{}", e.message());
        assert!(!base.path().join("c1").exists());
    }
}
