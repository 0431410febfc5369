//! Test harness: the real `uvm-gcs` binary serving a unix socket, and a client.
#![allow(dead_code)]

pub mod gcs_stream;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use uvm_proto::gcs::gcs_client::GcsClient;
use uvm_proto::gcs::{exec_input, exec_output, exited, ExecInput, ProcessSpec};

/// A `uvm-gcs --serve-unix` process; killed on drop.
pub struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    pub sock: PathBuf,
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gcs.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_uvm-gcs"))
            .arg("--serve-unix")
            .arg(&sock)
            .env("UVM_GCS_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent does not accept on its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            _dir: dir,
            sock,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn client(&self) -> GcsClient<Channel> {
        let sock = self.sock.clone();
        let channel = Endpoint::try_from("http://agent.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        GcsClient::new(channel).max_decoding_message_size(16 << 20)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one exec produced.
#[derive(Debug, Default)]
pub struct Output {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<exited::Status>,
}

pub fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn start(spec: ProcessSpec) -> ExecInput {
    ExecInput {
        msg: Some(exec_input::Msg::Start(spec)),
    }
}

/// Starts an exec; returns the input sender and the output stream.
pub async fn open(
    client: &mut GcsClient<Channel>,
    spec: ProcessSpec,
) -> Result<
    (
        mpsc::Sender<ExecInput>,
        tonic::Streaming<uvm_proto::gcs::ExecOutput>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(start(spec)).await.unwrap();
    let out = client.exec(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, out))
}

/// Runs `spec` to completion, feeding `stdin` (then closing it).
pub async fn run(
    client: &mut GcsClient<Channel>,
    spec: ProcessSpec,
    stdin: Vec<u8>,
) -> Result<Output, tonic::Status> {
    let (tx, mut out) = open(client, spec).await?;
    let feeder = tokio::spawn(async move {
        for chunk in stdin.chunks(32 << 10) {
            if tx
                .send(ExecInput {
                    msg: Some(exec_input::Msg::Stdin(chunk.to_vec())),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx
            .send(ExecInput {
                msg: Some(exec_input::Msg::CloseStdin(Default::default())),
            })
            .await;
        // Keep the request stream open until the output ends.
        tx.closed().await;
    });
    let mut o = Output::default();
    let mut first = true;
    while let Some(msg) = out.message().await? {
        assert!(o.status.is_none(), "nothing may follow exited");
        match msg.msg.unwrap() {
            exec_output::Msg::Started(s) => {
                assert!(first, "started must come first");
                o.pid = s.pid;
            }
            exec_output::Msg::Stdout(d) => o.stdout.extend(d),
            exec_output::Msg::Stderr(d) => o.stderr.extend(d),
            exec_output::Msg::Exited(e) => {
                assert!(o.status.is_none(), "exited must come once");
                o.status = e.status;
            }
        }
        assert!(!first || o.pid != 0, "first message must be started");
        first = false;
    }
    feeder.abort();
    Ok(o)
}

pub fn code(o: &Output) -> Option<i32> {
    match o.status {
        Some(exited::Status::ExitCode(c)) => Some(c),
        _ => None,
    }
}

pub fn signal(o: &Output) -> Option<i32> {
    match o.status {
        Some(exited::Status::Signal(s)) => Some(s),
        _ => None,
    }
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: u32) -> Vec<u32> {
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|x| x.parse::<u32>().ok()));
        if state == Some("Z") && ppid == Some(pid) {
            z.push(p);
        }
    }
    z
}
