//! The Task API containerd drives (`containerd.task.v2.Task`), on the
//! UVM's container API (`uvm::Manager::create_container` and friends).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::api::{self, Empty, ProcessInfo};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, context::Context};
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use uvm::{ContainerRootfs, Controller};

use crate::config::config_path_of;
use crate::error::{Result, ShimError};
use crate::guest_cmd;
use crate::process::{timestamp, TrackedProcess};
use crate::sandbox::Sandbox;
use crate::stdio::{self, Exit, StdioPaths};
use crate::{metrics, rootfs, spec};

/// A task (container) of this shim.
struct TaskEntry {
    bundle: PathBuf,
    /// The rootfs mounts were made by this shim (to undo on delete).
    mounted_rootfs: bool,
    /// Its cgroup in the guest.
    cgroup: String,
    init: TrackedProcess,
    execs: HashMap<String, ExecEntry>,
}

struct ExecEntry {
    process: OciProcess,
    tracked: TrackedProcess,
}

impl TaskEntry {
    /// The init (`None`) or exec `e`, which [`Service::with_process`] checked exists.
    fn tracked(&self, exec: Option<&str>) -> &TrackedProcess {
        match exec {
            None => &self.init,
            Some(e) => &self.execs[e].tracked,
        }
    }

    /// [`TaskEntry::tracked`], mutable.
    fn tracked_mut(&mut self, exec: Option<&str>) -> &mut TrackedProcess {
        match exec {
            None => &mut self.init,
            Some(e) => &mut self.execs.get_mut(e).expect("checked").tracked,
        }
    }
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    sandbox: Sandbox,
    tasks: Mutex<HashMap<String, TaskEntry>>,
}

/// The task service of one shim (one UVM).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn not_found(what: &'static str, id: &str) -> ShimError {
    ShimError::NotFound {
        what,
        id: id.to_string(),
    }
}

fn ok<T>(r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::warn!(error = %e.sentence(), "request failed");
        e.into()
    })
}

