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

    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("payload.bin");
    let s = raw::raw_run_into(&base, Some(1 << 20), raw::RawSource::Static, Some(&sink))
        .await
        .expect("raw payload");
    assert_eq!(s.payload.map(|p| p.0), Some(1 << 20));
    assert_eq!(std::fs::metadata(&sink).unwrap().len(), 1 << 20);
    std::fs::remove_file(&sink).unwrap();

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

/// Our side of the stdout measurement: the raw baseline's writer copied into
/// a UVM through stdin, run there with its stdout to a host file.
#[tokio::test]
async fn static_writer_runs_in_our_guest() {
    let image = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("our image");
    let vm = uvm_bench::ours::OurVm::boot("bench-writer-test", &image, 128, 1)
        .await
        .expect("boot");
    let writer = uvm_image::compile_rawinit(&|_| {}).expect("rawinit");
    uvm_bench::ours::install_writer(&vm, &writer)
        .await
        .expect("writer copied in");
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB + 1 byte: a partial last chunk.
    let mib_s = uvm_bench::ours::stdout_static_mib_s(&vm, (1 << 20) + 1, dir.path())
        .await
        .expect("1 MiB + 1 through the writer, size checked");
    assert!(mib_s > 0.0);
    let (code, _) = vm
        .exec(&[uvm_bench::ours::GUEST_WRITER], None)
        .await
        .expect("usage run");
    assert_eq!(code, 2, "no arguments: usage, exit 2");
    vm.terminate().await.expect("terminate");
}
