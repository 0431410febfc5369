//! Errors of the host-side VM layer.

use std::path::PathBuf;

/// Errors from creating or driving a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// The hypervisor binary could not be found.
    #[error("{binary} not found (looked in $UVM_QEMU and $PATH): apt-get install qemu-system-x86")]
    HypervisorNotFound {
        /// Binary name looked for.
        binary: String,
    },
    /// A file the document names is missing or unreadable.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is (kernel, initrd, disk...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The document asks for something this backend cannot do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Runtime directory or socket setup failed.
    #[error("runtime dir {path}: {source}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Spawning the hypervisor failed.
    #[error("spawning {binary}: {source}")]
    Spawn {
        /// Binary spawned.
        binary: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor exited while we were setting it up or talking to it.
    #[error("hypervisor exited during {step}: {reason}")]
    Exited {
        /// What we were doing.
        step: &'static str,
        /// Why it exited.
        reason: crate::ExitReason,
    },
    /// A QMP exchange failed.
    #[error("QMP {command}: {message}")]
    Qmp {
        /// Command sent.
        command: String,
        /// Error class and description, or transport error.
        message: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// The bound.
        timeout: std::time::Duration,
    },
    /// The VM is not in a state where the operation makes sense.
    #[error("VM is {0}")]
    State(&'static str),
    /// The VM document failed validation (the message names the JSON path).
    #[error(transparent)]
    Document(#[from] uvm_schema::SchemaError),
    /// A mount on the host (a share's bind mount) failed.
    #[error("{action} at {path}: {source}")]
    HostMount {
        /// What we were doing.
        action: &'static str,
        /// The mount point.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The host cannot give the VM a cgroup v2 with the controller asked for.
    #[error("cannot limit the VM's CPU: {reason}")]
    CgroupUnavailable {
        /// Why, as a sentence.
        reason: String,
    },
    /// Saving or loading the VM state failed; `reason` is QEMU's.
    #[error("{step} failed: {reason}")]
    Migration {
        /// What we were doing.
        step: &'static str,
        /// QEMU's error text.
        reason: String,
    },
    /// Other I/O while driving the VM.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}
