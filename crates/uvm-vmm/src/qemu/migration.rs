//! Saving and loading a VM's state with QMP `migrate` over a unix socket in
//! the runtime dir (QEMU runs with `-sandbox spawn=deny`, so `exec:` URIs
//! are out; a socket is also what live migration uses).
//!
//! With guest RAM in a shared memfd ([`GuestMemory::SharedMemfd`]) the
//! stream carries device state only (`x-ignore-shared`) and RAM is copied,
//! sparse, from the memfd into [`MEMORY_FILE`]; a restore maps that file
//! copy-on-write ([`GuestMemory::PrivateFile`]), so N restored VMs share its
//! page cache. Otherwise RAM travels in the stream.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use super::cmdline::GuestMemory;
use super::vm::QemuVm;
use crate::{SavedState, UtilityVm, VmmError, MEMORY_FILE, STATE_FILE};

/// Bound on a whole save or load (stream plus RAM copy).
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `query-migrate` is polled.
const POLL: Duration = Duration::from_millis(5);

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let context = context.into();
    move |source| VmmError::Io { context, source }
}

impl QemuVm {
    async fn set_ignore_shared(&self, on: bool) -> Result<(), VmmError> {
        let caps = json!({"capabilities": [{"capability": "x-ignore-shared", "state": on}]});
        self.qmp_execute("migrate-set-capabilities", Some(caps))
            .await
            .map(drop)
    }

