//! The last steps of a container process before `execve`: limits, user and
//! groups, capabilities, `no_new_privileges`, working directory, PATH lookup
//! inside the container. Runs in the single-threaded process itself.

use std::convert::Infallible;
use std::ffi::CString;
use std::path::Path;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};

use super::plan::{CapsPlan, FailKind, Failure, ProcessPlan};
use crate::init::DEFAULT_PATH;

fn set_of(names: &[String]) -> Result<CapsHashSet, Failure> {
    names
        .iter()
        .map(|n| {
            Capability::from_str(n)
                .map_err(|e| Failure::new(FailKind::Invalid, format!("capability {n}: {e}")))
        })
        .collect()
}

struct Sets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    inheritable: CapsHashSet,
    permitted: CapsHashSet,
    ambient: CapsHashSet,
}

fn sets(c: &CapsPlan) -> Result<Sets, Failure> {
    Ok(Sets {
        bounding: set_of(&c.bounding)?,
        effective: set_of(&c.effective)?,
        inheritable: set_of(&c.inheritable)?,
        permitted: set_of(&c.permitted)?,
        ambient: set_of(&c.ambient)?,
    })
}

fn rlimits(p: &ProcessPlan) -> Result<(), Failure> {
    for r in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit reads a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(r.resource as _, &lim) } != 0 {
            return Err(Failure::sys(
                format!("setrlimit({})", r.resource),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Bounding set first (needs CAP_SETPCAP), then ids with the permitted set
/// kept across setuid, then the spec's sets.
fn user_and_caps(p: &ProcessPlan) -> Result<(), Failure> {
    let sets = p.capabilities.as_ref().map(sets).transpose()?;
    if let Some(s) = &sets {
        for cap in caps::all() {
            if !s.bounding.contains(&cap)
                && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| Failure::sys("drop from the bounding set", e))?;
            }
        }
        caps::securebits::set_keepcaps(true).map_err(|e| Failure::sys("PR_SET_KEEPCAPS", e))?;
    }
    let gids: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(|e| Failure::sys("setgroups", e))?;
    let (gid, uid) = (Gid::from_raw(p.gid), Uid::from_raw(p.uid));
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| Failure::sys(format!("setgid {}", p.gid), e))?;
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| Failure::sys(format!("setuid {}", p.uid), e))?;
    if let Some(s) = sets {
        caps::securebits::set_keepcaps(false).map_err(|e| Failure::sys("PR_SET_KEEPCAPS", e))?;
        let set = |which: CapSet, v: &CapsHashSet, name: &str| {
            caps::set(None, which, v).map_err(|e| {
                Failure::new(
                    FailKind::Invalid,
                    format!("cannot set the {name} capabilities: {e}"),
                )
            })
        };
        set(CapSet::Inheritable, &s.inheritable, "inheritable")?;
        set(CapSet::Effective, &s.effective, "effective")?;
        set(CapSet::Permitted, &s.permitted, "permitted")?;
        set(CapSet::Ambient, &s.ambient, "ambient")?;
    }
    Ok(())
}

fn exec_failure(path: &Path, e: nix::errno::Errno) -> Failure {
    use nix::errno::Errno;
    let msg = format!("{}: {e}", path.display());
    match e {
        Errno::ENOENT => Failure::new(FailKind::NotFound, msg),
        Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::EPERM => {
            Failure::new(FailKind::Denied, msg)
        }
        _ => Failure::new(FailKind::Internal, msg),
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, Failure> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| {
                Failure::new(FailKind::Invalid, "args and env must not contain NUL bytes")
            })
        })
        .collect()
}

/// Applies the process's settings and executes it; returns only on failure.
pub fn exec(p: &ProcessPlan, container_id: &str) -> Result<Infallible, Failure> {
    if let Some(mask) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    if let Some(adj) = p.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| Failure::sys("oom_score_adj", e))?;
    }
    rlimits(p)?;
    std::env::set_current_dir(&p.cwd)
        .map_err(|e| Failure::new(FailKind::Invalid, format!("process.cwd {}: {e}", p.cwd)))?;
    user_and_caps(p)?;
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Failure::sys(
                "PR_SET_NO_NEW_PRIVS",
                std::io::Error::last_os_error(),
            ));
        }
    }
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let path = crate::spawn::resolve(&p.args[0], path_var, Path::new(&p.cwd)).map_err(|s| {
        let kind = match s.code() {
            tonic::Code::NotFound => FailKind::NotFound,
            tonic::Code::PermissionDenied => FailKind::Denied,
            _ => FailKind::Internal,
        };
        Failure::new(kind, format!("container {container_id}: {}", s.message()))
    })?;
    let argv = cstrings(&p.args)?;
    let envp = cstrings(&p.env)?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Failure::new(FailKind::Invalid, "path with a NUL byte"))?;
    // The Rust runtime of this helper ignores SIGPIPE; the process must not inherit that.
    // SAFETY: resetting a signal disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let Err(e) = nix::unistd::execve(&cpath, &argv, &envp);
    Err(exec_failure(&path, e))
}
