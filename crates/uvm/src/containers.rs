//! Containers in a running UVM (DESIGN §11), beside exec: what hcsshim's
//! `CreateContainer`/`Start`/`Exec`/`Signal`/`Delete` are for an LCOW UVM.
//!
//! [`Manager::create_container`] hands the root file system to the guest
//! (image layers as read-only shares of the VM's 9p export, overlaid in the
//! guest under a tmpfs scratch; or one host directory as a share) and asks
//! the agent to make the container. [`Manager::start_container`] and
//! [`Manager::exec_in_container`] return a [`Process`] with stdio, resize,
//! stdin close and exit like an exec's. [`Manager::delete_container`] kills
//! what is left in the guest, then releases the shares (a layer shared by
//! several containers stays until its last one is deleted).

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::{Process as OciProcess, Spec};
use uvm_guest::{
    container_rootfs, ContainerInfo, ContainerStatistics, ContainerTarget, CreateContainerRequest,
    OverlayRootfs, Process, ProcessSpec,
};

use crate::{Error, Manager};

/// Where a container's root file system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRootfs {
    /// Read-only image layers (host directories, the bottom layer first)
    /// under a writable scratch: a tmpfs in the guest of at most
    /// `scratch_bytes` (0: the tmpfs default, half the guest's memory).
    Layers {
        /// Unpacked layers, bottom first (see `uvm_image::oci`).
        layers: Vec<PathBuf>,
        /// Size bound of the scratch.
        scratch_bytes: u64,
    },
    /// One host directory as the root, read-only when asked (the host's
    /// bind enforces it); writes otherwise land in the directory itself.
    Directory {
        /// Absolute host path.
        path: PathBuf,
        /// Mount it read-only.
        read_only: bool,
    },
}

/// What the guest made for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedContainer {
    /// Its cgroup in the guest (`/sys/fs/cgroup/uvm/<id>`).
    pub cgroup: String,
    /// Its root in the guest's own view.
    pub guest_rootfs: String,
}

/// A layer directory shared with the guest, and how many containers use it.
#[derive(Debug)]
struct LayerShare {
    name: String,
    guest_path: String,
    users: u32,
}

/// A container as the host knows it.
#[derive(Debug)]
struct HostContainer {
    /// Canonical layer dirs it holds (keys of `Book::layers`).
    layers: Vec<PathBuf>,
    /// Its own directory share, for a [`ContainerRootfs::Directory`].
    dir_share: Option<String>,
    /// Its init runs on a terminal (`process.terminal`).
    terminal: bool,
}

/// The host's book of containers and their shares (under the devices lock).
#[derive(Debug, Default)]
pub(crate) struct Book {
    containers: BTreeMap<String, HostContainer>,
    layers: BTreeMap<PathBuf, LayerShare>,
}

fn invalid(id: &str, reason: impl Into<String>) -> Error {
    Error::InvalidContainer {
        id: id.to_string(),
        reason: reason.into(),
    }
}

fn canonical_dir(id: &str, what: &str, p: &std::path::Path) -> Result<PathBuf, Error> {
    if !p.is_absolute() {
        return Err(invalid(
            id,
            format!("{what} {} must be an absolute path", p.display()),
        ));
    }
    let c = std::fs::canonicalize(p)
        .map_err(|e| invalid(id, format!("{what} {}: {e}", p.display())))?;
    if !c.is_dir() {
        return Err(invalid(
            id,
            format!("{what} {} is not a directory", p.display()),
        ));
    }
    Ok(c)
}

/// The host's checks of a spec before the guest sees it.
fn check_spec(id: &str, spec: &Spec) -> Result<(), Error> {
    let args = spec.process().as_ref().and_then(|p| p.args().clone());
    if args.as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid(id, "process.args: must name the program to run"));
    }
    Ok(())
}

