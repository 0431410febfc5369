//! exec with host paths for stdio, as containerd hands a shim (FIFOs or files).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

use crate::process::{ContainerTarget, ProcessOutput, ProcessSpec};
use crate::{Guest, GuestError};

/// How long opening a FIFO may wait for its peer.
pub const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A process to run with host paths (FIFOs or regular files) as its stdio
/// (hcsshim's `shimdiag.ExecProcessRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// argv.
    pub args: Vec<String>,
    /// Working directory in the guest; empty = "/".
    pub workdir: String,
    /// Run on a pseudo-terminal (then `stderr` must be None).
    pub terminal: bool,
    /// Read and forwarded to the process's stdin.
    pub stdin: Option<PathBuf>,
    /// Receives the process's stdout.
    pub stdout: Option<PathBuf>,
    /// Receives the process's stderr.
    pub stderr: Option<PathBuf>,
    /// Run it in a container (its init, or an exec with an OCI process);
    /// `args` and `workdir` are then not used, and `terminal` must be the
    /// OCI process's.
    pub container: Option<ContainerTarget>,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Guest {
    /// Runs `req` to completion, relaying its stdio to the given paths, and
    /// returns its exit code (128+N when killed by signal N).
    ///
    /// `terminal` with a `stderr` path fails with
    /// [`GuestError::FailedPrecondition`] before any I/O. FIFOs are opened the
    /// way a shim does (blocking until the peer opens, bounded by
    /// [`FIFO_OPEN_TIMEOUT`]); files are read, or created and truncated.
    pub async fn exec_with_paths(&self, req: &ExecRequest) -> Result<i32, GuestError> {
        if req.terminal && req.stderr.is_some() {
            return Err(GuestError::FailedPrecondition(
                "terminal exec cannot have a stderr path",
            ));
        }
        let (stdin, stdout, stderr) = tokio::try_join!(
            open_opt(req.stdin.as_deref(), false),
            open_opt(req.stdout.as_deref(), true),
            open_opt(req.stderr.as_deref(), true),
        )?;
        let stdin: Option<Reader> = stdin.map(|o| o.reader());
        let spec = ProcessSpec {
            args: req.args.clone(),
            workdir: req.workdir.clone(),
            terminal: req.terminal,
            container: req.container.clone(),
            ..Default::default()
        };
        let mut proc = self.spawn(spec).await?;
        let input = proc.stdin.take();
        let stdin_task = tokio::spawn(async move {
            let Some(mut input) = input else { return };
            if let Some(mut r) = stdin {
                let _ = tokio::io::copy(&mut r, &mut input).await;
            }
            let _ = input.close().await;
        });
        let out = copy_out(proc.stdout.take(), stdout, req.stdout.clone());
        let err = copy_out(proc.stderr.take(), stderr, req.stderr.clone());
        let (o, e, exit) = tokio::join!(out, err, proc.wait());
        stdin_task.abort();
        let code = exit?.code();
        o?;
        e?;
        Ok(code)
    }
}

/// An opened stdio path.
enum Opened {
    File(tokio::fs::File),
    PipeRx(pipe::Receiver),
    PipeTx(pipe::Sender),
}

impl Opened {
    fn reader(self) -> Reader {
        match self {
            Opened::File(f) => Box::new(f),
            Opened::PipeRx(p) => Box::new(p),
            Opened::PipeTx(_) => unreachable_reader(),
        }
    }
    fn writer(self) -> Writer {
        match self {
            Opened::File(f) => Box::new(f),
            Opened::PipeTx(p) => Box::new(p),
            Opened::PipeRx(_) => Box::new(tokio::io::sink()),
        }
    }
}

/// Writes every chunk of `src` to `file` from one blocking thread: one
/// `write` per chunk and no task hand-off in between, as `tokio::fs::File`
/// would make (stdout to a host file ran at ~60 % of the discard rate so).
/// After a write error it keeps draining, so the process is not stalled.
async fn write_file(mut src: ProcessOutput, mut file: std::fs::File) -> io::Result<()> {
    use std::io::Write;
    tokio::task::spawn_blocking(move || {
        let mut result = Ok(());
        while let Some(chunk) = src.blocking_recv() {
            if result.is_ok() {
                result = file.write_all(&chunk);
            }
        }
        result.and_then(|()| file.flush())
    })
    .await
    .map_err(|e| io::Error::other(format!("file writer: {e}")))?
}

fn unreachable_reader() -> Reader {
    Box::new(tokio::io::empty())
}

async fn open_opt(path: Option<&Path>, write: bool) -> Result<Option<Opened>, GuestError> {
    match path {
        None => Ok(None),
        Some(p) => open(p, write)
            .await
            .map(Some)
            .map_err(|source| GuestError::Io {
                context: if write {
                    "opening output"
                } else {
                    "opening input"
                },
                path: p.to_path_buf(),
                source,
            }),
    }
}

async fn open(path: &Path, write: bool) -> io::Result<Opened> {
    let is_fifo = tokio::fs::metadata(path)
        .await
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if !is_fifo {
        let f = if write {
            tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .await?
        } else {
            tokio::fs::File::open(path).await?
        };
        return Ok(Opened::File(f));
    }
    let file = open_fifo_blocking(path.to_path_buf(), write).await?;
    if write {
        pipe::Sender::from_file(file).map(Opened::PipeTx)
    } else {
        pipe::Receiver::from_file(file).map(Opened::PipeRx)
    }
}

/// Opens a FIFO in blocking mode (waits for the peer) on a blocking thread,
/// bounded by [`FIFO_OPEN_TIMEOUT`]. On timeout the blocked open is released
/// by briefly opening the other end ourselves, so no thread is left stuck.
async fn open_fifo_blocking(path: PathBuf, write: bool) -> io::Result<File> {
    let p = path.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(&p)
    });
    match tokio::time::timeout(FIFO_OPEN_TIMEOUT, &mut task).await {
        Ok(joined) => joined.map_err(io::Error::other)?,
        Err(_) => {
            // Become the missing peer (non-blocking) to release the open.
            let _peer = std::fs::OpenOptions::new()
                .read(write)
                .write(!write)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            let _ = task.await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no peer opened the FIFO",
            ))
        }
    }
}

async fn copy_out(
    src: Option<ProcessOutput>,
    dst: Option<Opened>,
    path: Option<PathBuf>,
) -> Result<(), GuestError> {
    let Some(mut src) = src else { return Ok(()) };
    match dst {
        None => {
            while src.recv().await.is_some() {}
            Ok(())
        }
        Some(Opened::File(file)) => {
            let file = file.into_std().await;
            write_file(src, file)
                .await
                .map_err(|source| GuestError::Io {
                    context: "writing output",
                    path: path.unwrap_or_default(),
                    source,
                })
        }
        Some(dst) => {
            let mut dst = dst.writer();
            let r = async {
                use tokio::io::AsyncWriteExt;
                // Whole chunks (up to a stdout port's 256 KiB reads): a file
                // writer then makes one blocking write per chunk, not per 8 KiB.
                while let Some(chunk) = src.recv().await {
                    dst.write_all(&chunk).await?;
                }
                dst.shutdown().await
            }
            .await;
            match r {
                Ok(()) => Ok(()),
                // The reader went away: drain so the process is not stalled.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    while src.recv().await.is_some() {}
                    Ok(())
                }
                Err(source) => Err(GuestError::Io {
                    context: "writing output",
                    path: path.unwrap_or_default(),
                    source,
                }),
            }
        }
    }
}
