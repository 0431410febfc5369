//! Create failures: each names its cause and leaves no process or runtime dir.

mod common;

use common::*;
use uvm_schema::LcowDocumentBuilder;
use uvm_vmm::{ChannelSet, ExitReason, VmmError};

#[tokio::test]
async fn missing_qemu_binary_leaves_nothing() {
    let w = World::with(|c| c.binary = Some("/nonexistent/qemu-system-x86_64".into()));
    let k = w.path("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&k, &i).build();
    let e =
        w.hv.create_vm("vm-nobin", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    assert!(matches!(e, VmmError::HypervisorNotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains("/nonexistent/qemu-system-x86_64"),
        "{e}"
    );
    w.assert_clean();
}

#[tokio::test]
async fn missing_kernel_names_the_field() {
    let w = World::new();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(w.path("no-vmlinux"), &i).build();
    let e =
        w.hv.create_vm("vm-nokernel", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath: kernel "),
        "{s}"
    );
    assert!(s.contains("no-vmlinux"), "{s}");
    w.assert_clean();
}

#[tokio::test]
async fn bad_id_and_missing_disk_are_refused() {
    let w = World::new();
    let k = w.path("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&k, &i)
        .scsi_disk(w.path("nope.vhdx"), true)
        .build();
    let e =
        w.hv.create_vm("a/b", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("VM id"), "{e}");
    let e =
        w.hv.create_vm("vm-nodisk", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("VirtualMachine.Devices.Scsi.0.Attachments.0.Path: disk "),
        "{s}"
    );
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_disk_fails_create_with_qemu_stderr_and_leaves_nothing() {
    let Some(kernel) = kernel_or_skip("unusable_disk") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let bad = w.path("corrupt.qcow2");
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.resize(4096, 0xff);
    std::fs::write(&bad, bytes).unwrap();
    let i = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &i)
        .memory_mb(128)
        .scsi_disk(&bad, false)
        .build();
    let e =
        w.hv.create_vm("vm-baddisk", &doc, &ChannelSet::default())
            .await
            .unwrap_err();
    match &e {
        VmmError::Exited {
            reason: ExitReason::HypervisorError { code, stderr_tail },
            ..
        } => {
            assert_ne!(*code, 0);
            assert!(stderr_tail.contains("corrupt.qcow2"), "{stderr_tail}");
        }
        other => panic!("{other:?}"),
    }
    w.assert_clean();
    assert_no_qemu_with(&w.root);
}