impl Manager {
    /// Creates container `id` from `spec` on `rootfs` in the running VM; its
    /// init starts with [`Manager::start_container`]. The spec's
    /// `root.path` is not used (the rootfs is), `root.readonly` is. Errors
    /// name the field or path that is wrong; on any error nothing is left
    /// in the guest or shared from the host.
    pub async fn create_container(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: ContainerRootfs,
    ) -> Result<CreatedContainer, Error> {
        let (guest, vm) = self.inner().running("create_container")?;
        check_spec(id, spec)?;
        let json = serde_json::to_string(spec)
            .map_err(|e| invalid(id, format!("the spec does not serialize: {e}")))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let mut devices = self.devices_lock().lock().await;
        let d = devices.as_mut().ok_or(Error::InvalidState {
            op: "create_container",
            state: self.inner().state(),
        })?;
        if d.containers.containers.contains_key(id) {
            return Err(invalid(id, "a container of this id exists already"));
        }
        let mut held = HostContainer {
            layers: Vec::new(),
            dir_share: None,
            terminal,
        };
        let shared = self
            .share_rootfs(d, vm.as_ref(), id, &rootfs, &mut held)
            .await;
        let source = match shared {
            Ok(s) => s,
            Err(e) => {
                self.release(d, &guest, vm.as_ref(), held).await;
                return Err(e);
            }
        };
        let req = CreateContainerRequest {
            id: id.to_string(),
            oci_spec_json: json,
            rootfs: Some(uvm_guest::ContainerRootfs {
                source: Some(source),
            }),
        };
        match guest
            .create_container(req, self.inner().config.rpc_timeout)
            .await
        {
            Ok(r) => {
                d.containers.containers.insert(id.to_string(), held);
                tracing::info!(vm_id = %self.inner().id(), container = id, cgroup = %r.cgroup, "container created");
                Ok(CreatedContainer {
                    cgroup: r.cgroup,
                    guest_rootfs: r.rootfs,
                })
            }
            Err(e) => {
                self.release(d, &guest, vm.as_ref(), held).await;
                Err(Error::guest("create container", e))
            }
        }
    }

    /// Shares what `rootfs` needs, recording it in `held`; the guest's
    /// view of it.
    async fn share_rootfs(
        &self,
        d: &mut crate::devices::Devices,
        vm: &dyn uvm_vmm::UtilityVm,
        id: &str,
        rootfs: &ContainerRootfs,
        held: &mut HostContainer,
    ) -> Result<container_rootfs::Source, Error> {
        match rootfs {
            ContainerRootfs::Directory { path, read_only } => {
                let host = canonical_dir(id, "rootfs directory", path)?;
                let share = d.bind_share(vm, host, *read_only).await?;
                held.dir_share = Some(share.name);
                Ok(container_rootfs::Source::Directory(share.guest_path))
            }
            ContainerRootfs::Layers {
                layers,
                scratch_bytes,
            } => {
                if layers.is_empty() {
                    return Err(invalid(id, "rootfs: at least one image layer is needed"));
                }
                let mut lower = Vec::new();
                for (i, l) in layers.iter().enumerate() {
                    let host = canonical_dir(id, &format!("image layer {i}"), l)?;
                    let guest_path = match d.containers.layers.get_mut(&host) {
                        Some(s) => {
                            s.users += 1;
                            s.guest_path.clone()
                        }
                        None => {
                            let share = d.bind_share(vm, host.clone(), true).await?;
                            d.containers.layers.insert(
                                host.clone(),
                                LayerShare {
                                    name: share.name,
                                    guest_path: share.guest_path.clone(),
                                    users: 1,
                                },
                            );
                            share.guest_path
                        }
                    };
                    held.layers.push(host);
                    lower.push(guest_path);
                }
                // overlayfs lists the topmost layer first.
                lower.reverse();
                Ok(container_rootfs::Source::Overlay(OverlayRootfs {
                    lower_dirs: lower,
                    scratch_size_bytes: *scratch_bytes,
                    scratch_dir: String::new(),
                }))
            }
        }
    }

    /// Drops `held`'s shares (a layer only when its last user goes);
    /// failures are logged: the VM's end removes every share anyway.
    async fn release(
        &self,
        d: &mut crate::devices::Devices,
        guest: &uvm_guest::Guest,
        vm: &dyn uvm_vmm::UtilityVm,
        held: HostContainer,
    ) {
        let timeout = self.inner().config.rpc_timeout;
        let mut names = Vec::new();
        for l in held.layers {
            if let Some(s) = d.containers.layers.get_mut(&l) {
                s.users -= 1;
                if s.users == 0 {
                    names.push(d.containers.layers.remove(&l).expect("present").name);
                }
            }
        }
        names.extend(held.dir_share);
        for name in names {
            if let Err(e) = d.unbind_share(guest, vm, &name, timeout).await {
                tracing::warn!(vm_id = %self.inner().id(), share = %name, error = %ErrorChain(&e), "releasing a container share failed");
            }
        }
    }

    fn container_terminal(d: &Option<crate::devices::Devices>, id: &str) -> Result<bool, Error> {
        d.as_ref()
            .and_then(|d| d.containers.containers.get(id))
            .map(|c| c.terminal)
            .ok_or_else(|| Error::NoSuchContainer { id: id.to_string() })
    }

