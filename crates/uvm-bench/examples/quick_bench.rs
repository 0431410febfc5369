//! `uvmctl bench` equivalent: `cargo run --release -p uvm-bench --example quick_bench -- [--full] [--json FILE]`.
//! Environment: `UVM_BENCH_RUNS=N` overrides the run count; `RUST_LOG` sets the log filter.

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = if args.iter().any(|a| a == "--full") {
        uvm_bench::BenchOptions::full()
    } else {
        uvm_bench::BenchOptions::quick()
    };
    if let Some(n) = std::env::var("UVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.runs = n;
    }
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    match uvm_bench::run(&opts).await {
        Ok(rep) => {
            print!("{}", rep.table());
            if let Some(path) = json {
                std::fs::write(path, rep.to_json()).expect("write json");
            }
        }
        Err(e) => {
            eprintln!("bench failed: {}", uvm_bench::chain(&e));
            std::process::exit(1);
        }
    }
}
