//! The guest log and entropy channels.

use rand::RngCore;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest log line kept; longer lines are truncated.
pub const MAX_LOG_LINE: usize = 64 * 1024;

/// Reads the agent's JSON log lines from `stream` and re-emits each as a
/// `tracing` event with target `uvm::guest`: level from the line's `level`,
/// fields `vm_id`, `guest_msg` (the line's `msg`), `guest_time` and `fields`
/// (every other key, as `k=v` pairs). Lines that are not JSON are emitted at
/// info with the raw text. Returns the number of lines when the stream ends.
pub async fn relay_logs<R: AsyncRead + Unpin>(stream: R, vm_id: &str) -> usize {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut count = 0;
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return count,
            Ok(n) => n,
        };
        if n == MAX_LOG_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of an oversized line.
            let mut rest = Vec::new();
            if reader.read_until(b'\n', &mut rest).await.is_err() {
                return count;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        emit(line, vm_id);
        count += 1;
    }
}

fn emit(line: &str, vm_id: &str) {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        tracing::info!(target: "uvm::guest", vm_id, guest_msg = line);
        return;
    };
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let msg = text(obj.remove("msg"));
    let level = text(obj.remove("level")).to_ascii_lowercase();
    let time = text(obj.remove("time"));
    let fields = obj
        .into_iter()
        .map(|(k, v)| format!("{k}={}", text(Some(v))))
        .collect::<Vec<_>>()
        .join(" ");
    macro_rules! ev {
        ($lvl:expr) => {
            tracing::event!(target: "uvm::guest", $lvl, vm_id, guest_msg = %msg, guest_time = %time, fields = %fields)
        };
    }
    match level.as_str() {
        "error" | "fatal" | "panic" => ev!(tracing::Level::ERROR),
        "warn" | "warning" => ev!(tracing::Level::WARN),
        "debug" => ev!(tracing::Level::DEBUG),
        "trace" => ev!(tracing::Level::TRACE),
        _ => ev!(tracing::Level::INFO),
    }
}

/// Writes [`uvm_proto::ports::ENTROPY_BYTES`] random bytes to `stream` (the
/// guest credits them to its entropy pool).
///
/// The stream is NOT shut down: QEMU only reads a virtio-serial chardev
/// socket once the guest has opened the port, and it drops the connection
/// (with any unread bytes) as soon as it sees the host hang up. The caller
/// keeps the stream open until the VM is gone.
pub async fn send_entropy<W: AsyncWrite + Unpin>(stream: &mut W) -> std::io::Result<()> {
    let mut bytes = vec![0u8; uvm_proto::ports::ENTROPY_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Tells the agent of a VM restored from a snapshot that it was: writes
/// fresh entropy (which it credits, then reseeds its CRNG and drops the GCS
/// connection the snapshot captured) and waits, at most `timeout`, for its
/// one-byte answer. Like [`send_entropy`], the stream stays open.
pub async fn reseed_restored<S: AsyncWrite + AsyncRead + Unpin>(
    stream: &mut S,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    send_entropy(stream).await?;
    let mut ack = [0u8; 1];
    match tokio::time::timeout(timeout, stream.read_exact(&mut ack)).await {
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the restored agent did not answer the reseed within {timeout:?}"),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) if ack[0] == uvm_proto::ports::RESEEDED_ACK => Ok(()),
        Ok(Ok(_)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the restored agent answered the reseed with byte {:#04x}",
                ack[0]
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn entropy_is_sent_and_the_stream_stays_open() {
        use tokio::io::AsyncReadExt;
        let (mut host, mut guest) = tokio::net::UnixStream::pair().unwrap();
        send_entropy(&mut host).await.unwrap();
        let mut got = vec![0u8; uvm_proto::ports::ENTROPY_BYTES];
        guest.read_exact(&mut got).await.unwrap();
        assert!(got.iter().any(|b| *b != 0));
        // No EOF: a hang-up would make QEMU drop bytes the guest has not read yet.
        let mut more = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(200), guest.read(&mut more)).await;
        assert!(r.is_err(), "entropy stream was closed: {r:?}");
        drop(host);
    }

    #[tokio::test]
    async fn relay_counts_lines_until_eof() {
        let (mut w, r) = tokio::io::duplex(1024);
        let t = tokio::spawn(async move { relay_logs(r, "vm1").await });
        w.write_all(b"{\"level\":\"warn\",\"msg\":\"hi\",\"k\":1}\nnot json\n\n{\"msg\":\"x\"}\n")
            .await
            .unwrap();
        drop(w);
        assert_eq!(t.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn oversized_lines_are_truncated_not_fatal() {
        let (mut w, r) = tokio::io::duplex(4096);
        let t = tokio::spawn(async move { relay_logs(r, "vm1").await });
        let mut big = vec![b'a'; MAX_LOG_LINE * 2];
        big.push(b'\n');
        w.write_all(&big).await.unwrap();
        w.write_all(b"{\"msg\":\"after\"}\n").await.unwrap();
        drop(w);
        assert_eq!(t.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn entropy_is_512_bytes() {
        let (mut w, mut r) = tokio::io::duplex(4096);
        send_entropy(&mut w).await.unwrap();
        drop(w);
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        assert_eq!(v.len(), 512);
    }
}
