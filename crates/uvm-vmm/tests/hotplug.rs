//! Runtime devices of a real QEMU VM, seen from the host: SCSI disks added
//! and removed over QMP leave nothing behind in QEMU, the balloon moves,
//! share binds go away with the VM.

mod common;

use common::*;
use uvm_schema::LcowDocumentBuilder;
use uvm_vmm::{ChannelSet, DiskAttachment, UtilityVm};

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_come_and_go_without_leaving_luns_nodes_or_fds() {
    let Some(kernel) = kernel_or_skip("hotplug") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let img = w.path("d.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let doc_disk = w.path("doc.raw");
    std::fs::write(&doc_disk, vec![0u8; 1 << 20]).unwrap();
    let initrd = initramfs(w.tmp.path(), &format!("{MOUNTS}\necho READY; $B sleep 600"));
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(256)
        .processors(1)
        .cmdline(cmdline())
        .scsi_disk(&doc_disk, true)
        .build();
    let g = boot(&w, "vm-hotplug", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    wait_console(&g.vm, "READY").await;
    let pid = g.vm.pid().unwrap();
    let before = g.vm.scsi_inventory().await.unwrap();
    assert_eq!(before.disks, vec![(0, 0)], "the document's disk");
    let fds = fd_count(pid);
    for i in 0..20 {
        let lun = 1 + i % 3;
        let a = DiskAttachment {
            path: img.clone(),
            read_only: i % 2 == 0,
            controller: 0,
            lun,
        };
        g.vm.hot_add_disk(&a).await.unwrap();
        let inv = g.vm.scsi_inventory().await.unwrap();
        assert_eq!(inv.disks, vec![(0, 0), (0, lun)], "cycle {i}");
        assert!(
            inv.block_nodes.contains(&format!("disk-0-{lun}")),
            "{inv:?}"
        );
        g.vm.hot_remove_disk(0, lun).await.unwrap();
    }
    let after = g.vm.scsi_inventory().await.unwrap();
    assert_eq!(
        after, before,
        "QEMU holds the same devices and block nodes as before"
    );
    assert_eq!(
        fd_count(pid),
        fds,
        "QEMU holds as many fds as before the cycles"
    );

    // Removing what is not there is QEMU's clear error, and changes nothing.
    let e = g.vm.hot_remove_disk(0, 7).await.unwrap_err().to_string();
    assert!(e.contains("scsi-0-7"), "{e}");
    // A missing image and a directory fail before QEMU sees them.
    let missing = DiskAttachment {
        path: w.path("nope.raw"),
        read_only: true,
        controller: 0,
        lun: 1,
    };
    assert!(g
        .vm
        .hot_add_disk(&missing)
        .await
        .unwrap_err()
        .to_string()
        .contains("nope.raw"));
    let dir = DiskAttachment {
        path: w.tmp.path().to_path_buf(),
        ..missing.clone()
    };
    assert!(g.vm.hot_add_disk(&dir).await.is_err());
    // A LUN already taken: device_add fails and the new block node is dropped again.
    let dup = DiskAttachment {
        path: img.clone(),
        read_only: true,
        controller: 0,
        lun: 0,
    };
    assert!(g.vm.hot_add_disk(&dup).await.is_err());
    assert_eq!(g.vm.scsi_inventory().await.unwrap(), before);

    // Balloon: down to 160 MiB and back up.
    for mib in [160u64, 256] {
        g.vm.set_memory_target(mib << 20).await.unwrap();
        let t = std::time::Instant::now();
        while g.vm.memory_actual().await.unwrap() != mib << 20 {
            assert!(
                t.elapsed() < GUEST_TIMEOUT,
                "balloon stuck at {}",
                g.vm.memory_actual().await.unwrap()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            g.vm.statistics().await.unwrap().assigned_memory_bytes,
            mib << 20
        );
    }
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_binds_are_read_only_when_asked_and_go_with_the_vm() {
    let Some(kernel) = kernel_or_skip("share binds") else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP share binds: bind mounts need root");
        return;
    }
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let host = w.path("data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f.txt"), "HOST").unwrap();
    let initrd = initramfs(w.tmp.path(), &format!("{MOUNTS}\necho READY; $B sleep 600"));
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .build();
    let g = boot(&w, "vm-shares", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let export = g.vm.share_export();
    g.vm.bind_share("ro", &host, true).await.unwrap();
    g.vm.bind_share("rw", &host, false).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(export.join("ro/f.txt")).unwrap(),
        "HOST"
    );
    let e = std::fs::write(export.join("ro/new"), "x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "a read-only bind refuses writes"
    );
    std::fs::write(export.join("rw/new"), "x").unwrap();
    assert_eq!(std::fs::read_to_string(host.join("new")).unwrap(), "x");
    g.vm.unbind_share("rw").await.unwrap();
    assert!(!export.join("rw").exists());
    assert!(
        g.vm.unbind_share("rw").await.is_err(),
        "a share removed twice"
    );
    // "ro" is still bound when the VM closes: close unmounts it and removes
    // the runtime dir without touching the host files.
    finish(&w, g).await;
    assert_eq!(std::fs::read_to_string(host.join("f.txt")).unwrap(), "HOST");
    assert!(host.join("new").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(w.root.to_str().unwrap()), "{mounts}");
}
