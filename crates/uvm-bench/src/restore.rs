//! `restore`: starting a UVM from a snapshot next to booting it cold, in the
//! same run (DESIGN §13/§14): restore-to-Running against create+start, host
//! memory of K VMs running at once either way, and 16 restored VMs against
//! 4 cold boots started together.
//!
//! A step that fails is recorded in [`RestoreBench::errors`] and the next
//! step still runs; only a snapshot that cannot be taken fails the section.
//! Every VM a step starts is terminated before the step ends, also when it
//! fails, and the snapshot lives in a temp dir of its own, removed at the end.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use uvm::{
    AfterSnapshot, Controller, CreateOptions, ExecRequest, Manager, RestoreOptions,
    SnapshotManifest, StartOptions,
};
use uvm_image::Image;
use uvm_vmm::{QemuConfig, QemuHypervisor};

use crate::ours::{self, bounded};
use crate::report::Latency;
use crate::run::chain;
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
    /// Guest memory of every VM of the section (source, restored, cold), MiB.
    pub guest_mb: u32,
    /// Snapshot sizes: state stream and memory data on disk, MiB.
    pub snapshot_state_mib: Option<f64>,
    /// Size of the memory file (guest RAM; sparse), MiB.
    pub snapshot_memory_mib: Option<f64>,
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
    /// Of the 16 restored VMs started together, those that did not reach
    /// Running (their time is then not reported).
    pub restored_16_failures: usize,
    /// Of the 4 cold VMs started together, those that did not reach Running.
    pub cold_4_failures: usize,
    /// The goals, as a sentence.
    pub goals: String,
    /// Steps that failed, `step: error`; the other steps still ran and their
    /// numbers stand. A failed step leaves its numbers (and goals) unset.
    pub errors: Vec<String>,
}

/// A Running VM of this section and how long its create and start took.
struct Vm {
    mgr: Manager,
    create: Duration,
    start: Duration,
}

/// Terminates `m` whatever its state (a no-op once Terminated or never
/// created); used where a failure is already being reported.
async fn cleanup(m: &Manager) {
    let _ = bounded("terminate_vm", m.terminate_vm()).await;
}

/// After a create that began at `t`: start_vm. The VM is terminated when
/// either failed, so a failed boot leaves nothing running.
async fn finish(
    mgr: Manager,
    t: Instant,
    created: Result<(), BenchError>,
    what: &'static str,
) -> Result<Vm, BenchError> {
    let create = t.elapsed();
    let t = Instant::now();
    let started = match created {
        Ok(()) => bounded(what, mgr.start_vm(StartOptions::default())).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(()) => Ok(Vm {
            mgr,
            create,
            start: t.elapsed(),
        }),
        Err(e) => {
            cleanup(&mgr).await;
            Err(e)
        }
    }
}

/// create_vm_from_snapshot + start_vm on a fresh Manager (id `id`).
async fn restored(dir: PathBuf, id: String) -> Result<Vm, BenchError> {
    let mgr = Manager::new();
    let t = Instant::now();
    let created = bounded(
        "create_vm_from_snapshot",
        mgr.create_vm_from_snapshot(RestoreOptions {
            id,
            snapshot_dir: dir,
            hostname: None,
        }),
    )
    .await;
    finish(mgr, t, created, "start_vm (restored)").await
}

/// create_vm + start_vm on `mgr` with the boot section's document.
async fn cold_with(
    mgr: Manager,
    id: String,
    image: Image,
    memory_mb: u32,
    cpus: u32,
) -> Result<Vm, BenchError> {
    let document = ours::document(&image, memory_mb, cpus);
    let t = Instant::now();
    let created = bounded("create_vm", mgr.create_vm(CreateOptions { id, document })).await;
    finish(mgr, t, created, "start_vm").await
}

/// A cold boot on a fresh default Manager.
async fn cold(id: String, image: Image, memory_mb: u32, cpus: u32) -> Result<Vm, BenchError> {
    cold_with(Manager::new(), id, image, memory_mb, cpus).await
}

/// VMs running at once; [`Fleet::terminate`] ends every one of them.
#[derive(Default)]
struct Fleet(Vec<Manager>);

impl Fleet {
    /// Terminates all; each failure is a line of `errors`.
    async fn terminate(self, step: &str, errors: &mut Vec<String>) {
        for m in self.0 {
            if let Err(e) = bounded("terminate_vm", m.terminate_vm()).await {
                errors.push(format!("{step}: {}", chain(&e)));
            }
        }
    }
}

/// `true` in the VM, checked for exit code 0.
async fn exec_true(m: &Manager) -> Result<(), BenchError> {
    let req = ExecRequest {
        args: vec!["true".into()],
        ..Default::default()
    };
    match bounded("exec_into_host", m.exec_into_host(req)).await? {
        0 => Ok(()),
        code => Err(BenchError::Protocol(format!("`true` exited {code}"))),
    }
}

