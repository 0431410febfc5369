//! `Manager`: the `Controller` implementation.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uvm_schema::Platform;
use uvm_vmm::{Hypervisor, UtilityVm};

use crate::state::{transition, Event, InvalidTransition, Transition};
use crate::{
    Controller, CreateOptions, Error, ExecRequest, ExitStatus, Guest, ManagerConfig, StartOptions,
    State, VirtualMachineStatistics,
};

/// Facts about the created VM.
#[derive(Debug, Clone)]
pub(crate) struct VmInfo {
    pub id: String,
    pub platform: Platform,
    pub gcs_port: String,
    pub assigned_memory_bytes: u64,
    /// Stdout ports the VM was wired with.
    pub stdout_ports: u32,
    /// The document as given to the backend (agent settings in its cmdline).
    pub document: uvm_schema::ComputeSystem,
}

/// Listeners kept between create and start.
#[derive(Default)]
pub(crate) struct Listeners {
    pub log: Option<UnixListener>,
    pub entropy: Option<UnixListener>,
}

/// Shared state of a [`Manager`]; lifecycle bodies run in tasks holding an `Arc` of it.
pub(crate) struct Inner {
    pub hypervisor: Arc<dyn Hypervisor>,
    pub config: ManagerConfig,
    /// The state; read without waiting, written only through [`Inner::apply`].
    pub state: watch::Sender<State>,
    /// Every applied transition, in order.
    pub transitions: broadcast::Sender<Transition>,
    /// Serialises create/start/terminate and the exit watcher's transition.
    pub lifecycle: tokio::sync::Mutex<()>,
    pub vm: Mutex<Option<Arc<dyn UtilityVm>>>,
    pub guest: Mutex<Option<Arc<Guest>>>,
    pub listeners: Mutex<Listeners>,
    pub info: Mutex<Option<VmInfo>>,
    /// Parent of every start's abort token; terminate cancels it.
    pub abort: Mutex<CancellationToken>,
    /// Set once terminate has asked the VM to stop: from then on terminate owns
    /// the VM's end and the exit watcher stands aside (never reset).
    pub terminating: AtomicBool,
    pub start_time: Mutex<Option<SystemTime>>,
    pub exit_status: Mutex<Option<ExitStatus>>,
    /// True once the VM process exited and its exit was handled (the state
    /// and exit status are settled); `wait` waits for it.
    pub vm_exited: watch::Sender<bool>,
    /// Number of running log relays.
    pub logs_active: watch::Sender<usize>,
    /// Cancelled once the VM process is gone (channel tasks stop accepting).
    pub vm_gone: CancellationToken,
    /// Runtime devices (LUNs, shares, guest mounts); set at create.
    pub devices: tokio::sync::Mutex<Option<crate::devices::Devices>>,
    /// Why the VM ended when the backend cannot know (it was migrated away).
    pub exit_override: Mutex<Option<uvm_vmm::ExitReason>>,
    /// Set by a create from a snapshot: start loads and resumes instead of booting.
    pub restore: Mutex<Option<crate::snapshot::RestorePlan>>,
}

