//! The QEMU command line, built from small typed pieces. Each piece turns into
//! argv words on its own and has its own unit test.

use std::path::{Path, PathBuf};

use super::accel::Accel;

/// 9p mount tag of the share export (the agent mounts it by this tag).
pub const SHARES_TAG: &str = "uvm-shares";

/// Machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Machine {
    /// `microvm`: virtio-mmio devices, PVH boot of an ELF vmlinux. The default.
    Microvm,
    /// `q35`: PCI devices; boots a bzImage or an ELF vmlinux.
    Q35,
}

impl Machine {
    /// QEMU's name of the machine type.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }

    /// The suffix of virtio device names on this machine (`device` = virtio-mmio, `pci`).
    fn virtio(self, base: &str) -> String {
        match self {
            Machine::Microvm => format!("{base}-device"),
            Machine::Q35 => format!("{base}-pci"),
        }
    }
}

/// What kind of kernel image a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux` (PVH entry point).
    Elf,
    /// A bzImage (`HdrS` at 0x202).
    BzImage,
}

/// Recognizes a kernel image from its first 0x206 bytes (or fewer).
pub fn detect_kernel_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// A disk image format QEMU reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes (also block devices and ISOs).
    Raw,
    /// qcow2.
    Qcow2,
    /// VHD (QEMU's `vpc` driver), dynamic or fixed.
    Vpc,
    /// VHDX.
    Vhdx,
}

impl DiskFormat {
    /// QEMU's driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vpc => "vpc",
            DiskFormat::Vhdx => "vhdx",
        }
    }
}

/// Recognizes a disk image from its first and last 512 bytes (a fixed VHD has
/// only a footer).
pub fn detect_disk_format(head: &[u8], tail: &[u8]) -> DiskFormat {
    if head.starts_with(b"QFI\xfb") {
        DiskFormat::Qcow2
    } else if head.starts_with(b"vhdxfile") {
        DiskFormat::Vhdx
    } else if head.starts_with(b"conectix")
        || (tail.len() >= 512 && tail[tail.len() - 512..].starts_with(b"conectix"))
    {
        DiskFormat::Vpc
    } else {
        DiskFormat::Raw
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax (`,` → `,,`).
pub fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Where a guest serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialBackend {
    /// Appended to a host file.
    File(PathBuf),
    /// An existing unix socket QEMU connects to.
    Socket(PathBuf),
}

/// A guest serial port (`ttyS<index>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// 0..=3.
    pub index: u32,
    /// Where its output goes.
    pub backend: SerialBackend,
    /// A second copy of the output (the console log), if any.
    pub log: Option<PathBuf>,
}

impl SerialPort {
    /// argv words.
    pub fn args(&self) -> Vec<String> {
        let id = format!("com{}", self.index);
        let mut chardev = match &self.backend {
            SerialBackend::File(p) => format!("file,id={id},path={},append=on", esc(p)),
            SerialBackend::Socket(p) => format!("socket,id={id},path={}", esc(p)),
        };
        if let Some(log) = &self.log {
            chardev.push_str(&format!(",logfile={},logappend=on", esc(log)));
        }
        let dev = if self.index == 0 {
            vec!["-serial".to_string(), format!("chardev:{id}")]
        } else {
            vec![
                "-device".to_string(),
                format!("isa-serial,chardev={id},index={}", self.index),
            ]
        };
        let mut v = vec!["-chardev".to_string(), chardev];
        v.extend(dev);
        v
    }
}

/// A host↔guest channel: a virtio-serial port backed by a unix socket QEMU connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPort {
    /// Role (chardev id suffix).
    pub role: String,
    /// Host socket (already listening).
    pub socket: PathBuf,
    /// Port name the guest sees.
    pub port_name: String,
}

impl ChannelPort {
    /// argv words (the `vser0` controller is added once by [`QemuCommand`]).
    pub fn args(&self) -> Vec<String> {
        let id = format!("ch-{}", self.role);
        vec![
            "-chardev".into(),
            format!("socket,id={id},path={}", esc(&self.socket)),
            "-device".into(),
            format!(
                "virtserialport,bus=vser0.0,chardev={id},name={}",
                self.port_name.replace(',', ",,")
            ),
        ]
    }
}

