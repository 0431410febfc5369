//! Turning a `ProcessSpec` into a running process: validation, PATH lookup,
//! security policy, pipes or a pty, and a fork registered with the reaper.
//!
//! Errors are `tonic::Status` values built here, because the gRPC code *is*
//! the contract (NOT_FOUND → 127, PERMISSION_DENIED → 126, ...); they are
//! produced once per request, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;

use nix::fcntl::OFlag;
use tokio::sync::oneshot;
use tonic::Status;
use uvm_proto::gcs::{ProcessSpec, WindowSize};

use crate::fdio::FdIo;
use crate::init::DEFAULT_PATH;
use crate::policy::Policy;
use crate::reaper::{ExitKind, Reaper};

/// Upper bound on the total size of args + env of one process.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Guest-wide settings applied to every process (from `Negotiate`).
#[derive(Debug, Clone, Default)]
pub struct ProcessDefaults {
    /// `TZ` for processes, when set.
    pub timezone: Option<String>,
    /// `KEY=VALUE` entries added to every environment (the spec wins).
    pub env: Vec<String>,
}

/// A validated spec, ready to spawn.
#[derive(Debug)]
pub struct Prepared {
    /// Resolved absolute path of the executable.
    pub path: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    workdir: PathBuf,
    terminal: bool,
    window: Option<WindowSize>,
}

/// A spawned process and the parent's ends of its stdio.
pub struct Running {
    /// Process id.
    pub pid: i32,
    /// Writer for the child's stdin (the pty master when `terminal`).
    pub stdin: Arc<FdIo>,
    /// The child's stdout (the pty master when `terminal`); `None` when it
    /// writes straight to a stdout port.
    pub stdout: Option<Arc<FdIo>>,
    /// The child's stderr; `None` with a terminal.
    pub stderr: Option<Arc<FdIo>>,
    /// `true` when the process runs on a pty.
    pub terminal: bool,
    /// Resolves when the reaper has collected the process; `None` when its
    /// exit can no longer be learnt (the reaper's side went away).
    pub exit: ExitFuture,
}

/// How a process ended, as `Exec` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Its exit status.
    pub kind: ExitKind,
    /// A container's process: its cgroup counted an OOM kill while it ran.
    pub oom_killed: bool,
}

/// The exit of a spawned process (see [`Running::exit`]).
pub type ExitFuture = Pin<Box<dyn Future<Output = Option<ProcessExit>> + Send>>;

/// The exit of a plain (non-container) process, from its reaper receiver.
pub fn plain_exit(rx: oneshot::Receiver<ExitKind>) -> ExitFuture {
    Box::pin(async move {
        rx.await.ok().map(|kind| ProcessExit {
            kind,
            oom_killed: false,
        })
    })
}

fn parse_env(entries: &[String], into: &mut BTreeMap<String, String>) -> Result<(), Status> {
    for entry in entries {
        match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                into.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "malformed environment entry {entry:?}: want KEY=VALUE"
                )))
            }
        }
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Resolves `arg0` as execve would after a PATH search. NOT_FOUND when
/// nothing exists, PERMISSION_DENIED when it exists but cannot be executed.
pub fn resolve(arg0: &str, path_var: &str, workdir: &Path) -> Result<PathBuf, Status> {
    let not_found = || Status::not_found(format!("executable file not found: {arg0}"));
    let denied = |p: &Path| {
        Status::permission_denied(format!(
            "{}: permission denied (not an executable file)",
            p.display()
        ))
    };
    if arg0.contains('/') {
        let path = workdir.join(arg0);
        if !path.exists() {
            return Err(not_found());
        }
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(denied(&path))
        };
    }
    let mut found_not_exec = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = workdir.join(dir).join(arg0);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if found_not_exec.is_none() && candidate.exists() && !candidate.is_dir() {
            found_not_exec = Some(candidate);
        }
    }
    match found_not_exec {
        Some(p) => Err(denied(&p)),
        None => Err(not_found()),
    }
}