/// Transitions a slow subscriber may fall behind before it lags.
const TRANSITION_BACKLOG: usize = 64;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Applies `event` through [`transition`]; the only writer of the state.
    pub(crate) fn apply(&self, event: Event) -> Result<State, InvalidTransition> {
        let mut result = None;
        self.state.send_if_modified(|s| {
            let r = transition(*s, event);
            let changed = matches!(r, Ok(next) if next != *s);
            if let Ok(next) = r {
                // Under the watch's write lock: transitions are published in order.
                let _ = self.transitions.send(Transition {
                    from: *s,
                    event,
                    to: next,
                });
                *s = next;
            }
            result = Some(r);
            changed
        });
        let r = result.expect("send_if_modified runs its closure");
        match &r {
            Ok(next) => {
                tracing::debug!(target: "uvm::lifecycle", vm_id = %self.id(), ?event, state = %next, "transition")
            }
            Err(e) => {
                tracing::debug!(target: "uvm::lifecycle", vm_id = %self.id(), error = %e, "transition refused")
            }
        }
        r
    }

    pub(crate) fn id(&self) -> String {
        lock(&self.info)
            .as_ref()
            .map(|i| i.id.clone())
            .unwrap_or_default()
    }

    pub(crate) fn info(&self) -> Option<VmInfo> {
        lock(&self.info).clone()
    }

    pub(crate) fn vm(&self) -> Option<Arc<dyn UtilityVm>> {
        lock(&self.vm).clone()
    }

    pub(crate) fn guest(&self) -> Option<Arc<Guest>> {
        lock(&self.guest).clone()
    }

    /// The guest, if the VM is Running; else the state error for `op`.
    pub(crate) fn require_running(&self, op: &'static str) -> Result<Arc<Guest>, Error> {
        match (self.state(), self.guest()) {
            (State::Running, Some(g)) => Ok(g),
            (state, _) => Err(Error::InvalidState { op, state }),
        }
    }

    /// `err` of a call made while Running, or [`Error::VmExited`] when it
    /// failed because the VM went away (its exit seen within
    /// [`crate::VM_EXIT_GRACE`]).
    pub(crate) async fn or_vm_exit(&self, during: &'static str, err: Error) -> Error {
        if matches!(err, Error::VmExited { .. }) || !crate::start::may_be_vm_death(&err) {
            return err;
        }
        let Some(vm) = self.vm() else { return err };
        match tokio::time::timeout(crate::VM_EXIT_GRACE, vm.wait()).await {
            Ok(reason) => Error::VmExited {
                during,
                reason: crate::ExitError(reason),
            },
            Err(_) => err,
        }
    }

    /// A fresh abort parent once the old one was used (after a terminate that
    /// did not end the VM), so later starts are not born cancelled.
    pub(crate) fn reset_abort(&self) {
        let mut a = lock(&self.abort);
        if a.is_cancelled() {
            *a = CancellationToken::new();
        }
    }
}

/// Runs `fut` in a task owned by the manager and awaits it: dropping the
/// caller's future does not stop the body half-way.
async fn owned<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(fut).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The VM controller (the seed's `Manager`): drives one Utility VM through
/// its lifecycle. See the crate docs for the guarantees.
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("state", &self.inner.state())
            .field("id", &self.inner.id())
            .finish()
    }
}

impl Default for Manager {
    fn default() -> Self {
        Manager::new()
    }
}

impl Manager {
    /// A controller in `NotCreated` using the default (QEMU) backend (`NewController`).
    pub fn new() -> Self {
        Manager::with_hypervisor(crate::backend::default_hypervisor())
    }

    /// A controller with the default (QEMU) backend and explicit tunables.
    pub fn from_config(config: ManagerConfig) -> Self {
        Manager::with_config(crate::backend::default_hypervisor(), config)
    }

    /// A controller using `hypervisor` as its backend.
    pub fn with_hypervisor(hypervisor: Arc<dyn Hypervisor>) -> Self {
        Manager::with_config(hypervisor, ManagerConfig::default())
    }

    /// A controller with explicit tunables.
    pub fn with_config(hypervisor: Arc<dyn Hypervisor>, config: ManagerConfig) -> Self {
        let inner = Inner {
            hypervisor,
            config,
            state: watch::Sender::new(State::NotCreated),
            transitions: broadcast::channel(TRANSITION_BACKLOG).0,
            lifecycle: tokio::sync::Mutex::new(()),
            vm: Mutex::new(None),
            guest: Mutex::new(None),
            listeners: Mutex::new(Listeners::default()),
            info: Mutex::new(None),
            abort: Mutex::new(CancellationToken::new()),
            terminating: AtomicBool::new(false),
            start_time: Mutex::new(None),
            exit_status: Mutex::new(None),
            vm_exited: watch::Sender::new(false),
            logs_active: watch::Sender::new(0),
            vm_gone: CancellationToken::new(),
            devices: tokio::sync::Mutex::new(None),
            restore: Mutex::new(None),
            exit_override: Mutex::new(None),
        };
        Manager {
            inner: Arc::new(inner),
        }
    }

