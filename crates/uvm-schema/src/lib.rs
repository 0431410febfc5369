//! The uvm VM document: an HCS-schema-v2-style `ComputeSystem` (LCOW subset),
//! parsed and validated.
//!
//! Field names are HCS's (PascalCase), so a document written by hcsshim's LCOW
//! builder (`makeLCOWDoc`) parses. [`ComputeSystem::from_json`] parses with
//! `deny_unknown_fields` everywhere and then [validates](ComputeSystem::validate);
//! every error's `Display` starts with the JSON path of the field:
//!
//! ```text
//! VirtualMachine.ComputeTopology.Memory.SizeInMBB: unknown field
//! VirtualMachine.ComputeTopology.Memory.SizeInMB: must be >= 64
//! ```
//!
//! # Fields
//!
//! Paths below are relative to `VirtualMachine` unless they start at the root.
//!
//! | class | fields | effect |
//! |---|---|---|
//! | supported | `Owner`, `SchemaVersion` (major 2) | logged / checked |
//! | supported | `Chipset.LinuxKernelDirect.{KernelFilePath, InitRdPath, KernelCmdLine}` | direct boot: ELF vmlinux (PVH, `microvm`) or bzImage (`q35`) |
//! | supported | `ComputeTopology.Memory.SizeInMB` (64..=1048576) | guest RAM |
//! | supported | `ComputeTopology.Memory.AllowOvercommit` | `false` ⇒ all guest RAM preallocated |
//! | supported | `ComputeTopology.Processor.Count` (1..=255) | vCPUs |
//! | supported | `StopOnReset` | a guest reset ends the VM (always; `false` warns) |
//! | supported | `ShouldTerminateOnLastHandleClosed` | the VM always dies with its controller |
//! | supported | `Devices.Scsi.<ctrl>.Attachments.<lun>.{Type, Path, ReadOnly}` | virtio disk; raw, qcow2, vhd (vpc), vhdx; `ReadOnly` ⇒ `readonly=on`; `Type` = `VirtualDisk`, `PassThru`, `Iso` |
//! | supported | `Devices.ComPorts.<0..3>.NamedPipe` | guest `ttyS<n>` to a host file (appended) or an existing unix socket (connected to); `ttyS1`..`ttyS3` need a guest kernel with that many 8250 UARTs |
//! | supported | `Devices.Plan9.Shares[].{Name, Path, ReadOnly, Flags}` | virtio-9p, mount tag = `Name` |
//! | accepted, no effect (one warning each) | `Memory.{EnableHotHint, EnableColdHint, EnableEpf, EnableDeferredCommit, EnableColdDiscardHint, BackingPageSize, LowMMIOGapInMB, HighMMIOBaseInMB, HighMMIOGapInMB, FaultClusterSizeShift, DirectFileMappingInMB, PinBackingPages, ForbidSmallBackingPages}` | — |
//! | accepted, no effect | `Processor.{Limit, Weight, Reservation, ExposeVirtualizationExtensions, EnablePerfmonPmu, EnablePerfmonLbr, EnableSchedulerAssist, CpuGroup}`, `ComputeTopology.Numa` | — |
//! | accepted, no effect | `Devices.HvSocket.HvSocketConfig` (security descriptors, service table) | channels are virtio-serial ports |
//! | accepted, no effect | `Devices.VirtualPMem.{MaximumCount, MaximumSizeBytes}`, `ComPorts.<n>.OptimizeForDebugger`, `Attachments.<lun>.{CachingMode, SupportCompressedVolumes}`, `Plan9.Shares[].{AccessName, Port, UseShareRootIdentity}` | — |
//! | accepted, no effect | `GuestState`, `StorageQoS`, `DebugOptions`, `Chipset.UseUtc`, `StopOnReset=false` | — |
//! | rejected | any unknown field | `<path>: unknown field` |
//! | rejected | `Chipset.Uefi`, `Devices.VirtualPci`, `Devices.NetworkAdapters`, `Devices.VirtualPMem.Devices`, `Plan9.Shares[].AllowedFiles`, `RegistryChanges`, `SecuritySettings.EnableTpm`, `SecuritySettings.Isolation.IsolationType` (SNP/VBS), `HostingSystemId` | `<path>: not supported: ...` |
//!
//! # Paths
//!
//! Host paths in the document (kernel, initrd, disks, shares, COM ports) are
//! resolved like any `open(2)` argument: a relative path is relative to the
//! **current working directory of the process** that validates the document
//! and creates the VM (the backend canonicalizes them before handing them to
//! the hypervisor). Symlinks are followed. Absolute paths are recommended.
//! Validation checks each path when it runs; a file changed afterwards is
//! caught when the VM is created.
#![warn(missing_docs)]

mod builder;
mod error;
mod types;
mod unique_map;
mod validate;

use std::path::Path;

pub use builder::{LcowDocumentBuilder, DEFAULT_CMDLINE, DEFAULT_MEMORY_MB, DEFAULT_PROCESSORS};
pub use error::{SchemaError, SchemaErrorKind, Warning};
pub use types::*;
pub use validate::{
    MAX_CMDLINE_LEN, MAX_COM_PORT, MAX_LUN, MAX_MEMORY_MB, MAX_PROCESSORS, MAX_SCSI_CONTROLLERS,
    MIN_MEMORY_MB,
};

