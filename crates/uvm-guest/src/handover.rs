//! The GCS byte stream of a live-migrating VM: writes can be held while the
//! source QEMU drains what it was sent, and the stream can be switched to
//! the destination QEMU's socket once the source has stopped, after the
//! last bytes of the source have been read. The HTTP/2 connection above it
//! (host client here, agent server in the migrated guest RAM) never notices.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

#[derive(Default)]
struct State {
    hold: bool,
    next: Option<UnixStream>,
    /// Raw fd of the current stream (for `SIOCOUTQ`), -1 before the first.
    fd: i32,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    switched: u64,
}

/// Control of a [`HandoverStream`], kept by the [`crate::Guest`].
#[derive(Clone, Default)]
pub struct Handover(Arc<Mutex<State>>);

impl Handover {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops passing writes to the current stream (they wait, in order).
    pub fn hold_writes(&self) {
        self.lock().hold = true;
    }

    /// Passes writes again, on the same stream (a cancelled migration).
    pub fn release_writes(&self) {
        let mut s = self.lock();
        s.hold = false;
        if let Some(w) = s.write_waker.take() {
            w.wake();
        }
    }

    /// Waits (at most `max`) until the peer has read everything written to
    /// the current stream; whether it did.
    pub async fn wait_written(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let fd = self.lock().fd;
            if fd < 0 || unread_bytes(fd).is_ok_and(|n| n == 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Switches to `next` and releases writes. What the old peer wrote
    /// before is still read first, so it must have stopped writing.
    pub fn switch_to(&self, next: UnixStream) {
        let mut s = self.lock();
        s.next = Some(next);
        for w in [s.read_waker.take(), s.write_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }

    /// How many switches have happened.
    pub fn switches(&self) -> u64 {
        self.lock().switched
    }
}

/// Bytes written to `fd` that its peer has not read yet.
fn unread_bytes(fd: i32) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// A unix stream that a [`Handover`] can hold and switch.
pub struct HandoverStream {
    cur: UnixStream,
    /// The stream switched away from, read until it has nothing left (its
    /// peer stopped writing before the switch was asked for).
    draining: Option<UnixStream>,
    ctl: Handover,
}

impl HandoverStream {
    /// Wraps `stream`; returns it and its control.
    pub fn new(stream: UnixStream) -> (Self, Handover) {
        let ctl = Handover::default();
        ctl.lock().fd = stream.as_raw_fd();
        (
            HandoverStream {
                cur: stream,
                draining: None,
                ctl: ctl.clone(),
            },
            ctl,
        )
    }

    /// Takes a pending successor: the current stream goes draining.
    fn take_switch(&mut self) {
        let mut s = self.ctl.lock();
        if let Some(next) = s.next.take() {
            s.fd = next.as_raw_fd();
            s.hold = false;
            s.switched += 1;
            for w in [s.read_waker.take(), s.write_waker.take()]
                .into_iter()
                .flatten()
            {
                w.wake();
            }
            drop(s);
            self.draining = Some(std::mem::replace(&mut self.cur, next));
        }
    }
}

impl AsyncRead for HandoverStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.take_switch();
        if let Some(old) = this.draining.as_mut() {
            let before = buf.filled().len();
            match Pin::new(old).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > before => return Poll::Ready(Ok(())),
                // Drained (EOF, nothing left, or broken): on to the new one.
                _ => this.draining = None,
            }
        }
        let r = Pin::new(&mut this.cur).poll_read(cx, buf);
        if r.is_pending() {
            this.ctl.lock().read_waker = Some(cx.waker().clone());
            // A switch asked for meanwhile must not wait for the old peer.
            if this.ctl.lock().next.is_some() {
                cx.waker().wake_by_ref();
            }
        }
        r
    }
}

impl HandoverStream {
    /// Pending while writes are held (and no successor waits).
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.take_switch();
        let mut s = self.ctl.lock();
        if s.hold {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(())
    }
}

impl AsyncWrite for HandoverStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_held(cx));
        Pin::new(&mut self.cur).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_held(cx));
        Pin::new(&mut self.cur).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.cur).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_drain_the_old_stream_then_continue_on_the_new_one() {
        let (ours, mut old_peer) = UnixStream::pair().unwrap();
        let (mut s, ctl) = HandoverStream::new(ours);
        old_peer
            .write_all(b"last words of the old peer")
            .await
            .unwrap();
        s.write_all(b"to old").await.unwrap();
        ctl.hold_writes();
        let mut got = vec![0u8; 6];
        old_peer.read_exact(&mut got).await.unwrap();
        assert!(ctl.wait_written(Duration::from_secs(1)).await);
        // Held: this write waits until the switch.
        let writer = tokio::spawn(async move {
            s.write_all(b"to new").await.unwrap();
            let mut all = vec![0u8; 26 + 9];
            s.read_exact(&mut all).await.unwrap();
            (s, all)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (theirs, mut new_peer) = UnixStream::pair().unwrap();
        new_peer.write_all(b"new peer!").await.unwrap();
        ctl.switch_to(theirs);
        let mut w = vec![0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), new_peer.read_exact(&mut w))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&w, b"to new");
        let (_s, all) = writer.await.unwrap();
        assert_eq!(all, b"last words of the old peernew peer!");
        assert_eq!(ctl.switches(), 1);
    }
}
