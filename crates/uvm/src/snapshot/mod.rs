//! Snapshots of a Running VM and restores from them (DESIGN §13).
//!
//! A snapshot is a directory of its own (mode 0700): `state` (QEMU's
//! migration stream), `memory` when guest RAM was a shared memfd (sparse;
//! restored VMs map it copy-on-write) and `manifest.json`
//! ([`SnapshotManifest`]), written last. Taking one: the agent is quiesced
//! (new work refused), the vCPUs paused, the state saved, then the VM
//! resumes or terminates. Restoring is the seed's create + start: create
//! checks the dir, the manifest, the saved files, the kernel/initrd and the
//! QEMU version, and spawns QEMU waiting for the state; start loads it,
//! resumes the vCPUs, has the agent reseed and drop the connection the
//! snapshot captured, reconnects the GCS and steps the guest clock.

mod dir;
mod manifest;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use manifest::{FileFingerprint, SavedFile, SnapshotManifest, MANIFEST_FILE, MANIFEST_FORMAT};

use crate::manager::{lock, Inner};
use crate::{Error, Event, State};
use uvm_schema::Platform;

/// What a VM does once its snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSnapshot {
    /// Runs on (the agent accepts work again).
    #[default]
    Resume,
    /// Terminates (as `terminate_vm` does).
    Terminate,
}

/// What `create_vm_from_snapshot` needs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Id of the new VM (each restored VM needs its own).
    pub id: String,
    /// The snapshot dir.
    pub snapshot_dir: PathBuf,
    /// Hostname the guest takes on resume; `None`: the new id.
    pub hostname: Option<String>,
}

/// Why a snapshot cannot be taken or restored. Messages say what differs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file of (or named by) the snapshot cannot be read or written.
    #[error("{what} {}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot dir itself cannot be made or read.
    #[error("the dir")]
    Dir(#[source] std::io::Error),
    /// `manifest.json` does not parse.
    #[error("{} is not a snapshot manifest: {reason}", path.display())]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A saved file is not the size the snapshot wrote.
    #[error("{} is {bytes} bytes but the snapshot wrote {expected}: it was truncated or replaced", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size now.
        bytes: u64,
        /// The size recorded.
        expected: u64,
    },
    /// Something the state depends on is not what it was.
    #[error("the {what} differs: the snapshot was taken with {snapshot}, here {here}")]
    Mismatch {
        /// What differs (kernel, initrd, QEMU version, accelerator).
        what: &'static str,
        /// As recorded.
        snapshot: String,
        /// As found.
        here: String,
    },
    /// The dir may be read (or was made) by someone else.
    #[error("the dir {reason}")]
    UnsafeDir {
        /// The dir.
        path: PathBuf,
        /// Owner or mode, as a sentence fragment.
        reason: String,
    },
    /// The snapshot cannot be taken of this VM.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl Error {
    fn snapshot(dir: &Path, source: SnapshotError) -> Error {
        Error::Snapshot {
            dir: dir.to_path_buf(),
            source,
        }
    }
}

/// What a restore's start does besides a boot's (kept from create).
#[derive(Debug, Clone)]
pub(crate) struct RestorePlan {
    pub state: PathBuf,
    pub hostname: String,
}

impl Inner {
    pub(crate) async fn snapshot(
        self: Arc<Self>,
        dir: PathBuf,
        then: AfterSnapshot,
    ) -> Result<SnapshotManifest, Error> {
        let manifest = {
            let _l = self.lifecycle.lock().await;
            self.snapshot_locked(&dir).await?
        };
        if then == AfterSnapshot::Terminate {
            self.clone().terminate().await?;
        }
        Ok(manifest)
    }

