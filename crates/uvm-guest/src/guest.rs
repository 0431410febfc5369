//! [`Guest`]: the host end of one VM's GCS connection.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use uvm_proto::gcs::{self, gcs_client::GcsClient};

use crate::config::{
    initial_state, ConfidentialOptions, ConfigOption, SecurityPolicy, ShutdownMode,
};
use crate::stdout_port::PortPool;
use crate::vm_exit::VmExitWatch;
use crate::GuestError;

/// Default bound of a single control RPC (stats, policy, shutdown...).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow-control window of each stream (h2's default is 64 KiB): lets
/// the guest keep sending stdout while the host drains earlier frames
/// instead of stalling on a WINDOW_UPDATE round trip through virtio-serial.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of the whole GCS connection.
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// Any byte stream the GCS can run over (a unix socket, an in-memory pipe).
pub trait GcsIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> GcsIo for T {}

/// What the handshake established.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// Agreed protocol version.
    pub version: u32,
    /// Guest capabilities.
    pub capabilities: gcs::Capabilities,
    /// Agent version string.
    pub agent_version: String,
    /// Guest kernel release.
    pub kernel_release: String,
    /// Guest uptime when the agent answered (0 from agents that do not say).
    pub guest_uptime: Duration,
}

/// The host side of a VM's guest connection (hcsshim's `guestmanager.Guest`).
///
/// Built around the GCS listener of the VM; [`Guest::connect`] accepts the one
/// connection and runs gRPC over it, [`Guest::negotiate`] does the handshake.
/// Every RPC is bounded and fails promptly with [`GuestError::Closed`] once
/// [`Guest::close`] was called.
pub struct Guest {
    vm_id: String,
    listener: tokio::sync::Mutex<Option<UnixListener>>,
    client: Mutex<Option<GcsClient<Channel>>>,
    negotiated: Mutex<Option<Negotiated>>,
    closed: CancellationToken,
    rpc_timeout: Duration,
    stdout_ports: Arc<PortPool>,
    vm_exit_tx: tokio::sync::watch::Sender<Option<uvm_vmm::ExitReason>>,
    vm_exit: VmExitWatch,
    /// Hold/switch control of the GCS stream, once connected.
    handover: Mutex<Option<crate::Handover>>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("vm_id", &self.vm_id)
            .field("connected", &self.is_connected())
            .field("closed", &self.closed.is_cancelled())
            .finish()
    }
}

impl Guest {
    /// A guest for VM `vm_id` whose GCS connection will arrive on `listener`
    /// (None: attach a stream later with [`Guest::attach`]).
    pub fn new(vm_id: impl Into<String>, listener: Option<UnixListener>) -> Self {
        let (vm_exit_tx, vm_exit) = VmExitWatch::new(Duration::ZERO);
        Guest {
            vm_id: vm_id.into(),
            listener: tokio::sync::Mutex::new(listener),
            client: Mutex::new(None),
            negotiated: Mutex::new(None),
            closed: CancellationToken::new(),
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            stdout_ports: Arc::new(PortPool::default()),
            vm_exit_tx,
            vm_exit,
            handover: Mutex::new(None),
        }
    }

    /// How long a call whose connection broke waits for the VM's exit to be
    /// noted ([`Guest::note_vm_exit`]) before it reports
    /// [`GuestError::ConnectionLost`] instead of [`GuestError::VmExited`]
    /// (default zero: a guest nobody tells about exits does not wait). A
    /// dying VM resets the GCS socket a moment before its process is reaped.
    pub fn with_vm_exit_grace(mut self, grace: Duration) -> Self {
        self.vm_exit = self.vm_exit.with_grace(grace);
        self
    }

