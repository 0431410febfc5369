//! Raw QEMU baselines: boot to the first byte on a virtio-serial port, raw
//! virtio-serial throughput, and the qemu-guest-agent peer VM.

use crate::qemu::{QemuProcess, RawVm};
use crate::qga::QgaClient;
use crate::BenchError;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

/// Upper bound of every wait on a guest.
pub const WAIT: Duration = Duration::from_secs(120);

/// Default port name of the raw baseline `/init` (`uvm.raw_port=` overrides it).
pub const RAW_PORT: &str = "uvm.raw";

/// What to boot for a baseline: everything but the ports.
#[derive(Debug, Clone)]
pub struct BaselineVm {
    /// Template; `ports` and `console` are filled per run.
    pub vm: RawVm,
    /// Keep the guest console in the temp dir (debugging).
    pub keep_console: bool,
}

/// One raw run.
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    /// Spawn of QEMU to the first byte on the host socket.
    pub first_byte: Duration,
    /// Spawn of QEMU to QEMU connecting the port's chardev (its own start-up).
    pub connected: Duration,
    /// With a payload: first byte to the last payload byte, and the payload size.
    pub payload: Option<(usize, Duration)>,
}

impl RawSample {
    /// The payload's MiB/s, if one was requested.
    pub fn payload_mib_s(&self) -> Option<f64> {
        self.payload
            .map(|(n, d)| n as f64 / (1 << 20) as f64 / d.as_secs_f64())
    }
}

/// A baseline VM with its temp dir; QEMU is killed and the dir removed on drop.
pub struct Running {
    /// The QEMU process (dropped first: fields drop in order).
    pub qemu: QemuProcess,
    /// Runtime dir (sockets, stderr, console).
    pub dir: tempfile::TempDir,
}

/// Spawns `base` with one port per name, each on a fresh listener, and accepts
/// QEMU's connection on each (bounded; fails early if QEMU exits).
pub async fn spawn_with_ports(
    base: &BaselineVm,
    ports: &[&str],
) -> Result<(Running, Vec<UnixStream>, Instant), BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("uvm-bench-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let mut vm = base.vm.clone();
    let mut listeners = Vec::new();
    vm.ports.clear();
    for (i, name) in ports.iter().enumerate() {
        let path: PathBuf = dir.path().join(format!("p{i}.sock"));
        listeners
            .push(UnixListener::bind(&path).map_err(|e| BenchError::io("bind port socket", e))?);
        vm.ports.push((name.to_string(), path));
    }
    vm.console = base.keep_console.then(|| dir.path().join("console.log"));
    let t0 = Instant::now();
    let qemu = vm.spawn(&dir.path().join("qemu.stderr"))?;
    let mut run = Running { qemu, dir };
    let mut streams = Vec::new();
    for l in &listeners {
        let (s, _) = guard(&mut run, "QEMU connecting to a port socket", async {
            l.accept().await.map_err(|e| BenchError::io("accept", e))
        })
        .await?;
        streams.push(s);
    }
    Ok((run, streams, t0))
}

/// Awaits `fut` for at most [`WAIT`], failing early with QEMU's stderr if QEMU exits.
pub async fn guard<T>(
    run: &mut Running,
    what: &'static str,
    fut: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::pin!(fut);
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if let Some(st) = run.qemu.try_exit() {
                    return Err(BenchError::QemuExited { what, status: st.to_string(), stderr: run.qemu.stderr_tail() });
                }
                if Instant::now() >= deadline {
                    return Err(BenchError::Timeout { what, secs: WAIT.as_secs() });
                }
            }
        }
    }
}

/// How the raw guest produces its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSource {
    /// One static buffer written again and again: the channel's ceiling.
    Static,
    /// Each 64 KiB chunk read from /dev/zero first, as `dd if=/dev/zero
    /// bs=64k` (the producer the uvm side runs) does.
    Zero,
}

/// Boots the raw baseline image once; with `payload`, the guest then writes
/// that many bytes (`uvm.raw_bytes=N`) from a static buffer and the host
/// reads them all.
pub async fn raw_run(base: &BaselineVm, payload: Option<usize>) -> Result<RawSample, BenchError> {
    raw_run_into(base, payload, RawSource::Static, None).await
}

/// [`raw_run`] with the payload produced by `source`; with `sink`, the host
/// writes the payload to that file (created or truncated; one `write` per
/// read, as a plain relay would) instead of discarding it.
pub async fn raw_run_into(
    base: &BaselineVm,
    payload: Option<usize>,
    source: RawSource,
    sink: Option<&std::path::Path>,
) -> Result<RawSample, BenchError> {
    let mut file = match sink {
        Some(p) => {
            Some(std::fs::File::create(p).map_err(|e| BenchError::io("create payload file", e))?)
        }
        None => None,
    };
    let mut b = base.clone();
    if let Some(n) = payload {
        let src = match source {
            RawSource::Static => "static",
            RawSource::Zero => "zero",
        };
        b.vm.cmdline = format!("{} uvm.raw_bytes={n} uvm.raw_source={src}", b.vm.cmdline);
    }
    let (mut run, mut streams, t0) = spawn_with_ports(&b, &[RAW_PORT]).await?;
    let connected = t0.elapsed();
    let mut s = streams.remove(0);
    let mut byte = [0u8; 1];
    guard(&mut run, "first byte from the raw baseline guest", async {
        s.read_exact(&mut byte)
            .await
            .map_err(|e| BenchError::io("read first byte", e))
            .map(|_| ())
    })
    .await?;
    let first = t0.elapsed();
    let payload = match payload {
        None => None,
        Some(n) => {
            let t1 = Instant::now();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            guard(&mut run, "raw virtio-serial payload", async {
                while got < n {
                    let k = s
                        .read(&mut buf)
                        .await
                        .map_err(|e| BenchError::io("read payload", e))?;
                    if k == 0 {
                        return Err(BenchError::Protocol(format!(
                            "raw guest closed after {got} of {n} bytes"
                        )));
                    }
                    if let Some(f) = file.as_mut() {
                        use std::io::Write;
                        f.write_all(&buf[..k])
                            .map_err(|e| BenchError::io("write payload file", e))?;
                    }
                    got += k;
                }
                Ok(())
            })
            .await?;
            Some((n, t1.elapsed()))
        }
    };
    Ok(RawSample {
        first_byte: first,
        connected,
        payload,
    })
}

/// A running qemu-guest-agent peer VM.
pub struct QgaVm {
    /// The protocol client on the agent's port.
    pub client: QgaClient<UnixStream>,
    /// QEMU and its temp dir.
    pub run: Running,
    /// Spawn to the first successful guest-sync.
    pub ready: Duration,
}

/// Boots `base` (whose initrd must be the peer image) and syncs with the agent.
pub async fn start_qga(base: &BaselineVm) -> Result<QgaVm, BenchError> {
    let (mut run, mut streams, t0) = spawn_with_ports(base, &[crate::qga_image::QGA_PORT]).await?;
    let mut client = QgaClient::new(streams.remove(0));
    guard(
        &mut run,
        "qemu-guest-agent to answer guest-sync",
        client.sync(1, Duration::from_millis(200), WAIT),
    )
    .await?;
    Ok(QgaVm {
        client,
        run,
        ready: t0.elapsed(),
    })
}