/// Id of the VM's virtio-scsi controller; disks sit on its bus `scsi0.0`.
pub const SCSI_HBA_ID: &str = "scsi0";
/// Id of the virtio-balloon device.
pub const BALLOON_ID: &str = "balloon0";
/// fsdev id of the VM's share export.
pub const SHARE_EXPORT_ID: &str = "shares";

/// A disk on the VM's virtio-scsi controller: a `-blockdev` node and a
/// `scsi-hd` at SCSI target `controller`, LUN `lun`. The same two JSON
/// objects go to `-blockdev`/`-device` at create and to QMP `blockdev-add` /
/// `device_add` at runtime, so both paths give the guest the same disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Host path (absolute).
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Opened read-only; the guest sees a write-protected disk.
    pub read_only: bool,
    /// Controller index (the guest's SCSI target id).
    pub controller: u32,
    /// LUN.
    pub lun: u32,
}

impl Disk {
    /// Block node name (`disk-<controller>-<lun>`).
    pub fn node_name(&self) -> String {
        disk_node_name(self.controller, self.lun)
    }

    /// qdev id of the `scsi-hd` (`scsi-<controller>-<lun>`), also its serial.
    pub fn device_id(&self) -> String {
        disk_device_id(self.controller, self.lun)
    }

    /// The `blockdev-add` arguments: the format node over a file node, both
    /// read-only when the disk is.
    pub fn blockdev_json(&self) -> serde_json::Value {
        serde_json::json!({
            "driver": self.format.as_str(),
            "node-name": self.node_name(),
            "read-only": self.read_only,
            "file": {
                "driver": "file",
                "filename": self.path.to_string_lossy(),
                "read-only": self.read_only,
            },
        })
    }

    /// The `device_add` arguments of the `scsi-hd`.
    pub fn device_json(&self) -> serde_json::Value {
        serde_json::json!({
            "driver": "scsi-hd",
            "id": self.device_id(),
            "bus": format!("{SCSI_HBA_ID}.0"),
            "channel": 0,
            "scsi-id": self.controller,
            "lun": self.lun,
            "drive": self.node_name(),
            "serial": self.device_id(),
        })
    }

    /// argv words.
    pub fn args(&self) -> Vec<String> {
        let dev = self.device_json();
        let mut device = "scsi-hd".to_string();
        for k in ["id", "bus", "channel", "scsi-id", "lun", "drive", "serial"] {
            let v = &dev[k];
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            device.push_str(&format!(",{k}={v}"));
        }
        vec![
            "-blockdev".into(),
            self.blockdev_json().to_string(),
            "-device".into(),
            device,
        ]
    }
}

/// Block node name of the disk at (`controller`, `lun`).
pub fn disk_node_name(controller: u32, lun: u32) -> String {
    format!("disk-{controller}-{lun}")
}

/// qdev id (and serial) of the disk at (`controller`, `lun`).
pub fn disk_device_id(controller: u32, lun: u32) -> String {
    format!("scsi-{controller}-{lun}")
}

/// A virtio-9p share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// fsdev id (`fs<n>`).
    pub id: String,
    /// Mount tag.
    pub tag: String,
    /// Host directory (absolute).
    pub path: PathBuf,
    /// `readonly=on`.
    pub read_only: bool,
}

impl Share {
    /// argv words.
    pub fn args(&self, machine: Machine) -> Vec<String> {
        let mut fsdev = format!(
            "local,id={},path={},security_model=none",
            self.id,
            esc(&self.path)
        );
        if self.read_only {
            fsdev.push_str(",readonly=on");
        }
        vec![
            "-fsdev".into(),
            fsdev,
            "-device".into(),
            format!(
                "{},fsdev={},mount_tag={}",
                machine.virtio("virtio-9p"),
                self.id,
                self.tag
            ),
        ]
    }
}

