//! Profiling aid: guest stdout (dd, 64 KiB blocks, and the raw baseline's
//! static writer) through exec, host side discarding vs writing a host file,
//! interleaved with the raw virtio-serial baselines (static buffer, and
//! /dev/zero reads as dd does); MiB/s medians.
//! `cargo run --release -p uvm-bench --example stdout_sink_ab -- [MIB] [RUNS]`

use uvm_bench::ours::OurVm;
use uvm_bench::raw;
use uvm_bench::stats::median;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let image = uvm_image::ensure_image(&uvm_bench::KernelKind::Tuned, &|_| {}).expect("image");
    let vm = OurVm::boot("stdout-sink-ab", &image, 128, 1)
        .await
        .expect("boot");
    // SINK_DIR: where the host file goes (default: a temp dir).
    let dir = match std::env::var_os("SINK_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let out = dir.path().join("out");
    let count = format!("count={}", (mib << 20) >> 16);
    let dd = ["dd", "if=/dev/zero", "bs=65536", &count];
    let raw_img = uvm_bench::setup::raw_image(&uvm_bench::KernelKind::Tuned).expect("raw image");
    let opts = uvm_bench::BenchOptions::quick();
    let base = uvm_bench::setup::baseline(&raw_img, &raw_img.initrd, &opts, 128);
    let raw_mib_s = |s: raw::RawSample| s.payload_mib_s().expect("payload");
    let writer = uvm_image::compile_rawinit(&|_| {}).expect("rawinit");
    uvm_bench::ours::install_writer(&vm, &writer)
        .await
        .expect("writer");
    let n = (mib << 20).to_string();
    let static_writer = [uvm_bench::ours::GUEST_WRITER, "write", &n];
    let (mut discard, mut file, mut rs, mut rz, mut to_null) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut s_file, mut s_null) = (vec![], vec![]);
    for _ in 0..runs {
        rs.push(raw_mib_s(
            raw::raw_run_into(&base, Some(mib << 20), raw::RawSource::Static, None)
                .await
                .expect("raw"),
        ));
        rz.push(raw_mib_s(
            raw::raw_run_into(&base, Some(mib << 20), raw::RawSource::Zero, None)
                .await
                .expect("raw"),
        ));
        let null = std::path::Path::new("/dev/null");
        discard.push(mib_s(&vm, &dd, None, mib).await);
        file.push(mib_s(&vm, &dd, Some(&out), mib).await);
        to_null.push(mib_s(&vm, &dd, Some(null), mib).await);
        s_file.push(mib_s(&vm, &static_writer, Some(&out), mib).await);
        s_null.push(mib_s(&vm, &static_writer, Some(null), mib).await);
    }
    println!(
        "{mib} MiB x {runs}: discarded {:.1} MiB/s, to a host file {:.1} MiB/s; raw static {:.1}, raw dd-like {:.1} MiB/s; to /dev/null {:.1}; static writer to a host file {:.1}, to /dev/null {:.1}",
        median(&discard).unwrap(),
        median(&file).unwrap(),
        median(&rs).unwrap(),
        median(&rz).unwrap(),
        median(&to_null).unwrap(),
        median(&s_file).unwrap(),
        median(&s_null).unwrap()
    );
    vm.terminate().await.expect("terminate");
}

/// One exec of `args` with stdout to `out` (a regular file is removed after);
/// MiB/s of the whole exec.
async fn mib_s(vm: &OurVm, args: &[&str], out: Option<&std::path::Path>, mib: usize) -> f64 {
    let (_, d) = vm.exec(args, out).await.expect("exec");
    if let Some(p) = out.filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file())) {
        let _ = std::fs::remove_file(p);
    }
    mib as f64 / d.as_secs_f64()
}
