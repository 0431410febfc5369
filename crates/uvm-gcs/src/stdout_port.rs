//! Stdout ports: a process writes its stdout straight to a virtio-serial port
//! the host picked, so bulk output skips gRPC (and every copy in the agent).
//!
//! The agent opens the port, hands the descriptor to the process as fd 1 and
//! keeps no copy. It never touches the data: the driver's per-port debugfs
//! file (`/sys/kernel/debug/virtio-ports/vportNpM`) says how much was written
//! (`bytes_sent`, read before the start and at the end) and whether any
//! process still holds the port (`guest_connected` drops to 0 when the last
//! descriptor closes). The difference goes to the host in
//! `Exited.stdout_port_bytes`, and the host reads exactly that many bytes. A
//! port that some process (a background grandchild) still holds after the
//! drain period is retired: never handed out again, because what it writes
//! later belongs to no exec.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
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
            class_dir: crate::ports::PORTS_DIR.into(),
            dev_dir: "/dev".into(),
            stats_dir: "/sys/kernel/debug/virtio-ports".into(),
            mount_debugfs: true,
        }
    }
}

/// A port the agent has used.
struct Slot {
    /// `vportNpM`: device and counter file name.
    dev: String,
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
    /// The open port until [`Claim::child_fd`] hands it over.
    file: Option<File>,
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

    /// Claims the port named `name` for one process: opens it (a virtio
    /// port opens once at a time, so this fails while anything still holds
    /// it) and reads its counter. Fails if it is in use, retired, missing, or
    /// its counter cannot be read (the caller then falls back to gRPC).
    pub fn claim(self: &Arc<Self>, name: &str) -> io::Result<Claim> {
        // Port names compare case-insensitively, as everywhere in the agent.
        let name = name.to_ascii_lowercase();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&name) {
            let dev = crate::ports::find_in(&self.paths.class_dir, &name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no virtio port named {name}"),
                )
            })?;
            if self.paths.mount_debugfs && !self.paths.stats_dir.exists() {
                mount_debugfs(&self.paths.stats_dir);
            }
            let slot = Slot {
                dev,
                in_use: false,
                retired: false,
            };
            slots.insert(name.clone(), slot);
        }
        let slot = slots.get_mut(&name).expect("inserted above");
        if slot.retired {
            return Err(io::Error::other(format!("stdout port {name} is retired")));
        }
        if slot.in_use {
            return Err(io::Error::other(format!("stdout port {name} is in use")));
        }
        let stats = self.paths.stats_dir.join(&slot.dev);
        let start = read_counters(&stats)?.bytes_sent;
        // Blocking mode: the process expects an ordinary blocking stdout.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(self.paths.dev_dir.join(&slot.dev))?;
        slot.in_use = true;
        Ok(Claim {
            ports: self.clone(),
            name,
            file: Some(file),
            stats,
            start,
            done: false,
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
    /// The port, to become the process's stdout. The agent keeps no copy,
    /// so the port closes when the process and its children are done with
    /// it. Errors on a second call.
    pub fn child_fd(&mut self) -> io::Result<OwnedFd> {
        self.file
            .take()
            .map(OwnedFd::from)
            .ok_or_else(|| io::Error::other("stdout port already handed out"))
    }

    /// After the process exited: waits until no process holds the port, or
    /// until it has been quiet (counter unchanged) for `quiet` while still
    /// held, then returns the bytes written and releases (or retires) the port.
    pub async fn finish(mut self, quiet: Duration) -> PortEnd {
        self.file = None;
        let mut last = self.start;
        let mut quiet_since = Instant::now();
        let (end, retired) = loop {
            let now = match read_counters(&self.stats) {
                Ok(c) => c,
                // The counters are gone (port unplugged): nothing more can come.
                Err(_) => break (last, true),
            };
            if !now.connected {
                break (now.bytes_sent, false);
            }
            if now.bytes_sent != last {
                last = now.bytes_sent;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= quiet {
                break (now.bytes_sent, true);
            }
            tokio::time::sleep(HOLDER_POLL).await;
        };
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
            self.file = None;
            let held = read_counters(&self.stats).map_or(true, |c| c.connected);
            self.ports.release(&self.name, held);
        }
    }
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

/// What the driver's debugfs file says about a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// Bytes the guest queued to the host, ever.
    bytes_sent: u64,
    /// Some descriptor of the port is open.
    connected: bool,
}

fn read_counters(stats: &Path) -> io::Result<Counters> {
    let text = std::fs::read_to_string(stats)?;
    parse_counters(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no bytes_sent / guest_connected lines", stats.display()),
        )
    })
}

