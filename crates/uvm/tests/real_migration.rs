//! Live migration between two Managers on this host (DESIGN §13): a process
//! printing a line every 0.1 s keeps every line and its exit code across
//! the move; the source ends Terminated as "migrated"; a cancelled migration
//! leaves the source Running and nothing of the destination. Prerequisites
//! as in `common/real.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::real::{assert_nothing_left, document, image, req, TerminateOnDrop, SERIAL};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use uvm::{
    Controller, CreateOptions, ExitReason, Manager, ManagerConfig, MigrationOptions,
    MigrationPhase, StartOptions, State,
};

fn manager() -> Arc<Manager> {
    Arc::new(Manager::from_config(ManagerConfig {
        gcs_timeout: Duration::from_secs(120),
        // A stdout port is a QEMU socket of its own: not handed over.
        stdout_ports: 0,
        ..ManagerConfig::default()
    }))
}

async fn boot(id: &str) -> Option<Arc<Manager>> {
    let img = image().await?;
    let doc = document(&img, 256);
    let m = manager();
    m.create_vm(CreateOptions {
        id: id.into(),
        document: doc,
    })
    .await
    .expect("create_vm");
    m.start_vm(StartOptions::default()).await.expect("start_vm");
    Some(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_migration_keeps_the_output_stream_and_exit_code() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("UVM_RUNTIME_DIR", root.path());
    let Some(src) = boot("mig-src").await else {
        return;
    };
    let dst = manager();
    let _stop = TerminateOnDrop(vec![src.clone(), dst.clone()]);
    let src_pid = src.utility_vm().and_then(|v| v.pid());
    let guest = src.guest().unwrap();
    let script = "i=0; while [ $i -lt 30 ]; do echo line $i $(date +%s); i=$((i+1)); sleep 0.1; done; exit 3";
    let mut p = guest
        .spawn(uvm_guest::ProcessSpec {
            args: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stdout = p.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.map(|_| out)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (tx, rx) = watch::channel(MigrationPhase::NotStarted);
    let mut opts = MigrationOptions::new("mig-dst");
    opts.progress = Some(tx);
    src.migrate_to(&dst, opts).await.expect("migrate");
    assert_eq!(*rx.borrow(), MigrationPhase::Finalized);
    assert_eq!(src.state(), State::Terminated);
    let err = src
        .exit_status()
        .unwrap()
        .err
        .expect("the source says why it stopped");
    assert!(
        matches!(err.reason(), ExitReason::Migrated { to } if to == "mig-dst"),
        "{err}"
    );
    assert_eq!(dst.state(), State::Running);

    let code = tokio::time::timeout(Duration::from_secs(60), p.wait())
        .await
        .expect("the process ends")
        .unwrap();
    assert_eq!(code, uvm_guest::ExitOutcome::Code(3));
    let out = reader.await.unwrap().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 30, "lost or extra lines:\n{out}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!("line {i} ")),
            "line {i} is {l:?}:\n{out}"
        );
    }
    // The destination runs the whole API; the hostname is the guest's own.
    assert_eq!(
        dst.exec_into_host(req(&["sh", "-c", "exit 5"]))
            .await
            .unwrap(),
        5
    );
    dst.stats().await.expect("stats");
    let pid = dst.utility_vm().and_then(|v| v.pid());
    dst.terminate_vm().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), dst.wait())
        .await
        .unwrap()
        .unwrap();
    assert_nothing_left(root.path(), pid);
    assert_nothing_left(root.path(), src_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cancelled_migration_leaves_the_source_running() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("UVM_RUNTIME_DIR", root.path());
    let Some(src) = boot("cancel-src").await else {
        return;
    };
    let dst = manager();
    let _stop = TerminateOnDrop(vec![src.clone(), dst.clone()]);
    let (tx, mut rx) = watch::channel(MigrationPhase::NotStarted);
    let mut opts = MigrationOptions::new("cancel-dst");
    opts.progress = Some(tx);
    // 1 MiB/s: the guest's RAM takes many seconds, time enough to cancel.
    opts.max_bandwidth = Some(1 << 20);
    let cancel = opts.cancel.clone();
    let (s2, d2) = (src.clone(), dst.clone());
    let migration = tokio::spawn(async move { s2.migrate_to(&d2, opts).await });
    tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|p| *p == MigrationPhase::TransferStarted),
    )
    .await
    .expect("transfer starts")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let e = migration.await.unwrap().unwrap_err();
    assert!(matches!(e, uvm::Error::MigrationCancelled), "{e}");
    assert_eq!(*rx.borrow(), MigrationPhase::Cancelled);
    assert_eq!(src.state(), State::Running);
    assert_eq!(dst.state(), State::Terminated);
    assert!(
        !root.path().join("cancel-dst").exists(),
        "destination dir left"
    );
    assert_eq!(
        src.exec_into_host(req(&["sh", "-c", "exit 6"]))
            .await
            .unwrap(),
        6
    );
    let pid = src.utility_vm().and_then(|v| v.pid());
    src.terminate_vm().await.unwrap();
    assert_nothing_left(root.path(), pid);
}
