//! Snapshots and restores of real VMs (DESIGN §13): state survives, clones
//! differ in randomness and hostname and keep the host's clock, a restored
//! VM runs the whole API, and bad snapshots are refused with nothing left.
//! Prerequisites as in `common/real.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::real::{assert_nothing_left, chain, document, image, req, TerminateOnDrop, SERIAL};
use uvm::{
    AfterSnapshot, Controller, CreateOptions, Error, ExecRequest, Manager, ManagerConfig,
    RestoreOptions, SnapshotError, SnapshotManifest, StartOptions, State,
};
use uvm_vmm::{QemuConfig, QemuHypervisor};

fn manager(shared_memory: bool) -> Arc<Manager> {
    let hv = QemuHypervisor::with_config(QemuConfig {
        shared_memory,
        ..QemuConfig::default()
    });
    Arc::new(Manager::with_config(
        Arc::new(hv),
        ManagerConfig {
            gcs_timeout: Duration::from_secs(120),
            ..ManagerConfig::default()
        },
    ))
}

/// Runs `args` in the VM; its stdout (through a host file).
async fn output(m: &Manager, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = ExecRequest {
        stdout: Some(out.clone()),
        ..req(args)
    };
    let code = m.exec_into_host(r).await.expect("exec");
    assert_eq!(code, 0, "{args:?} exited {code}");
    std::fs::read_to_string(out).unwrap().trim().to_string()
}

/// Boots a VM (`shared_memory`: RAM in a memfd) and writes a marker file.
async fn boot_with_marker(
    id: &str,
    shared_memory: bool,
) -> Option<(Arc<Manager>, TerminateOnDrop)> {
    let img = image().await?;
    let doc = document(&img, 256);
    let m = manager(shared_memory);
    let stop = TerminateOnDrop(vec![m.clone()]);
    m.create_vm(CreateOptions {
        id: id.into(),
        document: doc,
    })
    .await
    .expect("create_vm");
    m.start_vm(StartOptions::default()).await.expect("start_vm");
    output(&m, &["sh", "-c", "echo kept-in-ram > /tmp/marker"]).await;
    Some((m, stop))
}

