use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub(crate) fn sample() -> QemuCommand {
    QemuCommand {
        name: "vm1".into(),
        machine: Machine::Microvm,
        accel: Accel::Tcg,
        tb_size_mb: 64,
        memory_mb: 512,
        prealloc: false,
        memory: GuestMemory::Anonymous,
        incoming: false,
        cpus: 2,
        kernel: "/k/vmlinux".into(),
        initrd: Some("/k/initrd.img".into()),
        append: "console=ttyS0 panic=-1".into(),
        qmp_socket: "/run/uvm/vm1/qmp.sock".into(),
        channels: vec![],
        serials: vec![],
        virtio_console: None,
        scsi_hba: false,
        disks: vec![],
        balloon: false,
        share_export: None,
        shares: vec![],
        pvpanic: true,
        sandbox: None,
        extra: vec![],
    }
}

#[test]
fn kernel_format_by_magic() {
    assert_eq!(
        detect_kernel_format(b"\x7fELF\x02\x01"),
        Some(KernelFormat::Elf)
    );
    let mut bz = vec![0u8; 0x210];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    assert_eq!(detect_kernel_format(&bz), Some(KernelFormat::BzImage));
    assert_eq!(detect_kernel_format(b"MZ"), None);
}

#[test]
fn disk_format_by_magic() {
    assert_eq!(
        detect_disk_format(b"QFI\xfb\0\0\0\x03", b""),
        DiskFormat::Qcow2
    );
    assert_eq!(detect_disk_format(b"vhdxfile", b""), DiskFormat::Vhdx);
    assert_eq!(detect_disk_format(b"conectix", b""), DiskFormat::Vpc);
    let mut tail = vec![0u8; 512];
    tail[..8].copy_from_slice(b"conectix");
    assert_eq!(detect_disk_format(&[0u8; 512], &tail), DiskFormat::Vpc);
    assert_eq!(
        detect_disk_format(&[0u8; 512], &[0u8; 512]),
        DiskFormat::Raw
    );
}

#[test]
fn escaping_commas() {
    assert_eq!(esc(Path::new("/a,b/c")), "/a,,b/c");
}

#[test]
fn base_flags() {
    let a = sample().base_args();
    for f in [
        "-S",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ] {
        assert!(a.contains(&f.to_string()), "{f}");
    }
    assert!(a.windows(2).any(|w| w == s(&["-action", "panic=shutdown"])));
    assert!(a
        .windows(2)
        .any(|w| w == s(&["-name", "guest=vm1,debug-threads=on"])));
}

#[test]
fn machine_microvm_tcg() {
    assert_eq!(
        sample().machine_args(),
        s(&[
            "-machine",
            "microvm,x-option-roms=off",
            "-accel",
            "tcg,tb-size=64"
        ])
    );
}

#[test]
fn machine_q35_kvm_prealloc() {
    let mut c = sample();
    c.machine = Machine::Q35;
    c.accel = Accel::Kvm;
    c.prealloc = true;
    assert_eq!(
        c.machine_args(),
        s(&[
            "-machine",
            "q35,memory-backend=mem0",
            "-accel",
            "kvm",
            "-cpu",
            "host"
        ])
    );
    assert_eq!(
        c.memory_cpu_args(),
        s(&[
            "-m",
            "512M",
            "-object",
            "memory-backend-ram,id=mem0,size=512M,prealloc=on",
            "-smp",
            "2"
        ])
    );
}

#[test]
fn snapshot_memory_backends_and_incoming() {
    let mut c = sample();
    c.memory = GuestMemory::SharedMemfd;
    assert!(c.machine_args()[1].ends_with(",memory-backend=mem0"));
    assert_eq!(
        c.memory_cpu_args()[3],
        "memory-backend-memfd,id=mem0,size=512M,share=on"
    );
    c.memory = GuestMemory::PrivateFile("/snap,1/memory".into());
    c.prealloc = true;
    assert_eq!(
        c.memory_cpu_args()[3],
        "memory-backend-file,id=mem0,size=512M,share=off,mem-path=/snap,,1/memory"
    );
    assert!(!c.base_args().contains(&"-incoming".to_string()));
    c.incoming = true;
    let base = c.base_args();
    assert_eq!(base[base.len() - 2..], s(&["-incoming", "defer"]));
}

