//! Profiling aid: `create_vm` + `start_vm` with a fresh `Manager::new()` (its
//! own QemuHypervisor, which probes the QEMU binary: `--version` and
//! `-sandbox`) vs a Manager on one shared, already-probed QemuHypervisor.
//! Interleaved; prints medians.
//! `cargo run --release -p uvm-bench --example create_ab -- [RUNS]`

use std::sync::Arc;
use uvm_bench::ours::OurVm;
use uvm_bench::stats::{median, ms};
use uvm_vmm::QemuHypervisor;

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let shared = Arc::new(QemuHypervisor::new());
    // Warm the shared probe.
    let vm = OurVm::boot_with(
        uvm::Manager::with_hypervisor(shared.clone()),
        "warm",
        &image,
        128,
        1,
    )
    .await
    .expect("boot");
    vm.terminate().await.expect("terminate");
    let (mut fc, mut fs, mut sc, mut ss) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let vm = OurVm::boot(&format!("fresh-{i}"), &image, 128, 1)
            .await
            .expect("boot");
        fc.push(ms(vm.create));
        fs.push(ms(vm.start));
        vm.terminate().await.expect("terminate");
        let mgr = uvm::Manager::with_hypervisor(shared.clone());
        let vm = OurVm::boot_with(mgr, &format!("shared-{i}"), &image, 128, 1)
            .await
            .expect("boot");
        sc.push(ms(vm.create));
        ss.push(ms(vm.start));
        vm.terminate().await.expect("terminate");
    }
    let m = |v: &Vec<f64>| median(v).unwrap();
    println!(
        "Manager::new():            create {:.1} ms, start {:.1} ms",
        m(&fc),
        m(&fs)
    );
    println!(
        "shared probed hypervisor:  create {:.1} ms, start {:.1} ms (median of {runs})",
        m(&sc),
        m(&ss)
    );
}
