//! Profiling aid: our UVM with the image's cmdline vs with extra kernel
//! cmdline words (e.g. `uvm.log_level=warn`), interleaved: boot and exec `true`.
//! `cargo run --release -p uvm-bench --example cmdline_ab -- RUNS WORDS...`

use uvm_bench::ours::{exec_true_ms, OurVm};
use uvm_bench::stats::{median, ms};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let extra = args.get(1..).map(|w| w.join(" ")).unwrap_or_default();
    let a = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let mut b = a.clone();
    b.cmdline = format!("{} {extra}", b.cmdline);
    let mut res = vec![(vec![], vec![]); 2];
    for i in 0..runs {
        for (k, img) in [&a, &b].into_iter().enumerate() {
            let vm = OurVm::boot(&format!("cl-{k}-{i}"), img, 128, 1)
                .await
                .expect("boot");
            res[k].0.push(ms(vm.create + vm.start));
            exec_true_ms(&vm).await.expect("warm-up");
            for _ in 0..10 {
                res[k].1.push(exec_true_ms(&vm).await.expect("exec"));
            }
            vm.terminate().await.expect("terminate");
        }
    }
    for (k, name) in ["image cmdline", &format!("+ {extra}")].iter().enumerate() {
        let (bt, ex) = &res[k];
        println!(
            "{name:<28} boot {:>6.1} ms | exec true {:>5.2} ms (medians, {runs} runs)",
            median(bt).unwrap(),
            median(ex).unwrap()
        );
    }
}
