//! Log output of `uvmctl`: warnings by default, guest logs with -v.

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber. `RUST_LOG` overrides the verbosity flags.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,uvm=info,uvm::guest=info,uvm_vmm=info,uvmctl=info",
        2 => "info,uvm=debug,uvm_guest=debug,uvm_vmm=debug,uvmctl=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 0)
        .try_init();
}
