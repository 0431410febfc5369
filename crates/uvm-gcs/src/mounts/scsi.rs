//! Finding a SCSI disk by (controller, LUN) through sysfs, never by
//! guessing `/dev/sdX`.
//!
//! The host gives each VM one virtio-scsi HBA; controller `C` is its SCSI
//! target `C` on channel 0, so the disk at (C, L) is the sysfs device
//! `H:0:C:L`, where `H` is the guest's number for the virtio-scsi host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A disk found in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `/sys/bus/scsi/devices/H:0:C:L`.
    pub sysfs: PathBuf,
    /// The block device name (`sda`).
    pub block: String,
    /// The device node, as the guest names it (`/dev/sda`).
    pub node: String,
    /// `major:minor`.
    pub dev: String,
}

/// The guest's virtio-scsi host number, if the HBA is there.
pub fn virtio_host(root: &Path) -> Option<u32> {
    let dir = std::fs::read_dir(root.join("sys/class/scsi_host")).ok()?;
    let mut hosts: Vec<u32> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("host")?.parse().ok()?;
            let proc_name = std::fs::read_to_string(e.path().join("proc_name")).ok()?;
            (proc_name.trim() == "virtio_scsi").then_some(n)
        })
        .collect();
    hosts.sort_unstable();
    hosts.first().copied()
}

/// The disk at (`controller`, `lun`) now, with its device node present.
pub fn find(root: &Path, controller: u32, lun: u32) -> Option<Found> {
    let host = virtio_host(root)?;
    let sysfs = root.join(format!("sys/bus/scsi/devices/{host}:0:{controller}:{lun}"));
    let block = std::fs::read_dir(sysfs.join("block"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .min()?;
    let dir = sysfs.join("block").join(&block);
    // A disk still being probed has no capacity yet.
    let sectors: u64 = std::fs::read_to_string(dir.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if sectors == 0 {
        return None;
    }
    let dev = std::fs::read_to_string(dir.join("dev")).ok()?;
    let node = format!("/dev/{block}");
    std::fs::symlink_metadata(root.join(&node[1..])).ok()?;
    Some(Found {
        sysfs,
        block,
        node,
        dev: dev.trim().to_string(),
    })
}

/// Waits up to `bound` for the disk, backing off from 1 to 10 ms. Halfway
/// through it asks the HBA once to scan the address, in case the hot-plug
/// event was missed.
pub fn wait(root: &Path, controller: u32, lun: u32, bound: Duration) -> Option<Found> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut scanned = false;
    loop {
        if let Some(f) = find(root, controller, lun) {
            return Some(f);
        }
        let elapsed = start.elapsed();
        if elapsed >= bound {
            return None;
        }
        if !scanned && elapsed >= bound / 2 {
            scanned = true;
            if let Some(host) = virtio_host(root) {
                let scan = root.join(format!("sys/class/scsi_host/host{host}/scan"));
                if let Err(e) = std::fs::write(&scan, format!("0 {controller} {lun}")) {
                    tracing::debug!(error = %e, "scsi scan failed");
                }
            }
        }
        std::thread::sleep(pause.min(bound - elapsed));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Asks the kernel to drop the disk and waits up to `bound` for its sysfs
/// device to go. Returns whether it went.
pub fn delete(found: &Found, bound: Duration) -> std::io::Result<bool> {
    std::fs::write(found.sysfs.join("delete"), "1")?;
    let start = Instant::now();
    while start.elapsed() < bound {
        if !found.sysfs.exists() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(!found.sysfs.exists())
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs + /dev tree for unit tests.
    use std::path::Path;

    /// Adds a virtio-scsi host `h` (and a non-virtio host `h + 1`).
    pub fn host(root: &Path, h: u32) {
        for (n, name) in [(h, "virtio_scsi"), (h + 1, "ata_piix")] {
            let d = root.join(format!("sys/class/scsi_host/host{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("proc_name"), format!("{name}\n")).unwrap();
        }
    }

    /// Adds the disk `h:0:c:l` as block device `name` with node `/dev/name`.
    pub fn disk(root: &Path, h: u32, c: u32, l: u32, name: &str, dev: &str) {
        let d = root.join(format!("sys/bus/scsi/devices/{h}:0:{c}:{l}/block/{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::write(d.join("size"), "16384\n").unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev").join(name), b"").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_disk_by_address_on_the_virtio_host() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(find(root.path(), 0, 1), None);
        fake::host(root.path(), 2);
        // A disk at the same address on the other host is not ours.
        fake::disk(root.path(), 3, 0, 1, "sda", "8:0");
        assert_eq!(find(root.path(), 0, 1), None);
        fake::disk(root.path(), 2, 0, 1, "sdb", "8:16");
        let f = find(root.path(), 0, 1).unwrap();
        assert_eq!(f.node, "/dev/sdb");
        assert_eq!(f.dev, "8:16");
        assert_eq!(find(root.path(), 1, 1), None);
    }

    #[test]
    fn wait_is_bounded_and_scans_once() {
        let root = tempfile::tempdir().unwrap();
        fake::host(root.path(), 0);
        let start = Instant::now();
        assert_eq!(wait(root.path(), 0, 3, Duration::from_millis(60)), None);
        assert!(start.elapsed() >= Duration::from_millis(60));
        let scan = std::fs::read_to_string(root.path().join("sys/class/scsi_host/host0/scan"));
        assert_eq!(scan.unwrap(), "0 0 3");
    }

    #[test]
    fn wait_sees_a_disk_that_appears_late() {
        let root = tempfile::tempdir().unwrap();
        fake::host(root.path(), 0);
        let r = root.path().to_path_buf();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            fake::disk(&r, 0, 0, 2, "sdc", "8:32");
        });
        let f = wait(root.path(), 0, 2, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(f.block, "sdc");
    }
}
