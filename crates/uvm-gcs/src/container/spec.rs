//! An OCI runtime spec (JSON) → a validated [`ContainerSpec`]. Errors are
//! INVALID_ARGUMENT sentences that name the field; what the runtime cannot
//! honour is refused, never silently dropped (the few exceptions are logged).

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::cgroup::Resources;
use super::mountopts;
use super::plan::{DevicePlan, InitPlan, MountPlan, Namespace, ProcessPlan};
use super::procspec::{console_size, process_plan};

/// A spec field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// JSON path of the field (`linux.namespaces[0].type`).
    pub field: String,
    /// Why, as a sentence fragment.
    pub reason: String,
}

impl SpecError {
    /// `field`: `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A validated container spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// What the init sets up (`rootfs` is filled in at create).
    pub init: InitPlan,
    /// The init process.
    pub process: ProcessPlan,
    /// `process.consoleSize`.
    pub window: Option<uvm_proto::gcs::WindowSize>,
    /// Cgroup limits.
    pub resources: Resources,
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "container id {id:?} is not valid: want [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        ))
    }
}

/// Deserializes JSON, naming the path of a field that does not parse.
pub fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, SpecError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "(the document)".into()
        } else {
            path
        };
        SpecError::new(field, e.inner().to_string())
    })
}

fn namespaces(spec: &Spec) -> Result<Vec<Namespace>, SpecError> {
    let mut out = Vec::new();
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    for (i, ns) in list.unwrap_or_default().iter().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let n = match ns.typ() {
            LinuxNamespaceType::Mount => Namespace::Mount,
            LinuxNamespaceType::Pid => Namespace::Pid,
            LinuxNamespaceType::Uts => Namespace::Uts,
            LinuxNamespaceType::Ipc => Namespace::Ipc,
            LinuxNamespaceType::Cgroup => Namespace::Cgroup,
            LinuxNamespaceType::Network => return Err(SpecError::new(
                format!("{field}.type"),
                "network namespaces are not supported: a container shares the network of its VM, which is the network boundary",
            )),
            LinuxNamespaceType::User => return Err(SpecError::new(
                format!("{field}.type"),
                "user namespaces are not supported: the VM is the isolation boundary and ids map 1:1",
            )),
            LinuxNamespaceType::Time => return Err(SpecError::new(
                format!("{field}.type"),
                "time namespaces are not supported",
            )),
        };
        if ns.path().is_some() {
            return Err(SpecError::new(
                format!("{field}.path"),
                "joining an existing namespace is not supported",
            ));
        }
        if out.contains(&n) {
            return Err(SpecError::new(field, "namespace listed twice"));
        }
        out.push(n);
    }
    if !out.contains(&Namespace::Mount) {
        return Err(SpecError::new(
            "linux.namespaces",
            "must include a mount namespace (the container's mounts must not touch the VM's)",
        ));
    }
    Ok(out)
}

fn abs_paths(list: &Option<Vec<String>>, field: &str) -> Result<Vec<String>, SpecError> {
    let list = list.clone().unwrap_or_default();
    for (i, p) in list.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{p:?} must be an absolute path"),
            ));
        }
    }
    Ok(list)
}

fn mount_plan(i: usize, m: &Mount) -> Result<MountPlan, SpecError> {
    let field = format!("mounts[{i}]");
    let destination = m.destination().to_string_lossy().into_owned();
    if !destination.starts_with('/') {
        return Err(SpecError::new(
            format!("{field}.destination"),
            format!("{destination:?} must be an absolute path"),
        ));
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(SpecError::new(field, "id-mapped mounts are not supported"));
    }
    let opts = mountopts::parse(m.options().as_deref().unwrap_or_default())
        .map_err(|r| SpecError::new(format!("{field}.options"), r))?;
    let typ = m.typ().clone().unwrap_or_default();
    let bind = opts.bind || typ == "bind";
    let source = m
        .source()
        .as_deref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if bind && !source.starts_with('/') {
        return Err(SpecError::new(
            format!("{field}.source"),
            format!("a bind mount needs an absolute guest path, not {source:?}"),
        ));
    }
    let fstype = match typ.as_str() {
        _ if bind => String::new(),
        "" => {
            return Err(SpecError::new(
                format!("{field}.type"),
                "must be set (or options must say bind)",
            ))
        }
        // cgroup v1 does not exist in the guest: the container gets its v2 view.
        "cgroup" => "cgroup2".into(),
        t => t.to_string(),
    };
    Ok(MountPlan {
        destination,
        source,
        fstype,
        flags: opts.flags.bits(),
        data: opts.data,
        bind,
        recursive: opts.recursive,
        propagation: opts.propagation.bits(),
    })
}

