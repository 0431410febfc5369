//! LUN bookkeeping of the VM's SCSI controller: which addresses the document
//! holds, which runtime disks sit where, and how many users each has.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a disk sits on the VM's SCSI controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScsiAddress {
    /// Controller index (the document's controllers, sorted by key).
    pub controller: u32,
    /// LUN on that controller.
    pub lun: u32,
}

impl fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SCSI controller {}, LUN {}", self.controller, self.lun)
    }
}

/// LUNs per controller (hcsshim's and the document's limit: 0..=63).
pub const LUNS_PER_CONTROLLER: u32 = uvm_schema::MAX_LUN + 1;

/// One runtime disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub path: PathBuf,
    pub read_only: bool,
    /// Users of a shared read-only attachment.
    pub refs: u32,
}

/// What `attach` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A new LUN: the caller must hot-add the disk there (then `confirm`,
    /// or `release` if that fails).
    New(ScsiAddress),
    /// The image is already attached read-only there; one more user.
    Shared(ScsiAddress),
}

/// Why a LUN could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Every LUN of every controller is taken.
    Full { controllers: u32 },
    /// The image is attached already, and one of the two wants to write.
    InUse { at: ScsiAddress, read_only: bool },
}

/// The controller's LUNs.
#[derive(Debug)]
pub(crate) struct Luns {
    controllers: u32,
    luns_per_controller: u32,
    /// LUNs of the document's disks: never handed out.
    reserved: Vec<ScsiAddress>,
    /// Runtime disks, including ones being added (refs = 0 until confirmed).
    slots: BTreeMap<ScsiAddress, Slot>,
}

impl Luns {
    /// A controller set with the document's disks at `reserved`.
    pub fn new(controllers: u32, luns_per_controller: u32, reserved: Vec<ScsiAddress>) -> Self {
        Luns {
            controllers: controllers.max(1),
            luns_per_controller,
            reserved,
            slots: BTreeMap::new(),
        }
    }

    /// Claims a LUN for `path` (canonical) or shares an existing read-only one.
    pub fn claim(&mut self, path: &Path, read_only: bool) -> Result<Claim, ClaimError> {
        if let Some((at, s)) = self.slots.iter_mut().find(|(_, s)| s.path == path) {
            if read_only && s.read_only && s.refs > 0 {
                s.refs += 1;
                return Ok(Claim::Shared(*at));
            }
            return Err(ClaimError::InUse {
                at: *at,
                read_only: s.read_only,
            });
        }
        let free = (0..self.controllers)
            .flat_map(|c| {
                (0..self.luns_per_controller).map(move |l| ScsiAddress {
                    controller: c,
                    lun: l,
                })
            })
            .find(|a| !self.reserved.contains(a) && !self.slots.contains_key(a))
            .ok_or(ClaimError::Full {
                controllers: self.controllers,
            })?;
        self.slots.insert(
            free,
            Slot {
                path: path.to_path_buf(),
                read_only,
                refs: 0,
            },
        );
        Ok(Claim::New(free))
    }

    /// The hot-add at `at` worked: its first user.
    pub fn confirm(&mut self, at: ScsiAddress) {
        if let Some(s) = self.slots.get_mut(&at) {
            s.refs = 1;
        }
    }

    /// Frees `at` (the hot-add failed, or the disk is gone from the VM).
    pub fn release(&mut self, at: ScsiAddress) {
        self.slots.remove(&at);
    }

    /// Drops one user of `at`; returns the users left, or `None` when no
    /// runtime disk is there.
    pub fn unref(&mut self, at: ScsiAddress) -> Option<u32> {
        let s = self.slots.get_mut(&at).filter(|s| s.refs > 0)?;
        s.refs -= 1;
        Some(s.refs)
    }

    /// Adds back a user dropped by `unref` (the removal failed).
    pub fn reref(&mut self, at: ScsiAddress) {
        if let Some(s) = self.slots.get_mut(&at) {
            s.refs += 1;
        }
    }

    /// The runtime disk at `at`.
    pub fn get(&self, at: ScsiAddress) -> Option<&Slot> {
        self.slots.get(&at).filter(|s| s.refs > 0)
    }

    /// Every runtime disk.
    pub fn attached(&self) -> Vec<ScsiAddress> {
        self.slots
            .iter()
            .filter(|(_, s)| s.refs > 0)
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(controller: u32, lun: u32) -> ScsiAddress {
        ScsiAddress { controller, lun }
    }

    #[test]
    fn document_luns_are_skipped_and_freed_luns_reused() {
        let mut l = Luns::new(1, 4, vec![a(0, 0), a(0, 2)]);
        assert_eq!(l.claim(Path::new("/x"), false), Ok(Claim::New(a(0, 1))));
        l.confirm(a(0, 1));
        assert_eq!(l.claim(Path::new("/y"), false), Ok(Claim::New(a(0, 3))));
        l.confirm(a(0, 3));
        assert_eq!(
            l.claim(Path::new("/z"), false),
            Err(ClaimError::Full { controllers: 1 })
        );
        assert_eq!(l.unref(a(0, 1)), Some(0));
        l.release(a(0, 1));
        assert_eq!(l.claim(Path::new("/z"), false), Ok(Claim::New(a(0, 1))));
    }

    #[test]
    fn a_read_only_image_twice_is_one_lun_with_two_users() {
        let mut l = Luns::new(2, 2, vec![]);
        let Ok(Claim::New(at)) = l.claim(Path::new("/ro.img"), true) else {
            panic!()
        };
        l.confirm(at);
        assert_eq!(l.claim(Path::new("/ro.img"), true), Ok(Claim::Shared(at)));
        assert_eq!(
            l.claim(Path::new("/ro.img"), false),
            Err(ClaimError::InUse {
                at,
                read_only: true
            })
        );
        assert_eq!(l.unref(at), Some(1));
        assert_eq!(l.attached(), vec![at]);
        assert_eq!(l.unref(at), Some(0));
        assert_eq!(l.unref(a(1, 1)), None);
    }

    #[test]
    fn a_disk_being_added_is_not_shared() {
        let mut l = Luns::new(1, 4, vec![]);
        let Ok(Claim::New(at)) = l.claim(Path::new("/ro.img"), true) else {
            panic!()
        };
        // Not confirmed yet: a second user must not ride on a half-added disk.
        assert!(matches!(
            l.claim(Path::new("/ro.img"), true),
            Err(ClaimError::InUse { .. })
        ));
        l.release(at);
        assert!(l.attached().is_empty());
    }

    #[test]
    fn runtime_disks_fill_later_controllers() {
        let mut l = Luns::new(2, 1, vec![a(0, 0)]);
        assert_eq!(l.claim(Path::new("/x"), false), Ok(Claim::New(a(1, 0))));
    }
}
