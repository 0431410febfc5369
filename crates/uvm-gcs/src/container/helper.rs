//! The helper of one container process: a single-threaded child the
//! zygote forks (see [`super::zygote`]) with the process's stdio on fds
//! 0–2 and its pipes on 3–5, the way runc's nsexec works. It reads its
//! [`Plan`] on fd 3, creates (init) or joins (exec) the container's
//! namespaces, then forks the process with
//! `clone3(CLONE_PARENT | CLONE_INTO_CGROUP)`: the process is born in the
//! container's cgroup (no migration, whose RCU grace period costs 20–40 ms
//! under TCG), and is a child of the agent, not of the helper, so the agent
//! reaps it like any other. It writes `pid <n>` on fd 4 and exits. An init
//! unshares its cgroup namespace itself, once inside the cgroup, so that
//! the namespace is rooted there.
//!
//! The process waits for the agent's byte on fd 5 (sent once the agent has
//! registered its pid with the reaper), then sets itself up (see
//! [`super::childfs`], [`super::creds`]) and executes. A failed step is one
//! `err <kind> <message>` line on fd 4, which the process closes by
//! executing (it is close-on-exec there).

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};

use super::plan::{FailKind, Failure, Mode, Namespace, Plan, GO_FD, PLAN_FD, STATUS_FD};

/// Writes `line` to the status fd (a pipe to the agent; short lines are atomic).
fn write_status(line: &str) {
    // SAFETY: fd 4 is the status pipe the agent set up; ManuallyDrop keeps
    // it open for the other writers of this process.
    let mut f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(STATUS_FD) });
    let _ = f.write_all(line.as_bytes());
}

fn read_plan() -> Result<Plan, Failure> {
    // SAFETY: fd 3 is the plan pipe the agent set up, owned by nothing else here.
    let mut f = unsafe { File::from_raw_fd(PLAN_FD) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Failure::sys("read the plan", e))?;
    serde_json::from_slice(&buf)
        .map_err(|e| Failure::new(FailKind::Internal, format!("malformed plan: {e}")))
}

/// Opens the container's cgroup directory while the mount namespace is
/// still the guest's (an exec joins the container's before forking).
fn open_cgroup(cgroup: &Path) -> Result<File, Failure> {
    File::open(cgroup).map_err(|e| Failure::sys(format!("open cgroup {}", cgroup.display()), e))
}

/// Joins the cgroup `dir` by migration: the path for kernels without
/// `clone3`'s `CLONE_INTO_CGROUP`.
fn join_cgroup(dir: &File, cgroup: &Path) -> Result<(), Failure> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode as FileMode;
    let fd = openat(
        Some(dir.as_raw_fd()),
        "cgroup.procs",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| Failure::sys(format!("join cgroup {}", cgroup.display()), e))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut procs = unsafe { File::from_raw_fd(fd) };
    procs
        .write_all(std::process::id().to_string().as_bytes())
        .map_err(|e| Failure::sys(format!("join cgroup {}", cgroup.display()), e))
}

fn enter_namespaces(plan: &Plan) -> Result<(), Failure> {
    match &plan.mode {
        Mode::Init(init) => {
            let flags = init
                .namespaces
                .iter()
                .filter(|n| **n != Namespace::Cgroup)
                .fold(CloneFlags::empty(), |f, n| f | n.flag());
            unshare(flags).map_err(|e| Failure::sys("unshare", e))
        }
        Mode::Exec {
            init_pid,
            namespaces,
        } => {
            let mut ns = namespaces.clone();
            ns.sort_by_key(|n| n.join_rank());
            // Open them all while /proc is still the guest's.
            let mut files = Vec::new();
            for n in ns {
                let p = format!("/proc/{init_pid}/ns/{}", n.proc_name());
                let f = File::open(&p).map_err(|e| {
                    Failure::new(
                        FailKind::Internal,
                        format!(
                            "container {}: its init is gone ({p}: {e})",
                            plan.container_id
                        ),
                    )
                })?;
                files.push((n, f));
            }
            for (n, f) in files {
                setns(&f, n.flag())
                    .map_err(|e| Failure::sys(format!("setns {}", n.proc_name()), e))?;
            }
            Ok(())
        }
    }
}