impl Service {
    /// A service publishing to containerd through `publisher`, serving the
    /// UVM `vm_id`; `exit` is signalled when the shim should end.
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        vm_id: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace,
                publisher,
                exit,
                sandbox: Sandbox::new(vm_id),
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskEntry>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.inner, topic, event).await
    }

    /// With the tracked process `exec_id` ("" = init) of task `id`.
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut TaskEntry, Option<&str>) -> Result<T>,
    ) -> Result<T> {
        let mut tasks = self.tasks();
        let t = tasks
            .get_mut(id)
            .ok_or_else(|| not_found("container", id))?;
        if exec_id.is_empty() {
            f(t, None)
        } else if t.execs.contains_key(exec_id) {
            f(t, Some(exec_id))
        } else {
            Err(not_found("exec", exec_id))
        }
    }

    async fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        if self.tasks().contains_key(&id) {
            return Err(ShimError::AlreadyExists {
                what: "container",
                id,
            });
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::NotImplemented("Create from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let config = bundle.join("config.json");
        let mut spec = Spec::load(&config).map_err(|e| {
            ShimError::InvalidArgument(format!("the bundle's {}: {e}", config.display()))
        })?;
        for what in spec::for_guest(&mut spec) {
            tracing::info!(container = %id, "left out for the UVM: {what}");
        }
        let config_path = config_path_of(req.options.as_ref())?;
        self.inner
            .sandbox
            .ensure_running(config_path.as_deref())
            .await?;
        let stdio_paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let opened = stdio::open(&stdio_paths).await?;
        let (root, mounted) = if req.rootfs.is_empty() {
            let p = spec
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_else(|| "rootfs".into());
            (if p.is_absolute() { p } else { bundle.join(p) }, false)
        } else {
            (rootfs::mount(&bundle, &req.rootfs)?, true)
        };
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(req.terminal));
        }
        let read_only = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let created = self
            .inner
            .sandbox
            .manager()
            .create_container(
                &id,
                &spec,
                ContainerRootfs::Directory {
                    path: root,
                    read_only,
                },
            )
            .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if mounted {
                    let _ = rootfs::unmount(&bundle);
                }
                return Err(ShimError::uvm(format!("cannot create container {id}"), e));
            }
        };
        self.tasks().insert(
            id.clone(),
            TaskEntry {
                bundle: bundle.clone(),
                mounted_rootfs: mounted,
                cgroup: created.cgroup,
                init: TrackedProcess::new(stdio_paths.clone(), opened),
                execs: HashMap::new(),
            },
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: stdio_paths.stdin,
                    stdout: stdio_paths.stdout,
                    stderr: stdio_paths.stderr,
                    terminal: stdio_paths.terminal,
                    ..Default::default()
                }),
                checkpoint: String::new(),
                pid: 0,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse::default())
    }

    async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let (opened, process) = self.with_process(&id, &exec_id, |t, exec| {
            let process = exec.map(|e| t.execs[e].process.clone());
            let opened = t.tracked_mut(exec).opened.take().ok_or_else(|| {
                ShimError::FailedPrecondition(format!(
                    "{} of container {id} was started already",
                    exec.map(|e| format!("exec {e}"))
                        .unwrap_or_else(|| "the init".into())
                ))
            })?;
            Ok((opened, process))
        })?;
        let manager = self.inner.sandbox.manager();
        let started = match &process {
            None => manager.start_container(&id).await,
            Some(p) => manager.exec_in_container(&id, p).await,
        };
        let p = started.map_err(|e| {
            let what = if exec_id.is_empty() {
                format!("cannot start container {id}")
            } else {
                format!("cannot start exec {exec_id} in container {id}")
            };
            ShimError::uvm(what, e)
        })?;
        let relayed = stdio::relay(p, opened);
        let pid = relayed.pid;
        self.with_process(&id, &exec_id, |t, exec| {
            let tracked = t.tracked_mut(exec);
            tracked.pid = pid;
            tracked.control = Some(relayed.control.clone());
            tracked.close_stdin = relayed.close_stdin;
            Ok(())
        })?;
        if exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        let inner = self.inner.clone();
        let exit = relayed.exit;
        tokio::spawn(async move {
            let exit = exit.await.unwrap_or(Exit {
                status: stdio::VM_DIED_STATUS,
                at: std::time::SystemTime::now(),
                oom_killed: false,
            });
            exited(&inner, &id, &exec_id, pid, exit).await;
        });
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        if !exec_id.is_empty() {
            let x = self.with_process(&id, &exec_id, |t, _| {
                let x = t.execs.get(&exec_id).expect("checked");
                if x.tracked.pid != 0 && x.tracked.exit().is_none() {
                    return Err(ShimError::FailedPrecondition(format!(
                        "exec {exec_id} is still running; kill it first"
                    )));
                }
                Ok(t.execs.remove(&exec_id).expect("checked"))
            })?;
            return Ok(delete_response(&x.tracked));
        }
        let (bundle, mounted, pid, exit) = self.with_process(&id, "", |t, _| {
            if t.init.pid != 0 && t.init.exit().is_none() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is still running; kill it first"
                )));
            }
            Ok((
                t.bundle.clone(),
                t.mounted_rootfs,
                t.init.pid,
                t.init.exit(),
            ))
        })?;
        let manager = self.inner.sandbox.manager();
        if manager.state() == uvm::State::Running {
            if let Err(e) = manager.delete_container(&id).await {
                tracing::warn!(container = %id, error = %e, "deleting the container in the UVM");
            }
        }
        if mounted {
            rootfs::unmount(&bundle)?;
        }
        let entry = self
            .tasks()
            .remove(&id)
            .ok_or_else(|| not_found("container", &id))?;
        let resp = delete_response(&entry.init);
        let (status, at) = exit
            .map(|e| (e.status, e.at))
            .unwrap_or((0, std::time::SystemTime::now()));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.clone(),
                id: id.clone(),
                pid,
                exit_status: status,
                exited_at: timestamp(at),
                ..Default::default()
            }),
        )
        .await;
        Ok(resp)
    }

    async fn do_kill(&self, req: api::KillRequest) -> Result<()> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let control = self.with_process(id, exec_id, |t, exec| {
            let tracked = t.tracked(exec);
            if tracked.exit().is_some() {
                return Err(ShimError::NotFound {
                    what: "running process",
                    id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
                });
            }
            Ok(tracked.control.clone())
        })?;
        let signal = req.signal as i32;
        match (exec_id.is_empty(), control) {
            (true, _) => self
                .inner
                .sandbox
                .manager()
                .signal_container(id, signal, req.all)
                .await
                .map_err(|e| ShimError::uvm(format!("cannot signal container {id}"), e)),
            (false, Some(c)) => c.signal(signal).await.map_err(|e| {
                ShimError::FailedPrecondition(format!("cannot signal exec {exec_id}: {e}"))
            }),
            (false, None) => Err(ShimError::FailedPrecondition(format!(
                "exec {exec_id} is not started"
            ))),
        }
    }

    async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let any = req.spec.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument("exec: the process spec is missing".into())
        })?;
        let mut process: OciProcess = serde_json::from_slice(&any.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec {exec_id}: the process spec: {e}"))
        })?;
        process.set_terminal(Some(req.terminal));
        let stdio_paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let opened = stdio::open(&stdio_paths).await?;
        {
            let mut tasks = self.tasks();
            let t = tasks
                .get_mut(&id)
                .ok_or_else(|| not_found("container", &id))?;
            if t.init.status() != api::Status::RUNNING {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not running"
                )));
            }
            if t.execs.contains_key(&exec_id) {
                return Err(ShimError::AlreadyExists {
                    what: "exec",
                    id: exec_id,
                });
            }
            t.execs.insert(
                exec_id.clone(),
                ExecEntry {
                    process,
                    tracked: TrackedProcess::new(stdio_paths, opened),
                },
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let mut rx = self.with_process(&req.id, &req.exec_id, |t, exec| {
            Ok(t.tracked(exec).watch_exit())
        })?;
        let exit = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(ShimError::NotFound {
                    what: "process",
                    id: req.id.clone(),
                });
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn do_state(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        self.with_process(&req.id, &req.exec_id, |t, exec| {
            let tracked = t.tracked(exec);
            let exit = tracked.exit();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: t.bundle.display().to_string(),
                pid: tracked.pid,
                status: tracked.status().into(),
                stdin: tracked.stdio.stdin.clone(),
                stdout: tracked.stdio.stdout.clone(),
                stderr: tracked.stdio.stderr.clone(),
                terminal: tracked.stdio.terminal,
                exit_status: exit.map(|e| e.status).unwrap_or(0),
                exited_at: exit.map(|e| timestamp(e.at)).unwrap_or_default(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    async fn do_pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let cgroup = self.with_process(id, "", |t, _| Ok(t.cgroup.clone()))?;
        let procs = Path::new(&cgroup).join("cgroup.procs");
        let out = guest_cmd::output(
            self.inner.sandbox.manager(),
            &["cat", &procs.display().to_string()],
        )
        .await?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect())
    }

    async fn do_update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let cgroup = self.with_process(&req.id, "", |t, _| Ok(t.cgroup.clone()))?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update: no resources given".into()))?;
        let r: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("update: the resources: {e}")))?;
        let writes = guest_cmd::cgroup_writes(&r);
        if writes.is_empty() {
            return Ok(());
        }
        guest_cmd::write_cgroup(self.inner.sandbox.manager(), &cgroup, &writes).await
    }

    async fn do_stats(&self, id: &str) -> Result<api::StatsResponse> {
        self.with_process(id, "", |_, _| Ok(()))?;
        let s = self
            .inner
            .sandbox
            .manager()
            .container_stats(id)
            .await
            .map_err(|e| {
                ShimError::uvm(format!("cannot read the statistics of container {id}"), e)
            })?;
        Ok(api::StatsResponse {
            stats: MessageField::some(metrics::cgroup2_metrics(&s)),
            ..Default::default()
        })
    }

    fn do_close_io(&self, req: &api::CloseIORequest) -> Result<()> {
        self.with_process(&req.id, &req.exec_id, |t, exec| {
            let tracked = t.tracked_mut(exec);
            if let Some(close) = tracked.close_stdin.take() {
                let _ = close.send(());
            }
            Ok(())
        })
    }

    async fn do_resize(&self, req: &api::ResizePtyRequest) -> Result<()> {
        let control = self.with_process(&req.id, &req.exec_id, |t, exec| {
            let tracked = t.tracked(exec);
            if !tracked.stdio.terminal {
                return Err(ShimError::FailedPrecondition(
                    "the process has no terminal to resize".into(),
                ));
            }
            tracked
                .control
                .clone()
                .ok_or_else(|| ShimError::FailedPrecondition("the process is not started".into()))
        })?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        control
            .resize(clamp(req.height), clamp(req.width))
            .await
            .map_err(|e| ShimError::FailedPrecondition(format!("cannot resize the terminal: {e}")))
    }

    async fn do_shutdown(&self) {
        if !self.tasks().is_empty() {
            return;
        }
        self.inner.sandbox.terminate().await;
        self.inner.exit.signal();
    }
}

