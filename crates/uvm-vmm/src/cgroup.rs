//! A cgroup v2 of the VM's own, to limit its vCPU threads.
//!
//! Layout, under the parent (`$UVM_CGROUP_PARENT` relative to the cgroup2
//! mount, else the caller's own cgroup):
//!
//! ```text
//! <parent>/uvm-<id>/          domain threaded: the whole QEMU process
//! <parent>/uvm-<id>/vcpus/    threaded: the vCPU threads; cpu.max, cpu.weight
//! ```
//!
//! Only the vCPU threads are limited, so QEMU's I/O and QMP threads keep
//! serving the guest. Made on the first CPU update, removed with the VM.

use std::path::{Path, PathBuf};

use crate::VmmError;

/// The CPU period `cpu.max` quotas are written against (100 ms, the
/// kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Limits for a VM's vCPUs (what hcsshim's `UpdateCPU` carries).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuLimits {
    /// At most this many host CPUs' worth of time for all vCPUs together
    /// (`cpu.max`); `None` = unlimited.
    pub max_cpus: Option<f64>,
    /// Relative share against sibling cgroups, 1..=10000 (`cpu.weight`,
    /// default 100); `None` leaves it.
    pub weight: Option<u32>,
}

impl CpuLimits {
    /// The `cpu.max` line.
    pub fn cpu_max(&self) -> String {
        match self.max_cpus {
            Some(c) => {
                let quota = ((c * CPU_PERIOD_US as f64).round() as u64).max(1000);
                format!("{quota} {CPU_PERIOD_US}")
            }
            None => format!("max {CPU_PERIOD_US}"),
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), VmmError> {
        if let Some(c) = self.max_cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(VmmError::Unsupported(format!(
                    "CPU limit {c}: must be a positive number of CPUs"
                )));
            }
        }
        if let Some(w) = self.weight {
            if !(1..=10_000).contains(&w) {
                return Err(VmmError::Unsupported(format!(
                    "CPU weight {w}: must be 1..=10000"
                )));
            }
        }
        Ok(())
    }
}

/// Where cgroup v2 lives for this process.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchy {
    /// The cgroup2 mount point.
    pub mount: PathBuf,
    /// The parent cgroup VMs are created under (absolute path).
    pub parent: PathBuf,
}

fn unavailable(reason: impl Into<String>) -> VmmError {
    VmmError::CgroupUnavailable {
        reason: reason.into(),
    }
}

impl Hierarchy {
    /// Finds the cgroup2 mount and the parent from `/proc/self`.
    pub fn detect() -> Result<Hierarchy, VmmError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // mountinfo: fields before " - ", then fstype.
        let mount = info
            .lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split(' ').next()? == "cgroup2").then(|| pre.split(' ').nth(4))?
            })
            .map(PathBuf::from)
            .next()
            .ok_or_else(|| unavailable("the host has no cgroup v2 file system mounted"))?;
        let rel = match std::env::var("UVM_CGROUP_PARENT") {
            Ok(p) if !p.is_empty() => p,
            _ => std::fs::read_to_string("/proc/self/cgroup")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                .unwrap_or_else(|| "/".into()),
        };
        Ok(Hierarchy {
            parent: mount.join(rel.trim_start_matches('/')),
            mount,
        })
    }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// The VM's cgroup, once made.
#[derive(Debug)]
pub(crate) struct VmCgroup {
    /// `<parent>/uvm-<id>`.
    pub dir: PathBuf,
}

impl VmCgroup {
    /// `<dir>/vcpus`.
    pub fn vcpus(&self) -> PathBuf {
        self.dir.join("vcpus")
    }

