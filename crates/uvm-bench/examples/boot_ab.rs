//! Profiling aid: A/B boot of our UVM, interleaved, same memory. Prints medians.
//! `cargo run --release -p uvm-bench --example boot_ab -- B [RUNS]`
//! A = the image as built (the agent `uvm_image::locate_agent` finds); B =
//! the same with another agent binary (`B` a path) or another kernel
//! (`B` = `kernel=VMLINUX`, same initramfs and command line).

use uvm_bench::ours::OurVm;
use uvm_bench::stats::{median, ms};
use uvm_bench::KernelKind;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args
        .first()
        .expect("usage: boot_ab AGENT_B|kernel=VMLINUX [RUNS]")
        .clone();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let a = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image A");
    let b = match variant.strip_prefix("kernel=") {
        Some(kernel) => {
            let mut b = a.clone();
            b.kernel = kernel.into();
            b
        }
        None => {
            std::env::set_var("UVM_AGENT", &variant);
            let b = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image B");
            std::env::remove_var("UVM_AGENT");
            b
        }
    };
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
        "A {} + initrd {} KiB: create+start median {:.1} ms",
        a.kernel.display(),
        size(&a.initrd),
        median(&ta).unwrap()
    );
    println!(
        "B {} + initrd {} KiB: create+start median {:.1} ms (runs {runs})",
        b.kernel.display(),
        size(&b.initrd),
        median(&tb).unwrap()
    );
}
