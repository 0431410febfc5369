//! The serde types of the document: HCS schema v2 names (PascalCase), LCOW subset.
//!
//! Every struct denies unknown fields, so a misspelt or unsupported field is an
//! error naming its JSON path. Every field is optional on the wire (Go's
//! `omitempty` in hcsshim leaves out zero values) and defaults to its zero
//! value; [`crate::ComputeSystem::validate`] decides what must be set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::unique_map;

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// `SchemaVersion`: the HCS schema version the document is written against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SchemaVersion {
    /// `Major`: must be 2.
    #[serde(default)]
    pub major: u32,
    /// `Minor`: any minor version of schema 2 is accepted.
    #[serde(default)]
    pub minor: u32,
}

impl Default for SchemaVersion {
    /// Schema 2.1, what hcsshim's LCOW builder writes.
    fn default() -> Self {
        SchemaVersion { major: 2, minor: 1 }
    }
}

/// `ComputeSystem`: the top-level document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ComputeSystem {
    /// `Owner`: free text naming who created the VM (logged only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// `SchemaVersion`.
    #[serde(default)]
    pub schema_version: SchemaVersion,
    /// `HostingSystemId`: set for containers hosted in a UVM; must be empty for a VM
    /// document (rejected otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosting_system_id: Option<String>,
    /// `ShouldTerminateOnLastHandleClosed`: accepted; the VM always dies with its
    /// controller process here (`PR_SET_PDEATHSIG`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub should_terminate_on_last_handle_closed: bool,
    /// `VirtualMachine`: the VM itself. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<VirtualMachine>,
}

/// `VirtualMachine`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VirtualMachine {
    /// `StopOnReset`: a guest reset ends the VM (QEMU `-no-reboot`). The backend
    /// always behaves this way; `false` is accepted with a warning.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop_on_reset: bool,
    /// `Chipset`: how the VM boots. Required.
    #[serde(default)]
    pub chipset: Chipset,
    /// `ComputeTopology`: memory and processors.
    #[serde(default)]
    pub compute_topology: ComputeTopology,
    /// `Devices`.
    #[serde(default)]
    pub devices: Devices,
    /// `GuestState`: guest state files (VMGS). Accepted, no effect: every VM boots fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_state: Option<GuestState>,
    /// `SecuritySettings`: rejected when it asks for isolation (SNP/VBS) or a TPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_settings: Option<SecuritySettings>,
    /// `StorageQoS`: accepted, no effect.
    #[serde(
        default,
        rename = "StorageQoS",
        skip_serializing_if = "Option::is_none"
    )]
    pub storage_qos: Option<StorageQoS>,
    /// `RegistryChanges`: Windows-only; rejected when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_changes: Option<serde_json::Value>,
    /// `DebugOptions`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_options: Option<serde_json::Value>,
}

/// `Chipset`: the boot method.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Chipset {
    /// `LinuxKernelDirect`: direct kernel boot (LCOW). The only supported boot method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_kernel_direct: Option<LinuxKernelDirect>,
    /// `Uefi`: UEFI boot. Rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi: Option<serde_json::Value>,
    /// `UseUtc`: accepted, no effect (the guest RTC is always UTC).
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_utc: bool,
}

/// `LinuxKernelDirect`: kernel, initrd and command line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LinuxKernelDirect {
    /// `KernelFilePath`: an ELF `vmlinux` (PVH boot on `microvm`) or a bzImage (`q35`).
    #[serde(default)]
    pub kernel_file_path: String,
    /// `InitRdPath`: the initramfs. Required.
    #[serde(default)]
    pub init_rd_path: String,
    /// `KernelCmdLine`: passed verbatim (at most 2047 bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_cmd_line: String,
}

/// `ComputeTopology`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ComputeTopology {
    /// `Memory`.
    #[serde(default)]
    pub memory: Memory,
    /// `Processor`.
    #[serde(default)]
    pub processor: Processor,
    /// `Numa`: accepted, no effect (one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<serde_json::Value>,
}