    /// Makes the cgroup, moves QEMU (`pid`) into it and its vCPU threads
    /// (`vcpu_tids`) into `vcpus/`. Undoes itself on failure.
    pub fn create(
        h: &Hierarchy,
        id: &str,
        pid: u32,
        vcpu_tids: &[u32],
    ) -> Result<VmCgroup, VmmError> {
        let controllers =
            std::fs::read_to_string(h.parent.join("cgroup.controllers")).map_err(|e| {
                unavailable(format!(
                    "cannot read {}: {e}",
                    h.parent.join("cgroup.controllers").display()
                ))
            })?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            let list = if controllers.trim().is_empty() {
                "none"
            } else {
                controllers.trim()
            };
            return Err(unavailable(format!(
                "the cgroup v2 hierarchy at {} offers no cpu controller to {} (it has: {list}); \
                 on a cgroup v1 or hybrid host the cpu controller belongs to v1",
                h.mount.display(),
                h.parent.display()
            )));
        }
        let subtree = h.parent.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "cpu") {
            write(&subtree, "+cpu").map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::EBUSY) => {
                        "it holds processes itself (cgroup v2 allows controllers only \
                         below cgroups without processes); run uvm in a delegated cgroup \
                         (systemd-run --scope -p Delegate=yes) or set UVM_CGROUP_PARENT"
                            .to_string()
                    }
                    Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                        "it is not writable by this user (no delegation)".to_string()
                    }
                    _ => e.to_string(),
                };
                unavailable(format!(
                    "cannot enable the cpu controller in {}: {why}",
                    h.parent.display()
                ))
            })?;
        }
        let dir = h.parent.join(format!("uvm-{id}"));
        std::fs::create_dir(&dir)
            .map_err(|e| unavailable(format!("cannot make {}: {e}", dir.display())))?;
        let cg = VmCgroup { dir };
        let setup = || -> std::io::Result<()> {
            write(&cg.dir.join("cgroup.procs"), &pid.to_string())?;
            std::fs::create_dir(cg.vcpus())?;
            write(&cg.vcpus().join("cgroup.type"), "threaded")?;
            write(&cg.dir.join("cgroup.subtree_control"), "+cpu")?;
            for t in vcpu_tids {
                write(&cg.vcpus().join("cgroup.threads"), &t.to_string())?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            // Put QEMU back where it was before removing ours.
            let _ = write(&h.parent.join("cgroup.procs"), &pid.to_string());
            cg.remove();
            return Err(unavailable(format!("setting up {}: {e}", cg.dir.display())));
        }
        Ok(cg)
    }

    /// Writes the limits.
    pub fn apply(&self, limits: &CpuLimits) -> Result<(), VmmError> {
        let io = |what: &str, e: std::io::Error| VmmError::Io {
            context: format!("writing {what} of {}", self.vcpus().display()),
            source: e,
        };
        write(&self.vcpus().join("cpu.max"), &limits.cpu_max()).map_err(|e| io("cpu.max", e))?;
        if let Some(w) = limits.weight {
            write(&self.vcpus().join("cpu.weight"), &w.to_string())
                .map_err(|e| io("cpu.weight", e))?;
        }
        Ok(())
    }

    /// Removes both cgroups (they must be empty: QEMU has exited).
    pub fn remove(&self) {
        for d in [self.vcpus(), self.dir.clone()] {
            if let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %d.display(), error = %e, "removing the VM's cgroup");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(controllers: &str) -> (tempfile::TempDir, Hierarchy) {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("user.slice");
        std::fs::create_dir(&parent).unwrap();
        std::fs::write(parent.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let h = Hierarchy {
            mount: t.path().to_path_buf(),
            parent,
        };
        (t, h)
    }

    #[test]
    fn limits_become_cpu_max() {
        let l = CpuLimits {
            max_cpus: Some(0.5),
            weight: None,
        };
        assert_eq!(l.cpu_max(), "50000 100000");
        assert_eq!(CpuLimits::default().cpu_max(), "max 100000");
        assert_eq!(
            CpuLimits {
                max_cpus: Some(2.0),
                weight: None
            }
            .cpu_max(),
            "200000 100000"
        );
        for bad in [
            CpuLimits {
                max_cpus: Some(0.0),
                weight: None,
            },
            CpuLimits {
                max_cpus: Some(f64::NAN),
                weight: None,
            },
            CpuLimits {
                max_cpus: None,
                weight: Some(0),
            },
            CpuLimits {
                max_cpus: None,
                weight: Some(10_001),
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_cpu_controller_is_a_sentence_that_says_why() {
        let (_t, h) = fake("hugetlb\n");
        let e = VmCgroup::create(&h, "vm1", 1, &[2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("offers no cpu controller") && e.contains("hugetlb"),
            "{e}"
        );
        assert!(!h.parent.join("uvm-vm1").exists());
    }

    #[test]
    fn layout_moves_the_process_and_the_vcpu_threads() {
        // A directory tree stands in for cgroupfs: the writes land as files.
        let (_t, h) = fake("cpu memory\n");
        let cg = VmCgroup::create(&h, "vm1", 42, &[43]).unwrap();
        let r = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(r(h.parent.join("cgroup.subtree_control")), "+cpu");
        assert_eq!(r(cg.dir.join("cgroup.procs")), "42");
        assert_eq!(r(cg.vcpus().join("cgroup.type")), "threaded");
        assert_eq!(r(cg.dir.join("cgroup.subtree_control")), "+cpu");
        assert_eq!(r(cg.vcpus().join("cgroup.threads")), "43");
        cg.apply(&CpuLimits {
            max_cpus: Some(0.25),
            weight: Some(50),
        })
        .unwrap();
        assert_eq!(r(cg.vcpus().join("cpu.max")), "25000 100000");
        assert_eq!(r(cg.vcpus().join("cpu.weight")), "50");
    }
}
