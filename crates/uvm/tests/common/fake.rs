//! A fake backend: `FakeHypervisor`/`FakeVm` implement the uvm-vmm traits for
//! real over unix sockets in a temp dir, with a fake guest (the fake GCS from
//! `uvm_guest::testing`) that connects to the channel sockets on start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uvm_guest::testing::{FakeGcs, FakeGcsConfig};
use uvm_schema::ComputeSystem;
use uvm_vmm::{
    ChannelSet, DiskAttachment, ExitReason, Hypervisor, ScsiInventory, UtilityVm, VmStatistics,
    VmmError,
};

/// Failures to inject. Counters fail that many calls, then succeed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub create_fails: bool,
    pub start_fails: bool,
    pub guest_never_connects: bool,
    pub exit_during_start: bool,
    pub terminate_fails: usize,
    pub close_fails: usize,
    /// The fake guest waits this long after start before connecting.
    pub boot_delay: Duration,
    /// The GCS socket is connected as soon as the VM starts (QEMU's chardev
    /// client connects at spawn), but nothing answers on it before
    /// `boot_delay` has passed (the agent is still booting).
    pub gcs_connects_at_start: bool,
    /// The agent connects the GCS channel and hangs up at once (a crash).
    pub gcs_hangup: bool,
    /// The fake guest reconnects its log stream once (WCOW agents do).
    pub log_reconnect: bool,
    pub gcs: FakeGcsConfig,
    /// `hot_add_disk` fails (nothing is left attached).
    pub hot_add_fails: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates fake VMs in a temp dir and remembers them for leak checks.
pub struct FakeHypervisor {
    pub faults: Arc<Mutex<Faults>>,
    root: tempfile::TempDir,
    pub vms: Mutex<Vec<Arc<FakeVm>>>,
    pub channel_sets: Mutex<Vec<ChannelSet>>,
}

impl FakeHypervisor {
    pub fn new(faults: Faults) -> Arc<Self> {
        Arc::new(FakeHypervisor {
            faults: Arc::new(Mutex::new(faults)),
            root: tempfile::tempdir().unwrap(),
            vms: Mutex::new(Vec::new()),
            channel_sets: Mutex::new(Vec::new()),
        })
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.faults));
    }

    pub fn last_vm(&self) -> Arc<FakeVm> {
        lock(&self.vms).last().cloned().expect("a VM was created")
    }

    /// Every VM created was closed and its runtime dir removed.
    pub fn all_released(&self) -> bool {
        lock(&self.vms)
            .iter()
            .all(|v| v.closed.load(Ordering::SeqCst) && !v.dir.exists())
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn create(
        &self,
        id: &str,
        _doc: &ComputeSystem,
        channels: &ChannelSet,
    ) -> Result<Arc<dyn UtilityVm>, VmmError> {
        lock(&self.channel_sets).push(channels.clone());
        if lock(&self.faults).create_fails {
            return Err(VmmError::Unsupported("injected create failure".into()));
        }
        let dir = self
            .root
            .path()
            .join(format!("{id}-{}", lock(&self.vms).len()));
        std::fs::create_dir(&dir).map_err(|source| VmmError::RuntimeDir {
            path: dir.clone(),
            source,
        })?;
        let mut listeners = HashMap::new();
        let mut paths = HashMap::new();
        for c in &channels.channels {
            let p = dir.join(format!("{}.sock", c.role));
            let l = UnixListener::bind(&p).map_err(|source| VmmError::RuntimeDir {
                path: p.clone(),
                source,
            })?;
            listeners.insert(c.role.clone(), l);
            paths.insert(c.role.clone(), p);
        }
        let faults = lock(&self.faults).clone();
        let vm = Arc::new_cyclic(|me| FakeVm {
            me: me.clone(),
            id: id.to_string(),
            dir,
            listeners: Mutex::new(listeners),
            paths,
            shared_faults: self.faults.clone(),
            gcs: FakeGcs::new(faults.gcs.clone()),
            exit: watch::Sender::new(None),
            started: Mutex::new(None),
            stopped: Mutex::new(None),
            guest_stop: CancellationToken::new(),
            closed: AtomicBool::new(false),
            close_calls: AtomicUsize::new(0),
            entropy_bytes: AtomicUsize::new(0),
            disks: Mutex::new(Default::default()),
        });
        lock(&self.vms).push(vm.clone());
        Ok(vm)
    }
}

