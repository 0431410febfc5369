//! Errors of the guest connection.

use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
/// Why the agent refused or failed a mount (`MountFailure.Kind`).
pub use uvm_proto::gcs::mount_failure::Kind as MountErrorKind;

/// Errors talking to the guest agent (GCS).
///
/// gRPC statuses from the agent are mapped to typed variants following the
/// status-code contract of `gcs.proto`; [`GuestError::code`] maps back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// No GCS connection has been established yet.
    #[error("guest connection not established")]
    NotConnected,
    /// The connection was closed on the host side ([`crate::Guest::close`]).
    #[error("guest connection closed")]
    Closed,
    /// The GCS listener was already consumed by an earlier connect.
    #[error("GCS listener already used")]
    ListenerUsed,
    /// Accepting the GCS connection failed.
    #[error("accepting the GCS connection")]
    Accept(#[source] std::io::Error),
    /// Building the gRPC channel over the accepted stream failed.
    #[error("setting up gRPC over the GCS stream")]
    Transport(#[source] tonic::transport::Error),
    /// A bounded wait ran out.
    #[error("{op} timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The guest speaks no protocol version in our range.
    #[error("guest protocol version {guest} outside supported range {min}..={max}")]
    Version {
        /// Version the guest answered with.
        guest: u32,
        /// Lowest version we accept.
        min: u32,
        /// Highest version we accept.
        max: u32,
    },
    /// The executable does not exist in the guest (gRPC NOT_FOUND, CLI 127).
    #[error("command not found: {message}")]
    CommandNotFound {
        /// The agent's message.
        message: String,
    },
    /// The executable exists but cannot be executed (gRPC PERMISSION_DENIED, CLI 126).
    #[error("not executable: {message}")]
    NotExecutable {
        /// The agent's message.
        message: String,
    },
    /// The guest's security policy denied the request (gRPC FAILED_PRECONDITION).
    #[error("denied by policy: {message}")]
    DeniedByPolicy {
        /// The agent's message.
        message: String,
    },
    /// The request was malformed (gRPC INVALID_ARGUMENT).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The agent's message.
        message: String,
    },
    /// A host-side precondition of the request does not hold (checked before any I/O).
    #[error("failed precondition: {0}")]
    FailedPrecondition(&'static str),
    /// The agent answered `op` with an error outside the typed ones above.
    #[error("{op} failed in the guest agent: {}", if message.is_empty() { code.description() } else { message.as_str() })]
    Rpc {
        /// The RPC.
        op: &'static str,
        /// The gRPC code the agent answered with.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// The GCS connection broke during `op` and the VM was not seen to exit
    /// (within the guest's exit grace): the agent or the channel failed.
    /// The transport's own error is logged at debug level, not shown.
    #[error("the connection to the guest agent broke during {op}")]
    ConnectionLost {
        /// The call.
        op: &'static str,
    },
    /// The VM stopped while the call was in flight: the connection broke
    /// because the VM is gone, and this is why it stopped.
    #[error("the VM stopped")]
    VmExited {
        /// Why the VM stopped.
        #[source]
        reason: uvm_vmm::ExitReason,
    },
    /// The agent refused or failed a mount, an unmount or a disk removal
    /// (its `MountFailure`); the message is the agent's sentence.
    #[error("{message}")]
    Mount {
        /// What went wrong.
        kind: MountErrorKind,
        /// The errno of the failed call in the guest, 0 where none.
        errno: i32,
        /// The guest device involved (`/dev/sdb`), empty where none.
        device: String,
        /// The agent's message.
        message: String,
    },
    /// The agent refused a container request: no such container
    /// (NOT_FOUND), the id is taken (ALREADY_EXISTS), or the container is not
    /// in a state that allows it (FAILED_PRECONDITION). The message is the
    /// agent's sentence.
    #[error("{message}")]
    Container {
        /// The gRPC code the agent answered with.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// The agent broke the protocol (e.g. an exec stream without `started`).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Host-side I/O on a relayed path failed.
    #[error("{context} {}", path.display())]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl GuestError {
    /// Maps a gRPC status of RPC `op` to the typed error (gcs.proto contract).
    pub fn from_status(op: &'static str, status: tonic::Status) -> Self {
        let message = status.message().to_string();
        if let Ok(f) = uvm_proto::gcs::MountFailure::decode(status.details()) {
            if f.kind != 0 && !status.details().is_empty() {
                return GuestError::Mount {
                    kind: f.kind(),
                    errno: f.errno,
                    device: f.device,
                    message,
                };
            }
        }
        let container_op = op.contains("container");
        match status.code() {
            tonic::Code::NotFound | tonic::Code::PermissionDenied
                if op == "container exec" && !message.starts_with("no container") =>
            {
                if status.code() == tonic::Code::NotFound {
                    GuestError::CommandNotFound { message }
                } else {
                    GuestError::NotExecutable { message }
                }
            }
            code @ (tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition)
                if container_op =>
            {
                GuestError::Container { code, message }
            }
            tonic::Code::NotFound if op == "exec" => GuestError::CommandNotFound { message },
            tonic::Code::PermissionDenied if op == "exec" => GuestError::NotExecutable { message },
            tonic::Code::FailedPrecondition => GuestError::DeniedByPolicy { message },
            tonic::Code::InvalidArgument => GuestError::InvalidArgument { message },
            code => GuestError::Rpc { op, code, message },
        }
    }

    /// The gRPC code this error corresponds to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            GuestError::NotConnected | GuestError::Closed | GuestError::ListenerUsed => {
                Code::Unavailable
            }
            GuestError::Accept(_) | GuestError::Transport(_) => Code::Unavailable,
            GuestError::Timeout { .. } => Code::DeadlineExceeded,
            GuestError::Version { .. } => Code::Unimplemented,
            GuestError::CommandNotFound { .. } => Code::NotFound,
            GuestError::NotExecutable { .. } => Code::PermissionDenied,
            GuestError::DeniedByPolicy { .. } | GuestError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            GuestError::InvalidArgument { .. } => Code::InvalidArgument,
            GuestError::Rpc { code, .. } => *code,
            GuestError::ConnectionLost { .. } | GuestError::VmExited { .. } => Code::Unavailable,
            GuestError::Mount { kind, .. } => match kind {
                MountErrorKind::TargetNotAllowed
                | MountErrorKind::BadFsType
                | MountErrorKind::BadOptions => Code::InvalidArgument,
                MountErrorKind::DiskNotFound
                | MountErrorKind::ShareNotFound
                | MountErrorKind::NotMounted => Code::NotFound,
                MountErrorKind::FsNotInKernel => Code::Unimplemented,
                MountErrorKind::Busy => Code::FailedPrecondition,
                MountErrorKind::MountFailed | MountErrorKind::Unspecified => Code::Internal,
            },
            GuestError::Container { code, .. } => *code,
            GuestError::Protocol(_) => Code::Internal,
            GuestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NotFound
            }
            GuestError::Io { .. } => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn exec_statuses_map_to_typed_errors_and_back() {
        let cases = [
            (Code::NotFound, Code::NotFound),
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::FailedPrecondition, Code::FailedPrecondition),
            (Code::InvalidArgument, Code::InvalidArgument),
            (Code::Unavailable, Code::Unavailable),
        ];
        for (input, back) in cases {
            let e = GuestError::from_status("exec", Status::new(input, "x"));
            assert_eq!(e.code(), back, "{e:?}");
        }
        assert!(matches!(
            GuestError::from_status("exec", Status::not_found("ls")),
            GuestError::CommandNotFound { .. }
        ));
        assert!(matches!(
            GuestError::from_status("stats", Status::not_found("x")),
            GuestError::Rpc { .. }
        ));
    }

    #[test]
    fn a_mount_failure_in_the_details_is_typed() {
        let f = uvm_proto::gcs::MountFailure {
            kind: MountErrorKind::MountFailed as i32,
            errno: 22,
            device: "/dev/sdb".into(),
        };
        let st = Status::with_details(
            Code::Internal,
            "mounting /dev/sdb (ext4) at /mnt/x failed: EINVAL",
            f.encode_to_vec().into(),
        );
        match GuestError::from_status("mount", st) {
            e @ GuestError::Mount { .. } => {
                assert_eq!(e.code(), Code::Internal);
                assert_eq!(
                    e.to_string(),
                    "mounting /dev/sdb (ext4) at /mnt/x failed: EINVAL"
                );
                let GuestError::Mount {
                    kind,
                    errno,
                    device,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(
                    (kind, errno, device.as_str()),
                    (MountErrorKind::MountFailed, 22, "/dev/sdb")
                );
            }
            e => panic!("{e:?}"),
        }
        let st = Status::with_details(
            Code::InvalidArgument,
            "x",
            uvm_proto::gcs::MountFailure {
                kind: MountErrorKind::TargetNotAllowed as i32,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        );
        assert_eq!(
            GuestError::from_status("mount", st).code(),
            Code::InvalidArgument
        );
        // No details: the plain mapping.
        assert!(matches!(
            GuestError::from_status("mount", Status::invalid_argument("x")),
            GuestError::InvalidArgument { .. }
        ));
    }
}
