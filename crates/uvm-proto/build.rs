//! Compiles the `.proto` files with the pure-Rust `protox` compiler, so building
//! uvm never needs `protoc` on the host.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/gcs.proto", "proto/stats.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
