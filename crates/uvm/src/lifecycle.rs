//! The bodies of create and terminate, and the exit watcher (start is in
//! `start.rs`). Each runs in a task owned by the manager, under the lifecycle lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use uvm_guest::{ENTROPY_ROLE, GCS_ROLE, LOG_ROLE};
use uvm_proto::cmdline;
use uvm_schema::{ComputeSystem, Platform};
use uvm_vmm::UtilityVm;

use crate::manager::{lock, Inner, Listeners, VmInfo};
use crate::{CreateOptions, Error, Event, ExitError, ExitStatus, Guest, State};

/// Longest accepted VM id.
const MAX_ID_LEN: usize = 128;

pub(crate) fn validate_id(id: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 128 bytes");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Lcow => "lcow",
        Platform::Wcow => "wcow",
    }
}

/// A copy of `doc` whose kernel command line tells the agent who it is.
fn with_agent_cmdline(
    doc: &ComputeSystem,
    id: &str,
    platform: Platform,
    gcs_port: &str,
) -> ComputeSystem {
    let mut doc = doc.clone();
    if let Some(k) = doc
        .virtual_machine
        .as_mut()
        .and_then(|v| v.chipset.linux_kernel_direct.as_mut())
    {
        let extra = format!(
            "{}={id} {}={} {}={gcs_port}",
            cmdline::ID,
            cmdline::PLATFORM,
            platform_name(platform),
            cmdline::GCS_PORT
        );
        k.kernel_cmd_line = match k.kernel_cmd_line.trim() {
            "" => extra,
            s => format!("{s} {extra}"),
        };
    }
    doc
}

impl Inner {
    pub(crate) async fn create(self: Arc<Self>, opts: CreateOptions) -> Result<(), Error> {
        let _l = self.lifecycle.lock().await;
        let state = self.state();
        if state != State::NotCreated {
            return Err(Error::AlreadyCreated { state });
        }
        validate_id(&opts.id)?;
        for w in opts.document.validate().map_err(Error::InvalidDocument)? {
            tracing::warn!(target: "uvm::lifecycle", vm_id = %opts.id, path = %w.path, "VM document: {}", w.message);
        }
        let platform = self
            .config
            .platform
            .unwrap_or_else(|| opts.document.platform());
        let gcs_port = uvm_proto::ports::GCS.to_string();
        let doc = with_agent_cmdline(&opts.document, &opts.id, platform, &gcs_port);
        let lcow = platform == Platform::Lcow;
        let stdout_ports = self
            .config
            .stdout_ports
            .min(uvm_proto::ports::MAX_STDOUT_PORTS);
        let channels = uvm_guest::channel_set(&gcs_port, lcow, stdout_ports);
        let vm = self
            .hypervisor
            .create(&opts.id, &doc, &channels)
            .await
            .map_err(|e| Error::vmm("create VM", e))?;
        self.adopt_created(&opts.id, doc, platform, gcs_port, stdout_ports, vm)
            .await?;
        self.apply(Event::CreateOk)
            .map_err(|e| Error::InvalidState {
                op: "create_vm",
                state: e.from,
            })?;
        tracing::info!(target: "uvm::lifecycle", vm_id = %opts.id, platform = platform_name(platform), "VM created");
        Ok(())
    }

    /// Takes a VM the backend just created: its channels, the guest around
    /// the GCS listener, the exit watcher. Closes the VM when a channel is
    /// missing. The caller applies `CreateOk`.
    pub(crate) async fn adopt_created(
        self: &Arc<Self>,
        id: &str,
        doc: ComputeSystem,
        platform: Platform,
        gcs_port: String,
        stdout_ports: u32,
        vm: Arc<dyn UtilityVm>,
    ) -> Result<(), Error> {
        let lcow = platform == Platform::Lcow;
        let gcs = vm.take_channel(GCS_ROLE);
        let log = vm.take_channel(LOG_ROLE);
        let entropy = if lcow {
            vm.take_channel(ENTROPY_ROLE)
        } else {
            None
        };
        let missing = match (&gcs, &log, &entropy) {
            (None, _, _) => Some(GCS_ROLE),
            (_, None, _) => Some(LOG_ROLE),
            (_, _, None) if lcow => Some(ENTROPY_ROLE),
            _ => None,
        };
        if let Some(role) = missing {
            if let Err(e) = vm.close().await {
                tracing::warn!(target: "uvm::lifecycle", vm_id = %id, error = %e, "closing VM after failed create");
            }
            return Err(Error::MissingChannel { role });
        }
        let stdout_listeners = (0..uvm_proto::ports::MAX_STDOUT_PORTS)
            .filter_map(|i| {
                let listener = vm.take_channel(&uvm_guest::stdout_role(i))?;
                Some((uvm_proto::ports::stdout_port_name(i), listener))
            })
            .collect();
        let guest = Guest::new(id.to_string(), gcs)
            .with_rpc_timeout(self.config.rpc_timeout)
            .with_vm_exit_grace(crate::VM_EXIT_GRACE)
            .with_stdout_ports(stdout_listeners);
        *self.devices.lock().await = Some(crate::devices::Devices::for_document(&doc));
        *lock(&self.info) = Some(VmInfo {
            id: id.to_string(),
            platform,
            gcs_port,
            assigned_memory_bytes: doc.memory_mb() << 20,
            stdout_ports,
            document: doc,
        });
        *lock(&self.listeners) = Listeners { log, entropy };
        *lock(&self.guest) = Some(Arc::new(guest));
        *lock(&self.vm) = Some(vm.clone());
        self.clone().spawn_exit_watcher(vm);
        Ok(())
    }

