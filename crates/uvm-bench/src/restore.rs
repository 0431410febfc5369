//! `restore`: starting a UVM from a snapshot next to booting it cold, in the
//! same run (DESIGN §13/§14): restore-to-Running against create+start, host
//! memory of K VMs running at once either way, and 16 restored VMs against
//! 4 cold boots started together.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use uvm::{AfterSnapshot, Controller, Manager, RestoreOptions, StartOptions};
use uvm_image::Image;
use uvm_vmm::{QemuConfig, QemuHypervisor};

use crate::ours::{bounded, OurVm};
use crate::report::Latency;
use crate::stats::{ms, ratio};
use crate::{memory, BenchError, BenchOptions};

/// Goals of the issue, judged (never asserted) in the report.
pub const GOALS: &str = "restore <= 0.3x cold boot; 16 restored Running in less time than 4 cold boots (one after another); restored RSS <= 0.7x cold";

/// The `restore` section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreBench {
    /// Restore to Running (create_vm_from_snapshot + start_vm), median ms.
    pub median_ms: Option<f64>,
    /// p90 of the same.
    pub p90_ms: Option<f64>,
    /// create_vm_from_snapshot alone.
    pub create: Latency,
    /// start_vm of a restored VM alone.
    pub start: Latency,
    /// Cold create_vm + start_vm, median ms, interleaved with the restores.
    pub cold_boot_median_ms: Option<f64>,
    /// p90 of the same.
    pub cold_boot_p90_ms: Option<f64>,
    /// median_ms / cold_boot_median_ms.
    pub ratio: Option<f64>,
    /// VMs running at once for the memory figures.
    pub memory_vms: usize,
    /// Host RSS per restored VM (QEMU + controller), MiB.
    pub rss_mib_per_vm_restored: Option<f64>,
    /// Host RSS per cold-booted VM, MiB.
    pub rss_mib_per_vm_cold: Option<f64>,
    /// Host PSS per restored VM: the snapshot's memory file is shared page
    /// cache, which RSS counts in full for every VM and PSS divides.
    pub pss_mib_per_vm_restored: Option<f64>,
    /// Host PSS per cold-booted VM, MiB.
    pub pss_mib_per_vm_cold: Option<f64>,
    /// 16 restored VMs started at once: seconds until all are Running.
    pub restored_16_all_running_s: Option<f64>,
    /// 4 cold VMs started at once: seconds until all are Running.
    pub cold_4_all_running_s: Option<f64>,
    /// 4 cold boots one after another (each to Running, then terminated
    /// outside the clock): total seconds.
    pub cold_4_sequential_s: Option<f64>,
    /// Snapshot sizes: state stream and memory data on disk, MiB.
    pub snapshot_state_mib: Option<f64>,
    /// Data of the memory file on disk, MiB.
    pub snapshot_memory_on_disk_mib: Option<f64>,
    /// Goals met: restore ratio, density, memory (by RSS and by PSS).
    pub goal_ratio_met: Option<bool>,
    /// 16 restored (at once) in less time than 4 cold boots one after another.
    pub goal_density_met: Option<bool>,
    /// The stricter reading: before 4 cold boots started at once.
    pub goal_density_concurrent_met: Option<bool>,
    /// RSS ratio <= 0.7.
    pub goal_rss_met: Option<bool>,
    /// PSS ratio <= 0.7.
    pub goal_pss_met: Option<bool>,
    /// The goals, as a sentence.
    pub goals: String,
}

fn manager() -> Manager {
    Manager::new()
}

/// A restored VM.
async fn restore(
    dir: &std::path::Path,
    id: String,
) -> Result<(Manager, Duration, Duration), BenchError> {
    let m = manager();
    let t = Instant::now();
    bounded(
        "create_vm_from_snapshot",
        m.create_vm_from_snapshot(RestoreOptions {
            id,
            snapshot_dir: dir.to_path_buf(),
            hostname: None,
        }),
    )
    .await?;
    let create = t.elapsed();
    let t = Instant::now();
    bounded("start_vm (restored)", m.start_vm(StartOptions::default())).await?;
    Ok((m, create, t.elapsed()))
}

async fn exec_true(m: &Manager) -> Result<(), BenchError> {
    let req = uvm::ExecRequest {
        args: vec!["true".into()],
        ..Default::default()
    };
    bounded("exec", m.exec_into_host(req)).await.map(drop)
}

async fn terminate(m: &Manager) -> Result<(), BenchError> {
    bounded("terminate_vm", m.terminate_vm()).await
}

/// Seconds until `n` VMs made by `make(i)` all run; terminates them.
async fn all_running<F, Fut>(n: usize, make: F) -> Result<f64, BenchError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Manager, BenchError>> + Send + 'static,
{
    let t = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(make(i))).collect();
    let results = futures::future::join_all(tasks).await;
    let s = t.elapsed().as_secs_f64();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(Ok(m)) => terminate(&m).await?,
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(BenchError::Protocol(format!("task: {e}")))),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(s),
    }
}

