//! Guest against the fake GCS over a socket pair.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::testing::{FakeGcs, FakeGcsConfig};
use crate::*;

const T: Duration = Duration::from_secs(5);

async fn connected(config: FakeGcsConfig) -> (Guest, FakeGcs, CancellationToken) {
    let (host, guest_end) = UnixStream::pair().unwrap();
    let fake = FakeGcs::new(config);
    let stop = CancellationToken::new();
    tokio::spawn(fake.clone().serve(guest_end, stop.clone()));
    let g = Guest::new("vm", None);
    g.attach(host).await.unwrap();
    (g, fake, stop)
}

#[tokio::test]
async fn connect_accepts_over_listener_and_negotiates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gcs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fake = FakeGcs::new(FakeGcsConfig {
        dump_stacks: true,
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let f = fake.clone();
    let s = stop.clone();
    tokio::spawn(async move { f.serve(UnixStream::connect(path).await.unwrap(), s).await });
    let g = Guest::new("vm", Some(listener));
    g.connect(T).await.unwrap();
    let n = g
        .negotiate(&[ConfigOption::with_hostname("h")])
        .await
        .unwrap();
    assert!(n.capabilities.dump_stacks);
    assert_eq!(n.guest_uptime, Duration::from_nanos(1), "from the response");
    assert_eq!(fake.record().negotiations[0].hostname, "h");
    assert!(matches!(g.connect(T).await, Err(GuestError::ListenerUsed)));
    stop.cancel();
}

#[tokio::test]
async fn connect_times_out_when_nobody_connects() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("gcs.sock")).unwrap();
    let g = Guest::new("vm", Some(listener));
    let e = g.connect(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(e, GuestError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn channel_never_reconnects() {
    let (g, _fake, stop) = connected(FakeGcsConfig::default()).await;
    g.negotiate(&[]).await.unwrap();
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The server is gone; the next call fails instead of silently reconnecting.
    assert!(g.stats(T).await.is_err());
    assert!(g.stats(T).await.is_err());
}

#[tokio::test]
async fn dump_stacks_is_empty_without_capability() {
    let (g, _f, _s) = connected(FakeGcsConfig::default()).await;
    g.negotiate(&[]).await.unwrap();
    assert_eq!(g.dump_stacks(T).await.unwrap(), "");
    let (g, _f, _s) = connected(FakeGcsConfig {
        dump_stacks: true,
        ..Default::default()
    })
    .await;
    g.negotiate(&[]).await.unwrap();
    assert!(g.dump_stacks(T).await.unwrap().contains("fake"));
}

#[tokio::test]
async fn stalled_agent_is_bounded_and_close_is_prompt() {
    let (g, _f, _s) = connected(FakeGcsConfig {
        stall: true,
        ..Default::default()
    })
    .await;
    let e = g.stats(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(e, GuestError::Timeout { .. }));
    let g = std::sync::Arc::new(g);
    let g2 = g.clone();
    let t = tokio::spawn(async move { g2.stats(Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.close();
    g.close();
    let r = tokio::time::timeout(T, t).await.unwrap().unwrap();
    assert!(matches!(r, Err(GuestError::Closed)));
    assert!(matches!(g.stats(T).await, Err(GuestError::Closed)));
}

#[tokio::test]
async fn spawn_streams_stdio_and_exit() {
    let (g, _f, _s) = connected(FakeGcsConfig::default()).await;
    let mut p = g
        .spawn(ProcessSpec {
            args: vec!["cat".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.pid, 42);
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"hello ").await.unwrap();
    stdin.send(Bytes::from_static(b"world")).await.unwrap();
    stdin.close().await.unwrap();
    let mut out = String::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "hello world");
    assert_eq!(p.wait().await.unwrap(), ExitOutcome::Code(0));
}

#[tokio::test]
async fn spawn_maps_errors_and_signals() {
    let (g, _f, _s) = connected(FakeGcsConfig::default()).await;
    let spec = |a: &str| ProcessSpec {
        args: vec![a.into()],
        ..Default::default()
    };
    assert!(matches!(
        g.spawn(spec("nope")).await,
        Err(GuestError::CommandNotFound { .. })
    ));
    assert!(matches!(
        g.spawn(spec("noexec")).await,
        Err(GuestError::NotExecutable { .. })
    ));
    let mut p = g.spawn(spec("sleep")).await.unwrap();
    p.signal(9).await.unwrap();
    let o = p.wait().await.unwrap();
    assert_eq!((o, o.code()), (ExitOutcome::Signal(9), 137));
    g.set_security_policy(&SecurityPolicy::ExecAllowList(vec!["echo".into()]))
        .await
        .unwrap();
    assert!(matches!(
        g.spawn(spec("cat")).await,
        Err(GuestError::DeniedByPolicy { .. })
    ));
    assert!(g.spawn(spec("echo")).await.is_ok());
}

#[tokio::test]
async fn exec_with_paths_relays_fifos_and_files() {
    let (g, _f, _s) = connected(FakeGcsConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (inp, out, err) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("err"),
    );
    for p in [&inp, &out] {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }
    let req = ExecRequest {
        args: vec!["cat".into()],
        stdin: Some(inp.clone()),
        stdout: Some(out.clone()),
        ..Default::default()
    };
    let writer = tokio::task::spawn_blocking(move || std::fs::write(inp, b"through fifos"));
    let reader = tokio::task::spawn_blocking(move || std::fs::read_to_string(out));
    assert_eq!(g.exec_with_paths(&req).await.unwrap(), 0);
    writer.await.unwrap().unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), "through fifos");

    let req = ExecRequest {
        args: vec!["stderr".into(), "oops".into()],
        stderr: Some(err.clone()),
        ..Default::default()
    };
    assert_eq!(g.exec_with_paths(&req).await.unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "oops");
    let req = ExecRequest {
        args: vec!["exit".into(), "3".into()],
        ..Default::default()
    };
    assert_eq!(g.exec_with_paths(&req).await.unwrap(), 3);
}

#[tokio::test]
async fn terminal_with_stderr_fails_before_io() {
    let g = Guest::new("vm", None);
    let req = ExecRequest {
        args: vec!["sh".into()],
        terminal: true,
        stderr: Some("/nonexistent/fifo".into()),
        ..Default::default()
    };
    let e = g.exec_with_paths(&req).await.unwrap_err();
    assert!(matches!(e, GuestError::FailedPrecondition(_)));
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

/// Words of the transport and of tonic's `Status` debug form that must
/// never reach a person.
const TRANSPORT_WORDS: [&str; 5] = ["MetadataMap", "h2", "status: ", "details: [", "hyper"];

fn rendered_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn assert_plain(what: &str, e: &GuestError) {
    let text = rendered_chain(e);
    for w in TRANSPORT_WORDS {
        assert!(!text.contains(w), "{what}: {w:?} in {text:?}");
    }
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn no_failing_call_renders_transport_text() {
    // Bad args, policy denial, timeout: the agent answers.
    let (g, _f, stop) = connected(FakeGcsConfig {
        stall: true,
        dump_stacks: true,
        ..Default::default()
    })
    .await;
    g.negotiate(&[]).await.unwrap();
    let missing = g.spawn(spec(&["no-such-command"])).await.unwrap_err();
    assert_plain("command not found", &missing);
    let denied = g.spawn(spec(&["noexec"])).await.unwrap_err();
    assert_plain("not executable", &denied);
    let timed_out = g.stats(Duration::from_millis(50)).await.unwrap_err();
    assert!(
        matches!(timed_out, GuestError::Timeout { .. }),
        "{timed_out:?}"
    );
    assert_plain("timeout", &timed_out);
    g.set_security_policy(&SecurityPolicy::ExecAllowList(vec!["echo".into()]))
        .await
        .unwrap();
    let policy = g.spawn(spec(&["cat"])).await.unwrap_err();
    assert!(
        matches!(policy, GuestError::DeniedByPolicy { .. }),
        "{policy:?}"
    );
    assert_plain("policy", &policy);
    // The agent goes away between calls.
    stop.cancel();
    drop(g);
    let (g2, _f2, stop2) = connected(FakeGcsConfig::default()).await;
    g2.negotiate(&[]).await.unwrap();
    stop2.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Err(e) = tokio::time::timeout(T, g2.stats(T)).await.expect("bounded") {
        assert_plain("agent gone before stats", &e);
    }
}

#[tokio::test]
async fn a_noted_vm_exit_is_what_broken_calls_report() {
    let (g, _f, stop) = connected(FakeGcsConfig::default()).await;
    let g = g.with_vm_exit_grace(Duration::from_secs(5));
    g.negotiate(&[]).await.unwrap();
    let mut p = g.spawn(spec(&["sleep"])).await.unwrap();
    // The controller notes the exit, then closes the connection.
    g.note_vm_exit(uvm_vmm::ExitReason::GuestPanic {
        console_tail: "Kernel panic - not syncing: sysrq triggered crash".into(),
    });
    g.close();
    let e = tokio::time::timeout(T, p.wait())
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(
        matches!(
            &e,
            GuestError::VmExited {
                reason: uvm_vmm::ExitReason::GuestPanic { .. }
            }
        ),
        "{e:?}"
    );
    assert_eq!(rendered_chain(&e), "the VM stopped: guest kernel panic");
    // Later calls say the same.
    let later = g.stats(T).await.unwrap_err();
    assert!(matches!(later, GuestError::VmExited { .. }), "{later:?}");
    let spawn = g.spawn(spec(&["echo"])).await.unwrap_err();
    assert!(matches!(spawn, GuestError::VmExited { .. }), "{spawn:?}");
    stop.cancel();
}
