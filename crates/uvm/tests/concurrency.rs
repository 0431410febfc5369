//! state() during a long start, terminate during start, operations racing
//! terminate, exit during start, and cancellation at random points.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{checked_transitions, env, env_with, Faults};
use rand::{Rng, SeedableRng};
use uvm::{Controller, Error, ExecRequest, ManagerConfig, StartOptions, State};

fn slow_gcs() -> ManagerConfig {
    ManagerConfig {
        gcs_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_answers_during_a_long_start() {
    let e = Arc::new(env(Faults {
        boot_delay: Duration::from_millis(800),
        ..Default::default()
    }));
    e.create().await;
    let e2 = e.clone();
    let start = tokio::spawn(async move { e2.mgr.start_vm(StartOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut saw_created = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let s = e.mgr.state();
        let _ = e.mgr.start_time();
        assert!(t.elapsed() < Duration::from_millis(20), "state() blocked");
        if s == State::Created {
            saw_created += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_created > 0);
    start.await.unwrap().unwrap();
    assert_eq!(e.mgr.state(), State::Running);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_during_start_aborts_it_promptly() {
    let e = Arc::new(env_with(
        Faults {
            guest_never_connects: true,
            ..Default::default()
        },
        slow_gcs(),
    ));
    e.create().await;
    let e2 = e.clone();
    let start = tokio::spawn(async move { e2.mgr.start_vm(StartOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    e.mgr.terminate_vm().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "terminate waited {:?}",
        t.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_secs(2), start)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(Error::StartAborted)), "{r:?}");
    assert_eq!(e.mgr.state(), State::Terminated);
    assert!(e.hv.all_released());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_exit_during_start_fails_within_a_second() {
    let faults = Faults {
        exit_during_start: true,
        boot_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let e = env_with(faults, slow_gcs());
    e.create().await;
    let t = Instant::now();
    let err = e.mgr.start_vm(StartOptions::default()).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::VmExited {
                during: "connect to guest",
                ..
            }
        ),
        "{err:?}"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_operations_while_terminate_runs() {
    let mut faults = Faults::default();
    faults.gcs.dump_stacks = true;
    let e = Arc::new(env(faults));
    e.run().await;
    let mut rx = e.mgr.subscribe_transitions();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let r = match i % 4 {
                    0 => e.mgr.stats().await.map(drop),
                    1 => e.mgr.dump_stacks().await.map(drop),
                    2 => e
                        .mgr
                        .exec_into_host(ExecRequest {
                            args: vec!["echo".into(), "x".into()],
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    _ => e.mgr.start_vm(StartOptions::default()).await,
                };
                if r.is_err() && e.mgr.state() == State::Running {
                    // Errors are only expected once terminate has begun:
                    // the VM may be gone before the state says Terminated.
                    assert!(
                        matches!(
                            r,
                            Err(Error::Guest { .. } | Error::Vmm { .. } | Error::VmExited { .. })
                        ),
                        "{r:?}"
                    );
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::time::timeout(Duration::from_secs(10), e.mgr.terminate_vm())
        .await
        .unwrap()
        .unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
    let seen = checked_transitions(&mut rx, State::Running);
    assert_eq!(
        seen.last().map(|t| t.to),
        Some(State::Terminated),
        "{seen:?}"
    );
    assert!(e.hv.all_released());
}

/// Drops create/start futures at random points (seeded), then terminates:
/// every fake VM must be closed and the manager Terminated (or NotCreated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_random_points_leaves_nothing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    for trial in 0..100 {
        let boot = Duration::from_millis(rng.gen_range(0..30));
        let e = env(Faults {
            boot_delay: boot,
            ..Default::default()
        });
        let create_cut = Duration::from_micros(rng.gen_range(0..3000));
        let created = tokio::time::timeout(create_cut, e.mgr.create_vm(e.create_opts())).await;
        let mut dropped_start = false;
        if matches!(created, Ok(Ok(()))) || rng.gen_bool(0.5) {
            let start_cut = Duration::from_micros(rng.gen_range(0..60_000));
            let r = tokio::time::timeout(start_cut, e.mgr.start_vm(StartOptions::default())).await;
            dropped_start = r.is_err();
        }
        let st = e.mgr.state();
        assert!(
            matches!(
                st,
                State::NotCreated | State::Created | State::Running | State::Invalid
            ),
            "trial {trial}: {st}"
        );
        tokio::time::timeout(Duration::from_secs(10), e.mgr.terminate_vm())
            .await
            .unwrap()
            .unwrap();
        assert!(
            e.mgr.state() == State::Terminated || e.hv.vms.lock().unwrap().is_empty(),
            "trial {trial}"
        );
        assert!(
            e.hv.all_released(),
            "trial {trial}: VM left (dropped start: {dropped_start})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_start_ends_invalid_then_terminate_cleans() {
    let e = env_with(
        Faults {
            guest_never_connects: true,
            ..Default::default()
        },
        slow_gcs(),
    );
    e.create().await;
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        e.mgr.start_vm(StartOptions::default()),
    )
    .await;
    assert!(r.is_err(), "start cannot finish: the guest never connects");
    let mut rx = e.mgr.subscribe_state();
    tokio::time::timeout(
        Duration::from_secs(2),
        rx.wait_for(|s| *s == State::Invalid),
    )
    .await
    .unwrap()
    .unwrap();
    e.finish().await;
    assert_eq!(e.mgr.state(), State::Terminated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_manager_terminates_its_vm() {
    let e = env(Faults::default());
    e.run().await;
    let hv = e.hv.clone();
    drop(e.mgr);
    for _ in 0..100 {
        if hv.all_released() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("VM not released after the manager was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_is_released_when_the_vm_dies() {
    let e = Arc::new(env(Faults::default()));
    e.run().await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move {
                e.mgr.wait().await.unwrap();
                e.mgr.exit_status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.hv.last_vm()
        .exit_with(uvm_vmm::ExitReason::Signaled { signal: 9 });
    for w in waiters {
        let status = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();
        // wait() returns with the state and exit status settled.
        assert_eq!(
            status.unwrap().err.unwrap().0,
            uvm_vmm::ExitReason::Signaled { signal: 9 }
        );
    }
    assert_eq!(e.mgr.state(), State::Terminated);
    let err = e
        .mgr
        .exec_into_host(ExecRequest {
            args: vec!["echo".into()],
            ..Default::default()
        })
        .await;
    assert!(matches!(
        err,
        Err(Error::InvalidState {
            state: State::Terminated,
            ..
        })
    ));
    e.finish().await;
}
