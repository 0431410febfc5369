//! The `Exec` stream: feeds stdin/signals/resizes to a process and streams
//! its output, then its exit status.
//!
//! Output order is `started`, stdout/stderr chunks, `exited`. `exited` is sent
//! after both output streams reached EOF, or, when something (a grandchild)
//! keeps them open, after [`DRAIN_QUIET`] without data once the process exited.
//! With a stdout port (`ProcessSpec.stdout_port`) the process writes its
//! stdout straight to the port and `exited` carries the byte count instead.
//! All channels are bounded, so a slow client slows the process down instead
//! of growing buffers. A client that goes away gets its process killed.
// Errors are `tonic::Status` values: the gRPC code is the contract (see `spawn`).
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use uvm_proto::gcs::{
    exec_input, exec_output, exited, ContainerProcess, ExecInput, ExecOutput, Exited, ProcessSpec,
    Started,
};

use crate::fdio::{FdIo, SharedFd};
use crate::reaper::ExitKind;
use crate::service::Shared;
use crate::spawn::{self, Running};
use crate::stacks::InFlightGuard;
use crate::stdout_port::Claim;

/// Largest stdout/stderr chunk.
pub const CHUNK: usize = 64 << 10;
/// Output messages buffered per exec before the process is slowed down.
pub const OUTPUT_QUEUE: usize = 16;
/// After exit, output streams still open are closed after this long without data.
pub const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// Output stream of one exec.
pub type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;
type Tx = mpsc::Sender<Result<ExecOutput, Status>>;

