//! `uvmctl` under faults and load: killed controllers, signals, parallel and
//! repeated runs. Nothing may be left behind.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{code, stderr, stdout, wait_output, Sandbox};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `uvmctl run -- sleep 600` and returns once its QEMU is up and the
/// guest command runs (the command prints a marker first).
fn start_sleeper(sb: &Sandbox) -> std::process::Child {
    let mut child = sb
        .cmd()
        .args(["run", "--", "sh", "-c", "echo ready; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 6];
        let ok = out.read_exact(&mut buf).is_ok() && &buf == b"ready\n";
        let _ = tx.send(ok);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(true) => child,
        other => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "guest command never started ({other:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn sigkill_of_uvmctl_takes_its_vm_down_and_the_next_run_sweeps() {
    let mut sb = Sandbox::new();
    let child = start_sleeper(&sb);
    assert_eq!(sb.qemu_pids().len(), 1, "one QEMU for the run");
    assert_eq!(sb.leftover_dirs().len(), 1, "one runtime dir for the run");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    assert!(
        out.status.code().is_none(),
        "uvmctl should have died by the signal"
    );
    // PR_SET_PDEATHSIG: QEMU follows its controller.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sb.qemu_pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sb.qemu_pids().is_empty(), "QEMU survived its controller");
    // The dead owner's runtime dir is still there until the next create sweeps it.
    assert_eq!(sb.leftover_dirs().len(), 1);
    let out = sb.run(&["run", "--", "true"], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    sb.assert_clean();
    sb.skip_check();
}

#[test]
fn sigint_and_sigterm_terminate_the_vm_cleanly() {
    for (sig, expected) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let sb = Sandbox::new();
        let child = start_sleeper(&sb);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = wait_output(child, Duration::from_secs(60));
        assert_eq!(code(&out), expected, "{sig}: stderr: {}", stderr(&out));
        sb.assert_clean();
    }
}

#[test]
fn four_in_parallel_then_twenty_in_a_row() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..4)
        .map(|i| {
            sb.cmd()
                .args(["run", "--", "sh", "-c", &format!("echo vm{i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_output(child, Duration::from_secs(300));
        assert_eq!(code(&out), 0, "parallel run {i}: stderr: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("vm{i}\n"));
    }
    sb.assert_clean();
    for i in 0..20 {
        let out = sb.run(&["run", "--", "echo", &i.to_string()], None);
        assert_eq!(code(&out), 0, "run {i}: stderr: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{i}\n"));
    }
    sb.assert_clean();
}

/// Env var that turns this test binary into a probe that tries to connect
/// to a unix socket (run as another uid by the test below).
const CONNECT_PROBE: &str = "UVMCTL_TEST_CONNECT_PROBE";

/// Exit code of the probe: 0 connected, 13 permission denied, 1 other error.
#[test]
fn connect_probe() {
    let Some(path) = std::env::var_os(CONNECT_PROBE) else {
        return;
    };
    let code = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => 13,
        Err(e) => {
            eprintln!("probe: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Runs the probe as uid/gid 65534 (nobody) against `path`.
fn probe_as_nobody(path: &std::path::Path) -> i32 {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "connect_probe", "--nocapture"])
        .env(CONNECT_PROBE, path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn another_uid_cannot_reach_the_vm_sockets() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("another_uid_cannot_reach_the_vm_sockets needs root to switch uid");
        return;
    }
    let sb = Sandbox::new();
    // Let anyone traverse the test's root so only the VM's own modes protect it.
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Control: the probe does connect where the modes allow it.
    let open = sb.path().join("open.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(
        probe_as_nobody(&open),
        0,
        "the probe cannot connect even to an open socket"
    );
    drop(_listener);
    std::fs::remove_file(&open).unwrap();
    let mut child = start_sleeper(&sb);
    let dirs = sb.leftover_dirs();
    assert_eq!(dirs.len(), 1);
    let vm_dir = &dirs[0];
    assert_eq!(
        std::fs::metadata(vm_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let sockets: Vec<_> = std::fs::read_dir(vm_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(
        sockets.len() >= 3,
        "expected qmp/gcs/log sockets, found {sockets:?}"
    );
    for s in &sockets {
        assert_eq!(
            std::fs::metadata(s).unwrap().permissions().mode() & 0o777,
            0o600,
            "{s:?}"
        );
        assert_eq!(
            probe_as_nobody(s),
            13,
            "{s:?} reachable through the 0700 dir"
        );
    }
    // Even with the directory opened up, each socket's 0600 mode refuses.
    std::fs::set_permissions(vm_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for s in &sockets {
        assert_eq!(probe_as_nobody(s), 13, "{s:?} reachable despite mode 0600");
    }
    std::fs::set_permissions(vm_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let _ = child.wait();
    sb.assert_clean();
}
