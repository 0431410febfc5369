//! The record of the last image `uvmctl image build` made, so that programs
//! that must not build one themselves (the containerd shim) boot the same
//! kernel and initramfs: `<cache>/default-image.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::Image;

/// File name of the record under [`crate::cache_dir`].
pub const DEFAULT_IMAGE_RECORD: &str = "default-image.json";

/// The boot files of the default image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultImage {
    /// Kernel file.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Base kernel command line.
    pub cmdline: String,
}

impl From<&Image> for DefaultImage {
    fn from(i: &Image) -> Self {
        Self {
            kernel: i.kernel.clone(),
            initrd: i.initrd.clone(),
            cmdline: i.cmdline.clone(),
        }
    }
}

/// Writes `image` as the default image record in `cache` (atomically).
pub fn record_default_image(cache: &Path, image: &Image) -> Result<PathBuf> {
    let path = cache.join(DEFAULT_IMAGE_RECORD);
    let json = serde_json::to_vec_pretty(&DefaultImage::from(image))
        .map_err(|e| Error::io("encode", &path, std::io::Error::other(e)))?;
    std::fs::create_dir_all(cache).map_err(|e| Error::io("create directory", cache, e))?;
    let tmp = cache.join(format!(".{DEFAULT_IMAGE_RECORD}.{}", std::process::id()));
    std::fs::write(&tmp, json).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
    Ok(path)
}

/// Reads the default image record in `cache`; its files must still exist.
pub fn load_default_image(cache: &Path) -> Result<DefaultImage> {
    let path = cache.join(DEFAULT_IMAGE_RECORD);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoDefaultImage { path })
        }
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let image: DefaultImage = serde_json::from_slice(&bytes)
        .map_err(|e| Error::io("parse", &path, std::io::Error::other(e)))?;
    for f in [&image.kernel, &image.initrd] {
        if !f.is_file() {
            return Err(Error::DefaultImageStale {
                record: path,
                missing: f.clone(),
            });
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KernelKind, MachineHint};

    #[test]
    fn round_trip_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_default_image(dir.path()).unwrap_err();
        assert!(err.to_string().contains("uvmctl image build"), "{err}");
        let kernel = dir.path().join("vmlinux");
        let initrd = dir.path().join("initrd");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        let image = Image {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: "console=hvc0".into(),
            kind: KernelKind::Tuned,
            machine: MachineHint::Microvm,
            release: None,
        };
        record_default_image(dir.path(), &image).unwrap();
        let got = load_default_image(dir.path()).unwrap();
        assert_eq!(got, DefaultImage::from(&image));
        std::fs::remove_file(&initrd).unwrap();
        let err = load_default_image(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("initrd") && err.contains("uvmctl image build"),
            "{err}"
        );
    }
}
