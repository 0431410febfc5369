//! `uvmctl snapshot create|info`, and the default snapshot `image build
//! --snapshot` keeps for `run --from-snapshot`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use uvm::{AfterSnapshot, Controller, CreateOptions, Manager, SnapshotManifest, StartOptions};
use uvm_image::Image;
use uvm_schema::ComputeSystem;
use uvm_vmm::{QemuConfig, QemuHypervisor};

use crate::cli::SnapshotCommand;
use crate::image::default_document;

/// Where `uvmctl image build --snapshot` keeps the default snapshot.
pub fn default_snapshot_dir() -> PathBuf {
    uvm_image::cache_dir().join("snapshot")
}

/// `uvmctl snapshot ...`.
pub async fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create {
            doc,
            memory,
            cpus,
            kernel,
            dir,
        } => {
            // Checked again when the snapshot is taken; here so a dir that
            // cannot take one costs no boot.
            if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!(
                    "snapshot {}: the dir is not empty: a snapshot is written into a dir of its own",
                    dir.display()
                );
            }
            let document = crate::run::load_document(doc.as_deref(), memory, cpus, &kernel).await?;
            let t = Instant::now();
            let m = create(document, &dir).await?;
            print_manifest(&dir, &m);
            println!(
                "took:     {:.0} ms (boot + snapshot)",
                t.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
        SnapshotCommand::Info { dir } => {
            let m = SnapshotManifest::read(&dir)
                .with_context(|| format!("snapshot {}", dir.display()))?;
            print_manifest(&dir, &m);
            let restorable = m
                .check_files(&dir)
                .and_then(|()| m.check_boot_files())
                .map_err(anyhow::Error::new);
            match restorable {
                Ok(()) => println!("files:    present, kernel and initrd unchanged"),
                Err(e) => println!("files:    NOT restorable: {}", crate::exit::describe(&e)),
            }
            Ok(())
        }
    }
}

/// Boots `document` with its RAM in a shared memfd (so the snapshot's
/// memory file can be mapped copy-on-write by every restore), snapshots it
/// into `dir` and terminates it.
pub async fn create(document: ComputeSystem, dir: &Path) -> anyhow::Result<SnapshotManifest> {
    let hv = QemuHypervisor::with_config(QemuConfig {
        shared_memory: true,
        ..QemuConfig::default()
    });
    let manager = Arc::new(Manager::with_hypervisor(Arc::new(hv)));
    let id = format!(
        "uvmctl-snap-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let made = async {
        manager
            .create_vm(CreateOptions { id, document })
            .await
            .context("creating the VM")?;
        manager
            .start_vm(StartOptions::default())
            .await
            .context("starting the VM")?;
        manager
            .snapshot(dir, AfterSnapshot::Terminate)
            .await
            .context("taking the snapshot")
    }
    .await;
    let terminated = manager.terminate_vm().await;
    let m = made?;
    terminated.context("terminating the VM")?;
    Ok(m)
}

/// The default snapshot of `img`: kept when it is still restorable here
/// (same kernel, initrd and QEMU), else made anew.
pub async fn ensure_default_snapshot(img: &Image) -> anyhow::Result<PathBuf> {
    let dir = default_snapshot_dir();
    if let Ok(m) = SnapshotManifest::read(&dir) {
        let same_image = m.kernel.path == img.kernel
            && m.initrd.as_ref().map(|i| i.path.as_path()) == Some(img.initrd.as_path());
        let here = QemuHypervisor::new().info().await.ok();
        let valid = same_image
            && m.check_files(&dir).is_ok()
            && m.check_boot_files().is_ok()
            && here.is_some_and(|h| m.check_hypervisor(&h).is_ok());
        if valid {
            return Ok(dir);
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the stale snapshot {}", dir.display()))?;
    }
    create(default_document(img, None, None), &dir).await?;
    Ok(dir)
}

fn print_manifest(dir: &Path, m: &SnapshotManifest) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("snapshot: {}", dir.display());
    println!("of VM:    {} (agent {})", m.source_vm_id, m.agent_version);
    println!(
        "qemu:     {} ({}, {})",
        m.hypervisor.version, m.hypervisor.accel, m.hypervisor.machine
    );
    println!("kernel:   {}", m.kernel.path.display());
    if let Some(i) = &m.initrd {
        println!("initrd:   {}", i.path.display());
    }
    println!("state:    {:.1} MiB", mib(m.state.bytes));
    match &m.memory {
        Some(f) => {
            let on_disk = std::fs::metadata(dir.join(&f.file))
                .map(|md| std::os::unix::fs::MetadataExt::blocks(&md) * 512)
                .unwrap_or(0);
            println!(
                "memory:   {:.0} MiB guest RAM, {:.1} MiB on disk (mapped copy-on-write by restores)",
                mib(f.bytes),
                mib(on_disk)
            );
        }
        None => println!("memory:   in the state stream (loaded by each restore)"),
    }
}
