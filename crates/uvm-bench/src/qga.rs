//! The qemu-guest-agent peer: a QGA JSON protocol client over any byte stream.
//!
//! Framing: one JSON object per command; replies are `{"return": ..}` or
//! `{"error": {"class", "desc"}}` terminated by a newline. `guest-sync-delimited`
//! prefixes its reply with a 0xFF byte, which resynchronizes after garbage or
//! after commands the agent never saw (virtio-serial drops bytes written
//! before the guest opens the port).

use crate::BenchError;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::{timeout, Instant};

/// A QGA client on a stream.
pub struct QgaClient<S> {
    io: BufReader<S>,
}

/// Result of `guest-exec-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    /// Whether the process has exited.
    pub exited: bool,
    /// Exit code, once exited normally.
    pub exitcode: Option<i64>,
    /// Captured stdout (decoded from base64), when asked for.
    pub out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> QgaClient<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Self {
        QgaClient {
            io: BufReader::new(stream),
        }
    }

    /// Sends `guest-sync-delimited` until the agent answers with `id`, each try
    /// waiting `every`, for at most `total`.
    pub async fn sync(
        &mut self,
        id: u64,
        every: Duration,
        total: Duration,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + total;
        loop {
            let mut msg = vec![0xff];
            msg.extend(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                    .to_string()
                    .bytes(),
            );
            self.io
                .get_mut()
                .write_all(&msg)
                .await
                .map_err(|e| BenchError::io("qga write", e))?;
            match timeout(every, self.read_sync_reply(id)).await {
                Ok(Ok(())) => return self.drain(id + 1, total).await,
                Ok(Err(e)) => return Err(e),
                Err(_) if Instant::now() >= deadline => {
                    return Err(BenchError::Timeout {
                        what: "qemu-guest-agent guest-sync",
                        secs: total.as_secs(),
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// After a delimited sync, earlier retries and the 0xFF resets may still
    /// have replies (or "stray 0xff" errors) queued: a plain `guest-sync` with
    /// a fresh id, skipping everything until its reply, leaves the stream clean.
    async fn drain(&mut self, id: u64, total: Duration) -> Result<(), BenchError> {
        let mut line = json!({"execute": "guest-sync", "arguments": {"id": id}}).to_string();
        line.push('\n');
        self.io
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| BenchError::io("qga write", e))?;
        let wait = async {
            loop {
                let v = self.read_value().await?;
                if v.get("return").and_then(Value::as_u64) == Some(id) {
                    return Ok(());
                }
            }
        };
        timeout(total, wait)
            .await
            .map_err(|_| BenchError::Timeout {
                what: "qemu-guest-agent guest-sync drain",
                secs: total.as_secs(),
            })?
    }

    async fn read_sync_reply(&mut self, id: u64) -> Result<(), BenchError> {
        loop {
            let mut junk = Vec::new();
            self.io
                .read_until(0xff, &mut junk)
                .await
                .map_err(|e| BenchError::io("qga read", e))?;
            if junk.last() != Some(&0xff) {
                return Err(BenchError::Protocol("qga stream closed during sync".into()));
            }
            let v = self.read_value().await?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    /// Runs one command and returns its `return` value.
    pub async fn call(&mut self, execute: &str, arguments: Value) -> Result<Value, BenchError> {
        let mut line = json!({"execute": execute, "arguments": arguments}).to_string();
        line.push('\n');
        self.io
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| BenchError::io("qga write", e))?;
        let v = self.read_value().await?;
        if let Some(err) = v.get("error") {
            return Err(BenchError::Protocol(format!("qga {execute}: {err}")));
        }
        v.get("return")
            .cloned()
            .ok_or_else(|| BenchError::Protocol(format!("qga {execute}: no return in {v}")))
    }

    /// `guest-exec`: starts `path args..`, returns the guest pid.
    pub async fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        capture: bool,
    ) -> Result<i64, BenchError> {
        let r = self
            .call(
                "guest-exec",
                json!({"path": path, "arg": args, "capture-output": capture}),
            )
            .await?;
        r.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| BenchError::Protocol(format!("guest-exec: no pid in {r}")))
    }

    /// `guest-exec-status` once.
    pub async fn exec_status(&mut self, pid: i64) -> Result<ExecStatus, BenchError> {
        let r = self.call("guest-exec-status", json!({"pid": pid})).await?;
        let out = match r.get("out-data").and_then(Value::as_str) {
            Some(b64) => base64_decode(b64)
                .ok_or_else(|| BenchError::Protocol("bad base64 out-data".into()))?,
            None => Vec::new(),
        };
        Ok(ExecStatus {
            exited: r.get("exited").and_then(Value::as_bool).unwrap_or(false),
            exitcode: r.get("exitcode").and_then(Value::as_i64),
            out,
        })
    }

    /// `guest-exec` then polls `guest-exec-status` every `poll` until exited (at most `total`).
    pub async fn run(
        &mut self,
        path: &str,
        args: &[&str],
        poll: Duration,
        total: Duration,
    ) -> Result<ExecStatus, BenchError> {
        let deadline = Instant::now() + total;
        let pid = self.exec(path, args, true).await?;
        loop {
            let st = self.exec_status(pid).await?;
            if st.exited {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout {
                    what: "qemu-guest-agent guest-exec",
                    secs: total.as_secs(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn read_value(&mut self) -> Result<Value, BenchError> {
        loop {
            let mut line = Vec::new();
            let n = self
                .io
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| BenchError::io("qga read", e))?;
            if n == 0 {
                return Err(BenchError::Protocol("qga stream closed".into()));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
            if text.is_empty() {
                continue;
            }
            return serde_json::from_str(text)
                .map_err(|e| BenchError::Protocol(format!("qga reply {text:?}: {e}")));
        }
    }
}

/// Standard base64 (with padding) decoder.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let pads = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= if c == b'=' { 0 } else { val(c)? } << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1).saturating_sub(pads);
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a$==").is_none());
    }

    /// A scripted agent: ignores the first sync, answers the second after junk,
    /// then serves guest-exec and two guest-exec-status polls.
    #[tokio::test]
    async fn framing_against_scripted_agent() {
        let (host, mut agent) = tokio::io::duplex(4096);
        let script = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = String::new();
            let mut syncs = 0;
            let mut polls = 0;
            loop {
                let n = agent.read(&mut buf).await.unwrap();
                if n == 0 {
                    return seen;
                }
                let chunk = String::from_utf8_lossy(&buf[..n]).replace('\u{fffd}', "");
                seen.push_str(&chunk);
                for cmd in chunk.split_inclusive('}').filter(|c| c.contains("execute")) {
                    let reply: &[u8] = if cmd.contains(r#""execute":"guest-sync""#) {
                        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"stray\"}}\n{\"return\": 8}\n"
                    } else if cmd.contains("guest-sync-delimited") {
                        syncs += 1;
                        if syncs == 1 {
                            continue;
                        } else {
                            b"garbage\n\xff{\"return\": 7}\n"
                        }
                    } else if cmd.contains("guest-exec-status") {
                        polls += 1;
                        if polls < 2 {
                            b"{\"return\": {\"exited\": false}}\n"
                        } else {
                            b"{\"return\": {\"exited\": true, \"exitcode\": 0, \"out-data\": \"aGk=\"}}\n"
                        }
                    } else if cmd.contains("guest-exec") {
                        b"{\"return\": {\"pid\": 42}}\n"
                    } else {
                        b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\n"
                    };
                    agent.write_all(reply).await.unwrap();
                }
            }
        });
        let mut c = QgaClient::new(host);
        c.sync(7, Duration::from_millis(50), Duration::from_secs(5))
            .await
            .unwrap();
        let st = c
            .run(
                "/bin/true",
                &[],
                Duration::from_millis(1),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            st,
            ExecStatus {
                exited: true,
                exitcode: Some(0),
                out: b"hi".to_vec()
            }
        );
        assert!(matches!(
            c.call("guest-bogus", json!({})).await,
            Err(BenchError::Protocol(_))
        ));
        drop(c);
        let seen = script.await.unwrap();
        assert!(
            seen.contains(r#""execute":"guest-exec""#) && seen.contains(r#""path":"/bin/true""#),
            "{seen}"
        );
        assert!(seen.contains(r#""capture-output":true"#), "{seen}");
        assert!(
            seen.contains(r#"{"arguments":{"pid":42},"execute":"guest-exec-status"}"#),
            "{seen}"
        );
    }
}
