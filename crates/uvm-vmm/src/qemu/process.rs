//! Spawning QEMU (own process group, `PR_SET_PDEATHSIG`), its stderr tail, and
//! the owner task that reaps it and publishes the exit reason.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::exit::{exit_reason, ExitFacts};
use crate::qmp::QmpClient;
use crate::{ExitReason, VmmError, LIFECYCLE};

/// Bytes of QEMU stderr kept for the exit error.
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// Bytes of the guest console kept for a panic report.
pub const CONSOLE_TAIL_BYTES: u64 = 8 * 1024;

/// A bounded byte tail.
#[derive(Debug, Default)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    /// An empty tail keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Tail {
            buf: VecDeque::new(),
            cap,
        }
    }
    /// Appends, dropping the oldest bytes beyond the cap.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        let excess = self.buf.len().saturating_sub(self.cap);
        self.buf.drain(..excess);
    }
    /// The kept text (lossy UTF-8).
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Reads the last `max` bytes of a file ("" if it cannot be read).
pub fn read_file_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut v = Vec::new();
    let _ = f.take(max).read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// State shared by a VM handle and its owner task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub id: String,
    pub console_log: std::path::PathBuf,
    /// `Some(forced)` once termination was requested.
    pub requested: Mutex<Option<bool>>,
    pub stderr_tail: Arc<Mutex<Tail>>,
    pub qmp: std::sync::OnceLock<QmpClient>,
    pub pid: Mutex<Option<u32>>,
    pub stopped: Mutex<Option<SystemTime>>,
}

/// The running process as seen by its handle.
pub(crate) struct Spawned {
    pub pid: u32,
    /// Dropping every sender, or sending, kills the process.
    pub kill_tx: mpsc::Sender<()>,
    pub exit_rx: watch::Receiver<Option<ExitReason>>,
}

type SpawnJob = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
/// the process. Spawning from a tokio worker (or a blocking-pool thread) would
/// kill QEMU whenever that thread retires, so every QEMU is forked from one
/// thread that lives as long as the process.
async fn spawn_on_keeper_thread(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("uvm-qemu-spawner".into())
            .spawn(move || {
                for (mut cmd, handle, reply) in rx {
                    // The runtime context registers the child with its SIGCHLD driver.
                    let _enter = handle.enter();
                    // A dropped receiver drops the child: kill_on_drop kills it.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the QEMU spawner thread");
        Mutex::new(tx)
    });
    let gone = || std::io::Error::other("QEMU spawner thread is gone");
    let (tx, rx) = tokio::sync::oneshot::channel();
    keeper
        .lock()
        .unwrap()
        .send((cmd, tokio::runtime::Handle::current(), tx))
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// Spawns QEMU and the tasks that own it.
pub(crate) async fn spawn(
    binary: &Path,
    args: &[String],
    cwd: &Path,
    shared: Arc<Shared>,
) -> Result<Spawned, VmmError> {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid is async-signal-safe and has no preconditions.
        let parent = unsafe { libc::getpid() };
        let std_cmd = cmd.as_std_mut();
        std_cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid); it allocates nothing.
        unsafe {
            std_cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    let mut child = spawn_on_keeper_thread(cmd)
        .await
        .map_err(|source| VmmError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    *shared.pid.lock().unwrap() = Some(pid);
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_task = tokio::spawn(read_stderr(stderr, Arc::clone(&shared)));
    let (kill_tx, kill_rx) = mpsc::channel(1);
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(own(child, kill_rx, exit_tx, shared, stderr_task));
    tracing::debug!(pid, binary = %binary.display(), ?args, "spawned QEMU");
    Ok(Spawned {
        pid,
        kill_tx,
        exit_rx,
    })
}

async fn read_stderr(stderr: tokio::process::ChildStderr, shared: Arc<Shared>) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                shared.stderr_tail.lock().unwrap().push(&line);
                let text = String::from_utf8_lossy(&line);
                tracing::warn!(vm = %shared.id, "qemu: {}", text.trim_end());
            }
        }
    }
}

/// Owns the child: waits for it (or kills it on request / when the handle is
/// gone), then computes and publishes the exit reason.
async fn own(
    mut child: Child,
    mut kill_rx: mpsc::Receiver<()>,
    exit_tx: watch::Sender<Option<ExitReason>>,
    shared: Arc<Shared>,
    stderr_task: JoinHandle<()>,
) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = kill_rx.recv() => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    *shared.pid.lock().unwrap() = None;
    let stopped = SystemTime::now();
    // Let the last stderr lines and QMP events arrive (both end at process exit).
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
    if let Some(q) = shared.qmp.get() {
        let _ = tokio::time::timeout(Duration::from_secs(2), q.closed()).await;
    }
    let seen = shared.qmp.get().map(|q| q.seen()).unwrap_or_default();
    let mut facts = ExitFacts {
        shutdown_reason: seen.shutdown_reason,
        panicked: seen.panicked,
        requested: *shared.requested.lock().unwrap(),
        stderr_tail: shared.stderr_tail.lock().unwrap().text(),
        console_tail: read_file_tail(&shared.console_log, CONSOLE_TAIL_BYTES),
        ..Default::default()
    };
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            facts.code = s.code();
            facts.signal = s.signal();
        }
        Err(e) => facts
            .stderr_tail
            .push_str(&format!("\n(waiting for QEMU failed: {e})")),
    }
    let reason = exit_reason(&facts);
    *shared.stopped.lock().unwrap() = Some(stopped);
    tracing::info!(target: LIFECYCLE, vm = %shared.id, reason = %reason, "VM exited");
    exit_tx.send_replace(Some(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.text(), "cdef");
    }

    #[test]
    fn file_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(read_file_tail(&p, 3), "789");
        assert_eq!(read_file_tail(&p, 100), "0123456789");
        assert_eq!(read_file_tail(&d.path().join("none"), 3), "");
    }
}
