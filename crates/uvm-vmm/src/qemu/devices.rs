//! Turning a validated document into the typed pieces of the command line:
//! paths made absolute, kernel and disk formats read from their magic bytes.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use uvm_schema::ComputeSystem;

use super::cmdline::{
    detect_disk_format, detect_kernel_format, Disk, DiskFormat, KernelFormat, SerialBackend,
    SerialPort, Share,
};
use crate::VmmError;

fn file_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> VmmError + 'a {
    move |source| VmmError::File {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Canonical absolute path of an existing file (symlinks followed).
pub(crate) fn absolute(what: &'static str, p: &Path) -> Result<PathBuf, VmmError> {
    std::fs::canonicalize(p).map_err(file_err(what, p))
}

/// Reads up to `n` bytes at the start and the last 512 bytes.
fn head_tail(what: &'static str, p: &Path, n: usize) -> Result<(Vec<u8>, Vec<u8>), VmmError> {
    let mut f = std::fs::File::open(p).map_err(file_err(what, p))?;
    let mut head = Vec::new();
    (&mut f)
        .take(n as u64)
        .read_to_end(&mut head)
        .map_err(file_err(what, p))?;
    let len = f.seek(SeekFrom::End(0)).map_err(file_err(what, p))?;
    let mut tail = Vec::new();
    if len >= 1024 {
        f.seek(SeekFrom::Start(len - 512))
            .map_err(file_err(what, p))?;
        f.take(512)
            .read_to_end(&mut tail)
            .map_err(file_err(what, p))?;
    }
    Ok((head, tail))
}

/// The kernel's absolute path and format.
pub(crate) fn kernel(doc: &ComputeSystem) -> Result<(PathBuf, KernelFormat), VmmError> {
    let k = doc
        .kernel()
        .ok_or_else(|| VmmError::Unsupported("document has no LinuxKernelDirect".into()))?;
    let k = absolute("kernel", k)?;
    let (head, _) = head_tail("kernel", &k, 0x210)?;
    let fmt = detect_kernel_format(&head).ok_or_else(|| {
        VmmError::Unsupported(format!(
            "kernel {} is neither an ELF vmlinux nor a bzImage",
            k.display()
        ))
    })?;
    Ok((k, fmt))
}

/// The disk format of an image, read from its magic bytes.
pub(crate) fn image_format(path: &Path) -> Result<DiskFormat, VmmError> {
    let (head, tail) = head_tail("disk", path, 512)?;
    Ok(detect_disk_format(&head, &tail))
}

/// The Scsi attachments as disks on the controller, in document order:
/// target = the controller's position among the document's controllers.
pub(crate) fn disks(doc: &ComputeSystem) -> Result<Vec<Disk>, VmmError> {
    doc.scsi_disks()
        .into_iter()
        .map(|d| {
            let path = absolute("disk", &d.path)?;
            let format = if d.kind == "VirtualDisk" {
                image_format(&path)?
            } else {
                DiskFormat::Raw
            };
            Ok(Disk {
                path,
                format,
                read_only: d.read_only,
                controller: d.controller_index,
                lun: d.lun,
            })
        })
        .collect()
}

/// 9p shares.
pub(crate) fn shares(doc: &ComputeSystem) -> Result<Vec<Share>, VmmError> {
    let devices = doc.devices();
    let Some(p9) = devices.plan9 else {
        return Ok(Vec::new());
    };
    p9.shares
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(Share {
                id: format!("fs{i}"),
                tag: s.name.clone(),
                path: absolute("share", Path::new(&s.path))?,
                read_only: s.read_only || s.flags & 1 != 0,
            })
        })
        .collect()
}

/// Whether the kernel command line puts the console on the virtio console
/// (its last `console=` is `hvc0`, as the kernel itself decides).
pub(crate) fn console_on_hvc(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .next_back()
        .is_some_and(|c| c.split(',').next() == Some("hvc0"))
}

/// Serial ports: the document's ComPorts. With `uart_console`, port 0 is
/// the console: copied to `console_log`, or *being* `console_log` when the
/// document has no ComPort 0. Without it (the console is `hvc0`), only the
/// document's ports exist, as they are.
pub(crate) fn serials(
    doc: &ComputeSystem,
    console_log: &Path,
    uart_console: bool,
) -> Result<Vec<SerialPort>, VmmError> {
    let mut out = Vec::new();
    let devices = doc.devices();
    for (key, port) in &devices.com_ports {
        let index: u32 = key
            .parse()
            .map_err(|_| VmmError::Unsupported(format!("COM port {key:?}")))?;
        let p = Path::new(&port.named_pipe);
        let parent = match p.parent() {
            Some(x) if !x.as_os_str().is_empty() => x,
            _ => Path::new("."),
        };
        let name = p
            .file_name()
            .ok_or_else(|| VmmError::Unsupported(format!("COM port path {}", p.display())))?;
        let path = absolute("COM port directory", parent)?.join(name);
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::metadata(&path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        let backend = if is_socket {
            SerialBackend::Socket(path)
        } else {
            SerialBackend::File(path)
        };
        let log = (index == 0 && uart_console).then(|| console_log.to_path_buf());
        out.push(SerialPort {
            index,
            backend,
            log,
        });
    }
    if uart_console && !out.iter().any(|s| s.index == 0) {
        out.insert(
            0,
            SerialPort {
                index: 0,
                backend: SerialBackend::File(console_log.to_path_buf()),
                log: None,
            },
        );
    }
    out.sort_by_key(|s| s.index);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::console_on_hvc;

    #[test]
    fn the_last_console_argument_decides() {
        assert!(console_on_hvc("console=hvc0 quiet"));
        assert!(console_on_hvc("console=ttyS0 console=hvc0"));
        assert!(!console_on_hvc("console=hvc0 console=ttyS0,115200"));
        assert!(!console_on_hvc("quiet panic=-1"));
        assert!(!console_on_hvc("console=hvc1 xconsole=hvc0"));
    }
}
