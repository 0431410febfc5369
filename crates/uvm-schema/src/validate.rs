//! Validation: every check names the JSON path of the field it refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{SchemaError, SchemaErrorKind, Warning};
use crate::types::*;

/// Smallest guest memory accepted (MiB).
pub const MIN_MEMORY_MB: u64 = 64;
/// Largest guest memory accepted (MiB): 1 TiB.
pub const MAX_MEMORY_MB: u64 = 1 << 20;
/// Most vCPUs accepted.
pub const MAX_PROCESSORS: u32 = 255;
/// Longest kernel command line accepted (bytes; x86 `COMMAND_LINE_SIZE` - 1).
pub const MAX_CMDLINE_LEN: usize = 2047;
/// Highest SCSI LUN accepted.
pub const MAX_LUN: u32 = 63;
/// Most SCSI controllers accepted.
pub const MAX_SCSI_CONTROLLERS: usize = 4;
/// Highest COM port index (`"0"`..`"3"`).
pub const MAX_COM_PORT: u32 = 3;

struct Ctx {
    warnings: Vec<Warning>,
}

impl Ctx {
    fn warn_if(&mut self, cond: bool, path: &str, message: &str) {
        if cond {
            self.warnings.push(Warning {
                path: path.to_string(),
                message: message.to_string(),
            });
        }
    }
}

fn file_err(path: &str, what: &'static str, p: &str, source: std::io::Error) -> SchemaError {
    SchemaError::new(
        path,
        SchemaErrorKind::File {
            what,
            path: p.to_string(),
            source,
        },
    )
}

