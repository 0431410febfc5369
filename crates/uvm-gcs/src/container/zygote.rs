//! The container zygote: `uvm-gcs container-zygote`, a single-threaded
//! process the agent starts once (on the first `CreateContainer`, again if
//! it dies) and asks for every container process, so that no launch pays
//! for re-executing the agent (14–16 ms under TCG) or for forking the
//! multi-threaded agent, whose pages are then copied on write.
//!
//! A request is one `SOCK_SEQPACKET` message on the zygote's stdin with
//! [`REQUEST_FDS`] descriptors: the process's stdin, stdout and stderr, then
//! the plan, status and go pipes of [`super::plan`]. The zygote forks a
//! helper with `CLONE_PARENT` (a child of the agent, reaped as an orphan),
//! which puts them on fds 0–5 and runs [`super::helper::main`]; the zygote
//! closes its copies and waits for the next request. It exits when the
//! agent closes the socket.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::sync::oneshot;

use super::plan::{FailKind, Failure, STATUS_FD};
use crate::reaper::{ExitKind, Reaper};

/// `argv[1]` that makes `uvm-gcs` run as the zygote.
pub const ZYGOTE_ARG: &str = "container-zygote";
/// Descriptors per request, in the order the helper gets them (0–5).
pub const REQUEST_FDS: usize = 6;
/// The zygote reads its requests from its stdin.
const REQUEST_SOCKET: RawFd = 0;

/// The agent's side: the running zygote, started on demand.
pub struct Zygote {
    reaper: Reaper,
    live: Mutex<Option<Live>>,
}

/// A started zygote.
struct Live {
    socket: OwnedFd,
    pid: u32,
    exit: oneshot::Receiver<ExitKind>,
}

impl Live {
    fn start(reaper: &Reaper) -> std::io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut cmd = Command::new("/proc/self/exe");
        // No pre_exec: std spawns with posix_spawn (a vfork), so the agent's
        // pages are not made copy-on-write.
        cmd.arg0("uvm-gcs")
            .arg(ZYGOTE_ARG)
            .env_clear()
            .stdin(theirs);
        let (child, exit) = reaper.spawn_registered(&mut cmd)?;
        tracing::debug!(pid = child.id(), "container zygote started");
        Ok(Self {
            socket: ours,
            pid: child.id(),
            exit,
        })
    }

    /// `false` once its end of the socket is closed: it died (the kernel
    /// closes a dead process's descriptors before the reaper sees it).
    fn alive(&mut self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        // POLLHUP is reported whatever is asked for.
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::empty())];
        let hung_up = poll(&mut fds, PollTimeout::ZERO).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
        if hung_up {
            let exit = self.exit.try_recv().ok();
            tracing::warn!(pid = self.pid, exit = ?exit, "container zygote gone; the next request starts another");
        }
        !hung_up
    }

    fn send(&self, fds: &[RawFd; REQUEST_FDS]) -> nix::Result<()> {
        let rights = [ControlMessage::ScmRights(fds)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(b"r")],
                &rights,
                flags,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                r => return r.map(drop),
            }
        }
    }
}

impl Zygote {
    /// None started yet; its processes are reaped by `reaper`.
    pub fn new(reaper: Reaper) -> Self {
        Self {
            reaper,
            live: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running zygote, started when there is none (or it died).
    fn running<'a>(&self, live: &'a mut Option<Live>) -> std::io::Result<&'a mut Live> {
        if !live.as_mut().is_some_and(Live::alive) {
            *live = Some(Live::start(&self.reaper)?);
        }
        Ok(live.as_mut().expect("set above"))
    }

    /// `true` when no zygote runs: the last one died (or none was started).
    pub fn ended(&self) -> bool {
        !self.lock().as_mut().is_some_and(Live::alive)
    }

    /// Starts the zygote now unless it runs, so that the first launch need
    /// not wait for it; a failure is logged (the launch tries again).
    pub fn warm(&self) {
        if let Err(e) = self.running(&mut self.lock()) {
            tracing::warn!(error = %e, "cannot start the container zygote");
        }
    }

    /// Hands one request to the zygote (see the module doc), starting one
    /// when none runs. After a failure, [`Zygote::ended`] tells whether the
    /// zygote died (a new one may take the request).
    pub fn request(&self, fds: [BorrowedFd<'_>; REQUEST_FDS]) -> std::io::Result<()> {
        let raw = fds.map(|f| f.as_raw_fd());
        Ok(self.running(&mut self.lock())?.send(&raw)?)
    }
}

/// One request's descriptors; `None` at the end of the stream.
fn receive() -> nix::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; REQUEST_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            REQUEST_SOCKET,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            r => r?,
        };
        if msg.bytes == 0 {
            return Ok(None);
        }
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel installed these descriptors for us.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        return Ok(Some(fds));
    }
}

/// Writes `f` to the request's status pipe (the agent reads it as the
/// helper's failure).
fn report(fds: &[OwnedFd], f: &Failure) {
    if let Some(status) = fds.get(STATUS_FD as usize) {
        let _ = nix::unistd::write(status, f.line().as_bytes());
    }
}

/// In the forked helper: the request's descriptors onto 0–5 (through
/// copies above them, so that no dup2 overwrites a source not yet moved).
fn place(fds: &[OwnedFd]) -> Result<(), Failure> {
    use nix::fcntl::{fcntl, FcntlArg};
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        let n = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| Failure::sys("dup", e))?;
        high.push(n);
    }
    for (dst, src) in high.into_iter().enumerate() {
        // SAFETY: dup2 onto 0–5 of this single-threaded process; the old
        // descriptors there (the socket, the zygote's stdio) are not used
        // again here.
        if unsafe { libc::dup2(src, dst as RawFd) } < 0 {
            return Err(Failure::sys("dup2", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Forks the helper for one request; the zygote keeps no descriptor of it.
fn fork_helper(fds: Vec<OwnedFd>) {
    if fds.len() != REQUEST_FDS {
        report(
            &fds,
            &Failure::new(
                FailKind::Internal,
                format!(
                    "the zygote got {} descriptors, not {REQUEST_FDS}",
                    fds.len()
                ),
            ),
        );
        return;
    }
    match super::helper::clone_parent() {
        Ok(0) => {
            if let Err(f) = place(&fds) {
                report(&fds, &f);
                std::process::exit(f.kind.exit_code());
            }
            super::helper::main()
        }
        Ok(_) => {}
        Err(f) => report(&fds, &f),
    }
}

/// The zygote's `main`: serves requests until the agent closes the socket.
pub fn main() -> ! {
    loop {
        match receive() {
            Ok(Some(fds)) => fork_helper(fds),
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("uvm-gcs container zygote: receiving a request: {e}");
                std::process::exit(1);
            }
        }
    }
}
