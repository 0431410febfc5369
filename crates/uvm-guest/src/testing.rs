//! A fake GCS server for tests (feature `testing`): a tonic implementation of
//! `uvm_proto::gcs::gcs_server::Gcs` with knobs, served over one stream.
//!
//! Exec understands a few commands: `echo ARGS..`, `cat` (stdin → stdout),
//! `stderr TEXT`, `exit N`, `sleep` (runs until signalled), `noexec`
//! (PERMISSION_DENIED); anything else is NOT_FOUND. An allow-list policy
//! denies commands not in it (FAILED_PRECONDITION).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uvm_proto::gcs::{self, exec_input, exec_output, exited, gcs_server};

use crate::guest::lock;

/// Knobs of the fake.
#[derive(Debug, Clone, Default)]
pub struct FakeGcsConfig {
    /// Negotiate answers UNAVAILABLE.
    pub negotiate_fails: bool,
    /// Negotiate waits this long first.
    pub negotiate_delay: Duration,
    /// Advertise the dump-stacks capability.
    pub dump_stacks: bool,
    /// Stats and DumpStacks never answer (a hung agent).
    pub stall: bool,
    /// Guest MemAvailable reported by Stats, bytes.
    pub mem_available_bytes: u64,
    /// `Mount` of a disk fails with `MountFailure{kind: MOUNT_FAILED, errno: EINVAL}`.
    pub disk_mount_fails: bool,
}

/// What the fake saw.
#[derive(Debug, Clone, Default)]
pub struct FakeGcsRecord {
    /// Initial states received with Negotiate.
    pub negotiations: Vec<gcs::InitialState>,
    /// Policies set.
    pub policies: Vec<gcs::SecurityPolicy>,
    /// UpdateHvSocketAddress calls.
    pub hv_socket_updates: usize,
    /// Shutdown calls.
    pub shutdowns: usize,
    /// Exec calls that started a process.
    pub execs: usize,
    /// Mount requests, in order.
    pub mounts: Vec<gcs::MountRequest>,
    /// Unmounted targets, in order.
    pub unmounts: Vec<String>,
    /// Disks detached with `RemoveScsiDisk`, as (controller, lun).
    pub removed_disks: Vec<(u32, u32)>,
}

/// The fake GCS. Cheap to clone; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeGcs {
    /// Knobs.
    pub config: FakeGcsConfig,
    /// Calls seen.
    pub record: Arc<Mutex<FakeGcsRecord>>,
    /// Cancelled when Shutdown is called (the fake VM then powers off).
    pub poweroff: CancellationToken,
}

impl FakeGcs {
    /// A fake with these knobs.
    pub fn new(config: FakeGcsConfig) -> Self {
        FakeGcs {
            config,
            ..Default::default()
        }
    }

    /// A copy of what was seen so far.
    pub fn record(&self) -> FakeGcsRecord {
        lock(&self.record).clone()
    }

    /// Serves gRPC over `stream` until `stop` is cancelled or the peer goes away.
    pub async fn serve(self, stream: UnixStream, stop: CancellationToken) {
        let incoming = futures::StreamExt::chain(
            futures::stream::once(async move { Ok::<_, std::io::Error>(stream) }),
            futures::stream::pending(),
        );
        let _ = tonic::transport::Server::builder()
            .add_service(gcs_server::GcsServer::new(self))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
    }