fn summary(args: &[String]) -> String {
    let mut s = args.join(" ");
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// How long a process runs before its exec records its stack for
/// `DumpStacks`. Unwinding is not free under TCG (the first unwind sorts
/// every FDE of the agent: the first exec of a VM took 58 instead of 47 ms
/// when each exec recorded its stack at once), and a short exec is gone
/// before anyone could dump it.
const RECORD_STACK_AFTER: Duration = Duration::from_millis(100);

/// Registers the request for `DumpStacks` (its stack follows once the
/// process has run for [`RECORD_STACK_AFTER`]).
fn exec_handler_started(shared: &Shared, args: &[String]) -> InFlightGuard {
    shared.inflight.enter("Exec", summary(args))
}

/// Records the exec's stack, from inside the task that drives it. Never
/// inlined, so the exec shows up by name even in an optimized binary
/// stripped of DWARF (only the symbol table left).
#[inline(never)]
fn exec_still_running(guard: &InFlightGuard) {
    guard.record_stack();
}

/// Handles one `Exec` call: validates and spawns, then streams in a task.
pub async fn exec_handler(
    shared: Arc<Shared>,
    mut input: Streaming<ExecInput>,
) -> Result<ExecStream, Status> {
    let spec = match input.message().await? {
        Some(ExecInput {
            msg: Some(exec_input::Msg::Start(spec)),
        }) => spec,
        _ => {
            return Err(Status::invalid_argument(
                "the first Exec message must be `start`",
            ))
        }
    };
    let (running, claim, guard, label) = match &spec.container {
        Some(cp) => start_in_container(&shared, &spec, cp).await?,
        None => start_in_guest(&shared, &spec)?,
    };
    guard.set_pid(running.pid as u32);
    tracing::info!(pid = running.pid, args = %label, terminal = running.terminal, "process started");
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let started = ExecOutput {
        msg: Some(exec_output::Msg::Started(Started {
            pid: running.pid as u32,
            stdout_port: claim.is_some(),
        })),
    };
    // The channel is empty, so this cannot fail for lack of room.
    let _ = tx.try_send(Ok(started));
    tokio::spawn(drive(running, claim, input, tx, guard));
    Ok(ReceiverStream::new(rx))
}

/// A started process, its stdout port, its `DumpStacks` entry and a summary.
type Start = (Running, Option<Claim>, InFlightGuard, String);

/// A process of the guest itself: validated, resolved, spawned.
fn start_in_guest(shared: &Shared, spec: &ProcessSpec) -> Result<Start, Status> {
    let guard = exec_handler_started(shared, &spec.args);
    let prepared = {
        let defaults = shared
            .defaults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let policy = shared.policy.read().unwrap_or_else(|e| e.into_inner());
        spawn::prepare(spec, &defaults, &policy)
    };
    let prepared = prepared.inspect_err(|s| tracing::info!(args = %summary(&spec.args), code = ?s.code(), error = s.message(), "exec rejected"))?;
    let mut claim = claim_stdout_port(shared, spec, spec.terminal);
    let port_fd = stdout_port_fd(&mut claim)?;
    let running = spawn::spawn(prepared, &shared.reaper, port_fd).inspect_err(
        |s| tracing::warn!(args = %summary(&spec.args), error = s.message(), "exec failed"),
    )?;
    Ok((running, claim, guard, summary(&spec.args)))
}

/// A process of a container (its init or an exec into it); the OCI
/// process says args, env, cwd and terminal.
async fn start_in_container(
    shared: &Shared,
    spec: &ProcessSpec,
    cp: &ContainerProcess,
) -> Result<Start, Status> {
    let prepared = {
        let policy = shared.policy.read().unwrap_or_else(|e| e.into_inner());
        shared.containers.prepare(cp, &policy)
    };
    let prepared = prepared.inspect_err(|s| tracing::info!(container = %cp.container_id, code = ?s.code(), error = s.message(), "container exec rejected"))?;
    let label = summary(std::slice::from_ref(&prepared.summary));
    let guard = shared.inflight.enter("Exec", label.clone());
    let mut claim = claim_stdout_port(shared, spec, prepared.terminal);
    let port_fd = stdout_port_fd(&mut claim)?;
    let running = shared
        .containers
        .launch(prepared, &shared.reaper, port_fd)
        .await
        .inspect_err(|s| tracing::warn!(container = %cp.container_id, code = ?s.code(), error = s.message(), "container exec failed"))?;
    Ok((running, claim, guard, label))
}

fn stdout_port_fd(claim: &mut Option<Claim>) -> Result<Option<std::os::fd::OwnedFd>, Status> {
    match claim {
        Some(c) => c
            .child_fd()
            .map(Some)
            .map_err(|e| Status::internal(format!("stdout port: {e}"))),
        None => Ok(None),
    }
}

/// The stdout port the host asked for, if it can be used; `None`: stdout
/// goes through gRPC.
fn claim_stdout_port(shared: &Shared, spec: &ProcessSpec, terminal: bool) -> Option<Claim> {
    if spec.stdout_port.is_empty() || terminal {
        return None;
    }
    shared
        .stdout_ports
        .claim(&spec.stdout_port)
        .inspect_err(|e| tracing::info!(port = %spec.stdout_port, error = %e, "stdout port unusable; stdout goes through gRPC"))
        .ok()
}

async fn pump(fd: Arc<FdIo>, tx: Tx, stderr: bool, mut exited: watch::Receiver<bool>) {
    let mut reader = SharedFd(fd);
    let mut buf = vec![0u8; CHUNK];
    let mut done = *exited.borrow();
    loop {
        let n = if done {
            match tokio::time::timeout(DRAIN_QUIET, reader.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(stderr, "output still open after exit; closing it");
                    break;
                }
            }
        } else {
            tokio::select! {
                r = reader.read(&mut buf) => r,
                _ = exited.changed() => { done = true; continue; }
            }
        };
        let data = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => buf[..n].to_vec(),
        };
        let msg = if stderr {
            exec_output::Msg::Stderr(data)
        } else {
            exec_output::Msg::Stdout(data)
        };
        if tx.send(Ok(ExecOutput { msg: Some(msg) })).await.is_err() {
            break;
        }
    }
}

enum InputEnd {
    /// The client half-closed its side; no more input will come.
    Closed,
    /// The stream broke: the client is gone, or sent something undecodable
    /// (e.g. a message over the size limit); the status says which.
    Broken(Status),
}

async fn input_loop(
    mut input: Streaming<ExecInput>,
    stdin: Arc<FdIo>,
    pid: i32,
    terminal: bool,
) -> InputEnd {
    // With pipes the writer must hold the only handle, so dropping it closes stdin.
    let pty = terminal.then(|| stdin.clone());
    let mut writer = Some(SharedFd(stdin));
    loop {
        let msg = match input.message().await {
            Ok(Some(ExecInput { msg: Some(m) })) => m,
            Ok(Some(_)) => continue,
            Ok(None) => return InputEnd::Closed,
            Err(e) => {
                tracing::debug!(pid, error = %e, "exec input stream broke");
                return InputEnd::Broken(e);
            }
        };
        match msg {
            exec_input::Msg::Stdin(data) => {
                if let Some(w) = writer.as_mut() {
                    if w.write_all(&data).await.is_err() {
                        writer = None;
                    }
                }
            }
            exec_input::Msg::CloseStdin(_) if terminal => {
                // Closing a pty master would hang up the session: send EOF (^D) instead.
                if let Some(w) = writer.as_mut() {
                    let _ = w.write_all(&[4]).await;
                }
            }
            exec_input::Msg::CloseStdin(_) => writer = None,
            exec_input::Msg::Signal(s) => match Signal::try_from(s.signal) {
                Ok(sig) => {
                    tracing::debug!(pid, signal = s.signal, "signalling process");
                    let _ = kill(Pid::from_raw(pid), sig);
                }
                Err(_) => tracing::warn!(pid, signal = s.signal, "ignoring invalid signal number"),
            },
            exec_input::Msg::Resize(w) => {
                if let Some(pty) = &pty {
                    spawn::set_window(pty.raw_fd(), &w);
                }
            }
            exec_input::Msg::Start(_) => tracing::warn!(pid, "ignoring a second `start` message"),
        }
        if writer.is_none() && !terminal {
            // Dropping the last pipe handle closes the child's stdin.
            return drain_control(input, pid).await;
        }
    }
}

