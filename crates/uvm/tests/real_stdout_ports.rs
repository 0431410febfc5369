//! Stdout ports in a real VM: a process writes its stdout straight to a
//! virtio-serial port and the host reads exactly the bytes the agent counted,
//! so consecutive processes on one port never see each other's output.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::real::{stdout_ports_ready, VmGuard};
use tokio::io::AsyncReadExt;
use uvm::{Controller, ManagerConfig};
use uvm_guest::{ExitOutcome, Guest, ProcessSpec};

/// More than the default, so reuse, fallback and retirement all show.
const PORTS: usize = 3;

/// A VM with [`PORTS`] stdout ports, all of them accepted by the host.
async fn boot() -> Option<(VmGuard, Arc<Guest>)> {
    let vm = VmGuard::boot_config(
        256,
        ManagerConfig {
            stdout_ports: PORTS as u32,
            ..ManagerConfig::default()
        },
    )
    .await?;
    let guest = vm.mgr.guest().unwrap();
    stdout_ports_ready(&guest, PORTS).await;
    Some((vm, guest))
}

/// `sh -c script`: (stdout, stderr, outcome, stdout on a port).
async fn sh(guest: &Guest, script: &str) -> (String, String, ExitOutcome, bool) {
    let f = common::real::sh(guest, script).await;
    (f.stdout, f.stderr.unwrap(), f.status, f.on_port)
}

/// What `seq 1 n` prints.
fn seq(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_consecutive_processes_get_exactly_their_own_output() {
    let Some((vm, guest)) = boot().await else {
        return;
    };
    // More processes than ports, lengths around the relay's read size, so
    // every port is reused and boundaries fall mid-read.
    for i in 0..(3 * PORTS) {
        let n = 1 + i * 9_000;
        let (out, err, status, on_port) = sh(&guest, &format!("seq 1 {n}; echo err{i} >&2")).await;
        assert!(on_port, "exec {i}: stdout did not use a port");
        assert_eq!(status, ExitOutcome::Code(0));
        assert_eq!(err, format!("err{i}\n"), "exec {i}: stderr");
        assert!(
            out == seq(n),
            "exec {i}: {} bytes, want {}",
            out.len(),
            seq(n).len()
        );
    }
    assert_eq!(
        guest.idle_stdout_ports(),
        PORTS,
        "every port back in the pool"
    );
    // A process the agent refuses never touched its port: it comes back.
    let missing = ProcessSpec {
        args: vec!["no-such-command-xyz".into()],
        ..Default::default()
    };
    let err = guest.spawn(missing).await.unwrap_err();
    assert!(
        matches!(err, uvm_guest::GuestError::CommandNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(
        guest.idle_stdout_ports(),
        PORTS,
        "a refused exec keeps its port"
    );
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_more_concurrent_processes_than_ports() {
    let Some((vm, guest)) = boot().await else {
        return;
    };
    let runs = (0..PORTS + 3).map(|i| {
        let guest = guest.clone();
        async move {
            let n = 20_000 + i;
            // `sleep` keeps all of them running at once.
            let (out, _, status, on_port) = sh(&guest, &format!("sleep 1; seq 1 {n}")).await;
            assert_eq!(status, ExitOutcome::Code(0));
            assert!(
                out == seq(n),
                "exec {i}: {} bytes, want {}",
                out.len(),
                seq(n).len()
            );
            on_port
        }
    });
    let on_port = futures::future::join_all(runs).await;
    let n = on_port.iter().filter(|p| **p).count();
    assert!(
        (1..=PORTS).contains(&n),
        "{n} of {} processes on a port, {PORTS} ports",
        on_port.len()
    );
    assert_eq!(guest.idle_stdout_ports(), PORTS);
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_background_writer_retires_its_port_and_leaks_nowhere() {
    let Some((vm, guest)) = boot().await else {
        return;
    };
    // The shell exits at once; its background child keeps stdout and writes
    // after the agent's drain period (2 s), with margin for a loaded host.
    let (out, _, status, on_port) = sh(&guest, "echo first; (sleep 8; echo LATE) & exit 3").await;
    assert!(on_port);
    assert_eq!(status, ExitOutcome::Code(3));
    assert_eq!(out, "first\n");
    assert_eq!(
        guest.idle_stdout_ports(),
        PORTS - 1,
        "the held port is retired"
    );
    // Later processes, on the remaining ports, never see the late line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let (out, _, status, on_port) = sh(&guest, &format!("echo next{i}")).await;
        assert!(on_port);
        assert_eq!(status, ExitOutcome::Code(0));
        assert_eq!(out, format!("next{i}\n"));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_default_vm_has_one_port_and_none_when_disabled() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    stdout_ports_ready(&guest, uvm_proto::ports::STDOUT_PORTS as usize).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        guest.idle_stdout_ports(),
        uvm_proto::ports::STDOUT_PORTS as usize,
        "no more ports than configured"
    );
    vm.finish().await;
    let Some(vm) = VmGuard::boot_config(
        256,
        ManagerConfig {
            stdout_ports: 0,
            ..ManagerConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(guest.idle_stdout_ports(), 0);
    let (out, _, status, on_port) = sh(&guest, "seq 1 1000").await;
    assert!(!on_port, "no port to use");
    assert_eq!(status, ExitOutcome::Code(0));
    assert_eq!(out, seq(1000));
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_writer_killed_mid_stream_leaves_the_port_clean() {
    let Some((vm, guest)) = boot().await else {
        return;
    };
    let spec = ProcessSpec {
        args: vec!["dd".into(), "if=/dev/zero".into(), "bs=65536".into()],
        ..Default::default()
    };
    let mut p = guest.spawn(spec).await.unwrap();
    assert!(p.stdout_on_port());
    let mut out = p.stdout.take().unwrap();
    let mut first = vec![0u8; 4 << 20];
    out.read_exact(&mut first).await.unwrap();
    p.signal(9).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), out.read_to_end(&mut rest))
        .await
        .expect("stdout ends after the kill")
        .unwrap();
    assert_eq!(p.wait().await.unwrap(), ExitOutcome::Signal(9));
    assert!(rest.iter().all(|b| *b == 0), "only dd's zeros");
    // Every port comes back, and the next processes see only their own output.
    stdout_ports_ready(&guest, PORTS).await;
    for i in 0..PORTS + 1 {
        let (out, _, status, on_port) = sh(&guest, &format!("echo after{i}")).await;
        assert!(on_port);
        assert_eq!(status, ExitOutcome::Code(0));
        assert_eq!(out, format!("after{i}\n"));
    }
    vm.finish().await;
}
