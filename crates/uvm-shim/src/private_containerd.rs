//! A containerd of one's own, for tests and benchmarks: its root, state,
//! sockets, FIFOs and config under one directory (never the system's
//! `/run/containerd`), a given shim directory first on its PATH and the
//! UVM runtime dir inside the directory too. Dropping it stops containerd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on containerd answering after its start.
pub const CONTAINERD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `ctr` command.
pub const CTR_TIMEOUT_SECS: u32 = 120;

/// Why the private containerd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateContainerdError {
    /// A file operation failed.
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
    /// containerd did not answer in time.
    #[error("containerd did not answer within {timeout:?}; its log ends:\n{log_tail}")]
    NotUp {
        /// The bound.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PrivateContainerdError {
    let path = path.to_path_buf();
    move |source| PrivateContainerdError::Io {
        action,
        path,
        source,
    }
}

/// One containerd and its directory (which the caller owns).
pub struct PrivateContainerd {
    dir: PathBuf,
    shim_dir: PathBuf,
    env: Vec<(String, PathBuf)>,
    child: Option<Child>,
}

impl PrivateContainerd {
    /// Writes the config under `dir` and starts containerd with `shim_dir`
    /// first on its PATH, `UVM_RUNTIME_DIR=<dir>/uvm-run` and `env`.
    /// Keep `dir` short: shim sockets are `<dir>/s/<64 hex>`.
    pub fn start(
        dir: &Path,
        shim_dir: &Path,
        env: Vec<(String, PathBuf)>,
    ) -> Result<Self, PrivateContainerdError> {
        let p = |s: &str| dir.join(s).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{debug}"
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = p("root"),
            state = p("state"),
            sock = p("containerd.sock"),
            debug = p("debug.sock"),
            opt = p("opt"),
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, config).map_err(io("write", &path))?;
        let mut c = Self {
            dir: dir.to_path_buf(),
            shim_dir: shim_dir.to_path_buf(),
            env,
            child: None,
        };
        c.spawn()?;
        Ok(c)
    }

    /// Starts (or restarts) containerd and waits for it to answer.
    pub fn spawn(&mut self) -> Result<(), PrivateContainerdError> {
        let path = format!(
            "{}:{}",
            self.shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log_path = self.path("containerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let log2 = log.try_clone().map_err(io("open", &log_path))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            .env("PATH", path)
            .env("UVM_RUNTIME_DIR", self.path("uvm-run"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io("run", Path::new("containerd")))?;
        self.child = Some(child);
        let deadline = Instant::now() + CONTAINERD_START_TIMEOUT;
        while !self.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                self.stop();
                return Err(PrivateContainerdError::NotUp {
                    timeout: CONTAINERD_START_TIMEOUT,
                    log_tail: tail(&self.log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s); shims stay.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    /// The `ctr` command for this containerd (global flags set).
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.path("containerd.sock"));
        cmd
    }

    /// Runs `ctr ARGS` (stdin from /dev/null, bounded by [`CTR_TIMEOUT_SECS`]).
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("timeout")
            .arg(CTR_TIMEOUT_SECS.to_string())
            .arg("ctr")
            .arg("--address")
            .arg(self.path("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// The arguments of `ctr run` with `runtime` (None: containerd's
    /// default, runc) and the FIFO dir: `opts`, `image`, `id`, `cmd`.
    pub fn run_args(
        &self,
        runtime: Option<&str>,
        opts: &[&str],
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        if let Some(r) = runtime {
            a.extend(["--runtime".into(), r.into()]);
        }
        a.extend(["--fifo-dir".into(), self.path("fifo").display().to_string()]);
        a.extend(opts.iter().map(|s| s.to_string()));
        a.push(image.into());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
