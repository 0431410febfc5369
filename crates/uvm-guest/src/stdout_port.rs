//! Host side of stdout ports: a process in the guest writes its stdout
//! straight to a virtio-serial port, and the host reads exactly the bytes
//! the agent counted (`Exited.stdout_port_bytes`) before handing the port to
//! the next process. Bulk output so skips gRPC framing and the agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::guest::lock;
use crate::GuestError;

/// Largest read from a port.
const READ_CHUNK: usize = 256 << 10;
/// Smallest spare room worth a read; below it the buffer is renewed (reused
/// in place when every chunk handed out earlier is gone).
const MIN_READ: usize = 64 << 10;
/// Once the agent reported the count, every byte is already queued in the
/// guest; this long without any of them arriving means the port is broken.
const STALL: Duration = Duration::from_secs(30);

/// One stdout port: the guest port's name and the host end of its socket.
#[derive(Debug)]
pub(crate) struct StdoutPort {
    pub(crate) name: String,
    stream: UnixStream,
}

/// The idle stdout ports of a guest, plus listeners not yet accepted.
#[derive(Debug, Default)]
pub(crate) struct PortPool {
    idle: Mutex<Vec<StdoutPort>>,
    pending: tokio::sync::Mutex<Vec<(String, UnixListener)>>,
}

/// What the agent said about a process's use of its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortEnd {
    /// Bytes the process (and its children) wrote to the port.
    pub(crate) bytes: u64,
    /// Something still held the port: never hand it out again.
    pub(crate) retired: bool,
}

impl PortPool {
    /// A pool whose ports arrive on `listeners` (port name, listener).
    pub(crate) fn new(listeners: Vec<(String, UnixListener)>) -> Self {
        PortPool {
            idle: Mutex::new(Vec::new()),
            pending: tokio::sync::Mutex::new(listeners),
        }
    }

    /// Accepts the pending port connections in the background (the
    /// hypervisor connected them at spawn, so this is immediate), adding each
    /// to the idle ports; gives up when `closed` is cancelled. Until a port
    /// is in, processes send their stdout through gRPC.
    pub(crate) fn accept_in_background(self: &Arc<Self>, closed: CancellationToken) {
        let pool = self.clone();
        tokio::spawn(async move {
            let pending = std::mem::take(&mut *pool.pending.lock().await);
            for (name, listener) in pending {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, _)) => pool.put(StdoutPort { name, stream }),
                        Err(e) => tracing::warn!(port = %name, error = %e, "accepting a stdout port"),
                    },
                    _ = closed.cancelled() => return,
                }
            }
        });
    }

    /// An idle port, if any.
    pub(crate) fn take(&self) -> Option<StdoutPort> {
        lock(&self.idle).pop()
    }

    /// Returns an idle port.
    pub(crate) fn put(&self, port: StdoutPort) {
        lock(&self.idle).push(port);
    }

    /// Idle ports.
    pub(crate) fn idle(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Drops every port (the guest is closing).
    pub(crate) fn clear(&self) {
        lock(&self.idle).clear();
        if let Ok(mut p) = self.pending.try_lock() {
            p.clear();
        }
    }
}

/// Moves one process's stdout from `port` to `out` until the count in `end`
/// has arrived, then returns the port to `pool` (or, retired, drains it
/// until the guest closes). A dropped `out` discards the data; a dropped
/// `end` (the exec stream broke) retires the port.
pub(crate) async fn relay(
    mut port: StdoutPort,
    out: mpsc::Sender<Bytes>,
    end: oneshot::Receiver<PortEnd>,
    pool: Arc<PortPool>,
    closed: CancellationToken,
) -> Result<(), GuestError> {
    let mut out = Some(out);
    let mut end = Some(end);
    let mut want: Option<PortEnd> = None;
    let mut got: u64 = 0;
    let mut buf = BytesMut::new();
    loop {
        if let Some(w) = want.filter(|w| got >= w.bytes) {
            if w.retired || got > w.bytes {
                if !w.retired {
                    tracing::warn!(port = %port.name, got, want = w.bytes, "more stdout than the agent counted; retiring the port");
                }
                drain(port, closed);
            } else {
                pool.put(port);
            }
            return Ok(());
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(READ_CHUNK);
        }
        let limit = readable(&buf, want, got);
        let stall = async {
            match want {
                Some(_) => tokio::time::sleep(STALL).await,
                None => std::future::pending().await,
            }
        };
        enum Step {
            Read(std::io::Result<usize>),
            End(Result<PortEnd, oneshot::error::RecvError>),
            Stalled,
            Closed,
        }
        let step = {
            let mut limited = (&mut port.stream).take(limit);
            tokio::select! {
                r = limited.read_buf(&mut buf) => Step::Read(r),
                e = async { end.as_mut().expect("polled only while pending").await }, if end.is_some() => Step::End(e),
                _ = stall => Step::Stalled,
                _ = closed.cancelled() => Step::Closed,
            }
        };
        match step {
            Step::Read(Ok(0) | Err(_)) => {
                return Err(GuestError::Protocol(
                    "stdout port closed before all output arrived",
                ))
            }
            Step::Read(Ok(n)) => {
                got += n as u64;
                // Take whatever else is queued already: fewer, larger
                // chunks cost the host less per byte.
                loop {
                    let limit = readable(&buf, want, got);
                    if limit == 0 {
                        break;
                    }
                    let mut room = bytes::BufMut::limit(&mut buf, limit as usize);
                    match port.stream.try_read_buf(&mut room) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k as u64,
                    }
                }
                let chunk = buf.split().freeze();
                if let Some(tx) = &out {
                    if tx.send(chunk).await.is_err() {
                        out = None;
                    }
                }
            }
            Step::End(Ok(e)) => {
                end = None;
                want = Some(e);
            }
            Step::End(Err(_)) => {
                drain(port, closed);
                return Ok(());
            }
            Step::Stalled => {
                return Err(GuestError::Protocol(
                    "stdout port stalled before all output arrived",
                ))
            }
            Step::Closed => return Err(GuestError::Closed),
        }
    }
}

