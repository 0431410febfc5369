//! virtio-serial ports: lookup by name, entropy.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::fdio::FdIo;

/// Where the kernel lists virtio-serial ports, one dir (`vportNpM`) each.
pub const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Device path (`/dev/vportNpM`) of the port named `name`, if present.
pub fn find(name: &str) -> Option<PathBuf> {
    find_in(Path::new(PORTS_DIR), name).map(|dev| Path::new("/dev").join(dev))
}

/// Device name (`vportNpM`) of the port named `name` (case-insensitive)
/// among the ports listed in `class_dir`.
pub fn find_in(class_dir: &Path, name: &str) -> Option<String> {
    for entry in std::fs::read_dir(class_dir).ok()?.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim().eq_ignore_ascii_case(name) {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// Waits (bounded) until every port in `names` exists; returns the missing ones.
pub async fn wait_for(names: &[&str], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| find(n).is_none_or(|p| !p.exists()))
            .map(|n| n.to_string())
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens the port named `name`.
pub fn open(name: &str) -> io::Result<FdIo> {
    FdIo::open_rw(&path_of(name)?)
}

fn path_of(name: &str) -> io::Result<PathBuf> {
    find(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no virtio port named {name}"),
        )
    })
}

/// Opens the port named `name` as a plain descriptor, to be served through
/// duplicates of it ([`FdIo::new`] of a `try_clone`): closing the port
/// makes the driver drop what it holds for us, so a server that moves
/// from one connection to the next keeps the port open.
pub fn open_descriptor(name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path_of(name)?)
}

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Credits `bytes` to the kernel entropy pool through `/dev/urandom`.
pub fn credit_entropy(bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: `info` is a valid rand_pool_info: the header is followed by exactly
    // `buf_size` bytes, and the buffer outlives the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDRESEEDCRNG` = `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Forces the kernel CRNG to reseed from the input pool now, so bytes
/// credited a moment ago reach `/dev/urandom` and `getrandom` at once.
pub fn reseed_crng() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads exactly `n` bytes from the entropy port (bounded by `timeout`) and
/// credits them. Returns the port, kept open for [`serve_reseeds`].
pub async fn receive_entropy(name: &str, n: usize, timeout: Duration) -> io::Result<FdIo> {
    let mut port = open(name)?;
    let mut buf = vec![0u8; n];
    tokio::time::timeout(timeout, port.read_exact(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for entropy"))??;
    credit_entropy(&buf)?;
    Ok(port)
}

/// After the boot entropy, every further `n` bytes on the entropy port mean
/// "this VM was restored from a snapshot": credit them, reseed the CRNG (no
/// two clones share random state), drop the GCS connection the snapshot
/// captured, and answer [`uvm_proto::ports::RESEEDED_ACK`]. Runs forever.
pub async fn serve_reseeds(mut port: FdIo, n: usize) {
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; n];
    loop {
        match port.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) => {
                // No host on the port (EOF) or a transient error: look again later.
                tracing::debug!(error = %e, "entropy port read");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let credited = credit_entropy(&buf).and_then(|()| reseed_crng());
        let reopened = crate::server::reset_connection(Duration::from_secs(2)).await;
        match &credited {
            Ok(()) => tracing::info!(
                bytes = n,
                reopened,
                "restored: entropy credited, CRNG reseeded"
            ),
            Err(e) => tracing::warn!(error = %e, reopened, "restored: reseeding failed"),
        }
        if let Err(e) = port.write_all(&[uvm_proto::ports::RESEEDED_ACK]).await {
            tracing::warn!(error = %e, "answering the reseed");
        }
    }
}
