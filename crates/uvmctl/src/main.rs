//! `uvmctl`: run commands in Utility VMs. Thin: the logic lives in the libraries.

mod bench;
mod cli;
mod container;
mod devices;
mod exit;
mod image;
mod logging;
mod run;
mod snapshot;
mod stats_table;
mod tty;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help/--version print and exit 0; every usage error is ours: 125.
            let code = if e.use_stderr() {
                exit::UVMCTL_FAILED
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    logging::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("uvmctl: starting the async runtime: {e}");
            std::process::exit(exit::UVMCTL_FAILED);
        }
    };
    let code = runtime.block_on(async move {
        let result = match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Doc(args) => image::doc(args).await.map(|()| 0),
            Command::Image(cmd) => image::image(cmd).await.map(|()| 0),
            Command::Bench(args) => bench::bench(args).await.map(|()| 0),
            Command::Snapshot(cmd) => snapshot::snapshot(cmd).await.map(|()| 0),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                exit::report(&e);
                exit::UVMCTL_FAILED
            }
        }
    });
    // Don't wait for blocked stdin readers: the VM is gone, we are done.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
