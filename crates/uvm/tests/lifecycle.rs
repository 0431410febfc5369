//! Every (state, operation) pair and each injected failure, against the fake backend.

mod common;

use std::time::Duration;

use common::{env, env_with, Faults};
use uvm::{Controller, Error, ExecRequest, ManagerConfig, StartOptions, State};
use uvm_vmm::ExitReason;

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Start,
    Exec,
    DumpStacks,
    Stats,
    Terminate,
    Wait,
}

/// Expected outcome: Ok, Err, or Pending (still waiting after 200 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Ok,
    Err,
    Pending,
}

async fn run_op(e: &common::Env, op: Op) -> Out {
    let m = &e.mgr;
    let r: Result<(), Error> = match op {
        Op::Create => m.create_vm(e.create_opts()).await,
        Op::Start => m.start_vm(StartOptions::default()).await,
        Op::Exec => m
            .exec_into_host(ExecRequest {
                args: vec!["exit".into(), "0".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        Op::DumpStacks => m.dump_stacks().await.map(drop),
        Op::Stats => m.stats().await.map(drop),
        Op::Terminate => m.terminate_vm().await,
        Op::Wait => match tokio::time::timeout(Duration::from_millis(200), m.wait()).await {
            Ok(r) => r,
            Err(_) => return Out::Pending,
        },
    };
    match r {
        Ok(()) => Out::Ok,
        Err(err) => {
            if let Error::InvalidState { state, .. } | Error::AlreadyCreated { state } = err {
                assert_eq!(state, m.state(), "the error names the state");
            }
            Out::Err
        }
    }
}

#[tokio::test]
async fn every_state_and_operation() {
    use Op::*;
    use Out::{Err as E, Ok as K, Pending as P};
    use State::*;
    let table: &[(State, Op, Out, State)] = &[
        (NotCreated, Create, K, Created),
        (NotCreated, Start, E, NotCreated),
        (NotCreated, Exec, E, NotCreated),
        (NotCreated, DumpStacks, E, NotCreated),
        (NotCreated, Stats, E, NotCreated),
        (NotCreated, Terminate, K, NotCreated),
        (NotCreated, Wait, E, NotCreated),
        (Created, Create, E, Created),
        (Created, Start, K, Running),
        (Created, Exec, E, Created),
        (Created, DumpStacks, E, Created),
        (Created, Stats, E, Created),
        (Created, Terminate, K, Terminated),
        (Created, Wait, P, Created),
        (Running, Create, E, Running),
        (Running, Start, K, Running),
        (Running, Exec, K, Running),
        (Running, DumpStacks, K, Running),
        (Running, Stats, K, Running),
        (Running, Terminate, K, Terminated),
        (Running, Wait, P, Running),
        (Terminated, Create, E, Terminated),
        (Terminated, Start, E, Terminated),
        (Terminated, Exec, E, Terminated),
        (Terminated, DumpStacks, E, Terminated),
        (Terminated, Stats, E, Terminated),
        (Terminated, Terminate, K, Terminated),
        (Terminated, Wait, K, Terminated),
        (Invalid, Create, E, Invalid),
        (Invalid, Start, E, Invalid),
        (Invalid, Exec, E, Invalid),
        (Invalid, DumpStacks, E, Invalid),
        (Invalid, Stats, E, Invalid),
        (Invalid, Terminate, K, Terminated),
        (Invalid, Wait, P, Invalid),
    ];
    assert_eq!(table.len(), 5 * 7);
    for &(state, op, want, after) in table {
        let e = env(Faults::default());
        e.reach(state).await;
        let got = run_op(&e, op).await;
        assert_eq!((got, e.mgr.state()), (want, after), "{state} + {op:?}");
        let st = e.mgr.state();
        assert_eq!(
            e.mgr.start_time().is_some(),
            matches!(st, Running | Terminated)
                && e.hv
                    .vms
                    .lock()
                    .unwrap()
                    .last()
                    .is_some_and(|v| uvm_vmm::UtilityVm::started_time(v.as_ref()).is_some()),
            "{state} + {op:?}: start_time"
        );
        assert_eq!(
            e.mgr.exit_status().is_ok(),
            st == Terminated,
            "{state} + {op:?}: exit_status"
        );
        e.finish().await;
    }
}

#[tokio::test]
async fn injected_failures_leave_the_table_state() {
    let fast = ManagerConfig {
        gcs_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    // (name, faults, create ok?, start error matcher, state after start)
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, Faults, bool, Check, State)> = vec![
        (
            "create fails",
            Faults {
                create_fails: true,
                ..Default::default()
            },
            false,
            |_| true,
            State::NotCreated,
        ),
        (
            "start fails",
            Faults {
                start_fails: true,
                ..Default::default()
            },
            true,
            |e| matches!(e, Error::Vmm { op: "start VM", .. }),
            State::Invalid,
        ),
        (
            "guest never connects",
            Faults {
                guest_never_connects: true,
                ..Default::default()
            },
            true,
            |e| matches!(e, Error::Timeout { .. }),
            State::Invalid,
        ),
        (
            "negotiate fails",
            Faults {
                gcs: uvm_guest::testing::FakeGcsConfig {
                    negotiate_fails: true,
                    ..Default::default()
                },
                ..Default::default()
            },
            true,
            |e| {
                matches!(
                    e,
                    Error::Guest {
                        op: "negotiate",
                        ..
                    }
                )
            },
            State::Invalid,
        ),
        (
            "agent hangs up right after connecting",
            Faults {
                gcs_hangup: true,
                ..Default::default()
            },
            true,
            |e| {
                matches!(
                    e,
                    Error::Guest {
                        op: "GCS connect" | "negotiate",
                        ..
                    }
                )
            },
            State::Invalid,
        ),
        (
            "VM exits during start",
            Faults {
                exit_during_start: true,
                ..Default::default()
            },
            true,
            |e| matches!(e, Error::VmExited { .. }),
            State::Terminated,
        ),
    ];
    for (name, faults, create_ok, check, after) in cases {
        let e = env_with(faults, fast.clone());
        let created = e.mgr.create_vm(e.create_opts()).await;
        assert_eq!(created.is_ok(), create_ok, "{name}: {created:?}");
        if !create_ok {
            assert!(matches!(
                created,
                Err(Error::Vmm {
                    op: "create VM",
                    ..
                })
            ));
            assert_eq!(e.mgr.state(), State::NotCreated, "{name}");
            e.finish().await;
            continue;
        }
        let err = e.mgr.start_vm(StartOptions::default()).await.unwrap_err();
        assert!(check(&err), "{name}: {err:?}");
        // The exit watcher may still be finishing the VmExited transition.
        let mut rx = e.mgr.subscribe_state();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| *s == after)).await;
        assert_eq!(e.mgr.state(), after, "{name}");
        if after == State::Terminated {
            let st = e.mgr.exit_status().unwrap();
            assert_eq!(
                st.err.map(|x| x.0),
                Some(ExitReason::Signaled { signal: 9 })
            );
        }
        e.finish().await;
        assert_eq!(e.mgr.state(), State::Terminated, "{name}");
    }
}

#[tokio::test]
async fn invalid_document_and_create_twice() {
    let e = env(Faults::default());
    let mut opts = e.create_opts();
    opts.document =
        uvm_schema::LcowDocumentBuilder::new("/nonexistent/k", "/nonexistent/i").build();
    let err = e.mgr.create_vm(opts).await.unwrap_err();
    assert!(matches!(err, Error::InvalidDocument(_)), "{err:?}");
    assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument);
    assert_eq!(e.mgr.state(), State::NotCreated);
    assert!(e.hv.vms.lock().unwrap().is_empty(), "nothing was created");
    e.create().await;
    assert!(matches!(
        e.mgr.create_vm(e.create_opts()).await,
        Err(Error::AlreadyCreated { .. })
    ));
    e.finish().await;
}