/// The `-sandbox` value used when the binary supports it.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// What backs guest RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GuestMemory {
    /// Anonymous memory of the QEMU process (the default).
    #[default]
    Anonymous,
    /// A memfd mapped shared, so the host can read guest RAM while the VM
    /// is paused and a snapshot can write it out as a file of its own.
    SharedMemfd,
    /// A file mapped private (copy-on-write): a snapshot's RAM that many
    /// restored VMs share in the page cache until they write to it.
    PrivateFile(PathBuf),
}

/// A whole QEMU invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// VM name (`-name`).
    pub name: String,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// TCG translation-cache cap in MiB (TCG only).
    pub tb_size_mb: u32,
    /// Guest memory (MiB).
    pub memory_mb: u64,
    /// Preallocate guest memory (`AllowOvercommit=false`; not for a
    /// private file, whose pages would all be copied).
    pub prealloc: bool,
    /// What backs guest RAM.
    pub memory: GuestMemory,
    /// Start waiting for an incoming migration (`-incoming defer`; the
    /// state then comes through QMP `migrate-incoming`).
    pub incoming: bool,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// Unix socket (listening, ours) QEMU connects its QMP monitor to.
    pub qmp_socket: PathBuf,
    /// Channels.
    pub channels: Vec<ChannelPort>,
    /// Serial ports (`ttyS<index>`).
    pub serials: Vec<SerialPort>,
    /// A virtio console (`hvc0`) whose output is appended to this file: the
    /// console when the kernel is told `console=hvc0`.
    pub virtio_console: Option<PathBuf>,
    /// The virtio-scsi controller (always there, so disks can be hot-added).
    pub scsi_hba: bool,
    /// Disks of the document, on the controller.
    pub disks: Vec<Disk>,
    /// A virtio-balloon device (runtime memory changes).
    pub balloon: bool,
    /// The VM's share export (its runtime dir's `shares/`), as 9p with tag
    /// `uvm-shares`; runtime shares are bind mounts inside it.
    pub share_export: Option<PathBuf>,
    /// 9p shares.
    pub shares: Vec<Share>,
    /// Add a pvpanic device.
    pub pvpanic: bool,
    /// `-sandbox` value, when supported.
    pub sandbox: Option<String>,
    /// Appended verbatim.
    pub extra: Vec<String>,
}

impl QemuCommand {
    /// Fixed flags: vCPUs stopped, nothing implicit, no display, reset = exit.
    pub fn base_args(&self) -> Vec<String> {
        [
            "-S",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-action",
            "panic=shutdown",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-name".to_string(),
            format!("guest={},debug-threads=on", self.name),
        ])
        .chain(
            self.incoming
                .then(|| ["-incoming".to_string(), "defer".to_string()])
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// `-machine` and `-accel`.
    pub fn machine_args(&self) -> Vec<String> {
        let mut m = match self.machine {
            Machine::Microvm => "microvm,x-option-roms=off".to_string(),
            Machine::Q35 => "q35".to_string(),
        };
        if self.prealloc || self.memory != GuestMemory::Anonymous {
            m.push_str(",memory-backend=mem0");
        }
        let accel = match self.accel {
            Accel::Kvm => "kvm".to_string(),
            Accel::Tcg => format!("tcg,tb-size={}", self.tb_size_mb),
        };
        let mut v = vec!["-machine".into(), m, "-accel".into(), accel];
        if self.accel == Accel::Kvm {
            v.extend(["-cpu".into(), "host".into()]);
        }
        v
    }

    /// `-m`, preallocation backend, `-smp`.
    pub fn memory_cpu_args(&self) -> Vec<String> {
        let mut v = vec!["-m".into(), format!("{}M", self.memory_mb)];
        let size = self.memory_mb;
        let prealloc = if self.prealloc { ",prealloc=on" } else { "" };
        let backend = match &self.memory {
            GuestMemory::Anonymous if self.prealloc => {
                Some(format!("memory-backend-ram,id=mem0,size={size}M{prealloc}"))
            }
            GuestMemory::Anonymous => None,
            GuestMemory::SharedMemfd => Some(format!(
                "memory-backend-memfd,id=mem0,size={size}M,share=on{prealloc}"
            )),
            GuestMemory::PrivateFile(p) => Some(format!(
                "memory-backend-file,id=mem0,size={size}M,share=off,mem-path={}",
                esc(p)
            )),
        };
        if let Some(b) = backend {
            v.extend(["-object".into(), b]);
        }
        v.extend(["-smp".into(), self.cpus.to_string()]);
        v
    }

    /// `-kernel`, `-initrd`, `-append`.
    pub fn boot_args(&self) -> Vec<String> {
        let mut v = vec!["-kernel".into(), self.kernel.to_string_lossy().into_owned()];
        if let Some(i) = &self.initrd {
            v.extend(["-initrd".into(), i.to_string_lossy().into_owned()]);
        }
        v.extend(["-append".into(), self.append.clone()]);
        v
    }

    /// The QMP monitor, connecting to our listening socket.
    pub fn qmp_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=qmp,path={}", esc(&self.qmp_socket)),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]
    }

