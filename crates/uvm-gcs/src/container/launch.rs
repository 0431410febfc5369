//! The agent's side of starting a container process: the zygote asked for
//! a helper with the process's stdio and its three pipes, the plan written,
//! the pid the helper reports adopted by the reaper, the go byte, then the
//! process's setup result.
#![allow(clippy::result_large_err)]

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tonic::Status;
use uvm_proto::gcs::WindowSize;

use super::plan::{Failure, Plan};
use super::zygote::Zygote;
use crate::fdio::FdIo;
use crate::reaper::{ExitKind, Reaper};
use crate::spawn::{self, Running};

/// Bound on the helper and the process reaching `execve` (mounts under TCG
/// included).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a process did not start, and how it ended when it got as far as
/// being forked (its setup failed).
#[derive(Debug)]
pub struct LaunchFailure {
    /// What the `Exec` call returns.
    pub status: Status,
    /// The process's exit, when there was a process.
    pub exit: Option<ExitKind>,
}

impl From<Status> for LaunchFailure {
    fn from(status: Status) -> Self {
        Self { status, exit: None }
    }
}

/// A process the helper started, before its exit is wired up.
pub struct Launched {
    /// Stdio and pid; `exit` is a placeholder the caller replaces.
    pub running: Running,
    /// The reaper's receiver for the process's exit.
    pub exit: oneshot::Receiver<ExitKind>,
}

fn internal(id: &str, what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("container {id}: {what}: {e}"))
}

/// A pipe whose both ends are close-on-exec.
fn pipe(id: &str) -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| internal(id, "pipe", e))
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    id: &str,
) -> Result<String, Status> {
    let mut line = String::new();
    match tokio::time::timeout(START_TIMEOUT, r.read_line(&mut line)).await {
        Ok(Ok(_)) => Ok(line),
        Ok(Err(e)) => Err(internal(id, "status pipe", e)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "container {id}: the process did not start within {START_TIMEOUT:?}"
        ))),
    }
}

/// `f` as the call's status, naming container `id` unless it does already.
fn failure_status(id: &str, f: Failure) -> Status {
    let prefix = format!("container {id}: ");
    if f.message.starts_with(&prefix) {
        Status::new(f.kind.code(), f.message)
    } else {
        Status::new(f.kind.code(), format!("{prefix}{}", f.message))
    }
}

/// A helper that reported the process's pid: the process waits on `go`.
struct Forked {
    pid: i32,
    status: BufReader<FdIo>,
    go: OwnedFd,
}

/// Why no helper reported a pid.
enum Unforked {
    /// A failure to report as is.
    Failed(Status),
    /// The zygote died with the request (asking a new one may work).
    ZygoteGone,
}

impl From<Status> for Unforked {
    fn from(s: Status) -> Self {
        Unforked::Failed(s)
    }
}

/// Asks the zygote for a helper with the process's stdio `child` and fresh
/// pipes, writes the plan `json`, and reads the pid the helper reports.
async fn fork_helper(
    id: &str,
    json: &[u8],
    zygote: &Zygote,
    child: &[OwnedFd; 3],
) -> Result<Forked, Unforked> {
    let (plan_r, plan_w) = pipe(id)?;
    let (status_r, status_w) = pipe(id)?;
    let (go_r, go) = pipe(id)?;
    let [stdin, stdout, stderr] = child;
    let fds = [stdin, stdout, stderr, &plan_r, &status_w, &go_r].map(AsFd::as_fd);
    if let Err(e) = zygote.request(fds) {
        return Err(match zygote.ended() {
            true => Unforked::ZygoteGone,
            false => internal(id, "ask the container zygote", e).into(),
        });
    }
    drop((plan_r, status_w, go_r));
    let mut plan_w = FdIo::new(plan_w).map_err(|e| internal(id, "plan pipe", e))?;
    let wrote = tokio::time::timeout(START_TIMEOUT, async {
        plan_w.write_all(json).await?;
        plan_w.shutdown().await
    })
    .await;
    drop(plan_w);
    let status = FdIo::new(status_r).map_err(|e| internal(id, "status pipe", e))?;
    let mut status = BufReader::new(status);
    let first = read_line(&mut status, id).await?;
    let pid = first
        .trim_end()
        .strip_prefix("pid ")
        .and_then(|p| p.parse::<i32>().ok());
    if let Some(pid) = pid {
        return Ok(Forked { pid, status, go });
    }
    if let Some(f) = Failure::parse(&first) {
        return Err(failure_status(id, f).into());
    }
    if zygote.ended() {
        return Err(Unforked::ZygoteGone);
    }
    let why = match wrote {
        Ok(Ok(())) => "its helper ended without reporting it".to_string(),
        Ok(Err(e)) => format!("its helper ended before reading the plan ({e})"),
        Err(_) => format!("its helper did not read the plan within {START_TIMEOUT:?}"),
    };
    Err(Status::internal(format!(
        "container {id}: the process was not started: {why}"
    ))
    .into())
}