    fn allowed(&self, cmd: &str) -> bool {
        use gcs::security_policy::Policy;
        match lock(&self.record)
            .policies
            .last()
            .and_then(|p| p.policy.clone())
        {
            Some(Policy::ExecAllowList(l)) => l.commands.iter().any(|c| c == cmd),
            _ => true,
        }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<gcs::ExecOutput, Status>> + Send>>;

#[allow(clippy::result_large_err)] // tonic's own Status type
fn out(msg: exec_output::Msg) -> Result<gcs::ExecOutput, Status> {
    Ok(gcs::ExecOutput { msg: Some(msg) })
}

fn exit_code(c: i32) -> exec_output::Msg {
    exec_output::Msg::Exited(gcs::Exited {
        status: Some(exited::Status::ExitCode(c)),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl gcs_server::Gcs for FakeGcs {
    async fn negotiate(
        &self,
        req: Request<gcs::NegotiateRequest>,
    ) -> Result<Response<gcs::NegotiateResponse>, Status> {
        tokio::time::sleep(self.config.negotiate_delay).await;
        if self.config.negotiate_fails {
            return Err(Status::unavailable("injected negotiate failure"));
        }
        let req = req.into_inner();
        lock(&self.record)
            .negotiations
            .push(req.initial_state.unwrap_or_default());
        Ok(Response::new(gcs::NegotiateResponse {
            version: uvm_proto::PROTOCOL_VERSION,
            capabilities: Some(gcs::Capabilities {
                dump_stacks: self.config.dump_stacks,
                terminal: true,
                signals: true,
                stats: true,
                security_policy: true,
                shutdown: true,
                // The fake has no virtio ports: stdout always travels in gRPC.
                stdout_ports: false,
                mounts: true,
                // The fake runs no containers: an agent without the capability.
                containers: false,
                snapshots: false,
            }),
            agent_version: "fake".into(),
            kernel_release: "fake".into(),
            uptime_ns: 1,
        }))
    }

    type ExecStream = OutStream;

    async fn exec(
        &self,
        req: Request<Streaming<gcs::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let spec = match input.message().await? {
            Some(gcs::ExecInput {
                msg: Some(exec_input::Msg::Start(s)),
            }) => s,
            _ => return Err(Status::invalid_argument("first message must be start")),
        };
        let cmd = spec.args.first().cloned().unwrap_or_default();
        if cmd.is_empty() {
            return Err(Status::invalid_argument("empty args"));
        }
        if !self.allowed(&cmd) {
            return Err(Status::failed_precondition(format!(
                "{cmd}: denied by policy"
            )));
        }
        match cmd.as_str() {
            "echo" | "cat" | "stderr" | "exit" | "sleep" => {}
            "noexec" => return Err(Status::permission_denied("noexec: permission denied")),
            _ => return Err(Status::not_found(format!("{cmd}: not found"))),
        }
        lock(&self.record).execs += 1;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _ = tx
                .send(out(exec_output::Msg::Started(gcs::Started {
                    pid: 42,
                    stdout_port: false,
                })))
                .await;
            let rest = spec.args[1..].join(" ");
            let end = match cmd.as_str() {
                "echo" => {
                    let _ = tx
                        .send(out(exec_output::Msg::Stdout(format!("{rest}\n").into())))
                        .await;
                    exit_code(0)
                }
                "stderr" => {
                    let _ = tx
                        .send(out(exec_output::Msg::Stderr(rest.into_bytes())))
                        .await;
                    exit_code(0)
                }
                "exit" => exit_code(rest.trim().parse().unwrap_or(1)),
                "cat" => loop {
                    match input.message().await {
                        Ok(Some(gcs::ExecInput {
                            msg: Some(exec_input::Msg::Stdin(b)),
                        })) => {
                            let _ = tx.send(out(exec_output::Msg::Stdout(b))).await;
                        }
                        Ok(Some(gcs::ExecInput {
                            msg: Some(exec_input::Msg::CloseStdin(_)),
                        }))
                        | Ok(None)
                        | Err(_) => break exit_code(0),
                        Ok(Some(_)) => {}
                    }
                },
                _ => loop {
                    match input.message().await {
                        Ok(Some(gcs::ExecInput {
                            msg: Some(exec_input::Msg::Signal(s)),
                        })) => {
                            break exec_output::Msg::Exited(gcs::Exited {
                                status: Some(exited::Status::Signal(s.signal)),
                                ..Default::default()
                            })
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    }
                },
            };
            let _ = tx.send(out(end)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn dump_stacks(
        &self,
        _req: Request<gcs::DumpStacksRequest>,
    ) -> Result<Response<gcs::DumpStacksResponse>, Status> {
        if self.config.stall {
            futures::future::pending::<()>().await;
        }
        Ok(Response::new(gcs::DumpStacksResponse {
            stacks: "goroutine 1 [fake]:\n".into(),
        }))
    }

    async fn stats(
        &self,
        _req: Request<gcs::StatsRequest>,
    ) -> Result<Response<gcs::GuestStats>, Status> {
        if self.config.stall {
            futures::future::pending::<()>().await;
        }
        Ok(Response::new(gcs::GuestStats {
            mem_total_bytes: 512 << 20,
            mem_available_bytes: self.config.mem_available_bytes,
            process_count: 1,
            online_cpus: 1,
            ..Default::default()
        }))
    }

    async fn set_security_policy(
        &self,
        req: Request<gcs::SecurityPolicy>,
    ) -> Result<Response<gcs::SetSecurityPolicyResponse>, Status> {
        lock(&self.record).policies.push(req.into_inner());
        Ok(Response::new(gcs::SetSecurityPolicyResponse {}))
    }

    async fn update_hv_socket_address(
        &self,
        _req: Request<gcs::HvSocketAddress>,
    ) -> Result<Response<gcs::UpdateHvSocketAddressResponse>, Status> {
        lock(&self.record).hv_socket_updates += 1;
        Ok(Response::new(gcs::UpdateHvSocketAddressResponse {}))
    }

    async fn shutdown(
        &self,
        _req: Request<gcs::ShutdownRequest>,
    ) -> Result<Response<gcs::ShutdownResponse>, Status> {
        lock(&self.record).shutdowns += 1;
        let p = self.poweroff.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            p.cancel();
        });
        Ok(Response::new(gcs::ShutdownResponse {}))
    }

    async fn mount(
        &self,
        req: Request<gcs::MountRequest>,
    ) -> Result<Response<gcs::MountResponse>, Status> {
        let req = req.into_inner();
        let disk = matches!(req.source, Some(gcs::mount_request::Source::Scsi(_)));
        lock(&self.record).mounts.push(req);
        if disk && self.config.disk_mount_fails {
            use prost::Message;
            let f = gcs::MountFailure {
                kind: gcs::mount_failure::Kind::MountFailed as i32,
                errno: libc::EINVAL,
                device: "/dev/sda".into(),
            };
            return Err(Status::with_details(
                tonic::Code::Internal,
                "mounting /dev/sda failed: EINVAL: Invalid argument (injected)",
                f.encode_to_vec().into(),
            ));
        }
        Ok(Response::new(gcs::MountResponse {
            device: if disk {
                "/dev/sda".into()
            } else {
                String::new()
            },
        }))
    }

    async fn unmount(
        &self,
        req: Request<gcs::UnmountRequest>,
    ) -> Result<Response<gcs::UnmountResponse>, Status> {
        lock(&self.record).unmounts.push(req.into_inner().target);
        Ok(Response::new(gcs::UnmountResponse {}))
    }

    async fn remove_scsi_disk(
        &self,
        req: Request<gcs::RemoveScsiDiskRequest>,
    ) -> Result<Response<gcs::RemoveScsiDiskResponse>, Status> {
        let a = req.into_inner().address.unwrap_or_default();
        lock(&self.record).removed_disks.push((a.controller, a.lun));
        Ok(Response::new(gcs::RemoveScsiDiskResponse { removed: true }))
    }

    async fn create_container(
        &self,
        _: Request<gcs::CreateContainerRequest>,
    ) -> Result<Response<gcs::CreateContainerResponse>, Status> {
        Err(no_containers())
    }

    async fn signal_container(
        &self,
        _: Request<gcs::SignalContainerRequest>,
    ) -> Result<Response<gcs::SignalContainerResponse>, Status> {
        Err(no_containers())
    }

    async fn delete_container(
        &self,
        _: Request<gcs::DeleteContainerRequest>,
    ) -> Result<Response<gcs::DeleteContainerResponse>, Status> {
        Err(no_containers())
    }

    async fn container_stats(
        &self,
        _: Request<gcs::ContainerStatsRequest>,
    ) -> Result<Response<gcs::ContainerStatistics>, Status> {
        Err(no_containers())
    }

    async fn list_containers(
        &self,
        _: Request<gcs::ListContainersRequest>,
    ) -> Result<Response<gcs::ListContainersResponse>, Status> {
        Err(no_containers())
    }

    async fn quiesce(
        &self,
        _: Request<gcs::QuiesceRequest>,
    ) -> Result<Response<gcs::QuiesceResponse>, Status> {
        Err(Status::unimplemented("this agent takes no snapshots"))
    }

    async fn resume(
        &self,
        _: Request<gcs::ResumeRequest>,
    ) -> Result<Response<gcs::ResumeResponse>, Status> {
        Err(Status::unimplemented("this agent takes no snapshots"))
    }
}

/// What the fake, an agent without the `containers` capability, answers.
fn no_containers() -> Status {
    Status::unimplemented("this agent runs no containers")
}