/// `Memory` (HCS `Memory2`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Memory {
    /// `SizeInMB`: guest memory, 64 MiB to 1 TiB.
    #[serde(default, rename = "SizeInMB")]
    pub size_in_mb: u64,
    /// `AllowOvercommit`: `false` preallocates all guest memory at create.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_overcommit: bool,
    /// `EnableHotHint`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_hot_hint: bool,
    /// `EnableColdHint`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_cold_hint: bool,
    /// `EnableEpf`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_epf: bool,
    /// `EnableDeferredCommit`: accepted, no effect (QEMU commits lazily anyway
    /// unless overcommit is off).
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_deferred_commit: bool,
    /// `EnableColdDiscardHint`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_cold_discard_hint: bool,
    /// `BackingPageSize`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_page_size: Option<String>,
    /// `LowMMIOGapInMB`: accepted, no effect.
    #[serde(
        default,
        rename = "LowMMIOGapInMB",
        skip_serializing_if = "is_zero_u64"
    )]
    pub low_mmio_gap_in_mb: u64,
    /// `HighMMIOBaseInMB`: accepted, no effect.
    #[serde(
        default,
        rename = "HighMMIOBaseInMB",
        skip_serializing_if = "is_zero_u64"
    )]
    pub high_mmio_base_in_mb: u64,
    /// `HighMMIOGapInMB`: accepted, no effect.
    #[serde(
        default,
        rename = "HighMMIOGapInMB",
        skip_serializing_if = "is_zero_u64"
    )]
    pub high_mmio_gap_in_mb: u64,
    /// `FaultClusterSizeShift`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_cluster_size_shift: Option<u32>,
    /// `DirectFileMappingInMB`: accepted, no effect.
    #[serde(
        default,
        rename = "DirectFileMappingInMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_file_mapping_in_mb: Option<u64>,
    /// `PinBackingPages`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pin_backing_pages: bool,
    /// `ForbidSmallBackingPages`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forbid_small_backing_pages: bool,
}

/// `Processor` (HCS `Processor2`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Processor {
    /// `Count`: vCPUs, 1..=255.
    #[serde(default)]
    pub count: u32,
    /// `Limit`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
    /// `Weight`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub weight: u64,
    /// `Reservation`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub reservation: u64,
    /// `ExposeVirtualizationExtensions`: accepted, no effect (no nested virtualization).
    #[serde(default, skip_serializing_if = "is_false")]
    pub expose_virtualization_extensions: bool,
    /// `EnablePerfmonPmu`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_perfmon_pmu: bool,
    /// `EnablePerfmonLbr`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_perfmon_lbr: bool,
    /// `EnableSchedulerAssist`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_scheduler_assist: bool,
    /// `CpuGroup`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_group: Option<CpuGroup>,
}

/// `CpuGroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CpuGroup {
    /// `Id`.
    #[serde(default)]
    pub id: String,
}

/// `Devices`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Devices {
    /// `ComPorts`: `"0"`..`"3"` → guest `ttyS0`..`ttyS3`.
    #[serde(
        default,
        deserialize_with = "unique_map::deserialize",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub com_ports: BTreeMap<String, ComPort>,
    /// `Scsi`: controller name → controller. Attachments become virtio disks.
    #[serde(
        default,
        deserialize_with = "unique_map::deserialize",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub scsi: BTreeMap<String, ScsiController>,
    /// `VirtualPMem`: the controller limits are accepted without effect; devices are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_p_mem: Option<VirtualPMem>,
    /// `Plan9`: shared host directories (virtio-9p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan9: Option<Plan9>,
    /// `HvSocket`: accepted, no effect (channels are virtio-serial ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hv_socket: Option<HvSocket>,
    /// `VirtualPci`: device assignment. Rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_pci: Option<serde_json::Value>,
    /// `NetworkAdapters`: rejected (no guest networking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_adapters: Option<serde_json::Value>,
}

/// `ComPort`: a guest serial port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ComPort {
    /// `NamedPipe`: on Linux a host path. An existing unix socket is connected to;
    /// anything else is a regular file the guest's output is appended to.
    #[serde(default)]
    pub named_pipe: String,
    /// `OptimizeForDebugger`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optimize_for_debugger: bool,
}

/// `Scsi`: one controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ScsiController {
    /// `Attachments`: LUN (`"0"`..`"63"`) → disk.
    #[serde(default, deserialize_with = "unique_map::deserialize")]
    pub attachments: BTreeMap<String, Attachment>,
}

