//! Streaming exec: a process in the guest with its stdio as host streams.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, PollSender};
use uvm_proto::gcs::{self, exec_input, exec_output, exited};

use crate::stdout_port::{self, PortEnd, PortPool, StdoutPort};
use crate::vm_exit::VmExitWatch;
use crate::{Guest, GuestError};

/// Depth of every stdio channel (messages, each up to the agent's chunk size).
const CHANNEL_DEPTH: usize = 16;

/// Largest stdin chunk sent in one message: the agent's own output chunk
/// size, far below the gRPC message limit, so any write is split.
pub const MAX_STDIN_CHUNK: usize = 64 << 10;

/// What to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv; args[0] is looked up in the guest's PATH when it has no '/'.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory; empty = "/".
    pub workdir: String,
    /// Run on a pseudo-terminal (stdout carries the merged output, no stderr).
    pub terminal: bool,
    /// Initial window size `(rows, cols)` when `terminal`.
    pub window: Option<(u16, u16)>,
    /// Run in a container instead of the UVM itself; then `args`, `env`
    /// and `workdir` are ignored (the OCI process says them) and `terminal`
    /// must match the OCI process's.
    pub container: Option<ContainerTarget>,
}

/// Which container a process runs in, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerTarget {
    /// The container's id.
    pub id: String,
    /// Start the container: its init, with the process of the spec given at
    /// create. Otherwise an exec into the running container.
    pub init: bool,
    /// The OCI runtime-spec `process` (JSON) of an exec; empty for `init`.
    pub oci_process_json: String,
}

/// How a guest process ended, with what the agent knows beyond the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code or signal.
    pub outcome: ExitOutcome,
    /// A container's process killed by its cgroup's OOM killer.
    pub oom_killed: bool,
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitOutcome {
    /// The shell-style exit code: the code, or 128+N for signal N (as hcsshim does).
    pub fn code(self) -> i32 {
        match self {
            ExitOutcome::Code(c) => c,
            ExitOutcome::Signal(n) => 128 + n,
        }
    }
}

/// A running guest process.
///
/// Take `stdin`, `stdout` and `stderr` out (they are independent), then
/// [`Process::wait`]. Output channels are bounded: a reader that stops reading
/// one stream eventually stalls the other (as with pipes); drop a stream you
/// do not want and its data is discarded.
#[derive(Debug)]
pub struct Process {
    /// Guest pid.
    pub pid: u32,
    /// The process's standard input.
    pub stdin: Option<ProcessStdin>,
    /// Standard output (merged output when on a terminal).
    pub stdout: Option<ProcessOutput>,
    /// Standard error (None when on a terminal).
    pub stderr: Option<ProcessOutput>,
    control: mpsc::Sender<gcs::ExecInput>,
    exit: Option<oneshot::Receiver<Result<ProcessExit, GuestError>>>,
    stdout_on_port: bool,
}

impl Process {
    /// Whether stdout arrives on a stdout port (bypassing gRPC).
    pub fn stdout_on_port(&self) -> bool {
        self.stdout_on_port
    }

    /// Sends signal `signal` to the process.
    pub async fn signal(&self, signal: i32) -> Result<(), GuestError> {
        self.control().signal(signal).await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), GuestError> {
        self.control().resize(rows, cols).await
    }

    /// A handle that signals or resizes the process while another task
    /// owns it (and waits on it).
    pub fn control(&self) -> ProcessControl {
        ProcessControl {
            control: self.control.clone(),
        }
    }

    /// Waits for the process to end. Errors if the stream broke before the
    /// exit status arrived. A second call after it returned gives
    /// [`GuestError::Protocol`]. Cancel-safe: a `wait` dropped before the
    /// end leaves the status for the next one.
    pub async fn wait(&mut self) -> Result<ExitOutcome, GuestError> {
        self.wait_exit().await.map(|e| e.outcome)
    }

    /// [`Process::wait`], with the OOM flag of a container's process.
    pub async fn wait_exit(&mut self) -> Result<ProcessExit, GuestError> {
        let rx = self
            .exit
            .as_mut()
            .ok_or(GuestError::Protocol("exit status already taken"))?;
        let r = rx.await.unwrap_or(Err(GuestError::Protocol(
            "exec stream ended without exit status",
        )));
        self.exit = None;
        r
    }
}

/// Signals or resizes a running process; cheap to clone (see [`Process::control`]).
#[derive(Debug, Clone)]
pub struct ProcessControl {
    control: mpsc::Sender<gcs::ExecInput>,
}

