//! One layer's byte stream: member → sha256 → decompress → sha256 → tar.
//!
//! Both digests are taken while the layer is unpacked, so the blob is read
//! once; the unpacked directory only becomes a cached layer after both match.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::archive::{HashingReader, MemberReader, OuterArchive};
use super::error::OciError;
use super::layer::{self, Layer};
use super::manifest::{Compression, LayerSource};

type Raw<'a> = BufReader<HashingReader<MemberReader<'a>>>;

/// A decompressor that gives its input back, to drain and hash what is left.
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    fn new(c: Compression, r: R) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Decoder::Plain(r),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }

    fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// Unpacks layer `src` of `ar` into `root` and verifies it against its blob
/// digest (when known) and `diff_id`.
pub(crate) fn unpack_layer(
    ar: &OuterArchive,
    src: &LayerSource,
    diff_id: &str,
    root: &Path,
    lowers: &[PathBuf],
) -> Result<(), OciError> {
    let layer = Layer {
        archive: ar.path(),
        name: &src.name,
        root,
        lowers,
    };
    let member = ar
        .open_member(&src.member)
        .ok_or_else(|| OciError::MissingBlob {
            archive: ar.path().to_owned(),
            what: "layer",
            name: src.name.clone(),
        })?;
    let raw: Raw = BufReader::new(HashingReader::new(member));
    let decoder = Decoder::new(src.compression, raw).map_err(|e| layer.read_err(e))?;
    let mut tar = tar::Archive::new(HashingReader::new(decoder));
    let extracted = layer::extract(&layer, &mut tar);
    let (diff, blob) = finish(tar.into_inner());
    let mismatch = |check, expected: &str, actual: &str| OciError::DigestMismatch {
        archive: ar.path().to_owned(),
        what: format!("layer {}", src.name),
        check,
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    };
    // Corrupt content often breaks the stream before its end: a digest
    // mismatch, when there is one, is the error that explains it.
    if let (Some(expected), Ok(actual)) = (&src.blob_digest, &blob) {
        if expected != actual {
            return Err(mismatch("digest", expected, actual));
        }
    }
    const DIFF: &str = "uncompressed digest (diff ID)";
    if let Err(e) = extracted {
        return match diff {
            Ok(actual) if actual != diff_id => Err(mismatch(DIFF, diff_id, &actual)),
            _ => Err(e),
        };
    }
    blob.map_err(|e| layer.read_err(e))?;
    let actual = diff.map_err(|e| layer.read_err(e))?;
    if actual != diff_id {
        return Err(mismatch(DIFF, diff_id, &actual));
    }
    Ok(())
}

/// Reads both streams to their ends and returns the digests of the
/// uncompressed stream and of the blob. The blob's is taken even when
/// decompression fails: its hasher sits below the decompressor's buffer.
fn finish(mut plain: HashingReader<Decoder<Raw<'_>>>) -> (io::Result<String>, io::Result<String>) {
    let diff = plain.drain().map(|()| plain.digest());
    let mut raw = plain.into_inner().into_inner();
    let blob = io::copy(&mut raw, &mut io::sink()).and_then(|_| {
        let mut hashing = raw.into_inner();
        hashing.drain()?;
        Ok(hashing.digest())
    });
    (diff, blob)
}
