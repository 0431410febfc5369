//! A builder for the default LCOW document.

use std::path::PathBuf;

use crate::types::*;

/// Builds the default LCOW [`ComputeSystem`], the way hcsshim's LCOW builder does:
/// schema 2.1, `StopOnReset`, `ShouldTerminateOnLastHandleClosed`, direct kernel boot.
///
/// [`build`](Self::build) does not validate; [`ComputeSystem::validate`] does.
///
/// ```
/// let doc = uvm_schema::LcowDocumentBuilder::new("/k/vmlinux", "/k/initrd.img")
///     .memory_mb(256)
///     .processors(1)
///     .build();
/// assert_eq!(doc.memory_mb(), 256);
/// ```
#[derive(Debug, Clone)]
pub struct LcowDocumentBuilder {
    doc: ComputeSystem,
}

/// Default guest memory of the builder (MiB).
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// Default vCPU count of the builder.
pub const DEFAULT_PROCESSORS: u32 = 2;
/// Default kernel command line of the builder.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";

impl LcowDocumentBuilder {
    /// Starts a document booting `kernel` with `initrd`.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        let path_str = |p: PathBuf| p.to_string_lossy().into_owned();
        let doc = ComputeSystem {
            owner: "uvm".into(),
            schema_version: SchemaVersion::default(),
            hosting_system_id: None,
            should_terminate_on_last_handle_closed: true,
            virtual_machine: Some(VirtualMachine {
                stop_on_reset: true,
                chipset: Chipset {
                    linux_kernel_direct: Some(LinuxKernelDirect {
                        kernel_file_path: path_str(kernel.into()),
                        init_rd_path: path_str(initrd.into()),
                        kernel_cmd_line: DEFAULT_CMDLINE.into(),
                    }),
                    ..Default::default()
                },
                compute_topology: ComputeTopology {
                    memory: Memory {
                        size_in_mb: DEFAULT_MEMORY_MB,
                        allow_overcommit: true,
                        ..Default::default()
                    },
                    processor: Processor {
                        count: DEFAULT_PROCESSORS,
                        ..Default::default()
                    },
                    numa: None,
                },
                ..Default::default()
            }),
        };
        LcowDocumentBuilder { doc }
    }

    fn vm(&mut self) -> &mut VirtualMachine {
        self.doc
            .virtual_machine
            .get_or_insert_with(Default::default)
    }

    /// Guest memory in MiB.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.vm().compute_topology.memory.size_in_mb = mb;
        self
    }

    /// Number of vCPUs.
    pub fn processors(mut self, n: u32) -> Self {
        self.vm().compute_topology.processor.count = n;
        self
    }

    /// Kernel command line (replaces the default).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        if let Some(k) = self.vm().chipset.linux_kernel_direct.as_mut() {
            k.kernel_cmd_line = cmdline.into();
        }
        self
    }

    /// Owner string.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.doc.owner = owner.into();
        self
    }

    /// `false` preallocates guest memory.
    pub fn allow_overcommit(mut self, allow: bool) -> Self {
        self.vm().compute_topology.memory.allow_overcommit = allow;
        self
    }

    /// Attaches a `VirtualDisk` on SCSI controller `"0"` at the next free LUN.
    pub fn scsi_disk(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        let ctrl = self.vm().devices.scsi.entry("0".into()).or_default();
        let lun = ctrl.attachments.len();
        ctrl.attachments.insert(
            lun.to_string(),
            Attachment {
                kind: "VirtualDisk".into(),
                path: path.into().to_string_lossy().into_owned(),
                read_only,
                ..Default::default()
            },
        );
        self
    }

    /// Shares host directory `path` with the guest under the 9p mount tag `name`.
    pub fn plan9_share(
        mut self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        read_only: bool,
    ) -> Self {
        let p9 = self.vm().devices.plan9.get_or_insert_with(Default::default);
        p9.shares.push(Plan9Share {
            name: name.into(),
            path: path.into().to_string_lossy().into_owned(),
            read_only,
            ..Default::default()
        });
        self
    }

    /// Adds the next COM port (`"0"`, then `"1"`, ...) writing to `path` (a file,
    /// or an existing unix socket to connect to).
    pub fn com_port(mut self, path: impl Into<PathBuf>) -> Self {
        let ports = &mut self.vm().devices.com_ports;
        let n = ports.len();
        ports.insert(
            n.to_string(),
            ComPort {
                named_pipe: path.into().to_string_lossy().into_owned(),
                optimize_for_debugger: false,
            },
        );
        self
    }

    /// The document (not validated).
    pub fn build(self) -> ComputeSystem {
        self.doc
    }
}
