//! Stdout ports: a process writes its stdout straight to a virtio-serial port
//! the host picked, so bulk output skips gRPC (and every copy in the agent).
//!
//! The process gets the port as fd 1. The agent never touches the data; it
//! learns how much was written from the driver's per-port counter
//! (`bytes_sent` in `/sys/kernel/debug/virtio-ports/vportNpM`), read before
//! the process starts and again once no process holds the port any more.
//! The difference goes to the host in `Exited.stdout_port_bytes`, and the
//! host reads exactly that many bytes. A port that some process (a background
//! grandchild) still holds after the drain period is retired: never handed
//! out again, because what it writes later belongs to no exec.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the agent looks for remaining holders of a port after the process exited.
const HOLDER_POLL: Duration = Duration::from_millis(10);

/// Where the ports and their counters live (a seam for tests).
#[derive(Debug, Clone)]
pub struct PortPaths {
    /// `/sys/class/virtio-ports`: one dir per port, with a `name` file.
    pub class_dir: PathBuf,
    /// `/dev`: the port device nodes.
    pub dev_dir: PathBuf,
    /// `/sys/kernel/debug/virtio-ports`: one counter file per port.
    pub stats_dir: PathBuf,
    /// Mount debugfs at `/sys/kernel/debug` when `stats_dir` is missing.
    pub mount_debugfs: bool,
}

impl Default for PortPaths {
    fn default() -> Self {
        PortPaths {
            class_dir: "/sys/class/virtio-ports".into(),
            dev_dir: "/dev".into(),
            stats_dir: "/sys/kernel/debug/virtio-ports".into(),
            mount_debugfs: true,
        }
    }
}

/// An open port the agent keeps for the VM's lifetime (a virtio port can be
/// opened by one file description at a time).
struct Slot {
    file: Arc<File>,
    /// `vportNpM`: device and counter file name.
    dev: String,
    rdev: u64,
    in_use: bool,
    retired: bool,
}

/// The stdout ports of this VM, opened on first use.
pub struct StdoutPorts {
    paths: PortPaths,
    slots: Mutex<HashMap<String, Slot>>,
}

/// How a process's use of a stdout port ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortEnd {
    /// Bytes written to the port while the process (and its children) held it.
    pub bytes: u64,
    /// A process still held the port after the drain period.
    pub retired: bool,
}

/// One process's exclusive use of a port. Dropped without
/// [`Claim::finish`] (the process never started, or was killed), the port is
/// released if no process holds it, else retired.
pub struct Claim {
    ports: Arc<StdoutPorts>,
    name: String,
    file: Arc<File>,
    rdev: u64,
    stats: PathBuf,
    start: u64,
    done: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("name", &self.name).finish()
    }
}

impl StdoutPorts {
    /// The ports of a real guest.
    pub fn new() -> Arc<Self> {
        Self::with_paths(PortPaths::default())
    }

    /// Ports found under `paths`.
    pub fn with_paths(paths: PortPaths) -> Arc<Self> {
        Arc::new(StdoutPorts {
            paths,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Claims the port named `name` for one process: opens it on first use,
    /// and reads its counter. Fails if it is in use, retired, missing, or
    /// its counter cannot be read (the caller then falls back to gRPC).
    pub fn claim(self: &Arc<Self>, name: &str) -> io::Result<Claim> {
        // Port names compare case-insensitively, as everywhere in the agent.
        let name = name.to_ascii_lowercase();
        let name = name.as_str();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(name) {
            let slot = self.open(name)?;
            slots.insert(name.to_owned(), slot);
        }
        let slot = slots.get_mut(name).expect("inserted above");
        if slot.retired {
            return Err(io::Error::other(format!("stdout port {name} is retired")));
        }
        if slot.in_use {
            return Err(io::Error::other(format!("stdout port {name} is in use")));
        }
        let stats = self.paths.stats_dir.join(&slot.dev);
        let start = read_bytes_sent(&stats)?;
        slot.in_use = true;
        Ok(Claim {
            ports: self.clone(),
            name: name.to_owned(),
            file: slot.file.clone(),
            rdev: slot.rdev,
            stats,
            start,
            done: false,
        })
    }

    fn open(&self, name: &str) -> io::Result<Slot> {
        let dev = find_port(&self.paths.class_dir, name)?;
        if self.paths.mount_debugfs && !self.paths.stats_dir.exists() {
            mount_debugfs(&self.paths.stats_dir);
        }
        // Blocking mode: the file description is shared with the process,
        // which expects an ordinary blocking stdout.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(self.paths.dev_dir.join(&dev))?;
        let rdev = file.metadata()?.rdev();
        Ok(Slot {
            file: Arc::new(file),
            dev,
            rdev,
            in_use: false,
            retired: false,
        })
    }

    fn release(&self, name: &str, retired: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(name) {
            slot.in_use = false;
            slot.retired |= retired;
        }
    }
}

impl Claim {
    /// A descriptor of the port to give the process as its stdout.
    pub fn child_fd(&self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.file.try_clone()?))
    }

    /// After the process exited: waits until no other process holds the
    /// port, or until it has been quiet (counter unchanged) for `quiet` while
    /// still held, then returns the bytes written and releases the port.
    pub async fn finish(mut self, quiet: Duration) -> PortEnd {
        let mut last = read_bytes_sent(&self.stats).unwrap_or(self.start);
        let mut quiet_since = Instant::now();
        let retired = loop {
            let held = tokio::task::spawn_blocking({
                let rdev = self.rdev;
                move || held_elsewhere(rdev)
            })
            .await
            .unwrap_or(true);
            if !held {
                break false;
            }
            let now = read_bytes_sent(&self.stats).unwrap_or(last);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= quiet {
                break true;
            }
            tokio::time::sleep(HOLDER_POLL).await;
        };
        // Read again: the last writer may have finished after the check above.
        let end = read_bytes_sent(&self.stats).unwrap_or(last);
        self.done = true;
        self.ports.release(&self.name, retired);
        if retired {
            tracing::warn!(port = %self.name, "a process still holds the stdout port; retiring it");
        }
        PortEnd {
            bytes: end.saturating_sub(self.start),
            retired,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            let retired = held_elsewhere(self.rdev);
            self.ports.release(&self.name, retired);
        }
    }
}

/// `vportNpM` of the port called `name`.
fn find_port(class_dir: &Path, name: &str) -> io::Result<String> {
    for entry in std::fs::read_dir(class_dir)?.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim().eq_ignore_ascii_case(name) {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio port named {name}"),
    ))
}