/// `CLONE_INTO_CGROUP` of `clone3(2)` (libc's constant is an overflowing
/// `c_int`, deprecated for it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks the process as a sibling (a child of the agent), born in the
/// cgroup `dir` (`cgroup`, for messages). `Ok(None)` when this kernel has
/// no `clone3` with `CLONE_INTO_CGROUP` (before 5.7): nothing was forked.
fn clone_into_cgroup(dir: &File, cgroup: &Path) -> Result<Option<i32>, Failure> {
    let mut args = libc::clone_args {
        flags: libc::CLONE_PARENT as u64 | CLONE_INTO_CGROUP,
        cgroup: dir.as_raw_fd() as u64,
        // With CLONE_PARENT the exit signal is the helper's own (SIGCHLD);
        // clone3 wants 0 here.
        exit_signal: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
    };
    // SAFETY: clone3 without a stack behaves like fork (the child runs on a
    // copy-on-write copy of this stack); this process is single-threaded,
    // so the child's copy of the heap and of every lock is consistent.
    // `args` outlives the call and its size is the one passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::E2BIG) => Ok(None),
            _ => Err(Failure::sys(
                format!("clone3 into cgroup {}", cgroup.display()),
                e,
            )),
        };
    }
    Ok(Some(r as i32))
}

/// Forks a sibling of the caller (a child of the caller's parent): the
/// zygote forks helpers with it, a helper the process on kernels without
/// `CLONE_INTO_CGROUP`.
pub(super) fn clone_parent() -> Result<i32, Failure> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with no new stack, clone behaves like fork (the child runs on
    // a copy-on-write copy of this stack); this process is single-threaded,
    // so the child's copy of the heap and of every lock is consistent.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if r < 0 {
        return Err(Failure::sys("clone", std::io::Error::last_os_error()));
    }
    Ok(r as i32)
}

fn run() -> Result<(), Failure> {
    let plan = read_plan()?;
    let cgroup = open_cgroup(&plan.cgroup)?;
    enter_namespaces(&plan)?;
    let pid = match clone_into_cgroup(&cgroup, &plan.cgroup)? {
        Some(pid) => pid,
        None => {
            join_cgroup(&cgroup, &plan.cgroup)?;
            clone_parent()?
        }
    };
    if pid == 0 {
        process(&plan);
    }
    write_status(&format!("pid {pid}\n"));
    Ok(())
}

/// The container process, after the fork: never returns.
fn process(plan: &Plan) -> ! {
    let Err(f) = setup_and_exec(plan);
    write_status(&f.line());
    std::process::exit(f.kind.exit_code());
}

fn setup_and_exec(plan: &Plan) -> Result<Infallible, Failure> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(STATUS_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| Failure::sys("status fd", e))?;
    let mut go = [0u8; 1];
    // SAFETY: fd 5 is the go pipe the agent set up, owned by nothing else here.
    let mut g = unsafe { File::from_raw_fd(GO_FD) };
    if g.read(&mut go)
        .map_err(|e| Failure::sys("wait for the agent", e))?
        != 1
    {
        return Err(Failure::new(
            FailKind::Internal,
            "the agent gave up before the start",
        ));
    }
    drop(g);
    if let Mode::Init(init) = &plan.mode {
        if init.namespaces.contains(&Namespace::Cgroup) {
            unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| Failure::sys("unshare the cgroup namespace", e))?;
        }
    }
    nix::unistd::setsid().map_err(|e| Failure::sys("setsid", e))?;
    if plan.process.terminal {
        // SAFETY: TIOCSCTTY on fd 0 (the pty slave) takes an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(Failure::sys("TIOCSCTTY", std::io::Error::last_os_error()));
        }
    }
    if let Mode::Init(init) = &plan.mode {
        super::childfs::prepare(init, plan.process.terminal)?;
    }
    super::creds::exec(&plan.process, &plan.container_id)
}

/// The helper's `main`, once its descriptors are in place: never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(f) => {
            write_status(&f.line());
            f.kind.exit_code()
        }
    };
    std::process::exit(code)
}
