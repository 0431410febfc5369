//! The body of `start_vm`: channel tasks, vCPUs, GCS handshake, finalize
//! and policy, each step raced against an abort and against the VM exiting.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use uvm_guest::GuestError;
use uvm_schema::Platform;
use uvm_vmm::UtilityVm;

use crate::channels::{reseed_restored, spawn_entropy, spawn_log_relay};
use crate::manager::{lock, Inner, Listeners};
use crate::{Error, Event, ExitError, StartOptions, State};

/// How long a failed start step waits to see whether the VM exited (a dying
/// QEMU resets the GCS socket a moment before the backend reaps it).
const EXIT_GRACE: Duration = Duration::from_millis(1000);

/// Races a start step against an abort and against the VM exiting. A step
/// that fails because the VM died reports the exit reason instead.
async fn race<T>(
    abort: &CancellationToken,
    vm: &Arc<dyn UtilityVm>,
    step: &'static str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let r = tokio::select! {
        biased;
        _ = abort.cancelled() => return Err(Error::StartAborted),
        reason = vm.wait() => return Err(Error::VmExited { during: step, reason: ExitError(reason) }),
        r = fut => r,
    };
    match r {
        Err(e) if may_be_vm_death(&e) => match tokio::time::timeout(EXIT_GRACE, vm.wait()).await {
            Ok(reason) => {
                tracing::debug!(target: "uvm::lifecycle", error = %e, "start step failed as the VM exited");
                Err(Error::VmExited {
                    during: step,
                    reason: ExitError(reason),
                })
            }
            Err(_) => Err(e),
        },
        r => r,
    }
}

/// Whether a failed step may just be the VM dying (a broken connection or
/// control channel), as opposed to a typed refusal.
pub(crate) fn may_be_vm_death(e: &Error) -> bool {
    use tonic::Code;
    use uvm_vmm::VmmError;
    match e {
        Error::Guest { source, .. } => match source {
            GuestError::Accept(_)
            | GuestError::Transport(_)
            | GuestError::Closed
            | GuestError::NotConnected
            | GuestError::ConnectionLost { .. }
            | GuestError::VmExited { .. } => true,
            GuestError::Rpc { code, .. } => matches!(
                code,
                Code::Unknown
                    | Code::Unavailable
                    | Code::Cancelled
                    | Code::Internal
                    | Code::Aborted
            ),
            _ => false,
        },
        Error::Vmm { source, .. } => matches!(
            source,
            VmmError::Qmp { .. }
                | VmmError::Exited { .. }
                | VmmError::Io { .. }
                | VmmError::State(_)
        ),
        _ => false,
    }
}

impl Inner {
    pub(crate) async fn start(
        self: Arc<Self>,
        opts: StartOptions,
        abort: CancellationToken,
    ) -> Result<(), Error> {
        let _l = tokio::select! {
            l = self.lifecycle.lock() => l,
            _ = abort.cancelled() => return Err(Error::StartAborted),
        };
        match self.state() {
            State::Running => return Ok(()),
            State::Created => {}
            state => {
                return Err(Error::InvalidState {
                    op: "start_vm",
                    state,
                })
            }
        }
        if abort.is_cancelled() {
            return Err(Error::StartAborted);
        }
        let id = self.id();
        match self.start_steps(&opts, &abort).await {
            Ok(started) => {
                *lock(&self.start_time) = Some(started);
                self.apply(Event::StartOk)
                    .map_err(|e| Error::InvalidState {
                        op: "start_vm",
                        state: e.from,
                    })?;
                tracing::info!(target: "uvm::lifecycle", vm_id = %id, "VM started");
                Ok(())
            }
            Err(e) => {
                let _ = self.apply(Event::StartFailed);
                tracing::warn!(target: "uvm::lifecycle", vm_id = %id, error = %e, "VM start failed");
                Err(e)
            }
        }
    }

