//! The outer archive: an index of its members' offsets, read by position.
//!
//! The archive is opened once and its tar headers are walked by seeking; a
//! member is then read in place with `pread`, so layers stream from the file
//! and are never held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::OciError;

/// The largest JSON member (index, manifest, config) read into memory.
pub(crate) const JSON_LIMIT: u64 = 16 << 20;

/// Symlinks between members followed at most this many times.
const MAX_HOPS: usize = 8;

/// Where one member's bytes are.
#[derive(Debug, Clone)]
enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// A symlink (target relative to the member's directory) or a hard link
    /// (target relative to the archive root).
    Link {
        target: String,
        hard: bool,
    },
}

/// An opened outer archive.
pub(crate) struct OuterArchive {
    path: PathBuf,
    file: File,
    members: HashMap<String, Member>,
}

impl OuterArchive {
    /// Opens `path` and indexes its members.
    pub(crate) fn open(path: &Path) -> Result<Self, OciError> {
        let err = |source| OciError::Archive {
            archive: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let mut members = HashMap::new();
        {
            let mut ar = tar::Archive::new(&file);
            for entry in ar.entries_with_seek().map_err(err)? {
                let entry = entry.map_err(err)?;
                let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
                let kind = entry.header().entry_type();
                let member = if kind.is_file() {
                    Member::Data {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    }
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    Member::Link {
                        target: String::from_utf8_lossy(&target).into_owned(),
                        hard: kind.is_hard_link(),
                    }
                } else {
                    continue;
                };
                members.insert(name, member);
            }
        }
        Ok(OuterArchive {
            path: path.to_owned(),
            file,
            members,
        })
    }

    /// The archive's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a member (file, or a link to one) named `name` exists.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    /// Offset and size of `name`, following links between members.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(name);
        for _ in 0..MAX_HOPS {
            match self.members.get(&name)? {
                Member::Data { offset, size } => return Some((*offset, *size)),
                Member::Link { target, hard: true } => name = normalize(target),
                Member::Link {
                    target,
                    hard: false,
                } => {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    name = normalize(&format!("{dir}/{target}"));
                }
            }
        }
        None
    }

    /// A reader over member `name`, or `None` when the archive lacks it.
    pub(crate) fn open_member(&self, name: &str) -> Option<MemberReader<'_>> {
        let (offset, size) = self.locate(name)?;
        Some(MemberReader {
            file: &self.file,
            pos: offset,
            end: offset + size,
        })
    }

    /// Reads a small (JSON) member whole; `what` names it in errors.
    pub(crate) fn read_small(&self, name: &str, what: &'static str) -> Result<Vec<u8>, OciError> {
        let mut r = self
            .open_member(name)
            .ok_or_else(|| OciError::MissingBlob {
                archive: self.path.clone(),
                what,
                name: name.to_owned(),
            })?;
        let size = r.end - r.pos;
        if size > JSON_LIMIT {
            return Err(OciError::TooLarge {
                archive: self.path.clone(),
                member: name.to_owned(),
                what,
                size,
                limit: JSON_LIMIT,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.read_to_end(&mut buf)
            .map_err(|source| OciError::Archive {
                archive: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// The first `n` bytes of member `name` (fewer if it is shorter).
    pub(crate) fn peek(&self, name: &str, n: usize) -> Result<Vec<u8>, OciError> {
        let mut buf = Vec::new();
        if let Some(r) = self.open_member(name) {
            r.take(n as u64)
                .read_to_end(&mut buf)
                .map_err(|source| OciError::Archive {
                    archive: self.path.clone(),
                    source,
                })?;
        }
        Ok(buf)
    }
}

/// Drops `./` and empty components: `./blobs//sha256/x` → `blobs/sha256/x`;
/// `..` pops a component (member names are only looked up, never written).
pub(crate) fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Reads one member of the archive by position.
pub(crate) struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Hashes everything read through it with sha256.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left (so the digest covers the whole stream).
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// `sha256:<hex>` of everything read so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 hex>` digest, or `None` for anything else.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(hex)
}