    /// Polls `query-migrate` until it completes; its error text otherwise.
    /// Fails early with the exit reason when QEMU exits meanwhile.
    async fn migration_done(&self, step: &'static str) -> Result<(), VmmError> {
        let mut exit = self.exit_rx.clone();
        let poll = async {
            loop {
                let r = self.qmp_execute("query-migrate", None).await?;
                match r["status"].as_str().unwrap_or("") {
                    "completed" => return Ok(()),
                    s @ ("failed" | "cancelled") => {
                        let desc = r["error-desc"].as_str().unwrap_or(s).to_string();
                        return Err(VmmError::Migration { step, reason: desc });
                    }
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        };
        tokio::select! {
            r = poll => r,
            r = exit.wait_for(Option::is_some) => Err(VmmError::Exited {
                step,
                reason: r.ok().and_then(|r| r.clone()).unwrap_or(crate::ExitReason::HypervisorError {
                    code: -1,
                    stderr_tail: String::new(),
                }),
            }),
        }
    }

    /// Starts streaming the VM to `uri` (QMP `migrate`) at up to
    /// `max_bandwidth` bytes/s; QEMU's refusal (a migration blocker such as
    /// a mounted 9p export) comes back as [`VmmError::Migration`].
    async fn start_outgoing(
        &self,
        uri: &str,
        step: &'static str,
        max_bandwidth: Option<u64>,
    ) -> Result<(), VmmError> {
        // QEMU's default cap is 32 MiB/s; a local socket takes far more.
        let bw = max_bandwidth.unwrap_or(u32::MAX as u64);
        self.qmp_execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": bw })),
        )
        .await?;
        self.qmp_execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
            .map_err(|e| match e {
                VmmError::Qmp { message, .. } => VmmError::Migration {
                    step,
                    reason: message,
                },
                e => e,
            })
    }

    pub(crate) async fn save_to(&self, dir: &Path) -> Result<SavedState, VmmError> {
        let shared_ram = self.memory == GuestMemory::SharedMemfd;
        bounded("saving the VM state", async {
            self.set_ignore_shared(shared_ram).await?;
            let sock = self.dir_path.join("migrate-out.sock");
            let _ = std::fs::remove_file(&sock);
            let listener =
                UnixListener::bind(&sock).map_err(io_err(format!("binding {}", sock.display())))?;
            let _unlink = Unlink(sock.clone());
            let state_path = dir.join(STATE_FILE);
            let mut file = open_new(&state_path).await?;
            let uri = format!("unix:{}", sock.display());
            self.start_outgoing(&uri, "saving the VM", None).await?;
            let copy = async {
                let (mut conn, _) = listener
                    .accept()
                    .await
                    .map_err(io_err("accepting the migration stream"))?;
                let n = tokio::io::copy(&mut conn, &mut file)
                    .await
                    .map_err(io_err(format!("writing {}", state_path.display())))?;
                file.sync_all()
                    .await
                    .map_err(io_err(format!("syncing {}", state_path.display())))?;
                Ok::<u64, VmmError>(n)
            };
            let (state_bytes, ()) = tokio::try_join!(copy, self.migration_done("saving the VM"))?;
            let mut saved = SavedState {
                state_bytes,
                ..SavedState::default()
            };
            if shared_ram {
                let pid = self.pid().ok_or(VmmError::State("not running"))?;
                let out = dir.join(MEMORY_FILE);
                let size = self.assigned_memory_bytes;
                saved.memory_data_bytes =
                    tokio::task::spawn_blocking(move || copy_memfd(pid, &out, size))
                        .await
                        .map_err(|e| VmmError::Io {
                            context: "copying guest RAM".into(),
                            source: std::io::Error::other(e),
                        })??;
                saved.memory_file = true;
            }
            Ok(saved)
        })
        .await
    }

    pub(crate) async fn load_from(&self, state: &Path) -> Result<(), VmmError> {
        let private_file = matches!(self.memory, GuestMemory::PrivateFile(_));
        bounded("loading the VM state", async {
            let mut file = tokio::fs::File::open(state)
                .await
                .map_err(|source| VmmError::File {
                    what: "snapshot state",
                    path: state.to_path_buf(),
                    source,
                })?;
            let sock = self.listen_incoming_with(private_file).await?;
            let _unlink = Unlink(sock.clone());
            let feed = async {
                let mut conn = UnixStream::connect(&sock)
                    .await
                    .map_err(io_err(format!("connecting {}", sock.display())))?;
                // QEMU may stop reading (and exit) at a bad stream: the
                // outcome is what migration_done reports.
                let _ = tokio::io::copy(&mut file, &mut conn).await;
                let _ = conn.shutdown().await;
                Ok::<(), VmmError>(())
            };
            tokio::try_join!(feed, self.migration_done("loading the snapshot")).map(drop)
        })
        .await
    }

    /// QEMU (started with `-incoming defer`) listens on a socket in the
    /// runtime dir for a migration stream; returns its path.
    async fn listen_incoming_with(&self, ignore_shared: bool) -> Result<PathBuf, VmmError> {
        self.set_ignore_shared(ignore_shared).await?;
        let sock = self.dir_path.join("migrate-in.sock");
        let _ = std::fs::remove_file(&sock);
        let uri = format!("unix:{}", sock.display());
        self.qmp_execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        Ok(sock)
    }

    /// Destination of a live migration: listens for the source's stream
    /// (RAM included); returns the socket.
    pub(crate) async fn listen_incoming(&self) -> Result<PathBuf, VmmError> {
        self.listen_incoming_with(false).await
    }

    /// Waits for the incoming migration to complete.
    pub(crate) async fn incoming_done(&self) -> Result<(), VmmError> {
        let r = bounded(
            "the incoming migration",
            self.migration_done("receiving the VM"),
        )
        .await;
        let _ = std::fs::remove_file(self.dir_path.join("migrate-in.sock"));
        r
    }

    /// Source of a live migration: streams the running VM to `socket`
    /// (RAM included) and returns once QEMU says it completed; the VM is
    /// then stopped. `max_bandwidth` caps the rate (bytes/s).
    pub(crate) async fn send_to(
        &self,
        socket: &Path,
        max_bandwidth: Option<u64>,
    ) -> Result<(), VmmError> {
        self.set_ignore_shared(false).await?;
        let uri = format!("unix:{}", socket.display());
        self.start_outgoing(&uri, "migrating the VM", max_bandwidth)
            .await?;
        bounded(
            "the outgoing migration",
            self.migration_done("migrating the VM"),
        )
        .await
    }

    /// Cancels an outgoing migration; the VM runs on (restarted if the
    /// migration had already stopped it).
    pub(crate) async fn cancel_outgoing(&self) -> Result<(), VmmError> {
        self.qmp_execute("migrate_cancel", None).await?;
        let status = self.qmp_execute("query-status", None).await?;
        if status["running"] == false {
            self.qmp_execute("cont", None).await?;
        }
        Ok(())
    }
}

/// `fut` bounded by [`MIGRATION_TIMEOUT`]; `what` names it in the error.
async fn bounded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, VmmError>>,
) -> Result<T, VmmError> {
    tokio::time::timeout(MIGRATION_TIMEOUT, fut)
        .await
        .map_err(|_| VmmError::Timeout {
            what,
            timeout: MIGRATION_TIMEOUT,
        })?
}

