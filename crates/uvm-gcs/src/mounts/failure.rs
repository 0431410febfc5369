//! Typed mount failures, sent to the host as `MountFailure` status details.

use nix::errno::Errno;
use prost::Message;
use tonic::{Code, Status};
use uvm_proto::gcs::mount_failure::Kind;
use uvm_proto::gcs::MountFailure;

/// Why a mount, unmount or disk removal was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub kind: Kind,
    /// The errno of the failed call, where one failed.
    pub errno: Option<Errno>,
    /// The guest device involved, where one was found.
    pub device: String,
    /// A sentence for a person.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with no errno or device.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            errno: None,
            device: String::new(),
            message: message.into(),
        }
    }

    /// Adds the errno of the failed call.
    pub fn errno(mut self, errno: Errno) -> Self {
        self.errno = Some(errno);
        self
    }

    /// Adds the guest device involved.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    fn code(&self) -> Code {
        match self.kind {
            Kind::TargetNotAllowed | Kind::BadFsType | Kind::BadOptions => Code::InvalidArgument,
            Kind::DiskNotFound | Kind::ShareNotFound | Kind::NotMounted => Code::NotFound,
            Kind::FsNotInKernel => Code::Unimplemented,
            Kind::Busy => Code::FailedPrecondition,
            Kind::MountFailed | Kind::Unspecified => Code::Internal,
        }
    }
}

impl From<Failure> for Status {
    fn from(f: Failure) -> Self {
        let details = MountFailure {
            kind: f.kind as i32,
            errno: f.errno.map_or(0, |e| e as i32),
            device: f.device.clone(),
        };
        Status::with_details(f.code(), f.message.clone(), details.encode_to_vec().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_kind_errno_and_device() {
        let f = Failure::new(Kind::MountFailed, "mounting /dev/sda failed")
            .errno(Errno::EINVAL)
            .device("/dev/sda");
        let s = Status::from(f);
        assert_eq!(s.code(), Code::Internal);
        let d = MountFailure::decode(s.details()).unwrap();
        assert_eq!(d.kind, Kind::MountFailed as i32);
        assert_eq!(d.errno, libc::EINVAL);
        assert_eq!(d.device, "/dev/sda");
    }
}