#[tokio::test]
async fn terminate_failures_go_invalid_then_terminate_recovers() {
    for (close_fails, terminate_fails) in [(1, 0), (0, 1)] {
        for from in [State::Created, State::Running] {
            let e = env(Faults::default());
            e.reach(from).await;
            e.hv.set_faults(|f| {
                f.close_fails = close_fails;
                f.terminate_fails = terminate_fails;
            });
            let err = e.mgr.terminate_vm().await.unwrap_err();
            let want = if close_fails > 0 {
                "close VM"
            } else {
                "terminate VM"
            };
            assert!(
                matches!(err, Error::Vmm { op, .. } if op == want),
                "{err:?}"
            );
            assert_eq!(e.mgr.state(), State::Invalid, "{from}: {want}");
            assert!(
                e.hv.last_vm()
                    .close_calls
                    .load(std::sync::atomic::Ordering::SeqCst)
                    >= 1,
                "close always attempted"
            );
            e.finish().await;
            assert_eq!(e.mgr.state(), State::Terminated);
        }
    }
}

#[tokio::test]
async fn vm_exit_while_running_terminates_with_reason() {
    let e = env(Faults::default());
    e.run().await;
    let waiter = {
        let m = &e.mgr;
        async move { m.wait().await }
    };
    e.hv.last_vm().exit_with(ExitReason::Signaled { signal: 9 });
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    let mut rx = e.mgr.subscribe_state();
    tokio::time::timeout(
        Duration::from_secs(2),
        rx.wait_for(|s| *s == State::Terminated),
    )
    .await
    .unwrap()
    .unwrap();
    let st = e.mgr.exit_status().unwrap();
    assert_eq!(st.err.unwrap().0, ExitReason::Signaled { signal: 9 });
    assert!(e.mgr.start_time().is_some());
    assert!(matches!(
        e.mgr.stats().await,
        Err(Error::InvalidState {
            state: State::Terminated,
            ..
        })
    ));
    assert!(e.hv.all_released(), "watcher released the VM");
    e.finish().await;
}

