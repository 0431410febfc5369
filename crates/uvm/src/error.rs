//! The controller's errors.

use std::time::Duration;

use uvm_guest::GuestError;
use uvm_vmm::{ExitReason, VmmError};

use crate::State;

/// Why a VM stopped when it was not a clean exit (wraps the backend's typed reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct ExitError(pub ExitReason);

impl ExitError {
    /// The backend's reason.
    pub fn reason(&self) -> &ExitReason {
        &self.0
    }
}

/// Errors of the controller. Messages never repeat their source; print the
/// `source()` chain for the whole story.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation is not allowed in the current state.
    #[error("{op}: VM is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state it found.
        state: State,
    },
    /// `create_vm` was called on a VM that was already created.
    #[error("VM already created (state {state})")]
    AlreadyCreated {
        /// The state it found.
        state: State,
    },
    /// The VM id cannot be used.
    #[error("invalid VM id {id:?}: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// The VM document failed validation; nothing was started.
    #[error("invalid VM document")]
    InvalidDocument(#[source] uvm_schema::SchemaError),
    /// The backend did not bind a channel the controller needs.
    #[error("backend did not provide the {role} channel")]
    MissingChannel {
        /// The channel role.
        role: &'static str,
    },
    /// A live migration was cancelled; the source VM runs on.
    #[error("the migration was cancelled")]
    MigrationCancelled,
    /// The restored guest did not take fresh entropy (and so still holds the
    /// snapshot's RNG state and GCS connection).
    #[error("the restored guest did not reseed")]
    Reseed(#[source] std::io::Error),
    /// A snapshot cannot be taken into, or restored from, `dir`.
    #[error("snapshot {}", dir.display())]
    Snapshot {
        /// The snapshot dir.
        dir: std::path::PathBuf,
        /// What is wrong.
        #[source]
        source: crate::SnapshotError,
    },
    /// The VM backend failed during `op`.
    #[error("{op}")]
    Vmm {
        /// What we were doing.
        op: &'static str,
        /// The backend error.
        #[source]
        source: VmmError,
    },
    /// The guest connection failed during `op`.
    #[error("{op}")]
    Guest {
        /// What we were doing.
        op: &'static str,
        /// The guest error.
        #[source]
        source: GuestError,
    },
    /// A precondition of the request does not hold.
    #[error("failed precondition: {0}")]
    FailedPrecondition(&'static str),
    /// A bounded step ran out of time.
    #[error("{op} timed out after {timeout:?}")]
    Timeout {
        /// The step.
        op: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// `start_vm` was aborted by `terminate_vm` or by dropping its future.
    #[error("start aborted")]
    StartAborted,
    /// The VM stopped while a call was in flight: a start step (`start_vm`
    /// at `during`), or a guest call after Running (exec, dump stacks, stats)
    /// whose connection broke because the VM went away.
    #[error("the VM stopped during {during}")]
    VmExited {
        /// The start step or the call.
        during: &'static str,
        /// Why it exited.
        #[source]
        reason: ExitError,
    },
    /// Every LUN of the VM's SCSI controllers is in use; nothing was attached.
    #[error("cannot attach {}: every LUN of the VM's {controllers} SCSI controller(s) is in use", path.display())]
    ScsiFull {
        /// The image that did not fit.
        path: std::path::PathBuf,
        /// Controllers of the VM.
        controllers: u32,
    },
    /// The image is attached already and one of the two attachments writes.
    #[error("{} is already attached at {at}{}", path.display(), if *read_only { " read-only" } else { " read-write" })]
    DiskInUse {
        /// The image.
        path: std::path::PathBuf,
        /// Where it is.
        at: crate::ScsiAddress,
        /// How it is attached.
        read_only: bool,
    },
    /// A host path given for a disk or share cannot be used.
    #[error("{what} {}", path.display())]
    HostPath {
        /// Disk image or share.
        what: &'static str,
        /// The path as given.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No file system the guest mounts was found in a raw image.
    #[error("cannot tell the file system of {} (no ext2/3/4, xfs, btrfs, erofs, squashfs or vfat superblock); give its fs type", path.display())]
    UnknownFileSystem {
        /// The image.
        path: std::path::PathBuf,
    },
    /// Nothing of that name or address is attached.
    #[error("no {what} is attached")]
    NotAttached {
        /// The disk address, share or mount.
        what: String,
    },
    /// QEMU would not take the disk; nothing is left attached.
    #[error("attaching {} at {at}", path.display())]
    DiskAttach {
        /// The image.
        path: std::path::PathBuf,
        /// The LUN it was to get.
        at: crate::ScsiAddress,
        /// The backend's error.
        #[source]
        source: Box<VmmError>,
    },
    /// Unplugging a disk failed; its LUN stays taken.
    #[error("removing {} at {at}", path.display())]
    DiskDetach {
        /// The image.
        path: std::path::PathBuf,
        /// Its address.
        at: crate::ScsiAddress,
        /// The backend's error.
        #[source]
        source: Box<VmmError>,
    },
    /// The guest could not mount a disk.
    #[error("mounting disk {} ({at}) in the guest", path.display())]
    DiskMount {
        /// The image.
        path: std::path::PathBuf,
        /// Its address.
        at: crate::ScsiAddress,
        /// The agent's error.
        #[source]
        source: Box<GuestError>,
    },
    /// The share's bind mount on the host failed.
    #[error("sharing {}", path.display())]
    ShareBind {
        /// The host path.
        path: std::path::PathBuf,
        /// The backend's error.
        #[source]
        source: Box<VmmError>,
    },
    /// A container request cannot be used as given; nothing was changed.
    #[error("container {id}: {reason}")]
    InvalidContainer {
        /// The container's id.
        id: String,
        /// Why, as a sentence fragment.
        reason: String,
    },
    /// No container of that id was created through this manager.
    #[error("container {id} does not exist")]
    NoSuchContainer {
        /// The id asked for.
        id: String,
    },
    /// `update_memory` got a size outside what the VM can have.
    #[error("memory size {} MiB: must be between {} MiB and the VM's {} MiB", bytes >> 20, min >> 20, max >> 20)]
    InvalidMemory {
        /// Asked for.
        bytes: u64,
        /// Least accepted.
        min: u64,
        /// The document's memory.
        max: u64,
    },
}

/// Errors of runtime devices (see [`crate::devices`]).
impl Error {
    fn device_code(&self) -> Option<tonic::Code> {
        use tonic::Code;
        Some(match self {
            Error::ScsiFull { .. } => Code::ResourceExhausted,
            Error::DiskInUse { .. } => Code::AlreadyExists,
            Error::HostPath { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NotFound
            }
            Error::HostPath { .. }
            | Error::UnknownFileSystem { .. }
            | Error::InvalidMemory { .. }
            | Error::InvalidContainer { .. } => Code::InvalidArgument,
            Error::NoSuchContainer { .. } => Code::NotFound,
            Error::NotAttached { .. } => Code::NotFound,
            Error::DiskMount { source, .. } => source.code(),
            Error::DiskAttach { .. } | Error::DiskDetach { .. } | Error::ShareBind { .. } => {
                Code::Internal
            }
            _ => return None,
        })
    }
}

impl Error {
    /// A guest error of `op`; a call cut short by the VM's end becomes
    /// [`Error::VmExited`] with its reason.
    pub(crate) fn guest(op: &'static str, source: GuestError) -> Self {
        match source {
            GuestError::VmExited { reason } => Error::VmExited {
                during: op,
                reason: ExitError(reason),
            },
            source => Error::Guest { op, source },
        }
    }

    /// The VM's exit reason when this error says the VM stopped.
    pub fn vm_exit_reason(&self) -> Option<&ExitReason> {
        match self {
            Error::VmExited { reason, .. } => Some(&reason.0),
            _ => None,
        }
    }

    pub(crate) fn vmm(op: &'static str, source: VmmError) -> Self {
        Error::Vmm { op, source }
    }

    /// The gRPC code for this error (for a shim or API server).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        if let Some(c) = self.device_code() {
            return c;
        }
        match self {
            Error::InvalidState { .. } | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyCreated { .. } => Code::AlreadyExists,
            Error::InvalidId { .. } | Error::InvalidDocument(_) => Code::InvalidArgument,
            Error::MissingChannel { .. } => Code::Internal,
            Error::Vmm { source, .. } => match source {
                VmmError::HypervisorNotFound { .. } | VmmError::Unsupported(_) => {
                    Code::FailedPrecondition
                }
                VmmError::File { .. } => Code::NotFound,
                VmmError::Timeout { .. } => Code::DeadlineExceeded,
                _ => Code::Internal,
            },
            Error::Guest { source, .. } => source.code(),
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::StartAborted => Code::Aborted,
            Error::VmExited { .. } => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    /// The exit code a container-style CLI should use (DESIGN §8): 127 when the
    /// command was not found, 126 when not executable, 125 for everything else.
    pub fn cli_exit_code(&self) -> i32 {
        match self {
            Error::Guest {
                source: GuestError::CommandNotFound { .. },
                ..
            } => 127,
            Error::Guest {
                source: GuestError::NotExecutable { .. },
                ..
            } => 126,
            _ => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_cli_classes() {
        let nf = Error::guest(
            "exec",
            GuestError::CommandNotFound {
                message: "x".into(),
            },
        );
        assert_eq!(
            (nf.grpc_code(), nf.cli_exit_code()),
            (tonic::Code::NotFound, 127)
        );
        let ne = Error::guest(
            "exec",
            GuestError::NotExecutable {
                message: "x".into(),
            },
        );
        assert_eq!(ne.cli_exit_code(), 126);
        let st = Error::InvalidState {
            op: "stats",
            state: State::Created,
        };
        assert_eq!(st.grpc_code(), tonic::Code::FailedPrecondition);
        assert_eq!(st.to_string(), "stats: VM is Created");
        assert_eq!(Error::StartAborted.grpc_code(), tonic::Code::Aborted);
    }
}
