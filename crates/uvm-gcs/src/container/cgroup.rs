//! A cgroup v2 per container at `/sys/fs/cgroup/uvm/<id>`: controllers
//! enabled on the way down, `linux.resources` written, kill and removal.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::spec::SpecError;

/// Where the guest's cgroup2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every container's cgroup, under [`CGROUP_ROOT`].
pub const PARENT: &str = "uvm";
/// Controllers the containers get.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// Default `cpu.max` period, microseconds.
const DEFAULT_PERIOD: u64 = 100_000;

/// Limits from `linux.resources`, as cgroup v2 file values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `memory.swap.max`, bytes.
    pub swap_max: Option<u64>,
    /// `cpu.max` ("quota period" or "max period").
    pub cpu_max: Option<String>,
    /// `cpu.weight` (from `cpu.shares`).
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `unified`: file name → value.
    pub unified: Vec<(String, String)>,
}

impl Resources {
    /// Reads the supported parts of `r`; refuses the rest when set.
    pub fn from_spec(r: &LinuxResources) -> Result<Self, SpecError> {
        let f = |x: &str| format!("linux.resources.{x}");
        let mut out = Resources::default();
        if let Some(m) = r.memory() {
            match m.limit() {
                Some(l) if l > 0 => out.memory_max = Some(l as u64),
                Some(-1) | Some(0) | None => {}
                Some(_) => return Err(SpecError::new(f("memory.limit"), "must be positive or -1")),
            }
            // OCI swap = memory + swap; no swap unless asked for.
            out.swap_max = match (out.memory_max, m.swap()) {
                (Some(lim), Some(s)) if s > 0 => Some((s as u64).saturating_sub(lim)),
                (Some(_), Some(-1)) => None,
                (Some(_), _) => Some(0),
                (None, _) => None,
            };
        }
        if let Some(c) = r.cpu() {
            let period = c.period().filter(|p| *p > 0).unwrap_or(DEFAULT_PERIOD);
            match c.quota() {
                Some(q) if q > 0 => out.cpu_max = Some(format!("{q} {period}")),
                Some(q) if q < -1 => {
                    return Err(SpecError::new(f("cpu.quota"), "must be positive or -1"))
                }
                _ if c.period().is_some() => out.cpu_max = Some(format!("max {period}")),
                _ => {}
            }
            // runc's conversion of cgroup v1 shares [2, 262144] to weight [1, 10000].
            out.cpu_weight = c
                .shares()
                .filter(|s| *s > 0)
                .map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142);
            if c.cpus().is_some() || c.mems().is_some() || c.realtime_runtime().is_some() {
                return Err(SpecError::new(
                    f("cpu"),
                    "cpus, mems and realtime limits are not supported",
                ));
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() > 0 {
                out.pids_max = Some(p.limit() as u64);
            }
        }
        for (key, value) in r.unified().iter().flatten() {
            let ok = !key.is_empty()
                && key.contains('.')
                && !key.contains('/')
                && !key.starts_with("cgroup.");
            if !ok {
                return Err(SpecError::new(
                    f(&format!("unified.{key}")),
                    "not a controller file",
                ));
            }
            out.unified.push((key.clone(), value.clone()));
        }
        out.unified.sort();
        if r.block_io().is_some()
            || r.hugepage_limits().is_some()
            || r.network().is_some()
            || r.rdma().is_some()
        {
            return Err(SpecError::new(
                f("(blockIO, hugepageLimits, network, rdma)"),
                "not supported",
            ));
        }
        if r.devices().is_some() {
            tracing::debug!(
                "linux.resources.devices ignored: devices are the default set and linux.devices"
            );
        }
        Ok(out)
    }

    /// `(file, value)` pairs to write, in order.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(m) = self.memory_max {
            v.push(("memory.max".into(), m.to_string()));
        }
        if let Some(s) = self.swap_max {
            v.push(("memory.swap.max".into(), s.to_string()));
        }
        if let Some(c) = &self.cpu_max {
            v.push(("cpu.max".into(), c.clone()));
        }
        if let Some(w) = self.cpu_weight {
            v.push(("cpu.weight".into(), w.to_string()));
        }
        if let Some(p) = self.pids_max {
            v.push(("pids.max".into(), p.to_string()));
        }
        v.extend(self.unified.iter().cloned());
        v
    }
}