impl ProcessControl {
    /// Sends signal `signal` to the process.
    pub async fn signal(&self, signal: i32) -> Result<(), GuestError> {
        self.send(exec_input::Msg::Signal(gcs::Signal { signal }))
            .await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), GuestError> {
        let ws = gcs::WindowSize {
            rows: rows.into(),
            cols: cols.into(),
        };
        self.send(exec_input::Msg::Resize(ws)).await
    }

    async fn send(&self, msg: exec_input::Msg) -> Result<(), GuestError> {
        self.control
            .send(gcs::ExecInput { msg: Some(msg) })
            .await
            .map_err(|_| GuestError::Protocol("process already exited"))
    }
}

/// Standard input of a guest process: `send`/`close`, or use it as an [`AsyncWrite`]
/// (`shutdown` closes the guest side). Dropping it closes stdin too.
#[derive(Debug)]
pub struct ProcessStdin {
    tx: PollSender<gcs::ExecInput>,
}

impl ProcessStdin {
    /// Sends a chunk (waits while the channel is full).
    pub async fn send(&mut self, data: Bytes) -> Result<(), GuestError> {
        let tx = self
            .tx
            .get_ref()
            .ok_or(GuestError::Protocol("stdin closed"))?;
        for chunk in data.chunks(MAX_STDIN_CHUNK) {
            let msg = gcs::ExecInput {
                msg: Some(exec_input::Msg::Stdin(chunk.to_vec())),
            };
            tx.send(msg)
                .await
                .map_err(|_| GuestError::Protocol("process already exited"))?;
        }
        Ok(())
    }

    /// Closes the guest side (EOF for the process).
    pub async fn close(mut self) -> Result<(), GuestError> {
        self.close_inner().await
    }

    async fn close_inner(&mut self) -> Result<(), GuestError> {
        if let Some(tx) = self.tx.get_ref().cloned() {
            self.tx.close();
            let msg = gcs::ExecInput {
                msg: Some(exec_input::Msg::CloseStdin(gcs::CloseStdin {})),
            };
            let _ = tx.send(msg).await;
        }
        Ok(())
    }
}

impl Drop for ProcessStdin {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.get_ref() {
            let msg = gcs::ExecInput {
                msg: Some(exec_input::Msg::CloseStdin(gcs::CloseStdin {})),
            };
            let _ = tx.try_send(msg);
        }
    }
}

fn closed_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "guest process stdin closed")
}

impl AsyncWrite for ProcessStdin {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.tx.poll_reserve(cx)).map_err(|_| closed_pipe())?;
        let n = buf.len().min(MAX_STDIN_CHUNK);
        let msg = gcs::ExecInput {
            msg: Some(exec_input::Msg::Stdin(buf[..n].to_vec())),
        };
        this.tx.send_item(msg).map_err(|_| closed_pipe())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tx.is_closed() {
            return Poll::Ready(Ok(()));
        }
        if ready!(this.tx.poll_reserve(cx)).is_ok() {
            let msg = gcs::ExecInput {
                msg: Some(exec_input::Msg::CloseStdin(gcs::CloseStdin {})),
            };
            let _ = this.tx.send_item(msg);
        }
        this.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// One output stream of a guest process: [`ProcessOutput::recv`] chunks, or
/// read it as an [`AsyncRead`]. Ends (EOF) when the process's stream ends.
#[derive(Debug)]
pub struct ProcessOutput {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ProcessOutput {
    /// The next chunk, or None at EOF.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        self.rx.recv().await
    }

    /// [`ProcessOutput::recv`] for a blocking thread (panics in async context).
    pub(crate) fn blocking_recv(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        self.rx.blocking_recv()
    }
}

