//! Serving the GCS over a virtio-serial port (forever) or a unix socket.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::fdio::FdIo;
use crate::resync::PrefaceSync;
use crate::service::Agent;

/// Set once a GCS request has been answered (its response future completed).
static RESPONDED: AtomicBool = AtomicBool::new(false);
/// Set (and [`FLUSHED_NOTIFY`] notified) at the first flush after that.
static FLUSHED: AtomicBool = AtomicBool::new(false);
static FLUSHED_NOTIFY: Notify = Notify::const_new();

/// Waits (at most `max`) until the first GCS response has been written to
/// the port, so boot-time work that can wait does not compete with the
/// first `Negotiate` on a one-vCPU guest.
pub async fn first_response_flushed(max: Duration) {
    let notified = FLUSHED_NOTIFY.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if FLUSHED.load(Ordering::Acquire) {
        return;
    }
    let _ = tokio::time::timeout(max, notified).await;
}

/// Marks [`RESPONDED`] when a response future completes.
#[derive(Clone)]
struct MarkResponses<S>(S);

impl<S: hyper::service::Service<R>, R> hyper::service::Service<R> for MarkResponses<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Inspect<S::Future, fn(&Result<S::Response, S::Error>)>;

    fn call(&self, req: R) -> Self::Future {
        fn mark<T, E>(_: &Result<T, E>) {
            RESPONDED.store(true, Ordering::Release);
        }
        futures::FutureExt::inspect(self.0.call(req), mark::<S::Response, S::Error>)
    }
}

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
        let r = Pin::new(&mut self.0).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(())))
            && RESPONDED.load(Ordering::Acquire)
            && !FLUSHED.swap(true, Ordering::AcqRel)
        {
            FLUSHED_NOTIFY.notify_waiters();
        }
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Write buffer of a GCS connection.
const WRITE_BUFFER: usize = 256 << 10;

/// Serves one HTTP/2 connection over `io` with hyper's server directly
/// (tonic's transport `Server` would add a router and a connection task
/// around the same hyper connection: ~5-9 ms of code run for the first time
/// under TCG before the first request, see PERF.md). Settings as tonic's
/// server sets them.
async fn serve_h2<IO>(agent: Agent, io: IO) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = MarkResponses(TowerToHyperService::new(agent.into_server()));
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .max_pending_accept_reset_streams(None)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// Serves one connection over `io` until the peer goes away or sends garbage.
pub async fn serve_connection<IO>(agent: Agent, io: IO) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // A virtio-serial port has no vectored writes, so without a buffer h2
    // writes every DATA frame as two syscalls (9-byte head, payload), each a
    // virtio buffer and a host notification. h2 flushes after every batch of
    // frames, so small responses are not held back.
    let io = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, WriteClock(io));
    serve_h2(agent, io).await
}

/// Wakes [`serve_port`] to drop its connection (see [`reset_connection`]).
static RESET: Notify = Notify::const_new();
/// How many times [`serve_port`] has opened the port, and its wake-up.
static OPENS: AtomicU64 = AtomicU64::new(0);
static OPENED: Notify = Notify::const_new();

/// Drops the GCS connection [`serve_port`] is serving and waits (at most
/// `max`) until the port is open again and waiting for a new preface. After
/// a restore the connection in the snapshot belongs to a host that is gone:
/// the new host must not talk into it. Returns whether the port reopened.
pub async fn reset_connection(max: Duration) -> bool {
    let before = OPENS.load(Ordering::Acquire);
    RESET.notify_one();
    let reopened = async {
        loop {
            let opened = OPENED.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if OPENS.load(Ordering::Acquire) > before {
                return;
            }
            opened.await;
        }
    };
    tokio::time::timeout(max, reopened).await.is_ok()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a connection on an open port ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// It was served and ended (the client went away): the port stays open
    /// for the next client.
    Served,
    /// The port read EOF before any preface: no host is connected.
    NoPeer,
}

/// One connection on an opened port: nothing is written until the host's
/// preface arrives (so a host that drains stale bytes before speaking loses
/// none of ours), then HTTP/2 until it ends.
async fn serve_opened<IO>(agent: Agent, io: IO) -> Result<Ended, BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut io = PrefaceSync::new(io);
    if !io.synced().await? {
        return Ok(Ended::NoPeer);
    }
    serve_connection(agent, io).await?;
    Ok(Ended::Served)
}

