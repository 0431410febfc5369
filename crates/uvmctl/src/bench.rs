//! `uvmctl bench`: the benchmark suite of `uvm-bench`, printed as a table and JSON.

use anyhow::Context;

use crate::cli::BenchArgs;

/// Runs the benchmarks, prints the table, writes JSON if asked.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let opts = if args.quick {
        uvm_bench::BenchOptions::quick()
    } else {
        uvm_bench::BenchOptions::full()
    };
    let opts = opts.only(args.only);
    let report = uvm_bench::run(&opts).await.context("benchmark")?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
