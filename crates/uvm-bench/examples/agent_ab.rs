//! Profiling aid: agent binaries A/B/... interleaved on boot, exec `true`
//! and stdout throughput (32 MiB `dd bs=64k` to a host file), same kernel.
//! `cargo run --release -p uvm-bench --example agent_ab -- ROUNDS AGENT...`
//! (`AB_CPUS=N`: guest vCPUs, default 1).

use uvm_bench::ours::{exec_true_ms, stdout_mib_s, OurVm};
use uvm_bench::stats::{median, ms};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let agents = &args[1..];
    let mut images = Vec::new();
    for a in agents {
        std::env::set_var("UVM_AGENT", a);
        images
            .push(uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image"));
    }
    let cpus: u32 = std::env::var("AB_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let mut res = vec![(vec![], vec![], vec![]); agents.len()];
    for i in 0..rounds {
        for (k, img) in images.iter().enumerate() {
            let vm = OurVm::boot(&format!("ab-{k}-{i}"), img, 128, cpus)
                .await
                .expect("boot");
            res[k].0.push(ms(vm.create + vm.start));
            exec_true_ms(&vm).await.expect("warm-up");
            for _ in 0..10 {
                res[k].1.push(exec_true_ms(&vm).await.expect("exec"));
            }
            for _ in 0..2 {
                res[k].2.push(
                    stdout_mib_s(&vm, 32 << 20, dir.path())
                        .await
                        .expect("stdout"),
                );
            }
            vm.terminate().await.expect("terminate");
        }
    }
    println!(
        "rounds {rounds}, {cpus} vCPU(s); loadavg {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for (k, a) in agents.iter().enumerate() {
        let (b, e, s) = &res[k];
        println!(
            "{a:<40} boot {:>6.1} ms | exec true {:>5.2} ms | stdout {:>6.1} MiB/s (medians; stdout {:?})",
            median(b).unwrap(),
            median(e).unwrap(),
            median(s).unwrap(),
            s.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
}
