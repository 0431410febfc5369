//! Profiling aid: A/B boot of our UVM with two agent binaries (e.g. as built
//! vs stripped), interleaved, same kernel and memory. Prints medians.
//! `cargo run --release -p uvm-bench --example boot_ab -- AGENT_B [RUNS]`
//! (A = the agent `uvm_image::locate_agent` finds, B = the given file).

use uvm_bench::ours::OurVm;
use uvm_bench::stats::{median, ms};
use uvm_bench::KernelKind;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let agent_b = args.first().expect("usage: boot_ab AGENT_B [RUNS]").clone();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let a = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image A");
    std::env::set_var("UVM_AGENT", &agent_b);
    let b = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image B");
    std::env::remove_var("UVM_AGENT");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() >> 10).unwrap_or(0);
    let (mut ta, mut tb) = (vec![], vec![]);
    for i in 0..runs {
        for (img, out) in [(&a, &mut ta), (&b, &mut tb)] {
            let vm = OurVm::boot(&format!("ab-{i}"), img, 128, 1)
                .await
                .expect("boot");
            out.push(ms(vm.create + vm.start));
            vm.terminate().await.expect("terminate");
        }
    }
    println!(
        "A initrd {} KiB: create+start median {:.1} ms",
        size(&a.initrd),
        median(&ta).unwrap()
    );
    println!(
        "B initrd {} KiB: create+start median {:.1} ms (runs {runs})",
        size(&b.initrd),
        median(&tb).unwrap()
    );
}
