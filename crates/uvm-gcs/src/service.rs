//! The `uvm.gcs.v1.Gcs` gRPC service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};
use uvm_proto::gcs::gcs_server::{Gcs, GcsServer};
use uvm_proto::gcs::{
    shutdown_request, Capabilities, ContainerStatistics, ContainerStatsRequest,
    CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest,
    DeleteContainerResponse, DumpStacksRequest, DumpStacksResponse, ExecInput, GuestStats,
    HvSocketAddress, ListContainersRequest, ListContainersResponse, MountRequest, MountResponse,
    NegotiateRequest, NegotiateResponse, QuiesceRequest, QuiesceResponse, RemoveScsiDiskRequest,
    RemoveScsiDiskResponse, ResumeRequest, ResumeResponse, SecurityPolicy,
    SetSecurityPolicyResponse, ShutdownRequest, ShutdownResponse, SignalContainerRequest,
    SignalContainerResponse, StatsRequest, UnmountRequest, UnmountResponse,
    UpdateHvSocketAddressResponse,
};
use uvm_proto::PROTOCOL_VERSION;

use crate::container::Containers;
use crate::exec::{exec_handler, ExecStream};
use crate::mounts::{Failure, Mounts};
use crate::policy::Policy;
use crate::reaper::Reaper;
use crate::spawn::ProcessDefaults;
use crate::stacks::InFlight;
use crate::stdout_port::{PortPaths, StdoutPorts};

/// How the agent runs, which decides what `Shutdown` and `Negotiate` may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a UVM: sets the hostname, powers the machine off.
    Init,
    /// An ordinary process (tests, development): `Shutdown` just exits.
    Process,
}

/// State shared by every request.
pub struct Shared {
    /// The single owner of `waitpid`.
    pub reaper: Reaper,
    /// In-flight requests, for `DumpStacks`.
    pub inflight: InFlight,
    /// The enforced security policy.
    pub policy: RwLock<Policy>,
    /// Environment defaults from `Negotiate`.
    pub defaults: RwLock<ProcessDefaults>,
    /// The host's HvSocket address (WCOW finalize step; informational on Linux).
    pub hv_socket: Mutex<Option<HvSocketAddress>>,
    /// How the agent runs.
    pub role: Role,
    /// Stdout ports the host may hand to processes.
    pub stdout_ports: Arc<StdoutPorts>,
    /// Disks and shares mounted for the host.
    pub mounts: Arc<Mounts>,
    /// Containers (DESIGN §11).
    pub containers: Containers,
    /// Set by `Quiesce`, cleared by `Resume`: new work is refused meanwhile.
    pub quiesced: AtomicBool,
}

impl Shared {
    /// Refuses `what` while quiesced for a snapshot.
    #[allow(clippy::result_large_err)] // tonic's own Status type
    fn accepting(&self, what: &str) -> Result<(), Status> {
        if self.quiesced.load(Ordering::Acquire) {
            return Err(Status::failed_precondition(format!(
                "{what} refused: the VM is quiesced for a snapshot until it is resumed"
            )));
        }
        Ok(())
    }
}