/// Boots the source VM (guest RAM in a shared memfd), snapshots it into
/// `dir` and terminates it (also when the snapshot fails).
pub(crate) async fn take_snapshot(
    image: &Image,
    opts: &BenchOptions,
    dir: &Path,
) -> Result<SnapshotManifest, BenchError> {
    let hv = QemuHypervisor::with_config(QemuConfig {
        shared_memory: true,
        ..QemuConfig::default()
    });
    let src = cold_with(
        Manager::with_hypervisor(Arc::new(hv)),
        "bench-snap-src".into(),
        image.clone(),
        opts.memory_mb,
        opts.cpus,
    )
    .await?;
    let manifest = bounded("snapshot", src.mgr.snapshot(dir, AfterSnapshot::Terminate)).await;
    cleanup(&src.mgr).await;
    manifest
}

/// Restore to Running and cold create+start to Running in turn (the order
/// swapped every run, as the boot section does); each VM terminated at once.
async fn latencies(
    rep: &mut RestoreBench,
    dir: &Path,
    image: &Image,
    opts: &BenchOptions,
) -> Result<(), BenchError> {
    let (mut total, mut create, mut start, mut cold_ms) = (vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs * 2 {
        for ours_turn in [i % 2 == 0, i % 2 != 0] {
            let vm = if ours_turn {
                restored(dir.to_path_buf(), format!("bench-restore-{i}")).await?
            } else {
                cold(
                    format!("bench-cold-{i}"),
                    image.clone(),
                    opts.memory_mb,
                    opts.cpus,
                )
                .await?
            };
            bounded("terminate_vm", vm.mgr.terminate_vm()).await?;
            if ours_turn {
                create.push(ms(vm.create));
                start.push(ms(vm.start));
                total.push(ms(vm.create + vm.start));
            } else {
                cold_ms.push(ms(vm.create + vm.start));
            }
        }
    }
    let (t, c) = (Latency::of(&total), Latency::of(&cold_ms));
    rep.median_ms = t.median_ms;
    rep.p90_ms = t.p90_ms;
    rep.create = Latency::of(&create);
    rep.start = Latency::of(&start);
    rep.cold_boot_median_ms = c.median_ms;
    rep.cold_boot_p90_ms = c.p90_ms;
    rep.ratio = ratio(t.median_ms, c.median_ms);
    rep.goal_ratio_met = rep.ratio.map(|r| r <= 0.3);
    Ok(())
}

/// Host MiB per VM, (RSS, PSS), with `k` VMs made by `make(i)` running at
/// once, each after an exec of `true`; all terminated before it returns.
async fn footprint<F, Fut>(
    k: usize,
    make: F,
    step: &str,
    errors: &mut Vec<String>,
) -> Result<(f64, f64), BenchError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Vm, BenchError>>,
{
    let before = memory::self_rss_kib().unwrap_or(0);
    let mut fleet = Fleet::default();
    let measured = async {
        for i in 0..k {
            fleet.0.push(make(i).await?.mgr);
        }
        for m in &fleet.0 {
            exec_true(m).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ctrl = memory::self_rss_kib().unwrap_or(0).saturating_sub(before) as f64 / 1024.0;
        let n = k.max(1) as f64;
        Ok::<_, BenchError>((
            (memory::qemu_children_rss_mib() + ctrl) / n,
            (memory::qemu_children_pss_mib() + ctrl) / n,
        ))
    }
    .await;
    fleet.terminate(step, errors).await;
    measured
}

/// `n` VMs made by `make(i)` started together: (seconds until all are
/// Running, when all got there; how many did not). All are terminated;
/// failures and terminate errors are lines of `errors`.
async fn together<F, Fut>(
    n: usize,
    make: F,
    step: &str,
    errors: &mut Vec<String>,
) -> (Option<f64>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Vm, BenchError>> + Send + 'static,
{
    let t = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(make(i))).collect();
    let results = futures::future::join_all(tasks).await;
    let s = t.elapsed().as_secs_f64();
    let mut fleet = Fleet::default();
    for r in results {
        match r {
            Ok(Ok(vm)) => fleet.0.push(vm.mgr),
            Ok(Err(e)) => errors.push(format!("{step}: {}", chain(&e))),
            // A panicked task dropped its Manager, which terminates the VM.
            Err(e) => errors.push(format!("{step}: task: {e}")),
        }
    }
    let failures = n - fleet.0.len();
    fleet.terminate(step, errors).await;
    ((failures == 0).then_some(s), failures)
}

/// Records a failed step; `Some` of what it gave otherwise.
fn note<T>(errors: &mut Vec<String>, step: &str, r: Result<T, BenchError>) -> Option<T> {
    r.map_err(|e| errors.push(format!("{step}: {}", chain(&e))))
        .ok()
}

/// Runs the section: a snapshot of a shared-memory VM, then restores and
/// cold boots interleaved, the memory of K VMs at once either way, and 16
/// restored against 4 cold started together.
pub async fn section(
    image: &Image,
    opts: &BenchOptions,
    tmp: &Path,
) -> Result<RestoreBench, BenchError> {
    let qemu_before: HashSet<u32> = memory::qemu_children().into_iter().collect();
    let snaps = tempfile::Builder::new()
        .prefix("restore-")
        .tempdir_in(tmp)
        .map_err(|e| BenchError::io("snapshot temp dir", e))?;
    let dir = snaps.path().join("snapshot");
    let manifest = take_snapshot(image, opts, &dir).await?;
    let mut rep = RestoreBench {
        goals: GOALS.into(),
        guest_mb: opts.memory_mb,
        snapshot_state_mib: Some(manifest.state.bytes as f64 / (1 << 20) as f64),
        snapshot_memory_mib: manifest
            .memory
            .as_ref()
            .map(|m| m.bytes as f64 / (1 << 20) as f64),
        snapshot_memory_on_disk_mib: std::fs::metadata(dir.join(uvm_vmm::MEMORY_FILE))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) as f64 * 512.0 / (1 << 20) as f64),
        ..Default::default()
    };
    let (mb, cpus) = (opts.memory_mb, opts.cpus);

    let r = latencies(&mut rep, &dir, image, opts).await;
    note(&mut rep.errors, "restore vs cold boot", r);

    // Memory: K at once, restored then cold.
    let k = if opts.quick { 4 } else { 8 };
    rep.memory_vms = k;
    let step = "memory of restored VMs";
    let d = &dir;
    let r = footprint(
        k,
        |i| restored(d.clone(), format!("bench-rmem-{i}")),
        step,
        &mut rep.errors,
    )
    .await;
    let restored_fp = note(&mut rep.errors, step, r);
    let step = "memory of cold VMs";
    let r = footprint(
        k,
        |i| cold(format!("bench-cmem-{i}"), image.clone(), mb, cpus),
        step,
        &mut rep.errors,
    )
    .await;
    let cold_fp = note(&mut rep.errors, step, r);
    rep.rss_mib_per_vm_restored = restored_fp.map(|f| f.0);
    rep.pss_mib_per_vm_restored = restored_fp.map(|f| f.1);
    rep.rss_mib_per_vm_cold = cold_fp.map(|f| f.0);
    rep.pss_mib_per_vm_cold = cold_fp.map(|f| f.1);
    if let (Some((rr, rp)), Some((cr, cp))) = (restored_fp, cold_fp) {
        rep.goal_rss_met = Some(rr <= 0.7 * cr);
        rep.goal_pss_met = Some(rp <= 0.7 * cp);
    }

    // Density: 16 restored against 4 cold, each started together, and 4
    // cold boots one after another.
    let (s, failed) = together(
        16,
        |i| restored(dir.clone(), format!("bench-r16-{i}")),
        "16 restored started together",
        &mut rep.errors,
    )
    .await;
    (rep.restored_16_all_running_s, rep.restored_16_failures) = (s, failed);
    let (s, failed) = together(
        4,
        |i| cold(format!("bench-c4-{i}"), image.clone(), mb, cpus),
        "4 cold started together",
        &mut rep.errors,
    )
    .await;
    (rep.cold_4_all_running_s, rep.cold_4_failures) = (s, failed);
    let mut sequential = 0.0;
    let r = async {
        for i in 0..4 {
            let vm = cold(format!("bench-cseq-{i}"), image.clone(), mb, cpus).await?;
            sequential += (vm.create + vm.start).as_secs_f64();
            bounded("terminate_vm", vm.mgr.terminate_vm()).await?;
        }
        Ok(())
    }
    .await;
    if note(&mut rep.errors, "4 cold boots one after another", r).is_some() {
        rep.cold_4_sequential_s = Some(sequential);
    }
    let r16 = rep.restored_16_all_running_s;
    rep.goal_density_met = r16.zip(rep.cold_4_sequential_s).map(|(r, c)| r < c);
    rep.goal_density_concurrent_met = r16.zip(rep.cold_4_all_running_s).map(|(r, c)| r < c);

    // Nothing of this section may outlive it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = memory::qemu_children()
            .into_iter()
            .filter(|p| !qemu_before.contains(p))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            rep.errors.push(format!(
                "cleanup: {} QEMU processes still running after the section: pids {left:?}",
                left.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Err(e) = snaps.close() {
        rep.errors
            .push(format!("cleanup: removing the snapshot: {}", chain(&e)));
    }
    Ok(rep)
}
