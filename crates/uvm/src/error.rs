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
