//! Boots a real UVM under QEMU with a given kernel + initramfs (whose `/init`
//! is `uvm-gcs`), plays the host side of the gcs/log/entropy channels, and
//! runs a smoke test: negotiate, exec, exit codes, signals, 10 MiB through
//! `cat`, a TTY, stats, a dump, orphans, a garbage frame, shutdown.
//!
//! `vm_smoke KERNEL INITRD [microvm|q35] [MEM_MB]`; QEMU flags: `-accel tcg`;
//! `SMOKE_APPEND` adds kernel parameters, `SMOKE_LOGS`/`SMOKE_DUMP` print the
//! guest's log lines / the stack dump.
//! See `scripts/smoke-vm.sh`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use uvm_proto::gcs::*;

#[path = "../tests/common/gcs_stream.rs"]
mod gcs_stream;
use gcs_stream::{client_over, dup, read_to_goaway, retire, Client};

struct Out {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<exited::Status>,
}

async fn run(
    c: &mut Client,
    args: &[&str],
    terminal: bool,
    stdin: Vec<u8>,
) -> Result<Out, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spec = ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        terminal,
        ..Default::default()
    };
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let mut out = c
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        for chunk in stdin.chunks(32 << 10) {
            let _ = tx
                .send(ExecInput {
                    msg: Some(exec_input::Msg::Stdin(chunk.to_vec())),
                })
                .await;
        }
        let _ = tx
            .send(ExecInput {
                msg: Some(exec_input::Msg::CloseStdin(CloseStdin {})),
            })
            .await;
        tx.closed().await;
    });
    let mut o = Out {
        stdout: vec![],
        stderr: vec![],
        status: None,
    };
    while let Some(m) = out.message().await? {
        match m.msg.unwrap() {
            exec_output::Msg::Stdout(d) => o.stdout.extend(d),
            exec_output::Msg::Stderr(d) => o.stderr.extend(d),
            exec_output::Msg::Exited(e) => o.status = e.status,
            exec_output::Msg::Started(_) => {}
        }
    }
    Ok(o)
}

fn check(ok: bool, what: &str) {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
    // Panicking (not exiting) drops the QEMU child, which kills it.
    assert!(ok, "smoke test failed: {what}");
}

#[tokio::main]
async fn main() {
    tokio::time::timeout(Duration::from_secs(600), smoke())
        .await
        .expect("smoke test timed out");
}