fn device_plan(i: usize, d: &oci_spec::runtime::LinuxDevice) -> Result<DevicePlan, SpecError> {
    let field = format!("linux.devices[{i}]");
    let path = d.path().to_string_lossy().into_owned();
    if !path.starts_with("/dev/") || Path::new(&path).components().any(|c| c.as_os_str() == "..") {
        return Err(SpecError::new(
            format!("{field}.path"),
            "must be a path under /dev",
        ));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::P => 'p',
        LinuxDeviceType::A => {
            return Err(SpecError::new(
                format!("{field}.type"),
                "must be c, b, u or p",
            ))
        }
    };
    let num = |n: i64, what: &str| {
        u64::try_from(n)
            .map_err(|_| SpecError::new(format!("{field}.{what}"), "must not be negative"))
    };
    Ok(DevicePlan {
        path,
        kind,
        major: num(d.major(), "major")?,
        minor: num(d.minor(), "minor")?,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

fn refuse_unsupported(spec: &Spec) -> Result<(), SpecError> {
    if spec.hooks().is_some() {
        return Err(SpecError::new("hooks", "hooks are not supported"));
    }
    let Some(l) = spec.linux() else { return Ok(()) };
    let refuse = |set: bool, field: &str, why: &str| {
        if set {
            Err(SpecError::new(field, why))
        } else {
            Ok(())
        }
    };
    refuse(
        l.uid_mappings().is_some() || l.gid_mappings().is_some(),
        "linux.uidMappings",
        "id mappings need a user namespace, which is not supported",
    )?;
    refuse(
        l.sysctl().as_ref().is_some_and(|s| !s.is_empty()),
        "linux.sysctl",
        "sysctls are not supported",
    )?;
    refuse(l.intel_rdt().is_some(), "linux.intelRdt", "not supported")?;
    refuse(
        l.personality().is_some(),
        "linux.personality",
        "not supported",
    )?;
    refuse(
        l.time_offsets().is_some(),
        "linux.timeOffsets",
        "time namespaces are not supported",
    )?;
    refuse(
        l.memory_policy().is_some(),
        "linux.memoryPolicy",
        "not supported",
    )?;
    refuse(
        l.net_devices().is_some(),
        "linux.netDevices",
        "the container shares the VM's network",
    )?;
    let propagation = l.rootfs_propagation().as_deref().unwrap_or("");
    refuse(
        propagation.contains("shared"),
        "linux.rootfsPropagation",
        "shared propagation is not supported: container mounts stay private",
    )?;
    if l.seccomp().is_some() {
        tracing::warn!("linux.seccomp ignored: the agent does not enforce seccomp filters");
    }
    Ok(())
}

/// Parses and validates the spec of a new container.
pub fn parse(json: &str) -> Result<ContainerSpec, SpecError> {
    let spec: Spec = from_json(json)?;
    refuse_unsupported(&spec)?;
    let namespaces = namespaces(&spec)?;
    let Some(process) = spec.process() else {
        return Err(SpecError::new("process", "must be set"));
    };
    let plan = process_plan(process)?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !namespaces.contains(&Namespace::Uts) {
        return Err(SpecError::new(
            "hostname",
            "needs a uts namespace (it would rename the VM)",
        ));
    }
    if hostname.as_ref().is_some_and(|h| h.len() > 64) {
        return Err(SpecError::new("hostname", "is longer than 64 bytes"));
    }
    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mounts.push(mount_plan(i, m)?);
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let mut devices = Vec::new();
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        devices.push(device_plan(i, d)?);
    }
    let resources = match linux.resources() {
        Some(r) => Resources::from_spec(r)?,
        None => Resources::default(),
    };
    Ok(ContainerSpec {
        init: InitPlan {
            namespaces,
            rootfs: Default::default(),
            mounts,
            devices,
            hostname,
            masked_paths: abs_paths(linux.masked_paths(), "linux.maskedPaths")?,
            readonly_paths: abs_paths(linux.readonly_paths(), "linux.readonlyPaths")?,
            root_readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
        },
        window: console_size(process),
        process: plan,
        resources,
    })
}

/// Parses and validates the `process` object of an exec.
pub fn parse_process(
    json: &str,
) -> Result<(ProcessPlan, Option<uvm_proto::gcs::WindowSize>), SpecError> {
    let p: oci_spec::runtime::Process = from_json(json).map_err(|mut e| {
        e.field = if e.field.starts_with('(') {
            "process".into()
        } else {
            format!("process.{}", e.field)
        };
        e
    })?;
    Ok((process_plan(&p)?, console_size(&p)))
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
