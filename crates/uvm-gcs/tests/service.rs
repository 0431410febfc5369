//! Negotiate, policy, stats, dump stacks, reaping and transport robustness.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use uvm_proto::gcs::{
    exec_output, security_policy, DumpStacksRequest, ExecAllowList, InitialState, NegotiateRequest,
    SecurityPolicy, StatsRequest,
};

#[tokio::test]
async fn negotiate_checks_versions_and_applies_state() {
    let server = Server::start();
    let mut c = server.client().await;
    let bad = NegotiateRequest {
        min_version: 7,
        max_version: 9,
        initial_state: None,
    };
    assert_eq!(
        c.negotiate(bad).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let state = InitialState {
        hostname: String::new(),
        timezone: "Europe/Paris".into(),
        env: vec!["HELLO=world".into()],
    };
    let req = NegotiateRequest {
        min_version: 1,
        max_version: 3,
        initial_state: Some(state),
    };
    let resp = c.negotiate(req).await.unwrap().into_inner();
    assert_eq!(resp.version, uvm_proto::PROTOCOL_VERSION);
    let caps = resp.capabilities.unwrap();
    assert!(caps.dump_stacks && caps.terminal && caps.signals && caps.stats && caps.shutdown);
    assert!(caps.mounts);
    assert!(!resp.kernel_release.is_empty() && resp.uptime_ns > 0);
    let o = run(&mut c, spec(&["sh", "-c", "echo $TZ $HELLO"]), vec![])
        .await
        .unwrap();
    assert_eq!(o.stdout, b"Europe/Paris world\n");
}

/// Refused mounts come back typed, in the status details, before any
/// syscall touches the (host's) mount table.
#[tokio::test]
async fn refused_mounts_carry_typed_failures() {
    use prost::Message;
    use uvm_proto::gcs::{mount_failure::Kind, mount_request, MountFailure, MountRequest};
    let server = Server::start();
    let mut c = server.client().await;
    let disk = |target: &str, fs: &str, options: &str| MountRequest {
        source: Some(mount_request::Source::Scsi(uvm_proto::gcs::ScsiAddress {
            controller: 0,
            lun: 9,
        })),
        target: target.into(),
        fs_type: fs.into(),
        options: options.into(),
        wait_ms: 1,
        ..Default::default()
    };
    for (req, kind, code) in [
        (
            disk("/etc", "ext4", ""),
            Kind::TargetNotAllowed,
            Code::InvalidArgument,
        ),
        (
            disk("/mnt/x", "ntfs", ""),
            Kind::BadFsType,
            Code::InvalidArgument,
        ),
        (
            disk("/mnt/x", "ext4", "rw"),
            Kind::BadOptions,
            Code::InvalidArgument,
        ),
    ] {
        let s = c.mount(req).await.unwrap_err();
        assert_eq!(s.code(), code, "{}", s.message());
        let f = MountFailure::decode(s.details()).unwrap();
        assert_eq!(f.kind, kind as i32, "{}", s.message());
        assert!(!s.message().is_empty());
    }
    let s = c
        .unmount(uvm_proto::gcs::UnmountRequest {
            target: "/proc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        MountFailure::decode(s.details()).unwrap().kind,
        Kind::TargetNotAllowed as i32
    );
}

#[tokio::test]
async fn policy_denies_unlisted_commands() {
    let server = Server::start();
    let mut c = server.client().await;
    let list = ExecAllowList {
        commands: vec!["true".into()],
    };
    c.set_security_policy(SecurityPolicy {
        policy: Some(security_policy::Policy::ExecAllowList(list)),
    })
    .await
    .unwrap();
    let err = run(&mut c, spec(&["sh", "-c", "exit 0"]), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("denied by security policy"));
    assert_eq!(
        code(&run(&mut c, spec(&["true"]), vec![]).await.unwrap()),
        Some(0)
    );
    c.set_security_policy(SecurityPolicy { policy: None })
        .await
        .unwrap();
    assert_eq!(
        code(
            &run(&mut c, spec(&["sh", "-c", "exit 3"]), vec![])
                .await
                .unwrap()
        ),
        Some(3)
    );
}

#[tokio::test]
async fn stats_are_plausible() {
    let server = Server::start();
    let mut c = server.client().await;
    let s = c.stats(StatsRequest {}).await.unwrap().into_inner();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(s.mem_total_bytes, total_kib * 1024);
    assert!(s.mem_available_bytes > 0 && s.mem_available_bytes <= s.mem_total_bytes);
    assert!(s.mem_free_bytes <= s.mem_total_bytes);
    assert!(s.cpu_user_ns + s.cpu_system_ns + s.cpu_idle_ns > 0);
    assert!(s.process_count > 1 && s.online_cpus >= 1 && s.uptime_ns > 0);
}

#[tokio::test]
async fn dump_during_a_long_exec_names_the_exec_handler() {
    let server = Server::start();
    let mut c = server.client().await;
    let (_tx, mut out) = open(&mut c, spec(&["sleep", "30"])).await.unwrap();
    let pid = match out.message().await.unwrap().unwrap().msg {
        Some(exec_output::Msg::Started(s)) => s.pid,
        other => panic!("unexpected {other:?}"),
    };
    let mut dump = String::new();
    // The exec records its stack once its process has run for 100 ms.
    for _ in 0..50 {
        dump = c
            .dump_stacks(DumpStacksRequest {})
            .await
            .unwrap()
            .into_inner()
            .stacks;
        if dump.contains("uvm_gcs::exec") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dump.contains("Exec [sleep 30] running"), "{dump}");
    assert!(dump.contains(&format!("pid {pid}")), "{dump}");
    assert!(
        dump.contains("uvm_gcs::exec::exec_still_running"),
        "no symbolized exec frame:\n{dump}"
    );
    assert!(
        dump.contains("gcs-worker"),
        "agent threads missing:\n{dump}"
    );
    assert!(dump.contains("=== guest tasks"), "{dump}");
}

#[tokio::test]
async fn orphans_are_reaped_and_exec_statuses_are_not_stolen() {
    let server = Server::start();
    let mut c = server.client().await;
    // Exit codes of concurrent execs must survive the orphan storm.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let o = run(
                &mut c,
                spec(&["sh", "-c", &format!("sleep 0.0{}; exit {}", i % 10, i + 1)]),
                vec![],
            )
            .await
            .unwrap();
            assert_eq!(code(&o), Some(i + 1));
        }));
    }
    let storm = "for i in $(seq 100); do (sleep 0.01 &) ; done";
    let o = run(&mut c, spec(&["sh", "-c", storm]), vec![])
        .await
        .unwrap();
    assert_eq!(code(&o), Some(0));
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if zombies_of(server.pid()).is_empty() {
            break;
        }
    }
    assert!(
        zombies_of(server.pid()).is_empty(),
        "zombies left: {:?}",
        zombies_of(server.pid())
    );
    // 100 orphans were inherited by the agent (a subreaper here) and reaped.
    let dump = c
        .dump_stacks(DumpStacksRequest {})
        .await
        .unwrap()
        .into_inner()
        .stacks;
    assert!(dump.contains("in-flight requests"), "{dump}");
}

#[tokio::test]
async fn garbage_on_the_transport_does_not_kill_the_agent() {
    let mut server = Server::start();
    for garbage in [
        &b"\x00\x01\x02 this is not http/2\r\n\r\n"[..],
        &[0xffu8; 4096][..],
    ] {
        let mut s = tokio::net::UnixStream::connect(&server.sock).await.unwrap();
        let _ = s.write_all(garbage).await;
        let mut buf = vec![0u8; 1024];
        // The agent rejects the connection (GOAWAY and/or close).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while s.read(&mut buf).await.unwrap_or(0) > 0 {}
        })
        .await;
    }
    assert!(server.alive());
    let mut c = server.client().await;
    assert!(c.stats(StatsRequest {}).await.is_ok());
}

#[tokio::test]
async fn shutdown_answers_then_stops_the_agent() {
    let mut server = Server::start();
    let mut c = server.client().await;
    c.shutdown(uvm_proto::gcs::ShutdownRequest { mode: 0 })
        .await
        .unwrap();
    for _ in 0..100 {
        if !server.alive() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent still running after Shutdown");
}