    async fn start_steps(
        &self,
        opts: &StartOptions,
        abort: &CancellationToken,
    ) -> Result<SystemTime, Error> {
        let (Some(vm), Some(guest), Some(info)) = (self.vm(), self.guest(), self.info()) else {
            return Err(Error::InvalidState {
                op: "start_vm",
                state: self.state(),
            });
        };
        if opts.gcs_service_id.to_string() != info.gcs_port {
            return Err(Error::FailedPrecondition(
                "gcs_service_id differs from the GCS channel wired at create",
            ));
        }
        let restore = lock(&self.restore).clone();
        let Listeners { log, mut entropy } = std::mem::take(&mut *lock(&self.listeners));
        if let Some(plan) = &restore {
            race(abort, &vm, "load snapshot", async {
                vm.load_state(&plan.state)
                    .await
                    .map_err(|e| Error::vmm("load the snapshot", e))
            })
            .await?;
        } else if let Some(l) = entropy.take() {
            spawn_entropy(l, self.vm_gone.clone(), info.id.clone());
        }
        if let Some(l) = log {
            spawn_log_relay(
                l,
                info.platform,
                self.vm_gone.clone(),
                self.logs_active.clone(),
                info.id.clone(),
            );
        }
        let t0 = tokio::time::Instant::now();
        race(abort, &vm, "start VM", async {
            vm.start().await.map_err(|e| Error::vmm("start VM", e))
        })
        .await?;
        let cont = t0.elapsed();
        let started = vm.started_time().unwrap_or_else(SystemTime::now);
        if restore.is_some() {
            let Some(l) = entropy else {
                return Err(Error::MissingChannel {
                    role: uvm_guest::ENTROPY_ROLE,
                });
            };
            race(abort, &vm, "reseed the restored guest", async {
                reseed_restored(l, self.vm_gone.clone(), info.id.clone()).await
            })
            .await?;
        }
        // One budget for connect + Negotiate: QEMU connects the GCS chardev
        // at spawn, so `connect` returns at once and the first RPC is what
        // waits for the guest to boot. It gets what is left of gcs_timeout,
        // not the per-RPC rpc_timeout (a loaded host boots slower than that).
        let timeout = self.config.gcs_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let handshake = async {
            let connected = match restore {
                Some(_) => guest.connect_restored(timeout).await,
                None => guest.connect(timeout).await,
            };
            connected.map_err(|e| match e {
                GuestError::Timeout { .. } => Error::Timeout {
                    op: "GCS connect",
                    timeout,
                },
                e => Error::guest("GCS connect", e),
            })?;
            let connected = t0.elapsed();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            guest
                .negotiate_within(&opts.config_options, left)
                .await
                .map_err(|e| match e {
                    GuestError::Timeout { .. } => Error::Timeout {
                        op: "GCS connect and negotiate",
                        timeout,
                    },
                    e => Error::guest("negotiate", e),
                })?;
            let n = guest.negotiated();
            tracing::debug!(
                target: "uvm::lifecycle",
                vm_id = %info.id,
                guest_uptime_ms = n.map_or(0.0, |n| n.guest_uptime.as_secs_f64() * 1e3),
                cont_ms = cont.as_secs_f64() * 1e3,
                connected_ms = connected.as_secs_f64() * 1e3,
                negotiated_ms = t0.elapsed().as_secs_f64() * 1e3,
                "GCS negotiated (ms since cont was sent)"
            );
            Ok(())
        };
        let bounded = async {
            tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| Error::Timeout {
                    op: "GCS connect and negotiate",
                    timeout,
                })?
        };
        race(abort, &vm, "connect to guest", bounded).await?;
        if let Some(plan) = &restore {
            let resume = async {
                let step = guest
                    .resume(Some(&plan.hostname))
                    .await
                    .map_err(|e| Error::guest("resume the restored guest", e))?;
                tracing::debug!(target: "uvm::lifecycle", vm_id = %info.id, clock_step_ms = step.as_secs_f64() * 1e3, "restored guest resumed");
                Ok(())
            };
            race(abort, &vm, "resume the restored guest", resume).await?;
        }
        if info.platform == Platform::Wcow {
            let parent = opts.gcs_service_id.to_string();
            let finalize = async {
                guest
                    .update_hv_socket_address(&info.id, &parent)
                    .await
                    .map_err(|e| Error::guest("finalize", e))
            };
            race(abort, &vm, "finalize", finalize).await?;
        }
        if let Some(c) = &opts.confidential_options {
            let apply = async {
                guest
                    .apply_confidential_options(c)
                    .await
                    .map_err(|e| Error::guest("set security policy", e))
            };
            race(abort, &vm, "confidential options", apply).await?;
        }
        Ok(started)
    }
}
