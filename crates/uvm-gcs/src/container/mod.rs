//! Containers in the UVM (DESIGN §11): the registry (id → [`Container`])
//! and the RPCs on it. A container is created (rootfs mounted, cgroup made,
//! spec validated), started by an `Exec` with `ContainerProcess.init` and
//! joined by further `Exec`s (see [`launch`], [`zygote`] and [`helper`] for
//! how a process gets into it). It is Stopped once its init has exited (the
//! kernel has killed the rest of its PID namespace then) and keeps that
//! exit until deleted.
//!
//! An init whose setup fails (executable not found, a mount refused) leaves
//! the container Stopped with that process's exit (127, 126 or 1), as
//! runc's containers cannot be started twice either; a failure before any
//! process existed (the zygote could not be asked for one) leaves it Created.
#![allow(clippy::result_large_err)]

pub mod cgroup;
pub mod childfs;
pub mod creds;
pub mod helper;
pub mod launch;
pub mod mountopts;
pub mod plan;
pub mod procspec;
pub mod rootfs;
pub mod spec;
pub mod stats;
mod watch;
pub mod zygote;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tonic::Status;
use uvm_proto::gcs::{
    container_info, ContainerInfo, ContainerProcess, ContainerStatistics, CreateContainerRequest,
    CreateContainerResponse, Exited, WindowSize,
};

use self::cgroup::{Cgroup, CGROUP_ROOT};
use self::plan::{Mode, Plan};
use self::rootfs::{Rootfs, CONTAINERS_DIR};
use self::spec::ContainerSpec;
use self::zygote::Zygote;
use crate::policy::Policy;
use crate::reaper::Reaper;
use crate::spawn::Running;

/// Bound on a deleted container's cgroup emptying.
const DELETE_CGROUP_WAIT: Duration = Duration::from_secs(10);
/// Bound on a deleted container's init being reaped after its cgroup emptied.
const DELETE_REAP_WAIT: Duration = Duration::from_secs(5);

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Made, its init not started.
    Created,
    /// Its init is being started.
    Starting,
    /// Its init runs with this pid (agent's PID namespace).
    Running(i32),
    /// Its init (pid, 0 when none was forked) ended like this.
    Stopped(i32, Exited),
}

/// One container.
pub struct Container {
    /// Its id.
    pub id: String,
    spec: ContainerSpec,
    cgroup: Cgroup,
    rootfs: Mutex<Rootfs>,
    state: Mutex<State>,
    /// Set once the init is known to have ended.
    stopped: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Container {
    /// Its state now.
    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }

    fn set_state(&self, s: State) {
        let stopped = matches!(s, State::Stopped(..));
        tracing::info!(container = %self.id, state = ?s, "container state");
        *lock(&self.state) = s;
        if stopped {
            self.stopped.send_replace(true);
        }
    }

    fn info(&self) -> ContainerInfo {
        let (status, pid, exited) = match self.state() {
            State::Created | State::Starting => (container_info::Status::Created, 0, None),
            State::Running(pid) => (container_info::Status::Running, pid, None),
            State::Stopped(pid, e) => (container_info::Status::Stopped, pid, Some(e)),
        };
        ContainerInfo {
            id: self.id.clone(),
            status: status as i32,
            pid: pid as u32,
            exited,
        }
    }
}

/// A container process ready to launch (see [`Containers::prepare`]).
pub struct Prepared {
    container: Arc<Container>,
    plan: Plan,
    /// The initial terminal size (`process.consoleSize`).
    pub window: Option<WindowSize>,
    /// The process runs on a terminal.
    pub terminal: bool,
    /// A one-line summary for logs and `DumpStacks`.
    pub summary: String,
}

/// Every container of the agent.
pub struct Containers {
    map: Mutex<HashMap<String, Option<Arc<Container>>>>,
    zygote: Zygote,
}

/// NOT_FOUND for a missing container; the message starts "no container"
/// so that the host tells it from an executable not found in one.
fn not_found(id: &str) -> Status {
    Status::not_found(format!("no container {id} exists"))
}