#[tokio::test]
async fn guest_poweroff_is_a_clean_exit() {
    let e = env(Faults::default());
    e.run().await;
    e.mgr
        .guest()
        .unwrap()
        .shutdown(uvm_guest::ShutdownMode::PowerOff)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), e.mgr.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rx = e.mgr.subscribe_state();
    tokio::time::timeout(
        Duration::from_secs(2),
        rx.wait_for(|s| *s == State::Terminated),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(e.mgr.exit_status().unwrap().err, None);
    e.finish().await;
}

#[tokio::test]
async fn running_vm_serves_exec_stats_dump_and_entropy() {
    let mut faults = Faults::default();
    faults.gcs.dump_stacks = true;
    faults.gcs.mem_available_bytes = 200 << 20;
    let e = env(faults);
    e.create().await;
    let opts = StartOptions {
        config_options: vec![uvm::ConfigOption::with_hostname("h1")],
        confidential_options: Some(uvm::ConfidentialOptions {
            security_policy: uvm::SecurityPolicy::ExecAllowList(vec!["exit".into(), "echo".into()]),
        }),
        ..Default::default()
    };
    e.mgr.start_vm(opts).await.unwrap();
    let vm = e.hv.last_vm();
    let rec = vm.gcs.record();
    assert_eq!(rec.negotiations[0].hostname, "h1");
    assert_eq!(rec.policies.len(), 1);
    assert_eq!(rec.hv_socket_updates, 0, "LCOW has no finalize step");
    let exec = |args: &[&str]| ExecRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(e.mgr.exec_into_host(exec(&["exit", "7"])).await.unwrap(), 7);
    let denied = e.mgr.exec_into_host(exec(&["cat"])).await.unwrap_err();
    assert_eq!(
        denied.grpc_code(),
        tonic::Code::FailedPrecondition,
        "{denied:?}"
    );
    let mut tty = exec(&["echo"]);
    tty.terminal = true;
    tty.stderr = Some("/dev/null".into());
    assert_eq!(
        e.mgr.exec_into_host(tty).await.unwrap_err().grpc_code(),
        tonic::Code::FailedPrecondition
    );
    assert!(e.mgr.dump_stacks().await.unwrap().contains("fake"));
    let s = e.mgr.stats().await.unwrap();
    let mem = s.memory.unwrap();
    assert_eq!(mem.working_set_bytes, 50 << 20);
    let vmm = mem.vm_memory.unwrap();
    assert_eq!(
        (vmm.assigned_memory, vmm.available_memory),
        (256 << 20, 200)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        vm.entropy_bytes.load(std::sync::atomic::Ordering::SeqCst),
        512
    );
    e.finish().await;
    assert!(
        e.mgr.exit_status().unwrap().err.is_none(),
        "terminate on request is clean"
    );
}