#[test]
fn memory_and_cpus() {
    assert_eq!(sample().memory_cpu_args(), s(&["-m", "512M", "-smp", "2"]));
}

#[test]
fn boot() {
    assert_eq!(
        sample().boot_args(),
        s(&[
            "-kernel",
            "/k/vmlinux",
            "-initrd",
            "/k/initrd.img",
            "-append",
            "console=ttyS0 panic=-1"
        ])
    );
    let mut c = sample();
    c.initrd = None;
    assert_eq!(
        c.boot_args(),
        s(&["-kernel", "/k/vmlinux", "-append", "console=ttyS0 panic=-1"])
    );
}

#[test]
fn qmp_connects_to_our_socket() {
    assert_eq!(
        sample().qmp_args(),
        s(&[
            "-chardev",
            "socket,id=qmp,path=/run/uvm/vm1/qmp.sock",
            "-mon",
            "chardev=qmp,mode=control"
        ])
    );
}

#[test]
fn serial_console_file_with_log() {
    let p = SerialPort {
        index: 0,
        backend: SerialBackend::File("/r/console.log".into()),
        log: None,
    };
    assert_eq!(
        p.args(),
        s(&[
            "-chardev",
            "file,id=com0,path=/r/console.log,append=on",
            "-serial",
            "chardev:com0"
        ])
    );
    let p = SerialPort {
        index: 1,
        backend: SerialBackend::Socket("/tmp/com1.sock".into()),
        log: Some("/r/com1.log".into()),
    };
    assert_eq!(
        p.args(),
        s(&[
            "-chardev",
            "socket,id=com1,path=/tmp/com1.sock,logfile=/r/com1.log,logappend=on",
            "-device",
            "isa-serial,chardev=com1,index=1"
        ])
    );
}

#[test]
fn channels_on_microvm_and_q35() {
    let mut c = sample();
    assert!(c.channel_args().is_empty());
    c.channels.push(ChannelPort {
        role: "gcs".into(),
        socket: "/r/gcs.sock".into(),
        port_name: "svc".into(),
    });
    assert_eq!(
        c.channel_args(),
        s(&[
            "-device",
            "virtio-serial-device,id=vser0",
            "-chardev",
            "socket,id=ch-gcs,path=/r/gcs.sock",
            "-device",
            "virtserialport,bus=vser0.0,chardev=ch-gcs,name=svc"
        ])
    );
    c.machine = Machine::Q35;
    assert_eq!(c.channel_args()[1], "virtio-serial-pci,id=vser0");
}

#[test]
fn virtio_console_comes_first_on_the_bus() {
    let mut c = sample();
    c.virtio_console = Some("/r/console.log".into());
    assert_eq!(
        c.channel_args(),
        s(&[
            "-device",
            "virtio-serial-device,id=vser0",
            "-chardev",
            "file,id=vcon,path=/r/console.log,append=on",
            "-device",
            "virtconsole,bus=vser0.0,chardev=vcon,name=console"
        ])
    );
    c.channels.push(ChannelPort {
        role: "gcs".into(),
        socket: "/r/gcs.sock".into(),
        port_name: "svc".into(),
    });
    let args = c.channel_args();
    let console = args
        .iter()
        .position(|a| a.starts_with("virtconsole"))
        .unwrap();
    let gcs = args
        .iter()
        .position(|a| a.starts_with("virtserialport"))
        .unwrap();
    assert!(console < gcs, "{args:?}");
}

