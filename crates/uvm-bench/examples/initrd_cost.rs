//! Profiling aid: what does initramfs size cost at boot? Boots the raw
//! baseline (tuned kernel) with its own initrd and with the same initrd plus
//! an appended archive of N MiB (default: the size of our production
//! initramfs), interleaved, and prints the medians of spawn-to-first-byte.
//! `cargo run --release -p uvm-bench --example initrd_cost -- [RUNS] [PAD_MIB]`

use uvm_bench::stats::{median, ms};
use uvm_bench::{raw, setup, BenchOptions, KernelKind};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let opts = BenchOptions::quick();
    let image = setup::raw_image(&KernelKind::Tuned).expect("raw image");
    let ours = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image");
    let ours_len = std::fs::metadata(&ours.initrd)
        .map(|m| m.len())
        .unwrap_or(0) as usize;
    let raw_len = std::fs::metadata(&image.initrd)
        .map(|m| m.len())
        .unwrap_or(0) as usize;
    let pad = args
        .get(1)
        .and_then(|a| a.parse::<usize>().ok())
        .map_or(ours_len.saturating_sub(raw_len), |m| m << 20);
    let dir = tempfile::tempdir().unwrap();
    let padded = dir.path().join("padded.cpio");
    let mut bytes = std::fs::read(&image.initrd).unwrap();
    let mut a = uvm_image::cpio::Archive::new();
    // Incompressible-ish filler so the kernel really copies `pad` bytes.
    let filler: Vec<u8> = (0..pad)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    a.file("/pad/filler", 0o644, filler).unwrap();
    bytes.extend(a.to_bytes().unwrap());
    std::fs::write(&padded, &bytes).unwrap();
    let plain = setup::baseline(&image, &image.initrd, &opts, 128);
    let big = setup::baseline(&image, &padded, &opts, 128);
    let (mut p, mut b) = (vec![], vec![]);
    for _ in 0..runs {
        p.push(ms(raw::raw_run(&plain, None)
            .await
            .expect("plain")
            .first_byte));
        b.push(ms(raw::raw_run(&big, None)
            .await
            .expect("padded")
            .first_byte));
    }
    println!(
        "raw initrd {} KiB: median {:.1} ms; +{} KiB padding: median {:.1} ms (runs {runs}; production initramfs {} KiB)",
        raw_len >> 10,
        median(&p).unwrap(),
        pad >> 10,
        median(&b).unwrap(),
        ours_len >> 10
    );
}
