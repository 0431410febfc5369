//! Exec over a real socket against the real agent binary.

mod common;

use std::time::Duration;

use common::*;
use rand::RngCore;
use tonic::Code;
use uvm_proto::gcs::{exec_input, exec_output, ExecInput, WindowSize};

#[tokio::test]
async fn exit_codes_and_output() {
    let server = Server::start();
    let mut c = server.client().await;
    let o = run(&mut c, spec(&["true"]), vec![]).await.unwrap();
    assert_eq!(code(&o), Some(0));
    assert!(o.pid > 0);
    let o = run(&mut c, spec(&["sh", "-c", "exit 7"]), vec![])
        .await
        .unwrap();
    assert_eq!(code(&o), Some(7));
    let o = run(&mut c, spec(&["uname", "-r"]), vec![]).await.unwrap();
    assert_eq!(code(&o), Some(0));
    let release = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        release.trim(),
        nix::sys::utsname::uname()
            .unwrap()
            .release()
            .to_str()
            .unwrap()
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart() {
    let server = Server::start();
    let mut c = server.client().await;
    let o = run(
        &mut c,
        spec(&["sh", "-c", "echo out; echo err >&2; echo out2"]),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(o.stdout, b"out\nout2\n");
    assert_eq!(o.stderr, b"err\n");
}

#[tokio::test]
async fn killed_process_reports_its_signal() {
    let server = Server::start();
    let mut c = server.client().await;
    let o = run(&mut c, spec(&["sh", "-c", "kill -9 $$"]), vec![])
        .await
        .unwrap();
    assert_eq!(signal(&o), Some(9));

    let (tx, mut out) = open(&mut c, spec(&["sleep", "30"])).await.unwrap();
    let first = out.message().await.unwrap().unwrap();
    assert!(matches!(first.msg, Some(exec_output::Msg::Started(_))));
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Signal(uvm_proto::gcs::Signal {
            signal: 9,
        })),
    })
    .await
    .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(10), out.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match last.msg {
        Some(exec_output::Msg::Exited(e)) => {
            assert_eq!(e.status, Some(uvm_proto::gcs::exited::Status::Signal(9)))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn ten_mib_through_cat_are_byte_exact() {
    let server = Server::start();
    let mut c = server.client().await;
    let mut data = vec![0u8; 10 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    let o = run(&mut c, spec(&["cat"]), data.clone()).await.unwrap();
    assert_eq!(code(&o), Some(0));
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "cat output differs from its input");
    assert!(o.stderr.is_empty());
}

#[tokio::test]
async fn terminal_gets_a_pty() {
    let server = Server::start();
    let mut c = server.client().await;
    let mut s = spec(&["sh", "-c", "tty; stty size; echo $TERM"]);
    s.terminal = true;
    s.window = Some(WindowSize {
        rows: 33,
        cols: 101,
    });
    let o = run(&mut c, s, vec![]).await.unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("33 101"), "{text:?}");
    assert!(text.contains("xterm"), "{text:?}");
    assert_eq!(code(&o), Some(0));
}

#[tokio::test]
async fn bad_specs_get_distinct_codes() {
    let server = Server::start();
    let mut c = server.client().await;
    let err = run(&mut c, spec(&["no-such-command-xyz"]), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let err = run(&mut c, spec(&[script.to_str().unwrap()]), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let mut s = spec(&["true"]);
    s.workdir = "/no/such/dir".into();
    let err = run(&mut c, s, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("/no/such/dir"));

    let big = "x".repeat(600 << 10);
    let err = run(&mut c, spec(&["echo", &big, &big]), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = run(&mut c, spec(&[]), vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The first message must be `start`.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Stdin(b"x".to_vec())),
    })
    .await
    .unwrap();
    let err = c
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The agent still works afterwards.
    assert_eq!(
        code(&run(&mut c, spec(&["true"]), vec![]).await.unwrap()),
        Some(0)
    );
}

#[tokio::test]
async fn relative_workdir_and_env() {
    let server = Server::start();
    let mut c = server.client().await;
    let mut s = spec(&["sh", "-c", "pwd; echo $FOO; echo $PATH"]);
    s.workdir = "/tmp".into();
    s.env = vec!["FOO=bar".into()];
    let o = run(&mut c, s, vec![]).await.unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        text,
        format!("/tmp\nbar\n{}\n", uvm_gcs::init::DEFAULT_PATH)
    );
}

#[tokio::test]
async fn client_going_away_kills_the_process() {
    let server = Server::start();
    let mut c = server.client().await;
    let (tx, mut out) = open(&mut c, spec(&["sleep", "100"])).await.unwrap();
    let pid = match out.message().await.unwrap().unwrap().msg {
        Some(exec_output::Msg::Started(s)) => s.pid,
        other => panic!("unexpected {other:?}"),
    };
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(out);
    drop(tx);
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} survived its client");
}

#[tokio::test]
async fn grandchild_holding_stdout_does_not_hang_exec() {
    let server = Server::start();
    let mut c = server.client().await;
    let started = std::time::Instant::now();
    let o = run(&mut c, spec(&["sh", "-c", "sleep 30 & echo bye"]), vec![])
        .await
        .unwrap();
    assert_eq!(code(&o), Some(0));
    assert_eq!(o.stdout, b"bye\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn resize_reaches_the_terminal() {
    let server = Server::start();
    let mut c = server.client().await;
    let mut s = spec(&["sh", "-c", "sleep 0.5; stty size"]);
    s.terminal = true;
    let (tx, mut out) = open(&mut c, s).await.unwrap();
    let resize = WindowSize {
        rows: 40,
        cols: 120,
    };
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Resize(resize)),
    })
    .await
    .unwrap();
    let mut text = Vec::new();
    while let Some(m) = out.message().await.unwrap() {
        if let Some(exec_output::Msg::Stdout(d)) = m.msg {
            text.extend(d);
        }
    }
    assert!(
        String::from_utf8_lossy(&text).contains("40 120"),
        "{:?}",
        String::from_utf8_lossy(&text)
    );
}

#[tokio::test]
async fn an_oversized_input_message_is_reported_not_swallowed() {
    let server = Server::start();
    let mut c = server.client().await;
    let (tx, mut out) = open(&mut c, spec(&["cat"])).await.unwrap();
    let first = out.message().await.unwrap().unwrap();
    assert!(matches!(first.msg, Some(exec_output::Msg::Started(_))));
    // Over the agent's decoding limit: the exec must end with an error status,
    // not with a stream that just stops (the client would not know why).
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Stdin(vec![0u8; 9 << 20])),
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match out.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("bounded");
    let status = end.expect_err("the stream ended without a status");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The agent keeps serving.
    let o = run(&mut c, spec(&["true"]), vec![]).await.unwrap();
    assert_eq!(code(&o), Some(0));
}

#[test]
fn the_socket_accepts_as_soon_as_it_exists() {
    // The agent once bound its socket before listening on it: a client
    // that connected the moment the path appeared could be refused.
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gcs.sock");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_uvm-gcs"))
            .arg("--serve-unix")
            .arg(&sock)
            .env("UVM_GCS_LOG", "warn")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let connected = std::os::unix::net::UnixStream::connect(&sock);
        let _ = child.kill();
        let _ = child.wait();
        assert!(connected.is_ok(), "refused: {connected:?}");
    }
}
