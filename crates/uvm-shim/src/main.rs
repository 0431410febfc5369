//! `containerd-shim-uvm-v2`: see the `uvm_shim` crate.

#[tokio::main]
async fn main() {
    let config = containerd_shim::Config {
        // QEMU is the shim's child and uvm waits on it itself: the shim
        // library must not reap children behind its back.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<uvm_shim::UvmShim>(uvm_shim::RUNTIME_ID, Some(config))
        .await;
}
