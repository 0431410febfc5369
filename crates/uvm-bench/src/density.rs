//! Density: N UVMs started concurrently, each with its own Manager.

use crate::ours::OurVm;
use crate::report::Density;
use crate::run::chain;
use crate::{memory, BenchOptions};
use tokio::time::Instant;
use uvm_image::Image;

/// Starts `n` UVMs at once, records the time until all are Running (or
/// failed), Rss per running VM and every failure, then terminates them all.
pub async fn step(n: usize, image: &Image, opts: &BenchOptions) -> Density {
    let before = memory::self_rss_kib().unwrap_or(0);
    let t = Instant::now();
    let boots = (0..n).map(|i| {
        OurVm::boot_owned(
            format!("bench-density-{n}-{i}"),
            image.clone(),
            opts.memory_mb,
            opts.cpus,
        )
    });
    let results = futures::future::join_all(boots.map(tokio::spawn)).await;
    let all = t.elapsed().as_secs_f64();
    let mut vms = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(Ok(vm)) => vms.push(vm),
            Ok(Err(e)) => errors.push(chain(&e)),
            Err(e) => errors.push(format!("boot task: {e}")),
        }
    }
    let qemu = memory::qemu_children_rss_mib();
    let pss = memory::qemu_children_pss_mib();
    let ctrl = memory::self_rss_kib().unwrap_or(0).saturating_sub(before) as f64 / 1024.0;
    let running = vms.len();
    for vm in vms {
        if let Err(e) = vm.terminate().await {
            errors.push(format!("terminate: {}", chain(&e)));
        }
    }
    Density {
        vms: n,
        all_running_s: Some(all),
        rss_mib_per_vm: (running > 0).then(|| (qemu + ctrl) / running as f64),
        pss_mib_per_vm: (running > 0).then(|| (pss + ctrl) / running as f64),
        controller_mib_per_vm: (running > 0).then(|| ctrl / running as f64),
        failures: n - running,
        errors,
    }
}