    /// Sets the bound on GCS connect + negotiate during `start_vm`
    /// (default [`crate::DEFAULT_GCS_TIMEOUT`]). Call before `create_vm`.
    pub fn with_gcs_timeout(self, timeout: Duration) -> Self {
        let config = ManagerConfig {
            gcs_timeout: timeout,
            ..self.inner.config.clone()
        };
        Manager::with_config(self.inner.hypervisor.clone(), config)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The tunables in use.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// The backend's VM handle (pid, runtime dir...), once created.
    pub fn utility_vm(&self) -> Option<Arc<dyn UtilityVm>> {
        self.inner.vm()
    }

    /// The platform variant in use, once created.
    pub fn platform(&self) -> Option<Platform> {
        self.inner.info().map(|i| i.platform)
    }

    /// Snapshots the Running VM into `dir` (made 0700; an existing one must
    /// be empty): the agent is quiesced, the vCPUs paused, the state and
    /// [`crate::SnapshotManifest`] written; then the VM resumes or
    /// terminates, as `then` says. Fails, changing nothing, while exec'd
    /// processes run in the guest or a share is mounted in it (QEMU cannot
    /// migrate a mounted 9p export).
    pub async fn snapshot(
        &self,
        dir: impl Into<std::path::PathBuf>,
        then: crate::AfterSnapshot,
    ) -> Result<crate::SnapshotManifest, Error> {
        let inner = self.inner.clone();
        let dir = dir.into();
        owned(async move { inner.snapshot(dir, then).await }).await
    }

    /// `create_vm` from a snapshot (NotCreated → Created): checks the dir
    /// (ours, 0700), the manifest, the saved files, the kernel/initrd and the
    /// QEMU version, then spawns QEMU waiting for the state. `start_vm` loads
    /// it and resumes the guest, which reseeds its RNG, steps its clock and
    /// takes the new hostname. Nothing is left behind when it fails.
    pub async fn create_vm_from_snapshot(&self, opts: crate::RestoreOptions) -> Result<(), Error> {
        let inner = self.inner.clone();
        owned(async move { inner.create_from_snapshot(opts).await }).await
    }

    /// Creates VM `id` from `origin`: `create_vm` of the document, or
    /// [`Manager::create_vm_from_snapshot`] of the snapshot dir.
    pub async fn create_vm_from(&self, id: String, origin: crate::VmOrigin) -> Result<(), Error> {
        match origin {
            crate::VmOrigin::Document(document) => {
                self.create_vm(CreateOptions {
                    id,
                    document: *document,
                })
                .await
            }
            crate::VmOrigin::Snapshot(snapshot_dir) => {
                self.create_vm_from_snapshot(crate::RestoreOptions {
                    id,
                    snapshot_dir,
                    hostname: None,
                })
                .await
            }
        }
    }

    /// Live-migrates the Running VM into `dest` (a Manager in NotCreated),
    /// which ends Running with the same guest: processes, their stdio and
    /// exit codes carry on. This Manager ends Terminated, its exit error
    /// [`ExitReason::Migrated`]. Cancelling `opts.cancel` before the
    /// transfer completes leaves this VM Running and `dest` Terminated.
    /// See [`crate::MigrationPhase`] for the steps.
    pub async fn migrate_to(
        &self,
        dest: &Manager,
        opts: crate::MigrationOptions,
    ) -> Result<(), Error> {
        let inner = self.inner.clone();
        let dest = dest.inner.clone();
        owned(async move { inner.migrate(dest, opts).await }).await
    }

    /// A receiver of the current state; changes may coalesce (use
    /// [`Manager::subscribe_transitions`] to see every step).
    pub fn subscribe_state(&self) -> watch::Receiver<State> {
        self.inner.state.subscribe()
    }

    /// A receiver of every transition applied from now on, in order (it lags,
    /// and says so, only if it falls more than 64 transitions behind).
    pub fn subscribe_transitions(&self) -> broadcast::Receiver<Transition> {
        self.inner.transitions.subscribe()
    }
}

impl Drop for Manager {
    /// A manager dropped with a live VM terminates it in the background (when
    /// a tokio runtime is around; the backend's own guards cover the rest).
    fn drop(&mut self) {
        match self.inner.state() {
            State::Terminated => return,
            // Nothing created and no create in flight: nothing to clean.
            State::NotCreated if self.inner.lifecycle.try_lock().is_ok() => return,
            _ => {}
        }
        lock(&self.inner.abort).cancel();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            rt.spawn(async move {
                let _ = inner.terminate().await;
            });
        }
    }
}

