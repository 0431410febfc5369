//! Bounded fuzzing of the agent's request handling (issue 7): arbitrary
//! process specs (NULs, odd UTF-8, env without `=`, bogus workdirs, huge or
//! negative window sizes, random signals) and arbitrary security policies.
//! Every request must end in an exit status or an error status, never hang,
//! and the agent must keep serving. `PROPTEST_CASES` raises the case count.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use uvm_proto::gcs::{
    exec_input, ContainerProcess, ExecInput, ProcessSpec, StatsRequest, WindowSize,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,24}",
        2 => "\\PC{0,12}",
        1 => prop::sample::select(vec!["\0", "true\0false", "", "-", "--", "/"]).prop_map(str::to_owned),
    ]
}

fn command() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["true", "echo", "cat", "sh", "/bin/true", "sleep", "tty", "env", "pwd"])
            .prop_map(str::to_owned),
        1 => text(),
    ]
}

fn env_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ("[A-Z_]{1,8}", ".{0,16}").prop_map(|(k, v)| format!("{k}={v}")),
        1 => text(),
    ]
}

fn workdir() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "/", "/tmp", "/proc", "tmp"]).prop_map(str::to_owned),
        1 => text(),
    ]
}

fn process_spec() -> impl Strategy<Value = ProcessSpec> {
    (
        command(),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(env_entry(), 0..3),
        workdir(),
        any::<bool>(),
        prop::option::of(
            prop_oneof![3 => (1u32..500, 1u32..500), 1 => (any::<u32>(), any::<u32>())],
        ),
        // Stdout port names: none, unknown ones, path-like junk.
        prop_oneof![
            3 => Just(String::new()),
            1 => "[a-z0-9-]{1,40}",
            1 => Just("../../dev/null".to_string()),
            1 => "\\PC{0,20}",
        ],
        // Now and then a container target (none exists: NOT_FOUND).
        proptest::option::weighted(0.1, ("\\PC{0,20}", any::<bool>(), "\\PC{0,40}")),
    )
        .prop_map(
            |(cmd, rest, env, workdir, terminal, window, stdout_port, container)| ProcessSpec {
                args: std::iter::once(cmd).chain(rest).collect(),
                env,
                workdir,
                terminal,
                window: window.map(|(rows, cols)| WindowSize { rows, cols }),
                stdout_port,
                container: container.map(|(container_id, init, oci_process_json)| {
                    ContainerProcess {
                        container_id,
                        init,
                        oci_process_json,
                    }
                }),
            },
        )
}

#[test]
fn arbitrary_exec_requests_get_an_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One agent for all cases: a fresh one per case would measure process
    // start-up, not request handling.
    let server = std::cell::RefCell::new(Server::start());
    let client = rt.block_on(server.borrow().client());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let strategy = (process_spec(), any::<i32>(), any::<u32>());
    let result = runner.run(&strategy, |(spec, signal, rows)| {
        rt.block_on(async {
            let mut c = client.clone();
            let answered = tokio::time::timeout(Duration::from_secs(20), async {
                match open(&mut c, spec).await {
                    Err(status) => Some(status.code()),
                    Ok((tx, mut out)) => {
                        for msg in [
                            exec_input::Msg::Signal(uvm_proto::gcs::Signal { signal }),
                            exec_input::Msg::Resize(WindowSize { rows, cols: rows }),
                            exec_input::Msg::CloseStdin(Default::default()),
                            // Whatever still runs is killed, so the exec must end.
                            exec_input::Msg::Signal(uvm_proto::gcs::Signal { signal: 9 }),
                        ] {
                            let _ = tx.send(ExecInput { msg: Some(msg) }).await;
                        }
                        loop {
                            match out.message().await {
                                Ok(Some(_)) => continue,
                                Ok(None) => break None,
                                Err(status) => break Some(status.code()),
                            }
                        }
                    }
                }
            })
            .await;
            prop_assert!(answered.is_ok(), "exec request hung");
            prop_assert!(server.borrow_mut().alive(), "agent died");
            prop_assert!(
                c.stats(StatsRequest {}).await.is_ok(),
                "agent stopped serving"
            );
            Ok(())
        })
    });
    result.unwrap();
}