async fn smoke() {
    let args: Vec<String> = std::env::args().collect();
    let (kernel, initrd) = (&args[1], &args[2]);
    let machine = match args.get(3).map(String::as_str).unwrap_or("microvm") {
        "microvm" => "microvm,x-option-roms=off",
        m => m,
    };
    let mem = args.get(4).map(String::as_str).unwrap_or("512");
    let dir = tempfile::tempdir().unwrap();
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let gcs_l = UnixListener::bind(sock("gcs")).unwrap();
    let log_l = UnixListener::bind(sock("log")).unwrap();
    let ent_l = UnixListener::bind(sock("entropy")).unwrap();
    let (bus, append_extra) = if machine.starts_with("q35") {
        ("virtio-serial-pci", "")
    } else {
        ("virtio-serial-device", " reboot=t")
    };
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        machine,
        "-accel",
        "tcg",
        "-m",
        mem,
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
    ])
    .args(["-serial", "stdio", "-kernel", kernel, "-initrd", initrd])
    .args([
        "-append",
        &format!(
            "console=ttyS0 panic=-1 quiet uvm.id=smoke-vm uvm.log_level=debug{append_extra} {}",
            std::env::var("SMOKE_APPEND").unwrap_or_default()
        ),
    ])
    .args(["-device", bus]);
    for (n, port) in [
        ("gcs", uvm_proto::ports::GCS),
        ("log", uvm_proto::ports::LOG),
        ("entropy", uvm_proto::ports::ENTROPY),
    ] {
        cmd.args([
            "-chardev",
            &format!("socket,id={n},path={}", sock(n).display()),
        ]);
        cmd.args([
            "-device",
            &format!("virtserialport,chardev={n},name={port}"),
        ]);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let t0 = Instant::now();
    let mut qemu = cmd.spawn().expect("qemu");
    let (gcs, _) = gcs_l.accept().await.unwrap();
    let (log, _) = log_l.accept().await.unwrap();
    let (mut ent, _) = ent_l.accept().await.unwrap();
    let mut seed = vec![0u8; uvm_proto::ports::ENTROPY_BYTES];
    rand::thread_rng().fill_bytes(&mut seed);
    ent.write_all(&seed).await.unwrap();
    let log_task = tokio::spawn(async move {
        let mut lines = BufReader::new(log).lines();
        let mut n = 0;
        while let Ok(Some(l)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&l).expect("log line is JSON");
            assert!(v["time"].is_string() && v["level"].is_string() && v["msg"].is_string());
            if std::env::var_os("SMOKE_LOGS").is_some() {
                println!("guest log: {l}");
            }
            n += 1;
        }
        n
    });
    // Keep our own handle on the gcs stream so dropping a client does not
    // disconnect QEMU's chardev.
    let keep = gcs.into_std().unwrap();
    let (mut c, retired) = client_over(dup(&keep), Vec::new()).await;
    let req = NegotiateRequest {
        min_version: 1,
        max_version: 1,
        initial_state: Some(InitialState {
            hostname: "smoke".into(),
            timezone: "UTC".into(),
            env: vec![],
        }),
    };
    let neg = tokio::time::timeout(Duration::from_secs(60), c.negotiate(req))
        .await
        .expect("negotiate timed out")
        .unwrap()
        .into_inner();
    let ready = t0.elapsed();
    println!(
        "boot-to-ready {} ms (guest uptime at handshake {} ms), kernel {}",
        ready.as_millis(),
        neg.uptime_ns / 1_000_000,
        neg.kernel_release
    );
    let o = run(&mut c, &["uname", "-r"], false, vec![]).await.unwrap();
    check(
        String::from_utf8_lossy(&o.stdout).trim() == neg.kernel_release,
        "uname -r",
    );
    let o = run(&mut c, &["sh", "-c", "exit 7"], false, vec![])
        .await
        .unwrap();
    check(o.status == Some(exited::Status::ExitCode(7)), "exit 7");
    let o = run(&mut c, &["true"], false, vec![]).await.unwrap();
    check(o.status == Some(exited::Status::ExitCode(0)), "exit 0");
    let o = run(&mut c, &["sh", "-c", "kill -9 $$"], false, vec![])
        .await
        .unwrap();
    check(o.status == Some(exited::Status::Signal(9)), "signal 9");
    let o = run(
        &mut c,
        &["sh", "-c", "echo out; echo err >&2"],
        false,
        vec![],
    )
    .await
    .unwrap();
    check(
        o.stdout == b"out\n" && o.stderr == b"err\n",
        "stdout/stderr apart",
    );
    let o = run(&mut c, &["hostname"], false, vec![]).await.unwrap();
    check(o.stdout == b"smoke\n", "hostname from Negotiate");
    check(
        run(&mut c, &["nope"], false, vec![])
            .await
            .err()
            .map(|e| e.code())
            == Some(tonic::Code::NotFound),
        "not found",
    );
    check(
        run(&mut c, &["/proc/version"], false, vec![])
            .await
            .err()
            .map(|e| e.code())
            == Some(tonic::Code::PermissionDenied),
        "not executable",
    );
    let o = run(&mut c, &["tty"], true, vec![]).await.unwrap();
    check(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "tty",
    );
    let mut data = vec![0u8; 10 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    let t = Instant::now();
    let o = run(&mut c, &["cat"], false, data.clone()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    check(
        o.stdout == data,
        &format!(
            "10 MiB through cat byte-exact ({:.1} MiB/s each way)",
            10.0 / secs
        ),
    );
    let s = c.stats(StatsRequest {}).await.unwrap().into_inner();
    let mem_mb: u64 = mem.parse().unwrap();
    let ratio = s.mem_total_bytes as f64 / (mem_mb << 20) as f64;
    check(
        (0.85..=1.0).contains(&ratio),
        &format!(
            "MemTotal {} MiB vs {mem_mb} MiB configured",
            s.mem_total_bytes >> 20
        ),
    );
    let storm = "for i in $(seq 100); do (sleep 0.01 &) ; done; sleep 1; ps -o stat,pid | grep -c ^Z || true";
    let o = run(&mut c, &["sh", "-c", storm], false, vec![])
        .await
        .unwrap();
    check(
        String::from_utf8_lossy(&o.stdout).trim() == "0",
        &format!(
            "100 orphans, no zombie ({:?})",
            String::from_utf8_lossy(&o.stdout).trim()
        ),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let spec = ProcessSpec {
        args: vec!["sleep".into(), "30".into()],
        ..Default::default()
    };
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let mut long = c
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let _started = long.message().await.unwrap();
    let dump = c
        .dump_stacks(DumpStacksRequest {})
        .await
        .unwrap()
        .into_inner()
        .stacks;
    if std::env::var_os("SMOKE_DUMP").is_some() {
        println!("{dump}");
    }
    check(
        dump.contains("Exec [sleep 30]") && dump.contains("uvm_gcs::exec::exec_handler"),
        &format!("dump names the exec handler ({} bytes)", dump.len()),
    );
    tx.send(ExecInput {
        msg: Some(exec_input::Msg::Signal(Signal { signal: 15 })),
    })
    .await
    .unwrap();
    while let Some(m) = long.message().await.unwrap() {
        if let Some(exec_output::Msg::Exited(e)) = m.msg {
            check(
                e.status == Some(exited::Status::Signal(15)),
                "signal via Exec stream",
            );
        }
    }
    retire(c, &retired);
    // A garbage frame on the gcs channel: the agent must drop that HTTP/2
    // connection, reopen the port and serve a new client on the same stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut raw = dup(&keep);
    raw.write_all(b"this is not an HTTP/2 preface\r\n\r\n")
        .await
        .unwrap();
    let broken = read_to_goaway(&mut raw, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("the garbage frame did not end the connection: {e}"));
    println!(
        "frames from the dead connection (type, flags, len): {:?}, GOAWAY code {}",
        broken.dead, broken.goaway
    );
    let (mut c, _retired) = client_over(dup(&keep), Vec::new()).await;
    let req = NegotiateRequest {
        min_version: 1,
        max_version: 1,
        initial_state: None,
    };
    let ok = tokio::time::timeout(Duration::from_secs(20), c.negotiate(req))
        .await
        .is_ok_and(|r| r.is_ok());
    check(ok, "agent serves again after a garbage frame");
    let t = Instant::now();
    c.shutdown(ShutdownRequest { mode: 0 }).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(30), qemu.wait()).await;
    check(
        st.as_ref().is_ok_and(|s| s.is_ok()),
        &format!(
            "power off: qemu exited {:?} after {} ms",
            st,
            t.elapsed().as_millis()
        ),
    );
    drop(keep);
    println!("log lines received: {}", log_task.await.unwrap_or(0));
}
