//! Profiling aid: idle QEMU Rss and exec latency of our UVM (128 MiB guest)
//! for several TCG translation-cache caps (`QemuConfig::tb_size_mb`).
//! `cargo run --release -p uvm-bench --example tb_size_rss -- [MIB...]`

use std::sync::Arc;
use std::time::Duration;
use uvm_bench::ours::{exec_true_ms, OurVm};
use uvm_bench::{memory, stats::median, KernelKind};
use uvm_vmm::{QemuConfig, QemuHypervisor};

#[tokio::main]
async fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![16, 32, 64, 128]
    } else {
        sizes
    };
    let image = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image");
    for tb in sizes {
        let hv = QemuHypervisor::with_config(QemuConfig {
            tb_size_mb: tb,
            ..QemuConfig::default()
        });
        let mgr = uvm::Manager::with_hypervisor(Arc::new(hv));
        let vm = OurVm::boot_with(mgr, &format!("tb-{tb}"), &image, 128, 1)
            .await
            .expect("boot");
        let boot = (vm.create + vm.start).as_secs_f64() * 1000.0;
        let mut ex = Vec::new();
        for _ in 0..20 {
            ex.push(exec_true_ms(&vm).await.expect("exec"));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = memory::qemu_children_rss_mib();
        println!("tb-size {tb:>4} MiB: idle QEMU Rss {rss:>6.1} MiB, boot {boot:>6.1} ms, exec true median {:>5.1} ms", median(&ex).unwrap());
        if std::env::var_os("UVM_BENCH_SMAPS").is_some() {
            for pid in memory::qemu_children() {
                print_top_mappings(pid);
            }
        }
        vm.terminate().await.expect("terminate");
    }
}

/// The five largest mappings of `pid` by Rss.
fn print_top_mappings(pid: u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, String)> = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') && f[1].len() == 4 {
            // A mapping header: range perms offset dev inode [path].
            name = format!("{} {}", f[0], f.get(5).unwrap_or(&"[anon]"));
        } else if f.first() == Some(&"Rss:") {
            maps.push((
                f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
                name.clone(),
            ));
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    for (kib, n) in maps.iter().take(5) {
        println!("    {:>8.1} MiB  {n}", *kib as f64 / 1024.0);
    }
}
