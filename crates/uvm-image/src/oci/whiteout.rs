//! Whiteouts: `.wh.NAME` entries and opaque directories (`.wh..wh..opq`),
//! written in overlayfs format: a character device 0:0 named NAME.
//!
//! Opaque directories are converted, because overlayfs in the guest cannot
//! read the `trusted.overlay.opaque` xattr through 9p: every name that a lower
//! layer has in the directory, and that this layer does not provide there
//! itself, gets a whiteout. `user.overlay.opaque=y` is set as well where the
//! file system supports it (harmless otherwise).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;

use super::error::OciError;
use super::layer::Layer;
use super::sys;

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What an entry's last path component means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Special<'a> {
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(&'a [u8]),
    /// Other `.wh..wh.*` (aufs metadata such as `.wh..wh.plnk`): ignored.
    AufsMeta,
    /// An ordinary entry.
    None,
}

/// Classifies a path component; `Err` says why a whiteout is refused.
pub(crate) fn classify(name: &[u8]) -> Result<Special<'_>, &'static str> {
    if name == OPAQUE {
        return Ok(Special::Opaque);
    }
    if name.starts_with(b".wh..wh.") {
        return Ok(Special::AufsMeta);
    }
    let Some(target) = name.strip_prefix(PREFIX) else {
        return Ok(Special::None);
    };
    if matches!(target, b"" | b"." | b"..") || target.contains(&b'/') {
        return Err("it is a whiteout whose name escapes its directory");
    }
    Ok(Special::Whiteout(target))
}

/// Converts the opaque marker of directory `dir` (components inside the
/// layer) into whiteouts for the names the lower layers have there.
pub(crate) fn convert_opaque(layer: &Layer, entry: &str, dir: &[Vec<u8>]) -> Result<(), OciError> {
    let comps: Vec<&[u8]> = dir.iter().map(Vec::as_slice).collect();
    let upper = layer.host(&comps);
    // A later entry may have replaced the directory; then there is nothing to hide in.
    if !fs::symlink_metadata(&upper).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    for lower in layer.lowers {
        let Some(lower_dir) = real_dir(lower, &comps) else {
            continue;
        };
        let names = fs::read_dir(&lower_dir).map_err(layer.fs_err(entry, "list", &lower_dir))?;
        for name in names {
            let name = name
                .map_err(layer.fs_err(entry, "list", &lower_dir))?
                .file_name();
            let p = upper.join(&name);
            match fs::symlink_metadata(&p) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    sys::whiteout(&p).map_err(layer.fs_err(entry, "create whiteout", &p))?;
                }
                Err(e) => return Err(layer.fs_err(entry, "inspect", &p)(e)),
            }
        }
    }
    if let Err(e) = sys::lsetxattr(&upper, "user.overlay.opaque", b"y") {
        // ENOTSUP on file systems without user xattrs: the whiteouts suffice.
        tracing::debug!(path = %upper.display(), error = %e, "user.overlay.opaque not set");
    }
    Ok(())
}

/// `root/comps` when every component is a real directory (no symlink is
/// followed in a lower layer either).
fn real_dir(root: &std::path::Path, comps: &[&[u8]]) -> Option<std::path::PathBuf> {
    let mut p = root.to_owned();
    for c in comps {
        p.push(OsStr::from_bytes(c));
        if !fs::symlink_metadata(&p).ok()?.is_dir() {
            return None;
        }
    }
    Some(p)
}
