//! Launching a prepared container process and watching its exit: the
//! container's state follows its init, and every process's exit says
//! whether the cgroup's OOM killer struck while it ran.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::Status;
use uvm_proto::gcs::{exited, Exited};

use super::launch::{launch as start, LaunchFailure};
use super::plan::Mode;
use super::zygote::Zygote;
use super::{stats, Container, Prepared, State};
use crate::reaper::{ExitKind, Reaper};
use crate::spawn::{ProcessExit, Running};

/// `Exited` for a container's record.
fn exited(kind: ExitKind, oom_killed: bool) -> Exited {
    let status = match kind {
        ExitKind::Code(c) => exited::Status::ExitCode(c),
        ExitKind::Signal(s) => exited::Status::Signal(s),
    };
    Exited {
        status: Some(status),
        oom_killed,
        ..Default::default()
    }
}

fn oom_kills(c: &Container) -> u64 {
    stats::oom_kills(&c.cgroup.path)
}

/// Starts `p`; see [`super::Containers::launch`].
pub async fn launch(
    p: Prepared,
    zygote: &Zygote,
    reaper: &Reaper,
    stdout_port: Option<OwnedFd>,
) -> Result<Running, Status> {
    let c = p.container;
    let init = matches!(p.plan.mode, Mode::Init(_));
    {
        let mut state = super::lock(&c.state);
        match (&*state, init) {
            (State::Created, true) => *state = State::Starting,
            (State::Running(_), false) => {}
            (s, _) => {
                return Err(super::wrong_state(
                    &c.id,
                    s,
                    if init { "created" } else { "running" },
                ))
            }
        }
    }
    let before = if init { 0 } else { oom_kills(&c) };
    let launched = match start(&p.plan, zygote, reaper, p.window.as_ref(), stdout_port).await {
        Ok(l) => l,
        Err(LaunchFailure { status, exit }) => {
            tracing::info!(container = %c.id, init, code = ?status.code(), error = status.message(), "container process did not start");
            if init {
                match exit {
                    Some(kind) => c.set_state(State::Stopped(0, exited(kind, false))),
                    None => c.set_state(State::Created),
                }
            }
            return Err(status);
        }
    };
    let mut running = launched.running;
    let pid = running.pid;
    if init {
        c.set_state(State::Running(pid));
    }
    let (tx, rx) = oneshot::channel();
    tokio::spawn(watch_exit(c.clone(), pid, init, before, launched.exit, tx));
    running.exit = Box::pin(async move { rx.await.ok() });
    Ok(running)
}

/// Waits for the process's exit (as long as it runs), records it, and
/// hands it on to its `Exec`.
async fn watch_exit(
    c: Arc<Container>,
    pid: i32,
    init: bool,
    before: u64,
    exit: oneshot::Receiver<ExitKind>,
    tx: oneshot::Sender<ProcessExit>,
) {
    let Ok(kind) = exit.await else {
        tracing::warn!(container = %c.id, pid, "exit of a container process lost");
        if init {
            c.set_state(State::Stopped(pid, Exited::default()));
        }
        return;
    };
    let cc = c.clone();
    let after = tokio::task::spawn_blocking(move || oom_kills(&cc))
        .await
        .unwrap_or(before);
    let oom_killed = after > before;
    tracing::info!(container = %c.id, pid, init, status = ?kind, oom_killed, "container process exited");
    if init {
        c.set_state(State::Stopped(pid, exited(kind, oom_killed)));
    }
    let _ = tx.send(ProcessExit { kind, oom_killed });
}
