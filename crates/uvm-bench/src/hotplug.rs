//! The `hotplug` section: runtime devices of one running VM, measured side
//! by side: disk hot-add/remove, share add/remove, and a cold read of the
//! same file from a virtio-scsi ext4 disk and from the 9p share export.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;
use uvm::DiskMount;

use crate::ours::{self, OurVm};
use crate::report::Latency;
use crate::stats::{median, ms};
use crate::BenchError;

/// What the section reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hotplug {
    /// Median of `add_disk`, ms (the key).
    pub add_disk_median_ms: Option<f64>,
    /// Median of `remove_disk`, ms.
    pub remove_disk_median_ms: Option<f64>,
    /// Median of `add_share`, ms.
    pub add_share_median_ms: Option<f64>,
    /// `add_disk`: blockdev-add + device_add (not yet mounted).
    pub add_disk: Latency,
    /// `attach_disk`: added and mounted, usable in the guest.
    pub add_disk_usable: Latency,
    /// `remove_disk` of a mounted disk: guest unmount + detach, device_del
    /// until DEVICE_DELETED, blockdev-del.
    pub remove_disk: Latency,
    /// `add_share`: the host bind in the export.
    pub add_share: Latency,
    /// `remove_share`.
    pub remove_share: Latency,
    /// Size of the file read, MiB.
    pub read_file_mib: usize,
    /// Cold read from the virtio-scsi disk, MiB/s (median run).
    pub read_scsi_mib_s: Option<f64>,
    /// Cold read from the 9p share, MiB/s (median run).
    pub read_9p_mib_s: Option<f64>,
    /// Why virtiofs is not measured.
    pub virtiofs: String,
}

fn bench_err(what: &'static str) -> impl FnOnce(uvm::Error) -> BenchError {
    move |source| BenchError::Controller { what, source }
}

/// A `size_mib`-sized random file in `dir/content/big` and an ext4 image of
/// that directory.
fn make_inputs(dir: &Path, size_mib: usize) -> Result<(PathBuf, PathBuf), BenchError> {
    let content = dir.join("hotplug-content");
    std::fs::create_dir_all(&content).map_err(|e| BenchError::io("content dir", e))?;
    let mut data = vec![0u8; size_mib << 20];
    rand_fill(&mut data);
    std::fs::write(content.join("big"), &data).map_err(|e| BenchError::io("content file", e))?;
    let img = dir.join("hotplug.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg(format!("{}M", size_mib + 32))
        .output()
        .map_err(|e| BenchError::io("mkfs.ext4 (apt-get install e2fsprogs)", e))?;
    if !out.status.success() {
        return Err(BenchError::Protocol(format!(
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok((img, content))
}

/// Incompressible bytes without a crate: xorshift64*.
fn rand_fill(buf: &mut [u8]) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Milliseconds of a cold `cat FILE > /dev/null` in the guest, less an
/// exec's own cost.
async fn cold_read_ms(vm: &OurVm, file: &str, exec_floor: f64) -> Result<f64, BenchError> {
    let drop_caches = ["/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"];
    let (code, _) = vm.exec(&drop_caches, None).await?;
    if code != 0 {
        return Err(BenchError::Protocol(
            "dropping the guest's caches failed".into(),
        ));
    }
    let script = format!("cat {file} > /dev/null");
    let (code, d) = vm.exec(&["/bin/sh", "-c", &script], None).await?;
    if code != 0 {
        return Err(BenchError::Protocol(format!(
            "reading {file} exited {code}"
        )));
    }
    Ok((ms(d) - exec_floor).max(0.001))
}

/// Runs the section on the running `vm`, with inputs under `dir`.
pub async fn section(
    vm: &OurVm,
    runs: usize,
    size_mib: usize,
    dir: &Path,
) -> Result<Hotplug, BenchError> {
    let (img, content) = make_inputs(dir, size_mib)?;
    let mut floor = Vec::new();
    for _ in 0..10 {
        floor.push(ours::exec_true_ms(vm).await?);
    }
    let floor = median(&floor).unwrap_or(0.0);
    let (mut add, mut usable, mut remove, mut sadd, mut srm) =
        (vec![], vec![], vec![], vec![], vec![]);
    let how = DiskMount {
        read_only: true,
        ..DiskMount::default()
    };
    for _ in 0..runs {
        let t = Instant::now();
        let at = vm
            .mgr
            .add_disk(&img, true)
            .await
            .map_err(bench_err("add_disk"))?;
        add.push(ms(t.elapsed()));
        vm.mgr
            .remove_disk(at)
            .await
            .map_err(bench_err("remove_disk"))?;
        let t = Instant::now();
        let (at, _) = vm
            .mgr
            .attach_disk(&img, true, "/mnt/bench", &how)
            .await
            .map_err(bench_err("attach_disk"))?;
        usable.push(ms(t.elapsed()));
        let t = Instant::now();
        vm.mgr
            .remove_disk(at)
            .await
            .map_err(bench_err("remove_disk"))?;
        remove.push(ms(t.elapsed()));
        let t = Instant::now();
        let s = vm
            .mgr
            .add_share(&content, true)
            .await
            .map_err(bench_err("add_share"))?;
        sadd.push(ms(t.elapsed()));
        let t = Instant::now();
        vm.mgr
            .remove_share(&s.name)
            .await
            .map_err(bench_err("remove_share"))?;
        srm.push(ms(t.elapsed()));
    }
    let (at, _) = vm
        .mgr
        .attach_disk(&img, true, "/mnt/bench-disk", &how)
        .await
        .map_err(bench_err("attach_disk"))?;
    let s = vm
        .mgr
        .add_share(&content, true)
        .await
        .map_err(bench_err("add_share"))?;
    vm.mgr
        .mount_share(&s.name, "/mnt/bench-share", true)
        .await
        .map_err(bench_err("mount_share"))?;
    let (mut scsi, mut p9) = (vec![], vec![]);
    for _ in 0..runs {
        scsi.push(cold_read_ms(vm, "/mnt/bench-disk/big", floor).await?);
        p9.push(cold_read_ms(vm, "/mnt/bench-share/big", floor).await?);
    }
    vm.mgr
        .remove_share(&s.name)
        .await
        .map_err(bench_err("remove_share"))?;
    vm.mgr
        .remove_disk(at)
        .await
        .map_err(bench_err("remove_disk"))?;
    let mib_s = |v: &[f64]| median(v).map(|m| size_mib as f64 / (m / 1000.0));
    Ok(Hotplug {
        add_disk_median_ms: median(&add),
        remove_disk_median_ms: median(&remove),
        add_share_median_ms: median(&sadd),
        add_disk: Latency::of(&add),
        add_disk_usable: Latency::of(&usable),
        remove_disk: Latency::of(&remove),
        add_share: Latency::of(&sadd),
        remove_share: Latency::of(&srm),
        read_file_mib: size_mib,
        read_scsi_mib_s: mib_s(&scsi),
        read_9p_mib_s: mib_s(&p9),
        virtiofs: "not measured: Debian 12 packages no virtiofsd (only QEMU 7.2's deprecated C daemon in qemu-system-common), and uvm has no vhost-user-fs device yet".into(),
    })
}
