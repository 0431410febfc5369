use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
const T: Duration = Duration::from_secs(5);

/// The QEMU side of a scripted session.
struct Fake {
    r: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    w: tokio::io::WriteHalf<DuplexStream>,
}

impl Fake {
    async fn send(&mut self, v: &str) {
        self.w.write_all(v.as_bytes()).await.unwrap();
        self.w.write_all(b"\r\n").await.unwrap();
    }
    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }
    /// Reads a command, checks its name, answers with `ret`.
    async fn expect(&mut self, cmd: &str, ret: Value) -> Value {
        let m = self.recv().await;
        assert_eq!(m["execute"], cmd);
        self.send(&json!({"return": ret, "id": m["id"]}).to_string())
            .await;
        m
    }
}

async fn connected() -> (QmpClient, Fake) {
    let (a, b) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(b);
    let mut fake = Fake {
        r: BufReader::new(r),
        w,
    };
    let server = async {
        fake.send(GREETING).await;
        fake.expect("qmp_capabilities", json!({})).await;
        fake
    };
    let (client, fake) = tokio::join!(QmpClient::handshake(a, T), server);
    (client.unwrap(), fake)
}

#[tokio::test]
async fn handshake_reads_greeting_and_negotiates() {
    let (c, _fake) = connected().await;
    assert_eq!(c.greeting()["version"]["qemu"]["major"], 7);
}

#[tokio::test]
async fn command_returns_value_and_carries_arguments() {
    let (c, mut fake) = connected().await;
    let server = async {
        let m = fake
            .expect(
                "query-cpus-fast",
                json!([{"cpu-index": 0, "thread-id": 42}]),
            )
            .await;
        assert_eq!(m["arguments"]["x"], 1);
    };
    let (r, _) = tokio::join!(
        c.execute("query-cpus-fast", Some(json!({"x": 1})), T),
        server
    );
    assert_eq!(r.unwrap()[0]["thread-id"], 42);
}

#[tokio::test]
async fn replies_out_of_order_reach_their_callers() {
    let (c, mut fake) = connected().await;
    let server = async {
        let a = fake.recv().await;
        let b = fake.recv().await;
        fake.send(&json!({"return": b["execute"], "id": b["id"]}).to_string())
            .await;
        fake.send(&json!({"return": a["execute"], "id": a["id"]}).to_string())
            .await;
    };
    let (ra, rb, _) = tokio::join!(
        c.execute("first", None, T),
        c.execute("second", None, T),
        server
    );
    assert_eq!(ra.unwrap(), "first");
    assert_eq!(rb.unwrap(), "second");
}

#[tokio::test]
async fn command_error_is_typed() {
    let (c, mut fake) = connected().await;
    let server = async {
        let m = fake.recv().await;
        fake.send(
            &json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": m["id"]})
                .to_string(),
        )
        .await;
    };
    let (r, _) = tokio::join!(c.execute("bogus", None, T), server);
    match r {
        Err(QmpError::Command { class, desc }) => {
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "nope");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn command_times_out_and_late_reply_is_dropped() {
    let (c, mut fake) = connected().await;
    let r = c.execute("slow", None, Duration::from_millis(50)).await;
    assert!(matches!(r, Err(QmpError::Timeout(_))), "{r:?}");
    // The late reply must not confuse the next command.
    let m = fake.recv().await;
    fake.send(&json!({"return": "late", "id": m["id"]}).to_string())
        .await;
    let server = fake.expect("next", json!("ok"));
    let (r, _) = tokio::join!(c.execute("next", None, T), server);
    assert_eq!(r.unwrap(), "ok");
}

#[tokio::test]
async fn events_are_broadcast_and_recorded() {
    let (c, mut fake) = connected().await;
    let mut e1 = c.events();
    let mut e2 = c.events();
    fake.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
        .await;
    fake.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#)
        .await;
    fake.send(r#"{"event": "GUEST_PANICKED", "data": {"action": "poweroff"}}"#)
        .await;
    fake.send(r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-panic"}}"#)
        .await;
    fake.send(r#"{"event": "BALLOON_CHANGE", "data": {"actual": 1}}"#)
        .await;
    let want = vec![
        QmpEvent::Stop,
        QmpEvent::Resume,
        QmpEvent::GuestPanicked {
            action: "poweroff".into(),
        },
        QmpEvent::Shutdown {
            guest: true,
            reason: "guest-panic".into(),
        },
        QmpEvent::Other {
            name: "BALLOON_CHANGE".into(),
            data: json!({"actual": 1}),
        },
    ];
    for w in &want {
        assert_eq!(&e1.recv().await.unwrap(), w);
        assert_eq!(&e2.recv().await.unwrap(), w);
    }
    assert_eq!(
        c.seen(),
        SeenEvents {
            shutdown_reason: Some("guest-panic".into()),
            panicked: true
        }
    );
}

#[tokio::test]
async fn close_fails_pending_and_later_commands() {
    let (c, mut fake) = connected().await;
    let server = async {
        fake.recv().await;
        drop(fake);
    };
    let (r, _) = tokio::join!(c.execute("quit", None, T), server);
    assert!(matches!(r, Err(QmpError::Closed)), "{r:?}");
    tokio::time::timeout(T, c.closed()).await.unwrap();
    assert!(c.is_closed());
    assert!(matches!(
        c.execute("x", None, T).await,
        Err(QmpError::Closed)
    ));
}

#[tokio::test]
async fn bad_greeting_is_a_protocol_error() {
    let (a, mut b) = tokio::io::duplex(1024);
    b.write_all(b"{\"hello\": 1}\n").await.unwrap();
    let r = QmpClient::handshake(a, T).await;
    assert!(matches!(r, Err(QmpError::Protocol(_))), "{r:?}");
}

#[tokio::test]
async fn silent_peer_times_out_handshake() {
    let (a, _b) = tokio::io::duplex(1024);
    let r = QmpClient::handshake(a, Duration::from_millis(50)).await;
    assert!(matches!(r, Err(QmpError::Timeout(_))), "{r:?}");
}
