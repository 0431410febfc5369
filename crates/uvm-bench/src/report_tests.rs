//! Unit tests of the report: JSON keys of DESIGN §9 and the table.

use super::*;

#[test]
fn json_has_design_keys() {
    let rep = Report {
        boot: Some(Boot::from_samples(
            "tuned",
            &[10.0, 12.0],
            &[90.0, 100.0],
            &[80.0, 90.0],
        )),
        exec: Some(Exec {
            peer: "qemu-guest-agent".into(),
            median_ms: Some(2.0),
            peer_median_ms: Some(4.0),
            ratio: Some(0.5),
            ..Default::default()
        }),
        stdout_throughput: Some(Throughput::default()),
        terminate: Some(Latency::of(&[1.0])),
        stats: Some(Latency::of(&[1.0])),
        memory: Some(Memory {
            tb_size_mb: Some(32),
            rss_mib: vec![MemoryRow {
                guest_mb: 128,
                ..Default::default()
            }],
        }),
        density: vec![Density {
            vms: 1,
            ..Default::default()
        }],
        hotplug: Some(crate::hotplug::Hotplug {
            add_disk_median_ms: Some(20.0),
            read_file_mib: 64,
            read_scsi_mib_s: Some(200.0),
            read_9p_mib_s: Some(100.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    for k in ["median_ms", "baseline_median_ms", "ratio", "p90_ms"] {
        assert!(v["boot"].get(k).is_some(), "boot.{k}");
    }
    assert_eq!(v["boot"]["median_ms"], 106.0);
    assert_eq!(v["boot"]["ratio"], 106.0 / 85.0);
    for k in ["median_ms", "peer_median_ms", "ratio", "peer", "floor_ms"] {
        assert!(v["exec"].get(k).is_some(), "exec.{k}");
    }
    assert_eq!(v["exec"]["peer"], "qemu-guest-agent");
    for k in ["mib_s", "baseline_mib_s", "ratio"] {
        assert!(
            v["stdout_throughput"].get(k).is_some(),
            "stdout_throughput.{k}"
        );
    }
    assert!(v["terminate"]["median_ms"].is_number() && v["stats"]["median_ms"].is_number());
    assert_eq!(v["memory"]["tb_size_mb"], 32);
    assert_eq!(v["memory"]["rss_mib"][0]["guest_mb"], 128);
    for k in [
        "vms",
        "all_running_s",
        "rss_mib_per_vm",
        "controller_mib_per_vm",
        "failures",
    ] {
        assert!(v["density"][0].get(k).is_some(), "density.{k}");
    }
    for k in ["cpus", "accel", "qemu", "kernel"] {
        assert!(v["machine"].get(k).is_some(), "machine.{k}");
    }
    for k in [
        "add_disk_median_ms",
        "remove_disk_median_ms",
        "add_share_median_ms",
        "read_scsi_mib_s",
        "read_9p_mib_s",
    ] {
        assert!(v["hotplug"].get(k).is_some(), "hotplug.{k}");
    }
    assert!(rep.table().contains("boot tuned create+start ms"));
    let table = rep.table();
    let p9 = table.lines().find(|l| l.contains("9p MiB/s")).unwrap();
    assert!(
        p9.contains("100.0") && p9.contains("200.0") && p9.contains("0.50x"),
        "{p9}"
    );
}

#[test]
fn container_section_in_json_and_table() {
    use crate::container::{ContainerBench, ImageUnpack};
    let absent = Report::default();
    assert!(!absent.table().contains("container create+start"));
    assert!(
        serde_json::from_str::<serde_json::Value>(&absent.to_json()).unwrap()["container"]
            .is_null()
    );
    let rep = Report {
        container: Some(ContainerBench {
            create_start_median_ms: Some(40.0),
            exec_median_ms: Some(12.0),
            first_container_after_boot_ms: Some(90.0),
            plain_exec_median_ms: Some(10.0),
            create_start_over_exec_ms: Some(30.0),
            create_start: Latency::of(&[40.0]),
            plain_exec: Latency::of(&[10.0]),
            exec: Latency::of(&[12.0]),
            image: ImageUnpack {
                layers: 1,
                unpacked_first: 1,
                unpacked_second: 0,
                ..Default::default()
            },
            goal: "create+start ≤ 30 ms over a plain exec (TCG)".into(),
            goal_met: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    for k in [
        "create_start_median_ms",
        "exec_median_ms",
        "first_container_after_boot_ms",
        "plain_exec_median_ms",
        "create_start_over_exec_ms",
        "create_median_ms",
        "start_median_ms",
        "delete_median_ms",
        "goal",
        "goal_met",
    ] {
        assert!(v["container"].get(k).is_some(), "container.{k}");
    }
    for k in [
        "first_unpack_ms",
        "second_unpack_ms",
        "layers",
        "unpacked_first",
        "unpacked_second",
    ] {
        assert!(
            v["container"]["image"].get(k).is_some(),
            "container.image.{k}"
        );
    }
    assert_eq!(v["container"]["create_start_median_ms"], 40.0);
    assert_eq!(v["container"]["image"]["unpacked_second"], 0);
    let table = rep.table();
    let cs = table
        .lines()
        .find(|l| l.contains("container create+start"))
        .expect("container row");
    assert!(
        cs.contains("40.0") && cs.contains("10.0") && cs.contains("4.00x"),
        "{cs}"
    );
    assert!(table.contains("first container after boot"), "{table}");
    assert!(table.contains("+30.0 ms over the plain exec"), "{table}");
    assert!(table.contains(": met;"), "{table}");
    assert!(table.contains("layers unpacked 1 then 0"), "{table}");
}

#[test]
fn containerd_row_has_runc_as_its_baseline_and_says_why_runc_is_missing() {
    use crate::containerd::ContainerdBench;
    assert!(!Report::default().table().contains("ctr run"));
    let rep = Report {
        containerd: Some(ContainerdBench {
            uvm_median_ms: Some(900.0),
            runc_median_ms: Some(100.0),
            ratio: Some(9.0),
            uvm: Latency::of(&[900.0]),
            runc: Latency::of(&[100.0]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t = rep.table();
    let row = t.lines().find(|l| l.contains("ctr run")).expect("row");
    assert!(
        row.contains("900.0") && row.contains("100.0") && row.contains("9.00x"),
        "{row}"
    );
    let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    for k in [
        "uvm_median_ms",
        "runc_median_ms",
        "ratio",
        "runc_unavailable",
    ] {
        assert!(v["containerd"].get(k).is_some(), "containerd.{k}");
    }
    let no_runc = Report {
        containerd: Some(ContainerdBench {
            runc_unavailable: Some("ctr run runc: permission denied".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(no_runc
        .table()
        .contains("runc not measured: ctr run runc: permission denied"));
}

#[test]
fn restore_section_has_the_design_keys_and_judges_the_goals() {
    use crate::restore::RestoreBench;
    assert!(!Report::default().table().contains("restore to Running"));
    let rep = Report {
        restore: Some(RestoreBench {
            median_ms: Some(150.0),
            cold_boot_median_ms: Some(600.0),
            ratio: Some(0.25),
            memory_vms: 4,
            guest_mb: 128,
            snapshot_memory_mib: Some(128.0),
            snapshot_memory_on_disk_mib: Some(50.9),
            rss_mib_per_vm_restored: Some(80.0),
            rss_mib_per_vm_cold: Some(160.0),
            restored_16_all_running_s: Some(1.5),
            cold_4_all_running_s: Some(1.2),
            cold_4_sequential_s: Some(2.0),
            goal_ratio_met: Some(true),
            goal_density_met: Some(true),
            goal_density_concurrent_met: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t = rep.table();
    let row = t
        .lines()
        .find(|l| l.contains("restore to Running"))
        .expect("row");
    assert!(
        row.contains("150.0") && row.contains("600.0") && row.contains("0.25x"),
        "{row}"
    );
    let rss = t
        .lines()
        .find(|l| l.contains("Rss MiB/VM, 4 at once"))
        .expect("rss row");
    assert!(rss.contains("0.50x"), "{rss}");
    assert!(
        t.contains("ratio met, density met (against 4 cold at once: NOT met)"),
        "{t}"
    );
    assert!(
        t.contains(
            "128 MiB guests; snapshot state - MiB, memory file 128.0 MiB (50.9 MiB on disk)"
        ),
        "{t}"
    );
    assert!(
        t.contains("Pss is what shows the sharing") && t.contains("page cache"),
        "{t}"
    );
    assert!(!t.contains("did not reach Running"), "{t}");
    let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    for k in [
        "median_ms",
        "cold_boot_median_ms",
        "ratio",
        "rss_mib_per_vm_restored",
        "rss_mib_per_vm_cold",
        "restored_16_all_running_s",
        "cold_4_all_running_s",
        "cold_4_sequential_s",
        "pss_mib_per_vm_restored",
        "pss_mib_per_vm_cold",
        "errors",
    ] {
        assert!(v["restore"].get(k).is_some(), "restore.{k}");
    }
}

#[test]
fn restore_section_shows_failed_steps_and_vms_that_did_not_run() {
    use crate::restore::RestoreBench;
    let rep = Report {
        restore: Some(RestoreBench {
            median_ms: Some(150.0),
            cold_boot_median_ms: Some(600.0),
            ratio: Some(0.25),
            goal_ratio_met: Some(true),
            restored_16_failures: 2,
            errors: vec!["16 restored started together: start_vm (restored) failed".into()],
            ..Default::default()
        }),
        // What run() adds from the section's errors.
        errors: vec!["restore: 16 restored started together: start_vm (restored) failed".into()],
        ..Default::default()
    };
    let t = rep.table();
    assert!(
        t.contains("2 of 16 restored and 0 of 4 cold VMs did not reach Running"),
        "{t}"
    );
    assert!(
        t.contains("ERROR restore: 16 restored started together"),
        "{t}"
    );
    // The steps that ran keep their numbers; the others are not judged.
    let row = t
        .lines()
        .find(|l| l.contains("restore to Running"))
        .expect("row");
    assert!(row.contains("0.25x"), "{row}");
    assert!(t.contains("density not judged"), "{t}");
    assert!(t.contains("RSS not judged, PSS not judged"), "{t}");
}