/// Enables [`CONTROLLERS`] in `dir`'s `cgroup.subtree_control`, one by
/// one (a controller the kernel lacks is logged, not fatal).
fn enable_controllers(dir: &Path) {
    let file = dir.join("cgroup.subtree_control");
    let have = std::fs::read_to_string(&file).unwrap_or_default();
    for c in CONTROLLERS {
        if have.split_whitespace().any(|x| x == c) {
            continue;
        }
        if let Err(e) = std::fs::write(&file, format!("+{c}")) {
            tracing::warn!(dir = %dir.display(), controller = c, error = %e, "cannot enable cgroup controller");
        }
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// The cgroup of container `id` under `root` (normally [`CGROUP_ROOT`]).
    pub fn at(root: &Path, id: &str) -> Self {
        Self {
            path: root.join(PARENT).join(id),
        }
    }

    /// Makes the cgroup (it must not exist) and writes `res` into it.
    pub fn create(&self, res: &Resources) -> Result<(), String> {
        let parent = self.path.parent().unwrap_or(Path::new(CGROUP_ROOT));
        if let Some(root) = parent.parent() {
            enable_controllers(root);
        }
        match std::fs::create_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot make cgroup {}: {e}", parent.display())),
        }
        enable_controllers(parent);
        std::fs::create_dir(&self.path)
            .map_err(|e| format!("cannot make cgroup {}: {e}", self.path.display()))?;
        for (file, value) in res.files() {
            // No swap configured in the kernel: nothing to limit.
            if file == "memory.swap.max" && !self.path.join(&file).exists() {
                continue;
            }
            if let Err(e) = std::fs::write(self.path.join(&file), &value) {
                let _ = std::fs::remove_dir(&self.path);
                return Err(format!(
                    "cannot write {value:?} to {file} of cgroup {}: {e}",
                    self.path.display()
                ));
            }
        }
        Ok(())
    }

    /// Pids in `cgroup.procs` (the cgroup's own; no sub-cgroups are made).
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `sig` to every process in the cgroup; SIGKILL goes through
    /// `cgroup.kill`, which also catches processes forking meanwhile.
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> io::Result<()> {
        if sig == nix::sys::signal::Signal::SIGKILL {
            // Never create files: a cgroup directory has them all.
            let kill = std::fs::OpenOptions::new()
                .write(true)
                .open(self.path.join("cgroup.kill"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"));
            match kill {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
        Ok(())
    }

    /// Kills what is left and removes the cgroup, waiting at most `within`
    /// for it to empty. Gone already is fine.
    pub fn remove(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if !self.path.exists() {
                return Ok(());
            }
            let _ = self.signal_all(nix::sys::signal::Signal::SIGKILL);
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "cgroup {} still busy after {within:?} ({} processes left): {e}",
                        self.path.display(),
                        self.procs().len()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_map_to_cgroup_files() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":33554432},"cpu":{"quota":50000,"period":100000,"shares":1024},"pids":{"limit":20}}"#,
        )
        .unwrap();
        let res = Resources::from_spec(&r).unwrap();
        let files = res.files();
        assert_eq!(
            files,
            vec![
                ("memory.max".to_string(), "33554432".to_string()),
                ("memory.swap.max".into(), "0".into()),
                ("cpu.max".into(), "50000 100000".into()),
                ("cpu.weight".into(), "39".into()),
                ("pids.max".into(), "20".into()),
            ]
        );
        let r: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"period":50000},"memory":{"limit":-1}}"#).unwrap();
        assert_eq!(
            Resources::from_spec(&r).unwrap().files(),
            vec![("cpu.max".to_string(), "max 50000".to_string())]
        );
        let r: LinuxResources = serde_json::from_str(r#"{"unified":{"../x":"1"}}"#).unwrap();
        assert!(Resources::from_spec(&r)
            .unwrap_err()
            .field
            .contains("unified"));
        let r: LinuxResources = serde_json::from_str(r#"{"blockIO":{"weight":10}}"#).unwrap();
        assert!(Resources::from_spec(&r).is_err());
    }

    #[test]
    fn create_writes_limits_and_remove_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::at(dir.path(), "c1");
        let res = Resources {
            memory_max: Some(1 << 25),
            pids_max: Some(7),
            ..Default::default()
        };
        cg.create(&res).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path.join("memory.max")).unwrap(),
            "33554432"
        );
        assert_eq!(
            std::fs::read_to_string(cg.path.join("pids.max")).unwrap(),
            "7"
        );
        assert!(cg.create(&res).is_err(), "a second create must fail");
        assert!(cg.procs().is_empty());
        // Files in a plain directory keep rmdir failing: bounded.
        let err = cg.remove(Duration::from_millis(50)).unwrap_err();
        assert!(err.contains("still busy"), "{err}");
        for f in std::fs::read_dir(&cg.path).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        cg.remove(Duration::from_secs(1)).unwrap();
        assert!(!cg.path.exists());
        cg.remove(Duration::from_secs(1)).unwrap();
    }
}