/// Serves the GCS on the virtio-serial port `name`. One connection after
/// another runs on the same open port (a duplicate of its descriptor each,
/// so nothing the host sent in between is dropped by a close); a new
/// connection starts at the next HTTP/2 preface, so leftovers of a broken
/// one are skipped. [`reset_connection`] drops the current connection. The
/// port is reopened (bounded exponential backoff) only when it reads EOF or
/// fails. Never returns.
pub async fn serve_port(agent: Agent, name: &str) -> ! {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match crate::ports::open_descriptor(name) {
            Ok(port) => {
                crate::boot_marks::mark(crate::boot_marks::Mark::Serving);
                tracing::debug!(port = name, "serving GCS");
                serve_open_port(&agent, name, &port).await;
            }
            Err(e) => tracing::warn!(port = name, error = %e, "cannot open GCS port"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = RESET.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Failed connections in a row after which the port is reopened.
const FAILURES_BEFORE_REOPEN: u32 = 8;

/// Serves connections on `port` until it reads EOF, cannot be duplicated,
/// or [`FAILURES_BEFORE_REOPEN`] connections in a row failed.
async fn serve_open_port(agent: &Agent, name: &str, port: &std::fs::File) {
    let mut failures = 0;
    loop {
        if failures >= FAILURES_BEFORE_REOPEN {
            tracing::warn!(
                port = name,
                failures,
                "GCS connections keep failing; reopening the port"
            );
            return;
        }
        let io = match port.try_clone().and_then(|f| FdIo::new(f.into())) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(port = name, error = %e, "cannot use the GCS port; reopening");
                return;
            }
        };
        // A task of its own: on a multi-thread runtime the connection then
        // runs on a worker, not on the thread that blocks on the agent's
        // main future (measured: stdout 122 -> 85 MiB/s when driven inline).
        let mut conn = tokio::spawn(serve_opened(agent.clone(), io));
        OPENS.fetch_add(1, Ordering::AcqRel);
        OPENED.notify_waiters();
        tokio::select! {
            r = &mut conn => match r {
                Ok(Ok(Ended::Served)) => {
                    failures = 0;
                    tracing::info!(port = name, "GCS connection ended; waiting for the next")
                }
                Ok(Ok(Ended::NoPeer)) => {
                    tracing::info!(port = name, "GCS port has no host; reopening");
                    return;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::warn!(port = name, error = %e, "GCS connection failed; waiting for the next")
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(port = name, error = %e, "GCS connection task failed; waiting for the next")
                }
            },
            _ = RESET.notified() => {
                conn.abort();
                let _ = conn.await;
                tracing::info!(port = name, "GCS connection dropped for a new host");
            }
        }
    }
}

/// Serves the GCS on a unix socket at `path` (development and tests); each
/// accepted connection is served independently. The socket is bound and
/// listening under a temporary name before it is renamed to `path`, so a
/// client that waits for `path` to exist is never refused.
pub async fn serve_unix(
    agent: Agent,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut binding = path.as_os_str().to_owned();
    binding.push(".binding");
    let binding = std::path::PathBuf::from(binding);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&binding);
    let listener = tokio::net::UnixListener::bind(&binding)?;
    std::fs::rename(&binding, path)?;
    tracing::info!(socket = %path.display(), "serving GCS on a unix socket");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // e.g. EMFILE: keep serving the connections we have.
                tracing::warn!(error = %e, "accepting a GCS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_h2(agent, stream).await {
                tracing::debug!(error = %e, "GCS connection on the unix socket failed");
            }
        });
    }
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
    /// Everything the guest wrote, and how much of it was written before
    /// [`FLUSHED`] was set.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        before_flushed: Option<usize>,
    }

    /// The guest's writing end of the connection, recording [`Wire`].
    struct Recorder(
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
        std::sync::Arc<std::sync::Mutex<Wire>>,
    );

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.0).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                let mut w = self.1.lock().unwrap();
                if FLUSHED.load(Ordering::Acquire) && w.before_flushed.is_none() {
                    w.before_flushed = Some(w.bytes.len());
                }
                w.bytes.extend_from_slice(&buf[..n]);
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

    /// Offset just past the frame that ends HTTP/2 stream `id` (END_STREAM).
    fn end_of_stream(wire: &[u8], id: u32) -> Option<usize> {
        let mut at = 0;
        while at + 9 <= wire.len() {
            let len = u32::from_be_bytes([0, wire[at], wire[at + 1], wire[at + 2]]) as usize;
            let (kind, flags) = (wire[at + 3], wire[at + 4]);
            let stream = u32::from_be_bytes(wire[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
            at += 9 + len;
            // DATA (0) or HEADERS (1) with END_STREAM (0x1).
            if stream == id && kind <= 1 && flags & 1 != 0 {
                return Some(at);
            }
        }
        None
    }

    /// The boot-time work gated on [`first_response_flushed`] starts only once
    /// the whole first answer (headers, message, trailers) is on the wire:
    /// were the trailers flushed later, that work would hold the host's
    /// `Negotiate`, and with it `Running`, back.
    #[tokio::test]
    async fn first_response_flushed_means_the_whole_answer() {
        let (host, guest) = tokio::io::duplex(1 << 20);
        let wire = std::sync::Arc::new(std::sync::Mutex::new(Wire::default()));
        let agent = Agent::new(Reaper::new(), Role::Process);
        let (reads, writes) = tokio::io::split(guest);
        let io = PrefaceSync::new(tokio::io::join(reads, Recorder(writes, wire.clone())));
        // As at boot: the host's preface, settings and `Negotiate` are all
        // waiting before the agent reads the port.
        let client = std::sync::Arc::new(uvm_guest::Guest::new("flush-test", None));
        client.attach(host).await.unwrap();
        let negotiate = tokio::spawn({
            let client = client.clone();
            async move { client.negotiate(&[]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::spawn(serve_connection(agent, io));
        negotiate.await.unwrap().unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            first_response_flushed(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert!(
            FLUSHED.load(Ordering::Acquire),
            "the answer was never marked flushed"
        );
        let w = wire.lock().unwrap();
        let answer_end = end_of_stream(&w.bytes, 1).expect("stream 1 ended on the wire");
        let marked_at = w.before_flushed.unwrap_or(w.bytes.len());
        assert!(
            answer_end <= marked_at,
            "first_response_flushed fired after {marked_at} bytes, before the answer's end at {answer_end}"
        );
    }
}
