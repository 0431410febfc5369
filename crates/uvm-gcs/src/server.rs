//! Serving the GCS over a virtio-serial port (forever) or a unix socket.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::fdio::DropNotify;
use crate::resync::PrefaceSync;
use crate::service::Agent;

/// Monotonic time (ns since the first use) of the last write on a GCS connection.
static LAST_WRITE_NS: AtomicU64 = AtomicU64::new(0);
static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    CLOCK_BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Waits until no GCS connection has written for `quiet` (at most `max`), so
/// a response already queued (e.g. to `Shutdown`) reaches the host first.
pub async fn wait_for_quiet_writes(quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        let idle =
            Duration::from_nanos(now_ns().saturating_sub(LAST_WRITE_NS.load(Ordering::Relaxed)));
        if idle >= quiet || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(quiet.saturating_sub(idle).max(Duration::from_millis(5))).await;
    }
}

/// Records the time of every successful write.
struct WriteClock<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for WriteClock<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteClock<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            LAST_WRITE_NS.store(now_ns(), Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Write buffer of a GCS connection.
const WRITE_BUFFER: usize = 256 << 10;

/// Serves one connection over `io` until the peer goes away or sends garbage.
pub async fn serve_connection<IO>(agent: Agent, io: IO) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // A virtio-serial port has no vectored writes, so without a buffer h2
    // writes every DATA frame as two syscalls (9-byte head, payload), each a
    // virtio buffer and a host notification. h2 flushes after every batch of
    // frames, so small responses are not held back.
    let io = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, WriteClock(io));
    let (io, gone) = DropNotify::new(io);
    // tonic serves each connection in a detached task; the drop notification
    // tells us when that connection is over.
    let incoming =
        futures::stream::once(async { Ok::<_, io::Error>(io) }).chain(futures::stream::pending());
    Server::builder()
        .add_service(agent.into_server())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = gone.await;
        })
        .await
}

/// Serves the GCS on the virtio-serial port `name`, reopening it whenever the
/// connection ends (bounded exponential backoff). Each connection starts at
/// the next HTTP/2 preface, so leftovers of a broken connection are skipped.
/// Never returns.
pub async fn serve_port(agent: Agent, name: &str) -> ! {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match crate::ports::open(name) {
            Ok(io) => {
                tracing::info!(port = name, "serving GCS");
                match serve_connection(agent.clone(), PrefaceSync::new(io)).await {
                    Ok(()) => tracing::warn!(port = name, "GCS connection ended; reopening"),
                    Err(e) => {
                        tracing::warn!(port = name, error = %e, "GCS connection failed; reopening")
                    }
                }
            }
            Err(e) => tracing::warn!(port = name, error = %e, "cannot open GCS port"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Serves the GCS on a unix socket at `path` (development and tests); each
/// accepted connection is served independently.
pub async fn serve_unix(
    agent: Agent,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    tracing::info!(socket = %path.display(), "serving GCS on a unix socket");
    Server::builder()
        .add_service(agent.into_server())
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::Reaper;
    use crate::resync::H2_PREFACE;
    use crate::service::Role;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn garbage_ends_only_the_connection() {
        let (mut host, guest) = tokio::io::duplex(1 << 16);
        let agent = Agent::new(Reaper::new(), Role::Process);
        let served = tokio::spawn(serve_connection(agent, PrefaceSync::new(guest)));
        host.write_all(b"stale bytes").await.unwrap();
        host.write_all(H2_PREFACE).await.unwrap();
        host.write_all(&[0xff; 64]).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(matches!(ended, Ok(Ok(_))), "{ended:?}");
    }
}
