//! Deterministic newc ("070701") cpio writer for initramfs images.
//!
//! The header encoding is done by the [`cpio`](https://docs.rs/cpio) crate,
//! which lets us set every header field ourselves: entries are written sorted
//! by path (so parents precede children), with mtime 0, uid/gid 0 and inode
//! numbers assigned from that order. The same entries therefore always give
//! the same bytes, whatever the order in which they were added.

use std::collections::BTreeMap;
use std::io::Write;

use crate::error::{Error, Result};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One entry of an [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with permission bits `mode`.
    Dir {
        /// Permission bits (e.g. `0o755`).
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits (e.g. `0o755`).
        mode: u32,
        /// Its contents.
        data: Vec<u8>,
    },
    /// A symbolic link pointing at `target`.
    Symlink {
        /// The link target, written verbatim.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Permission bits (e.g. `0o600`).
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// An in-memory set of entries, serialized deterministically by [`Archive::to_bytes`].
///
/// Paths are guest paths: absolute or relative, with or without the leading
/// `/` (stored without it). Adding an entry creates its missing parent
/// directories (mode 0755). Adding a path twice replaces the earlier entry.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        self.insert(path, Node::Dir { mode })
    }

    /// Adds a regular file with contents `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<&mut Self> {
        self.insert(path, Node::File { mode, data })
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<&mut Self> {
        self.insert(path, Node::CharDev { mode, major, minor })
    }

    /// Whether an entry exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(&normalize(path).ok()?)
    }

    /// Number of entries (implicit parent directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<&mut Self> {
        let path = normalize(path)?;
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_owned())
                .or_insert(Node::Dir { mode: 0o755 });
            parent = p;
        }
        self.entries.insert(path, node);
        Ok(self)
    }

    /// Serializes the archive (entries sorted by path, then the trailer).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the archive to `w`; see [`Archive::to_bytes`].
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<()> {
        let io = |e| Error::io("write", "<initramfs archive>", e);
        for (index, (path, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).expect("fewer than 4 billion entries");
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, &[], (*major, *minor)),
            };
            let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
                path: path.clone(),
                len: data.len(),
            })?;
            let mut entry = cpio::newc::Builder::new(path)
                .ino(ino)
                .mode(mode)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(0)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1)
                .write(&mut w, size);
            entry.write_all(data).map_err(io)?;
            entry.finish().map_err(io)?;
        }
        cpio::newc::trailer(&mut w).map_err(io)?;
        Ok(())
    }
}

/// Strips leading `/`, rejects empty, `.`/`..` components and NULs.
fn normalize(path: &str) -> Result<String> {
    let bad = |reason| Error::InvalidGuestPath {
        path: path.to_owned(),
        reason,
    };
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() {
        return Err(bad("empty"));
    }
    if p.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("empty, '.' or '..' component"));
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    type Op = Box<dyn Fn(&mut Archive)>;
    /// name, ino, mode, mtime, (rdev major, minor), data
    type Parsed = (String, u32, u32, u32, (u32, u32), Vec<u8>);

    fn sample(reverse: bool) -> Archive {
        let mut a = Archive::new();
        let mut ops: Vec<Op> = vec![
            Box::new(|a| drop(a.file("/init", 0o755, b"#!/bin/sh\n".to_vec()))),
            Box::new(|a| drop(a.symlink("/bin/sh", "busybox"))),
            Box::new(|a| drop(a.file("/bin/busybox", 0o755, vec![7; 1001]))),
            Box::new(|a| drop(a.char_dev("/dev/console", 0o600, 5, 1))),
            Box::new(|a| drop(a.dir("/proc", 0o555))),
        ];
        if reverse {
            ops.reverse();
        }
        for op in ops {
            op(&mut a);
        }
        a
    }

    /// Parses an archive back with the `cpio` crate's reader.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut r: &[u8] = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(r).unwrap();
            let e = reader.entry().clone();
            if e.is_trailer() {
                break;
            }
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            let (name, ino, mode, mtime) = (e.name().to_owned(), e.ino(), e.mode(), e.mtime());
            out.push((
                name,
                ino,
                mode,
                mtime,
                (e.rdev_major(), e.rdev_minor()),
                data,
            ));
            r = reader.finish().unwrap();
        }
        out
    }

    #[test]
    fn same_entries_give_same_bytes() {
        let a = sample(false).to_bytes().unwrap();
        let b = sample(true).to_bytes().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, sample(false).to_bytes().unwrap());
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn structure_parses_back() {
        let entries = parse(&sample(false).to_bytes().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "proc"
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.1, i as u32 + 1, "inode of {}", e.0);
            assert_eq!(e.3, 0, "mtime of {}", e.0);
        }
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("bin").2, S_IFDIR | 0o755);
        assert_eq!(get("proc").2, S_IFDIR | 0o555);
        assert_eq!(get("init").2, S_IFREG | 0o755);
        assert_eq!(get("init").5, b"#!/bin/sh\n");
        assert_eq!(get("bin/busybox").5, vec![7; 1001]);
        assert_eq!(get("bin/sh").2, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").5, b"busybox");
        assert_eq!(get("dev/console").2, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").4, (5, 1));
    }

    #[test]
    fn rejects_bad_paths() {
        let mut a = Archive::new();
        for p in ["", "/", "a/../b", "a//b", "./a", "a\0b"] {
            let err = a.dir(p, 0o755).unwrap_err();
            assert!(
                matches!(err, Error::InvalidGuestPath { .. }),
                "{p:?}: {err}"
            );
        }
        assert!(a.is_empty());
    }

    #[test]
    fn replaces_and_creates_parents() {
        let mut a = Archive::new();
        a.file("/a/b/c", 0o644, vec![1]).unwrap();
        a.file("a/b/c/", 0o600, vec![2]).unwrap();
        assert!(a.contains("/a") && a.contains("a/b"));
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.get("/a/b/c"),
            Some(&Node::File {
                mode: 0o600,
                data: vec![2]
            })
        );
    }
}
