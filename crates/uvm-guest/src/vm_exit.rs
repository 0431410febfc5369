//! What a broken GCS connection means: once the VM is known to be gone, a
//! call that lost its connection reports why the VM stopped
//! ([`GuestError::VmExited`]) instead of the transport's own words.

use std::time::Duration;

use tokio::sync::watch;
use uvm_vmm::ExitReason;

use crate::GuestError;

/// The VM's exit reason as the controller learns it, shared by a [`crate::Guest`]
/// and every process and call it started.
#[derive(Debug, Clone)]
pub(crate) struct VmExitWatch {
    reason: watch::Receiver<Option<ExitReason>>,
    /// How long a call whose connection broke waits for the reason.
    grace: Duration,
}

impl VmExitWatch {
    /// A watch and the sender the controller notes the exit through.
    pub(crate) fn new(grace: Duration) -> (watch::Sender<Option<ExitReason>>, Self) {
        let (tx, reason) = watch::channel(None);
        (tx, VmExitWatch { reason, grace })
    }

    /// The same watch with another grace.
    pub(crate) fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The reason, if the VM already exited.
    pub(crate) fn reason(&self) -> Option<ExitReason> {
        self.reason.borrow().clone()
    }

    /// The error for a call of `op` whose gRPC status is `status`: a typed
    /// refusal of the agent stays what it is; a transport failure becomes
    /// [`GuestError::VmExited`] when the VM's exit is known within the grace,
    /// else [`GuestError::ConnectionLost`].
    pub(crate) async fn explain(&self, op: &'static str, status: tonic::Status) -> GuestError {
        if !is_transport_failure(&status) {
            return GuestError::from_status(op, status);
        }
        tracing::debug!(target: "uvm::guest", op, status = ?status, "GCS connection broke");
        match self.wait(self.grace).await {
            Some(reason) => GuestError::VmExited { reason },
            None => GuestError::ConnectionLost { op },
        }
    }

    /// `e`, or the VM's exit when that is known within the grace (a host-side
    /// relay that failed because the VM went away).
    pub(crate) async fn or_vm_exit(&self, e: GuestError) -> GuestError {
        match self.wait(self.grace).await {
            Some(reason) => GuestError::VmExited { reason },
            None => e,
        }
    }

    /// The error for a call cut short by [`crate::Guest::close`]: the VM's
    /// exit when that is why the connection was closed.
    pub(crate) fn on_close(&self) -> GuestError {
        match self.reason() {
            Some(reason) => GuestError::VmExited { reason },
            None => GuestError::Closed,
        }
    }

    /// Waits up to `bound` for the exit reason.
    pub(crate) async fn wait(&self, bound: Duration) -> Option<ExitReason> {
        if let Some(r) = self.reason() {
            return Some(r);
        }
        let mut rx = self.reason.clone();
        let seen = tokio::time::timeout(bound, rx.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()?
            .clone();
        seen
    }
}

/// Whether `status` came from the connection breaking rather than from the
/// agent. The agent only answers with the codes of the `gcs.proto`
/// contract and never attaches a source; tonic attaches the h2/hyper/io
/// error it saw when the stream or the connection failed.
pub(crate) fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The status for a stream that ended without a status or `exited`: the
/// connection went away.
pub(crate) fn stream_ended() -> tonic::Status {
    tonic::Status::from_error(Box::new(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "exec stream ended without exit status",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transport_failures_wait_for_the_reason_and_refusals_do_not() {
        let (tx, watch) = VmExitWatch::new(Duration::from_secs(5));
        let refusal = watch.explain("exec", tonic::Status::not_found("ls")).await;
        assert!(
            matches!(refusal, GuestError::CommandNotFound { .. }),
            "{refusal:?}"
        );
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "h2 protocol error: broken pipe",
        )));
        let w = watch.clone();
        let explained = tokio::spawn(async move { w.explain("exec", broken).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Some(ExitReason::Signaled { signal: 9 }));
        let e = explained.await.unwrap();
        assert!(
            matches!(
                &e,
                GuestError::VmExited {
                    reason: ExitReason::Signaled { signal: 9 }
                }
            ),
            "{e:?}"
        );
        assert!(matches!(watch.on_close(), GuestError::VmExited { .. }));
    }

    #[tokio::test]
    async fn without_an_exit_the_connection_is_just_lost() {
        let (_tx, watch) = VmExitWatch::new(Duration::from_millis(20));
        let e = watch.explain("stats", stream_ended()).await;
        assert!(
            matches!(e, GuestError::ConnectionLost { op: "stats" }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the connection to the guest agent broke during stats"
        );
        assert!(matches!(watch.on_close(), GuestError::Closed));
        // An agent's own UNAVAILABLE answer is the agent's, not the transport's.
        let answered = watch
            .explain("stats", tonic::Status::unavailable("busy"))
            .await;
        assert_eq!(
            answered.to_string(),
            "stats failed in the guest agent: busy"
        );
    }
}