/// Retires `port`: it is drained until the guest closes and never reused.
/// Outside a runtime it is just closed.
pub(crate) fn retire(port: StdoutPort, closed: CancellationToken) {
    tracing::debug!(port = %port.name, "retiring a stdout port");
    if tokio::runtime::Handle::try_current().is_ok() {
        drain(port, closed);
    }
}

/// How much the next read may take: the buffer's spare room, and once the
/// count is known never past it (what follows belongs to the port's next
/// process).
fn readable(buf: &BytesMut, want: Option<PortEnd>, got: u64) -> u64 {
    let room = (buf.capacity() - buf.len()) as u64;
    want.map_or(room, |w| w.bytes.saturating_sub(got).min(room))
}

/// Reads and discards a retired port until the guest closes, so a process
/// still writing to it is not blocked forever.
fn drain(mut port: StdoutPort, closed: CancellationToken) {
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 << 10];
        loop {
            tokio::select! {
                r = port.stream.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = closed.cancelled() => break,
            }
        }
    });
}

/// A port over a socket pair, and the guest's end of it.
#[cfg(test)]
pub(crate) fn test_port(name: &str) -> (StdoutPort, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        StdoutPort {
            name: name.into(),
            stream: a,
        },
        b,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn relay_stops_at_the_count_and_returns_the_port() {
        let (port, mut guest) = test_port("p0");
        let pool = Arc::new(PortPool::default());
        let (tx, mut rx) = mpsc::channel(4);
        let (end_tx, end_rx) = oneshot::channel();
        let task = tokio::spawn(relay(
            port,
            tx,
            end_rx,
            pool.clone(),
            CancellationToken::new(),
        ));
        // This process's 300 KiB, then the next process's bytes already queued.
        let data: Vec<u8> = (0..300 << 10).map(|i| (i % 251) as u8).collect();
        guest.write_all(&data).await.unwrap();
        guest.write_all(b"NEXT").await.unwrap();
        end_tx
            .send(PortEnd {
                bytes: data.len() as u64,
                retired: false,
            })
            .unwrap();
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
        task.await.unwrap().unwrap();
        assert!(
            got == data,
            "relayed {} bytes, not the 300 KiB written",
            got.len()
        );
        let mut port = pool.take().expect("port back in the pool");
        let mut next = [0u8; 4];
        port.stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT", "the next process's bytes were consumed");
    }

    #[tokio::test]
    async fn a_broken_exec_stream_retires_the_port() {
        let (port, _guest) = test_port("p0");
        let pool = Arc::new(PortPool::default());
        let (tx, _rx) = mpsc::channel(4);
        let (end_tx, end_rx) = oneshot::channel::<PortEnd>();
        drop(end_tx);
        relay(port, tx, end_rx, pool.clone(), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            pool.idle(),
            0,
            "a port of unknown state went back to the pool"
        );
    }

    #[tokio::test]
    async fn a_port_closing_early_is_an_error() {
        let (port, guest) = test_port("p0");
        let (tx, _rx) = mpsc::channel(4);
        let (end_tx, end_rx) = oneshot::channel();
        end_tx
            .send(PortEnd {
                bytes: 10,
                retired: false,
            })
            .unwrap();
        drop(guest);
        let r = relay(
            port,
            tx,
            end_rx,
            Arc::new(PortPool::default()),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(GuestError::Protocol(_))), "{r:?}");
    }
}