    /// Starts the container's init (the spec's process); the [`Process`]
    /// carries its stdio and exit (`wait_exit` tells an OOM kill).
    pub async fn start_container(&self, id: &str) -> Result<Process, Error> {
        let guest = self.inner().require_running("start_container")?;
        let terminal = Self::container_terminal(&*self.devices_lock().lock().await, id)?;
        let spec = ProcessSpec {
            terminal,
            container: Some(ContainerTarget {
                id: id.to_string(),
                init: true,
                oci_process_json: String::new(),
            }),
            ..Default::default()
        };
        let r = guest
            .spawn(spec)
            .await
            .map_err(|e| Error::guest("start container", e));
        match r {
            Ok(p) => Ok(p),
            Err(e) => Err(self.inner().or_vm_exit("start container", e).await),
        }
    }

    /// Runs `process` in the running container `id`: it joins the
    /// container's namespaces and cgroup.
    pub async fn exec_in_container(
        &self,
        id: &str,
        process: &OciProcess,
    ) -> Result<Process, Error> {
        let guest = self.inner().require_running("exec_in_container")?;
        Self::container_terminal(&*self.devices_lock().lock().await, id)?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid(id, "process.args: must name the program to run"));
        }
        let json = serde_json::to_string(process)
            .map_err(|e| invalid(id, format!("the process does not serialize: {e}")))?;
        let spec = ProcessSpec {
            terminal: process.terminal().unwrap_or(false),
            container: Some(ContainerTarget {
                id: id.to_string(),
                init: false,
                oci_process_json: json,
            }),
            ..Default::default()
        };
        let r = guest
            .spawn(spec)
            .await
            .map_err(|e| Error::guest("exec in container", e));
        match r {
            Ok(p) => Ok(p),
            Err(e) => Err(self.inner().or_vm_exit("exec in container", e).await),
        }
    }

    /// Sends `signal` to the container's init, or to every process in it.
    pub async fn signal_container(&self, id: &str, signal: i32, all: bool) -> Result<(), Error> {
        let guest = self.inner().require_running("signal_container")?;
        let r = guest
            .signal_container(id, signal, all)
            .await
            .map_err(|e| Error::guest("signal container", e));
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.inner().or_vm_exit("signal container", e).await),
        }
    }

    /// Deletes the container: the guest kills what is left of it and
    /// removes its mounts, cgroup and scratch; then its shares go.
    pub async fn delete_container(&self, id: &str) -> Result<(), Error> {
        let (guest, vm) = self.inner().running("delete_container")?;
        let mut devices = self.devices_lock().lock().await;
        let d = devices
            .as_mut()
            .ok_or_else(|| Error::NoSuchContainer { id: id.to_string() })?;
        if !d.containers.containers.contains_key(id) {
            return Err(Error::NoSuchContainer { id: id.to_string() });
        }
        if let Err(e) = guest.delete_container(id).await {
            let e = Error::guest("delete container", e);
            return Err(self.inner().or_vm_exit("delete container", e).await);
        }
        let held = d.containers.containers.remove(id).expect("checked above");
        self.release(d, &guest, vm.as_ref(), held).await;
        tracing::info!(vm_id = %self.inner().id(), container = id, "container deleted");
        Ok(())
    }

    /// The container's cgroup v2 figures (CPU, memory, pids, OOM events).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatistics, Error> {
        let guest = self.inner().require_running("container_stats")?;
        let r = guest
            .container_stats(id)
            .await
            .map_err(|e| Error::guest("container stats", e));
        match r {
            Ok(s) => Ok(s),
            Err(e) => Err(self.inner().or_vm_exit("container stats", e).await),
        }
    }

    /// Every container of the VM, with its status, as the guest sees them.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, Error> {
        let guest = self.inner().require_running("list_containers")?;
        let r = guest
            .list_containers()
            .await
            .map_err(|e| Error::guest("list containers", e));
        match r {
            Ok(s) => Ok(s),
            Err(e) => Err(self.inner().or_vm_exit("list containers", e).await),
        }
    }
}

/// The runtime spec uvm starts from: `oci_spec`'s default (runc's `spec`
/// output: the default mounts, capabilities and masked paths) with no
/// network namespace (a container shares its VM's network), a writable
/// root (writes land in the scratch) and no terminal.
pub fn default_spec() -> Spec {
    use oci_spec::runtime::LinuxNamespaceType;
    let mut spec = Spec::default();
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(false));
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        }
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
    }
    spec
}

/// Displays an error with its sources, `a: b: c`.
struct ErrorChain<'a>(&'a Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut s = std::error::Error::source(self.0);
        while let Some(e) = s {
            write!(f, ": {e}")?;
            s = e.source();
        }
        Ok(())
    }
}