/// Checks that `p` names a readable regular file (or block device when `allow_block`).
fn check_readable_file(
    path: &str,
    what: &'static str,
    p: &str,
    allow_block: bool,
    writable: bool,
) -> Result<(), SchemaError> {
    if p.is_empty() {
        return Err(SchemaError::new(path, SchemaErrorKind::Missing));
    }
    let meta = std::fs::metadata(p).map_err(|e| file_err(path, what, p, e))?;
    use std::os::unix::fs::FileTypeExt;
    let ok_type = meta.is_file() || (allow_block && meta.file_type().is_block_device());
    if !ok_type {
        return Err(SchemaError::invalid(
            path,
            format!(
                "{what} {p} is not a regular file{}",
                if allow_block { " or block device" } else { "" }
            ),
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(p)
        .map_err(|e| file_err(path, what, p, e))?;
    Ok(())
}

fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

pub(crate) fn validate(doc: &ComputeSystem) -> Result<Vec<Warning>, SchemaError> {
    let mut cx = Ctx {
        warnings: Vec::new(),
    };
    if doc.schema_version.major != 2 {
        return Err(SchemaError::invalid("SchemaVersion.Major", "must be 2"));
    }
    if doc
        .hosting_system_id
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(SchemaError::new(
            "HostingSystemId",
            SchemaErrorKind::Unsupported("a VM document cannot be hosted in another system"),
        ));
    }
    let vm = doc
        .virtual_machine
        .as_ref()
        .ok_or_else(|| SchemaError::new("VirtualMachine", SchemaErrorKind::Missing))?;
    cx.warn_if(
        !vm.stop_on_reset,
        "VirtualMachine.StopOnReset",
        "false has no effect: a guest reset always ends the VM",
    );
    chipset(&mut cx, &vm.chipset)?;
    topology(&mut cx, &vm.compute_topology)?;
    devices(&mut cx, &vm.devices)?;
    cx.warn_if(
        vm.guest_state.is_some(),
        "VirtualMachine.GuestState",
        "no effect: the VM always boots fresh",
    );
    if let Some(s) = &vm.security_settings {
        if s.enable_tpm {
            return Err(SchemaError::new(
                "VirtualMachine.SecuritySettings.EnableTpm",
                SchemaErrorKind::Unsupported("no virtual TPM"),
            ));
        }
        if let Some(iso) = &s.isolation {
            if !(iso.isolation_type.is_empty() || iso.isolation_type == "NoIsolation") {
                return Err(SchemaError::new(
                    "VirtualMachine.SecuritySettings.Isolation.IsolationType",
                    SchemaErrorKind::Unsupported("confidential (SNP/VBS) isolation"),
                ));
            }
        }
    }
    cx.warn_if(
        vm.storage_qos.is_some(),
        "VirtualMachine.StorageQoS",
        "no effect: storage is not throttled",
    );
    if vm.registry_changes.is_some() {
        return Err(SchemaError::new(
            "VirtualMachine.RegistryChanges",
            SchemaErrorKind::Unsupported("Windows registry changes in a Linux VM"),
        ));
    }
    cx.warn_if(
        vm.debug_options.is_some(),
        "VirtualMachine.DebugOptions",
        "no effect",
    );
    Ok(cx.warnings)
}

fn chipset(cx: &mut Ctx, c: &Chipset) -> Result<(), SchemaError> {
    if c.uefi.is_some() {
        return Err(SchemaError::new(
            "VirtualMachine.Chipset.Uefi",
            SchemaErrorKind::Unsupported("UEFI boot; use LinuxKernelDirect"),
        ));
    }
    cx.warn_if(
        c.use_utc,
        "VirtualMachine.Chipset.UseUtc",
        "no effect: the guest clock is always UTC",
    );
    let k = c.linux_kernel_direct.as_ref().ok_or_else(|| {
        SchemaError::new(
            "VirtualMachine.Chipset.LinuxKernelDirect",
            SchemaErrorKind::Missing,
        )
    })?;
    const P: &str = "VirtualMachine.Chipset.LinuxKernelDirect";
    check_readable_file(
        &format!("{P}.KernelFilePath"),
        "kernel",
        &k.kernel_file_path,
        false,
        false,
    )?;
    check_readable_file(
        &format!("{P}.InitRdPath"),
        "initrd",
        &k.init_rd_path,
        false,
        false,
    )?;
    if k.kernel_cmd_line.len() > MAX_CMDLINE_LEN {
        return Err(SchemaError::invalid(
            format!("{P}.KernelCmdLine"),
            format!("longer than {MAX_CMDLINE_LEN} bytes"),
        ));
    }
    if k.kernel_cmd_line.contains('\0') {
        return Err(SchemaError::invalid(
            format!("{P}.KernelCmdLine"),
            "contains a NUL byte",
        ));
    }
    Ok(())
}

fn topology(cx: &mut Ctx, t: &ComputeTopology) -> Result<(), SchemaError> {
    const M: &str = "VirtualMachine.ComputeTopology.Memory";
    let m = &t.memory;
    if m.size_in_mb < MIN_MEMORY_MB {
        return Err(SchemaError::invalid(
            format!("{M}.SizeInMB"),
            format!("must be >= {MIN_MEMORY_MB}"),
        ));
    }
    if m.size_in_mb > MAX_MEMORY_MB {
        return Err(SchemaError::invalid(
            format!("{M}.SizeInMB"),
            format!("must be <= {MAX_MEMORY_MB}"),
        ));
    }
    if !m.allow_overcommit {
        if let Some(host) = host_memory_mb() {
            if m.size_in_mb > host {
                return Err(SchemaError::invalid(
                    format!("{M}.SizeInMB"),
                    format!("{} MiB cannot be preallocated (AllowOvercommit=false) on a host with {host} MiB", m.size_in_mb),
                ));
            }
        }
    }
    let no_effect = [
        (m.enable_hot_hint, "EnableHotHint"),
        (m.enable_cold_hint, "EnableColdHint"),
        (m.enable_epf, "EnableEpf"),
        (m.enable_deferred_commit, "EnableDeferredCommit"),
        (m.enable_cold_discard_hint, "EnableColdDiscardHint"),
        (m.backing_page_size.is_some(), "BackingPageSize"),
        (m.low_mmio_gap_in_mb != 0, "LowMMIOGapInMB"),
        (m.high_mmio_base_in_mb != 0, "HighMMIOBaseInMB"),
        (m.high_mmio_gap_in_mb != 0, "HighMMIOGapInMB"),
        (
            m.fault_cluster_size_shift.is_some(),
            "FaultClusterSizeShift",
        ),
        (
            m.direct_file_mapping_in_mb.is_some(),
            "DirectFileMappingInMB",
        ),
        (m.pin_backing_pages, "PinBackingPages"),
        (m.forbid_small_backing_pages, "ForbidSmallBackingPages"),
    ];
    for (set, name) in no_effect {
        cx.warn_if(
            set,
            &format!("{M}.{name}"),
            "accepted, no effect on this hypervisor",
        );
    }
    const C: &str = "VirtualMachine.ComputeTopology.Processor";
    let p = &t.processor;
    if p.count < 1 {
        return Err(SchemaError::invalid(format!("{C}.Count"), "must be >= 1"));
    }
    if p.count > MAX_PROCESSORS {
        return Err(SchemaError::invalid(
            format!("{C}.Count"),
            format!("must be <= {MAX_PROCESSORS}"),
        ));
    }
    let no_effect = [
        (p.limit != 0, "Limit"),
        (p.weight != 0, "Weight"),
        (p.reservation != 0, "Reservation"),
        (
            p.expose_virtualization_extensions,
            "ExposeVirtualizationExtensions",
        ),
        (p.enable_perfmon_pmu, "EnablePerfmonPmu"),
        (p.enable_perfmon_lbr, "EnablePerfmonLbr"),
        (p.enable_scheduler_assist, "EnableSchedulerAssist"),
        (p.cpu_group.is_some(), "CpuGroup"),
    ];
    for (set, name) in no_effect {
        cx.warn_if(
            set,
            &format!("{C}.{name}"),
            "accepted, no effect on this hypervisor",
        );
    }
    cx.warn_if(
        t.numa.is_some(),
        "VirtualMachine.ComputeTopology.Numa",
        "no effect: one NUMA node",
    );
    Ok(())
}

fn parse_index(path: &str, key: &str, max: u32, what: &str) -> Result<u32, SchemaError> {
    match key.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(SchemaError::invalid(
            path,
            format!("{what} must be a number 0..={max}"),
        )),
    }
}

fn devices(cx: &mut Ctx, d: &Devices) -> Result<(), SchemaError> {
    const D: &str = "VirtualMachine.Devices";
    // ComPorts
    let mut seen = BTreeSet::new();
    for (key, port) in &d.com_ports {
        let path = format!("{D}.ComPorts.{key}");
        let n = parse_index(&path, key, MAX_COM_PORT, "COM port index")?;
        if !seen.insert(n) {
            return Err(SchemaError::invalid(
                path,
                format!("duplicate COM port {n}"),
            ));
        }
        let pp = format!("{path}.NamedPipe");
        if port.named_pipe.is_empty() {
            return Err(SchemaError::new(pp, SchemaErrorKind::Missing));
        }
        let p = Path::new(&port.named_pipe);
        let parent = match p.parent() {
            Some(x) if !x.as_os_str().is_empty() => x,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(SchemaError::invalid(
                pp,
                format!("parent directory of {} does not exist", port.named_pipe),
            ));
        }
        if let Ok(meta) = std::fs::metadata(p) {
            use std::os::unix::fs::FileTypeExt;
            if !(meta.is_file() || meta.file_type().is_socket()) {
                return Err(SchemaError::invalid(
                    pp,
                    format!(
                        "{} exists and is neither a regular file nor a unix socket",
                        port.named_pipe
                    ),
                ));
            }
        }
        cx.warn_if(
            port.optimize_for_debugger,
            &format!("{path}.OptimizeForDebugger"),
            "no effect",
        );
    }
    // Scsi
    if d.scsi.len() > MAX_SCSI_CONTROLLERS {
        return Err(SchemaError::invalid(
            format!("{D}.Scsi"),
            format!("at most {MAX_SCSI_CONTROLLERS} controllers"),
        ));
    }
    for (ctrl, c) in &d.scsi {
        let mut luns: BTreeMap<u32, &str> = BTreeMap::new();
        for (lun_key, a) in &c.attachments {
            let path = format!("{D}.Scsi.{ctrl}.Attachments.{lun_key}");
            let lun = parse_index(&path, lun_key, MAX_LUN, "LUN")?;
            if let Some(prev) = luns.insert(lun, lun_key) {
                return Err(SchemaError::invalid(
                    path,
                    format!("duplicate LUN {lun} (also as \"{prev}\")"),
                ));
            }
            let (allow_block, forced_ro) = match a.kind.as_str() {
                "VirtualDisk" => (false, false),
                "PassThru" => (true, false),
                "Iso" => (false, true),
                "" => {
                    return Err(SchemaError::new(
                        format!("{path}.Type"),
                        SchemaErrorKind::Missing,
                    ))
                }
                _ => {
                    return Err(SchemaError::new(
                        format!("{path}.Type"),
                        SchemaErrorKind::Unsupported(
                            "attachment type (use VirtualDisk, PassThru or Iso)",
                        ),
                    ))
                }
            };
            let writable = !(a.read_only || forced_ro);
            check_readable_file(
                &format!("{path}.Path"),
                "disk",
                &a.path,
                allow_block,
                writable,
            )?;
            cx.warn_if(
                a.caching_mode.is_some(),
                &format!("{path}.CachingMode"),
                "no effect",
            );
            cx.warn_if(
                a.support_compressed_volumes,
                &format!("{path}.SupportCompressedVolumes"),
                "no effect",
            );
        }
    }
    // VirtualPMem
    if let Some(p) = &d.virtual_p_mem {
        if let Some(k) = p.devices.keys().next() {
            return Err(SchemaError::new(
                format!("{D}.VirtualPMem.Devices.{k}"),
                SchemaErrorKind::Unsupported(
                    "VPMem devices; attach the image as a Scsi VirtualDisk",
                ),
            ));
        }
        cx.warn_if(
            p.maximum_count != 0 || p.maximum_size_bytes != 0,
            &format!("{D}.VirtualPMem"),
            "no effect: no VPMem devices",
        );
    }
    // Plan9
    if let Some(p9) = &d.plan9 {
        let mut names = BTreeSet::new();
        for (i, s) in p9.shares.iter().enumerate() {
            let path = format!("{D}.Plan9.Shares.{i}");
            if s.name.is_empty() {
                return Err(SchemaError::new(
                    format!("{path}.Name"),
                    SchemaErrorKind::Missing,
                ));
            }
            if s.name.len() > 31 || s.name.contains([',', '=', '\0']) {
                return Err(SchemaError::invalid(
                    format!("{path}.Name"),
                    "must be at most 31 bytes without ',' or '='",
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(SchemaError::invalid(
                    format!("{path}.Name"),
                    format!("duplicate share name {}", s.name),
                ));
            }
            if !s.allowed_files.is_empty() {
                return Err(SchemaError::new(
                    format!("{path}.AllowedFiles"),
                    SchemaErrorKind::Unsupported("single-file shares"),
                ));
            }
            let pp = format!("{path}.Path");
            if s.path.is_empty() {
                return Err(SchemaError::new(pp, SchemaErrorKind::Missing));
            }
            let meta =
                std::fs::metadata(&s.path).map_err(|e| file_err(&pp, "share", &s.path, e))?;
            if !meta.is_dir() {
                return Err(SchemaError::invalid(
                    pp,
                    format!("share {} is not a directory", s.path),
                ));
            }
            cx.warn_if(
                !s.access_name.is_empty(),
                &format!("{path}.AccessName"),
                "no effect: the mount tag is Name",
            );
            cx.warn_if(
                s.port != 0,
                &format!("{path}.Port"),
                "no effect: 9p runs over virtio",
            );
            cx.warn_if(
                s.use_share_root_identity,
                &format!("{path}.UseShareRootIdentity"),
                "no effect",
            );
        }
    }
    cx.warn_if(
        d.hv_socket
            .as_ref()
            .is_some_and(|h| h.hv_socket_config.is_some()),
        &format!("{D}.HvSocket.HvSocketConfig"),
        "no effect on Linux: channels are virtio-serial ports",
    );
    if d.virtual_pci.is_some() {
        return Err(SchemaError::new(
            format!("{D}.VirtualPci"),
            SchemaErrorKind::Unsupported("PCI device assignment"),
        ));
    }
    if d.network_adapters.is_some() {
        return Err(SchemaError::new(
            format!("{D}.NetworkAdapters"),
            SchemaErrorKind::Unsupported("guest networking"),
        ));
    }
    Ok(())
}
