//! The QEMU backend: [`QemuHypervisor`] creates [`QemuVm`]s.
//!
//! create: validate the document, sweep stale runtime dirs, make `<root>/<id>`
//! (0700), bind one unix listener per channel plus one for QMP (0600), spawn
//! `qemu-system-x86_64 -S ...` which connects to them as a client (no polling
//! for sockets), accept QMP and negotiate. Any failure kills and reaps QEMU
//! and removes the runtime dir.

mod accel;
mod binary;
mod cmdline;
mod devices;
mod hotplug;
mod migration;
mod process;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use uvm_schema::ComputeSystem;

pub use accel::{choose_accel, cpu_has_virt, detect_accel, Accel};
pub use binary::{find_qemu, parse_version, probe_binary, BinaryProbe, MIN_VERSION, QEMU_BINARY};
pub use cmdline::{
    detect_disk_format, detect_kernel_format, disk_device_id, disk_node_name, ChannelPort, Disk,
    DiskFormat, GuestMemory, KernelFormat, Machine, QemuCommand, SerialBackend, SerialPort, Share,
    BALLOON_ID, SANDBOX, SCSI_HBA_ID, SHARES_TAG, SHARE_EXPORT_ID,
};
pub use hotplug::DEVICE_REMOVE_TIMEOUT;
pub use migration::MIGRATION_TIMEOUT;
pub use process::{Tail, CONSOLE_TAIL_BYTES, STDERR_TAIL_BYTES};
pub use vm::{QemuVm, KILL_REAP_TIMEOUT, QMP_COMMAND_TIMEOUT};

use crate::qmp::QmpClient;
use crate::runtime_dir::{
    default_runtime_root, restrict_socket, sweep_stale_runtime_dirs, valid_vm_id, RuntimeDir,
};
use crate::{ChannelSet, ExitReason, Hypervisor, HypervisorInfo, Incoming, UtilityVm, VmmError};

/// Default TCG translation-cache cap (MiB).
///
/// The cache is host memory QEMU touches as it translates guest code. The
/// tuned kernel's boot plus the agent translate 24–32 MiB of code (-O2
/// kernel): an idle UVM's Rss is 137 / 147 / 155 / 155 MiB at 16 / 24 / 32
/// / 64 MiB, and at 16 MiB the cache fills during boot and is flushed, which
/// costs 20–190 ms of retranslation (`uvm-bench` example `tb_size_rss`,
/// PERF.md "session 3"). 32 MiB holds a boot without a flush and still bounds
/// what a long-running guest can grow to. Raise it through
/// [`QemuConfig::tb_size_mb`] for guests that run large, hot code bases.
pub const DEFAULT_TB_SIZE_MB: u32 = 32;

/// Settings of the QEMU backend. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// QEMU binary; `None`: `$UVM_QEMU`, then `qemu-system-x86_64` on `$PATH`.
    pub binary: Option<PathBuf>,
    /// Runtime root; `None`: [`default_runtime_root`].
    pub runtime_root: Option<PathBuf>,
    /// Accelerator; `None`: KVM where usable, else TCG ([`detect_accel`]).
    pub accel: Option<Accel>,
    /// Machine; `None`: `microvm` for an ELF kernel, `q35` for a bzImage.
    pub machine: Option<Machine>,
    /// How long `terminate` waits after QMP `quit` before SIGKILL.
    pub terminate_grace: Duration,
    /// TCG translation-cache size in MiB (`-accel tcg,tb-size=N`; ignored
    /// under KVM). Default [`DEFAULT_TB_SIZE_MB`].
    pub tb_size_mb: u32,
    /// Bound on QEMU connecting its QMP socket and on the QMP handshake.
    pub qmp_timeout: Duration,
    /// Extra arguments appended to the QEMU command line.
    pub extra_args: Vec<String>,
    /// Guest RAM in a shared memfd ([`GuestMemory::SharedMemfd`]), so a
    /// snapshot writes it as a file that restored VMs map copy-on-write.
    /// Off: anonymous RAM, and a snapshot carries RAM in its state stream.
    pub shared_memory: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: None,
            runtime_root: None,
            accel: None,
            machine: None,
            terminate_grace: Duration::from_secs(5),
            tb_size_mb: DEFAULT_TB_SIZE_MB,
            qmp_timeout: Duration::from_secs(10),
            extra_args: Vec::new(),
            shared_memory: false,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Probe {
    binary: PathBuf,
    version: (u32, u32, u32),
    sandbox: bool,
    accel: Accel,
}

