//! Profiling aid: N concurrent UVMs with `Manager::new()` vs with a Manager
//! whose `rpc_timeout` is raised (the Negotiate RPC is sent as soon as QEMU's
//! chardev connects, so under contention it also waits for the guest to boot).
//! Since D1 (f64acf5) the first Negotiate is bounded by `gcs_timeout`, so both
//! arms should show 0 failures; kept to show that and to time N-VM starts.
//! `cargo run --release -p uvm-bench --example density_ab -- [N] [RPC_TIMEOUT_S]`

use std::sync::Arc;
use std::time::{Duration, Instant};
use uvm::{Manager, ManagerConfig};
use uvm_bench::ours::OurVm;

async fn step(
    n: usize,
    image: &uvm_image::Image,
    cfg: Option<ManagerConfig>,
) -> (f64, usize, Vec<String>) {
    let t = Instant::now();
    let tasks = (0..n).map(|i| {
        let (image, cfg) = (image.clone(), cfg.clone());
        tokio::spawn(async move {
            let mgr = match cfg {
                Some(c) => Manager::with_config(Arc::new(uvm_vmm::QemuHypervisor::new()), c),
                None => Manager::new(),
            };
            OurVm::boot_with(mgr, &format!("dab-{i}"), &image, 128, 1).await
        })
    });
    let res = futures::future::join_all(tasks).await;
    let secs = t.elapsed().as_secs_f64();
    let mut errs = Vec::new();
    let mut vms = Vec::new();
    for r in res {
        match r {
            Ok(Ok(vm)) => vms.push(vm),
            Ok(Err(e)) => errs.push(uvm_bench::chain(&e)),
            Err(e) => errs.push(e.to_string()),
        }
    }
    let ok = vms.len();
    for vm in vms {
        let _ = vm.terminate().await;
    }
    (secs, n - ok, errs)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let rpc: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let cfg = ManagerConfig {
        rpc_timeout: Duration::from_secs(rpc),
        ..ManagerConfig::default()
    };
    for (name, c) in [("Manager::new()", None), ("rpc_timeout raised", Some(cfg))] {
        let (secs, failures, errs) = step(n, &image, c).await;
        println!(
            "{name:<20} {n} VMs: all done {secs:.1} s, {failures} failures {:?}",
            errs.first()
        );
    }
}
