//! JSON-lines logging to the `log` channel.
//!
//! Every event becomes one line `{"time":RFC3339,"level":"INFO","msg":"..",fields..}`.
//! Lines go into a bounded queue (lines beyond it are dropped and counted);
//! once the log port opens, a writer thread drains the queue into it, so
//! early-boot lines are kept until then. Warnings and errors also go to a
//! fallback sink (the console, or stderr off-VM).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Lines kept while the log port is not open yet.
pub const QUEUE_LINES: usize = 256;

/// Where log lines go.
pub struct LogSink {
    tx: SyncSender<String>,
    rx: Mutex<Option<Receiver<String>>>,
    dropped: AtomicU64,
    /// Minimum level also copied to stderr (the console as PID 1).
    stderr_level: Level,
}

impl LogSink {
    fn push(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts draining queued and future lines into `port` on a dedicated thread.
    /// Only the first call has an effect.
    pub fn attach(&self, mut port: std::fs::File) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("gcs-log".into())
            .spawn(move || {
                for line in rx {
                    if port.write_all(line.as_bytes()).is_err() {
                        // The host went away; keep draining so producers never block.
                        continue;
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("uvm-gcs: cannot start log writer: {e}");
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct JsonLayer {
    sink: Arc<LogSink>,
}

struct Fields<'a> {
    map: &'a mut serde_json::Map<String, serde_json::Value>,
    msg: String,
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.map
                .insert(field.name().to_owned(), serde_json::Value::String(text));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.map.insert(field.name().to_owned(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.map.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.map.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.map.insert(field.name().to_owned(), value.into());
    }
}

/// Formats a UNIX time as RFC 3339 UTC with microseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = String::with_capacity(32);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
    s
}

impl<S: Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut map = serde_json::Map::new();
        map.insert("time".into(), rfc3339(std::time::SystemTime::now()).into());
        let level = *event.metadata().level();
        map.insert("level".into(), level.as_str().into());
        map.insert("msg".into(), serde_json::Value::Null);
        let mut fields = Fields {
            map: &mut map,
            msg: String::new(),
        };
        event.record(&mut fields);
        let msg = std::mem::take(&mut fields.msg);
        map.insert("msg".into(), msg.into());
        map.insert("target".into(), event.metadata().target().into());
        let mut line = serde_json::Value::Object(map).to_string();
        line.push('\n');
        if level <= self.sink.stderr_level {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        self.sink.push(line);
    }
}

/// Installs the global subscriber. `level` filters events (`info`, `debug`, ...);
/// events at `stderr_level` or more severe are also written to stderr.
pub fn init(level: &str, stderr_level: Level) -> Arc<LogSink> {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let sink = Arc::new(LogSink {
        tx,
        rx: Mutex::new(Some(rx)),
        dropped: AtomicU64::new(0),
        stderr_level,
    });
    let filter =
        tracing_subscriber::filter::LevelFilter::from_level(level.parse().unwrap_or(Level::INFO));
    let layer = JsonLayer { sink: sink.clone() }.with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
    sink
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
