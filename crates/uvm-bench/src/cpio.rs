//! A minimal newc cpio writer for the baseline initramfs images.
//!
//! `uvm-image` owns the production initramfs; this writer only builds the
//! qemu-guest-agent peer image, so it stays tiny: directories, regular files
//! and symlinks, all owned by root, uncompressed.

use std::io::{self, Write};

/// Writes a newc ("070701") archive entry by entry; call [`CpioWriter::finish`] at the end.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, ino: 1, written: 0 }
    }

    /// Adds a directory (`mode` = permission bits).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, 0o040000 | mode, 2, &[])
    }

    /// Adds a regular file (`mode` = permission bits).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100000 | mode, 1, data)
    }

    /// Adds a symlink `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o120777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, 0)?;
        self.pad(4)?;
        self.pad(512)?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let ino = self.ino;
        self.ino += 1;
        self.header(name, mode, nlink, data.len(), ino)?;
        self.write(data)?;
        self.pad(4)
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: usize, ino: u32) -> io::Result<()> {
        let namesize = name.len() + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size as u32, 0, 0, 0, 0, namesize as u32, 0];
        let mut h = String::from("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad(4)
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, to: u64) -> io::Result<()> {
        let n = (to - self.written % to) % to;
        self.write(&vec![0; n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 512, 0);
        // first name directly after the 110-byte header
        assert_eq!(&out[110..114], b"bin\0");
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("init\0"));
        assert!(s.contains("#!/bin/sh\n"));
        assert!(s.contains("TRAILER!!!\0"));
        // mode of the symlink entry
        assert!(s.contains(&format!("{:08x}", 0o120777)));
    }
}
