//! Runtime devices of a real VM (issue 14): SCSI disks hot-added, mounted,
//! written and removed; shares bound and unbound; the balloon; vCPU limits.
//! Every test boots its own VM and checks nothing is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::real::{chain, sh, VmGuard};
use uvm::{Controller, CpuLimits, DiskMount, Error, ScsiAddress, State};

/// An ext4 image of `mib` MiB holding `files` (name, content).
fn ext4_image(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&content).unwrap();
    for (f, text) in files {
        std::fs::write(content.join(f), text).unwrap();
    }
    let img = dir.join(format!("{name}.img"));
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// A file of the ext4 image on the host, read with debugfs.
fn host_file_in_image(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{file}"))
        .arg(img)
        .output()
        .expect("debugfs runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn guest_sh(vm: &VmGuard, script: &str) -> String {
    let f = sh(&vm.mgr.guest().unwrap(), script).await;
    f.stdout
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn host_mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn ro() -> DiskMount {
    DiskMount {
        read_only: true,
        ..DiskMount::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_disk_content_writes_read_only_and_removal() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let rw = ext4_image(tmp.path(), "rw", &[("hello", "from the host\n")]);
    let base = ext4_image(tmp.path(), "base", &[("layer", "read-only layer\n")]);

    let (at, _) = vm
        .mgr
        .attach_disk(&rw, false, "/mnt/rw", &DiskMount::default())
        .await
        .unwrap();
    assert_eq!(guest_sh(&vm, "cat /mnt/rw/hello").await, "from the host\n");
    let out = guest_sh(&vm, "echo from-the-guest > /mnt/rw/written && echo ok").await;
    assert_eq!(out, "ok\n");

    // The same image read-only twice is one LUN with two users.
    let (a, _) = vm
        .mgr
        .attach_disk(&base, true, "/mnt/ro1", &ro())
        .await
        .unwrap();
    let b = vm.mgr.add_disk(&base, true).await.unwrap();
    assert_eq!(a, b, "one LUN for one read-only image");
    let inv = vm.mgr.scsi_inventory().await.unwrap();
    assert_eq!(inv.disks.len(), 2, "{inv:?}");
    let out = guest_sh(
        &vm,
        "cat /mnt/ro1/layer; (echo x > /mnt/ro1/new) 2>&1 || echo refused",
    )
    .await;
    assert!(out.starts_with("read-only layer\n"), "{out}");
    assert!(
        out.contains("Read-only file system") && out.ends_with("refused\n"),
        "{out}"
    );

    // Removing the read-write disk unmounts it: the write is in the image.
    vm.mgr.remove_disk(at).await.unwrap();
    assert_eq!(host_file_in_image(&rw, "written"), "from-the-guest\n");
    let sysfs = format!("/sys/bus/scsi/devices/*:0:{}:{}", at.controller, at.lun);
    let out = guest_sh(
        &vm,
        &format!("ls -d {sysfs} 2>/dev/null; grep -c /mnt/rw /proc/mounts"),
    )
    .await;
    assert_eq!(out, "0\n", "disk gone from the guest");

    // One user of the shared LUN left: it stays until the second remove.
    vm.mgr.remove_disk(a).await.unwrap();
    assert_eq!(
        vm.mgr.scsi_inventory().await.unwrap().disks,
        vec![(a.controller, a.lun)]
    );
    vm.mgr.remove_disk(a).await.unwrap();
    let inv = vm.mgr.scsi_inventory().await.unwrap();
    assert!(
        inv.disks.is_empty() && inv.block_nodes.is_empty(),
        "{inv:?}"
    );
    let err = vm.mgr.remove_disk(a).await.unwrap_err();
    assert!(matches!(err, Error::NotAttached { .. }), "{err:?}");
    assert_eq!(guest_sh(&vm, "grep -c ' /mnt/' /proc/mounts").await, "0\n");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_twenty_attach_remove_cycles_leave_nothing_behind() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = ext4_image(tmp.path(), "cycle", &[("n", "1\n")]);
    let pid = vm.pid.unwrap();
    // One warm-up cycle, so lazily opened descriptors are counted before.
    let (at, _) = vm
        .mgr
        .attach_disk(&img, false, "/mnt/c", &DiskMount::default())
        .await
        .unwrap();
    vm.mgr.remove_disk(at).await.unwrap();
    let fds = fd_count(pid);
    for i in 0..20 {
        let read_only = i % 2 == 1;
        let how = DiskMount {
            read_only,
            ..DiskMount::default()
        };
        let (at, _) = match vm.mgr.attach_disk(&img, read_only, "/mnt/c", &how).await {
            Ok(x) => x,
            Err(e) => {
                let d = guest_sh(
                    &vm,
                    "dmesg | tail -30; ls -l /sys/bus/scsi/devices/ /dev/sd*",
                )
                .await;
                panic!("{e:?}\n{d}");
            }
        };
        assert_eq!(guest_sh(&vm, "cat /mnt/c/n").await, "1\n", "cycle {i}");
        vm.mgr.remove_disk(at).await.unwrap();
    }
    let inv = vm.mgr.scsi_inventory().await.unwrap();
    assert!(
        inv.disks.is_empty() && inv.block_nodes.is_empty(),
        "{inv:?}"
    );
    assert_eq!(fd_count(pid), fds, "QEMU descriptors after 20 cycles");
    let out = guest_sh(
        &vm,
        "grep -c /mnt/c /proc/mounts; ls /sys/class/block | grep -c sd",
    )
    .await;
    assert_eq!(out, "0\n0\n");
    assert!(vm.mgr.attached_disks().await.is_empty());
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bad_disks_say_why_and_leave_the_vm_running_with_no_lun_taken() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.img");
    let e = vm
        .mgr
        .attach_disk(&missing, false, "/mnt/a", &DiskMount::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::HostPath { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.img"), "{e}");

    let e = vm
        .mgr
        .attach_disk(tmp.path(), false, "/mnt/a", &DiskMount::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::HostPath { .. }), "{e:?}");
    let text = format!("{e}: {}", chain(&e));
    assert!(text.contains("is a directory"), "{text}");

    let garbage = tmp.path().join("garbage.img");
    std::fs::write(&garbage, vec![0x5au8; 4 << 20]).unwrap();
    let e = vm
        .mgr
        .attach_disk(&garbage, false, "/mnt/a", &DiskMount::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownFileSystem { .. }), "{e:?}");
    assert!(e.to_string().contains("garbage.img"), "{e}");

    // An fs type that does not match: the guest mount fails, typed.
    let how = DiskMount {
        fs_type: "squashfs".into(),
        ..DiskMount::default()
    };
    let e = vm
        .mgr
        .attach_disk(&garbage, false, "/mnt/a", &how)
        .await
        .unwrap_err();
    let text = format!("{e}: {}", chain(&e));
    assert!(matches!(e, Error::DiskMount { .. }), "{e:?}");
    assert!(
        text.contains("garbage.img") && text.contains("/dev/sd"),
        "{text}"
    );

    // A target outside the allowed roots is refused by the agent.
    let img = ext4_image(tmp.path(), "ok", &[("f", "x")]);
    let e = vm
        .mgr
        .attach_disk(&img, false, "/etc", &DiskMount::default())
        .await
        .unwrap_err();
    let text = format!("{e}: {}", chain(&e));
    assert!(text.contains("not allowed"), "{text}");

    let e = vm
        .mgr
        .remove_disk(ScsiAddress {
            controller: 0,
            lun: 7,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotAttached { .. }), "{e:?}");

    assert_eq!(vm.mgr.state(), State::Running);
    assert!(
        vm.mgr.attached_disks().await.is_empty(),
        "every failed attach freed its LUN"
    );
    let inv = vm.mgr.scsi_inventory().await.unwrap();
    assert!(
        inv.disks.is_empty() && inv.block_nodes.is_empty(),
        "{inv:?}"
    );
    // And the LUN is usable again.
    vm.mgr
        .attach_disk(&img, false, "/mnt/a", &DiskMount::default())
        .await
        .unwrap();
    assert_eq!(guest_sh(&vm, "cat /mnt/a/f").await, "x");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_read_only_images_of_squashfs_and_erofs() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tree");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os"), "layer\n").unwrap();
    let mut tried = 0;
    let tools: [(&str, &[&str]); 2] = [
        ("mksquashfs", &["-noappend", "-quiet"]),
        ("mkfs.erofs", &[]),
    ];
    for (i, (tool, extra)) in tools.iter().enumerate() {
        let img = tmp.path().join(format!("{tool}.img"));
        let mut cmd = Command::new(tool);
        if *tool == "mksquashfs" {
            cmd.arg(&src).arg(&img).args(*extra);
        } else {
            cmd.arg(&img).arg(&src);
        }
        let Ok(out) = cmd.output() else {
            eprintln!("{tool} not installed: skipping its image");
            continue;
        };
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tried += 1;
        let target = format!("/mnt/layer{i}");
        let (at, _) = vm
            .mgr
            .attach_disk(&img, true, &target, &ro())
            .await
            .unwrap();
        assert_eq!(
            guest_sh(&vm, &format!("cat {target}/etc/os")).await,
            "layer\n",
            "{tool}"
        );
        vm.mgr.remove_disk(at).await.unwrap();
    }
    eprintln!("{tried} read-only image kinds mounted");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_shares_are_read_only_when_asked_and_removed_without_trace() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP shares: bind mounts need root");
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data"), "shared\n").unwrap();
    let ro_share = vm.mgr.add_share(host.path(), true).await.unwrap();
    vm.mgr
        .mount_share(&ro_share.name, "/mnt/ro", true)
        .await
        .unwrap();
    let rw_share = vm.mgr.add_share(host.path(), false).await.unwrap();
    vm.mgr
        .mount_share(&rw_share.name, "/mnt/rw", false)
        .await
        .unwrap();
    let out = guest_sh(&vm, "cat /mnt/ro/data; (echo no > /mnt/ro/x) 2>&1 || echo refused; echo yes > /mnt/rw/from-guest && echo written").await;
    assert!(
        out.starts_with("shared\n") && out.contains("Read-only file system"),
        "{out}"
    );
    assert!(out.ends_with("refused\nwritten\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("from-guest")).unwrap(),
        "yes\n"
    );
    assert!(!host.path().join("x").exists());

    // A single file can be shared too.
    let file = vm
        .mgr
        .add_share(&host.path().join("data"), true)
        .await
        .unwrap();
    vm.mgr
        .mount_share(&file.name, "/mnt/one/data", true)
        .await
        .unwrap();
    assert_eq!(guest_sh(&vm, "cat /mnt/one/data").await, "shared\n");

    let root = vm.runtime_root.path().to_path_buf();
    assert!(!host_mounts_under(&root).is_empty());
    for s in [&ro_share, &rw_share, &file] {
        vm.mgr.remove_share(&s.name).await.unwrap();
    }
    assert!(vm.mgr.shares().await.is_empty());
    let export = vm.mgr.utility_vm().unwrap().runtime_dir().join("shares");
    let entries: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(entries.is_empty(), "left in the share export: {entries:?}");
    let out = guest_sh(
        &vm,
        "grep -c ' /mnt/' /proc/mounts; ls /run/uvm/shares | wc -l",
    )
    .await;
    assert_eq!(out, "0\n0\n");
    let left: Vec<_> = host_mounts_under(&root)
        .into_iter()
        .filter(|m| !m.ends_with("/shares"))
        .collect();
    assert!(left.is_empty(), "binds left: {left:?}");
    let e = vm.mgr.remove_share(&ro_share.name).await.unwrap_err();
    assert!(matches!(e, Error::NotAttached { .. }), "{e:?}");
    let e = vm
        .mgr
        .add_share(&host.path().join("nope"), true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    vm.finish().await;
    assert!(host_mounts_under(&root).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_terminate_with_disks_and_shares_attached_leaves_no_mount() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = ext4_image(tmp.path(), "t", &[("f", "x")]);
    vm.mgr
        .attach_disk(&img, false, "/mnt/d", &DiskMount::default())
        .await
        .unwrap();
    if nix::unistd::geteuid().is_root() {
        let s = vm.mgr.add_share(tmp.path(), true).await.unwrap();
        vm.mgr.mount_share(&s.name, "/mnt/s", true).await.unwrap();
    }
    let root = vm.runtime_root.path().to_path_buf();
    vm.finish().await;
    assert!(host_mounts_under(&root).is_empty());
}

/// MemTotal in KiB.
async fn mem_total_kib(vm: &VmGuard) -> u64 {
    let out = guest_sh(vm, "awk '/MemTotal/ {print $2}' /proc/meminfo").await;
    out.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_balloon_moves_guest_memory_and_stats_follow() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let before = mem_total_kib(&vm).await;
    vm.mgr.update_memory(160 << 20).await.unwrap();
    let small = mem_total_kib(&vm).await;
    assert!(
        before - small >= 90 * 1024,
        "MemTotal {before} KiB -> {small} KiB"
    );
    let stats = vm.mgr.stats().await.unwrap();
    let mem = stats.memory.as_ref().unwrap().vm_memory.as_ref().unwrap();
    assert_eq!(mem.assigned_memory, 160 << 20);
    assert!(
        (mem.available_memory as u64) < small / 1024,
        "MemAvailable {} MiB within MemTotal {small} KiB",
        mem.available_memory
    );
    vm.mgr.update_memory(256 << 20).await.unwrap();
    let back = mem_total_kib(&vm).await;
    assert!(
        back >= before - 1024,
        "MemTotal back to {back} KiB of {before}"
    );
    let e = vm.mgr.update_memory(1 << 20).await.unwrap_err();
    assert!(matches!(e, Error::InvalidMemory { .. }), "{e:?}");
    let e = vm.mgr.update_memory(512 << 20).await.unwrap_err();
    assert!(matches!(e, Error::InvalidMemory { .. }), "{e:?}");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cpu_limits_apply_or_say_why_not() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let limits = CpuLimits {
        max_cpus: Some(0.5),
        weight: Some(50),
    };
    match vm.mgr.update_cpu(limits).await {
        Ok(cgroup) => {
            let max = std::fs::read_to_string(cgroup.join("cpu.max")).unwrap();
            assert_eq!(max.trim(), "50000 100000");
            let threads = std::fs::read_to_string(cgroup.join("vcpus/cgroup.threads")).unwrap();
            assert!(!threads.trim().is_empty(), "vCPU threads moved");
        }
        Err(e) => {
            let text = format!("{e}: {}", chain(&e));
            assert!(text.contains("cannot limit the VM's CPU"), "{text}");
            eprintln!("no writable cgroup v2 here: {text}");
        }
    }
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_device_calls_need_running() {
    let Some(vm) = VmGuard::create(256).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = ext4_image(tmp.path(), "s", &[("f", "x")]);
    let e = vm.mgr.add_disk(&img, false).await.unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
    let e = vm.mgr.update_memory(128 << 20).await.unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
    let e = vm.mgr.add_share(tmp.path(), true).await.unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
    vm.finish().await;
}
