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
