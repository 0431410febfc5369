//! The agent's side of starting a container process: the helper spawned
//! with the process's stdio and its three pipes, the pid it reports
//! adopted by the reaper, the go byte, then the process's setup result.
#![allow(clippy::result_large_err)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tonic::Status;
use uvm_proto::gcs::WindowSize;

use super::plan::{Failure, Plan, GO_FD, HELPER_ARG, PLAN_FD, STATUS_FD};
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

/// A close-on-exec copy of `fd` numbered 10 or above, so that the dup2s
/// onto 3, 4 and 5 in the child cannot overwrite one another's sources.
fn high(id: &str, fd: &OwnedFd) -> Result<OwnedFd, Status> {
    let n =
        fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| internal(id, "dup", e))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
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

fn failure_status(f: Failure) -> Status {
    Status::new(f.kind.code(), f.message)
}

/// Starts `plan` through the helper, with the stdio `terminal`/`stdout_port` say.
pub async fn launch(
    plan: &Plan,
    reaper: &Reaper,
    window: Option<&WindowSize>,
    stdout_port: Option<OwnedFd>,
) -> Result<Launched, LaunchFailure> {
    let id = plan.container_id.as_str();
    let json = serde_json::to_vec(plan).map_err(|e| internal(id, "plan", e))?;
    let (plan_r, plan_w) = pipe(id)?;
    let (status_r, status_w) = pipe(id)?;
    let (go_r, go_w) = pipe(id)?;
    let child_fds = [high(id, &plan_r)?, high(id, &status_w)?, high(id, &go_r)?];
    drop((plan_r, status_w, go_r));
    let raw: [RawFd; 3] = [
        child_fds[0].as_raw_fd(),
        child_fds[1].as_raw_fd(),
        child_fds[2].as_raw_fd(),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("uvm-gcs").arg(HELPER_ARG).env_clear();
    let master = spawn::attach_stdio(&mut cmd, plan.process.terminal, window, stdout_port)?;
    // SAFETY: runs in the forked child before exec; dup2 is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (src, dst) in raw.into_iter().zip([PLAN_FD, STATUS_FD, GO_FD]) {
                if libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (mut helper, helper_exit) = reaper
        .spawn_registered(&mut cmd)
        .map_err(|e| internal(id, "spawn the helper", e))?;
    drop(cmd);
    drop(child_fds);
    let mut plan_w = FdIo::new(plan_w).map_err(|e| internal(id, "plan pipe", e))?;
    let wrote = tokio::time::timeout(START_TIMEOUT, async {
        plan_w.write_all(&json).await?;
        plan_w.shutdown().await
    })
    .await;
    drop(plan_w);
    let status = FdIo::new(status_r).map_err(|e| internal(id, "status pipe", e))?;
    let mut status = BufReader::new(status);
    let first = read_line(&mut status, id).await?;
    let pid = match first
        .trim_end()
        .strip_prefix("pid ")
        .and_then(|p| p.parse::<i32>().ok())
    {
        Some(pid) => pid,
        None => {
            if let Some(f) = Failure::parse(&first) {
                return Err(failure_status(f).into());
            }
            let how = tokio::time::timeout(Duration::from_secs(5), helper_exit).await;
            return Err(Status::internal(format!(
                "container {id}: the helper ended without starting the process (exit {how:?}, plan written: {wrote:?})"
            ))
            .into());
        }
    };
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
            status: failure_status(f),
            exit: exit.ok().and_then(Result::ok),
        });
    }
    let running = spawn::running(&mut helper, pid, master, Box::pin(async { None }))?;
    Ok(Launched { running, exit })
}