/// Creates VMs as QEMU processes.
#[derive(Debug)]
pub struct QemuHypervisor {
    config: QemuConfig,
    probe: tokio::sync::OnceCell<Probe>,
}

impl Default for QemuHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuHypervisor {
    /// The backend with default settings.
    pub fn new() -> Self {
        Self::with_config(QemuConfig::default())
    }

    /// The backend with `config`.
    pub fn with_config(config: QemuConfig) -> Self {
        QemuHypervisor {
            config,
            probe: tokio::sync::OnceCell::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The runtime root VMs are created under.
    pub fn runtime_root(&self) -> PathBuf {
        self.config
            .runtime_root
            .clone()
            .unwrap_or_else(default_runtime_root)
    }

    pub(crate) async fn probe(&self) -> Result<&Probe, VmmError> {
        self.probe
            .get_or_try_init(|| async {
                let binary = find_qemu(self.config.binary.as_deref())?;
                let binary::BinaryProbe { version, sandbox } =
                    binary::probe_binary(&binary, SANDBOX).await?;
                if !sandbox {
                    tracing::debug!(binary = %binary.display(), "QEMU lacks -sandbox (seccomp); running without it");
                }
                let accel = self.config.accel.unwrap_or_else(detect_accel);
                tracing::debug!(binary = %binary.display(), ?version, sandbox, accel = accel.as_str(), "QEMU probed");
                Ok(Probe { binary, version, sandbox, accel })
            })
            .await
    }

    /// Creates the VM and returns the concrete handle (see [`Hypervisor::create`]).
    pub async fn create_vm(
        &self,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
    ) -> Result<QemuVm, VmmError> {
        self.create_vm_with(id, doc, channels, None).await
    }

    /// The version and accelerator VMs get from this backend.
    pub async fn info(&self) -> Result<HypervisorInfo, VmmError> {
        let p = self.probe().await?;
        Ok(HypervisorInfo {
            version: version_string(p.version),
            accel: p.accel.as_str().to_string(),
            machine: String::new(),
            argv: Vec::new(),
        })
    }

    /// [`QemuHypervisor::create_vm`], or with `incoming` a VM that waits for
    /// a saved state (see [`Hypervisor::create_incoming`]).
    pub async fn create_vm_with(
        &self,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
        incoming: Option<&Incoming>,
    ) -> Result<QemuVm, VmmError> {
        if !valid_vm_id(id) {
            return Err(VmmError::Unsupported(format!(
                "VM id {id:?}: must match [A-Za-z0-9._-]{{1,64}}"
            )));
        }
        for c in &channels.channels {
            if !valid_vm_id(&c.role) || c.role == "qmp" || c.port_name.is_empty() {
                return Err(VmmError::Unsupported(format!(
                    "channel role {:?} / port {:?}",
                    c.role, c.port_name
                )));
            }
        }
        // Warnings were logged by `ComputeSystem::from_json`; keep them at debug here.
        for w in doc.validate()? {
            tracing::debug!(vm = id, path = %w.path, "VM document: {}", w.message);
        }
        let probe = self.probe().await?.clone();
        let (kernel, kformat) = devices::kernel(doc)?;
        let machine = match (self.config.machine, kformat) {
            (Some(Machine::Microvm), KernelFormat::BzImage) => {
                return Err(VmmError::Unsupported(
                    "a bzImage kernel needs the q35 machine, not microvm".into(),
                ))
            }
            (Some(m), _) => m,
            (None, KernelFormat::Elf) => Machine::Microvm,
            (None, KernelFormat::BzImage) => Machine::Q35,
        };
        let initrd = doc
            .initrd()
            .map(|p| devices::absolute("initrd", p))
            .transpose()?;
        let disks = devices::disks(doc)?;
        let shares = devices::shares(doc)?;

        let root = self.runtime_root();
        if let Err(e) = sweep_stale_runtime_dirs(&root) {
            tracing::warn!(root = %root.display(), error = %e, "sweeping stale runtime dirs");
        }
        let dir = RuntimeDir::create(&root, id)?;
        let mut guard = CreateGuard {
            dir: Some(dir),
            kill_tx: None,
            exit_rx: None,
        };
        match self
            .create_in(
                &mut guard, id, doc, channels, &probe, machine, kernel, initrd, disks, shares,
                incoming,
            )
            .await
        {
            Ok(vm) => Ok(vm),
            Err(e) => {
                guard.abort().await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in(
        &self,
        guard: &mut CreateGuard,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
        probe: &Probe,
        machine: Machine,
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        disks: Vec<Disk>,
        shares: Vec<Share>,
        incoming: Option<&Incoming>,
    ) -> Result<QemuVm, VmmError> {
        let dir = guard.dir.as_ref().expect("dir set").path().to_path_buf();
        let console_log = dir.join("console.log");
        let share_export = crate::share_export::create(&dir)?;
        // The console device follows the kernel's `console=`: a virtio
        // console (no UART to probe, output in batches) for `hvc0`, else a
        // UART as ttyS0. Either way its output lands in console.log.
        let hvc = devices::console_on_hvc(doc.kernel_cmdline());
        let serials = devices::serials(doc, &console_log, !hvc)?;
        let bind = |name: &str| -> Result<(UnixListener, PathBuf), VmmError> {
            let p = dir.join(format!("{name}.sock"));
            let l = UnixListener::bind(&p).map_err(|source| VmmError::RuntimeDir {
                path: p.clone(),
                source,
            })?;
            restrict_socket(&p)?;
            Ok((l, p))
        };
        let (qmp_listener, qmp_socket) = bind("qmp")?;
        let mut listeners = std::collections::HashMap::new();
        let mut ports = Vec::new();
        for c in &channels.channels {
            let (l, p) = bind(&c.role)?;
            listeners.insert(c.role.clone(), l);
            ports.push(ChannelPort {
                role: c.role.clone(),
                socket: p,
                port_name: c.port_name.clone(),
            });
        }
        let memory = match incoming {
            Some(Incoming {
                memory_file: Some(f),
            }) => GuestMemory::PrivateFile(f.clone()),
            Some(_) => GuestMemory::Anonymous,
            None if self.config.shared_memory => GuestMemory::SharedMemfd,
            None => GuestMemory::Anonymous,
        };
        let private_file = matches!(memory, GuestMemory::PrivateFile(_));
        let cmd = QemuCommand {
            name: id.to_string(),
            machine,
            accel: probe.accel,
            tb_size_mb: self.config.tb_size_mb,
            memory_mb: doc.memory_mb(),
            // Preallocating a private file mapping would copy every page.
            prealloc: !doc.allow_overcommit() && !private_file,
            memory: memory.clone(),
            incoming: incoming.is_some(),
            cpus: doc.processor_count(),
            kernel,
            initrd,
            append: crate::with_tsc_hint(doc.kernel_cmdline(), machine == Machine::Microvm),
            qmp_socket,
            channels: ports,
            serials,
            virtio_console: hvc.then(|| console_log.clone()),
            scsi_hba: true,
            disks,
            balloon: true,
            share_export: Some(share_export.clone()),
            shares,
            pvpanic: true,
            sandbox: probe.sandbox.then(|| SANDBOX.to_string()),
            extra: self.config.extra_args.clone(),
        };
        let argv = cmd.to_args();
        let shared = Arc::new(process::Shared {
            id: id.to_string(),
            console_log,
            requested: Mutex::new(None),
            stderr_tail: Arc::new(Mutex::new(Tail::new(STDERR_TAIL_BYTES))),
            qmp: std::sync::OnceLock::new(),
            pid: Mutex::new(None),
            stopped: Mutex::new(None),
        });
        let t_spawn = std::time::Instant::now();
        let spawned = process::spawn(&probe.binary, &argv, &dir, Arc::clone(&shared)).await?;
        let spawn_ms = t_spawn.elapsed().as_secs_f64() * 1e3;
        guard.kill_tx = Some(spawned.kill_tx.clone());
        guard.exit_rx = Some(spawned.exit_rx.clone());
        let mut exit_rx = spawned.exit_rx.clone();
        let died = |reason: Option<ExitReason>| VmmError::Exited {
            step: "startup",
            reason: reason.unwrap_or(ExitReason::HypervisorError {
                code: -1,
                stderr_tail: String::new(),
            }),
        };
        let t = self.config.qmp_timeout;
        let stream = tokio::select! {
            r = qmp_listener.accept() => r.map_err(|source| VmmError::Io { context: "accepting QMP".into(), source })?.0,
            r = exit_rx.wait_for(Option::is_some) => return Err(died(r.ok().and_then(|r| r.clone()))),
            _ = tokio::time::sleep(t) => return Err(VmmError::Timeout { what: "QEMU to connect to QMP", timeout: t }),
        };
        drop(qmp_listener);
        let qmp_connect_ms = t_spawn.elapsed().as_secs_f64() * 1e3;
        let qmp = match QmpClient::handshake(stream, t).await {
            Ok(q) => q,
            Err(e) => {
                // QEMU exiting during setup (bad disk, ...) closes QMP: report why it exited.
                let mut rx = spawned.exit_rx.clone();
                let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
                    .await;
                if let Ok(Ok(reason)) = r {
                    return Err(died(reason.clone()));
                }
                return Err(vm::qmp_err("qmp_capabilities", e));
            }
        };
        let _ = shared.qmp.set(qmp.clone());
        tracing::debug!(
            vm = id,
            spawn_ms,
            qmp_connect_ms,
            qmp_ready_ms = t_spawn.elapsed().as_secs_f64() * 1e3,
            "QEMU spawned, QMP ready (ms since spawn)"
        );
        let dir_handle = guard.dir.take().expect("dir set");
        guard.kill_tx = None;
        guard.exit_rx = None;
        tracing::info!(
            target: crate::LIFECYCLE,
            vm = id,
            pid = spawned.pid,
            accel = probe.accel.as_str(),
            ?machine,
            "VM created"
        );
        Ok(QemuVm {
            shared,
            qmp,
            kill_tx: spawned.kill_tx,
            exit_rx: spawned.exit_rx,
            channels: Mutex::new(listeners),
            started: Mutex::new(None),
            dir_path: dir,
            dir: Mutex::new(dir_handle),
            closed: tokio::sync::Mutex::new(false),
            terminate_grace: self.config.terminate_grace,
            assigned_memory_bytes: doc.memory_mb() * 1024 * 1024,
            info: HypervisorInfo {
                version: version_string(probe.version),
                accel: probe.accel.as_str().to_string(),
                machine: machine.name().to_string(),
                argv: argv.clone(),
            },
            argv,
            memory,
            cgroup: tokio::sync::Mutex::new(None),
        })
    }
}

/// Undoes a half-done create: kills QEMU (dropping the last kill sender does
/// it), waits for the reap, removes the runtime dir. Drop does the same
/// without waiting, so a cancelled create leaves nothing behind either.
struct CreateGuard {
    dir: Option<RuntimeDir>,
    kill_tx: Option<mpsc::Sender<()>>,
    exit_rx: Option<watch::Receiver<Option<ExitReason>>>,
}

impl CreateGuard {
    async fn abort(&mut self) {
        if let Some(tx) = self.kill_tx.take() {
            let _ = tx.try_send(());
        }
        if let Some(mut rx) = self.exit_rx.take() {
            let _ = tokio::time::timeout(KILL_REAP_TIMEOUT, rx.wait_for(Option::is_some)).await;
        }
        if let Some(mut d) = self.dir.take() {
            let _ = d.remove();
        }
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.kill_tx.take() {
            let _ = tx.try_send(());
        }
        if let Some(mut d) = self.dir.take() {
            let _ = d.remove();
        }
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    async fn create(
        &self,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
    ) -> Result<Arc<dyn UtilityVm>, VmmError> {
        Ok(Arc::new(self.create_vm(id, doc, channels).await?))
    }

    async fn create_incoming(
        &self,
        id: &str,
        doc: &ComputeSystem,
        channels: &ChannelSet,
        incoming: &Incoming,
    ) -> Result<Arc<dyn UtilityVm>, VmmError> {
        Ok(Arc::new(
            self.create_vm_with(id, doc, channels, Some(incoming))
                .await?,
        ))
    }

    async fn probe_info(&self) -> Result<HypervisorInfo, VmmError> {
        self.info().await
    }
}

fn version_string((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

/// Whether `path` looks like a kernel this backend can boot (ELF or bzImage).
pub fn kernel_format_of(path: &Path) -> Option<KernelFormat> {
    let mut head = vec![0u8; 0x210];
    use std::io::Read;
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .ok()?;
    detect_kernel_format(&head[..n])
}

#[cfg(test)]
mod default_tests {
    #[test]
    fn default_tb_size_is_documented_and_configurable() {
        assert_eq!(
            super::QemuConfig::default().tb_size_mb,
            super::DEFAULT_TB_SIZE_MB
        );
        let c = super::QemuConfig {
            tb_size_mb: 64,
            ..Default::default()
        };
        assert_eq!(c.tb_size_mb, 64);
    }
}
