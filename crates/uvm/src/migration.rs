//! Live migration of a Running VM from one [`crate::Manager`] to another on
//! the same host (DESIGN §13), with hcsshim's phases.
//!
//! The destination QEMU is created with the source's document and device
//! set, waiting (`-incoming`) on a socket in its runtime dir; the source
//! QEMU streams RAM and device state into it (QMP `migrate`), which a
//! second host would receive the same way. The guest's GCS connection
//! survives: writes from the host are held until the source has read
//! everything sent, and once the source has stopped, the host side of the
//! connection moves to the destination's socket after the source's last
//! bytes are read. The destination Manager adopts the source's guest, so
//! processes started before the move keep their stdio and exit code.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uvm_schema::Platform;
use uvm_vmm::UtilityVm;

use crate::manager::{lock, Inner, Listeners};
use crate::{Error, Event, ExitReason, State};

/// Where a migration is (hcsshim's phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Nothing yet.
    NotStarted,
    /// The source was checked and the migration set up on it.
    SourceInitialized,
    /// The destination VM exists, waiting for the state (its Manager is Created).
    DestinationInitialized,
    /// The state is streaming; the guest still runs on the source.
    TransferStarted,
    /// The destination has the whole state; the source is stopped.
    TransferCompleted,
    /// The destination runs the guest, the source is Terminated ("migrated").
    Finalized,
    /// Cancelled: the source runs on, the destination was terminated.
    Cancelled,
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// Id of the destination VM (its runtime dir; the guest keeps its hostname).
    pub destination_id: String,
    /// Cap on the transfer rate, bytes/s (`None`: as fast as it goes).
    pub max_bandwidth: Option<u64>,
    /// Cancelling it before `TransferCompleted` cancels the migration.
    pub cancel: CancellationToken,
    /// Receives each phase as it is reached.
    pub progress: Option<watch::Sender<MigrationPhase>>,
}

impl MigrationOptions {
    /// Options migrating to a VM called `destination_id`.
    pub fn new(destination_id: impl Into<String>) -> Self {
        MigrationOptions {
            destination_id: destination_id.into(),
            max_bandwidth: None,
            cancel: CancellationToken::new(),
            progress: None,
        }
    }

    fn phase(&self, p: MigrationPhase) {
        if let Some(tx) = &self.progress {
            tx.send_replace(p);
        }
    }
}

/// How long the source may take to read what the host already sent it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on accepting the destination's channel connections (QEMU made them at spawn).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

