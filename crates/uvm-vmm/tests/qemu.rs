//! Real-QEMU tests. Each uses its own runtime root and asserts that no QEMU
//! process and no runtime dir remain afterwards, even on failure paths.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use uvm_schema::LcowDocumentBuilder;
use uvm_vmm::{ChannelSet, ExitReason, UtilityVm, VmmError};

async fn boot(w: &World, id: &str, doc: &uvm_schema::ComputeSystem, ch: &ChannelSet) -> Guard {
    let vm =
        w.hv.create_vm(id, doc, ch)
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    Guard { vm: Arc::new(vm) }
}

async fn wait_bounded(vm: &dyn UtilityVm) -> ExitReason {
    tokio::time::timeout(GUEST_TIMEOUT, vm.wait())
        .await
        .expect("VM did not exit in time")
}

async fn finish(w: &World, g: Guard) {
    g.vm.close().await.unwrap();
    g.vm.close().await.unwrap(); // idempotent
    assert!(!g.vm.runtime_dir().exists());
    drop(g);
    w.assert_clean();
    assert_no_qemu_with(&w.root);
}

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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
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
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
    let g = boot(&w, "vm-initexit", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    assert!(matches!(r, ExitReason::GuestPanic { .. }), "{r:?}");
    finish(&w, g).await;
}