#[async_trait]
impl Controller for Manager {
    fn guest(&self) -> Option<Arc<Guest>> {
        self.inner.guest()
    }

    fn state(&self) -> State {
        self.inner.state()
    }

    async fn create_vm(&self, opts: CreateOptions) -> Result<(), Error> {
        let inner = self.inner.clone();
        owned(async move { inner.create(opts).await }).await
    }

    async fn start_vm(&self, opts: StartOptions) -> Result<(), Error> {
        if self.inner.state() == State::Running {
            return Ok(());
        }
        let abort = lock(&self.inner.abort).child_token();
        // Dropping this call aborts the start (the VM then ends Invalid).
        let guard = abort.clone().drop_guard();
        let inner = self.inner.clone();
        let r = owned(async move { inner.start(opts, abort).await }).await;
        guard.disarm();
        r
    }

    async fn exec_into_host(&self, req: ExecRequest) -> Result<i32, Error> {
        let guest = self.inner.require_running("exec_into_host")?;
        match guest.exec_with_paths(&req).await {
            Ok(code) => Ok(code),
            Err(e) => Err(self.inner.or_vm_exit("exec", Error::guest("exec", e)).await),
        }
    }

    async fn dump_stacks(&self) -> Result<String, Error> {
        let guest = self.inner.require_running("dump_stacks")?;
        match guest.dump_stacks(self.inner.config.rpc_timeout).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let e = Error::guest("dump stacks", e);
                Err(self.inner.or_vm_exit("dump stacks", e).await)
            }
        }
    }

    async fn wait(&self) -> Result<(), Error> {
        let state = self.inner.state();
        if state == State::NotCreated {
            return Err(Error::InvalidState { op: "wait", state });
        }
        let mut exited = self.inner.vm_exited.subscribe();
        let _ = exited.wait_for(|e| *e).await;
        let mut logs = self.inner.logs_active.subscribe();
        let _ = logs.wait_for(|n| *n == 0).await;
        Ok(())
    }

    async fn stats(&self) -> Result<VirtualMachineStatistics, Error> {
        let guest = self.inner.require_running("stats")?;
        let vm = self.inner.vm().ok_or(Error::InvalidState {
            op: "stats",
            state: self.state(),
        })?;
        let assigned = self
            .inner
            .info()
            .map(|i| i.assigned_memory_bytes)
            .unwrap_or(0);
        let (host, g) = tokio::join!(vm.statistics(), guest.stats(self.inner.config.rpc_timeout));
        // The guest's error first: it says when the VM stopped under the call.
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                return Err(self
                    .inner
                    .or_vm_exit("stats", Error::guest("stats", e))
                    .await)
            }
        };
        let host = match host {
            Ok(h) => h,
            Err(e) => {
                return Err(self
                    .inner
                    .or_vm_exit("stats", Error::vmm("VM statistics", e))
                    .await)
            }
        };
        Ok(crate::stats::build(&host, assigned, &g))
    }

    async fn terminate_vm(&self) -> Result<(), Error> {
        if self.inner.state() == State::Terminated {
            return Ok(());
        }
        // Not short-cut in NotCreated: an in-flight create (its caller may have
        // dropped it) finishes first and its VM is then terminated.
        // Abort an in-flight start before queueing for the lifecycle lock.
        lock(&self.inner.abort).cancel();
        let inner = self.inner.clone();
        owned(async move { inner.terminate().await }).await
    }

    fn start_time(&self) -> Option<SystemTime> {
        match self.inner.state() {
            State::Running | State::Terminated => *lock(&self.inner.start_time),
            _ => None,
        }
    }

    fn exit_status(&self) -> Result<ExitStatus, Error> {
        let state = self.inner.state();
        match (state, lock(&self.inner.exit_status).clone()) {
            (State::Terminated, Some(s)) => Ok(s),
            (state, _) => Err(Error::InvalidState {
                op: "exit_status",
                state,
            }),
        }
    }
}
