//! Error type of the crate.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Result alias used throughout `uvm-image`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while locating or building a guest image.
///
/// Messages name the path or program involved and, where one exists, the fix;
/// they never repeat the text of their `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation on `path` failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done ("read", "create directory", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No default image has been recorded yet.
    #[error("no default UVM image recorded at {path}; fix: run `uvmctl image build` (as the user the caller runs as), or name kernel and initrd in the runtime config")]
    NoDefaultImage {
        /// Where the record was looked for.
        path: PathBuf,
    },
    /// The default image record names a file that is gone.
    #[error("the default UVM image record {record} names {missing}, which no longer exists; fix: run `uvmctl image build` again")]
    DefaultImageStale {
        /// The record.
        record: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// A helper program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel source tarball needed for the tuned kernel is missing.
    #[error("kernel source {path} not found; fix: apt-get install linux-source-6.1 bc flex bison libelf-dev libssl-dev")]
    KernelSourceMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `guest/kernel/build.sh` failed.
    #[error("tuned kernel build failed ({status}); last output:\n{tail}")]
    KernelBuild {
        /// Exit status of the script.
        status: ExitStatus,
        /// The last lines it printed.
        tail: String,
    },
    /// No `/boot/vmlinuz-*` was found.
    #[error("no stock kernel (vmlinuz-*) in {dir}; fix: apt-get install linux-image-cloud-amd64")]
    StockKernelNotFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The kernel's module directory (`modules.dep`) is missing.
    #[error("no modules for kernel {release} ({path} missing); fix: apt-get install linux-image-{release}")]
    ModulesMissing {
        /// Kernel release.
        release: String,
        /// The missing file.
        path: PathBuf,
    },
    /// A required kernel module is neither in `modules.dep` nor built in.
    #[error("kernel module {name} not found for kernel {release} (neither in modules.dep nor modules.builtin)")]
    ModuleNotFound {
        /// Module name as requested.
        name: String,
        /// Kernel release.
        release: String,
    },
    /// The agent binary was not found.
    #[error("guest agent uvm-gcs not found (tried: {}); fix: `make agent` (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile agent -p uvm-gcs --target x86_64-unknown-linux-gnu), or set UVM_AGENT", list(.tried))]
    AgentNotFound {
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// busybox was not found.
    #[error("static busybox not found (tried: {}); fix: apt-get install busybox-static", list(.tried))]
    BusyboxNotFound {
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// A binary meant for the guest is not a static ELF executable.
    #[error("{path} is not a static ELF executable ({reason}); {fix}")]
    NotStatic {
        /// The binary.
        path: PathBuf,
        /// What is wrong (dynamic, not ELF, ...).
        reason: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// A guest path given for the initramfs is not usable.
    #[error("invalid guest path {path:?}: {reason}")]
    InvalidGuestPath {
        /// The path.
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// An entry is larger than newc cpio can describe (4 GiB).
    #[error("{path} is too large for a newc cpio entry ({len} bytes)")]
    TooLarge {
        /// Guest path of the entry.
        path: String,
        /// Its size.
        len: usize,
    },
    /// A helper program ran but failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program and its main argument.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of what it wrote to stderr.
        stderr: String,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
