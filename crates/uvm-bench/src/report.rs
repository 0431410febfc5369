//! The benchmark report: JSON (DESIGN §9 keys) and a text table with the same numbers.

use crate::stats::{ratio, Summary};
use serde::Serialize;
use std::fmt::Write;

/// Where and how the numbers were taken.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineInfo {
    /// Host CPUs.
    pub cpus: usize,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `qemu-system-x86_64 --version`.
    pub qemu: String,
    /// Kernel images measured, `kind: path`.
    pub kernel: Vec<String>,
    /// `/proc/loadavg` when the run started and ended.
    pub loadavg: Vec<String>,
    /// Quick mode.
    pub quick: bool,
    /// Iterations per measurement.
    pub runs: usize,
}

/// Boot to Running (ours) next to raw boot to first byte (baseline).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Boot {
    /// Kernel kind.
    pub kernel: String,
    /// create_vm + start_vm, median ms.
    pub median_ms: Option<f64>,
    /// create_vm + start_vm, p90 ms.
    pub p90_ms: Option<f64>,
    /// create_vm alone.
    pub create: Summary,
    /// start_vm alone.
    pub start: Summary,
    /// Raw QEMU spawn to first byte, median ms.
    pub baseline_median_ms: Option<f64>,
    /// Raw QEMU spawn to first byte, p90 ms.
    pub baseline_p90_ms: Option<f64>,
    /// median / baseline_median.
    pub ratio: Option<f64>,
    /// Baseline: QEMU spawn to QEMU connecting its port chardev (early in
    /// QEMU's start-up; part of `baseline_median_ms`).
    pub baseline_chardev: Summary,
}

impl Boot {
    /// Fills medians and the ratio from samples (ms).
    pub fn from_samples(kernel: &str, create: &[f64], start: &[f64], base: &[f64]) -> Self {
        let sum: Vec<f64> = create.iter().zip(start).map(|(a, b)| a + b).collect();
        let (s, b) = (Summary::of(&sum), Summary::of(base));
        Boot {
            kernel: kernel.into(),
            median_ms: s.median,
            p90_ms: s.p90,
            create: Summary::of(create),
            start: Summary::of(start),
            baseline_median_ms: b.median,
            baseline_p90_ms: b.p90,
            ratio: ratio(s.median, b.median),
            baseline_chardev: Summary::default(),
        }
    }
}

/// Exec round trip of `true`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exec {
    /// Ours, median ms.
    pub median_ms: Option<f64>,
    /// Ours, p90 ms.
    pub p90_ms: Option<f64>,
    /// Peer, median ms.
    pub peer_median_ms: Option<f64>,
    /// Peer, p90 ms.
    pub peer_p90_ms: Option<f64>,
    /// median / peer_median.
    pub ratio: Option<f64>,
    /// Always "qemu-guest-agent".
    pub peer: String,
    /// guest-exec-status poll interval of the peer client.
    pub peer_poll_ms: f64,
    /// Peer VM spawn to first guest-sync reply.
    pub peer_ready_ms: Option<f64>,
    /// fork+exec+wait of `true` inside the guest, ms per iteration.
    pub floor_ms: Option<f64>,
    /// The same floor measured in the peer's guest (via guest-exec).
    pub peer_floor_ms: Option<f64>,
    /// How the floor was measured.
    pub floor_method: String,
    /// Ours, the first exec after boot (one sample): code the guest runs for
    /// the first time, which under TCG is translated first.
    pub first_ms: Option<f64>,
    /// The peer's first `guest-exec` + status after it answered `guest-sync`.
    pub peer_first_ms: Option<f64>,
}

