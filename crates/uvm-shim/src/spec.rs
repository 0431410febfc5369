//! containerd's runtime spec (written for runc on the host) made fit for a
//! container in the UVM, the way Kata and hcsshim adapt it: the VM is the
//! network boundary, so there is no network namespace; host bind mounts
//! have no source in the guest, so they are left out (logged).

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Mount types the guest makes itself (no host source).
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm",
];

/// Adapts `spec` for the guest; returns what was left out, for the log.
pub fn for_guest(spec: &mut Spec) -> Vec<String> {
    let mut dropped = Vec::new();
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            let before = ns.len();
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            if ns.len() != before {
                dropped.push("the network namespace (the container shares its VM's)".into());
            }
        }
        // The agent places the container's cgroup itself.
        linux.set_cgroups_path(None);
    }
    if let Some(mounts) = spec.mounts_mut() {
        mounts.retain(|m| {
            let typ = m.typ().clone().unwrap_or_default();
            let keep = GUEST_MOUNT_TYPES.contains(&typ.as_str());
            if !keep {
                dropped.push(format!(
                    "mount {} ({typ} from {})",
                    m.destination().display(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default()
                ));
            }
            keep
        });
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder};

    #[test]
    fn drops_the_network_namespace_and_host_binds() {
        let mut spec = Spec::default();
        let ns = [LinuxNamespaceType::Pid, LinuxNamespaceType::Network]
            .into_iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
            .collect::<Vec<_>>();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(ns)
                .cgroups_path("/default/t1")
                .build()
                .unwrap(),
        ));
        let bind = MountBuilder::default()
            .destination("/etc/resolv.conf")
            .typ("bind")
            .source("/var/lib/x/resolv.conf")
            .build()
            .unwrap();
        let proc_ = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        spec.set_mounts(Some(vec![proc_, bind]));
        let dropped = for_guest(&mut spec);
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 1);
        assert!(linux.cgroups_path().is_none());
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 1);
    }
}
