//! Where the host may mount: the target policy, and making missing targets.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use uvm_proto::gcs::mount_failure::Kind;
use uvm_proto::mounts::ALLOWED_ROOTS;

use super::failure::Failure;

/// Checks that `target` is absolute, normalized (no `.`, `..`, empty
/// components or trailing `/`) and strictly below one of [`ALLOWED_ROOTS`].
pub fn check(target: &str) -> Result<(), Failure> {
    let refuse = |why: &str| {
        Err(Failure::new(
            Kind::TargetNotAllowed,
            format!(
                "mount target {target:?} is not allowed: {why} (targets lie below {})",
                ALLOWED_ROOTS.join(" or ")
            ),
        ))
    };
    if !target.starts_with('/') {
        return refuse("it is not absolute");
    }
    if target.len() > 1024 {
        return refuse("it is longer than 1024 bytes");
    }
    if target.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    if target[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return refuse("it is not normalized");
    }
    let below = ALLOWED_ROOTS.iter().any(|root| {
        target
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
    });
    if !below {
        return refuse("it is outside the allowed roots");
    }
    Ok(())
}

/// What should be at the target once it is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A directory (a disk, or a share of a directory).
    Dir,
    /// A regular file (a share of a single file).
    File,
}

/// What [`prepare`] made, to be removed again on unmount or failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made {
    /// Paths created, outermost first.
    pub paths: Vec<PathBuf>,
}

impl Made {
    /// Removes what was made, innermost first; a directory that is no
    /// longer empty is left alone.
    pub fn remove(&self) {
        for p in self.paths.iter().rev() {
            let r = match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => continue,
            };
            if let Err(e) = r {
                tracing::debug!(path = %p.display(), error = %e, "left in place");
            }
        }
    }
}

/// Walks from `root` down to `root/target` (a checked target), refusing
/// symlinks on the way and making what is missing (directories 0755, the
/// last component as `shape`).
pub fn prepare(root: &Path, target: &str, shape: Shape) -> Result<(PathBuf, Made), Failure> {
    let mut made = Made::default();
    let mut at = root.to_path_buf();
    let components: Vec<&str> = target[1..].split('/').collect();
    for (i, c) in components.iter().enumerate() {
        at.push(c);
        let last = i + 1 == components.len();
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                made.remove();
                return Err(Failure::new(
                    Kind::TargetNotAllowed,
                    format!(
                        "mount target {target:?} is not allowed: {} is a symlink",
                        guest_path(root, &at)
                    ),
                ));
            }
            Ok(m) => {
                let ok = if last {
                    (shape == Shape::Dir) == m.is_dir()
                } else {
                    m.is_dir()
                };
                if !ok {
                    made.remove();
                    let want = if last && shape == Shape::File {
                        "a file"
                    } else {
                        "a directory"
                    };
                    return Err(Failure::new(
                        Kind::TargetNotAllowed,
                        format!(
                            "mount target {target:?} is not allowed: {} is not {want}",
                            guest_path(root, &at)
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let r = if last && shape == Shape::File {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&at)
                        .map(drop)
                } else {
                    std::fs::DirBuilder::new().mode(0o755).create(&at)
                };
                if let Err(e) = r {
                    made.remove();
                    return Err(io_failure(target, &guest_path(root, &at), e));
                }
                made.paths.push(at.clone());
            }
            Err(e) => {
                made.remove();
                return Err(io_failure(target, &guest_path(root, &at), e));
            }
        }
    }
    Ok((at, made))
}

fn io_failure(target: &str, at: &str, e: io::Error) -> Failure {
    let f = Failure::new(
        Kind::MountFailed,
        format!("could not prepare mount target {target:?}: {at}: {e}"),
    );
    match e.raw_os_error() {
        Some(n) => f.errno(nix::errno::Errno::from_raw(n)),
        None => f,
    }
}

/// `at` as the guest names it (without the test root).
fn guest_path(root: &Path, at: &Path) -> String {
    match at.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => at.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_what_lies_outside_or_is_not_normal() {
        for bad in [
            "mnt/x",
            "/",
            "/mnt",
            "/mnt/",
            "/mnt/x/",
            "/mnt//x",
            "/mnt/./x",
            "/mnt/../etc",
            "/etc/x",
            "/mntx/y",
            "/run/uvm",
            "/run/uvm/mounts",
            "/run/uvm/shares/x",
            "/mnt/a\0b",
        ] {
            let f = check(bad).unwrap_err();
            assert_eq!(f.kind, Kind::TargetNotAllowed, "{bad:?}");
            assert!(f.message.contains("not allowed"), "{}", f.message);
        }
        for good in [
            "/mnt/x",
            "/mnt/a/b/c",
            "/run/uvm/mounts/rootfs",
            "/mnt/.hidden",
        ] {
            check(good).unwrap();
        }
    }

    #[test]
    fn prepare_makes_missing_dirs_and_removes_only_them() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("mnt")).unwrap();
        let (at, made) = prepare(root.path(), "/mnt/a/b", Shape::Dir).unwrap();
        assert!(at.is_dir());
        assert_eq!(made.paths.len(), 2);
        made.remove();
        assert!(!root.path().join("mnt/a").exists());
        assert!(root.path().join("mnt").is_dir());
    }

    #[test]
    fn prepare_makes_an_empty_file_for_a_file_share() {
        let root = tempfile::tempdir().unwrap();
        let (at, made) = prepare(root.path(), "/mnt/etc/hosts", Shape::File).unwrap();
        assert!(at.is_file());
        assert_eq!(made.paths.len(), 3);
        made.remove();
        assert!(!root.path().join("mnt").exists());
    }

    #[test]
    fn prepare_refuses_symlinks_and_wrong_shapes() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("mnt/real")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("mnt/link")).unwrap();
        let f = prepare(root.path(), "/mnt/link/x", Shape::Dir).unwrap_err();
        assert_eq!(f.kind, Kind::TargetNotAllowed);
        assert!(
            f.message.contains("/mnt/link is a symlink"),
            "{}",
            f.message
        );
        assert!(!root.path().join("etc").exists());
        std::fs::write(root.path().join("mnt/file"), b"").unwrap();
        let f = prepare(root.path(), "/mnt/file", Shape::Dir).unwrap_err();
        assert!(f.message.contains("is not a directory"), "{}", f.message);
        let f = prepare(root.path(), "/mnt/real", Shape::File).unwrap_err();
        assert!(f.message.contains("is not a file"), "{}", f.message);
        // A failure part-way removes what was made before it.
        std::os::unix::fs::symlink("/etc", root.path().join("mnt/real/l")).unwrap();
        assert!(prepare(root.path(), "/mnt/real/l/x", Shape::Dir).is_err());
        let (_, made) = prepare(root.path(), "/mnt/new/deeper", Shape::Dir).unwrap();
        made.remove();
        assert!(!root.path().join("mnt/new").exists());
    }
}
