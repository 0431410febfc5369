//! Boots the raw-boot baseline once and the qemu-guest-agent peer once
//! (tuned kernel). Asserts that they worked, never how fast.

use std::time::Duration;
use uvm_bench::{qga_image, raw, setup, BenchOptions, KernelKind};

#[tokio::test]
async fn raw_boot_and_qga_exec_once() {
    let opts = BenchOptions::quick();
    let image = setup::raw_image(&KernelKind::Tuned).expect("raw baseline image");
    let base = setup::baseline(&image, &image.initrd, &opts, 128);
    let s = raw::raw_run(&base, None)
        .await
        .expect("raw boot to first byte");
    assert!(s.first_byte > Duration::ZERO && s.payload.is_none());
    eprintln!("raw boot to first byte: {:?}", s.first_byte);

    let s = raw::raw_run(&base, Some(1 << 20))
        .await
        .expect("raw payload");
    assert_eq!(s.payload.map(|p| p.0), Some(1 << 20));

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("qga.cpio");
    qga_image::build(&initrd).expect("qga image");
    let peer = setup::baseline(&image, &initrd, &opts, 128);
    let mut vm = raw::start_qga(&peer)
        .await
        .expect("qga peer boots and syncs");
    let st = vm
        .client
        .run("/bin/true", &[], Duration::from_millis(1), raw::WAIT)
        .await
        .expect("guest-exec true");
    assert_eq!(st.exitcode, Some(0));
    let st = vm
        .client
        .run(
            "/bin/sh",
            &["-c", "echo hi"],
            Duration::from_millis(1),
            raw::WAIT,
        )
        .await
        .unwrap();
    assert_eq!(st.out, b"hi\n");
}
