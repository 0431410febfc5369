//! Builds the real images (agent + busybox + modules) when the agent has
//! been built, and checks their layout. Skips with a reason otherwise.

use std::collections::BTreeMap;
use std::io::Read;

use uvm_image::{ensure_image, locate_agent, KernelKind, MachineHint};

/// name -> (mode, data) of every entry of a newc archive.
fn entries(bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut r = bytes;
    loop {
        let mut reader = cpio::NewcReader::new(r).expect("valid newc entry");
        if reader.entry().is_trailer() {
            return out;
        }
        let (name, mode) = (reader.entry().name().to_owned(), reader.entry().mode());
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        out.insert(name, (mode, data));
        r = reader.finish().unwrap();
    }
}

#[test]
fn stock_image_layout_and_module_order() {
    if let Err(e) = locate_agent() {
        if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
            panic!("UVM_REQUIRE_REAL_VM=1 but {e}");
        }
        eprintln!("skipping: {e}");
        return;
    }
    let image =
        ensure_image(&KernelKind::Stock, &|l| eprintln!("[image] {l}")).expect("stock image");
    assert_eq!(image.machine, MachineHint::Q35);
    let bytes = std::fs::read(&image.initrd).unwrap();
    let e = entries(&bytes);
    assert_eq!(e["init"].0, 0o100755);
    assert_eq!(e["dev/console"].0, 0o020600);
    assert!(
        e.contains_key("bin/busybox")
            && e.contains_key("bin/sh")
            && e.contains_key("sys/fs/cgroup")
    );
    let order = String::from_utf8(e["lib/modules/uvm-load-order"].1.clone()).unwrap();
    let paths: Vec<&str> = order.lines().collect();
    let pos = |name: &str| {
        paths
            .iter()
            .position(|p| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} in {order}"))
    };
    assert!(pos("/virtio_ring.ko") < pos("/virtio.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_pci.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_console.ko"));
    for p in &paths {
        assert!(
            e.contains_key(p.trim_start_matches('/')),
            "{p} listed but not shipped"
        );
    }
    // Cached: a second call returns the same file.
    let again = ensure_image(&KernelKind::Stock, &|_| {}).unwrap();
    assert_eq!(again.initrd, image.initrd);
}