/// Guest stdout to a host file, next to raw virtio-serial.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Payload per run.
    pub bytes: usize,
    /// Where both sides' host files are written: directory and file system.
    pub sink: String,
    /// Ours, median MiB/s: an exec of the raw baseline's own writer
    /// (`rawinit write N`: a static 64 KiB buffer written again and again)
    /// with its stdout to a host file.
    pub mib_s: Option<f64>,
    /// Ours, MiB/s of the run at the 90th percentile of transfer time (the
    /// slow tail, as `p90_ms` is for latencies).
    pub p90_mib_s: Option<f64>,
    /// Raw virtio-serial, median MiB/s: `/init` writes the same static
    /// buffer to the port, the host reads the socket into a file next to
    /// ours (one `write` per read).
    pub baseline_mib_s: Option<f64>,
    /// The baseline's MiB/s at the 90th percentile of transfer time.
    pub baseline_p90_mib_s: Option<f64>,
    /// mib_s / baseline_mib_s.
    pub ratio: Option<f64>,
    /// Raw virtio-serial with the host discarding what it reads: the
    /// channel's ceiling, without the host file's cost.
    pub discard_baseline_mib_s: Option<f64>,
    /// mib_s / discard_baseline_mib_s.
    pub discard_ratio: Option<f64>,
    /// Ours with `dd if=/dev/zero bs=64k` as the producer, median MiB/s.
    pub dd_mib_s: Option<f64>,
    /// Raw virtio-serial with dd's producer (each 64 KiB read from
    /// /dev/zero, then written to the port), host writing a file.
    pub same_producer_baseline_mib_s: Option<f64>,
    /// dd_mib_s / same_producer_baseline_mib_s.
    pub same_producer_ratio: Option<f64>,
}

/// One latency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median ms.
    pub median_ms: Option<f64>,
    /// p90 ms.
    pub p90_ms: Option<f64>,
    /// Samples.
    pub n: usize,
}

impl Latency {
    /// From samples (ms).
    pub fn of(xs: &[f64]) -> Self {
        let s = Summary::of(xs);
        Latency {
            median_ms: s.median,
            p90_ms: s.p90,
            n: s.n,
        }
    }
}

/// Host memory of one idle UVM.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryRow {
    /// Guest memory size.
    pub guest_mb: u32,
    /// QEMU Rss + controller share.
    pub rss_mib: Option<f64>,
    /// QEMU `smaps_rollup` Rss.
    pub qemu_rss_mib: Option<f64>,
    /// QEMU `smaps_rollup` Pss (shared file pages divided among users).
    pub qemu_pss_mib: Option<f64>,
    /// Growth of this process's Rss for the VM (0: below allocator noise).
    pub controller_rss_mib: Option<f64>,
    /// Rss of the idle qemu-guest-agent peer VM of the same size.
    pub peer_qemu_rss_mib: Option<f64>,
}

/// Memory section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// TCG translation-cache cap in MiB (`None`: QEMU default or KVM).
    pub tb_size_mb: Option<u32>,
    /// One row per guest size.
    pub rss_mib: Vec<MemoryRow>,
}

/// One density step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Density {
    /// Concurrent UVMs.
    pub vms: usize,
    /// Until all reached Running (or failed), seconds.
    pub all_running_s: Option<f64>,
    /// (QEMU Rss sum + controller growth) / running VMs.
    pub rss_mib_per_vm: Option<f64>,
    /// QEMU Pss sum / running VMs (shared kernel/initrd page cache divided).
    pub pss_mib_per_vm: Option<f64>,
    /// Growth of this process's Rss / running VMs: what the controller holds
    /// per VM (measured over many VMs, above the allocator's noise).
    pub controller_mib_per_vm: Option<f64>,
    /// VMs that did not reach Running.
    pub failures: usize,
    /// Their errors.
    pub errors: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Environment.
    pub machine: MachineInfo,
    /// Tuned kernel boot.
    pub boot: Option<Boot>,
    /// Stock kernel boot.
    pub boot_stock: Option<Boot>,
    /// Exec round trip.
    pub exec: Option<Exec>,
    /// Stdout throughput.
    pub stdout_throughput: Option<Throughput>,
    /// terminate_vm on a Running VM.
    pub terminate: Option<Latency>,
    /// stats() on a Running VM.
    pub stats: Option<Latency>,
    /// Idle memory.
    pub memory: Option<Memory>,
    /// Density steps.
    pub density: Vec<Density>,
    /// Runtime devices.
    pub hotplug: Option<crate::hotplug::Hotplug>,
    /// Containers next to a plain exec in the UVM.
    pub container: Option<crate::container::ContainerBench>,
    /// `ctr run --rm … true` through containerd, our shim against runc.
    pub containerd: Option<crate::containerd::ContainerdBench>,
    /// Restoring from a snapshot next to a cold boot.
    pub restore: Option<crate::restore::RestoreBench>,
    /// Sections that failed, `section: error` (nothing hidden).
    pub errors: Vec<String>,
}

