//! Profiling aid for the stdout path: boots one UVM (tuned kernel) and times
//! a few producers, in-guest only (to /dev/null) and through exec to a host file.
//! `cargo run --release -p uvm-bench --example stdout_profile -- [MIB]`

use uvm_bench::ours::{self, OurVm};

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(32);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let vm = OurVm::boot("stdout-profile", &image, 128, 1)
        .await
        .expect("boot");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = mib << 20;
    let producers = [
        format!("head -c {n} /dev/zero"),
        format!("dd if=/dev/zero bs=65536 count={} 2>/dev/null", n >> 16),
        format!("dd if=/dev/zero bs=4096 count={} 2>/dev/null", n >> 12),
    ];
    for p in &producers {
        // In-guest only: the producer's own speed, timed by /proc/uptime.
        let script =
            format!("read a x </proc/uptime; {p} >/dev/null; read b x </proc/uptime; echo $a $b");
        let (_, _) = vm
            .exec(&["sh", "-c", &script], Some(&out))
            .await
            .expect("exec");
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        let guest_ms = ours::parse_floor(&t, 1).unwrap_or(f64::NAN);
        let (code, d) = vm.exec(&["sh", "-c", p], Some(&out)).await.expect("exec");
        let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "{p:<45} in-guest to /dev/null: {:>7.1} MiB/s | exec to host file: {:>7.1} MiB/s (exit {code}, {got} bytes)",
            mib as f64 / (guest_ms / 1000.0),
            mib as f64 / d.as_secs_f64()
        );
    }
    vm.terminate().await.expect("terminate");
}
