//! Finding the binaries that go into the guest: the agent and busybox.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const AGENT_FIX: &str = "build it with `make agent` (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile agent -p uvm-gcs --target x86_64-unknown-linux-gnu)";
const BUSYBOX_FIX: &str = "apt-get install busybox-static";
const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Finds the guest agent `uvm-gcs`: `$UVM_AGENT` if set, else `uvm-gcs` next
/// to the current executable (or its parent directory, for test binaries in
/// `target/*/deps`), else `<workspace>/target/x86_64-unknown-linux-gnu/{agent,release,debug}/uvm-gcs`
/// (also under `$CARGO_TARGET_DIR`). The binary must be a static ELF.
pub fn locate_agent() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("UVM_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::AgentNotFound { tried: vec![p] });
        }
        check_static(&p, AGENT_FIX)?;
        return Ok(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            tried.push(dir.join("uvm-gcs"));
        }
    }
    let mut roots = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(t));
    }
    roots.push(workspace_root().join("target"));
    for root in roots {
        for profile in ["agent", "release", "debug"] {
            tried.push(root.join(TARGET_TRIPLE).join(profile).join("uvm-gcs"));
        }
    }
    for p in &tried {
        // A dynamic uvm-gcs next to the executable (plain `cargo build`) is
        // skipped in favour of a static one further down the list.
        if p.is_file() && check_static(p, AGENT_FIX).is_ok() {
            tracing::debug!(path = %p.display(), "found guest agent");
            return Ok(p.clone());
        }
    }
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        check_static(p, AGENT_FIX)?;
    }
    Err(Error::AgentNotFound { tried })
}

/// Finds a static busybox: `/bin/busybox` or `/usr/bin/busybox`.
pub fn locate_busybox() -> Result<PathBuf> {
    let tried: Vec<PathBuf> = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => {
            check_static(p, BUSYBOX_FIX)?;
            Ok(p.clone())
        }
        None => Err(Error::BusyboxNotFound { tried }),
    }
}

/// The workspace root, derived from this crate's manifest dir at compile time.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap_or(manifest).to_owned()
}

/// Fails unless `path` is an ELF executable without a `PT_INTERP` segment.
pub(crate) fn check_static(path: &Path, fix: &'static str) -> Result<()> {
    let mut head = vec![0u8; 64 * 1024];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(|e| Error::io("read", path, e))?
        {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    let not_static = |reason| Error::NotStatic {
        path: path.to_owned(),
        reason,
        fix,
    };
    match elf_interp(&head) {
        Err(reason) => Err(not_static(reason)),
        Ok(true) => Err(not_static("dynamically linked: it has a PT_INTERP segment")),
        Ok(false) => Ok(()),
    }
}

/// Whether a 64-bit little-endian ELF image has a `PT_INTERP` program header.
fn elf_interp(b: &[u8]) -> std::result::Result<bool, &'static str> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF");
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    if phentsize < 4 || phoff.saturating_add(phentsize * phnum) > b.len() {
        return Err("program headers out of range");
    }
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) == PT_INTERP
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(phdr_types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * phdr_types.len()];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(phdr_types.len() as u16).to_le_bytes());
        for (i, t) in phdr_types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn detects_interp() {
        assert_eq!(elf_interp(&elf(&[1, 1, 4])), Ok(false));
        assert_eq!(elf_interp(&elf(&[6, 3, 1])), Ok(true));
        assert_eq!(elf_interp(b"#!/bin/sh\n"), Err("not an ELF file"));
    }

    #[test]
    fn dynamic_binary_error_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uvm-gcs");
        std::fs::write(&p, elf(&[6, 3, 1])).unwrap();
        let err = check_static(&p, AGENT_FIX).unwrap_err().to_string();
        assert!(
            err.contains("dynamically linked") && err.contains("crt-static"),
            "{err}"
        );
    }

    #[test]
    fn host_busybox_is_static_when_present() {
        // /bin/sh on any distro is dynamic: the check must say so.
        assert!(check_static(Path::new("/bin/sh"), BUSYBOX_FIX).is_err());
        if let Ok(p) = locate_busybox() {
            check_static(&p, BUSYBOX_FIX).unwrap();
        }
    }

    #[test]
    fn agent_not_found_lists_paths_and_fix() {
        let err = Error::AgentNotFound {
            tried: vec!["/a/uvm-gcs".into(), "/b/uvm-gcs".into()],
        }
        .to_string();
        assert!(
            err.contains("/a/uvm-gcs, /b/uvm-gcs")
                && err.contains("cargo build --profile agent -p uvm-gcs"),
            "{err}"
        );
    }
}
