//! `uvm-gcs container-helper`: a fresh, single-threaded process the agent
//! spawns (with the process's stdio) for each container process, the way
//! runc's nsexec works. It reads its [`Plan`] on fd 3, joins the
//! container's cgroup, creates (init) or joins (exec) its namespaces, then
//! forks the process with `CLONE_PARENT`, so that the process is a child of
//! the agent, not of the helper: the agent reaps it like any other. It
//! writes `pid <n>` on fd 4 and exits.
//!
//! The process waits for the agent's byte on fd 5 (sent once the agent has
//! registered its pid with the reaper), then sets itself up (see
//! [`super::childfs`], [`super::creds`]) and executes. A failed step is one
//! `err <kind> <message>` line on fd 4, which the process closes by
//! executing (it is close-on-exec there).

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};

use super::plan::{FailKind, Failure, Mode, Plan, GO_FD, PLAN_FD, STATUS_FD};

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

fn join_cgroup(cgroup: &Path) -> Result<(), Failure> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| Failure::sys(format!("join cgroup {}", cgroup.display()), e))
}

fn enter_namespaces(plan: &Plan) -> Result<(), Failure> {
    match &plan.mode {
        Mode::Init(init) => {
            let flags = init
                .namespaces
                .iter()
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

/// Forks the process as a sibling: a child of the agent.
fn clone_parent() -> Result<i32, Failure> {
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
    join_cgroup(&plan.cgroup)?;
    enter_namespaces(&plan)?;
    let pid = clone_parent()?;
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

/// The helper's `main`: never returns.
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