fn wrong_state(id: &str, s: &State, want: &str) -> Status {
    let now = match s {
        State::Created => "created",
        State::Starting => "starting",
        State::Running(_) => "running",
        State::Stopped(..) => "stopped",
    };
    Status::failed_precondition(format!("container {id} is {now}, not {want}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("container task failed: {e}")))
}

impl Containers {
    /// No containers yet; their processes are reaped by `reaper`.
    pub fn new(reaper: Reaper) -> Self {
        Self {
            map: Mutex::default(),
            zygote: Zygote::new(reaper),
        }
    }

    /// The container `id`, when it exists (and is not being created).
    pub fn get(&self, id: &str) -> Result<Arc<Container>, Status> {
        lock(&self.map)
            .get(id)
            .cloned()
            .flatten()
            .ok_or_else(|| not_found(id))
    }

    /// `CreateContainer`.
    pub async fn create(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, Status> {
        let id = req.id.clone();
        spec::check_id(&id).map_err(Status::invalid_argument)?;
        self.zygote.warm();
        let mut spec = spec::parse(&req.oci_spec_json)
            .map_err(|e| Status::invalid_argument(format!("container {id}: oci_spec_json: {e}")))?;
        {
            let mut map = lock(&self.map);
            if map.contains_key(&id) {
                return Err(Status::already_exists(format!(
                    "container {id} exists already"
                )));
            }
            map.insert(id.clone(), None);
        }
        let made = {
            let (id, res, src) = (id.clone(), spec.resources.clone(), req.rootfs.clone());
            blocking(move || {
                let t = std::time::Instant::now();
                let mut rootfs = Rootfs::create(Path::new(CONTAINERS_DIR), &id, src.as_ref())?;
                let rootfs_us = t.elapsed().as_micros() as u64;
                let cg = Cgroup::at(Path::new(CGROUP_ROOT), &id);
                if let Err(e) = cg.create(&res) {
                    let _ = rootfs.remove();
                    return Err(Status::internal(format!("container {id}: {e}")));
                }
                let total_us = t.elapsed().as_micros() as u64;
                tracing::debug!(container = %id, rootfs_us, total_us, "container root and cgroup made");
                Ok((rootfs, cg))
            })
            .await
            .and_then(|r| r)
        };
        let (rootfs, cgroup) = match made {
            Ok(m) => m,
            Err(e) => {
                lock(&self.map).remove(&id);
                tracing::warn!(container = %id, error = e.message(), "create container failed");
                return Err(e);
            }
        };
        spec.init.rootfs = rootfs.rootfs.clone();
        let resp = CreateContainerResponse {
            cgroup: cgroup.path.to_string_lossy().into_owned(),
            rootfs: rootfs.rootfs.to_string_lossy().into_owned(),
        };
        let c = Arc::new(Container {
            id: id.clone(),
            spec,
            cgroup,
            rootfs: Mutex::new(rootfs),
            state: Mutex::new(State::Created),
            stopped: tokio::sync::watch::channel(false).0,
        });
        lock(&self.map).insert(id.clone(), Some(c));
        tracing::info!(container = %id, cgroup = %resp.cgroup, rootfs = %resp.rootfs, "container created");
        Ok(resp)
    }

    /// Checks an `Exec` into a container and builds its plan.
    pub fn prepare(&self, cp: &ContainerProcess, policy: &Policy) -> Result<Prepared, Status> {
        let c = self.get(&cp.container_id)?;
        let id = c.id.clone();
        let state = c.state();
        let (plan, window) = if cp.init {
            if !cp.oci_process_json.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "container {id}: oci_process_json must be empty for the init (the spec says its process)"
                )));
            }
            if state != State::Created {
                return Err(wrong_state(&id, &state, "created"));
            }
            let mode = Mode::Init(c.spec.init.clone());
            (
                self::plan_for(&c, mode, c.spec.process.clone()),
                c.spec.window,
            )
        } else {
            let State::Running(init_pid) = state else {
                return Err(wrong_state(&id, &state, "running"));
            };
            let (process, window) = spec::parse_process(&cp.oci_process_json).map_err(|e| {
                Status::invalid_argument(format!("container {id}: oci_process_json: {e}"))
            })?;
            let namespaces = c.spec.init.namespaces.clone();
            (
                plan_for(
                    &c,
                    Mode::Exec {
                        init_pid,
                        namespaces,
                    },
                    process,
                ),
                window,
            )
        };
        let arg0 = &plan.process.args[0];
        if !policy.allows(Path::new(arg0), arg0) {
            return Err(Status::failed_precondition(format!(
                "{arg0}: denied by security policy"
            )));
        }
        let summary = format!(
            "[{id}{}] {}",
            if cp.init { " init" } else { "" },
            plan.process.args.join(" ")
        );
        Ok(Prepared {
            terminal: plan.process.terminal,
            container: c,
            plan,
            window,
            summary,
        })
    }

    /// Starts a prepared process; its `Running::exit` reports OOM kills.
    pub async fn launch(
        &self,
        p: Prepared,
        reaper: &Reaper,
        stdout_port: Option<std::os::fd::OwnedFd>,
    ) -> Result<Running, Status> {
        watch::launch(p, &self.zygote, reaper, stdout_port).await
    }

    /// `SignalContainer`.
    pub fn signal(&self, id: &str, signal: i32, all: bool) -> Result<(), Status> {
        let c = self.get(id)?;
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
            Status::invalid_argument(format!("signal {signal} is not a valid signal number"))
        })?;
        let state = c.state();
        let State::Running(pid) = state else {
            return Err(wrong_state(id, &state, "running"));
        };
        tracing::info!(container = %id, signal, all, "signalling container");
        if all {
            c.cgroup
                .signal_all(sig)
                .map_err(|e| Status::internal(format!("container {id}: signal its cgroup: {e}")))
        } else {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| Status::internal(format!("container {id}: kill {pid}: {e}")))
        }
    }

    /// `DeleteContainer`: kills what is left, waits (bounded) for the cgroup
    /// to empty and the init to be reaped, then removes cgroup and mounts.
    pub async fn delete(&self, id: &str) -> Result<(), Status> {
        let c = {
            let mut map = lock(&self.map);
            match map.get(id) {
                Some(Some(c)) => {
                    let c = c.clone();
                    map.remove(id);
                    c
                }
                Some(None) => {
                    return Err(Status::failed_precondition(format!(
                        "container {id} is being created"
                    )))
                }
                None => return Err(not_found(id)),
            }
        };
        let cg = c.cgroup.clone();
        if let Err(e) = blocking(move || cg.remove(DELETE_CGROUP_WAIT)).await? {
            lock(&self.map).insert(id.to_string(), Some(c));
            return Err(Status::internal(format!("container {id}: {e}")));
        }
        let mut stopped = c.stopped.subscribe();
        let started = matches!(c.state(), State::Running(_) | State::Starting);
        if started
            && tokio::time::timeout(DELETE_REAP_WAIT, stopped.wait_for(|s| *s))
                .await
                .is_err()
        {
            tracing::warn!(container = %id, "init not reaped within {DELETE_REAP_WAIT:?}; removing the container anyway");
        }
        let c2 = c.clone();
        let left = blocking(move || lock(&c2.rootfs).remove()).await?;
        match left {
            Ok(()) => {
                tracing::info!(container = %id, "container deleted");
                Ok(())
            }
            Err(e) => Err(Status::internal(format!(
                "container {id}: deleted, but {e}"
            ))),
        }
    }

    /// `ContainerStats`.
    pub async fn stats(&self, id: &str) -> Result<ContainerStatistics, Status> {
        let c = self.get(id)?;
        blocking(move || stats::collect(&c.cgroup.path)).await
    }

    /// `ListContainers`, sorted by id.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let mut v: Vec<ContainerInfo> = lock(&self.map)
            .values()
            .flatten()
            .map(|c| c.info())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

fn plan_for(c: &Container, mode: Mode, process: plan::ProcessPlan) -> Plan {
    Plan {
        container_id: c.id.clone(),
        cgroup: c.cgroup.path.clone(),
        mode,
        process,
    }
}