/// Removes a socket path when dropped.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn open_new(path: &Path) -> Result<tokio::fs::File, VmmError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|source| VmmError::File {
            what: "snapshot state",
            path: path.to_path_buf(),
            source,
        })
}

/// Name QEMU gives the memfd of `memory-backend-memfd`, as `/proc/PID/fd` shows it.
const MEMFD_LINK: &str = "/memfd:memory-backend-memfd";

/// Copies the data regions of QEMU `pid`'s guest-RAM memfd into a new
/// sparse file `out` of `size` bytes; returns the bytes of data copied.
fn copy_memfd(pid: u32, out: &Path, size: u64) -> Result<u64, VmmError> {
    let fds = format!("/proc/{pid}/fd");
    let fd_path = std::fs::read_dir(&fds)
        .map_err(io_err(format!("listing {fds}")))?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_link(p).is_ok_and(|l| l.to_string_lossy().starts_with(MEMFD_LINK)))
        .ok_or_else(|| VmmError::Migration {
            step: "saving the VM",
            reason: format!("QEMU (pid {pid}) holds no guest-RAM memfd"),
        })?;
    let src =
        std::fs::File::open(&fd_path).map_err(io_err(format!("opening {}", fd_path.display())))?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|source| VmmError::File {
            what: "snapshot memory",
            path: out.to_path_buf(),
            source,
        })?;
    dst.set_len(size)
        .map_err(io_err(format!("sizing {}", out.display())))?;
    let copied = copy_data_regions(&src, &dst, size)
        .map_err(io_err(format!("writing {}", out.display())))?;
    dst.sync_all()
        .map_err(io_err(format!("syncing {}", out.display())))?;
    Ok(copied)
}

/// Copies every data region (`SEEK_DATA`..`SEEK_HOLE`) of `src` below
/// `size` to the same offset of `dst`, leaving holes as holes.
pub(crate) fn copy_data_regions(
    src: &std::fs::File,
    dst: &std::fs::File,
    size: u64,
) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let seek = |off: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; no memory is touched.
        let r = unsafe { libc::lseek(src.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, mut copied) = (0u64, 0u64);
    while off < size {
        let Some(data) = seek(off, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        copied += at - data;
        off = hole.max(data + 1);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn data_regions_are_copied_and_holes_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("src"))
            .unwrap();
        let size = 64u64 << 20;
        src.set_len(size).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(&[7u8; 8192], 40 << 20).unwrap();
        let dst = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        dst.set_len(size).unwrap();
        let copied = copy_data_regions(&src, &dst, size).unwrap();
        assert!((8196..1 << 20).contains(&copied), "copied {copied}");
        let mut got = [0u8; 4];
        dst.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"head");
        let mut block = vec![0u8; 8192];
        dst.read_exact_at(&mut block, 40 << 20).unwrap();
        assert!(block.iter().all(|&b| b == 7));
        use std::os::unix::fs::MetadataExt;
        let blocks = dst.metadata().unwrap().blocks() * 512;
        assert!(blocks < 4 << 20, "dst allocates {blocks} bytes: not sparse");
    }
}
