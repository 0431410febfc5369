//! Per-platform channel tasks: entropy and guest log relay.

use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uvm_schema::Platform;

/// How long a log stream may keep draining after the VM process is gone.
pub(crate) const LOG_DRAIN: Duration = Duration::from_secs(2);

/// LCOW: accepts the entropy connection and writes 512 random bytes, then
/// holds the connection open until the VM is gone (a hang-up would make QEMU
/// drop bytes the guest has not read yet). Gives up when the VM is gone.
pub(crate) fn spawn_entropy(listener: UnixListener, gone: CancellationToken, vm_id: String) {
    tokio::spawn(async move {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = gone.cancelled() => return,
        };
        let r = match accepted {
            Ok((mut stream, _)) => match uvm_guest::send_entropy(&mut stream).await {
                Ok(()) => {
                    gone.cancelled().await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(target: "uvm::lifecycle", vm_id, error = %e, "sending entropy failed");
        }
    });
}

/// Accepts a channel connection the host has nothing to say on (the
/// entropy channel of a migrated VM) and holds it open until the VM is gone.
pub(crate) fn hold_open(listener: UnixListener, gone: CancellationToken) {
    tokio::spawn(async move {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = gone.cancelled() => return,
        };
        if let Ok((stream, _)) = accepted {
            gone.cancelled().await;
            drop(stream);
        }
    });
}

/// How long the restored agent may take to answer the reseed.
const RESEED_TIMEOUT: Duration = Duration::from_secs(10);

/// Restore: accepts the entropy connection, has the agent reseed and drop
/// the GCS connection its snapshot captured (bounded), then holds the
/// connection open until the VM is gone, as [`spawn_entropy`] does.
pub(crate) async fn reseed_restored(
    listener: UnixListener,
    gone: CancellationToken,
    vm_id: String,
) -> Result<(), crate::Error> {
    let io = crate::Error::Reseed;
    let (mut stream, _) = tokio::time::timeout(RESEED_TIMEOUT, listener.accept())
        .await
        .map_err(|_| crate::Error::Timeout {
            op: "entropy connection of the restored VM",
            timeout: RESEED_TIMEOUT,
        })?
        .map_err(io)?;
    uvm_guest::reseed_restored(&mut stream, RESEED_TIMEOUT)
        .await
        .map_err(io)?;
    tracing::debug!(target: "uvm::lifecycle", vm_id, "restored guest reseeded");
    tokio::spawn(async move {
        gone.cancelled().await;
        drop(stream);
    });
    Ok(())
}

/// Counts a running relay in `active` for its lifetime (also on abort or panic).
struct Active(watch::Sender<usize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Relays guest logs to `tracing`. LCOW: one connection, whose end finishes
/// the relay. WCOW: re-accepts after each connection ends, one at a time,
/// until the VM is gone. `active` counts running relays (`wait` waits for 0).
pub(crate) fn spawn_log_relay(
    listener: UnixListener,
    platform: Platform,
    gone: CancellationToken,
    active: watch::Sender<usize>,
    vm_id: String,
) {
    active.send_modify(|n| *n += 1);
    let guard = Active(active);
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = gone.cancelled() => break,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(target: "uvm::lifecycle", vm_id, error = %e, "accepting log connection");
                    break;
                }
            };
            let drain_deadline = async {
                gone.cancelled().await;
                tokio::time::sleep(LOG_DRAIN).await;
            };
            tokio::select! {
                _ = uvm_guest::relay_logs(stream, &vm_id) => {}
                _ = drain_deadline => break,
            }
            if platform == Platform::Lcow {
                break;
            }
        }
    });
}