/// One fake VM.
pub struct FakeVm {
    me: std::sync::Weak<FakeVm>,
    id: String,
    pub dir: PathBuf,
    listeners: Mutex<HashMap<String, UnixListener>>,
    paths: HashMap<String, PathBuf>,
    shared_faults: Arc<Mutex<Faults>>,
    pub gcs: FakeGcs,
    exit: watch::Sender<Option<ExitReason>>,
    started: Mutex<Option<SystemTime>>,
    stopped: Mutex<Option<SystemTime>>,
    guest_stop: CancellationToken,
    pub closed: AtomicBool,
    pub close_calls: AtomicUsize,
    pub entropy_bytes: AtomicUsize,
    /// Disks on the fake SCSI controller: (controller, LUN) -> image.
    pub disks: Mutex<std::collections::BTreeMap<(u32, u32), PathBuf>>,
}

impl FakeVm {
    /// The "process" exits with `reason` (first reason wins).
    pub fn exit_with(&self, reason: ExitReason) {
        self.exit.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
            *lock(&self.stopped) = Some(SystemTime::now());
            true
        });
        self.guest_stop.cancel();
    }

    fn self_arc(&self) -> Arc<FakeVm> {
        self.me.upgrade().expect("the VM is alive while called")
    }

    pub fn has_channel(&self, role: &str) -> bool {
        self.paths.contains_key(role)
    }

    async fn run_guest(self: Arc<Self>) {
        let f = lock(&self.shared_faults).clone();
        let stop = self.guest_stop.clone();
        let gcs_path = self.paths.get("gcs").cloned().expect("gcs channel");
        let mut early_gcs = None;
        if f.gcs_connects_at_start && !f.guest_never_connects {
            early_gcs = UnixStream::connect(&gcs_path).await.ok();
        }
        tokio::select! {
            _ = tokio::time::sleep(f.boot_delay) => {}
            _ = stop.cancelled() => return,
        }
        if f.exit_during_start {
            self.exit_with(ExitReason::Signaled { signal: 9 });
            return;
        }
        let entropy = self.paths.get("entropy").cloned();
        let this = self.clone();
        let entropy = async move {
            if let Some(p) = entropy {
                if let Ok(mut s) = UnixStream::connect(p).await {
                    // The host keeps the stream open (as QEMU needs): read exactly 512.
                    let mut buf = vec![0u8; uvm_proto::ports::ENTROPY_BYTES];
                    if s.read_exact(&mut buf).await.is_ok() {
                        this.entropy_bytes.store(buf.len(), Ordering::SeqCst);
                    }
                }
            }
        };
        let log = self.paths.get("log").cloned().expect("log channel");
        let stop2 = stop.clone();
        let logs = async move {
            if f.log_reconnect {
                if let Ok(mut s) = UnixStream::connect(&log).await {
                    let _ = s
                        .write_all(b"{\"level\":\"info\",\"msg\":\"first connection\"}\n")
                        .await;
                }
            }
            if let Ok(mut s) = UnixStream::connect(&log).await {
                let _ = s
                    .write_all(b"{\"level\":\"info\",\"msg\":\"agent up\",\"pid\":1}\n")
                    .await;
                stop2.cancelled().await;
            }
        };
        let gcs = self.gcs.clone();
        let stop3 = stop.clone();
        let serve = async move {
            if f.guest_never_connects {
                return;
            }
            let stream = match early_gcs {
                Some(s) => Ok(s),
                None => UnixStream::connect(gcs_path).await,
            };
            if let Ok(s) = stream {
                if f.gcs_hangup {
                    drop(s);
                    return;
                }
                gcs.serve(s, stop3).await;
            }
        };
        let this = self.clone();
        let poweroff = async move {
            tokio::select! {
                _ = this.gcs.poweroff.cancelled() => this.exit_with(ExitReason::GuestPoweroff),
                _ = stop.cancelled() => {}
            }
        };
        tokio::join!(entropy, logs, serve, poweroff);
    }
}