impl Inner {
    pub(crate) async fn migrate(
        self: Arc<Self>,
        dest: Arc<Inner>,
        opts: MigrationOptions,
    ) -> Result<(), Error> {
        if Arc::ptr_eq(&self, &dest) {
            return Err(Error::FailedPrecondition(
                "a VM cannot migrate into its own manager",
            ));
        }
        let src_lock = self.lifecycle.lock().await;
        let state = self.state();
        let (State::Running, Some(vm), Some(guest), Some(info)) =
            (state, self.vm(), self.guest(), self.info())
        else {
            return Err(Error::InvalidState {
                op: "migrate",
                state,
            });
        };
        if info.stdout_ports > 0 {
            return Err(Error::FailedPrecondition(
                "live migration needs a VM without stdout ports (ManagerConfig::stdout_ports = 0): a process's stdout port cannot be handed over",
            ));
        }
        let Some(handover) = guest.handover() else {
            return Err(Error::FailedPrecondition(
                "the guest connection cannot be handed over",
            ));
        };
        opts.phase(MigrationPhase::SourceInitialized);

        let dest_lock = dest.lifecycle.lock().await;
        if dest.state() != State::NotCreated {
            return Err(Error::AlreadyCreated {
                state: dest.state(),
            });
        }
        crate::lifecycle::validate_id(&opts.destination_id)?;
        let lcow = info.platform == Platform::Lcow;
        let channels = uvm_guest::channel_set(&info.gcs_port, lcow, 0);
        let dvm = dest
            .hypervisor
            .create_incoming(
                &opts.destination_id,
                &info.document,
                &channels,
                &uvm_vmm::Incoming::default(),
            )
            .await
            .map_err(|e| Error::vmm("create the destination VM", e))?;
        dest.adopt_created(
            &opts.destination_id,
            info.document.clone(),
            info.platform,
            info.gcs_port.clone(),
            0,
            dvm.clone(),
        )
        .await?;
        dest.apply(Event::CreateOk)
            .map_err(|e| Error::InvalidState {
                op: "migrate",
                state: e.from,
            })?;
        opts.phase(MigrationPhase::DestinationInitialized);

        let moved = self.transfer(&vm, &dvm, &handover, &opts).await;
        if let Err(e) = moved {
            handover.release_writes();
            drop(dest_lock);
            if let Err(t) = dest.clone().terminate().await {
                tracing::warn!(target: "uvm::lifecycle", vm_id = %opts.destination_id, error = %t, "terminating the migration destination");
            }
            if matches!(e, Error::MigrationCancelled) {
                opts.phase(MigrationPhase::Cancelled);
            }
            return Err(e);
        }
        opts.phase(MigrationPhase::TransferCompleted);

        // The destination takes over the guest (and its processes).
        let dest_guest = dest.guest().expect("adopted at create");
        let stream = dest_guest
            .accept(ACCEPT_TIMEOUT)
            .await
            .map_err(|e| Error::guest("accept the destination's GCS connection", e))?;
        dest_guest.close();
        handover.switch_to(stream);
        let Listeners { log, entropy } = std::mem::take(&mut *lock(&dest.listeners));
        if let Some(l) = entropy {
            crate::channels::hold_open(l, dest.vm_gone.clone());
        }
        if let Some(l) = log {
            crate::channels::spawn_log_relay(
                l,
                info.platform,
                dest.vm_gone.clone(),
                dest.logs_active.clone(),
                opts.destination_id.clone(),
            );
        }
        *lock(&self.guest) = None;
        *lock(&dest.guest) = Some(guest.clone());
        dvm.start()
            .await
            .map_err(|e| Error::vmm("start the destination VM", e))?;
        *lock(&dest.start_time) = Some(
            dvm.started_time()
                .unwrap_or_else(std::time::SystemTime::now),
        );
        dest.apply(Event::StartOk)
            .map_err(|e| Error::InvalidState {
                op: "migrate",
                state: e.from,
            })?;
        drop(dest_lock);
        *lock(&self.exit_override) = Some(ExitReason::Migrated {
            to: opts.destination_id.clone(),
        });
        drop(src_lock);
        self.clone().terminate().await?;
        tracing::info!(target: "uvm::lifecycle", vm_id = %info.id, to = %opts.destination_id, "VM migrated");
        opts.phase(MigrationPhase::Finalized);
        Ok(())
    }

    /// Streams the source into the destination; cancel-aware.
    async fn transfer(
        &self,
        vm: &Arc<dyn UtilityVm>,
        dvm: &Arc<dyn UtilityVm>,
        handover: &uvm_guest::Handover,
        opts: &MigrationOptions,
    ) -> Result<(), Error> {
        let socket = dvm
            .listen_for_migration()
            .await
            .map_err(|e| Error::vmm("listen for the migration", e))?;
        handover.hold_writes();
        if !handover.wait_written(DRAIN_TIMEOUT).await {
            return Err(Error::Timeout {
                op: "the source VM reading what the host sent",
                timeout: DRAIN_TIMEOUT,
            });
        }
        opts.phase(MigrationPhase::TransferStarted);
        let both = async {
            tokio::try_join!(
                async {
                    vm.migrate_out(&socket, opts.max_bandwidth)
                        .await
                        .map_err(|e| Error::vmm("migrate the VM", e))
                },
                async {
                    dvm.wait_migration_in()
                        .await
                        .map_err(|e| Error::vmm("receive the VM", e))
                },
            )
        };
        tokio::select! {
            r = both => r.map(drop),
            _ = opts.cancel.cancelled() => {
                if let Err(e) = vm.cancel_migration().await {
                    tracing::warn!(target: "uvm::lifecycle", vm_id = %self.id(), error = %e, "cancelling the migration");
                }
                Err(Error::MigrationCancelled)
            }
        }
    }
}
