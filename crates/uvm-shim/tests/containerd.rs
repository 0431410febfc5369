//! containerd drives uvm through `containerd-shim-uvm-v2`: every test
//! starts its own containerd (see `harness.rs`) and talks to it with the
//! real client, `ctr`. Each ends by checking that no shim, QEMU, mount or
//! VM runtime dir of its own is left.

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{text, Containerd};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it holds (bounded).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr(&["task", "ls"]);
    stdout(&out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

fn cleanup(c: &Containerd, ids: &[&str]) {
    for id in ids {
        let _ = c.ctr(&["task", "kill", "-s", "KILL", id]);
    }
    for id in ids {
        eventually(&format!("{id} stopped"), || {
            task_status(c, id).is_none_or(|s| s == "STOPPED")
        });
        let _ = c.ctr(&["task", "delete", id]);
        let _ = c.ctr(&["container", "rm", id]);
    }
}

#[test]
fn ctr_run_prints_and_exits_with_the_task_code() {
    let Some(c) = Containerd::start() else { return };
    let config = c.config.display().to_string();
    let out = c.run(
        &["--rm", "--runtime-config-path", &config],
        "t1",
        &["sh", "-c", "echo hi; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(stdout(&out), "hi\n", "{}", text(&out));
    c.assert_nothing_left();
}

#[test]
fn ctr_run_restores_the_snapshot_the_config_names() {
    let Some(c) = Containerd::start() else { return };
    let config = c.snapshot_config("uvmtest.snapshot=1");
    let config = config.display().to_string();
    let out = c.run(
        &["--rm", "--runtime-config-path", &config],
        "s1",
        &[
            "sh",
            "-c",
            "grep -o uvmtest.snapshot=1 /proc/cmdline; exit 4",
        ],
    );
    // The guest kernel's command line is the snapshotted VM's.
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(stdout(&out), "uvmtest.snapshot=1\n", "{}", text(&out));
    c.assert_nothing_left();
}

#[test]
fn a_terminal_gets_the_clients_size_and_resizes() {
    let Some(c) = Containerd::start() else { return };
    let args = c.run_args(
        &["--rm", "-t"],
        "tty1",
        &["sh", "-c", "sleep 1; tty; stty size"],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // `script` gives ctr a terminal of its own, 24x80.
    let line = format!("stty rows 24 cols 80; {}", c.ctr_line(&refs));
    let out = Command::new("timeout")
        .args(["120", "script", "-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let s = stdout(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(s.contains("/dev/"), "no tty: {s:?}");
    assert!(s.contains("24 80"), "size not passed on: {s:?}");
    c.assert_nothing_left();
}

#[test]
fn exec_ps_metrics_kill_and_wait_on_a_running_task() {
    let Some(c) = Containerd::start() else { return };
    // The foreground `ctr run` waits on the task (the shim's Wait).
    let args = c.run_args(&[], "w1", &["sleep", "300"]);
    let mut waiter = Command::new("ctr")
        .arg("--address")
        .arg(c.path("containerd.sock"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("w1 running", || {
        task_status(&c, "w1").as_deref() == Some("RUNNING")
    });

    let out = c.exec("w1", "e1", &["sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(stdout(&out), "in-exec\n");

    let ps = c.ctr(&["task", "ps", "w1"]);
    assert!(ps.status.success(), "{}", text(&ps));
    let pids: Vec<u32> = stdout(&ps)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one process (sleep): {}", text(&ps));

    let m = c.ctr(&["task", "metrics", "w1"]);
    assert!(m.status.success(), "{}", text(&m));
    let usage = stdout(&m)
        .lines()
        .find(|l| l.starts_with("memory.usage "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    assert!(usage.is_some_and(|u| u > 0), "memory.usage: {}", text(&m));
    assert!(stdout(&m).contains("pids.current"), "{}", text(&m));

    let k = c.ctr(&["task", "kill", "-s", "KILL", "w1"]);
    assert!(k.status.success(), "{}", text(&k));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = waiter.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = waiter.kill();
            panic!("ctr run did not return after the kill");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(137));
    // The foreground `ctr run` deletes the task it waited on.
    assert!(task_status(&c, "w1").is_none_or(|s| s == "STOPPED"));
    cleanup(&c, &["w1"]);
    c.assert_nothing_left();
}

#[test]
fn an_oom_kill_reaches_containerd_as_an_event() {
    let Some(c) = Containerd::start() else { return };
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(c.path("containerd.sock"))
        .arg("events")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(c.path("events.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = c.run(
        &["--rm", "--memory-limit", "33554432"],
        "oom1",
        &["sh", "-c", "head -c 67108864 /dev/zero | tail > /dev/null"],
    );
    let log = || std::fs::read_to_string(c.path("events.log")).unwrap_or_default();
    let mut ok = false;
    for _ in 0..50 {
        if log().contains("/tasks/oom") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    assert!(ok, "no /tasks/oom event:\n{}", log());
    // The VM survived it: the next task of the test runs.
    let again = c.run(&["--rm"], "oom2", &["echo", "next"]);
    assert_eq!(stdout(&again), "next\n", "{}", text(&again));
    c.assert_nothing_left();
}

fn pod_run(c: &Containerd, id: &str, kind: &str, pod: &str) {
    let t = format!("io.kubernetes.cri.container-type={kind}");
    let s = format!("io.kubernetes.cri.sandbox-id={pod}");
    let out = c.run(
        &["-d", "--annotation", &t, "--annotation", &s],
        id,
        &["sleep", "300"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn two_tasks_of_one_pod_share_one_qemu_and_one_shim() {
    let Some(c) = Containerd::start() else { return };
    pod_run(&c, "pod1", "sandbox", "pod1");
    pod_run(&c, "pod1-c1", "container", "pod1");
    eventually("both running", || {
        task_status(&c, "pod1").as_deref() == Some("RUNNING")
            && task_status(&c, "pod1-c1").as_deref() == Some("RUNNING")
    });
    assert_eq!(c.qemus().len(), 1, "one QEMU for the pod");
    assert_eq!(c.shims().len(), 1, "one shim for the pod");
    // A container without annotations gets a VM of its own.
    let out = c.run(&["-d"], "solo", &["sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.qemus().len(), 2);
    cleanup(&c, &["pod1-c1", "pod1", "solo"]);
    c.assert_nothing_left();
}

#[test]
fn a_killed_shim_leaves_nothing_once_containerd_cleans_up() {
    let Some(c) = Containerd::start() else { return };
    let out = c.run(&["-d"], "k1", &["sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.qemus().len(), 1);
    for pid in c.shims() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // containerd sees the shim go, runs `shim delete` and marks the task stopped.
    eventually("k1 stopped or gone", || {
        task_status(&c, "k1").is_none_or(|s| s == "STOPPED")
    });
    let _ = c.ctr(&["task", "delete", "k1"]);
    let _ = c.ctr(&["container", "rm", "k1"]);
    c.assert_nothing_left();
}

#[test]
fn a_containerd_restart_keeps_the_vm_and_the_task() {
    let Some(mut c) = Containerd::start() else {
        return;
    };
    let out = c.run(&["-d"], "r1", &["sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    c.stop_containerd();
    assert_eq!(c.qemus().len(), 1, "the VM outlives containerd");
    c.spawn_containerd();
    eventually("r1 running again", || {
        task_status(&c, "r1").as_deref() == Some("RUNNING")
    });
    let out = c.exec("r1", "after", &["echo", "after-restart"]);
    assert_eq!(stdout(&out), "after-restart\n", "{}", text(&out));
    cleanup(&c, &["r1"]);
    c.assert_nothing_left();
}

#[test]
fn the_vm_dying_stops_every_task_with_an_error_status() {
    let Some(c) = Containerd::start() else { return };
    pod_run(&c, "p2", "sandbox", "p2");
    pod_run(&c, "p2-c", "container", "p2");
    for pid in c.qemus() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    for id in ["p2", "p2-c"] {
        eventually(&format!("{id} stopped"), || {
            task_status(&c, id).as_deref() == Some("STOPPED")
        });
    }
    for id in ["p2-c", "p2"] {
        let out = c.ctr(&["task", "delete", id]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("exit code 255"),
            "{}",
            text(&out)
        );
        let _ = c.ctr(&["container", "rm", id]);
    }
    c.assert_nothing_left();
}

#[test]
fn a_missing_runtime_config_is_a_clear_error_and_leaves_nothing() {
    let Some(c) = Containerd::start() else { return };
    let out = c.run(
        &[
            "--rm",
            "--runtime-config-path",
            "/nonexistent/uvm-shim.toml",
        ],
        "bad1",
        &["true"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/uvm-shim.toml"),
        "the error names the file: {err}"
    );
    assert!(!err.contains("MetadataMap"), "{err}");
    let _ = c.ctr(&["container", "rm", "bad1"]);
    c.assert_nothing_left();
}

/// The shim's own ttrpc socket for task `id` (what containerd dials).
fn shim_client(c: &Containerd, id: &str) -> containerd_shim_protos::shim_async::TaskClient {
    let bundle = c
        .path("state")
        .join("io.containerd.runtime.v2.task/default")
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let client = containerd_shim_protos::ttrpc::asynchronous::Client::connect(address.trim())
        .expect("connect to the shim");
    containerd_shim_protos::shim_async::TaskClient::new(client)
}

#[test]
fn update_sets_the_cgroup_and_pause_is_not_implemented() {
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::MessageField;
    use containerd_shim_protos::ttrpc::context;

    let Some(c) = Containerd::start() else { return };
    let out = c.run(&["-d"], "u1", &["sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    let limit = |c: &Containerd| {
        let m = c.ctr(&["task", "metrics", "u1"]);
        stdout(&m)
            .lines()
            .find(|l| l.starts_with("memory.usage_limit "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    assert_eq!(limit(&c), Some(0), "no limit at first");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = shim_client(&c, "u1");
        let resources = serde_json::json!({"memory": {"limit": 50331648}, "pids": {"limit": 64}});
        let req = UpdateTaskRequest {
            id: "u1".into(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
                ..Default::default()
            }),
            ..Default::default()
        };
        client
            .update(context::with_timeout(30_000_000_000), &req)
            .await
            .expect("update");
    });
    assert_eq!(limit(&c), Some(50331648));
    let m = c.ctr(&["task", "metrics", "u1"]);
    let pids_limit = stdout(&m)
        .lines()
        .find(|l| l.starts_with("pids.limit "))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    assert_eq!(pids_limit.as_deref(), Some("64"), "{}", text(&m));

    let p = c.ctr(&["task", "pause", "u1"]);
    assert!(!p.status.success());
    let err = String::from_utf8_lossy(&p.stderr);
    assert!(err.contains("not implemented"), "{err}");
    assert_eq!(task_status(&c, "u1").as_deref(), Some("RUNNING"));
    cleanup(&c, &["u1"]);
    c.assert_nothing_left();
}