    async fn snapshot_locked(&self, dir: &Path) -> Result<SnapshotManifest, Error> {
        let state = self.state();
        let (State::Running, Some(vm), Some(guest), Some(info)) =
            (state, self.vm(), self.guest(), self.info())
        else {
            return Err(Error::InvalidState {
                op: "snapshot",
                state,
            });
        };
        let fail = |e| Error::snapshot(dir, e);
        if info.platform != Platform::Lcow {
            return Err(fail(SnapshotError::Unsupported(
                "snapshots need the LCOW platform (the restore signal travels on its entropy channel)",
            )));
        }
        let doc = &info.document;
        let kernel_path = doc.kernel().unwrap_or(Path::new("")).to_path_buf();
        let initrd_path = doc.initrd().map(Path::to_path_buf);
        // Hashing reads the whole files: done before the guest is paused.
        let fingerprints = tokio::task::spawn_blocking(move || {
            let k = FileFingerprint::of("kernel", &kernel_path)?;
            let i = initrd_path
                .map(|p| FileFingerprint::of("initrd", &p))
                .transpose()?;
            Ok::<_, SnapshotError>((k, i))
        })
        .await
        .expect("fingerprinting does not panic");
        let (kernel, initrd) = fingerprints.map_err(fail)?;
        let made = dir::SnapshotDir::create(dir).map_err(fail)?;
        let agent_version = guest
            .quiesce()
            .await
            .map_err(|e| Error::guest("quiesce the guest", e))?;
        let saved = async {
            vm.pause()
                .await
                .map_err(|e| Error::vmm("pause the VM", e))?;
            vm.save_state(dir)
                .await
                .map_err(|e| Error::vmm("save the VM state", e))
        }
        .await;
        let saved = match saved {
            Ok(s) => s,
            Err(e) => {
                self.resume_after_snapshot(&vm, &guest).await;
                return Err(e);
            }
        };
        let hypervisor = vm.hypervisor_info();
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT,
            source_vm_id: info.id.clone(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            document: doc.clone(),
            stdout_ports: info.stdout_ports,
            hypervisor,
            kernel,
            initrd,
            agent_version,
            state: SavedFile {
                file: uvm_vmm::STATE_FILE.to_string(),
                bytes: saved.state_bytes,
            },
            memory: saved.memory_file.then(|| SavedFile {
                file: uvm_vmm::MEMORY_FILE.to_string(),
                bytes: info.assigned_memory_bytes,
            }),
        };
        if let Err(e) = manifest.write(dir) {
            self.resume_after_snapshot(&vm, &guest).await;
            return Err(fail(e));
        }
        made.keep();
        tracing::info!(
            target: "uvm::lifecycle",
            vm_id = %info.id,
            dir = %dir.display(),
            state_bytes = saved.state_bytes,
            memory_data_bytes = saved.memory_data_bytes,
            "snapshot written"
        );
        self.resume_after_snapshot(&vm, &guest).await;
        Ok(manifest)
    }

    /// Restarts the vCPUs and un-quiesces the agent (best effort: the VM
    /// may be about to terminate anyway).
    async fn resume_after_snapshot(
        &self,
        vm: &Arc<dyn uvm_vmm::UtilityVm>,
        guest: &Arc<crate::Guest>,
    ) {
        if let Err(e) = vm.resume().await {
            tracing::warn!(target: "uvm::lifecycle", vm_id = %self.id(), error = %e, "resuming the VM after a snapshot");
        }
        if let Err(e) = guest.resume(None).await {
            tracing::warn!(target: "uvm::lifecycle", vm_id = %self.id(), error = %e, "resuming the agent after a snapshot");
        }
    }

    pub(crate) async fn create_from_snapshot(
        self: Arc<Self>,
        opts: RestoreOptions,
    ) -> Result<(), Error> {
        let _l = self.lifecycle.lock().await;
        let state = self.state();
        if state != State::NotCreated {
            return Err(Error::AlreadyCreated { state });
        }
        crate::lifecycle::validate_id(&opts.id)?;
        let dir = opts.snapshot_dir.as_path();
        let fail = |e| Error::snapshot(dir, e);
        dir::check(dir).map_err(fail)?;
        let manifest = SnapshotManifest::read(dir).map_err(fail)?;
        manifest.check_files(dir).map_err(fail)?;
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || m.check_boot_files())
            .await
            .expect("checking files does not panic")
            .map_err(fail)?;
        let here = self
            .hypervisor
            .probe_info()
            .await
            .map_err(|e| Error::vmm("probe the hypervisor", e))?;
        manifest.check_hypervisor(&here).map_err(fail)?;
        let doc = manifest.document.clone();
        let gcs_port = uvm_proto::ports::GCS.to_string();
        let channels = uvm_guest::channel_set(&gcs_port, true, manifest.stdout_ports);
        let incoming = uvm_vmm::Incoming {
            memory_file: manifest.memory.as_ref().map(|m| dir.join(&m.file)),
        };
        let vm = self
            .hypervisor
            .create_incoming(&opts.id, &doc, &channels, &incoming)
            .await
            .map_err(|e| Error::vmm("create VM", e))?;
        *lock(&self.restore) = Some(RestorePlan {
            state: dir.join(&manifest.state.file),
            hostname: opts.hostname.clone().unwrap_or_else(|| opts.id.clone()),
        });
        let adopted = self
            .adopt_created(
                &opts.id,
                doc,
                Platform::Lcow,
                gcs_port,
                manifest.stdout_ports,
                vm,
            )
            .await;
        if adopted.is_err() {
            *lock(&self.restore) = None;
        }
        adopted?;
        self.apply(Event::CreateOk)
            .map_err(|e| Error::InvalidState {
                op: "create_vm_from_snapshot",
                state: e.from,
            })?;
        tracing::info!(target: "uvm::lifecycle", vm_id = %opts.id, snapshot = %dir.display(), "VM created from a snapshot");
        Ok(())
    }
}
