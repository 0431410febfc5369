//! The QMP client proper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, oneshot, watch};

use super::event::{QmpEvent, SeenEvents};

/// Errors of a QMP exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// Reading or writing the socket failed.
    #[error("QMP transport")]
    Io(#[from] std::io::Error),
    /// The connection closed (QEMU exited) before the reply came.
    #[error("QMP connection closed")]
    Closed,
    /// No reply within the command's timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The peer spoke something that is not QMP.
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("{class}: {desc}")]
    Command {
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

type Reply = Result<Value, QmpError>;

struct Inner {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    /// `None` once the reader has seen the end of the stream.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    seen: Mutex<SeenEvents>,
    closed: watch::Sender<bool>,
}

/// A connected QMP session (greeting read, capabilities negotiated).
/// Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
    greeting: Value,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

/// Removes a pending entry if its caller goes away before the reply.
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.inner.pending.lock().unwrap().as_mut() {
            map.remove(&self.id);
        }
    }
}

impl QmpClient {
    /// Reads the greeting, starts the reader task and negotiates capabilities
    /// (`qmp_capabilities`). Each step is bounded by `timeout`.
    pub async fn handshake<S>(stream: S, timeout: Duration) -> Result<QmpClient, QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let mut reader = BufReader::new(r);
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout(timeout))??;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        let greeting: Value = serde_json::from_str(line.trim())
            .map_err(|e| QmpError::Protocol(format!("greeting: {e}")))?;
        let greeting = greeting.get("QMP").cloned().ok_or_else(|| {
            QmpError::Protocol(format!("greeting without \"QMP\": {}", line.trim()))
        })?;
        let (events, _) = broadcast::channel(64);
        let (closed, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(Box::new(w)),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            events,
            seen: Mutex::new(SeenEvents::default()),
            closed,
        });
        tokio::spawn(read_loop(reader, Arc::clone(&inner)));
        let client = QmpClient { inner, greeting };
        client.execute("qmp_capabilities", None, timeout).await?;
        Ok(client)
    }

    /// The `QMP` object of the greeting (version, capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Runs `command` with optional `arguments`; returns its `return` value.
    /// Cancel-safe: dropping the future forgets the pending reply.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending.lock().unwrap();
            let map = p.as_mut().ok_or(QmpError::Closed)?;
            map.insert(id, tx);
        }
        let _guard = PendingGuard {
            inner: &self.inner,
            id,
        };
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON values serialize");
        bytes.push(b'\n');
        let exchange = async {
            {
                let mut w = self.inner.writer.lock().await;
                w.write_all(&bytes).await?;
                w.flush().await?;
            }
            rx.await.map_err(|_| QmpError::Closed)?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout(timeout))?
    }

    /// Subscribes to events arriving from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// The exit-relevant events seen so far (recorded even with no subscriber).
    pub fn seen(&self) -> SeenEvents {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Waits until the connection closes (QEMU exited or closed the socket).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

async fn read_loop<R: AsyncRead + Send + Unpin>(mut reader: BufReader<R>, inner: Arc<Inner>) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        }
        let msg: Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, line = line.trim(), "QMP: unparsable message");
                continue;
            }
        };
        if let Some(ev) = QmpEvent::from_message(&msg) {
            tracing::debug!(event = ?ev, "QMP event");
            inner.seen.lock().unwrap().record(&ev);
            let _ = inner.events.send(ev);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::debug!(%msg, "QMP message without id");
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            let s = |k: &str| {
                err.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Err(QmpError::Command {
                class: s("class"),
                desc: s("desc"),
            })
        } else {
            Err(QmpError::Protocol(format!(
                "reply without return or error: {msg}"
            )))
        };
        let tx = inner
            .pending
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|m| m.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
    // Dropping the senders wakes every waiter with `Closed`.
    inner.pending.lock().unwrap().take();
    inner.closed.send_replace(true);
}
