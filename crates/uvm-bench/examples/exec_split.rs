//! Profiling aid: where does an exec round trip go? Interleaves, on one UVM:
//! `exec_into_host(/bin/true)`, `Guest::spawn` + `wait` of `/bin/true`, and a
//! bare unary RPC (`Guest::stats`). Prints medians (ms).
//! `cargo run --release -p uvm-bench --example exec_split -- [N]`

use std::time::{Duration, Instant};
use uvm::Controller;
use uvm_bench::ours::{exec_true_ms, OurVm};
use uvm_bench::stats::{median, ms};
use uvm_guest::ProcessSpec;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let vm = OurVm::boot("exec-split", &image, 128, 1)
        .await
        .expect("boot");
    let guest = vm.mgr.guest().expect("guest");
    let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
    for _ in 0..n {
        a.push(exec_true_ms(&vm).await.expect("exec_into_host"));
        let t = Instant::now();
        let spec = ProcessSpec {
            args: vec!["/bin/true".into()],
            ..Default::default()
        };
        let mut p = guest.spawn(spec).await.expect("spawn");
        let spawned = t.elapsed();
        p.wait().await.expect("wait");
        b.push(ms(t.elapsed()));
        let t2 = Instant::now();
        guest.stats(Duration::from_secs(10)).await.expect("stats");
        c.push(ms(t2.elapsed()));
        let _ = spawned;
    }
    println!(
        "exec_into_host {:.2} ms | Guest::spawn+wait {:.2} ms | unary RPC (guest stats) {:.2} ms  (median of {n})",
        median(&a).unwrap(),
        median(&b).unwrap(),
        median(&c).unwrap()
    );
    vm.terminate().await.expect("terminate");
}