/// Validates `spec`, resolves the executable and checks the policy.
pub fn prepare(
    spec: &ProcessSpec,
    defaults: &ProcessDefaults,
    policy: &Policy,
) -> Result<Prepared, Status> {
    let Some(arg0) = spec.args.first() else {
        return Err(Status::invalid_argument("args must not be empty"));
    };
    let size: usize = spec.args.iter().chain(&spec.env).map(|s| s.len() + 1).sum();
    if size > MAX_SPEC_BYTES {
        return Err(Status::invalid_argument(format!(
            "args and env total {size} bytes, more than the limit of {MAX_SPEC_BYTES}"
        )));
    }
    if spec.args.iter().chain(&spec.env).any(|s| s.contains('\0')) {
        return Err(Status::invalid_argument(
            "args and env must not contain NUL bytes",
        ));
    }
    let mut env = BTreeMap::new();
    parse_env(&defaults.env, &mut env)?;
    parse_env(&spec.env, &mut env)?;
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(tz) = &defaults.timezone {
        env.entry("TZ".into()).or_insert_with(|| tz.clone());
    }
    if spec.terminal {
        env.entry("TERM".into()).or_insert_with(|| "xterm".into());
    }
    let workdir = PathBuf::from(if spec.workdir.is_empty() {
        "/"
    } else {
        &spec.workdir
    });
    if !workdir.is_dir() {
        return Err(Status::invalid_argument(format!(
            "workdir {}: no such directory",
            workdir.display()
        )));
    }
    let path = resolve(arg0, &env["PATH"], &workdir)?;
    if !policy.allows(&path, arg0) {
        return Err(Status::failed_precondition(format!(
            "{arg0}: denied by security policy"
        )));
    }
    Ok(Prepared {
        path,
        args: spec.args.clone(),
        env,
        workdir,
        terminal: spec.terminal,
        window: spec.window,
    })
}

fn spawn_error(path: &Path, e: io::Error) -> Status {
    let msg = format!("{}: {e}", path.display());
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => Status::not_found(msg),
        (io::ErrorKind::PermissionDenied, _)
        | (_, Some(libc::ENOEXEC))
        | (_, Some(libc::EISDIR)) => Status::permission_denied(msg),
        _ => Status::internal(msg),
    }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Applies a window size to a pty.
