//! Writes the qemu-guest-agent peer initramfs to the path given as the first argument.
fn main() {
    let out = std::env::args().nth(1).expect("usage: qga_image OUT.cpio");
    uvm_bench::qga_image::build(std::path::Path::new(&out)).expect("build qga image");
}