    /// Tells the guest that its VM exited, and why: every call in flight or
    /// later that fails because the connection is gone reports
    /// [`GuestError::VmExited`] with `reason`. Call it before [`Guest::close`].
    pub fn note_vm_exit(&self, reason: uvm_vmm::ExitReason) {
        self.vm_exit_tx.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(reason);
            }
            first
        });
    }

    /// The exit reason noted by [`Guest::note_vm_exit`], if any.
    pub fn vm_exit_reason(&self) -> Option<uvm_vmm::ExitReason> {
        self.vm_exit.reason()
    }

    pub(crate) fn vm_exit_watch(&self) -> &VmExitWatch {
        &self.vm_exit
    }

    /// Stdout ports (port name, listener the hypervisor connects to), accepted
    /// by [`Guest::connect`]. A process spawned while one is idle writes its
    /// stdout straight to it instead of through gRPC.
    pub fn with_stdout_ports(mut self, ports: Vec<(String, UnixListener)>) -> Self {
        self.stdout_ports = Arc::new(PortPool::new(ports));
        self
    }

    /// Stdout ports currently idle.
    pub fn idle_stdout_ports(&self) -> usize {
        self.stdout_ports.idle()
    }

    pub(crate) fn stdout_pool(&self) -> &Arc<PortPool> {
        &self.stdout_ports
    }

    /// Overrides the bound of control RPCs (default [`DEFAULT_RPC_TIMEOUT`]).
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// The bound on one unary RPC.
    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// Whether a gRPC client is set up (and not closed).
    pub fn is_connected(&self) -> bool {
        !self.closed.is_cancelled() && lock(&self.client).is_some()
    }

    /// The handshake result, once negotiated.
    pub fn negotiated(&self) -> Option<Negotiated> {
        lock(&self.negotiated).clone()
    }

    /// Guest capabilities, once negotiated.
    pub fn capabilities(&self) -> Option<gcs::Capabilities> {
        // Read in place: every spawn asks, and the rest of `Negotiated` is strings.
        lock(&self.negotiated).as_ref().map(|n| n.capabilities)
    }

    /// Accepts the GCS connection within `timeout` and sets up the gRPC client
    /// over it. Cancel-safe: dropping it before the accept leaves the listener
    /// in place for a later call.
    pub async fn connect(&self, timeout: Duration) -> Result<(), GuestError> {
        let stream = self.accept(timeout).await?;
        self.use_connection(stream).await
    }

    /// Runs gRPC over the accepted `stream` (through a [`crate::Handover`]
    /// so a migration can move it) and takes the stdout ports.
    async fn use_connection(&self, stream: tokio::net::UnixStream) -> Result<(), GuestError> {
        let (stream, handover) = crate::HandoverStream::new(stream);
        self.attach(stream).await?;
        *lock(&self.handover) = Some(handover);
        self.stdout_ports.accept_in_background(self.closed.clone());
        Ok(())
    }

    /// Hold/switch control of the GCS stream (live migration moves it to
    /// the destination VM's socket), once connected.
    pub fn handover(&self) -> Option<crate::Handover> {
        lock(&self.handover).clone()
    }

    /// [`Guest::connect`] for a VM restored from a snapshot: once the agent
    /// has dropped the connection its snapshot captured
    /// ([`crate::reseed_restored`]), whatever that connection left on the
    /// socket is read and discarded before the new connection speaks.
    pub async fn connect_restored(&self, timeout: Duration) -> Result<(), GuestError> {
        let stream = self.accept(timeout).await?;
        let mut stale = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => stale += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(GuestError::Accept(e)),
            }
        }
        if stale > 0 {
            tracing::debug!(vm_id = %self.vm_id, bytes = stale, "discarded what the snapshot's GCS connection left");
        }
        self.use_connection(stream).await
    }

    /// Accepts the GCS connection without using it: the stream a live
    /// migration hands to the source VM's guest ([`Guest::handover`]).
    pub async fn accept(&self, timeout: Duration) -> Result<tokio::net::UnixStream, GuestError> {
        let mut slot = self.listener.lock().await;
        let listener = slot.as_ref().ok_or(GuestError::ListenerUsed)?;
        let accepted = tokio::select! {
            r = tokio::time::timeout(timeout, listener.accept()) => r,
            _ = self.closed.cancelled() => return Err(GuestError::Closed),
        };
        let (stream, _) = accepted
            .map_err(|_| GuestError::Timeout {
                op: "GCS connect",
                timeout,
            })?
            .map_err(GuestError::Accept)?;
        *slot = None;
        Ok(stream)
    }

    /// Asks the agent to refuse new work until [`Guest::resume`] (before a
    /// snapshot); returns its version. Fails while exec'd processes run.
    pub async fn quiesce(&self) -> Result<String, GuestError> {
        self.call("quiesce", self.rpc_timeout, |mut c| async move {
            c.quiesce(gcs::QuiesceRequest {}).await
        })
        .await
        .map(|r| r.agent_version)
    }

    /// Ends a quiesce: steps the guest clock to the host's now, sets
    /// `hostname` when given. Returns the clock step (host minus guest).
    pub async fn resume(&self, hostname: Option<&str>) -> Result<std::time::Duration, GuestError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let req = gcs::ResumeRequest {
            unix_time_ns: now.as_nanos() as u64,
            hostname: hostname.unwrap_or_default().to_string(),
        };
        let r = self
            .call("resume", self.rpc_timeout, |mut c| async move {
                c.resume(req).await
            })
            .await?;
        Ok(std::time::Duration::from_nanos(
            r.clock_step_ns.unsigned_abs(),
        ))
    }

    /// Sets up the gRPC client over an already-connected stream. The channel
    /// uses exactly this stream: it never reconnects (a second connector call fails).
    pub async fn attach<S: GcsIo>(&self, stream: S) -> Result<(), GuestError> {
        if self.closed.is_cancelled() {
            return Err(GuestError::Closed);
        }
        let slot: Arc<Mutex<Option<Box<dyn GcsIo>>>> = Arc::new(Mutex::new(Some(Box::new(stream))));
        let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
            let io = lock(&slot).take();
            async move {
                io.map(TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "GCS stream already used; the guest connection cannot be re-established",
                    )
                })
            }
        });
        let channel = Endpoint::from_static("http://uvm.gcs")
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .connect_with_connector(connector)
            .await
            .map_err(GuestError::Transport)?;
        *lock(&self.client) = Some(GcsClient::new(channel));
        Ok(())
    }

    /// The `Negotiate` handshake with the initial state from `options`,
    /// bounded by the RPC timeout.
    pub async fn negotiate(&self, options: &[ConfigOption]) -> Result<Negotiated, GuestError> {
        self.negotiate_within(options, self.rpc_timeout).await
    }

    /// [`Guest::negotiate`] bounded by `timeout` instead of the RPC timeout.
    ///
    /// The first RPC on a fresh connection is the one that waits for the
    /// agent to come up (a QEMU chardev is connected long before the guest
    /// opens its port), so the caller bounds it by what is left of its boot
    /// budget rather than by the per-RPC timeout.
    pub async fn negotiate_within(
        &self,
        options: &[ConfigOption],
        timeout: Duration,
    ) -> Result<Negotiated, GuestError> {
        let min = uvm_proto::PROTOCOL_VERSION;
        let max = uvm_proto::PROTOCOL_VERSION;
        let req = gcs::NegotiateRequest {
            min_version: min,
            max_version: max,
            initial_state: Some(initial_state(options)),
        };
        let resp = self
            .call("negotiate", timeout, |mut c| async move {
                c.negotiate(req).await
            })
            .await?;
        if resp.version < min || resp.version > max {
            return Err(GuestError::Version {
                guest: resp.version,
                min,
                max,
            });
        }
        let n = Negotiated {
            version: resp.version,
            capabilities: resp.capabilities.unwrap_or_default(),
            agent_version: resp.agent_version,
            kernel_release: resp.kernel_release,
            guest_uptime: Duration::from_nanos(resp.uptime_ns),
        };
        *lock(&self.negotiated) = Some(n.clone());
        Ok(n)
    }

    /// Installs `policy` in the guest.
    pub async fn set_security_policy(&self, policy: &SecurityPolicy) -> Result<(), GuestError> {
        let req = policy.to_proto();
        self.call(
            "set security policy",
            self.rpc_timeout,
            |mut c| async move { c.set_security_policy(req).await },
        )
        .await
        .map(drop)
    }

    /// Applies confidential options (the security policy).
    pub async fn apply_confidential_options(
        &self,
        opts: &ConfidentialOptions,
    ) -> Result<(), GuestError> {
        self.set_security_policy(&opts.security_policy).await
    }

    /// WCOW finalize step: tells the guest the host's HvSocket address.
    pub async fn update_hv_socket_address(
        &self,
        local_address: &str,
        parent_address: &str,
    ) -> Result<(), GuestError> {
        let req = gcs::HvSocketAddress {
            local_address: local_address.into(),
            parent_address: parent_address.into(),
        };
        self.call(
            "update HvSocket address",
            self.rpc_timeout,
            |mut c| async move { c.update_hv_socket_address(req).await },
        )
        .await
        .map(drop)
    }

    /// Stacks of the agent and guest tasks, bounded by `timeout`. Returns ""
    /// when the guest lacks the `dump_stacks` capability.
    pub async fn dump_stacks(&self, timeout: Duration) -> Result<String, GuestError> {
        if !self.capabilities().is_some_and(|c| c.dump_stacks) {
            return Ok(String::new());
        }
        let resp = self
            .call("dump stacks", timeout, |mut c| async move {
                c.dump_stacks(gcs::DumpStacksRequest {}).await
            })
            .await?;
        Ok(resp.stacks)
    }

    /// Guest-side statistics, bounded by `timeout`.
    pub async fn stats(&self, timeout: Duration) -> Result<gcs::GuestStats, GuestError> {
        self.call("stats", timeout, |mut c| async move {
            c.stats(gcs::StatsRequest {}).await
        })
        .await
    }

    /// Mounts a disk or a share in the guest (see `MountRequest`), bounded
    /// by the request's disk wait plus `timeout`.
    pub async fn mount(
        &self,
        req: gcs::MountRequest,
        timeout: Duration,
    ) -> Result<gcs::MountResponse, GuestError> {
        let bound = timeout + Duration::from_millis(u64::from(req.wait_ms));
        self.call("mount", bound, |mut c| async move { c.mount(req).await })
            .await
    }

    /// Unmounts a target mounted with [`Guest::mount`].
    pub async fn unmount(&self, target: &str, timeout: Duration) -> Result<(), GuestError> {
        let req = gcs::UnmountRequest {
            target: target.to_string(),
        };
        self.call(
            "unmount",
            timeout,
            |mut c| async move { c.unmount(req).await },
        )
        .await
        .map(drop)
    }

    /// Detaches the SCSI disk at (`controller`, `lun`) in the guest before
    /// the host unplugs it; returns whether a disk was there.
    pub async fn remove_scsi_disk(
        &self,
        controller: u32,
        lun: u32,
        timeout: Duration,
    ) -> Result<bool, GuestError> {
        let req = gcs::RemoveScsiDiskRequest {
            address: Some(gcs::ScsiAddress { controller, lun }),
        };
        self.call("remove disk", timeout, |mut c| async move {
            c.remove_scsi_disk(req).await
        })
        .await
        .map(|r| r.removed)
    }

    /// Asks the guest to sync and power off / reboot. Returns once the agent
    /// acknowledged; the VM exits afterwards.
    pub async fn shutdown(&self, mode: ShutdownMode) -> Result<(), GuestError> {
        let mode = match mode {
            ShutdownMode::PowerOff => gcs::shutdown_request::Mode::PowerOff,
            ShutdownMode::Reboot => gcs::shutdown_request::Mode::Reboot,
        };
        let req = gcs::ShutdownRequest { mode: mode as i32 };
        self.call("shutdown", self.rpc_timeout, |mut c| async move {
            c.shutdown(req).await
        })
        .await
        .map(drop)
    }

    /// Drops the gRPC client and fails every in-flight and later call with
    /// [`GuestError::Closed`]. Idempotent.
    pub fn close(&self) {
        self.closed.cancel();
        lock(&self.client).take();
        self.stdout_ports.clear();
        if let Ok(mut l) = self.listener.try_lock() {
            l.take();
        }
    }

    /// Whether [`Guest::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// A token cancelled by [`Guest::close`].
    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// A clone of the client, or why there is none.
    pub(crate) fn client(&self) -> Result<GcsClient<Channel>, GuestError> {
        if self.closed.is_cancelled() {
            return Err(GuestError::Closed);
        }
        lock(&self.client).clone().ok_or(GuestError::NotConnected)
    }

    /// Runs one unary RPC bounded by `timeout`, failing fast on close.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, GuestError>
    where
        F: FnOnce(GcsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().map_err(|e| self.explain_closed(e))?;
        let status = tokio::select! {
            r = tokio::time::timeout(timeout, f(client)) => match r {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => return Err(GuestError::Timeout { op, timeout }),
            },
            _ = self.closed.cancelled() => return Err(self.vm_exit.on_close()),
        };
        Err(self.vm_exit.explain(op, status).await)
    }

    /// [`GuestError::Closed`] becomes the VM's exit when that is why the
    /// connection was closed.
    pub(crate) fn explain_closed(&self, e: GuestError) -> GuestError {
        match e {
            GuestError::Closed => self.vm_exit.on_close(),
            e => e,
        }
    }
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every
/// critical section is a single assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