/// Host MiB (RSS, PSS) per VM with `vms` running (after an exec each).
async fn footprint(vms: &[Manager], before_kib: u64) -> Result<(f64, f64), BenchError> {
    for m in vms {
        exec_true(m).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ctrl = memory::self_rss_kib()
        .unwrap_or(0)
        .saturating_sub(before_kib) as f64
        / 1024.0;
    let n = vms.len().max(1) as f64;
    Ok((
        (memory::qemu_children_rss_mib() + ctrl) / n,
        (memory::qemu_children_pss_mib() + ctrl) / n,
    ))
}

/// Runs the section: a snapshot of a shared-memory VM, then restores and
/// cold boots interleaved.
pub async fn section(
    image: &Image,
    opts: &BenchOptions,
    tmp: &std::path::Path,
) -> Result<RestoreBench, BenchError> {
    let dir = tmp.join("restore-snapshot");
    let hv = QemuHypervisor::with_config(QemuConfig {
        shared_memory: true,
        ..QemuConfig::default()
    });
    let src = OurVm::boot_with(
        Manager::with_hypervisor(Arc::new(hv)),
        "bench-snap-src",
        image,
        opts.memory_mb,
        opts.cpus,
    )
    .await?;
    let manifest = bounded("snapshot", src.mgr.snapshot(&dir, AfterSnapshot::Terminate)).await?;
    let mut rep = RestoreBench {
        goals: GOALS.into(),
        snapshot_state_mib: Some(manifest.state.bytes as f64 / (1 << 20) as f64),
        snapshot_memory_on_disk_mib: std::fs::metadata(dir.join(uvm_vmm::MEMORY_FILE))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) as f64 * 512.0 / (1 << 20) as f64),
        ..Default::default()
    };

    let (mut total, mut create, mut start, mut cold) = (vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs * 2 {
        for ours_turn in [i % 2 == 0, i % 2 != 0] {
            if ours_turn {
                let (m, c, s) = restore(&dir, format!("bench-restore-{i}")).await?;
                create.push(ms(c));
                start.push(ms(s));
                total.push(ms(c + s));
                terminate(&m).await?;
            } else {
                let vm = OurVm::boot(&format!("bench-cold-{i}"), image, opts.memory_mb, opts.cpus)
                    .await?;
                cold.push(ms(vm.create + vm.start));
                vm.terminate().await?;
            }
        }
    }
    let t = Latency::of(&total);
    let c = Latency::of(&cold);
    rep.median_ms = t.median_ms;
    rep.p90_ms = t.p90_ms;
    rep.create = Latency::of(&create);
    rep.start = Latency::of(&start);
    rep.cold_boot_median_ms = c.median_ms;
    rep.cold_boot_p90_ms = c.p90_ms;
    rep.ratio = ratio(t.median_ms, c.median_ms);
    rep.goal_ratio_met = rep.ratio.map(|r| r <= 0.3);

    // Memory: K at once, restored then cold.
    let k = if opts.quick { 4 } else { 8 };
    rep.memory_vms = k;
    let before = memory::self_rss_kib().unwrap_or(0);
    let mut vms = Vec::new();
    for i in 0..k {
        vms.push(restore(&dir, format!("bench-rmem-{i}")).await?.0);
    }
    let restored = footprint(&vms, before).await;
    for m in &vms {
        terminate(m).await?;
    }
    drop(vms);
    let before = memory::self_rss_kib().unwrap_or(0);
    let mut cold_vms = Vec::new();
    for i in 0..k {
        cold_vms.push(
            OurVm::boot(&format!("bench-cmem-{i}"), image, opts.memory_mb, opts.cpus)
                .await?
                .mgr,
        );
    }
    let cold_fp = footprint(&cold_vms, before).await;
    for m in &cold_vms {
        terminate(m).await?;
    }
    let ((rr, rp), (cr, cp)) = (restored?, cold_fp?);
    rep.rss_mib_per_vm_restored = Some(rr);
    rep.pss_mib_per_vm_restored = Some(rp);
    rep.rss_mib_per_vm_cold = Some(cr);
    rep.pss_mib_per_vm_cold = Some(cp);
    rep.goal_rss_met = Some(rr <= 0.7 * cr);
    rep.goal_pss_met = Some(rp <= 0.7 * cp);

    // Density: 16 restored against 4 cold, each started together.
    let d = dir.clone();
    rep.restored_16_all_running_s = Some(
        all_running(16, move |i| {
            let d = d.clone();
            async move { Ok(restore(&d, format!("bench-r16-{i}")).await?.0) }
        })
        .await?,
    );
    let (img, mb, cpus) = (image.clone(), opts.memory_mb, opts.cpus);
    rep.cold_4_all_running_s = Some(
        all_running(4, move |i| {
            let img = img.clone();
            async move {
                Ok(OurVm::boot(&format!("bench-c4-{i}"), &img, mb, cpus)
                    .await?
                    .mgr)
            }
        })
        .await?,
    );
    let mut sequential = 0.0;
    for i in 0..4 {
        let vm = OurVm::boot(&format!("bench-cseq-{i}"), image, opts.memory_mb, opts.cpus).await?;
        sequential += (vm.create + vm.start).as_secs_f64();
        vm.terminate().await?;
    }
    rep.cold_4_sequential_s = Some(sequential);
    let r16 = rep.restored_16_all_running_s;
    rep.goal_density_met = r16.zip(rep.cold_4_sequential_s).map(|(r, c)| r < c);
    rep.goal_density_concurrent_met = r16.zip(rep.cold_4_all_running_s).map(|(r, c)| r < c);
    Ok(rep)
}