async fn restore(dir: &Path, id: &str) -> Result<(Arc<Manager>, TerminateOnDrop), Error> {
    let m = manager(false);
    let stop = TerminateOnDrop(vec![m.clone()]);
    m.create_vm_from_snapshot(RestoreOptions {
        id: id.into(),
        snapshot_dir: dir.to_path_buf(),
        hostname: None,
    })
    .await?;
    assert_eq!(m.state(), State::Created);
    m.start_vm(StartOptions::default()).await?;
    assert_eq!(m.state(), State::Running);
    Ok((m, stop))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_two_clones_of_one_snapshot() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("UVM_RUNTIME_DIR", root.path());
    let Some((src, _stop_src)) = boot_with_marker("snap-src", true).await else {
        return;
    };
    let src_pid = src.utility_vm().and_then(|v| v.pid());
    let snaps = tempfile::tempdir().unwrap();
    let dir = snaps.path().join("snap");
    let manifest = src
        .snapshot(&dir, AfterSnapshot::Terminate)
        .await
        .expect("snapshot");
    assert_eq!(src.state(), State::Terminated);
    assert!(src.exit_status().unwrap().err.is_none());
    let memory = manifest
        .memory
        .as_ref()
        .expect("a memfd VM saves RAM as a file");
    assert_eq!(memory.bytes, 256 << 20);
    assert!(
        manifest.state.bytes < 8 << 20,
        "device state only: {}",
        manifest.state.bytes
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(SnapshotManifest::read(&dir).unwrap(), manifest);

    let (a, b) = tokio::join!(restore(&dir, "clone-a"), restore(&dir, "clone-b"));
    let ((a, _stop_a), (b, _stop_b)) = (a.expect("restore a"), b.expect("restore b"));
    let pids: Vec<u32> = [&a, &b]
        .iter()
        .filter_map(|m| m.utility_vm().and_then(|v| v.pid()))
        .collect();
    for (m, id) in [(&a, "clone-a"), (&b, "clone-b")] {
        assert_eq!(output(m, &["cat", "/tmp/marker"]).await, "kept-in-ram");
        assert_eq!(output(m, &["hostname"]).await, id);
        let before = unix_now();
        let guest: f64 = output(m, &["date", "+%s"]).await.parse().unwrap();
        let after = unix_now();
        assert!(
            guest >= before.floor() - 1.0 && guest <= after + 1.0,
            "guest clock {guest} vs host {before}..{after}"
        );
    }
    let random = |m: Arc<Manager>| async move {
        output(&m, &["sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"]).await
    };
    let (ra, rb) = tokio::join!(random(a.clone()), random(b.clone()));
    assert_eq!(ra.split_whitespace().count(), 32, "{ra}");
    assert_ne!(ra, rb, "two clones read the same random bytes");

    // The whole API on a restored VM.
    assert_eq!(
        a.exec_into_host(req(&["sh", "-c", "exit 7"]))
            .await
            .unwrap(),
        7
    );
    let stats = a.stats().await.expect("stats");
    assert!(stats.memory.unwrap().working_set_bytes > 0);
    assert!(!a.dump_stacks().await.expect("dump_stacks").is_empty());
    for m in [&a, &b] {
        m.terminate_vm().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), m.wait())
            .await
            .expect("wait bounded")
            .unwrap();
        assert_eq!(m.state(), State::Terminated);
        assert!(m.exit_status().unwrap().err.is_none());
    }
    for pid in pids.into_iter().chain(src_pid) {
        assert_nothing_left(root.path(), Some(pid));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(uvm::MANIFEST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// No runtime dir `id` under `root`, and QEMU `pid` gone (the source VM
/// still runs beside).
fn assert_gone(root: &Path, id: &str, pid: Option<u32>) {
    assert!(!root.join(id).exists(), "runtime dir of {id} left behind");
    if let Some(pid) = pid {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "QEMU {pid} of {id} still running");
    }
}

/// A restore that must fail at create, leaving nothing.
async fn refused(dir: &Path, root: &Path) -> SnapshotError {
    let m = manager(false);
    let e = m
        .create_vm_from_snapshot(RestoreOptions {
            id: "refused".into(),
            snapshot_dir: dir.to_path_buf(),
            hostname: None,
        })
        .await
        .expect_err("restore must be refused");
    assert_eq!(m.state(), State::NotCreated);
    assert_gone(root, "refused", None);
    match e {
        Error::Snapshot { source, .. } => source,
        e => panic!("not a snapshot error: {e}: {}", chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_snapshot_then_resume_and_bad_snapshots() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("UVM_RUNTIME_DIR", root.path());
    let Some((src, _stop_src)) = boot_with_marker("snap-live", false).await else {
        return;
    };
    let snaps = tempfile::tempdir().unwrap();
    let dir = snaps.path().join("snap");

    // A running exec blocks the snapshot; nothing changes.
    let guest = src.guest().unwrap();
    let mut sleeper = guest
        .spawn(uvm_guest::ProcessSpec {
            args: vec!["sleep".into(), "30".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = src.snapshot(&dir, AfterSnapshot::Resume).await.unwrap_err();
    assert!(chain(&e).contains("still run"), "{e}: {}", chain(&e));
    assert!(!dir.exists(), "a failed snapshot leaves no dir");
    sleeper.signal(9).await.unwrap();
    sleeper.wait().await.unwrap();

    let manifest = src
        .snapshot(&dir, AfterSnapshot::Resume)
        .await
        .expect("snapshot");
    assert!(
        manifest.memory.is_none(),
        "anonymous RAM travels in the stream"
    );
    assert_eq!(src.state(), State::Running);
    assert_eq!(output(&src, &["cat", "/tmp/marker"]).await, "kept-in-ram");
    output(&src, &["sh", "-c", "echo after > /tmp/marker"]).await;
    let e = src.snapshot(&dir, AfterSnapshot::Resume).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Snapshot {
                source: SnapshotError::UnsafeDir { .. },
                ..
            }
        ),
        "{e}"
    );

    // The snapshot holds the state at its time, not the source's later one.
    {
        let (r, _stop) = restore(&dir, "from-live").await.expect("restore");
        assert_eq!(output(&r, &["cat", "/tmp/marker"]).await, "kept-in-ram");
        r.terminate_vm().await.unwrap();
    }

    let bad = |name: &str| snaps.path().join(name);
    // Truncated state: refused before QEMU runs.
    copy_dir(&dir, &bad("truncated"));
    let state = bad("truncated").join(&manifest.state.file);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    f.set_len(manifest.state.bytes / 2).unwrap();
    let e = refused(&bad("truncated"), root.path()).await;
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
    // Truncated with the manifest edited to match: QEMU rejects the stream,
    // start fails, terminate cleans up.
    edit_manifest(&bad("truncated"), |v| {
        v["state"]["bytes"] = (manifest.state.bytes / 2).into()
    });
    let m = manager(false);
    m.create_vm_from_snapshot(RestoreOptions {
        id: "torn".into(),
        snapshot_dir: bad("truncated"),
        hostname: None,
    })
    .await
    .expect("create from a torn state");
    let pid = m.utility_vm().and_then(|v| v.pid());
    let e = m.start_vm(StartOptions::default()).await.unwrap_err();
    assert!(chain(&e).contains("load"), "{e}: {}", chain(&e));
    m.terminate_vm().await.unwrap();
    assert_eq!(m.state(), State::Terminated);
    assert_gone(root.path(), "torn", pid);

    // Another kernel named in the manifest.
    copy_dir(&dir, &bad("kernel"));
    let other = snaps.path().join("other-kernel");
    std::fs::write(&other, b"not the kernel the snapshot booted").unwrap();
    edit_manifest(&bad("kernel"), |v| {
        v["kernel"]["path"] = other.to_string_lossy().into()
    });
    let e = refused(&bad("kernel"), root.path()).await;
    assert!(
        matches!(e, SnapshotError::Mismatch { what: "kernel", .. }),
        "{e}"
    );
    // Another QEMU version.
    copy_dir(&dir, &bad("qemu"));
    edit_manifest(&bad("qemu"), |v| {
        v["hypervisor"]["version"] = "6.0.0".into()
    });
    let e = refused(&bad("qemu"), root.path()).await;
    assert!(
        e.to_string().contains("QEMU version") && e.to_string().contains("6.0.0"),
        "{e}"
    );
    // A dir others can read, and one of another user.
    copy_dir(&dir, &bad("mode"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bad("mode"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = refused(&bad("mode"), root.path()).await;
    assert!(e.to_string().contains("0755"), "{e}");
    if nix::unistd::geteuid().is_root() {
        copy_dir(&dir, &bad("owner"));
        std::os::unix::fs::chown(bad("owner"), Some(65534), Some(65534)).unwrap();
        let e = refused(&bad("owner"), root.path()).await;
        assert!(e.to_string().contains("uid 65534"), "{e}");
    }
    // No snapshot at all.
    let e = refused(&PathBuf::from("/nonexistent/snapshot"), root.path()).await;
    assert!(matches!(e, SnapshotError::Dir(_)), "{e}");

    src.terminate_vm().await.unwrap();
    assert_nothing_left(root.path(), None);
}
