//! Devices from the document, checked from inside a real guest: disks sit
//! on the virtio-scsi controller at target = controller index, LUN = LUN.

mod common;

use common::*;
use tokio::io::AsyncReadExt;
use uvm_schema::LcowDocumentBuilder;
use uvm_vmm::{ChannelSet, ExitReason, UtilityVm};

fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        st.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_disks_share_and_com_port_work_in_the_guest() {
    let Some(kernel) = kernel_or_skip("devices") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    // raw (read-only) and qcow2 (writable) disks with known first bytes
    let raw = w.path("ro.raw");
    let mut data = b"RAW-DISK-CONTENT".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&raw, &data).unwrap();
    let src = w.path("src.raw");
    let mut data = b"QCOW-DISK-CONTNT".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&src, &data).unwrap();
    let qcow = w.path("rw.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    // vhdx, dynamic vhd and fixed vhd (footer only) images of the raw disk
    let mut extra = Vec::new();
    for (name, fmt, opts) in [
        ("d.vhdx", "vhdx", ""),
        ("d.vhd", "vpc", ""),
        ("f.vhd", "vpc", "subformat=fixed"),
    ] {
        let out = w.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
        qemu_img(&args);
        extra.push(out);
    }
    let share = w.path("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "HELLO-9P").unwrap();
    let com0 = w.path("com0.log");
    let script = format!(
        "{MOUNTS}\n\
         i=0; while [ $($B ls -d /sys/bus/scsi/devices/*:0:*:*/block/* 2>/dev/null | $B wc -l) -lt 5 ] && [ $i -lt 500 ]; do $B sleep 0.01; i=$((i+1)); done\n\
         for d in /sys/bus/scsi/devices/*:0:*:*; do n=$($B ls $d/block); a=$($B basename $d); \
           s=scsi-$(echo $a | $B cut -d: -f3)-$(echo $a | $B cut -d: -f4); \
           echo \"DISK $s $n ro=$($B cat /sys/block/$n/ro) head=$($B head -c 16 /dev/$n)\"; \
           if echo WRITTEN-BY-GUEST | $B dd of=/dev/$n bs=512 count=1 conv=sync,fsync 2>/dev/null; then echo \"WRITE $s ok\"; else echo \"WRITE $s failed\"; fi; \
         done\n\
         if $B grep -q 9p /proc/filesystems; then $B mount -t 9p -o trans=virtio,version=9p2000.L data /mnt && echo \"SHARE $($B cat /mnt/hello.txt)\"; else echo SHARE no-9p-in-kernel; fi\n\
         echo COM0-FROM-GUEST > /dev/ttyS0\n\
         echo DONE; $B poweroff -f"
    );
    let initrd = initramfs(w.tmp.path(), &script);
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .scsi_disk(&raw, true)
        .scsi_disk(&qcow, false)
        .plan9_share("data", &share, true)
        .com_port(&com0)
        .scsi_disk(&extra[0], true)
        .scsi_disk(&extra[1], true)
        .scsi_disk(&extra[2], true)
        .build();
    let g = boot(&w, "vm-devices", &doc, &ChannelSet::default()).await;
    g.vm.start().await.unwrap();
    let r = wait_bounded(g.vm.as_ref()).await;
    let console = g.vm.console_tail();
    assert_eq!(r, ExitReason::GuestPoweroff, "console:\n{console}");
    let line = |prefix: &str| -> String {
        // (SeaBIOS leaves escape sequences in front of the first line on q35)
        let l = console
            .lines()
            .find(|l| l.contains(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{console}"));
        l[l.find(prefix).unwrap()..].to_string()
    };
    let d0 = line("DISK scsi-0-0 ");
    assert!(
        d0.contains("ro=1") && d0.contains("head=RAW-DISK-CONTENT"),
        "{d0}"
    );
    let d1 = line("DISK scsi-0-1 ");
    assert!(
        d1.contains("ro=0") && d1.contains("head=QCOW-DISK-CONTNT"),
        "{d1}"
    );
    for lun in 2..5 {
        let d = line(&format!("DISK scsi-0-{lun} "));
        assert!(
            d.contains("ro=1") && d.contains("head=RAW-DISK-CONTENT"),
            "{d}"
        );
    }
    assert_eq!(line("WRITE scsi-0-0"), "WRITE scsi-0-0 failed");
    assert_eq!(line("WRITE scsi-0-1"), "WRITE scsi-0-1 ok");
    if line("SHARE ") == "SHARE no-9p-in-kernel" {
        // Only the stock distro kernel lacks 9p; the tuned kernel must have it.
        assert_eq!(
            uvm_vmm::qemu::kernel_format_of(&kernel),
            Some(uvm_vmm::qemu::KernelFormat::BzImage)
        );
        eprintln!(
            "NOTE: guest kernel {} has no 9p support; Plan9 share not checked",
            kernel.display()
        );
    } else {
        assert_eq!(line("SHARE "), "SHARE HELLO-9P");
    }
    // ComPort 0 gets the guest console; the runtime dir's console log still has a copy.
    let com = std::fs::read_to_string(&com0).unwrap();
    assert!(
        com.contains("COM0-FROM-GUEST") && com.contains("DISK scsi-0-0"),
        "{com}"
    );
    assert!(console.contains("COM0-FROM-GUEST"));
    // the read-only raw disk is untouched on the host
    assert!(std::fs::read(&raw)
        .unwrap()
        .starts_with(b"RAW-DISK-CONTENT"));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn com_port_to_a_unix_socket() {
    let Some(kernel) = kernel_or_skip("com_port_socket") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let sock = w.path("com0.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let initrd = initramfs(w.tmp.path(), "echo SOCKET-COM-OK; $B poweroff -f");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(128)
        .processors(1)
        .cmdline(cmdline())
        .com_port(&sock)
        .build();
    let g = boot(&w, "vm-comsock", &doc, &ChannelSet::default()).await;
    let (mut stream, _) = tokio::time::timeout(GUEST_TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    g.vm.start().await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("SOCKET-COM-OK") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "COM socket closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUEST_TIMEOUT, read)
        .await
        .expect("guest output on the COM socket");
    // The console log keeps a copy (chardev logfile).
    assert_eq!(wait_bounded(g.vm.as_ref()).await, ExitReason::GuestPoweroff);
    assert!(g.vm.console_tail().contains("SOCKET-COM-OK"));
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overcommit_preallocates_guest_memory() {
    let Some(kernel) = kernel_or_skip("prealloc") else {
        return;
    };
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd)
        .memory_mb(192)
        .processors(1)
        .allow_overcommit(false)
        .build();
    let g = boot(&w, "vm-prealloc", &doc, &ChannelSet::default()).await;
    assert!(g.vm.argv().iter().any(|a| a.contains("prealloc=on")));
    let st = g.vm.statistics().await.unwrap();
    assert!(st.working_set_bytes >= 192 << 20, "{st:?}");
    finish(&w, g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_document_on_microvm_argv() {
    let Some(kernel) = kernel_or_skip("default_argv") else {
        return;
    };
    if uvm_vmm::qemu::kernel_format_of(&kernel) != Some(uvm_vmm::qemu::KernelFormat::Elf) {
        eprintln!("SKIP default_document_on_microvm_argv: kernel is not an ELF vmlinux");
        return;
    }
    let _l = BOOT_LOCK.lock().await;
    let w = World::new();
    let initrd = initramfs(w.tmp.path(), "true");
    let doc = LcowDocumentBuilder::new(&kernel, &initrd).build();
    let ch = ChannelSet::default()
        .with("gcs", "gcs-port")
        .with("log", "log-port")
        .with("entropy", "entropy-port");
    let g = boot(&w, "vm-default", &doc, &ch).await;
    let argv = g.vm.argv().to_vec();
    eprintln!("argv: {}", argv.join(" "));
    let has = |pair: [&str; 2]| argv.windows(2).any(|x| x == pair);
    assert!(has(["-machine", "microvm,x-option-roms=off"]));
    assert!(has(["-device", "virtio-serial-device,id=vser0"]));
    assert!(has([
        "-device",
        "virtserialport,bus=vser0.0,chardev=ch-entropy,name=entropy-port"
    ]));
    assert!(has(["-device", "pvpanic"]));
    finish(&w, g).await;
}
