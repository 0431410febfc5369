//! Guest images for uvm: the kernel, the initramfs and their cache.
//!
//! - Kernels ([`KernelKind`]): the tuned vmlinux built from `guest/kernel/`
//!   ([`build_tuned_kernel`]), the distro kernel from `/boot`
//!   ([`stock_kernel`]), or a file.
//! - Initramfs ([`InitramfsSpec`], [`build_initramfs`]): a deterministic newc
//!   cpio ([`cpio`]) with the agent as `/init`, busybox, and for stock kernels
//!   the virtio modules plus `/lib/modules/uvm-load-order` (see [`modules`]
//!   for that contract with the agent).
//! - [`ensure_image`] / [`raw_baseline_image`] put it together into an
//!   [`Image`], building only what is not cached under [`cache_dir`].
//! - Container images ([`oci`]): [`unpack_archive`] verifies an OCI layout or
//!   `docker save` tar and unpacks its layers into a [`LayerCache`];
//!   [`write_busybox_archive`] writes a small deterministic test image.
#![warn(missing_docs)]

pub mod cpio;
mod default_image;
mod error;
mod host;
mod image;
mod initramfs;
mod kernel;
pub mod modules;
pub mod oci;
mod prune;

use std::path::{Path, PathBuf};

pub use default_image::{
    load_default_image, record_default_image, DefaultImage, DEFAULT_IMAGE_RECORD,
};
pub use error::{Error, Result};
pub use host::{locate_agent, locate_busybox};
pub use image::{compile_rawinit, ensure_image, raw_baseline_image, Image, RAWINIT_SOURCE};
pub use initramfs::{build_initramfs, ensure_initramfs, InitramfsSpec, BASE_DIRS};
pub use kernel::{
    build_tuned_kernel, kernel_format, stock_kernel, tuned_kernel_location, tuned_kernel_path,
    KernelFormat, KernelKind, MachineHint, BUILD_SCRIPT, CONFIG_FRAGMENT, DEFAULT_KERNEL_SOURCE,
    STOCK_CMDLINE, TUNED_CMDLINE,
};
pub use modules::{KernelModules, ResolvedModule};
pub use oci::{
    unpack_archive, write_busybox_archive, ArchiveFormat, LayerCache, OciError, UnpackedImage,
};

/// The cache root: `$UVM_CACHE_DIR`, else `$XDG_CACHE_HOME/uvm`, else
/// `$HOME/.cache/uvm` (`/tmp/uvm-cache` when even `HOME` is unset).
pub fn cache_dir() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    cache_dir_from(var("UVM_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
}

fn cache_dir_from(uvm: Option<PathBuf>, xdg: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    uvm.or_else(|| xdg.map(|x| x.join("uvm")))
        .or_else(|| home.map(|h| h.join(".cache").join("uvm")))
        .unwrap_or_else(|| PathBuf::from("/tmp/uvm-cache"))
}

/// First 16 hex characters of a digest: the cache key format.
pub(crate) fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to a temporary file next to `path`, then renames it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("create a file in", dir, e))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .map_err(|e| Error::io("write", tmp.path().to_owned(), e))?;
    // Cache files are plain data, readable by whoever runs QEMU.
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file()
        .set_permissions(perms)
        .map_err(|e| Error::io("chmod", tmp.path().to_owned(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("rename into", path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_rule() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            cache_dir_from(p("/c"), p("/x"), p("/h")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, p("/x"), p("/h")),
            PathBuf::from("/x/uvm")
        );
        assert_eq!(
            cache_dir_from(None, None, p("/h")),
            PathBuf::from("/h/.cache/uvm")
        );
    }

    #[test]
    fn short_hex_is_16_chars() {
        assert_eq!(short_hex(&[0xab; 32]), "abababababababab");
    }
}
