//! The shim's errors, and how they reach containerd: a ttrpc status whose
//! code containerd maps to its own errors (`NotFound`, `AlreadyExists`,
//! `FailedPrecondition`, `NotImplemented`...) and whose message is a
//! sentence with its causes, never a dump.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything a shim request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No task or exec with that id.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// "container" or "exec".
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A task or exec with that id exists already.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// "container" or "exec".
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The request does not fit the task's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request field is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// A Task API method this shim cannot honour.
    #[error("{0} is not implemented by the uvm shim")]
    NotImplemented(&'static str),
    /// The runtime config file cannot be used.
    #[error("runtime config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A host file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting the task's root file system on the host failed.
    #[error("{0}")]
    Rootfs(String),
    /// The UVM or its guest refused or failed.
    #[error("{context}")]
    Uvm {
        /// What the shim was doing.
        context: String,
        /// The controller's error.
        #[source]
        source: uvm::Error,
    },
    /// The default image is not there.
    #[error("no image to boot the UVM")]
    Image(#[source] uvm_image::Error),
}

impl ShimError {
    /// A [`ShimError::Uvm`] for `context`.
    pub fn uvm(context: impl Into<String>, source: uvm::Error) -> Self {
        Self::Uvm {
            context: context.into(),
            source,
        }
    }

    /// A [`ShimError::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            ShimError::NotFound { .. } => Code::NOT_FOUND,
            ShimError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) | ShimError::Config { .. } => Code::INVALID_ARGUMENT,
            ShimError::NotImplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Uvm { source, .. } => match source {
                uvm::Error::NoSuchContainer { .. } => Code::NOT_FOUND,
                uvm::Error::InvalidContainer { .. } => Code::INVALID_ARGUMENT,
                _ => Code::UNKNOWN,
            },
            ShimError::Io { .. } | ShimError::Rootfs(_) | ShimError::Image(_) => Code::UNKNOWN,
        }
    }

    /// The message with every cause: `a: b: c`.
    pub fn sentence(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            let s = e.to_string();
            if !out.ends_with(&s) {
                out.push_str(": ");
                out.push_str(&s);
            }
            cur = e.source();
        }
        out
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.sentence()))
    }
}

/// Result of a shim operation.
pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_containerd_maps() {
        assert_eq!(
            status(ShimError::NotImplemented("Pause")),
            (
                Code::UNIMPLEMENTED,
                "Pause is not implemented by the uvm shim".into()
            )
        );
        let (code, msg) = status(ShimError::NotFound {
            what: "exec",
            id: "e1".into(),
        });
        assert_eq!(code, Code::NOT_FOUND);
        assert_eq!(msg, "exec e1 does not exist");
    }

    #[test]
    fn causes_are_chained_into_one_sentence() {
        let e = ShimError::io(
            "read",
            "/b/config.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(status(e).1, "cannot read /b/config.json: entity not found");
    }
}