#[async_trait]
impl UtilityVm for FakeVm {
    fn id(&self) -> &str {
        &self.id
    }
    fn take_channel(&self, role: &str) -> Option<UnixListener> {
        lock(&self.listeners).remove(role)
    }
    async fn start(&self) -> Result<(), VmmError> {
        if lock(&self.shared_faults).start_fails {
            return Err(VmmError::Qmp {
                command: "cont".into(),
                message: "injected start failure".into(),
            });
        }
        if self.exit.borrow().is_some() {
            return Err(VmmError::State("exited"));
        }
        *lock(&self.started) = Some(SystemTime::now());
        let me = self.self_arc();
        tokio::spawn(me.run_guest());
        Ok(())
    }
    async fn terminate(&self) -> Result<(), VmmError> {
        {
            let mut f = lock(&self.shared_faults);
            if f.terminate_fails > 0 {
                f.terminate_fails -= 1;
                return Err(VmmError::Qmp {
                    command: "quit".into(),
                    message: "injected terminate failure".into(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.exit_with(ExitReason::TerminatedByRequest { forced: false });
        Ok(())
    }
    async fn close(&self) -> Result<(), VmmError> {
        self.close_calls.fetch_add(1, Ordering::SeqCst);
        {
            let mut f = lock(&self.shared_faults);
            if f.close_fails > 0 {
                f.close_fails -= 1;
                return Err(VmmError::Io {
                    context: "removing runtime dir".into(),
                    source: std::io::Error::other("injected close failure"),
                });
            }
        }
        self.exit_with(ExitReason::TerminatedByRequest { forced: false });
        lock(&self.listeners).clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn wait(&self) -> ExitReason {
        let mut rx = self.exit.subscribe();
        let r = rx
            .wait_for(|r| r.is_some())
            .await
            .expect("sender lives in self");
        r.clone().expect("checked")
    }
    fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().clone()
    }
    fn started_time(&self) -> Option<SystemTime> {
        *lock(&self.started)
    }
    fn stopped_time(&self) -> Option<SystemTime> {
        *lock(&self.stopped)
    }
    async fn statistics(&self) -> Result<VmStatistics, VmmError> {
        if self.exit.borrow().is_some() {
            return Err(VmmError::State("exited"));
        }
        let up = lock(&self.started)
            .and_then(|s| s.elapsed().ok())
            .unwrap_or_default();
        Ok(VmStatistics {
            vcpu_runtime: up / 2,
            working_set_bytes: 50 << 20,
            assigned_memory_bytes: 0,
            virtual_node_count: 1,
        })
    }
    fn pid(&self) -> Option<u32> {
        None
    }
    async fn hot_add_disk(&self, disk: &DiskAttachment) -> Result<(), VmmError> {
        if lock(&self.shared_faults).hot_add_fails {
            return Err(VmmError::Unsupported("injected hot-add failure".into()));
        }
        let mut disks = lock(&self.disks);
        let at = (disk.controller, disk.lun);
        assert!(!disks.contains_key(&at), "LUN {at:?} given out twice");
        disks.insert(at, disk.path.clone());
        Ok(())
    }

    async fn hot_remove_disk(&self, controller: u32, lun: u32) -> Result<(), VmmError> {
        match lock(&self.disks).remove(&(controller, lun)) {
            Some(_) => Ok(()),
            None => Err(VmmError::Unsupported(format!(
                "no disk at {controller}:{lun}"
            ))),
        }
    }

    async fn scsi_inventory(&self) -> Result<ScsiInventory, VmmError> {
        let disks = lock(&self.disks);
        Ok(ScsiInventory {
            disks: disks.keys().copied().collect(),
            block_nodes: disks.keys().map(|(c, l)| format!("disk-{c}-{l}")).collect(),
        })
    }

    fn runtime_dir(&self) -> &Path {
        &self.dir
    }
}