    /// The virtio-serial controller, the virtio console (first, so it is
    /// `hvc0`) and one port per channel.
    pub fn channel_args(&self) -> Vec<String> {
        if self.channels.is_empty() && self.virtio_console.is_none() {
            return Vec::new();
        }
        let mut v = vec![
            "-device".into(),
            format!("{},id=vser0", self.machine.virtio("virtio-serial")),
        ];
        if let Some(log) = &self.virtio_console {
            v.extend([
                "-chardev".into(),
                format!("file,id=vcon,path={},append=on", esc(log)),
                "-device".into(),
                "virtconsole,bus=vser0.0,chardev=vcon,name=console".into(),
            ]);
        }
        for c in &self.channels {
            v.extend(c.args());
        }
        v
    }

    /// The virtio-scsi controller and the document's disks on it.
    pub fn scsi_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.scsi_hba || !self.disks.is_empty() {
            v.extend([
                "-device".into(),
                format!("{},id={SCSI_HBA_ID}", self.machine.virtio("virtio-scsi")),
            ]);
        }
        for d in &self.disks {
            v.extend(d.args());
        }
        v
    }

    /// The balloon and the share export.
    pub fn runtime_device_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.balloon {
            v.extend([
                "-device".into(),
                format!("{},id={BALLOON_ID}", self.machine.virtio("virtio-balloon")),
            ]);
        }
        if let Some(dir) = &self.share_export {
            // multidevs=remap: bind mounts from other file systems inside the
            // export get inode numbers that cannot collide.
            v.extend([
                "-fsdev".into(),
                format!(
                    "local,id={SHARE_EXPORT_ID},path={},security_model=none,multidevs=remap",
                    esc(dir)
                ),
                "-device".into(),
                format!(
                    "{},fsdev={SHARE_EXPORT_ID},mount_tag={SHARES_TAG}",
                    self.machine.virtio("virtio-9p")
                ),
            ]);
        }
        v
    }

    /// `-device pvpanic` (ISA; both machines have an ISA bus).
    pub fn pvpanic_args(&self) -> Vec<String> {
        if self.pvpanic {
            vec!["-device".into(), "pvpanic".into()]
        } else {
            Vec::new()
        }
    }

    /// `-sandbox`.
    pub fn sandbox_args(&self) -> Vec<String> {
        self.sandbox
            .iter()
            .flat_map(|s| ["-sandbox".to_string(), s.clone()])
            .collect()
    }

    /// The full argv (without the binary).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = self.base_args();
        v.extend(self.machine_args());
        v.extend(self.memory_cpu_args());
        v.extend(self.boot_args());
        v.extend(self.qmp_args());
        for s in &self.serials {
            v.extend(s.args());
        }
        v.extend(self.channel_args());
        v.extend(self.scsi_args());
        for s in &self.shares {
            v.extend(s.args(self.machine));
        }
        v.extend(self.runtime_device_args());
        v.extend(self.pvpanic_args());
        v.extend(self.sandbox_args());
        v.extend(self.extra.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests;