impl AsyncRead for ProcessOutput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(b) => this.pending = b,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl Guest {
    /// Starts a process in the guest and returns once the agent reported it
    /// started (or refused it: [`GuestError::CommandNotFound`],
    /// [`GuestError::NotExecutable`], [`GuestError::DeniedByPolicy`], ...).
    pub async fn spawn(&self, spec: ProcessSpec) -> Result<Process, GuestError> {
        let mut client = self.client().map_err(|e| self.explain_closed(e))?;
        let vm_exit = self.vm_exit_watch().clone();
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let pool = self.stdout_pool().clone();
        let op = if spec.container.is_some() {
            "container exec"
        } else {
            "exec"
        };
        let port = (!spec.terminal
            && spec.container.is_none()
            && self.capabilities().is_some_and(|c| c.stdout_ports))
        .then(|| pool.take())
        .flatten();
        let start = gcs::ProcessSpec {
            args: spec.args,
            env: spec.env,
            workdir: spec.workdir,
            terminal: spec.terminal,
            window: spec.window.map(|(rows, cols)| gcs::WindowSize {
                rows: rows.into(),
                cols: cols.into(),
            }),
            stdout_port: port.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
            container: spec.container.map(|c| gcs::ContainerProcess {
                container_id: c.id,
                init: c.init,
                oci_process_json: c.oci_process_json,
            }),
        };
        // Handed back when the agent says it did not use it; retired
        // (drained, never reused) on every other way out, since a process
        // might be writing to it.
        let mut port = PendingPort(port, pool.clone(), self.closed_token().clone());
        tx.send(gcs::ExecInput {
            msg: Some(exec_input::Msg::Start(start)),
        })
        .await
        .map_err(|_| GuestError::Protocol("exec input closed"))?;
        let closed = self.closed_token().clone();
        let started = async {
            let mut out = match client.exec(ReceiverStream::new(rx)).await {
                Ok(out) => out.into_inner(),
                Err(s) => {
                    // The agent refused the process: nothing holds the port.
                    if REFUSALS.contains(&s.code()) {
                        port.give_back();
                    }
                    return Err(vm_exit.explain(op, s).await);
                }
            };
            let first = match out.message().await {
                Ok(m) => m,
                Err(s) => return Err(vm_exit.explain(op, s).await),
            };
            match first {
                Some(gcs::ExecOutput {
                    msg: Some(exec_output::Msg::Started(s)),
                }) => Ok((s, out)),
                _ => Err(GuestError::Protocol(
                    "exec stream did not start with `started`",
                )),
            }
        };
        let (started, out) = tokio::select! {
            r = started => r?,
            _ = closed.cancelled() => return Err(vm_exit.on_close()),
        };
        if !started.stdout_port {
            port.give_back();
        }
        let pid = started.pid;
        let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (out_tx, raw) = match port.0.take() {
            Some(p) => {
                let (end_tx, end_rx) = oneshot::channel();
                let relay =
                    tokio::spawn(stdout_port::relay(p, out_tx, end_rx, pool, closed.clone()));
                (None, Some(RawStdout { end: end_tx, relay }))
            }
            None => (Some(out_tx), None),
        };
        let (err_tx, err_rx) = if spec.terminal {
            (None, None)
        } else {
            let (t, r) = mpsc::channel(CHANNEL_DEPTH);
            (Some(t), Some(r))
        };
        let (exit_tx, exit_rx) = oneshot::channel();
        let stdout_on_port = raw.is_some();
        tokio::spawn(pump(out, out_tx, err_tx, raw, exit_tx, closed, vm_exit));
        Ok(Process {
            pid,
            stdin: Some(ProcessStdin {
                tx: PollSender::new(tx.clone()),
            }),
            stdout: Some(ProcessOutput {
                rx: out_rx,
                pending: Bytes::new(),
            }),
            stderr: err_rx.map(|rx| ProcessOutput {
                rx,
                pending: Bytes::new(),
            }),
            control: tx,
            exit: Some(exit_rx),
            stdout_on_port,
        })
    }
}

/// gRPC codes with which the agent refuses a process before starting it.
const REFUSALS: [tonic::Code; 4] = [
    tonic::Code::NotFound,
    tonic::Code::PermissionDenied,
    tonic::Code::FailedPrecondition,
    tonic::Code::InvalidArgument,
];

/// A stdout port asked for in an exec request, until the agent answers.
/// Dropped while still held, it is retired: the request may have started a
/// process that writes to it.
struct PendingPort(Option<StdoutPort>, Arc<PortPool>, CancellationToken);

impl PendingPort {
    /// Back to the pool: the agent did not use it.
    fn give_back(&mut self) {
        if let Some(p) = self.0.take() {
            self.1.put(p);
        }
    }
}

impl Drop for PendingPort {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            stdout_port::retire(p, self.2.clone());
        }
    }
}

/// A process's stdout arriving on a stdout port.
struct RawStdout {
    /// Tells the relay how many bytes to expect.
    end: oneshot::Sender<PortEnd>,
    relay: tokio::task::JoinHandle<Result<(), GuestError>>,
}

