//! Measurement aid (PERF.md): the floor of DESIGN §6's stack. As PID 1 it
//! mounts only sysfs and devtmpfs (to find and open the GCS port), builds
//! the current-thread runtime and serves the real GCS service on the port;
//! no /proc, config, logging, other mounts, hostname, reaper task or log and
//! entropy set-up. Booting it as `/init` (`boot_breakdown 10 FLOOR_BINARY`)
//! shows how fast any agent on tokio + hyper + h2 + tonic can answer the
//! host's `Negotiate` under TCG.

use nix::mount::{mount, MsFlags};
use uvm_gcs::reaper::Reaper;
use uvm_gcs::service::{Agent, Role};

fn main() {
    for (fs, dir) in [("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = mount(Some(fs), dir, Some(fs), MsFlags::empty(), None::<&str>);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let agent = Agent::new(Reaper::new(), Role::Init);
        uvm_gcs::server::serve_port(agent, uvm_proto::ports::GCS).await
    })
}
