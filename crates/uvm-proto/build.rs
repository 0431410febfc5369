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
        // No `GcsClient::connect`: the host builds its own channel over the
        // GCS stream, and the agent must not need tonic's transport.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
