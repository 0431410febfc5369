//! The runtime device layer on the fake backend: a full controller, failed
//! attaches leave nothing, the unmount-then-detach order, and state errors.

mod common;

use common::{env, Faults};
use uvm::{Controller, DiskMount, Error, ScsiAddress, State};
use uvm_guest::testing::FakeGcsConfig;

fn images(dir: &std::path::Path, n: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("d{i}.img"));
            std::fs::write(&p, vec![0u8; 4096]).unwrap();
            p
        })
        .collect()
}

fn ext4() -> DiskMount {
    DiskMount {
        fs_type: "ext4".into(),
        ..DiskMount::default()
    }
}

#[tokio::test]
async fn a_full_controller_is_a_clear_error_and_attaches_nothing() {
    let e = env(Faults::default());
    e.run().await;
    let imgs = images(e.files.path(), 65);
    let mut seen = std::collections::BTreeSet::new();
    for img in &imgs[..64] {
        let at = e.mgr.add_disk(img, false).await.unwrap();
        assert!(seen.insert(at), "{at} given twice");
    }
    let err = e.mgr.add_disk(&imgs[64], false).await.unwrap_err();
    assert!(matches!(err, Error::ScsiFull { .. }), "{err:?}");
    assert!(
        err.to_string().contains("d64.img") || err.to_string().contains("full"),
        "{err}"
    );
    let vm = e.hv.last_vm();
    assert_eq!(
        vm.disks.lock().unwrap().len(),
        64,
        "no half-attached 65th disk"
    );
    // A removed LUN is reused.
    let freed = ScsiAddress {
        controller: 0,
        lun: 5,
    };
    e.mgr.remove_disk(freed).await.unwrap();
    assert_eq!(e.mgr.add_disk(&imgs[64], false).await.unwrap(), freed);
    assert_eq!(e.mgr.state(), State::Running);
    e.finish().await;
}

#[tokio::test]
async fn a_failed_hot_add_or_mount_frees_the_lun() {
    let faults = Faults {
        gcs: FakeGcsConfig {
            disk_mount_fails: true,
            ..FakeGcsConfig::default()
        },
        ..Faults::default()
    };
    let e = env(faults);
    e.run().await;
    let img = images(e.files.path(), 1).remove(0);
    let err = e
        .mgr
        .attach_disk(&img, false, "/mnt/d", &ext4())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DiskMount { .. }), "{err:?}");
    assert!(err.to_string().contains("d0.img"), "{err}");
    let vm = e.hv.last_vm();
    assert!(
        vm.disks.lock().unwrap().is_empty(),
        "the disk whose mount failed is unplugged"
    );
    assert!(e.mgr.attached_disks().await.is_empty());
    let rec = vm.gcs.record();
    assert_eq!(
        rec.removed_disks,
        vec![(0, 0)],
        "the guest detached it first"
    );

    e.hv.set_faults(|f| f.hot_add_fails = true);
    let err = e.mgr.add_disk(&img, false).await.unwrap_err();
    assert!(matches!(err, Error::DiskAttach { .. }), "{err:?}");
    e.hv.set_faults(|f| f.hot_add_fails = false);
    assert!(e.mgr.attached_disks().await.is_empty());
    assert_eq!(
        e.mgr.add_disk(&img, false).await.unwrap(),
        ScsiAddress {
            controller: 0,
            lun: 0
        }
    );
    e.finish().await;
}

#[tokio::test]
async fn remove_unmounts_in_the_guest_then_detaches_then_unplugs() {
    let e = env(Faults::default());
    e.run().await;
    let img = images(e.files.path(), 1).remove(0);
    let (at, dev) = e
        .mgr
        .attach_disk(&img, false, "/mnt/d", &ext4())
        .await
        .unwrap();
    assert_eq!(dev, "/dev/sda");
    let vm = e.hv.last_vm();
    let rec = vm.gcs.record();
    assert_eq!(rec.mounts.len(), 1);
    assert_eq!(rec.mounts[0].target, "/mnt/d");
    assert_eq!(rec.mounts[0].fs_type, "ext4");
    e.mgr.remove_disk(at).await.unwrap();
    let rec = vm.gcs.record();
    assert_eq!(rec.unmounts, vec!["/mnt/d".to_string()]);
    assert_eq!(rec.removed_disks, vec![(at.controller, at.lun)]);
    assert!(vm.disks.lock().unwrap().is_empty());
    // Read-only twice: one LUN; the fake QEMU sees one device.
    let a = e.mgr.add_disk(&img, true).await.unwrap();
    let b = e.mgr.add_disk(&img, true).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(vm.disks.lock().unwrap().len(), 1);
    // The same image read-write while read-only users hold it: refused.
    let err = e.mgr.add_disk(&img, false).await.unwrap_err();
    assert!(matches!(err, Error::DiskInUse { .. }), "{err:?}");
    e.finish().await;
}

#[tokio::test]
async fn device_calls_outside_running_are_invalid_state() {
    for state in [State::NotCreated, State::Created, State::Terminated] {
        let e = env(Faults::default());
        e.reach(state).await;
        let img = images(e.files.path(), 1).remove(0);
        let errs = [
            e.mgr.add_disk(&img, false).await.unwrap_err(),
            e.mgr
                .remove_disk(ScsiAddress {
                    controller: 0,
                    lun: 0,
                })
                .await
                .unwrap_err(),
            e.mgr.update_memory(128 << 20).await.unwrap_err(),
            e.mgr.add_share(e.files.path(), true).await.unwrap_err(),
            e.mgr.unmount("/mnt/x").await.unwrap_err(),
        ];
        for err in errs {
            assert!(
                matches!(err, Error::InvalidState { .. }),
                "{state:?}: {err:?}"
            );
        }
        if state != State::NotCreated {
            e.finish().await;
        }
    }
}
