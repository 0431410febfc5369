//! Resynchronizing a byte stream on the HTTP/2 client preface.
//!
//! A virtio-serial port is one byte stream with no connection boundaries.
//! After a garbage frame kills an HTTP/2 connection, the rest of the garbage
//! (and anything else the dead connection left in flight) would poison the
//! next connection. Every HTTP/2 connection starts with the fixed client
//! preface, so before handing the stream to the server we skip everything up
//! to that preface.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Skips input up to the HTTP/2 preface, then passes everything through.
#[derive(Debug)]
pub struct PrefaceSync<T> {
    inner: T,
    buf: Vec<u8>,
    pos: usize,
    synced: bool,
    skipped: u64,
}

impl<T> PrefaceSync<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            synced: false,
            skipped: 0,
        }
    }

    /// Bytes discarded before the preface.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<T: AsyncRead + Unpin> PrefaceSync<T> {
    /// Reads (and skips) until the preface; `false` on EOF before it.
    fn poll_sync(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while !self.synced {
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(false)); // EOF before any preface
            }
            self.buf.extend_from_slice(rb.filled());
            if let Some(at) = find(&self.buf, H2_PREFACE) {
                self.buf.drain(..at);
                self.skipped += at as u64;
                self.synced = true;
                if self.skipped > 0 {
                    tracing::warn!(
                        bytes = self.skipped,
                        "skipped bytes before the HTTP/2 preface"
                    );
                }
            } else {
                let keep = self.buf.len().min(H2_PREFACE.len() - 1);
                let drop = self.buf.len() - keep;
                self.buf.drain(..drop);
                self.skipped += drop as u64;
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Waits until the preface has arrived (kept for the reader), so a
    /// server writes nothing to a peer that has not spoken yet. `false`
    /// when the stream ended first.
    pub async fn synced(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_sync(cx)).await
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefaceSync<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !ready!(this.poll_sync(cx))? {
            return Poll::Ready(Ok(()));
        }
        if this.pos < this.buf.len() {
            let n = out.remaining().min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefaceSync<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn skips_garbage_split_across_reads() {
        let (mut host, guest) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut data = vec![0xffu8; 10_000];
            data.extend_from_slice(H2_PREFACE);
            data.extend_from_slice(b"frames");
            for chunk in data.chunks(7) {
                host.write_all(chunk).await.unwrap();
            }
        });
        let mut sync = PrefaceSync::new(guest);
        let mut got = Vec::new();
        sync.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, [H2_PREFACE, b"frames"].concat());
        assert_eq!(sync.skipped(), 10_000);
    }

    #[tokio::test]
    async fn clean_stream_passes_through() {
        let data = [H2_PREFACE, b"rest"].concat();
        let mut sync = PrefaceSync::new(&data[..]);
        let mut got = Vec::new();
        sync.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(sync.skipped(), 0);
    }

    #[tokio::test]
    async fn synced_waits_for_the_preface_and_keeps_it() {
        let data = [b"stale".as_slice(), H2_PREFACE, b"rest"].concat();
        let mut sync = PrefaceSync::new(&data[..]);
        assert!(sync.synced().await.unwrap());
        let mut got = Vec::new();
        sync.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [H2_PREFACE, b"rest"].concat());
        let mut ended = PrefaceSync::new(&b"no preface"[..]);
        assert!(!ended.synced().await.unwrap());
    }
}
