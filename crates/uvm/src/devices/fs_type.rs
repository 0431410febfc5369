//! Telling a raw disk image's file system from its superblock magic.

use std::io::Read;
use std::path::Path;

/// (offset, magic, file system), checked in order.
const MAGICS: &[(usize, &[u8], &str)] = &[
    (0, b"hsqs", "squashfs"),
    (1024, &[0xe2, 0xe1, 0xf5, 0xe0], "erofs"),
    (0x438, &[0x53, 0xef], "ext4"),
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (82, b"FAT32   ", "vfat"),
    (54, b"FAT16   ", "vfat"),
    (54, b"FAT12   ", "vfat"),
];

/// The file system of a raw image (`ext4` for ext2/3/4, which the ext4
/// driver mounts), or `None` when no known superblock is there (an empty,
/// garbage or non-raw image).
pub fn detect_fs_type(path: &Path) -> std::io::Result<Option<&'static str>> {
    let mut head = Vec::with_capacity(0x10048);
    std::fs::File::open(path)?
        .take(0x10048)
        .read_to_end(&mut head)?;
    Ok(MAGICS
        .iter()
        .find(|(off, magic, _)| head.get(*off..off + magic.len()) == Some(magic))
        .map(|(_, _, fs)| *fs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(at: usize, magic: &[u8]) -> tempfile::NamedTempFile {
        let mut b = vec![0u8; 0x20000];
        b[at..at + magic.len()].copy_from_slice(magic);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b).unwrap();
        f
    }

    #[test]
    fn superblocks_are_recognized() {
        for (off, magic, fs) in MAGICS {
            assert_eq!(
                detect_fs_type(image(*off, magic).path()).unwrap(),
                Some(*fs)
            );
        }
        assert_eq!(detect_fs_type(image(0, b"garbage!").path()).unwrap(), None);
        let short = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(detect_fs_type(short.path()).unwrap(), None);
    }
}
