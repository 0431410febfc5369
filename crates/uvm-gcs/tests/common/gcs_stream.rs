//! The host end of a real VM's `gcs` virtio-serial stream: gRPC clients over
//! it, and finding the agent's next HTTP/2 connection after a broken one.
//! Shared by `tests/real_vm_garbage.rs` and `examples/vm_smoke.rs`.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use uvm_proto::gcs::gcs_client::GcsClient;

pub type Client = GcsClient<Channel>;

/// Set it (see [`retire`]) when a client is dropped: from then on its
/// connection task sees EOF instead of stealing bytes from the shared socket.
pub type Retired = Arc<AtomicBool>;

/// The gcs stream without `shutdown(SHUT_WR)`: hyper half-closes its IO when a
/// client is dropped, and QEMU drops a chardev connection on EOF, so a
/// half-close would end the channel for good. `prefix` is served before the
/// socket (bytes already read off it that belong to this connection).
pub struct NoShutdown {
    prefix: Vec<u8>,
    inner: UnixStream,
    retired: Retired,
}

impl AsyncRead for NoShutdown {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.retired.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoShutdown {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A dup of `keep` (the host's own handle on the gcs stream, which keeps
/// QEMU's chardev connected whatever clients do) as a tokio stream.
pub fn dup(keep: &std::os::unix::net::UnixStream) -> UnixStream {
    UnixStream::from_std(keep.try_clone().expect("dup gcs stream")).expect("tokio gcs stream")
}

/// A gRPC client over `stream`, reading `prefix` first. Only one client may
/// read the socket at a time: [`retire`] the previous one first.
pub async fn client_over(stream: UnixStream, prefix: Vec<u8>) -> (Client, Retired) {
    let retired = Retired::default();
    let stream = NoShutdown {
        prefix,
        inner: stream,
        retired: retired.clone(),
    };
    let slot = Arc::new(Mutex::new(Some(stream)));
    let endpoint = Endpoint::try_from("http://uvm.invalid").unwrap();
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let s = slot.lock().unwrap().take();
        async move {
            s.map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the gcs stream is used"))
        }
    }));
    let channel = tokio::time::timeout(Duration::from_secs(60), connect)
        .await
        .expect("HTTP/2 client handshake timed out")
        .expect("HTTP/2 client handshake");
    (
        GcsClient::new(channel).max_decoding_message_size(16 << 20),
        retired,
    )
}

/// Drops `client` after making its connection task read EOF.
pub fn retire(client: Client, retired: &Retired) {
    retired.store(true, Ordering::SeqCst);
    drop(client);
}

/// What [`read_to_goaway`] found.
#[derive(Debug)]
pub struct Broken {
    /// The broken connection's frames before its GOAWAY: (type, flags, len).
    pub dead: Vec<(u8, u8, usize)>,
    /// The error code of its GOAWAY (0: NO_ERROR, 1: PROTOCOL_ERROR, 6:
    /// FRAME_SIZE_ERROR, ...).
    pub goaway: u32,
}

/// Reads whole HTTP/2 frames off `raw` (what a broken connection sent back)
/// up to and including its GOAWAY. The agent's next connection says nothing
/// until its client's preface, so nothing else follows. Err: the frames
/// seen (type, flags, len) and why.
pub async fn read_to_goaway(raw: &mut UnixStream, within: Duration) -> Result<Broken, String> {
    let mut dead = Vec::new();
    let r = tokio::time::timeout(within, async {
        loop {
            let mut head = [0u8; 9];
            raw.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            raw.read_exact(&mut payload).await?;
            if head[3] == 0x7 && len >= 8 {
                return Ok::<_, std::io::Error>(u32::from_be_bytes(
                    payload[4..8].try_into().unwrap(),
                ));
            }
            dead.push((head[3], head[4], len));
        }
    })
    .await;
    match r {
        Ok(Ok(goaway)) => Ok(Broken { dead, goaway }),
        Ok(Err(e)) => Err(format!("{e}; frames (type, flags, len) {dead:?}")),
        Err(_) => Err(format!(
            "no GOAWAY within {within:?}; frames (type, flags, len) {dead:?}"
        )),
    }
}
