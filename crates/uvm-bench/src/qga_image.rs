//! Builds the qemu-guest-agent peer initramfs: the host's `qemu-ga` with its
//! shared libraries and loader (from `ldd`), static busybox, and an `/init`
//! that mounts proc/sys/devtmpfs, finds the agent's virtio-serial port by
//! name and execs `qemu-ga` on it.

use crate::BenchError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use uvm_image::cpio::Archive;

/// The virtio-serial port name qemu-guest-agent conventionally uses.
pub const QGA_PORT: &str = "org.qemu.guest_agent.0";
/// Host path of the agent binary (Debian package `qemu-guest-agent`).
pub const QGA_BIN: &str = "/usr/sbin/qemu-ga";
/// Host path of a static busybox (Debian package `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "sh", "mount", "cat", "true", "seq", "head", "sleep", "poweroff", "echo",
];

fn init_script() -> String {
    format!(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
port=
for i in $(seq 200); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "{QGA_PORT}" ] && port=/dev/${{p##*/}}
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || {{ echo "qga-init: port {QGA_PORT} not found"; poweroff -f; }}
exec /usr/bin/qemu-ga -m virtio-serial -p "$port" -t /run
"#
    )
}

/// The shared objects `ldd` lists for `bin`, as absolute host paths (loader included).
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| BenchError::io("run ldd", e))?;
    if !out.status.success() {
        return Err(BenchError::Image(format!(
            "ldd {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    libs.into_iter().collect()
}

/// Writes the peer initramfs (uncompressed newc, via `uvm_image::cpio`) to `out`.
pub fn build(out: &Path) -> Result<(), BenchError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| BenchError::io(format!("read {}", p.display()), e));
    let missing =
        |p: &str, pkg: &str| BenchError::Image(format!("{p} missing: apt-get install {pkg}"));
    let qga = read(Path::new(QGA_BIN)).map_err(|_| missing(QGA_BIN, "qemu-guest-agent"))?;
    let busybox = read(Path::new(BUSYBOX)).map_err(|_| missing(BUSYBOX, "busybox-static"))?;
    let mut a = Archive::new();
    let img = BenchError::ImageBuild;
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/var/run", "/etc"] {
        a.dir(d, 0o755).map_err(img)?;
    }
    for lib in shared_libs(Path::new(QGA_BIN))? {
        // ldd names the path the loader opens; store the resolved file under that name.
        let data =
            read(&std::fs::canonicalize(&lib).map_err(|e| BenchError::io("resolve lib", e))?)?;
        a.file(&lib.display().to_string(), 0o755, data)
            .map_err(img)?;
    }
    a.file("/usr/bin/qemu-ga", 0o755, qga).map_err(img)?;
    a.file("/bin/busybox", 0o755, busybox).map_err(img)?;
    for applet in APPLETS {
        a.symlink(&format!("/bin/{applet}"), "busybox")
            .map_err(img)?;
    }
    a.file("/init", 0o755, init_script().into_bytes())
        .map_err(img)?;
    let file = std::fs::File::create(out).map_err(|e| BenchError::io("create qga initramfs", e))?;
    let mut w = std::io::BufWriter::new(file);
    a.write_to(&mut w).map_err(img)?;
    std::io::Write::flush(&mut w).map_err(|e| BenchError::io("write qga initramfs", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_parsing() {
        let text = "\tlinux-vdso.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn init_finds_port_by_name() {
        let s = init_script();
        assert!(
            s.contains("org.qemu.guest_agent.0")
                && s.contains("exec /usr/bin/qemu-ga -m virtio-serial")
        );
    }
}