fn parse_counters(text: &str) -> Option<Counters> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(Counters {
        bytes_sent: field("bytes_sent:")?,
        connected: field("guest_connected:")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_counter_file() {
        let text = "name: x\nguest_connected: 1\nhost_connected: 1\noutvq_full: 0\nbytes_sent: 268435456\nbytes_received: 0\n";
        let want = Counters {
            bytes_sent: 268_435_456,
            connected: true,
        };
        assert_eq!(parse_counters(text), Some(want));
        assert_eq!(parse_counters("name: x\nbytes_sent: 3\n"), None);
    }

    /// A fake guest: port `vport9p1` named `name` is a pty slave, its
    /// counter file a plain file the test rewrites as the driver would.
    struct FakePort {
        _dir: tempfile::TempDir,
        _master: OwnedFd,
        stats: PathBuf,
        ports: Arc<StdoutPorts>,
    }

    fn fake_port(name: &str) -> FakePort {
        let dir = tempfile::tempdir().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&pty.slave);
        let slave = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        drop(pty.slave);
        let class = dir.path().join("class/vport9p1");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("name"), format!("{name}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::os::unix::fs::symlink(slave, dir.path().join("dev/vport9p1")).unwrap();
        std::fs::create_dir_all(dir.path().join("stats")).unwrap();
        let stats = dir.path().join("stats/vport9p1");
        set(&stats, 1000, false);
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

    fn set(stats: &Path, bytes_sent: u64, connected: bool) {
        let text = format!(
            "name: x\nguest_connected: {}\nbytes_sent: {bytes_sent}\n",
            u8::from(connected)
        );
        std::fs::write(stats, text).unwrap();
    }

    #[tokio::test]
    async fn finish_waits_until_the_port_closes_and_counts_its_bytes() {
        let fake = fake_port("out0");
        assert!(
            fake.ports.claim("nope").is_err(),
            "a missing port is refused"
        );
        let mut claim = fake
            .ports
            .claim("OUT0")
            .expect("names compare case-insensitively");
        assert!(
            fake.ports.claim("out0").is_err(),
            "a claimed port is refused"
        );
        let fd = claim.child_fd().unwrap();
        assert!(claim.child_fd().is_err(), "handed out once");
        drop(fd);
        set(&fake.stats, 1700, true);
        let stats = fake.stats.clone();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            set(&stats, 1800, false);
        });
        let end = claim.finish(Duration::from_secs(20)).await;
        assert!(
            closer.is_finished(),
            "finish returned while the port was open"
        );
        assert_eq!(
            end,
            PortEnd {
                bytes: 800,
                retired: false
            }
        );
        // Released: the next process may have it.
        drop(fake.ports.claim("out0").expect("released after finish"));
        drop(fake.ports.claim("out0").expect("released after drop"));
    }

    #[tokio::test]
    async fn a_port_still_held_after_the_quiet_period_is_retired() {
        let fake = fake_port("out1");
        let claim = fake.ports.claim("out1").unwrap();
        set(&fake.stats, 1000, true);
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
    }

    #[test]
    fn a_claim_dropped_while_the_port_is_held_retires_it() {
        let fake = fake_port("out2");
        drop(fake.ports.claim("out2").unwrap());
        let claim = fake.ports.claim("out2").expect("closed port released");
        set(&fake.stats, 1000, true);
        drop(claim);
        assert!(fake.ports.claim("out2").is_err());
    }
}