/// Starts `plan` through a helper the zygote forks, with the stdio
/// `terminal`/`stdout_port` say. A zygote that died with the request is
/// replaced and asked once more.
pub async fn launch(
    plan: &Plan,
    zygote: &Zygote,
    reaper: &Reaper,
    window: Option<&WindowSize>,
    stdout_port: Option<OwnedFd>,
) -> Result<Launched, LaunchFailure> {
    let id = plan.container_id.as_str();
    let t = std::time::Instant::now();
    let json = serde_json::to_vec(plan).map_err(|e| internal(id, "plan", e))?;
    let stdio = spawn::stdio(plan.process.terminal, window, stdout_port)?;
    let forked = match fork_helper(id, &json, zygote, &stdio.child).await {
        Err(Unforked::ZygoteGone) => {
            tracing::warn!(
                container = id,
                "the container zygote died with the request; asking a new one"
            );
            fork_helper(id, &json, zygote, &stdio.child).await
        }
        r => r,
    };
    let Forked {
        pid,
        mut status,
        go: go_w,
    } = forked.map_err(|u| match u {
        Unforked::Failed(s) => s,
        Unforked::ZygoteGone => Status::internal(format!(
            "container {id}: the process was not started: the container zygote died twice before forking its helper"
        )),
    })?;
    let forked_us = t.elapsed().as_micros() as u64;
    let parent = stdio.parent;
    drop(stdio.child);
    let exit = reaper
        .adopt(pid)
        .map_err(|e| internal(id, "adopt the process", e))?;
    nix::unistd::write(&go_w, b"g").map_err(|e| internal(id, "go pipe", e))?;
    drop(go_w);
    let rest = match read_line(&mut status, id).await {
        Ok(r) => r,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let exit = tokio::time::timeout(Duration::from_secs(5), exit).await;
            return Err(LaunchFailure {
                status: e,
                exit: exit.ok().and_then(Result::ok),
            });
        }
    };
    if !rest.is_empty() {
        let f = Failure::parse(&rest).unwrap_or_else(|| {
            Failure::new(
                super::plan::FailKind::Internal,
                format!("container {id}: unexpected status {rest:?}"),
            )
        });
        let exit = tokio::time::timeout(Duration::from_secs(5), exit).await;
        return Err(LaunchFailure {
            status: failure_status(id, f),
            exit: exit.ok().and_then(Result::ok),
        });
    }
    let running = spawn::running(pid, parent, Box::pin(async { None }))?;
    tracing::debug!(
        container = id,
        pid,
        forked_us,
        started_us = t.elapsed().as_micros() as u64,
        "container process launched (helper forked, then set up to execve)"
    );
    Ok(Launched { running, exit })
}

#[cfg(test)]
mod tests {
    use super::super::plan::FailKind;
    use super::*;

    #[test]
    fn failures_name_their_container_once() {
        let s = failure_status(
            "c1",
            Failure::new(FailKind::Internal, "fork the helper: EAGAIN"),
        );
        assert_eq!(s.message(), "container c1: fork the helper: EAGAIN");
        assert_eq!(s.code(), tonic::Code::Internal);
        let named = Failure::new(
            FailKind::NotFound,
            "container c1: executable file not found: x",
        );
        let s = failure_status("c1", named);
        assert_eq!(s.message(), "container c1: executable file not found: x");
        assert_eq!(s.code(), tonic::Code::NotFound);
        let other = Failure::new(FailKind::Internal, "container c10: gone");
        assert_eq!(
            failure_status("c1", other).message(),
            "container c1: container c10: gone"
        );
    }
}