    pub(crate) async fn terminate(self: Arc<Self>) -> Result<(), Error> {
        let _l = self.lifecycle.lock().await;
        let state = self.state();
        let vm = match (state, self.vm()) {
            (State::NotCreated | State::Terminated, _) | (_, None) => {
                self.reset_abort();
                return Ok(());
            }
            (_, Some(vm)) => vm,
        };
        let id = self.id();
        self.terminating.store(true, Ordering::SeqCst);
        // Listeners a start never took.
        *lock(&self.listeners) = Listeners::default();
        if let Some(g) = self.guest() {
            g.close();
        }
        let terminated = vm.terminate().await;
        // Always release host resources, even when terminate failed.
        let closed = vm.close().await;
        match (terminated, closed) {
            (Ok(()), Ok(())) => {
                self.record_exit(vm.as_ref());
                self.vm_exited.send_replace(true);
                self.vm_gone.cancel();
                let _ = self.apply(Event::TerminateOk);
                let reason = vm.exit_reason().map(|r| r.to_string()).unwrap_or_default();
                tracing::info!(target: "uvm::lifecycle", vm_id = %id, %reason, "VM exited");
                Ok(())
            }
            (t, c) => {
                let _ = self.apply(Event::TerminateFailed);
                self.reset_abort();
                let err = match (t, c) {
                    (Err(t), c) => {
                        if let Err(c) = c {
                            tracing::warn!(target: "uvm::lifecycle", vm_id = %id, error = %c, "closing VM failed too");
                        }
                        Error::vmm("terminate VM", t)
                    }
                    (Ok(()), Err(c)) => Error::vmm("close VM", c),
                    (Ok(()), Ok(())) => unreachable!("handled above"),
                };
                tracing::warn!(target: "uvm::lifecycle", vm_id = %id, error = %err, "VM terminate failed");
                Err(err)
            }
        }
    }

    fn record_exit(&self, vm: &dyn UtilityVm) {
        let reason = lock(&self.exit_override)
            .clone()
            .or_else(|| vm.exit_reason());
        let err = reason.filter(|r| !r.is_clean()).map(ExitError);
        let stopped_time = vm.stopped_time().unwrap_or_else(SystemTime::now);
        *lock(&self.exit_status) = Some(ExitStatus { stopped_time, err });
    }

    /// Watches for the VM process exiting. On its own (not terminate's doing):
    /// Running/Invalid → Terminated, guest connection closed, host resources
    /// released. Either way it then releases `wait`.
    fn spawn_exit_watcher(self: Arc<Self>, vm: Arc<dyn UtilityVm>) {
        tokio::spawn(async move {
            let reason = vm.wait().await;
            // First, so calls whose connection just broke report this reason.
            if let Some(g) = self.guest() {
                g.note_vm_exit(reason.clone());
            }
            self.vm_gone.cancel();
            {
                // Terminate (which holds this lock while it runs) owns an exit it
                // asked for; the watcher handles only natural exits.
                let _l = self.lifecycle.lock().await;
                let natural = !self.terminating.load(Ordering::SeqCst)
                    && matches!(self.state(), State::Running | State::Invalid);
                if natural {
                    if let Some(g) = self.guest() {
                        g.close();
                    }
                    let id = self.id();
                    if let Err(e) = vm.close().await {
                        tracing::warn!(target: "uvm::lifecycle", vm_id = %id, error = %e, "releasing exited VM");
                    }
                    self.record_exit(vm.as_ref());
                    let _ = self.apply(Event::VmExited);
                    tracing::info!(target: "uvm::lifecycle", vm_id = %id, %reason, clean = reason.is_clean(), "VM exited");
                }
            }
            // Released only now, so a waiter sees the settled state and exit status.
            self.vm_exited.send_replace(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("my-uvm_1.a").is_ok());
        for bad in ["", "a b", "x=y", &"a".repeat(129)] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cmdline_gets_agent_keys() {
        let doc = uvm_schema::LcowDocumentBuilder::new("/k", "/i")
            .cmdline("console=ttyS0")
            .build();
        let d = with_agent_cmdline(&doc, "vm1", Platform::Lcow, "p");
        assert_eq!(
            d.kernel_cmdline(),
            "console=ttyS0 uvm.id=vm1 uvm.platform=lcow uvm.gcs_port=p"
        );
        assert_eq!(doc.kernel_cmdline(), "console=ttyS0");
    }
}
