//! One process the shim tracks: a task's init or one of its execs, with
//! its stdio, pid, status and exit (which `Wait` callers watch).

use std::time::SystemTime;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use tokio::sync::{oneshot, watch};
use uvm_guest::ProcessControl;

use crate::stdio::{Exit, Opened, StdioPaths};

/// A tracked process.
pub struct TrackedProcess {
    /// Its stdio as containerd gave it.
    pub stdio: StdioPaths,
    /// Stdio opened at create, used by start.
    pub opened: Option<Opened>,
    /// Guest pid (0 before start).
    pub pid: u32,
    /// Signals and resizes, once started.
    pub control: Option<ProcessControl>,
    /// Closes stdin, once started.
    pub close_stdin: Option<oneshot::Sender<()>>,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl TrackedProcess {
    /// A created, not started process.
    pub fn new(stdio: StdioPaths, opened: Opened) -> Self {
        Self {
            stdio,
            opened: Some(opened),
            pid: 0,
            control: None,
            close_stdin: None,
            exit_tx: watch::channel(None).0,
        }
    }

    /// Its exit, once it ended.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Records the exit (first one wins).
    pub fn set_exit(&self, exit: Exit) {
        self.exit_tx.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                true
            } else {
                false
            }
        });
    }

    /// A receiver that sees the exit.
    pub fn watch_exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    /// containerd's view of it.
    pub fn status(&self) -> Status {
        if self.exit().is_some() {
            Status::STOPPED
        } else if self.pid != 0 {
            Status::RUNNING
        } else {
            Status::CREATED
        }
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_follows_start_and_exit_and_the_first_exit_wins() {
        let opened = crate::stdio::open(&StdioPaths::default()).await.unwrap();
        let mut p = TrackedProcess::new(StdioPaths::default(), opened);
        assert_eq!(p.status(), Status::CREATED);
        p.pid = 7;
        assert_eq!(p.status(), Status::RUNNING);
        let mut w = p.watch_exit();
        let e = Exit {
            status: 3,
            at: SystemTime::now(),
            oom_killed: false,
        };
        p.set_exit(e);
        p.set_exit(Exit { status: 9, ..e });
        assert_eq!(p.status(), Status::STOPPED);
        w.changed().await.unwrap();
        assert_eq!(w.borrow().unwrap().status, 3);
    }
}
