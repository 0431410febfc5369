//! A process's stdio relayed to the paths containerd hands over: FIFOs it
//! created (opened read-write here, so that an open never blocks and stdin
//! sees no end until containerd calls `CloseIO`), or a `file://` URI.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use uvm_guest::{Process, ProcessControl, ProcessOutput, ProcessStdin};

use crate::error::{Result, ShimError};

/// How long output may keep flowing after the process exited (a background
/// child of an exec can hold stdout open); then the exit is reported anyway.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Exit status containerd gets when the UVM died under the process.
pub const VM_DIED_STATUS: u32 = 255;

/// The stdio of a task or exec as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// Stdin FIFO, or empty.
    pub stdin: String,
    /// Stdout FIFO or `file://` URI, or empty.
    pub stdout: String,
    /// Stderr, the same; unused on a terminal.
    pub stderr: String,
    /// Run on a terminal.
    pub terminal: bool,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Opened stdio, before the process starts (so a bad path fails the create).
pub struct Opened {
    stdin: Option<Reader>,
    stdout: Option<Writer>,
    stderr: Option<Writer>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Shell-style status (128+N for signal N; [`VM_DIED_STATUS`] when the UVM died).
    pub status: u32,
    /// When it was seen to end.
    pub at: SystemTime,
    /// Killed by its cgroup's OOM killer.
    pub oom_killed: bool,
}

/// A running process whose stdio is being relayed.
pub struct Relayed {
    /// Guest pid.
    pub pid: u32,
    /// Signals and resizes.
    pub control: ProcessControl,
    /// Closes the process's stdin (containerd's `CloseIO`).
    pub close_stdin: Option<oneshot::Sender<()>>,
    /// Resolves once it ended and its output is flushed.
    pub exit: oneshot::Receiver<Exit>,
}

fn bad_uri(path: &str) -> ShimError {
    ShimError::InvalidArgument(format!(
        "stdio {path:?}: only FIFOs and file:// URIs are supported (no logging binaries)"
    ))
}

async fn open_out(path: &str) -> Result<Option<Writer>> {
    if path.is_empty() {
        return Ok(None);
    }
    if let Some(p) = path.strip_prefix("file://") {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .await
            .map_err(|e| ShimError::io("open the output file", p, e))?;
        return Ok(Some(Box::new(f)));
    }
    if path.contains("://") {
        return Err(bad_uri(path));
    }
    let tx = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| ShimError::io("open the output FIFO", path, e))?;
    Ok(Some(Box::new(tx)))
}

fn open_in(path: &str) -> Result<Option<Reader>> {
    if path.is_empty() {
        return Ok(None);
    }
    if path.contains("://") {
        return Err(bad_uri(path));
    }
    let rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(Path::new(path))
        .map_err(|e| ShimError::io("open the input FIFO", path, e))?;
    Ok(Some(Box::new(rx)))
}

/// Opens `paths`.
pub async fn open(paths: &StdioPaths) -> Result<Opened> {
    if paths.terminal && !paths.stderr.is_empty() {
        tracing::debug!("stderr path ignored: the process runs on a terminal");
    }
    Ok(Opened {
        stdin: open_in(&paths.stdin)?,
        stdout: open_out(&paths.stdout).await?,
        stderr: if paths.terminal {
            None
        } else {
            open_out(&paths.stderr).await?
        },
    })
}

async fn copy_in(mut from: Reader, mut to: ProcessStdin, mut closed: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            _ = &mut closed => break,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    let _ = to.close().await;
}

async fn copy_out(from: Option<ProcessOutput>, to: Option<Writer>) {
    let Some(mut from) = from else { return };
    let Some(mut to) = to else {
        while from.recv().await.is_some() {}
        return;
    };
    let mut broken = false;
    while let Some(chunk) = from.recv().await {
        if !broken && to.write_all(&chunk).await.is_err() {
            // The reader went away: keep draining so the process is not stalled.
            broken = true;
        }
    }
    let _ = to.flush().await;
}

/// Starts relaying `process`'s stdio through `opened`.
pub fn relay(mut process: Process, opened: Opened) -> Relayed {
    let pid = process.pid;
    let control = process.control();
    let (close_tx, close_rx) = oneshot::channel();
    let stdin = process.stdin.take();
    match (stdin, opened.stdin) {
        (Some(to), Some(from)) => {
            tokio::spawn(copy_in(from, to, close_rx));
        }
        (Some(to), None) => {
            tokio::spawn(async move {
                let _ = to.close().await;
            });
        }
        _ => {}
    }
    let out = tokio::spawn(copy_out(process.stdout.take(), opened.stdout));
    let err = tokio::spawn(copy_out(process.stderr.take(), opened.stderr));
    let (exit_tx, exit_rx) = oneshot::channel();
    tokio::spawn(async move {
        let exit = match process.wait_exit().await {
            Ok(e) => Exit {
                status: e.outcome.code() as u32,
                at: SystemTime::now(),
                oom_killed: e.oom_killed,
            },
            Err(e) => {
                tracing::warn!(pid, error = %e, "process lost: the UVM or its agent went away");
                Exit {
                    status: VM_DIED_STATUS,
                    at: SystemTime::now(),
                    oom_killed: false,
                }
            }
        };
        let drained = async {
            let _ = out.await;
            let _ = err.await;
        };
        if tokio::time::timeout(DRAIN_AFTER_EXIT, drained)
            .await
            .is_err()
        {
            tracing::debug!(pid, "output still open after the exit; reporting the exit");
        }
        let _ = exit_tx.send(exit);
    });
    Relayed {
        pid,
        control,
        close_stdin: Some(close_tx),
        exit: exit_rx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifos_open_without_a_peer_and_uris_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdin: fifo.display().to_string(),
            stdout: fifo.display().to_string(),
            stderr: format!("file://{}", dir.path().join("err.log").display()),
            terminal: false,
        };
        let o = open(&paths).await.unwrap();
        assert!(o.stdin.is_some() && o.stdout.is_some() && o.stderr.is_some());
        let bad = StdioPaths {
            stdout: "binary:///usr/bin/logger".into(),
            ..Default::default()
        };
        let e = open(&bad).await.err().unwrap().sentence();
        assert!(e.contains("only FIFOs and file://"), "{e}");
        let missing = StdioPaths {
            stdout: dir.path().join("nope").display().to_string(),
            ..Default::default()
        };
        let e = open(&missing).await.err().unwrap().sentence();
        assert!(e.contains("cannot open the output FIFO"), "{e}");
    }
}
