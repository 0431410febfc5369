//! Runtime devices, measured side by side in one VM (issue 14): hot-add and
//! remove of a SCSI disk, add/remove of a share, and a cold read of the same
//! 64 MiB file from the virtio-scsi disk and from the 9p share.
//! Prints a table and a JSON line.
//! `cargo run --release -p uvm-bench --example devices_ab -- [RUNS]`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use uvm::{DiskMount, Manager};
use uvm_bench::ours::{self, OurVm};
use uvm_bench::stats::{median, ms};

const FILE_MIB: usize = 64;

fn make_image(dir: &Path, content: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(content)
        .arg(&img)
        .arg(format!("{}M", FILE_MIB + 32))
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Milliseconds of a cold `cat FILE > /dev/null` in the guest, less the
/// cost of an exec.
async fn cold_read_ms(vm: &OurVm, file: &str, exec_floor: f64) -> f64 {
    let (code, _) = vm
        .exec(
            &["/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"],
            None,
        )
        .await
        .expect("drop caches");
    assert_eq!(code, 0);
    let script = format!("cat {file} > /dev/null");
    let (code, d) = vm
        .exec(&["/bin/sh", "-c", &script], None)
        .await
        .expect("read");
    assert_eq!(code, 0, "reading {file}");
    (ms(d) - exec_floor).max(0.001)
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let tmp = tempfile::tempdir().expect("temp dir");
    let content = tmp.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={FILE_MIB}"))
        .arg(format!("of={}", content.join("big").display()))
        .status()
        .expect("dd");
    assert!(status.success());
    let img = make_image(tmp.path(), &content);

    let vm = OurVm::boot_with(Manager::new(), "devices-ab", &image, 256, 1)
        .await
        .expect("boot");
    let mut floor = Vec::new();
    for _ in 0..10 {
        floor.push(ours::exec_true_ms(&vm).await.expect("exec"));
    }
    let floor = median(&floor).unwrap();

    let (mut add, mut remove, mut share_add, mut share_remove) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs.max(3) * 2 {
        let t = Instant::now();
        let at = vm.mgr.add_disk(&img, true).await.expect("add_disk");
        add.push(ms(t.elapsed()));
        let t = Instant::now();
        vm.mgr.remove_disk(at).await.expect("remove_disk");
        remove.push(ms(t.elapsed()));
        let t = Instant::now();
        let s = vm.mgr.add_share(&content, true).await.expect("add_share");
        share_add.push(ms(t.elapsed()));
        let t = Instant::now();
        vm.mgr.remove_share(&s.name).await.expect("remove_share");
        share_remove.push(ms(t.elapsed()));
    }

    let ro = DiskMount {
        read_only: true,
        ..DiskMount::default()
    };
    vm.mgr
        .attach_disk(&img, true, "/mnt/d", &ro)
        .await
        .expect("attach");
    let s = vm.mgr.add_share(&content, true).await.expect("share");
    vm.mgr
        .mount_share(&s.name, "/mnt/s", true)
        .await
        .expect("mount share");
    let (mut scsi, mut p9) = (vec![], vec![]);
    for _ in 0..runs {
        scsi.push(cold_read_ms(&vm, "/mnt/d/big", floor).await);
        p9.push(cold_read_ms(&vm, "/mnt/s/big", floor).await);
    }
    vm.terminate().await.expect("terminate");

    let mibps = |v: &[f64]| FILE_MIB as f64 / (median(v).unwrap() / 1000.0);
    let rows = [
        (
            "add_disk (blockdev-add + device_add)",
            median(&add).unwrap(),
            "ms",
        ),
        (
            "remove_disk (guest delete + device_del + DEVICE_DELETED)",
            median(&remove).unwrap(),
            "ms",
        ),
        ("add_share (host bind)", median(&share_add).unwrap(), "ms"),
        (
            "remove_share (host unbind)",
            median(&share_remove).unwrap(),
            "ms",
        ),
        ("cold read, virtio-scsi ext4", mibps(&scsi), "MiB/s"),
        ("cold read, virtio-9p share", mibps(&p9), "MiB/s"),
    ];
    println!("{:<58} {:>10}", "devices (median)", "value");
    for (what, v, unit) in rows {
        println!("{what:<58} {v:>8.1} {unit}");
    }
    let json = serde_json::json!({
        "runs": runs,
        "file_mib": FILE_MIB,
        "add_disk_ms": median(&add),
        "remove_disk_ms": median(&remove),
        "add_share_ms": median(&share_add),
        "remove_share_ms": median(&share_remove),
        "read_scsi_mib_s": mibps(&scsi),
        "read_9p_mib_s": mibps(&p9),
        "exec_floor_ms": floor,
    });
    println!("{json}");
}
