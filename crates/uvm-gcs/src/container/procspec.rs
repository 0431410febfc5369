//! An OCI `process` object → [`ProcessPlan`]: args, env, cwd, user,
//! capabilities, rlimits. Errors name the field (`process.args: ...`).

use std::str::FromStr;

use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use super::plan::{CapsPlan, ProcessPlan, RlimitPlan};
use super::spec::SpecError;
use crate::spawn::MAX_SPEC_BYTES;

// The RLIMIT_* constants are u32 on glibc and c_int on musl.
#[allow(clippy::unnecessary_cast)]
fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as u32
}

/// Capability names (`CAP_SYS_ADMIN`) of one set, each known to `caps`.
fn cap_names(set: &Option<Capabilities>, field: &str) -> Result<Vec<String>, SpecError> {
    let mut names: Vec<String> = Vec::new();
    for cap in set.iter().flatten() {
        let name = format!("CAP_{cap}");
        if caps::Capability::from_str(&name).is_err() {
            return Err(SpecError::new(
                field,
                format!("{name} is not a capability the agent knows"),
            ));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn caps_plan(p: &Process) -> Result<Option<CapsPlan>, SpecError> {
    let Some(c) = p.capabilities() else {
        return Ok(None);
    };
    let f = |set: &str| format!("process.capabilities.{set}");
    let plan = CapsPlan {
        bounding: cap_names(c.bounding(), &f("bounding"))?,
        effective: cap_names(c.effective(), &f("effective"))?,
        inheritable: cap_names(c.inheritable(), &f("inheritable"))?,
        permitted: cap_names(c.permitted(), &f("permitted"))?,
        ambient: cap_names(c.ambient(), &f("ambient"))?,
    };
    if let Some(x) = plan.effective.iter().find(|c| !plan.permitted.contains(c)) {
        return Err(SpecError::new(
            f("effective"),
            format!("{x} is not in the permitted set"),
        ));
    }
    if let Some(x) = plan
        .ambient
        .iter()
        .find(|c| !plan.permitted.contains(c) || !plan.inheritable.contains(c))
    {
        return Err(SpecError::new(
            f("ambient"),
            format!("{x} must be in the permitted and inheritable sets too"),
        ));
    }
    Ok(Some(plan))
}

fn env(p: &Process) -> Result<Vec<String>, SpecError> {
    let env = p.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(SpecError::new(
                format!("process.env[{i}]"),
                format!("{e:?} is not KEY=VALUE"),
            ));
        }
    }
    Ok(env)
}

/// Validates `p` into the plan of the process to execute.
pub fn process_plan(p: &Process) -> Result<ProcessPlan, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecError::new("process.args", "must not be empty"));
    }
    let env = env(p)?;
    let size: usize = args.iter().chain(&env).map(|s| s.len() + 1).sum();
    if size > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            "process",
            format!("args and env total {size} bytes, more than the limit of {MAX_SPEC_BYTES}"),
        ));
    }
    if args.iter().chain(&env).any(|s| s.contains('\0')) {
        return Err(SpecError::new(
            "process",
            "args and env must not contain NUL bytes",
        ));
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(SpecError::new(
            "process.cwd",
            format!("{cwd:?} must be an absolute path"),
        ));
    }
    let mut rlimits = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(SpecError::new(
                format!("process.rlimits[{i}]"),
                "the soft limit is above the hard limit",
            ));
        }
        rlimits.push(RlimitPlan {
            resource: rlimit_resource(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(SpecError::new(
                "process.oomScoreAdj",
                "must be between -1000 and 1000",
            ));
        }
    }
    if p.scheduler().is_some() || p.io_priority().is_some() || p.exec_cpu_affinity().is_some() {
        return Err(SpecError::new(
            "process",
            "scheduler, ioPriority and execCPUAffinity are not supported",
        ));
    }
    if p.apparmor_profile().is_some() || p.selinux_label().is_some() {
        tracing::warn!("process.apparmorProfile/selinuxLabel ignored: the guest has no LSM");
    }
    let user = p.user();
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        terminal: p.terminal().unwrap_or(false),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        capabilities: caps_plan(p)?,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        rlimits,
        oom_score_adj: p.oom_score_adj(),
    })
}

/// The terminal size the process asks for (`consoleSize`), if any.
pub fn console_size(p: &Process) -> Option<uvm_proto::gcs::WindowSize> {
    p.console_size().map(|b| uvm_proto::gcs::WindowSize {
        rows: b.height() as u32,
        cols: b.width() as u32,
    })
}
