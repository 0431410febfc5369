//! Which UVM a task runs in: one per container, or one per pod when the
//! CRI sandbox annotations group containers (one shim process per group,
//! as Kata does). The VM is created and started by the group's first task.

use std::path::Path;
use std::sync::Arc;

use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use uvm::{Controller, Manager, StartOptions, VmOrigin};

use crate::config::RuntimeConfig;
use crate::error::{Result, ShimError};

/// CRI annotation: `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the pod's sandbox container id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The group a container's shim serves: its pod's sandbox id when the CRI
/// annotations name one, else the container's own id.
pub fn grouping(spec: &Spec, id: &str) -> String {
    let a = spec.annotations().clone().unwrap_or_default();
    match (a.get(CONTAINER_TYPE).map(String::as_str), a.get(SANDBOX_ID)) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.clone(),
        _ => id.to_string(),
    }
}

/// The VM id of a group: `<namespace>-<group>` when it is a valid VM id,
/// else a hash of it.
pub fn vm_id(namespace: &str, group: &str) -> String {
    let plain = format!("{namespace}-{group}");
    if uvm_vmm::runtime_dir::valid_vm_id(&plain) {
        return plain;
    }
    let hash = Sha256::digest(plain.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("ctrd-{}", &hex[..32])
}

/// The group's UVM.
pub struct Sandbox {
    id: String,
    manager: Arc<Manager>,
    started: Mutex<bool>,
}

impl Sandbox {
    /// The (not yet created) VM `id`.
    pub fn new(id: String) -> Self {
        Self {
            id,
            manager: Arc::new(Manager::new()),
            started: Mutex::new(false),
        }
    }

    /// The VM's controller.
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Creates and starts the VM unless it runs already, with the runtime
    /// config at `config` (or the default one). A failed start leaves no VM.
    pub async fn ensure_running(&self, config: Option<&Path>) -> Result<()> {
        let mut started = self.started.lock().await;
        if *started {
            if self.manager.state() != uvm::State::Running {
                return Err(ShimError::FailedPrecondition(format!(
                    "the UVM {} is not running any more ({:?})",
                    self.id,
                    self.manager.state()
                )));
            }
            return Ok(());
        }
        let (cfg, path) = RuntimeConfig::load(config)?;
        let origin = cfg.origin("containerd-shim-uvm-v2")?;
        match &origin {
            VmOrigin::Document(_) => {
                tracing::info!(vm = %self.id, config = ?path, "booting the UVM")
            }
            VmOrigin::Snapshot(dir) => {
                tracing::info!(vm = %self.id, config = ?path, snapshot = %dir.display(), "restoring the UVM")
            }
        }
        let created = self.manager.create_vm_from(self.id.clone(), origin).await;
        created.map_err(|e| ShimError::uvm(format!("cannot create the UVM {}", self.id), e))?;
        if let Err(e) = self.manager.start_vm(StartOptions::default()).await {
            let _ = self.manager.terminate_vm().await;
            return Err(ShimError::uvm(
                format!("cannot start the UVM {}", self.id),
                e,
            ));
        }
        *started = true;
        Ok(())
    }

    /// Terminates the VM if it was started (idempotent).
    pub async fn terminate(&self) {
        let started = self.started.lock().await;
        if *started {
            if let Err(e) = self.manager.terminate_vm().await {
                tracing::warn!(vm = %self.id, error = %e, "terminating the UVM");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(annotations: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        s
    }

    #[test]
    fn pods_group_by_sandbox_id() {
        assert_eq!(grouping(&Spec::default(), "c1"), "c1");
        let sandbox = spec_with(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")]);
        assert_eq!(grouping(&sandbox, "pod1"), "pod1");
        let member = spec_with(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")]);
        assert_eq!(grouping(&member, "c2"), "pod1");
    }

    #[test]
    fn vm_ids_are_valid_even_for_long_groups() {
        assert_eq!(vm_id("default", "t1"), "default-t1");
        let long = vm_id("k8s.io", &"a".repeat(64));
        assert!(uvm_vmm::runtime_dir::valid_vm_id(&long), "{long}");
        assert_ne!(long, vm_id("k8s.io", &"b".repeat(64)));
    }
}