/// The GCS service; cheap to clone.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    /// A new agent using `reaper` (whose task the caller runs).
    pub fn new(reaper: Reaper, role: Role) -> Self {
        let shared = Shared {
            containers: Containers::new(reaper.clone()),
            reaper,
            inflight: InFlight::default(),
            policy: RwLock::new(Policy::AllowAll),
            defaults: RwLock::new(ProcessDefaults::default()),
            hv_socket: Mutex::new(None),
            role,
            stdout_ports: StdoutPorts::with_paths(PortPaths {
                // Only PID 1 owns the guest's mount table.
                mount_debugfs: role == Role::Init,
                ..PortPaths::default()
            }),
            mounts: Arc::new(Mounts::default()),
            quiesced: AtomicBool::new(false),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The tonic service wrapping this agent.
    pub fn into_server(self) -> GcsServer<Agent> {
        GcsServer::new(self).max_decoding_message_size(8 << 20)
    }
}

/// Runs a blocking mount operation off the runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|f| {
            tracing::warn!(error = %f.message, "{what} refused");
            Status::from(f)
        }),
        Err(e) => Err(Status::internal(format!("{what} failed: {e}"))),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Gcs for Agent {
    async fn negotiate(
        &self,
        request: Request<NegotiateRequest>,
    ) -> Result<Response<NegotiateResponse>, Status> {
        let req = request.into_inner();
        if !(req.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= req.max_version) {
            return Err(Status::failed_precondition(format!(
                "no common protocol version: host speaks {}..={}, agent speaks {PROTOCOL_VERSION}",
                req.min_version, req.max_version
            )));
        }
        if let Some(state) = req.initial_state {
            let mut defaults = ProcessDefaults {
                timezone: (!state.timezone.is_empty()).then_some(state.timezone),
                env: Vec::new(),
            };
            for entry in state.env {
                if !entry.contains('=') || entry.starts_with('=') {
                    return Err(Status::invalid_argument(format!(
                        "malformed environment entry {entry:?}"
                    )));
                }
                defaults.env.push(entry);
            }
            if !state.hostname.is_empty() {
                match self.shared.role {
                    Role::Init => crate::init::set_hostname(&state.hostname),
                    Role::Process => {
                        tracing::info!(hostname = %state.hostname, "not PID 1: hostname not changed")
                    }
                }
            }
            *self
                .shared
                .defaults
                .write()
                .unwrap_or_else(|e| e.into_inner()) = defaults;
        }
        crate::boot_marks::mark(crate::boot_marks::Mark::Negotiated);
        tracing::debug!(version = PROTOCOL_VERSION, "negotiated");
        Ok(Response::new(NegotiateResponse {
            version: PROTOCOL_VERSION,
            capabilities: Some(Capabilities {
                dump_stacks: true,
                terminal: true,
                signals: true,
                stats: true,
                security_policy: true,
                shutdown: true,
                stdout_ports: true,
                mounts: true,
                containers: true,
                snapshots: true,
            }),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: kernel_release(),
            uptime_ns: crate::stats::uptime_ns(),
        }))
    }

    type ExecStream = ExecStream;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.shared.accepting("exec")?;
        exec_handler(self.shared.clone(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn dump_stacks(
        &self,
        _: Request<DumpStacksRequest>,
    ) -> Result<Response<DumpStacksResponse>, Status> {
        let _guard = self.shared.inflight.enter("DumpStacks", String::new());
        let inflight = self.shared.inflight.clone();
        let stacks = tokio::task::spawn_blocking(move || crate::stacks::dump(&inflight))
            .await
            .map_err(|e| Status::internal(format!("dump failed: {e}")))?;
        Ok(Response::new(DumpStacksResponse { stacks }))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<GuestStats>, Status> {
        let stats = tokio::task::spawn_blocking(crate::stats::collect)
            .await
            .map_err(|e| Status::internal(format!("stats failed: {e}")))?;
        Ok(Response::new(stats))
    }

    async fn set_security_policy(
        &self,
        request: Request<SecurityPolicy>,
    ) -> Result<Response<SetSecurityPolicyResponse>, Status> {
        let policy = Policy::from(request.into_inner());
        tracing::info!(policy = ?policy, "security policy set");
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = policy;
        Ok(Response::new(SetSecurityPolicyResponse {}))
    }

    async fn update_hv_socket_address(
        &self,
        request: Request<HvSocketAddress>,
    ) -> Result<Response<UpdateHvSocketAddressResponse>, Status> {
        let addr = request.into_inner();
        tracing::info!(local = %addr.local_address, parent = %addr.parent_address, "HvSocket address updated (no effect on Linux)");
        *self
            .shared
            .hv_socket
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(addr);
        Ok(Response::new(UpdateHvSocketAddressResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let reboot = request.into_inner().mode == shutdown_request::Mode::Reboot as i32;
        tracing::info!(reboot, "shutdown requested");
        let role = self.shared.role;
        tokio::spawn(async move {
            // Let the response reach the host first: wait until the
            // connection has been quiet for a moment (bounded).
            tokio::time::sleep(Duration::from_millis(10)).await;
            crate::server::wait_for_quiet_writes(
                Duration::from_millis(100),
                Duration::from_secs(2),
            )
            .await;
            match role {
                Role::Init => {
                    let _ =
                        tokio::task::spawn_blocking(move || crate::init::power_off(reboot)).await;
                }
                Role::Process => std::process::exit(0),
            }
        });
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        self.shared.accepting("mount")?;
        let req = request.into_inner();
        let _guard = self.shared.inflight.enter("Mount", req.target.clone());
        let mounts = self.shared.mounts.clone();
        blocking("mount", move || mounts.mount(&req))
            .await
            .map(Response::new)
    }

    async fn unmount(
        &self,
        request: Request<UnmountRequest>,
    ) -> Result<Response<UnmountResponse>, Status> {
        let target = request.into_inner().target;
        let _guard = self.shared.inflight.enter("Unmount", target.clone());
        let mounts = self.shared.mounts.clone();
        blocking("unmount", move || mounts.unmount(&target)).await?;
        Ok(Response::new(UnmountResponse {}))
    }

    async fn remove_scsi_disk(
        &self,
        request: Request<RemoveScsiDiskRequest>,
    ) -> Result<Response<RemoveScsiDiskResponse>, Status> {
        let Some(addr) = request.into_inner().address else {
            return Err(Status::invalid_argument("RemoveScsiDisk needs an address"));
        };
        let _guard = self.shared.inflight.enter(
            "RemoveScsiDisk",
            format!("{}:{}", addr.controller, addr.lun),
        );
        let mounts = self.shared.mounts.clone();
        let removed = blocking("remove disk", move || mounts.remove_disk(&addr)).await?;
        Ok(Response::new(RemoveScsiDiskResponse { removed }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.shared.accepting("creating a container")?;
        let req = request.into_inner();
        let _guard = self
            .shared
            .inflight
            .enter("CreateContainer", req.id.clone());
        if uses_shares(&req) {
            let mounts = self.shared.mounts.clone();
            blocking("mount the share export", move || mounts.mount_export()).await?;
        }
        self.shared.containers.create(req).await.map(Response::new)
    }

    async fn signal_container(
        &self,
        request: Request<SignalContainerRequest>,
    ) -> Result<Response<SignalContainerResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .containers
            .signal(&req.id, req.signal, req.all)
            .map(|()| Response::new(SignalContainerResponse {}))
    }

    async fn delete_container(
        &self,
        request: Request<DeleteContainerRequest>,
    ) -> Result<Response<DeleteContainerResponse>, Status> {
        let id = request.into_inner().id;
        let _guard = self.shared.inflight.enter("DeleteContainer", id.clone());
        self.shared.containers.delete(&id).await?;
        Ok(Response::new(DeleteContainerResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatistics>, Status> {
        let id = request.into_inner().id;
        self.shared.containers.stats(&id).await.map(Response::new)
    }

    async fn quiesce(
        &self,
        _: Request<QuiesceRequest>,
    ) -> Result<Response<QuiesceResponse>, Status> {
        // Set first: an Exec that slips past the count is refused instead.
        let was = self.shared.quiesced.swap(true, Ordering::AcqRel);
        let running = self.shared.inflight.count("Exec");
        if running > 0 {
            self.shared.quiesced.store(was, Ordering::Release);
            return Err(Status::failed_precondition(format!(
                "{running} process(es) started by exec still run; a snapshot needs them finished"
            )));
        }
        tracing::info!("quiesced for a snapshot");
        Ok(Response::new(QuiesceResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn resume(
        &self,
        request: Request<ResumeRequest>,
    ) -> Result<Response<ResumeResponse>, Status> {
        let req = request.into_inner();
        let mut step_ns = 0i64;
        if self.shared.role == Role::Init {
            if req.unix_time_ns > 0 {
                step_ns = crate::init::step_clock(req.unix_time_ns)
                    .map_err(|e| Status::internal(format!("stepping the clock failed: {e}")))?;
            }
            if !req.hostname.is_empty() {
                crate::init::set_hostname(&req.hostname);
            }
        }
        self.shared.quiesced.store(false, Ordering::Release);
        tracing::info!(clock_step_ms = step_ns / 1_000_000, hostname = %req.hostname, "resumed");
        Ok(Response::new(ResumeResponse {
            clock_step_ns: step_ns,
        }))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(ListContainersResponse {
            containers: self.shared.containers.list(),
        }))
    }
}

/// Whether a container's layers lie in the share export (the host hands
/// image layers over as read-only shares).
fn uses_shares(req: &CreateContainerRequest) -> bool {
    use uvm_proto::gcs::container_rootfs::Source;
    let under = |p: &str| {
        p.strip_prefix(uvm_proto::mounts::SHARES_GUEST_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    match req.rootfs.as_ref().and_then(|r| r.source.as_ref()) {
        Some(Source::Overlay(o)) => o.lower_dirs.iter().any(|l| under(l)),
        Some(Source::Directory(d)) => under(d),
        None => false,
    }
}