fn f(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}
fn r(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

impl Report {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// A text table with the same numbers as the JSON.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "uvm bench ({}; {} cpus, {}, {} runs; loadavg {})",
            m.qemu,
            m.cpus,
            m.accel,
            m.runs,
            m.loadavg.join(" -> ")
        );
        let _ = writeln!(
            t,
            "{:<34} {:>10} {:>10} {:>12} {:>12} {:>8}",
            "measurement", "median", "p90", "baseline", "base p90", "ratio"
        );
        let mut row = |name: &str,
                       med: Option<f64>,
                       p90: Option<f64>,
                       b: Option<f64>,
                       bp: Option<f64>,
                       rt: Option<f64>| {
            let _ = writeln!(
                t,
                "{name:<34} {:>10} {:>10} {:>12} {:>12} {:>8}",
                f(med),
                f(p90),
                f(b),
                f(bp),
                r(rt)
            );
        };
        for b in self.boot.iter().chain(&self.boot_stock) {
            row(
                &format!("boot {} create+start ms", b.kernel),
                b.median_ms,
                b.p90_ms,
                b.baseline_median_ms,
                b.baseline_p90_ms,
                b.ratio,
            );
            row(
                "  create_vm ms",
                b.create.median,
                b.create.p90,
                None,
                None,
                None,
            );
            row(
                "  start_vm ms",
                b.start.median,
                b.start.p90,
                None,
                None,
                None,
            );
            let up = &b.baseline_chardev;
            row(
                "  baseline: spawn->chardev ms",
                None,
                None,
                up.median,
                up.p90,
                None,
            );
        }
        if let Some(e) = &self.exec {
            row(
                "exec `true` ms (peer: qga)",
                e.median_ms,
                e.p90_ms,
                e.peer_median_ms,
                e.peer_p90_ms,
                e.ratio,
            );
            row(
                "  in-guest fork+exec+wait floor ms",
                e.floor_ms,
                None,
                e.peer_floor_ms,
                None,
                None,
            );
            row(
                "  first exec after boot ms (n=1)",
                e.first_ms,
                None,
                e.peer_first_ms,
                None,
                None,
            );
        }
        if let Some(s) = &self.stdout_throughput {
            row(
                &format!("stdout MiB/s ({} MiB)", s.bytes >> 20),
                s.mib_s,
                s.p90_mib_s,
                s.baseline_mib_s,
                s.baseline_p90_mib_s,
                s.ratio,
            );
            row(
                "  raw host discarding instead",
                s.mib_s,
                None,
                s.discard_baseline_mib_s,
                None,
                s.discard_ratio,
            );
            row(
                "  producer dd (/dev/zero, 64 KiB)",
                s.dd_mib_s,
                None,
                s.same_producer_baseline_mib_s,
                None,
                s.same_producer_ratio,
            );
        }
        if let Some(l) = &self.terminate {
            row("terminate_vm ms", l.median_ms, l.p90_ms, None, None, None);
        }
        if let Some(l) = &self.stats {
            row("stats ms", l.median_ms, l.p90_ms, None, None, None);
        }
        if let Some(h) = &self.hotplug {
            for (name, l) in [
                ("hotplug add_disk ms", &h.add_disk),
                ("  add+mount (usable) ms", &h.add_disk_usable),
                ("  remove_disk (mounted) ms", &h.remove_disk),
                ("  add_share ms", &h.add_share),
                ("  remove_share ms", &h.remove_share),
            ] {
                row(name, l.median_ms, l.p90_ms, None, None, None);
            }
            // 9p against the virtio-scsi disk: the disk is the baseline.
            row(
                &format!("  cold read {} MiB, 9p MiB/s", h.read_file_mib),
                h.read_9p_mib_s,
                None,
                h.read_scsi_mib_s,
                None,
                h.read_9p_mib_s.zip(h.read_scsi_mib_s).map(|(a, b)| a / b),
            );
        }
        if let Some(rs) = &self.restore {
            // The cold boot in the same run is the baseline.
            row(
                "restore to Running ms (cold boot)",
                rs.median_ms,
                rs.p90_ms,
                rs.cold_boot_median_ms,
                rs.cold_boot_p90_ms,
                rs.ratio,
            );
            row(
                "  create_vm_from_snapshot ms",
                rs.create.median_ms,
                rs.create.p90_ms,
                None,
                None,
                None,
            );
            row(
                "  start_vm (restored) ms",
                rs.start.median_ms,
                rs.start.p90_ms,
                None,
                None,
                None,
            );
            row(
                &format!("  Rss MiB/VM, {} at once (cold)", rs.memory_vms),
                rs.rss_mib_per_vm_restored,
                None,
                rs.rss_mib_per_vm_cold,
                None,
                ratio(rs.rss_mib_per_vm_restored, rs.rss_mib_per_vm_cold),
            );
            row(
                &format!("  Pss MiB/VM, {} at once (cold)", rs.memory_vms),
                rs.pss_mib_per_vm_restored,
                None,
                rs.pss_mib_per_vm_cold,
                None,
                ratio(rs.pss_mib_per_vm_restored, rs.pss_mib_per_vm_cold),
            );
            row(
                "  16 restored vs 4 cold in turn s",
                rs.restored_16_all_running_s,
                None,
                rs.cold_4_sequential_s,
                None,
                ratio(rs.restored_16_all_running_s, rs.cold_4_sequential_s),
            );
            row(
                "  16 restored vs 4 cold at once s",
                rs.restored_16_all_running_s,
                None,
                rs.cold_4_all_running_s,
                None,
                ratio(rs.restored_16_all_running_s, rs.cold_4_all_running_s),
            );
        }
        if let Some(c) = &self.containerd {
            // runc through the same containerd is the baseline.
            row(
                "containerd `ctr run --rm` true ms (runc)",
                c.uvm.median_ms,
                c.uvm.p90_ms,
                c.runc.median_ms,
                c.runc.p90_ms,
                c.ratio,
            );
            if c.uvm_restored_median_ms.is_some() {
                row(
                    "  uvm restoring a snapshot per run ms",
                    c.uvm_restored.median_ms,
                    c.uvm_restored.p90_ms,
                    c.runc.median_ms,
                    c.runc.p90_ms,
                    c.restored_ratio,
                );
            }
        }
        if let Some(c) = &self.container {
            // The plain exec in the UVM itself is the baseline.
            let (cs, pe) = (&c.create_start, &c.plain_exec);
            row(
                "container create+start `true` ms",
                cs.median_ms,
                cs.p90_ms,
                pe.median_ms,
                pe.p90_ms,
                ratio(cs.median_ms, pe.median_ms),
            );
            for (name, l) in [
                ("  create_container ms", &c.create),
                ("  start_container to exit ms", &c.start),
                ("  of which start_container call ms", &c.start_call),
                ("  delete_container ms", &c.delete),
            ] {
                row(name, l.median_ms, l.p90_ms, None, None, None);
            }
            row(
                "  exec in container `true` ms",
                c.exec.median_ms,
                c.exec.p90_ms,
                pe.median_ms,
                pe.p90_ms,
                ratio(c.exec.median_ms, pe.median_ms),
            );
            row(
                "  exec_into_host `true` ms",
                c.exec_into_host.median_ms,
                c.exec_into_host.p90_ms,
                None,
                None,
                None,
            );
            row(
                "  first container after boot (n=1)",
                c.first_container_after_boot_ms,
                None,
                None,
                None,
                None,
            );
            let i = &c.image;
            row(
                &format!("  image unpack ms ({} layers)", i.layers),
                i.first_unpack_ms,
                None,
                None,
                None,
                None,
            );
            row(
                "  image unpack again (cached) ms",
                i.second_unpack_ms,
                None,
                None,
                None,
                None,
            );
        }
        if let Some(mem) = &self.memory {
            for m in &mem.rss_mib {
                let name = format!("idle RSS MiB, {} MiB guest", m.guest_mb);
                row(
                    &name,
                    m.rss_mib,
                    None,
                    m.peer_qemu_rss_mib,
                    None,
                    ratio(m.rss_mib, m.peer_qemu_rss_mib),
                );
                row(
                    "  of which QEMU Pss MiB",
                    m.qemu_pss_mib,
                    None,
                    None,
                    None,
                    None,
                );
            }
            let _ = writeln!(
                t,
                "  (TCG tb-size cap {:?} MiB; baseline = idle qemu-guest-agent VM QEMU Rss)",
                mem.tb_size_mb
            );
        }
        if let Some(c) = &self.containerd {
            if let Some(why) = &c.runc_unavailable {
                let _ = writeln!(t, "containerd: runc not measured: {why}");
            }
            if let Some(why) = &c.restored_unavailable {
                let _ = writeln!(t, "containerd: restored runs not measured: {why}");
            }
        }
        if let Some(s) = &self.stdout_throughput {
            let _ = writeln!(
                t,
                "stdout: both sides run rawinit's static 64 KiB writer (or dd); host files in {}",
                s.sink
            );
        }
        if let Some(c) = &self.container {
            let i = &c.image;
            let met = match c.goal_met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not judged",
            };
            let _ = writeln!(
                t,
                "container: +{} ms over the plain exec; goal {}: {met}; layers unpacked {} then {}; first VM boot {} ms",
                f(c.create_start_over_exec_ms),
                c.goal,
                i.unpacked_first,
                i.unpacked_second,
                f(c.first_vm_boot_ms),
            );
        }
        if let Some(rs) = &self.restore {
            let judge = |g: Option<bool>| match g {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not judged",
            };
            let _ = writeln!(
                t,
                "restore: {} MiB guests; snapshot state {} MiB, memory file {} MiB ({} MiB on disk); goals ({}): ratio {}, density {} (against 4 cold at once: {}), RSS {}, PSS {}",
                rs.guest_mb,
                f(rs.snapshot_state_mib),
                f(rs.snapshot_memory_mib),
                f(rs.snapshot_memory_on_disk_mib),
                rs.goals,
                judge(rs.goal_ratio_met),
                judge(rs.goal_density_met),
                judge(rs.goal_density_concurrent_met),
                judge(rs.goal_rss_met),
                judge(rs.goal_pss_met),
            );
            let _ = writeln!(
                t,
                "restore: Rss/Pss after one exec of `true` in each VM; Pss is what shows the sharing: the snapshot's memory file is page cache every restored VM maps copy-on-write, which Rss counts in full for each VM and Pss divides among them"
            );
            if rs.restored_16_failures + rs.cold_4_failures > 0 {
                let _ = writeln!(
                    t,
                    "restore: started together, {} of 16 restored and {} of 4 cold VMs did not reach Running (no time reported for that side)",
                    rs.restored_16_failures, rs.cold_4_failures
                );
            }
        }
        for d in &self.density {
            let _ = writeln!(
                t,
                "density {:>2} VMs: all Running {} s, Rss {} MiB/VM (Pss {}, controller {}), {} failures",
                d.vms,
                f(d.all_running_s),
                f(d.rss_mib_per_vm),
                f(d.pss_mib_per_vm),
                d.controller_mib_per_vm
                    .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                d.failures
            );
        }
        for e in &self.errors {
            let _ = writeln!(t, "ERROR {e}");
        }
        t
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
