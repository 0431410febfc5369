//! Profiling aid: our UVM with the backend's default QEMU flags vs with extra
//! flags (`QemuConfig::extra_args`, e.g. `-cpu max`), interleaved: boot,
//! exec `true` and stdout throughput (dd bs=64k to a host file).
//! `cargo run --release -p uvm-bench --example qemu_args_ab -- [RUNS] -- EXTRA_ARGS...`
//! (`AB_BINARY_A` / `AB_BINARY_B`: a QEMU binary or wrapper for each side.)

use std::sync::Arc;
use uvm_bench::ours::{exec_true_ms, stdout_mib_s, OurVm};
use uvm_bench::stats::{median, ms};
use uvm_vmm::{QemuConfig, QemuHypervisor};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let runs: usize = args
        .first()
        .filter(|_| split > 0)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let extra: Vec<String> = args
        .get(split + 1..)
        .map(<[String]>::to_vec)
        .unwrap_or_default();
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let dir = tempfile::tempdir().unwrap();
    let binary = |v: &str| std::env::var_os(v).map(std::path::PathBuf::from);
    let configs = [
        QemuConfig {
            binary: binary("AB_BINARY_A"),
            ..QemuConfig::default()
        },
        QemuConfig {
            binary: binary("AB_BINARY_B"),
            extra_args: extra.clone(),
            ..QemuConfig::default()
        },
    ];
    let hvs: Vec<_> = configs
        .into_iter()
        .map(|c| Arc::new(QemuHypervisor::with_config(c)))
        .collect();
    let mut res = vec![(vec![], vec![], vec![]); 2];
    for i in 0..runs {
        for (k, hv) in hvs.iter().enumerate() {
            let mgr = uvm::Manager::with_hypervisor(hv.clone());
            let vm = OurVm::boot_with(mgr, &format!("ab-{k}-{i}"), &image, 128, 1)
                .await
                .expect("boot");
            res[k].0.push(ms(vm.create + vm.start));
            for _ in 0..5 {
                res[k].1.push(exec_true_ms(&vm).await.expect("exec"));
            }
            res[k].2.push(
                stdout_mib_s(&vm, 64 << 20, dir.path())
                    .await
                    .expect("stdout"),
            );
            vm.terminate().await.expect("terminate");
        }
    }
    for (k, name) in ["default flags", &format!("+ {}", extra.join(" "))]
        .iter()
        .enumerate()
    {
        let (b, e, s) = &res[k];
        println!(
            "{name:<20} boot {:>6.1} ms (p90 {:>6.1}) | exec true {:>5.2} ms | stdout {:>6.1} MiB/s (medians, {runs} runs)",
            median(b).unwrap(),
            uvm_bench::stats::percentile(b, 90.0).unwrap(),
            median(e).unwrap(),
            median(s).unwrap()
        );
    }
}
