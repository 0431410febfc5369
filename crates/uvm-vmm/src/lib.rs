//! Host side of a Utility VM ("vmmanager").
//!
//! [`Hypervisor`] creates VMs, [`UtilityVm`] drives one. The QEMU backend
//! ([`QemuHypervisor`], [`QemuVm`]) implements both; tests swap in fakes
//! behind the same traits. [`qmp`] is the async QMP client it uses.
//!
//! # The QEMU backend
//!
//! - Binary: [`QemuConfig::binary`], else `$UVM_QEMU`, else `qemu-system-x86_64`
//!   on `$PATH`; QEMU >= 7.0. `-sandbox` (seccomp) is used when the binary has it.
//! - Accelerator: KVM only when `/dev/kvm` opens **and** `/proc/cpuinfo` has
//!   `vmx`/`svm`; TCG otherwise (with `tb-size` = [`QemuConfig::tb_size_mb`], default [`DEFAULT_TB_SIZE_MB`] = 32 MiB).
//! - Machine: `microvm` (virtio-mmio, PVH) for an ELF vmlinux, `q35` (PCI)
//!   for a bzImage, or [`QemuConfig::machine`].
//! - Runtime dir `<root>/<id>` (0700): `qmp.sock` and `<role>.sock` per
//!   channel (0600, bound by us before QEMU starts; QEMU connects as a client),
//!   `console.log` (guest serial port 0), `owner.pid` (locked; see
//!   [`sweep_stale_runtime_dirs`]).
//! - Devices: one virtio-scsi HBA per VM (`scsi0`: `virtio-scsi-device` on
//!   microvm, `virtio-scsi-pci` on q35). Document `Scsi` attachments are
//!   `scsi-hd` at SCSI target = controller index, LUN = their LUN (guest:
//!   `/sys/bus/scsi/devices/H:0:C:L`); runtime disks are hot-added there
//!   ([`UtilityVm::hot_add_disk`]: `blockdev-add` + `device_add`, removed on
//!   `DEVICE_DELETED`). Plan9 shares are virtio-9p with `mount_tag` = share
//!   name, and every VM exports its runtime dir's `shares/` with tag
//!   `uvm-shares` for runtime shares (bind mounts, [`share_export`]). A
//!   virtio-balloon backs `set_memory_target`. ComPorts are ISA serial ports (`ttyS<n>`; ports
//!   above 0 need a guest kernel with enough 8250 UARTs).
//! - QEMU is forked from a dedicated process-lifetime thread with
//!   `PR_SET_PDEATHSIG=SIGKILL`, in its own process group; its stderr goes to
//!   `tracing` and the last 8 KiB are kept for [`ExitReason::HypervisorError`].
//!
//! A default document on microvm/TCG runs (paths shortened):
//!
//! ```text
//! qemu-system-x86_64 -S -nodefaults -no-user-config -nographic -no-reboot
//!   -action panic=shutdown -name guest=<id>,debug-threads=on
//!   -machine microvm,x-option-roms=off -accel tcg,tb-size=32 -m 512M -smp 2
//!   -kernel vmlinux -initrd initrd.img -append "console=ttyS0 panic=-1"
//!   -chardev socket,id=qmp,path=<dir>/qmp.sock -mon chardev=qmp,mode=control
//!   -chardev file,id=com0,path=<dir>/console.log,append=on -serial chardev:com0
//!   -device virtio-serial-device,id=vser0
//!   -chardev socket,id=ch-gcs,path=<dir>/gcs.sock
//!   -device virtserialport,bus=vser0.0,chardev=ch-gcs,name=<port>   (per channel)
//!   -device pvpanic
//!   -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
//! ```
#![warn(missing_docs)]

mod cgroup;
mod channel;
mod error;
mod exit;
pub mod qemu;
pub mod qmp;
pub mod runtime_dir;
pub mod share_export;
pub mod stats;
mod traits;
mod tsc;

pub use channel::{ChannelSet, ChannelSpec};

/// `tracing` target of lifecycle events (VM created, started, exited with its
/// reason), kept apart from the debug logs.
pub const LIFECYCLE: &str = "uvm_vmm::lifecycle";
pub use cgroup::{CpuLimits, CPU_PERIOD_US};
pub use error::VmmError;
pub use exit::{exit_reason, signal_name, ExitFacts, ExitReason, VmStatistics};
pub use qemu::{Accel, QemuConfig, QemuHypervisor, QemuVm, DEFAULT_TB_SIZE_MB};
pub use runtime_dir::sweep_stale_runtime_dirs;
pub use traits::{
    DiskAttachment, Hypervisor, HypervisorInfo, Incoming, SavedState, ScsiInventory, UtilityVm,
    MEMORY_FILE, STATE_FILE,
};
pub use tsc::{host_tsc_khz, with_tsc_hint};