pub fn set_window(fd: i32, w: &WindowSize) {
    let ws = libc::winsize {
        ws_row: w.rows as u16,
        ws_col: w.cols as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` that lives for the whole call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A process's stdio before it is started: the ends it gets as fds 0, 1
/// and 2, and the agent's ends (see [`stdio`]). Every fd is close-on-exec.
pub struct Stdio {
    /// The process's stdin, stdout and stderr.
    pub child: [OwnedFd; 3],
    /// The agent's ends.
    pub parent: ParentStdio,
}

/// The agent's ends of a process's stdio.
pub struct ParentStdio {
    /// The pty master, when the process runs on a terminal.
    master: Option<OwnedFd>,
    /// Pipe ends: the writer of stdin, the readers of stdout (none when it
    /// is a stdout port) and stderr; unused with a terminal.
    pipes: Option<(OwnedFd, Option<OwnedFd>, OwnedFd)>,
}

/// The slave of a new pty as stdin, stdout and stderr when `terminal`,
/// else pipes, with `stdout_port` as stdout when given.
pub fn stdio(
    terminal: bool,
    window: Option<&WindowSize>,
    stdout_port: Option<OwnedFd>,
) -> Result<Stdio, Status> {
    let internal = |what: &str, e: &dyn std::fmt::Display| Status::internal(format!("{what}: {e}"));
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("dup", &e));
    if !terminal {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e));
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout, stdout_r) = match stdout_port {
            Some(fd) => {
                set_cloexec(&fd).map_err(|e| internal("stdout port", &e))?;
                (fd, None)
            }
            None => {
                let (r, w) = pipe()?;
                (w, Some(r))
            }
        };
        let (stderr_r, stderr_w) = pipe()?;
        return Ok(Stdio {
            child: [stdin_r, stdout, stderr_w],
            parent: ParentStdio {
                master: None,
                pipes: Some((stdin_w, stdout_r, stderr_r)),
            },
        });
    }
    let pty = nix::pty::openpty(None, None).map_err(|e| internal("openpty", &e))?;
    set_cloexec(&pty.master)
        .and_then(|_| set_cloexec(&pty.slave))
        .map_err(|e| internal("pty", &e))?;
    if let Some(w) = window {
        set_window(pty.master.as_raw_fd(), w);
    }
    Ok(Stdio {
        child: [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave],
        parent: ParentStdio {
            master: Some(pty.master),
            pipes: None,
        },
    })
}

/// The agent's ends of process `pid`'s stdio as a [`Running`].
pub fn running(pid: i32, parent: ParentStdio, exit: ExitFuture) -> Result<Running, Status> {
    let wrap = |fd: OwnedFd| {
        FdIo::new(fd)
            .map(Arc::new)
            .map_err(|e| Status::internal(format!("stdio: {e}")))
    };
    match (parent.master, parent.pipes) {
        (Some(m), _) => {
            let m = wrap(m)?;
            Ok(Running {
                pid,
                stdin: m.clone(),
                stdout: Some(m),
                stderr: None,
                terminal: true,
                exit,
            })
        }
        (None, Some((stdin, stdout, stderr))) => Ok(Running {
            pid,
            stdin: wrap(stdin)?,
            stdout: stdout.map(wrap).transpose()?,
            stderr: Some(wrap(stderr)?),
            terminal: false,
            exit,
        }),
        (None, None) => Err(Status::internal("missing stdio")),
    }
}

/// Spawns a prepared process, registered with `reaper`. `stdout_port`
/// becomes its stdout instead of a pipe (ignored with a terminal).
pub fn spawn(
    p: Prepared,
    reaper: &Reaper,
    stdout_port: Option<OwnedFd>,
) -> Result<Running, Status> {
    let mut cmd = Command::new(&p.path);
    cmd.arg0(&p.args[0])
        .args(&p.args[1..])
        .env_clear()
        .envs(&p.env)
        .current_dir(&p.workdir);
    let Stdio {
        child: [stdin, stdout, stderr],
        parent,
    } = stdio(p.terminal, p.window.as_ref(), stdout_port)?;
    cmd.stdin(stdin).stdout(stdout).stderr(stderr);
    let terminal = p.terminal;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (child, exit) = reaper
        .spawn_registered(&mut cmd)
        .map_err(|e| spawn_error(&p.path, e))?;
    drop(cmd); // closes the agent's copies of the child's ends
    running(child.id() as i32, parent, plain_exit(exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_distinguishes_missing_and_not_executable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "x").unwrap();
        let path = dir.path().to_str().unwrap();
        assert_eq!(
            resolve("nope-xyz", path, Path::new("/"))
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            resolve("data", path, Path::new("/")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let abs = file.to_str().unwrap();
        assert_eq!(
            resolve(abs, "", Path::new("/")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(resolve("sh", DEFAULT_PATH, Path::new("/"))
            .unwrap()
            .is_absolute());
    }

    #[test]
    fn prepare_validates_the_spec() {
        let d = ProcessDefaults::default();
        let p = Policy::AllowAll;
        let spec = |args: &[&str]| ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            prepare(&spec(&[]), &d, &p).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut s = spec(&["true"]);
        s.workdir = "/no/such/dir".into();
        let err = prepare(&s, &d, &p).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("/no/such/dir"));
        let big = "x".repeat(MAX_SPEC_BYTES);
        assert_eq!(
            prepare(&spec(&["true", &big]), &d, &p).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut s = spec(&["true"]);
        s.env = vec!["NOEQUALS".into()];
        assert_eq!(
            prepare(&s, &d, &p).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let ok = prepare(&spec(&["true"]), &d, &p).unwrap();
        assert_eq!(ok.env["PATH"], DEFAULT_PATH);
    }
}