/// Moves output messages to the stdio channels until `exited`; with a
/// stdout port, reports `exited` only once the port's bytes all arrived.
async fn pump(
    mut out: tonic::Streaming<gcs::ExecOutput>,
    mut stdout: Option<mpsc::Sender<Bytes>>,
    mut stderr: Option<mpsc::Sender<Bytes>>,
    raw: Option<RawStdout>,
    exit: oneshot::Sender<Result<ProcessExit, GuestError>>,
    closed: tokio_util::sync::CancellationToken,
    vm_exit: VmExitWatch,
) {
    let merge_stderr = stderr.is_none();
    let mut raw = raw;
    let result = loop {
        let next = tokio::select! {
            m = out.next() => m,
            _ = closed.cancelled() => break Err(vm_exit.on_close()),
        };
        let msg = match next {
            // A stream that ends without a status is the connection going
            // away as well (the agent always sends `exited` or a status).
            None => {
                break Err(vm_exit
                    .explain("exec", crate::vm_exit::stream_ended())
                    .await);
            }
            Some(Err(s)) => break Err(vm_exit.explain("exec", s).await),
            Some(Ok(gcs::ExecOutput { msg })) => msg,
        };
        match msg {
            Some(exec_output::Msg::Stdout(b)) => forward(&mut stdout, b.into()).await,
            Some(exec_output::Msg::Stderr(b)) => {
                if merge_stderr {
                    forward(&mut stdout, b.into()).await
                } else {
                    forward(&mut stderr, b.into()).await
                }
            }
            Some(exec_output::Msg::Exited(e)) => {
                if let Some(r) = raw.take() {
                    let end = PortEnd {
                        bytes: e.stdout_port_bytes,
                        retired: e.stdout_port_retired,
                    };
                    let _ = r.end.send(end);
                    match r.relay.await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => break Err(vm_exit.or_vm_exit(err).await),
                        Err(_) => break Err(GuestError::Protocol("stdout relay failed")),
                    }
                }
                let oom_killed = e.oom_killed;
                break match e.status {
                    Some(exited::Status::ExitCode(c)) => Ok(ExitOutcome::Code(c)),
                    Some(exited::Status::Signal(n)) => Ok(ExitOutcome::Signal(n)),
                    None => Err(GuestError::Protocol("exit status missing")),
                }
                .map(|outcome| ProcessExit {
                    outcome,
                    oom_killed,
                });
            }
            Some(exec_output::Msg::Started(_)) | None => {}
        }
    };
    // Close the output channels first so readers see EOF before wait returns.
    drop(stdout);
    drop(stderr);
    let _ = exit.send(result);
}

async fn forward(tx: &mut Option<mpsc::Sender<Bytes>>, b: Bytes) {
    if let Some(t) = tx {
        if t.send(b).await.is_err() {
            // Reader gone: discard the rest of this stream.
            *tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_pending_port_goes_back_only_when_the_agent_did_not_use_it() {
        let pool = Arc::new(PortPool::default());
        let (a, _guest_a) = stdout_port::test_port("p0");
        let mut given = PendingPort(Some(a), pool.clone(), CancellationToken::new());
        given.give_back();
        drop(given);
        assert_eq!(pool.idle(), 1, "a refused request's port is reusable");
        let (b, _guest_b) = stdout_port::test_port("p1");
        drop(PendingPort(Some(b), pool.clone(), CancellationToken::new()));
        assert_eq!(pool.idle(), 1, "an unanswered request's port is retired");
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_the_status_for_the_next() {
        let (control, _rx) = mpsc::channel(1);
        let (exit_tx, exit_rx) = oneshot::channel();
        let mut p = Process {
            pid: 1,
            stdin: None,
            stdout: None,
            stderr: None,
            control,
            exit: Some(exit_rx),
            stdout_on_port: false,
        };
        let early = tokio::time::timeout(std::time::Duration::from_millis(10), p.wait()).await;
        assert!(early.is_err(), "no status yet");
        exit_tx
            .send(Ok(ProcessExit {
                outcome: ExitOutcome::Code(3),
                oom_killed: false,
            }))
            .unwrap();
        assert_eq!(p.wait().await.unwrap(), ExitOutcome::Code(3));
        assert!(matches!(p.wait().await, Err(GuestError::Protocol(_))));
    }

    #[tokio::test]
    async fn large_writes_are_split_into_bounded_messages() {
        let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
        let mut stdin = ProcessStdin {
            tx: PollSender::new(tx),
        };
        let data = vec![7u8; 10 << 20];
        let reader = tokio::spawn(async move {
            let (mut total, mut largest) = (0, 0);
            while let Some(m) = rx.recv().await {
                if let Some(exec_input::Msg::Stdin(b)) = m.msg {
                    total += b.len();
                    largest = largest.max(b.len());
                }
            }
            (total, largest)
        });
        stdin.write_all(&data).await.unwrap();
        stdin.send(Bytes::from(vec![1u8; 200 << 10])).await.unwrap();
        stdin.shutdown().await.unwrap();
        drop(stdin);
        let (total, largest) = reader.await.unwrap();
        assert_eq!(total, (10 << 20) + (200 << 10));
        assert!(largest <= MAX_STDIN_CHUNK, "a {largest}-byte stdin message");
    }
}
