//! Profiling aid: raw baseline boot without a serial device (`-serial none`,
//! as the baseline runs) vs with a UART logging to a file (as our backend
//! wires the console), interleaved. Prints medians of spawn-to-first-byte.
//! `cargo run --release -p uvm-bench --example raw_console_ab -- [RUNS]`

use uvm_bench::stats::{median, ms};
use uvm_bench::{raw, setup, BenchOptions, KernelKind};

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let image = setup::raw_image(&KernelKind::Tuned).expect("raw image");
    let mut plain = setup::baseline(&image, &image.initrd, &BenchOptions::quick(), 128);
    plain.keep_console = false;
    let mut uart = plain.clone();
    uart.keep_console = true;
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..runs {
        a.push(ms(raw::raw_run(&plain, None)
            .await
            .expect("plain")
            .first_byte));
        b.push(ms(raw::raw_run(&uart, None)
            .await
            .expect("uart")
            .first_byte));
    }
    println!(
        "raw boot, -serial none: {:.1} ms; with a UART to a file: {:.1} ms (medians of {runs})",
        median(&a).unwrap(),
        median(&b).unwrap()
    );
}