/// Which guest platform a document describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Linux (the document boots a kernel directly).
    Lcow,
    /// Windows (any other boot method).
    Wcow,
}

/// Path text of the document root in errors.
pub const ROOT_PATH: &str = "<document>";

fn render_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." || s == "?" || s.is_empty() {
        ROOT_PATH.to_string()
    } else {
        s
    }
}

impl ComputeSystem {
    /// Parses and validates a JSON document. Accepted-but-ineffective fields are
    /// each logged once (`tracing::warn!`).
    pub fn from_json(json: &str) -> Result<ComputeSystem, SchemaError> {
        let doc = Self::parse_json(json)?;
        for w in doc.validate()? {
            tracing::warn!(path = %w.path, "VM document: {}", w.message);
        }
        Ok(doc)
    }

    /// Parses a JSON document without validating it (no file-system access).
    pub fn parse_json(json: &str) -> Result<ComputeSystem, SchemaError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let doc: ComputeSystem = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut path = render_path(e.path());
            let msg = e.inner().to_string();
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let field = rest.split('`').next().unwrap_or_default();
                if !path.ends_with(field) {
                    path = if path == ROOT_PATH {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                }
                return SchemaError::new(path, SchemaErrorKind::UnknownField);
            }
            SchemaError::new(path, SchemaErrorKind::Syntax(msg))
        })?;
        Ok(doc)
    }

    /// Validates the document: every supported field's value, the files it
    /// names, and rejected fields. Returns the accepted-but-ineffective fields.
    pub fn validate(&self) -> Result<Vec<Warning>, SchemaError> {
        validate::validate(self)
    }

    /// The document as indented JSON (zero values left out, as hcsshim does).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("the document types always serialize")
    }

    /// [`Platform::Lcow`] when the VM boots a Linux kernel directly, else [`Platform::Wcow`].
    pub fn platform(&self) -> Platform {
        match self.linux_kernel_direct() {
            Some(_) => Platform::Lcow,
            None => Platform::Wcow,
        }
    }

    /// `VirtualMachine.Chipset.LinuxKernelDirect`, if set.
    pub fn linux_kernel_direct(&self) -> Option<&LinuxKernelDirect> {
        self.virtual_machine
            .as_ref()?
            .chipset
            .linux_kernel_direct
            .as_ref()
    }

    /// Kernel path, if the document boots a kernel directly.
    pub fn kernel(&self) -> Option<&Path> {
        self.linux_kernel_direct()
            .map(|k| Path::new(&k.kernel_file_path))
    }

    /// Initrd path, if set and non-empty.
    pub fn initrd(&self) -> Option<&Path> {
        self.linux_kernel_direct()
            .filter(|k| !k.init_rd_path.is_empty())
            .map(|k| Path::new(&k.init_rd_path))
    }

    /// Kernel command line ("" if none).
    pub fn kernel_cmdline(&self) -> &str {
        self.linux_kernel_direct()
            .map(|k| k.kernel_cmd_line.as_str())
            .unwrap_or("")
    }

    /// Guest memory in MiB (0 if unset).
    pub fn memory_mb(&self) -> u64 {
        self.virtual_machine
            .as_ref()
            .map(|v| v.compute_topology.memory.size_in_mb)
            .unwrap_or(0)
    }

    /// Whether guest memory may be overcommitted (`false` ⇒ preallocated).
    pub fn allow_overcommit(&self) -> bool {
        self.virtual_machine
            .as_ref()
            .map(|v| v.compute_topology.memory.allow_overcommit)
            .unwrap_or(true)
    }

    /// vCPU count (0 if unset).
    pub fn processor_count(&self) -> u32 {
        self.virtual_machine
            .as_ref()
            .map(|v| v.compute_topology.processor.count)
            .unwrap_or(0)
    }

    /// The devices section (empty if there is no `VirtualMachine`).
    pub fn devices(&self) -> Devices {
        self.virtual_machine
            .as_ref()
            .map(|v| v.devices.clone())
            .unwrap_or_default()
    }

    /// Every SCSI attachment in a stable order (controllers by name, LUNs by number).
    pub fn scsi_disks(&self) -> Vec<ScsiDisk> {
        let mut out = Vec::new();
        let Some(vm) = &self.virtual_machine else {
            return out;
        };
        for (ci, (ctrl, c)) in vm.devices.scsi.iter().enumerate() {
            let mut luns: Vec<(u32, &Attachment)> = c
                .attachments
                .iter()
                .map(|(k, a)| (k.parse().unwrap_or(u32::MAX), a))
                .collect();
            luns.sort_by_key(|(l, _)| *l);
            for (lun, a) in luns {
                out.push(ScsiDisk {
                    controller: ctrl.clone(),
                    controller_index: ci as u32,
                    lun,
                    path: a.path.clone().into(),
                    read_only: a.read_only || a.kind == "Iso",
                    kind: a.kind.clone(),
                });
            }
        }
        out
    }
}

/// One SCSI attachment, flattened (see [`ComputeSystem::scsi_disks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDisk {
    /// Controller key in the document.
    pub controller: String,
    /// Position of the controller among the document's controllers (sorted by key).
    pub controller_index: u32,
    /// LUN.
    pub lun: u32,
    /// Host path.
    pub path: std::path::PathBuf,
    /// Whether the guest may not write it.
    pub read_only: bool,
    /// Attachment `Type`.
    pub kind: String,
}

#[cfg(test)]
mod tests;
