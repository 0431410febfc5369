//! Safe extraction of one layer's tar stream into its `rootfs/` directory.
//!
//! Entry paths are split into components; absolute paths and `..` are
//! refused, and before anything is created every existing parent inside the
//! layer is checked with `symlink_metadata`: an entry through a symlink is
//! refused, so nothing is ever written outside the layer and no symlink is
//! ever followed on the host. Symlinks are written as they are (their targets
//! resolve in the guest, inside the container's rootfs).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::error::OciError;
use super::sys::{self, NodeKind};
use super::whiteout::{self, Special};

/// The layer being built, for paths and messages.
pub(crate) struct Layer<'a> {
    /// The archive, for messages.
    pub archive: &'a Path,
    /// The layer's digest (or archive path), for messages.
    pub name: &'a str,
    /// The `rootfs/` directory being filled.
    pub root: &'a Path,
    /// The `rootfs/` directories of the layers below, bottom first.
    pub lowers: &'a [PathBuf],
}

/// Ownership, mode and mtime of an entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl Layer<'_> {
    pub(crate) fn read_err(&self, source: io::Error) -> OciError {
        OciError::LayerRead {
            archive: self.archive.to_owned(),
            layer: self.name.to_owned(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> OciError {
        OciError::UnsafeEntry {
            archive: self.archive.to_owned(),
            layer: self.name.to_owned(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn fs_err<'p>(
        &'p self,
        entry: &'p str,
        action: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(io::Error) -> OciError + 'p {
        move |source| OciError::Extract {
            archive: self.archive.to_owned(),
            layer: self.name.to_owned(),
            entry: entry.to_owned(),
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The host path of `comps` inside the layer.
    pub(crate) fn host(&self, comps: &[&[u8]]) -> PathBuf {
        let mut p = self.root.to_owned();
        p.extend(comps.iter().map(|c| OsStr::from_bytes(c)));
        p
    }

    /// Checks that each of `comps` is a real directory in the layer (not a
    /// symlink), creating missing ones (mode 0755) when `create`.
    pub(crate) fn walk_dirs(
        &self,
        entry: &str,
        comps: &[&[u8]],
        create: bool,
    ) -> Result<(), OciError> {
        for i in 1..=comps.len() {
            let p = self.host(&comps[..i]);
            let shown = || String::from_utf8_lossy(&comps[..i].join(&b'/')).into_owned();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(
                        self.unsafe_entry(entry, format!("it goes through symlink {}", shown()))
                    )
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.unsafe_entry(entry, format!("{} is not a directory", shown())))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&p).map_err(self.fs_err(entry, "create directory", &p))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                        .map_err(self.fs_err(entry, "chmod", &p))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(
                        self.unsafe_entry(entry, format!("{} is not in this layer", shown()))
                    )
                }
                Err(e) => return Err(self.fs_err(entry, "inspect", &p)(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `p` (a directory recursively; a symlink itself).
    /// With `keep_dir`, an existing directory stays and `true` is returned.
    pub(crate) fn clear(&self, entry: &str, p: &Path, keep_dir: bool) -> Result<bool, OciError> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(m) if m.is_dir() => fs::remove_dir_all(p)
                .map(|()| false)
                .map_err(self.fs_err(entry, "remove", p)),
            Ok(_) => fs::remove_file(p)
                .map(|()| false)
                .map_err(self.fs_err(entry, "remove", p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.fs_err(entry, "inspect", p)(e)),
        }
    }

    fn apply(&self, entry: &str, p: &Path, meta: Meta, chmod: bool) -> Result<(), OciError> {
        // chown first: it clears setuid/setgid bits that chmod then sets.
        std::os::unix::fs::lchown(p, Some(meta.uid), Some(meta.gid))
            .map_err(self.fs_err(entry, "chown", p))?;
        if chmod {
            fs::set_permissions(p, fs::Permissions::from_mode(meta.mode))
                .map_err(self.fs_err(entry, "chmod", p))?;
        }
        sys::set_mtime_nofollow(p, meta.mtime).map_err(self.fs_err(entry, "set the mtime of", p))
    }
}

/// Splits an entry path into components; `Err` is why it is refused.
pub(crate) fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("it has an absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("it has a `..` component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Unpacks every entry of `ar` into `layer.root`.
pub(crate) fn extract<R: Read>(layer: &Layer, ar: &mut tar::Archive<R>) -> Result<(), OciError> {
    let mut dirs: Vec<(PathBuf, String, Meta)> = Vec::new();
    let mut opaque: Vec<(Vec<Vec<u8>>, String)> = Vec::new();
    for entry in ar.entries().map_err(|e| layer.read_err(e))? {
        let mut entry = entry.map_err(|e| layer.read_err(e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw).map_err(|r| layer.unsafe_entry(&shown, r))?;
        let h = entry.header();
        let kind = h.entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let meta = meta(h).map_err(|e| layer.read_err(e))?;
        let Some((name, parents)) = comps.split_last() else {
            if kind.is_dir() {
                dirs.push((layer.root.to_owned(), shown, meta));
                continue;
            }
            return Err(
                layer.unsafe_entry(&shown, "it names the layer root but is not a directory")
            );
        };
        match whiteout::classify(name).map_err(|r| layer.unsafe_entry(&shown, r))? {
            Special::Opaque => {
                layer.walk_dirs(&shown, parents, true)?;
                opaque.push((parents.iter().map(|c| c.to_vec()).collect(), shown));
                continue;
            }
            Special::Whiteout(target) => {
                layer.walk_dirs(&shown, parents, true)?;
                let mut c = parents.to_vec();
                c.push(target);
                let p = layer.host(&c);
                layer.clear(&shown, &p, false)?;
                sys::whiteout(&p).map_err(layer.fs_err(&shown, "create whiteout", &p))?;
                continue;
            }
            Special::AufsMeta => continue,
            Special::None => {}
        }
        layer.walk_dirs(&shown, parents, true)?;
        let p = layer.host(&comps);
        match kind {
            EntryType::Directory => {
                if !layer.clear(&shown, &p, true)? {
                    fs::create_dir(&p).map_err(layer.fs_err(&shown, "create directory", &p))?;
                }
                dirs.push((p, shown, meta));
            }
            EntryType::Regular | EntryType::Continuous => {
                layer.clear(&shown, &p, false)?;
                write_file(layer, &shown, &p, &mut entry)?;
                layer.apply(&shown, &p, meta, true)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                layer.clear(&shown, &p, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &p)
                    .map_err(layer.fs_err(&shown, "create symlink", &p))?;
                layer.apply(&shown, &p, meta, false)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                hard_link(layer, &shown, &comps, &target, &p)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let node = match kind {
                    EntryType::Char => NodeKind::Char,
                    EntryType::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let (major, minor) = match node {
                    NodeKind::Fifo => (0, 0),
                    _ => (
                        h.device_major()
                            .map_err(|e| layer.read_err(e))?
                            .unwrap_or(0),
                        h.device_minor()
                            .map_err(|e| layer.read_err(e))?
                            .unwrap_or(0),
                    ),
                };
                layer.clear(&shown, &p, false)?;
                sys::mknod(&p, node, 0o600, major, minor).map_err(layer.fs_err(
                    &shown,
                    "create device node",
                    &p,
                ))?;
                layer.apply(&shown, &p, meta, true)?;
            }
            other => {
                return Err(OciError::UnsupportedEntry {
                    archive: layer.archive.to_owned(),
                    layer: layer.name.to_owned(),
                    entry: shown,
                    kind: format!("{other:?}"),
                })
            }
        }
    }
    for (dir, entry) in &opaque {
        whiteout::convert_opaque(layer, entry, dir)?;
    }
    // Last, deepest first: creating children changes a directory's mtime.
    for (p, entry, meta) in dirs.iter().rev() {
        if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            layer.apply(entry, p, *meta, true)?;
        }
    }
    Ok(())
}

fn meta(h: &tar::Header) -> io::Result<Meta> {
    let id = |v: u64| {
        u32::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid/gid out of range"))
    };
    Ok(Meta {
        mode: h.mode()? & 0o7777,
        uid: id(h.uid()?)?,
        gid: id(h.gid()?)?,
        mtime: h.mtime()?,
    })
}

/// Creates `p` (which must not exist) and copies the entry's data into it.
fn write_file<R: Read>(layer: &Layer, entry: &str, p: &Path, data: &mut R) -> Result<(), OciError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(layer.fs_err(entry, "create", p))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = data.read(&mut buf).map_err(|e| layer.read_err(e))?;
        if n == 0 {
            return Ok(());
        }
        f.write_all(&buf[..n])
            .map_err(layer.fs_err(entry, "write", p))?;
    }
}

/// A hard link to an entry already unpacked in this layer.
fn hard_link(
    layer: &Layer,
    entry: &str,
    comps: &[&[u8]],
    target: &[u8],
    p: &Path,
) -> Result<(), OciError> {
    let tc = components(target)
        .map_err(|r| layer.unsafe_entry(entry, format!("its hard link target: {r}")))?;
    let Some((_, parents)) = tc.split_last() else {
        return Err(layer.unsafe_entry(entry, "its hard link target is the layer root"));
    };
    if tc == comps {
        return Err(layer.unsafe_entry(entry, "it is a hard link to itself"));
    }
    layer.walk_dirs(entry, parents, false)?;
    let t = layer.host(&tc);
    match fs::symlink_metadata(&t) {
        Ok(m) if !m.is_dir() => {}
        _ => {
            let shown = String::from_utf8_lossy(target);
            return Err(layer.unsafe_entry(
                entry,
                format!("its hard link target {shown} is not a file already in this layer"),
            ));
        }
    }
    layer.clear(entry, p, false)?;
    // linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is linked itself.
    fs::hard_link(&t, p).map_err(layer.fs_err(entry, "create hard link", p))
}
