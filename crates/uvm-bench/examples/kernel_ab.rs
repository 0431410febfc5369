//! Profiling aid: our UVM on the image's kernel vs another vmlinux (same
//! initramfs and command line), interleaved: create+start medians.
//! `cargo run --release -p uvm-bench --example kernel_ab -- VMLINUX [RUNS]`

use uvm_bench::ours::OurVm;
use uvm_bench::stats::{median, ms};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let other = args
        .first()
        .expect("usage: kernel_ab VMLINUX [RUNS]")
        .clone();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(9);
    let a = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let mut b = a.clone();
    b.kernel = other.into();
    let (mut ta, mut tb) = (vec![], vec![]);
    for i in 0..runs {
        for (img, out) in [(&a, &mut ta), (&b, &mut tb)] {
            let vm = OurVm::boot(&format!("kab-{i}"), img, 128, 1)
                .await
                .expect("boot");
            out.push(ms(vm.create + vm.start));
            vm.terminate().await.expect("terminate");
        }
    }
    println!(
        "A {}: create+start median {:.1} ms",
        a.kernel.display(),
        median(&ta).unwrap()
    );
    println!(
        "B {}: create+start median {:.1} ms ({runs} runs)",
        b.kernel.display(),
        median(&tb).unwrap()
    );
}
