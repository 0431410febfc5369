//! The one place that calls `waitpid(-1)`.
//!
//! As PID 1 (or a child subreaper) the agent inherits every orphan and must
//! reap it, but a blanket `waitpid(-1)` would also steal the exit status of
//! a process an `Exec` is waiting on. So a single reaper owns all waits:
//! [`Reaper::spawn_registered`] forks while holding the reaper's lock and
//! registers the pid before the lock is released, so the reaper cannot reap
//! the child before its waiter exists. Statuses of registered pids go to
//! their waiter; everything else is an orphan and is just reaped.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited normally with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<ExitKind>>,
    orphans_reaped: u64,
}

/// Reaps every child; hands the statuses of registered children to their waiters.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// A reaper with no task running yet; see [`Reaper::run`].
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (plain map ops).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and registers its pid atomically with respect to reaping.
    /// The returned receiver yields the exit status.
    pub fn spawn_registered(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(Child, oneshot::Receiver<ExitKind>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Registers `pid`, an already running child of this process (a
    /// container process forked with `CLONE_PARENT` by a helper), and returns
    /// the receiver for its exit status. The caller must make sure the child
    /// cannot have exited yet (it waits for the caller's go); one that is
    /// gone already (reaped as an orphan) is an error, not a wait forever.
    pub fn adopt(&self, pid: i32) -> io::Result<oneshot::Receiver<ExitKind>> {
        let mut inner = self.lock();
        let (tx, rx) = oneshot::channel();
        if inner.waiters.contains_key(&pid) {
            return Err(io::Error::other(format!("pid {pid} is registered already")));
        }
        // SAFETY: signal 0 only checks that the process exists; with the lock
        // held the reaper cannot reap it between this check and the insert.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return Err(io::Error::other(format!("process {pid} is gone")));
        }
        inner.waiters.insert(pid, tx);
        Ok(rx)
    }

    /// Number of orphans (unregistered children) reaped so far.
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().orphans_reaped
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_now(&self) {
        let mut inner = self.lock();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
                Ok(s) => s,
            };
            let (pid, kind) = match status {
                WaitStatus::Exited(pid, code) => (pid, ExitKind::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, ExitKind::Signal(sig as i32)),
                _ => continue,
            };
            match inner.waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), status = ?kind, "process exited");
                    let _ = tx.send(kind);
                }
                None => {
                    inner.orphans_reaped += 1;
                    tracing::debug!(pid = pid.as_raw(), status = ?kind, "reaped orphan");
                }
            }
        }
    }

    /// Runs the reaper until the runtime stops: reaps on every `SIGCHLD`, and
    /// once a second in case a signal was coalesced away.
    pub async fn run(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGCHLD; reaping by polling");
                None
            }
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            self.reap_now();
        }
    }
}
