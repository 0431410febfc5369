//! The shim's life cycle as containerd runs it (runtime v2): `start` finds
//! or spawns the shim of the container's group and prints its socket,
//! the daemon serves the Task API until its last task is gone, and
//! `delete` cleans up after a shim that died.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error as LibError, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::process::timestamp;
use crate::rootfs;
use crate::sandbox::{grouping, vm_id};
use crate::service::Service;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.uvm.v2";
/// Environment variable carrying the group from `start` to the daemon.
const GROUP_ENV: &str = "UVM_SHIM_GROUP";
/// Bound on the spawned daemon reporting that it serves.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit status of tasks of a shim that died (SIGKILL).
const DEAD_SHIM_STATUS: u32 = 128 + 9;

/// The shim of one group (one UVM).
pub struct UvmShim {
    namespace: String,
    group: String,
    exit: Arc<ExitSignal>,
}

fn other(e: impl std::fmt::Display) -> LibError {
    LibError::Other(e.to_string())
}

/// The ttrpc socket of `group`: beside containerd's own socket, in `s/`
/// (`/run/containerd/s/<hash>` for the system containerd, as runc's shim).
pub fn socket_address(containerd_address: &str, namespace: &str, group: &str) -> String {
    let sock = containerd_address
        .strip_prefix("unix://")
        .unwrap_or(containerd_address);
    let dir = Path::new(sock)
        .parent()
        .unwrap_or(Path::new("/run/containerd"))
        .join("s");
    let hash = Sha256::digest(format!("{sock}/{namespace}/{group}").as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{}/{hex}", dir.display())
}

fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

fn serving(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(address)).is_ok()
}

impl UvmShim {
    async fn spawn_daemon(&self, opts: &StartOpts, address: &str) -> Result<(), LibError> {
        let exe = std::env::current_exe().map_err(other)?;
        let mut cmd = std::process::Command::new(exe);
        cmd.current_dir(std::env::current_dir().map_err(other)?)
            .env(GROUP_ENV, &self.group)
            .args([
                "-namespace",
                &opts.namespace,
                "-id",
                &opts.id,
                "-address",
                &opts.address,
                "-socket",
                address,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if opts.debug {
            cmd.arg("-debug");
        }
        // SAFETY: setsid is async-signal-safe; the daemon leaves containerd's
        // session so that it outlives a containerd restart.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| other(format!("cannot spawn the shim daemon: {e}")))?;
        // The daemon closes its stdout once it serves.
        let mut out = child.stdout.take().expect("piped");
        let mut sink = Vec::new();
        match tokio::time::timeout(SPAWN_TIMEOUT, out.read_to_end(&mut sink)).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = child.start_kill();
                Err(other(format!(
                    "the shim daemon did not start serving within {SPAWN_TIMEOUT:?}"
                )))
            }
        }
    }
}

#[async_trait]
impl Shim for UvmShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let group = std::env::var(GROUP_ENV).unwrap_or_else(|_| args.id.clone());
        Self {
            namespace: args.namespace.clone(),
            group,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, LibError> {
        // containerd runs `start` in the bundle directory.
        let spec = Spec::load("config.json")
            .map_err(|e| other(format!("the bundle's config.json: {e}")))?;
        self.group = grouping(&spec, &opts.id);
        let address = socket_address(&opts.address, &opts.namespace, &self.group);
        if !serving(&address) {
            let _ = std::fs::remove_file(socket_path(&address));
            self.spawn_daemon(&opts, &address).await?;
        }
        std::fs::write("address", &address).map_err(other)?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, LibError> {
        let bundle = std::env::current_dir().map_err(other)?;
        tracing::info!(bundle = %bundle.display(), "cleaning up after a dead shim");
        rootfs::unmount(&bundle).map_err(|e| other(e.sentence()))?;
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            if !serving(address.trim()) {
                let _ = std::fs::remove_file(socket_path(address.trim()));
            }
        }
        // QEMU died with the shim (PDEATHSIG); its runtime dir has no owner now.
        if let Err(e) =
            uvm_vmm::sweep_stale_runtime_dirs(&uvm_vmm::runtime_dir::default_runtime_root())
        {
            tracing::warn!(error = %e, "sweeping stale UVM runtime dirs");
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: DEAD_SHIM_STATUS,
            exited_at: timestamp(SystemTime::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            self.namespace.clone(),
            publisher,
            self.exit.clone(),
            vm_id(&self.namespace, &self.group),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_live_beside_containerds_and_differ_per_group() {
        let a = socket_address("/tmp/t/containerd.sock", "default", "g1");
        assert!(a.starts_with("unix:///tmp/t/s/"), "{a}");
        assert_eq!(a.len(), "unix:///tmp/t/s/".len() + 64);
        assert_ne!(a, socket_address("/tmp/t/containerd.sock", "default", "g2"));
        assert_ne!(a, socket_address("/tmp/t/containerd.sock", "other", "g1"));
        let sys = socket_address("unix:///run/containerd/containerd.sock", "k8s.io", "p");
        assert!(sys.starts_with("unix:///run/containerd/s/"), "{sys}");
    }
}
