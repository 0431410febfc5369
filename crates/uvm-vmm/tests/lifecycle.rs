//! Real-QEMU lifecycle tests: create/start/stats/terminate, exits (signal,
//! poweroff, panic), forced termination, cleanup after cancel and after a dead
//! controller. Each test has its own runtime root and asserts nothing remains.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use uvm_schema::LcowDocumentBuilder;
use uvm_vmm::{ChannelSet, ExitReason, UtilityVm, VmmError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_stats_terminate() {
    let Some(kernel) = kernel_or_skip("create_start_stats_terminate") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let script = format!(
        "{MOUNTS}\n\
         for p in /sys/class/virtio-ports/*; do if [ \"$($B cat $p/name)\" = gcs.port ]; then D=/dev/$($B basename $p); fi; done\n\
         echo PING-FROM-GUEST > $D\n\
         echo READY\n\
         while true; do $B sleep 1; done"
    );
    let initrd = initramfs(w.tmp.path(), &script);
    let doc = small_doc(&kernel, &initrd);
    let ch = ChannelSet::default().with("gcs", "gcs.port");
    let g = boot(&w, "vm-stats", &doc, &ch).await;
    let vm = &g.vm;
    // Runtime dir: private dir, private sockets.
    let dir = vm.runtime_dir().to_path_buf();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for s in ["qmp.sock", "gcs.sock"] {
        assert_eq!(
            std::fs::metadata(dir.join(s)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{s}"
        );
    }
    assert!(vm.pid().is_some());
    assert!(vm.started_time().is_none());
    assert_eq!(
        vm.qmp_execute("query-status", None).await.unwrap()["status"],
        "prelaunch"
    );
    let listener = vm.take_channel("gcs").expect("gcs listener");
    assert!(vm.take_channel("gcs").is_none());
    vm.start().await.unwrap();
    vm.start().await.unwrap(); // no-op
    assert!(vm.started_time().is_some());
    let (mut stream, _) = tokio::time::timeout(GUEST_TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; 16];
    tokio::time::timeout(GUEST_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..], b"PING-FROM-GUEST\n");
    wait_console(vm, "READY").await;
    let st = vm.statistics().await.unwrap();
    assert!(st.vcpu_runtime > Duration::ZERO, "{st:?}");
    assert!(st.working_set_bytes > 0, "{st:?}");
    assert_eq!(st.assigned_memory_bytes, 128 << 20);
    vm.terminate().await.unwrap();
    assert_eq!(
        vm.exit_reason(),
        Some(ExitReason::TerminatedByRequest { forced: false })
    );
    assert_eq!(vm.exit_error(), None);
    assert!(vm.stopped_time().is_some());
    assert!(vm.pid().is_none());
    vm.terminate().await.unwrap(); // no-op
    assert!(matches!(vm.start().await, Err(VmmError::Exited { .. })));
    assert!(matches!(vm.statistics().await, Err(VmmError::State(_))));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_qemu_is_signaled_9_for_every_waiter() {
    let Some(kernel) = kernel_or_skip("sigkill") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "while true; do $B sleep 1; done");
    let doc = small_doc(&kernel, &initrd);
    let g = boot(&w, "vm-kill", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let (a, b) = (Arc::clone(&g.vm), Arc::clone(&g.vm));
    let w1 = tokio::spawn(async move { a.wait().await });
    let w2 = tokio::spawn(async move { b.wait().await });
    // SAFETY: kill(2) of our QEMU child.
    unsafe { libc::kill(g.vm.pid().unwrap() as i32, libc::SIGKILL) };
    let r = wait_bounded(g.vm.as_ref()).await;
    assert_eq!(r, ExitReason::Signaled { signal: 9 });
    assert_eq!(w1.await.unwrap(), r);
    assert_eq!(w2.await.unwrap(), r);
    assert_eq!(g.vm.exit_error(), Some(r));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_qemu_is_killed_after_grace() {
    let Some(kernel) = kernel_or_skip("stopped_qemu") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::with(|c| c.terminate_grace = Duration::from_secs(1));
    let initrd = initramfs(w.tmp.path(), "while true; do $B sleep 1; done");
    let doc = small_doc(&kernel, &initrd);
    let g = boot(&w, "vm-stopped", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    // SAFETY: kill(2) of our QEMU child.
    unsafe { libc::kill(g.vm.pid().unwrap() as i32, libc::SIGSTOP) };
    tokio::time::timeout(GUEST_TIMEOUT, g.vm.terminate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        g.vm.exit_reason(),
        Some(ExitReason::TerminatedByRequest { forced: true })
    );
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_is_clean() {
    let Some(kernel) = kernel_or_skip("guest_poweroff") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "echo BYE; $B poweroff -f");
    let doc = small_doc(&kernel, &initrd);
    let g = boot(&w, "vm-poweroff", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    assert_eq!(
        r,
        ExitReason::GuestPoweroff,
        "console:\n{}",
        g.vm.console_tail()
    );
    assert!(g.vm.exit_error().is_none());
    assert!(g.vm.console_tail().contains("BYE"));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_panic_is_reported_with_console() {
    let Some(kernel) = kernel_or_skip("guest_panic") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(
        w.tmp.path(),
        &format!("{MOUNTS}\necho c > /proc/sysrq-trigger"),
    );
    let doc = small_doc(&kernel, &initrd);
    let g = boot(&w, "vm-panic", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    match &r {
        ExitReason::GuestPanic { console_tail } => {
            assert!(console_tail.contains("Kernel panic"), "{console_tail}")
        }
        other => panic!("{other:?}; console:\n{}", g.vm.console_tail()),
    }
    assert!(
        g.vm.qmp().seen().panicked,
        "pvpanic GUEST_PANICKED event expected"
    );
    assert_eq!(g.vm.exit_error(), Some(r));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exit_is_a_panic() {
    let Some(kernel) = kernel_or_skip("init_exit") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "exit 3");
    let doc = small_doc(&kernel, &initrd);
    let g = boot(&w, "vm-initexit", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    assert!(matches!(r, ExitReason::GuestPanic { .. }), "{r:?}");
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sweeps_stale_runtime_dirs() {
    let Some(kernel) = kernel_or_skip("sweep") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let stale = w.root.join("stale-vm");
    std::fs::create_dir_all(&stale).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(
        stale.join(uvm_vmm::runtime_dir::OWNER_FILE),
        dead.to_string(),
    )
    .unwrap();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .build();
    let g = boot(&w, "vm-sweep", &doc, &ChannelSet::default()).await;
    assert!(!stale.exists(), "stale dir not swept");
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_create_leaves_nothing() {
    let Some(kernel) = kernel_or_skip("cancelled_create") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .build();
    for ms in [0u64, 2, 10, 30, 60, 120, 250] {
        let r = tokio::time::timeout(
            Duration::from_millis(ms),
            w.hv.create_vm("vm-cancel", &doc, &ChannelSet::default()),
        )
        .await;
        if let Ok(vm) = r {
            vm.unwrap().close().await.unwrap();
        }
        // The owner task kills and reaps QEMU in the background: bounded wait.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let clean = std::fs::read_dir(&w.root)
                .map(|d| d.count() == 0)
                .unwrap_or(true);
            let no_qemu = std::panic::catch_unwind(|| assert_no_qemu_with(&w.root)).is_ok();
            if clean && no_qemu {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cancel after {ms} ms left something behind"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs only as the child of `dead_controller_takes_its_vm_down`: creates a
/// VM, records QEMU's pid, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdeathsig_helper() {
    let Ok(root) = std::env::var("UVM_PDEATHSIG_HELPER_ROOT") else {
        return;
    };
    let kernel = kernel().unwrap();
    // This process dies by SIGKILL, so it cannot clean a temp dir of its own:
    // keep its files in the parent's test dir (next to the runtime root).
    let files = std::path::Path::new(&root).parent().unwrap().join("helper");
    std::fs::create_dir_all(&files).unwrap();
    let initrd = initramfs(&files, "while true; do $B sleep 1; done");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .build();
    let hv = uvm_vmm::QemuHypervisor::with_config(uvm_vmm::QemuConfig {
        runtime_root: Some(root.clone().into()),
        ..Default::default()
    });
    let vm = hv
        .create_vm("vm-orphan", &doc, &ChannelSet::default())
        .await
        .unwrap();
    let pidfile = std::path::Path::new(&root).join("qemu.pid.tmp");
    std::fs::write(&pidfile, vm.pid().unwrap().to_string()).unwrap();
    std::fs::rename(&pidfile, std::path::Path::new(&root).join("qemu.pid")).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_controller_takes_its_vm_down() {
    let Some(_kernel) = kernel_or_skip("dead_controller") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    std::fs::create_dir_all(&w.root).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pdeathsig_helper", "--nocapture"])
        .env("UVM_PDEATHSIG_HELPER_ROOT", &w.root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) of a process this test spawned.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _helper = KillOnDrop(child.id());
    let pidfile = w.root.join("qemu.pid");
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    while !pidfile.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "helper never created its VM"
        );
        assert!(child.try_wait().unwrap().is_none(), "helper exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let qemu: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _qemu_guard = KillOnDrop(qemu);
    assert!(alive(qemu));
    child.kill().unwrap();
    child.wait().unwrap();
    // QEMU gets SIGKILL from the kernel (PR_SET_PDEATHSIG) when its parent dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{qemu}")).exists() && alive(qemu) {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {qemu} outlived its controller"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its runtime dir is left behind; the next sweep removes it.
    std::fs::remove_file(&pidfile).unwrap();
    let dir = w.root.join("vm-orphan");
    assert!(dir.exists());
    let removed = uvm_vmm::sweep_stale_runtime_dirs(&w.root).unwrap();
    assert_eq!(removed, vec![dir]);
    w.assert_clean();
}