/// After stdin is closed, keeps handling signals until the stream ends.
async fn drain_control(mut input: Streaming<ExecInput>, pid: i32) -> InputEnd {
    loop {
        match input.message().await {
            Ok(Some(ExecInput {
                msg: Some(exec_input::Msg::Signal(s)),
            })) => {
                if let Ok(sig) = Signal::try_from(s.signal) {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return InputEnd::Closed,
            Err(e) => return InputEnd::Broken(e),
        }
    }
}

async fn drive(
    running: Running,
    claim: Option<Claim>,
    input: Streaming<ExecInput>,
    tx: Tx,
    guard: InFlightGuard,
) {
    let Running {
        pid,
        stdin,
        stdout,
        stderr,
        terminal,
        mut exit,
    } = running;
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    if let Some(out) = stdout {
        pumps.push(tokio::spawn(pump(
            out,
            tx.clone(),
            false,
            exited_rx.clone(),
        )));
    }
    if let Some(err) = stderr {
        pumps.push(tokio::spawn(pump(err, tx.clone(), true, exited_rx)));
    }
    let mut input_task = tokio::spawn(input_loop(input, stdin, pid, terminal));
    let mut input_done = false;
    let mut broken = None;
    let record_stack = tokio::time::sleep(RECORD_STACK_AFTER);
    tokio::pin!(record_stack);
    let mut stack_recorded = false;
    let status = loop {
        // Biased, input first: when the input broke (e.g. an oversized
        // message) and the process exited at about the same time, the client
        // must hear about the broken input, not a clean exit.
        tokio::select! {
            biased;
            end = &mut input_task, if !input_done => {
                input_done = true;
                match end {
                    Ok(InputEnd::Closed) => {}
                    Ok(InputEnd::Broken(status)) => {
                        broken = Some(status);
                        break None;
                    }
                    Err(_) => break None,
                }
            }
            status = &mut exit => break status,
            _ = tx.closed() => break None,
            _ = &mut record_stack, if !stack_recorded => {
                stack_recorded = true;
                exec_still_running(&guard);
            }
        }
    };
    let Some(status) = status else {
        // The client went away or broke the stream: kill the process (and its
        // group), reap it, and tell a client that is still there why.
        tracing::info!(pid, error = ?broken.as_ref().map(|s| s.message()), "exec input ended abnormally; killing the process");
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(10), exit).await;
        input_task.abort();
        pumps.iter().for_each(|p| p.abort());
        if let Some(status) = broken {
            let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(Err(status))).await;
        }
        drop(guard);
        return;
    };
    let _ = exited_tx.send(true);
    let all_pumps = futures::future::join_all(pumps.iter_mut());
    let port_end = async {
        match claim {
            Some(c) => Some(c.finish(DRAIN_QUIET).await),
            None => None,
        }
    };
    let port_end = tokio::select! {
        (_, end) = futures::future::join(all_pumps, port_end) => end,
        _ = tx.closed() => None,
    };
    pumps.iter().for_each(|p| p.abort());
    input_task.abort();
    tracing::info!(pid, status = ?status, "process exited");
    let oom_killed = status.oom_killed;
    let status = match status.kind {
        ExitKind::Code(c) => exited::Status::ExitCode(c),
        ExitKind::Signal(s) => exited::Status::Signal(s),
    };
    let msg = ExecOutput {
        msg: Some(exec_output::Msg::Exited(Exited {
            status: Some(status),
            stdout_port_bytes: port_end.map_or(0, |e| e.bytes),
            stdout_port_retired: port_end.is_some_and(|e| e.retired),
            oom_killed,
        })),
    };
    let _ = tx.send(Ok(msg)).await;
    drop(guard);
}