/// `Attachment`: a disk on a SCSI controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Attachment {
    /// `Type`: `VirtualDisk` (raw, qcow2, vhd, vhdx), `PassThru` (a host block
    /// device or raw file) or `Iso` (read-only raw).
    #[serde(default, rename = "Type")]
    pub kind: String,
    /// `Path`: host path of the image or device.
    #[serde(default)]
    pub path: String,
    /// `ReadOnly`: the guest cannot write (`readonly=on`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `CachingMode`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching_mode: Option<String>,
    /// `SupportCompressedVolumes`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub support_compressed_volumes: bool,
}

/// `VirtualPMem`: the virtual persistent-memory controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VirtualPMem {
    /// `MaximumCount`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub maximum_count: u32,
    /// `MaximumSizeBytes`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub maximum_size_bytes: u64,
    /// `Devices`: rejected when non-empty (use Scsi attachments).
    #[serde(
        default,
        deserialize_with = "unique_map::deserialize",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub devices: BTreeMap<String, VirtualPMemDevice>,
}

/// `VirtualPMemDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VirtualPMemDevice {
    /// `HostPath`.
    #[serde(default)]
    pub host_path: String,
    /// `ReadOnly`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `ImageFormat`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_format: String,
}

/// `Plan9`: the Plan 9 file-sharing device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Plan9 {
    /// `Shares`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Plan9Share>,
}

/// `Plan9Share`: one host directory shared with the guest (virtio-9p, `mount_tag` = `Name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Plan9Share {
    /// `Name`: the 9p mount tag the guest mounts (at most 31 bytes, unique).
    #[serde(default)]
    pub name: String,
    /// `AccessName`: accepted, no effect (the mount tag is `Name`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_name: String,
    /// `Path`: host directory.
    #[serde(default)]
    pub path: String,
    /// `Port`: accepted, no effect (no vsock transport for 9p).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub port: u32,
    /// `Flags`: accepted; bit 0x1 (ReadOnly) is honoured like `ReadOnly`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub flags: u32,
    /// `ReadOnly`: the guest cannot write.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `UseShareRootIdentity`: accepted, no effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_share_root_identity: bool,
    /// `AllowedFiles`: rejected when non-empty (single-file shares cannot be
    /// enforced; the whole directory would be exposed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_files: Vec<String>,
}

/// `HvSocket` (HCS `HvSocket2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HvSocket {
    /// `HvSocketConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hv_socket_config: Option<HvSocketSystemConfig>,
}

/// `HvSocketSystemConfig`: security descriptors. Accepted, no effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HvSocketSystemConfig {
    /// `DefaultBindSecurityDescriptor`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_bind_security_descriptor: String,
    /// `DefaultConnectSecurityDescriptor`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_connect_security_descriptor: String,
    /// `ServiceTable`: service GUID → per-service config.
    #[serde(
        default,
        deserialize_with = "unique_map::deserialize",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub service_table: BTreeMap<String, HvSocketServiceConfig>,
}

/// `HvSocketServiceConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HvSocketServiceConfig {
    /// `BindSecurityDescriptor`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind_security_descriptor: String,
    /// `ConnectSecurityDescriptor`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub connect_security_descriptor: String,
    /// `AllowWildcardBinds`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_wildcard_binds: bool,
    /// `Disabled`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// `GuestState`: guest state files. Accepted, no effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GuestState {
    /// `GuestStateFilePath`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest_state_file_path: String,
    /// `GuestStateFileType`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest_state_file_type: String,
    /// `RuntimeStateFilePath`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_state_file_path: String,
    /// `ForceTransientState`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_transient_state: bool,
}

/// `SecuritySettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SecuritySettings {
    /// `EnableTpm`: rejected when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_tpm: bool,
    /// `Isolation`: rejected unless `IsolationType` is empty or `NoIsolation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationSettings>,
}

/// `IsolationSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IsolationSettings {
    /// `IsolationType` (`SecureNestedPaging`, `VirtualizationBasedSecurity`, `NoIsolation`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub isolation_type: String,
    /// `DebugEnabled`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug_enabled: bool,
    /// `LaunchData`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub launch_data: String,
    /// `HclEnabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hcl_enabled: Option<bool>,
}

/// `StorageQoS`. Accepted, no effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StorageQoS {
    /// `IopsMaximum`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub iops_maximum: u64,
    /// `BandwidthMaximum`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub bandwidth_maximum: u64,
}