#[tokio::test]
async fn missing_qemu_binary_leaves_nothing() {
    let w = World::with(|c| c.binary = Some("/nonexistent/qemu-system-x86_64".into()));
    let k = w.path("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&k, &i).build();
    let e =
        w.hv.create_vm("vm-nobin", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    assert!(matches!(e, VmmError::HypervisorNotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains("/nonexistent/qemu-system-x86_64"),
        "{e}"
    );
    w.assert_clean();
}

#[tokio::test]
async fn missing_kernel_names_the_field() {
    let w = World::new();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(w.path("no-vmlinux"), &i).build();
    let e =
        w.hv.create_vm("vm-nokernel", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath: kernel "),
        "{s}"
    );
    assert!(s.contains("no-vmlinux"), "{s}");
    w.assert_clean();
}

#[tokio::test]
async fn bad_id_and_missing_disk_are_refused() {
    let w = World::new();
    let k = w.path("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&k, &i)
        .scsi_disk(w.path("nope.vhdx"), true)
        .build();
    let e =
        w.hv.create_vm("a/b", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("VM id"), "{e}");
    let e =
        w.hv.create_vm("vm-nodisk", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("VirtualMachine.Devices.Scsi.0.Attachments.0.Path: disk "),
        "{s}"
    );
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_disk_fails_create_with_qemu_stderr_and_leaves_nothing() {
    let Some(kernel) = kernel_or_skip("unusable_disk") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let bad = w.path("corrupt.qcow2");
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.resize(4096, 0xff);
    std::fs::write(&bad, bytes).unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &i)
        .memory_mb(128)
        .scsi_disk(&bad, false)
        .build();
    let e =
        w.hv.create_vm("vm-baddisk", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    match &e {
        VmmError::Exited {
            reason: ExitReason::HypervisorError { code, stderr_tail },
            ..
        } => {
            assert_ne!(*code, 0);
            assert!(stderr_tail.contains("corrupt.qcow2"), "{stderr_tail}");
        }
        other => panic!("{other:?}"),
    }
    w.assert_clean();
    assert_no_qemu_with(&w.root);
}

fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        st.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_disks_share_and_com_port_work_in_the_guest() {
    let Some(kernel) = kernel_or_skip("devices") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    // raw (read-only) and qcow2 (writable) disks with known first bytes
    let raw = w.path("ro.raw");
    let mut data = b"RAW-DISK-CONTENT".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&raw, &data).unwrap();
    let src = w.path("src.raw");
    let mut data = b"QCOW-DISK-CONTNT".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&src, &data).unwrap();
    let qcow = w.path("rw.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    // vhdx, dynamic vhd and fixed vhd (footer only) images of the raw disk
    let mut extra = Vec::new();
    for (name, fmt, opts) in [
        ("d.vhdx", "vhdx", ""),
        ("d.vhd", "vpc", ""),
        ("f.vhd", "vpc", "subformat=fixed"),
    ] {
        let out = w.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
        qemu_img(&args);
        extra.push(out);
    }
    let share = w.path("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "HELLO-9P").unwrap();
    let com0 = w.path("com0.log");
    let script = format!(
        "{MOUNTS}\n\
         for d in /sys/block/vd*; do n=$($B basename $d); s=$($B cat $d/serial); \
           echo \"DISK $s $n ro=$($B cat $d/ro) head=$($B head -c 16 /dev/$n)\"; \
           if echo WRITTEN-BY-GUEST | $B dd of=/dev/$n bs=512 count=1 conv=sync,fsync 2>/dev/null; then echo \"WRITE $s ok\"; else echo \"WRITE $s failed\"; fi; \
         done\n\
         if $B grep -q 9p /proc/filesystems; then $B mount -t 9p -o trans=virtio,version=9p2000.L data /mnt && echo \"SHARE $($B cat /mnt/hello.txt)\"; else echo SHARE no-9p-in-kernel; fi\n\
         echo COM0-FROM-GUEST > /dev/ttyS0\n\
         echo DONE; $B poweroff -f"
    );
    let initrd = initramfs(w.tmp.path(), &script);
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .scsi_disk(&raw, true)
        .scsi_disk(&qcow, false)
        .plan9_share("data", &share, true)
        .com_port(&com0)
        .scsi_disk(&extra[0], true)
        .scsi_disk(&extra[1], true)
        .scsi_disk(&extra[2], true)
        .build();
    let g = boot(&w, "vm-devices", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    let console = g.vm.console_tail();
    assert_eq!(r, ExitReason::GuestPoweroff, "console:\n{console}");
    let line = |prefix: &str| -> String {
        // (SeaBIOS leaves escape sequences in front of the first line on q35)
        let l = console
            .lines()
            .find(|l| l.contains(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{console}"));
        l[l.find(prefix).unwrap()..].to_string()
    };
    let d0 = line("DISK scsi-0-0 ");
    assert!(
        d0.contains("ro=1") && d0.contains("head=RAW-DISK-CONTENT"),
        "{d0}"
    );
    let d1 = line("DISK scsi-0-1 ");
    assert!(
        d1.contains("ro=0") && d1.contains("head=QCOW-DISK-CONTNT"),
        "{d1}"
    );
    for lun in 2..5 {
        let d = line(&format!("DISK scsi-0-{lun} "));
        assert!(
            d.contains("ro=1") && d.contains("head=RAW-DISK-CONTENT"),
            "{d}"
        );
    }
    assert_eq!(line("WRITE scsi-0-0"), "WRITE scsi-0-0 failed");
    assert_eq!(line("WRITE scsi-0-1"), "WRITE scsi-0-1 ok");
    if line("SHARE ") == "SHARE no-9p-in-kernel" {
        // Only the stock distro kernel lacks 9p; the tuned kernel must have it.
        assert_eq!(
            uvm_vmm::qemu::kernel_format_of(&kernel),
            Some(uvm_vmm::qemu::KernelFormat::BzImage)
        );
        eprintln!(
            "NOTE: guest kernel {} has no 9p support; Plan9 share not checked",
            kernel.display()
        );
    } else {
        assert_eq!(line("SHARE "), "SHARE HELLO-9P");
    }
    // ComPort 0 gets the guest console; the runtime dir's console log still has a copy.
    let com = std::fs::read_to_string(&com0).unwrap();
    assert!(
        com.contains("COM0-FROM-GUEST") && com.contains("DISK scsi-0-0"),
        "{com}"
    );
    assert!(console.contains("COM0-FROM-GUEST"));
    // the read-only raw disk is untouched on the host
    assert!(std::fs::read(&raw)
        .unwrap()
        .starts_with(b"RAW-DISK-CONTENT"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overcommit_preallocates_guest_memory() {
    let Some(kernel) = kernel_or_skip("prealloc") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(192)
        .processors(1)
        .allow_overcommit(false)
        .build();
    let g = boot(&w, "vm-prealloc", &doc, &ChannelSet::default()).await;
    assert!(g.vm.argv().iter().any(|a| a.contains("prealloc=on")));
    let st = g.vm.statistics().await.unwrap();
    assert!(st.working_set_bytes >= 192 << 20, "{st:?}");
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_document_on_microvm_argv() {
    let Some(kernel) = kernel_or_skip("default_argv") else {
        return;
    };
    if uvm_vmm::qemu::kernel_format_of(&kernel) != Some(uvm_vmm::qemu::KernelFormat::Elf) {
        eprintln!("SKIP default_document_on_microvm_argv: kernel is not an ELF vmlinux");
        return;
    }
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd).build();
    let ch = ChannelSet::default()
        .with("gcs", "gcs-port")
        .with("log", "log-port")
        .with("entropy", "entropy-port");
    let g = boot(&w, "vm-default", &doc, &ch).await;
    let argv = g.vm.argv().to_vec();
    eprintln!("argv: {}", argv.join(" "));
    let has = |pair: [&str; 2]| argv.windows(2).any(|x| x == pair);
    assert!(has(["-machine", "microvm,x-option-roms=off"]));
    assert!(has(["-device", "virtio-serial-device,id=vser0"]));
    assert!(has([
        "-device",
        "virtserialport,bus=vser0.0,chardev=ch-entropy,name=entropy-port"
    ]));
    assert!(has(["-device", "pvpanic"]));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn com_port_to_a_unix_socket() {
    let Some(kernel) = kernel_or_skip("com_port_socket") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let sock = w.path("com0.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let initrd = initramfs(w.tmp.path(), "echo SOCKET-COM-OK; $B poweroff -f");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .com_port(&sock)
        .build();
    let g = boot(&w, "vm-comsock", &doc, &ChannelSet::default()).await;
    let (mut stream, _) = tokio::time::timeout(GUEST_TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    g.vm.start().await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("SOCKET-COM-OK") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "COM socket closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUEST_TIMEOUT, read)
        .await
        .expect("guest output on the COM socket");
    // The console log keeps a copy (chardev logfile).
    assert_eq!(wait_bounded(g.vm.as_ref()).await, ExitReason::GuestPoweroff);
    assert!(g.vm.console_tail().contains("SOCKET-COM-OK"));
    finish(&w, g).await;
}

/// Runs only as the child of `dead_controller_takes_its_vm_down`: creates a
/// VM, records QEMU's pid, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdeathsig_helper() {
    let Ok(root) = std::env::var("UVM_PDEATHSIG_HELPER_ROOT") else {
        return;
    };
    let kernel = kernel().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let initrd = initramfs(tmp.path(), "while true; do $B sleep 1; done");
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