#[test]
fn disk_is_a_blockdev_and_a_scsi_hd_at_its_address() {
    let d = Disk {
        path: "/d/a,b.qcow2".into(),
        format: DiskFormat::Qcow2,
        read_only: true,
        controller: 1,
        lun: 5,
    };
    let a = d.args();
    assert_eq!(a[0], "-blockdev");
    let node: serde_json::Value = serde_json::from_str(&a[1]).unwrap();
    assert_eq!(
        node,
        serde_json::json!({"driver": "qcow2", "node-name": "disk-1-5", "read-only": true,
            "file": {"driver": "file", "filename": "/d/a,b.qcow2", "read-only": true}})
    );
    assert_eq!(
        &a[2..],
        &s(&[
            "-device",
            "scsi-hd,id=scsi-1-5,bus=scsi0.0,channel=0,scsi-id=1,lun=5,drive=disk-1-5,serial=scsi-1-5"
        ])[..]
    );
    // The runtime path sends the same objects over QMP.
    assert_eq!(d.blockdev_json(), node);
    assert_eq!(d.device_json()["lun"], 5);
    let rw = Disk {
        read_only: false,
        format: DiskFormat::Raw,
        ..d
    };
    assert_eq!(rw.blockdev_json()["read-only"], false);
    assert_eq!(rw.blockdev_json()["file"]["read-only"], false);
    assert_eq!(rw.blockdev_json()["driver"], "raw");
}

#[test]
fn scsi_controller_balloon_and_share_export_per_machine() {
    let mut c = sample();
    assert!(c.scsi_args().is_empty() && c.runtime_device_args().is_empty());
    c.scsi_hba = true;
    c.balloon = true;
    c.share_export = Some("/run/uvm/vm1/shares".into());
    assert_eq!(
        c.scsi_args(),
        s(&["-device", "virtio-scsi-device,id=scsi0"])
    );
    assert_eq!(
        c.runtime_device_args(),
        s(&[
            "-device",
            "virtio-balloon-device,id=balloon0",
            "-fsdev",
            "local,id=shares,path=/run/uvm/vm1/shares,security_model=none,multidevs=remap",
            "-device",
            "virtio-9p-device,fsdev=shares,mount_tag=uvm-shares",
        ])
    );
    c.machine = Machine::Q35;
    assert_eq!(c.scsi_args(), s(&["-device", "virtio-scsi-pci,id=scsi0"]));
    assert_eq!(c.runtime_device_args()[1], "virtio-balloon-pci,id=balloon0");
    assert_eq!(
        c.runtime_device_args()[5],
        "virtio-9p-pci,fsdev=shares,mount_tag=uvm-shares"
    );
}

#[test]
fn plan9_share() {
    let sh = Share {
        id: "fs0".into(),
        tag: "data".into(),
        path: "/srv/d".into(),
        read_only: true,
    };
    assert_eq!(
        sh.args(Machine::Microvm),
        s(&[
            "-fsdev",
            "local,id=fs0,path=/srv/d,security_model=none,readonly=on",
            "-device",
            "virtio-9p-device,fsdev=fs0,mount_tag=data"
        ])
    );
    let sh = Share {
        read_only: false,
        ..sh
    };
    assert_eq!(
        sh.args(Machine::Q35)[1],
        "local,id=fs0,path=/srv/d,security_model=none"
    );
    assert_eq!(
        sh.args(Machine::Q35)[3],
        "virtio-9p-pci,fsdev=fs0,mount_tag=data"
    );
}

#[test]
fn pvpanic_and_sandbox() {
    let mut c = sample();
    assert_eq!(c.pvpanic_args(), s(&["-device", "pvpanic"]));
    assert!(c.sandbox_args().is_empty());
    c.pvpanic = false;
    c.sandbox = Some(SANDBOX.into());
    assert!(c.pvpanic_args().is_empty());
    assert_eq!(c.sandbox_args(), s(&["-sandbox", SANDBOX]));
}

#[test]
fn full_argv_order() {
    let mut c = sample();
    c.extra = s(&["-d", "guest_errors"]);
    let a = c.to_args();
    assert_eq!(a[0], "-S");
    assert_eq!(&a[a.len() - 2..], &s(&["-d", "guest_errors"])[..]);
    let pos = |x: &str| a.iter().position(|y| y == x).unwrap();
    assert!(pos("-machine") < pos("-kernel"));
    assert!(pos("-kernel") < pos("-mon"));
}
