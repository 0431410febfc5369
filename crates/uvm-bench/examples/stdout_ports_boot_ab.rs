//! Profiling aid: what stdout ports cost a boot. Boots with 0 and with the
//! default number of stdout ports, interleaved, same kernel and memory;
//! prints create+start and exec `true` medians, and idle QEMU Rss.
//! `cargo run --release -p uvm-bench --example stdout_ports_boot_ab -- [RUNS]`

use std::time::Duration;

use uvm::{Manager, ManagerConfig};
use uvm_bench::ours::{self, OurVm};
use uvm_bench::stats::{median, ms};

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let variants = [0, 1];
    let mut boot = vec![Vec::new(); variants.len()];
    let mut rss = vec![Vec::new(); variants.len()];
    let mut exec = vec![Vec::new(); variants.len()];
    for i in 0..runs {
        for (k, &ports) in variants.iter().enumerate() {
            let mgr = Manager::from_config(ManagerConfig {
                stdout_ports: ports,
                ..ManagerConfig::default()
            });
            let vm = OurVm::boot_with(mgr, &format!("ports-ab-{i}-{k}"), &image, 128, 1)
                .await
                .expect("boot");
            boot[k].push(ms(vm.create + vm.start));
            for _ in 0..10 {
                exec[k].push(ours::exec_true_ms(&vm).await.expect("exec"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss[k].push(uvm_bench::memory::qemu_children_rss_mib());
            vm.terminate().await.expect("terminate");
        }
    }
    for (k, ports) in variants.iter().enumerate() {
        println!(
            "{ports} stdout ports: create+start median {:.1} ms, exec `true` {:.2} ms, idle QEMU Rss {:.1} MiB ({runs} runs)",
            median(&boot[k]).unwrap(),
            median(&exec[k]).unwrap(),
            median(&rss[k]).unwrap()
        );
    }
}
