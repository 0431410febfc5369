//! The plan the agent hands a container process's helper (forked by the
//! zygote, see [`super::zygote`] and [`super::helper`]) as JSON on fd
//! [`PLAN_FD`]: everything the helper and the container's process do,
//! already validated, so neither has to parse an OCI spec.

use std::path::PathBuf;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// The helper reads the JSON plan from this fd until EOF.
pub const PLAN_FD: i32 = 3;
/// The helper writes `pid <n>\n`, and the process `err <kind> <message>\n`
/// when its setup fails, to this fd; EOF with no `err`: it was executed.
pub const STATUS_FD: i32 = 4;
/// The process waits for one byte on this fd before doing anything.
pub const GO_FD: i32 = 5;

/// One container process to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The container's id (for messages).
    pub container_id: String,
    /// The container's cgroup directory in the guest's view.
    pub cgroup: PathBuf,
    /// What to set up before the process runs.
    pub mode: Mode,
    /// The process itself.
    pub process: ProcessPlan,
}

/// Start the container (its init) or join it (an exec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// New namespaces and the root file system: the container's PID 1.
    Init(InitPlan),
    /// Join the namespaces of the running init.
    Exec {
        /// The init's pid in the agent's PID namespace.
        init_pid: i32,
        /// The namespaces the container has.
        namespaces: Vec<Namespace>,
    },
}

/// What the container's init sets up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPlan {
    /// Namespaces to create.
    pub namespaces: Vec<Namespace>,
    /// The mounted root file system, in the guest's view.
    pub rootfs: PathBuf,
    /// `spec.mounts`, in order.
    pub mounts: Vec<MountPlan>,
    /// `linux.devices`, made in the container's `/dev` after the defaults.
    pub devices: Vec<DevicePlan>,
    /// `hostname`, set in the new UTS namespace.
    pub hostname: Option<String>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `root.readonly`.
    pub root_readonly: bool,
}

/// A namespace type the runtime creates or joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Namespace {
    /// Mount namespace (always present).
    Mount,
    /// PID namespace.
    Pid,
    /// UTS namespace (hostname).
    Uts,
    /// IPC namespace.
    Ipc,
    /// Cgroup namespace.
    Cgroup,
}

impl Namespace {
    /// The `clone`/`unshare`/`setns` flag.
    pub fn flag(self) -> CloneFlags {
        match self {
            Namespace::Mount => CloneFlags::CLONE_NEWNS,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        }
    }

    /// Its file under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Mount => "mnt",
            Namespace::Pid => "pid",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Cgroup => "cgroup",
        }
    }

    /// Order in which an exec joins them: the mount namespace last (its
    /// `/proc` is the container's), the cgroup one first.
    pub fn join_rank(self) -> u8 {
        match self {
            Namespace::Cgroup => 0,
            Namespace::Ipc => 1,
            Namespace::Uts => 2,
            Namespace::Pid => 3,
            Namespace::Mount => 4,
        }
    }
}

/// One mount of `spec.mounts`, with its options split into flags and data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// Absolute path inside the container.
    pub destination: String,
    /// `source` (a guest path for a bind mount).
    pub source: String,
    /// File system type; empty for a bind mount.
    pub fstype: String,
    /// `MS_*` flags (without `MS_BIND`/`MS_REC`).
    pub flags: u64,
    /// File-system data options, comma-separated.
    pub data: String,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// `rbind`: with the mounts below the source.
    pub recursive: bool,
    /// Propagation flag (`MS_PRIVATE`, `MS_SLAVE`, ...) applied after, or 0.
    pub propagation: u64,
}

/// A device node to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// Absolute path inside the container (under `/dev`).
    pub path: String,
    /// `c`, `b` or `p`.
    pub kind: char,
    /// Device numbers.
    pub major: u64,
    /// Device numbers.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The process to execute and its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// argv; `args[0]` is looked up in the `PATH` of `env` inside the container.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    /// Runs on the pty given as its stdio (becomes its controlling terminal).
    pub terminal: bool,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// File mode creation mask.
    pub umask: Option<u32>,
    /// Capability sets; `None` keeps the agent's (all of them).
    pub capabilities: Option<CapsPlan>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// Resource limits.
    pub rlimits: Vec<RlimitPlan>,
    /// Written to `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<i32>,
}

/// Capability sets by name (`CAP_SYS_ADMIN`), each known to the `caps` crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsPlan {
    /// Bounding set: everything else is dropped.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

/// One `setrlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitPlan {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Why a container process could not be started: the `err` line's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The executable is not there (exit 127, NOT_FOUND).
    NotFound,
    /// It cannot be executed (exit 126, PERMISSION_DENIED).
    Denied,
    /// The spec asked for something impossible (exit 1, INVALID_ARGUMENT).
    Invalid,
    /// A system call failed (exit 1, INTERNAL).
    Internal,
}

impl FailKind {
    /// The word on the `err` line.
    pub fn word(self) -> &'static str {
        match self {
            FailKind::NotFound => "notfound",
            FailKind::Denied => "denied",
            FailKind::Invalid => "invalid",
            FailKind::Internal => "internal",
        }
    }

    /// Parses [`FailKind::word`].
    pub fn from_word(w: &str) -> Option<Self> {
        [Self::NotFound, Self::Denied, Self::Invalid, Self::Internal]
            .into_iter()
            .find(|k| k.word() == w)
    }

    /// The process's exit code when it fails this way.
    pub fn exit_code(self) -> i32 {
        match self {
            FailKind::NotFound => 127,
            FailKind::Denied => 126,
            FailKind::Invalid | FailKind::Internal => 1,
        }
    }

    /// The gRPC code of the `Exec` that failed this way.
    pub fn code(self) -> tonic::Code {
        match self {
            FailKind::NotFound => tonic::Code::NotFound,
            FailKind::Denied => tonic::Code::PermissionDenied,
            FailKind::Invalid => tonic::Code::InvalidArgument,
            FailKind::Internal => tonic::Code::Internal,
        }
    }
}

/// A failed setup step: its kind and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// How it maps to exit and gRPC codes.
    pub kind: FailKind,
    /// What failed, as a sentence.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An internal failure: `what` failed with `e`.
    pub fn sys(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Self::new(FailKind::Internal, format!("{what}: {e}"))
    }

    /// The status line (`err <kind> <message>\n`, message on one line).
    pub fn line(&self) -> String {
        let msg = self.message.replace('\n', " ");
        format!("err {} {msg}\n", self.kind.word())
    }

    /// Parses a status line written by [`Failure::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("err ")?;
        let (word, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Self::new(FailKind::from_word(word)?, msg.trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_round_trip() {
        let f = Failure::new(FailKind::NotFound, "executable file not found:\nnosuch");
        let line = f.line();
        assert_eq!(line, "err notfound executable file not found: nosuch\n");
        let back = Failure::parse(&line).unwrap();
        assert_eq!(back.kind, FailKind::NotFound);
        assert_eq!(back.message, "executable file not found: nosuch");
        assert_eq!(back.kind.exit_code(), 127);
        assert!(Failure::parse("pid 12").is_none());
        assert!(Failure::parse("err bogus x").is_none());
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plan = Plan {
            container_id: "c1".into(),
            cgroup: "/sys/fs/cgroup/uvm/c1".into(),
            mode: Mode::Exec {
                init_pid: 42,
                namespaces: vec![Namespace::Mount, Namespace::Pid],
            },
            process: ProcessPlan {
                args: vec!["sh".into()],
                cwd: "/".into(),
                ..Default::default()
            },
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"mode\":\"exec\""), "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }
}