fn delete_response(p: &TrackedProcess) -> api::DeleteResponse {
    let exit = p.exit();
    api::DeleteResponse {
        pid: p.pid,
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: timestamp(
            exit.map(|e| e.at)
                .unwrap_or_else(std::time::SystemTime::now),
        ),
        ..Default::default()
    }
}

async fn publish(inner: &Inner, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = inner
        .publisher
        .publish(Context::default(), topic, &inner.namespace, event)
        .await
    {
        tracing::warn!(topic, error = %e, "cannot publish the event to containerd");
    }
}

/// Records a process's exit and tells containerd (an OOM kill first).
async fn exited(inner: &Inner, id: &str, exec_id: &str, pid: u32, exit: Exit) {
    {
        let tasks = inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tasks.get(id) {
            let tracked = if exec_id.is_empty() {
                Some(&t.init)
            } else {
                t.execs.get(exec_id).map(|x| &x.tracked)
            };
            if let Some(tr) = tracked {
                tr.set_exit(exit);
            }
        }
    }
    tracing::info!(
        container = id,
        exec = exec_id,
        pid,
        status = exit.status,
        oom = exit.oom_killed,
        "process exited"
    );
    if exit.oom_killed {
        publish(
            inner,
            topics::TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: id.to_string(),
                ..Default::default()
            }),
        )
        .await;
    }
    publish(
        inner,
        topics::TASK_EXIT_EVENT_TOPIC,
        Box::new(TaskExit {
            container_id: id.to_string(),
            id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
            pid,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        }),
    )
    .await;
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        ok(self.do_state(&req))
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        ok(self.do_create(req).await)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        ok(self.do_start(req).await)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        ok(self.do_delete(req).await)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        ok(self
            .do_pids(&req.id)
            .await
            .map(|processes| api::PidsResponse {
                processes,
                ..Default::default()
            }))
    }

    async fn pause(&self, _: &TtrpcContext, _: api::PauseRequest) -> ttrpc::Result<Empty> {
        Err(ShimError::NotImplemented("Pause").into())
    }

    async fn resume(&self, _: &TtrpcContext, _: api::ResumeRequest) -> ttrpc::Result<Empty> {
        Err(ShimError::NotImplemented("Resume").into())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(ShimError::NotImplemented("Checkpoint").into())
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        ok(self.do_kill(req).await.map(|()| Empty::default()))
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        ok(self.do_exec(req).await.map(|()| Empty::default()))
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        ok(self.do_resize(&req).await.map(|()| Empty::default()))
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        ok(self.do_close_io(&req).map(|()| Empty::default()))
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        ok(self.do_update(req).await.map(|()| Empty::default()))
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        ok(self.do_wait(req).await)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        ok(self.do_stats(&req.id).await)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map(|t| t.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown().await;
        Ok(Empty::default())
    }
}