fn mount_debugfs(stats_dir: &Path) {
    let Some(root) = stats_dir.parent() else {
        return;
    };
    if let Err(e) = nix::mount::mount(
        Some("debugfs"),
        root,
        Some("debugfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        tracing::debug!(error = %e, "cannot mount debugfs");
    }
}

/// The `bytes_sent: N` line of a virtio-ports counter file.
fn read_bytes_sent(stats: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(stats)?;
    parse_bytes_sent(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no bytes_sent counter", stats.display()),
        )
    })
}

fn parse_bytes_sent(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("bytes_sent:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a process other than this one has a descriptor of device `rdev` open.
fn held_elsewhere(rdev: u64) -> bool {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        let pid = pid.to_string_lossy();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(m) = std::fs::metadata(fd.path()) {
                use std::os::unix::fs::FileTypeExt;
                if m.file_type().is_char_device() && m.rdev() == rdev {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_counter_file() {
        let text = "name: x\nguest_connected: 1\nhost_connected: 1\noutvq_full: 0\nbytes_sent: 268435456\nbytes_received: 0\n";
        assert_eq!(parse_bytes_sent(text), Some(268_435_456));
        assert_eq!(parse_bytes_sent("name: x\n"), None);
    }

    /// A fake guest: port `vport9p1` named `name` is a pty slave, its
    /// counter a plain file the test rewrites.
    struct FakePort {
        _dir: tempfile::TempDir,
        _master: OwnedFd,
        stats: PathBuf,
        ports: Arc<StdoutPorts>,
    }

    fn fake_port(name: &str) -> FakePort {
        let dir = tempfile::tempdir().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
        ))
        .unwrap();
        drop(pty.slave);
        let class = dir.path().join("class/vport9p1");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("name"), format!("{name}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::os::unix::fs::symlink(slave, dir.path().join("dev/vport9p1")).unwrap();
        std::fs::create_dir_all(dir.path().join("stats")).unwrap();
        let stats = dir.path().join("stats/vport9p1");
        std::fs::write(&stats, "name: x\nbytes_sent: 1000\n").unwrap();
        let ports = StdoutPorts::with_paths(PortPaths {
            class_dir: dir.path().join("class"),
            dev_dir: dir.path().join("dev"),
            stats_dir: dir.path().join("stats"),
            mount_debugfs: false,
        });
        FakePort {
            _dir: dir,
            _master: pty.master,
            stats,
            ports,
        }
    }

    fn child_on(fd: OwnedFd, secs: &str) -> std::process::Child {
        std::process::Command::new("sleep")
            .arg(secs)
            .stdout(std::process::Stdio::from(fd))
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn finish_waits_for_the_holder_and_counts_its_bytes() {
        let fake = fake_port("out0");
        assert!(
            fake.ports.claim("nope").is_err(),
            "a missing port is refused"
        );
        let claim = fake
            .ports
            .claim("OUT0")
            .expect("names compare case-insensitively");
        assert!(
            fake.ports.claim("out0").is_err(),
            "a claimed port is refused"
        );
        let mut child = child_on(claim.child_fd().unwrap(), "0.5");
        std::fs::write(&fake.stats, "bytes_sent: 1700\n").unwrap();
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        let end = claim.finish(Duration::from_secs(20)).await;
        assert!(
            waiter.is_finished(),
            "finish returned while the child still held the port"
        );
        assert_eq!(
            end,
            PortEnd {
                bytes: 700,
                retired: false
            }
        );
        waiter.join().unwrap();
        // Released: the next process may have it.
        drop(fake.ports.claim("out0").expect("released after finish"));
        drop(fake.ports.claim("out0").expect("released after drop"));
    }

    #[tokio::test]
    async fn a_port_still_held_after_the_quiet_period_is_retired() {
        let fake = fake_port("out1");
        let claim = fake.ports.claim("out1").unwrap();
        let mut child = child_on(claim.child_fd().unwrap(), "30");
        let end = claim.finish(Duration::from_millis(300)).await;
        assert_eq!(
            end,
            PortEnd {
                bytes: 0,
                retired: true
            }
        );
        let err = fake.ports.claim("out1").unwrap_err();
        assert!(err.to_string().contains("retired"), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
