//! `uvmctl image`, `uvmctl doc`: the guest image and the default VM document.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use uvm_image::{Image, KernelKind};
use uvm_schema::{ComputeSystem, LcowDocumentBuilder};

use crate::cli::{DocArgs, ImageCommand, ImageKernel, KernelChoice};

/// Default guest memory (MiB) for `run` and `doc`.
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// Default vCPU count.
pub const DEFAULT_CPUS: u32 = 1;

impl From<&KernelChoice> for KernelKind {
    fn from(k: &KernelChoice) -> Self {
        match k {
            KernelChoice::Tuned => KernelKind::Tuned,
            KernelChoice::Stock => KernelKind::Stock,
            KernelChoice::Path(p) => KernelKind::Path(p.clone()),
        }
    }
}

/// Builds (or finds in the cache) the image for `kind`, with a spinner on a terminal.
pub async fn ensure_image(kind: KernelKind) -> anyhow::Result<Image> {
    let label = format!("{kind:?}").to_lowercase();
    tokio::task::spawn_blocking(move || {
        let bar = progress_bar();
        let started = std::time::Instant::now();
        let image = uvm_image::ensure_image(&kind, &|line: &str| {
            bar.set_message(line.trim().chars().take(100).collect::<String>());
        });
        let slow = started.elapsed() > Duration::from_secs(2);
        bar.finish_and_clear();
        if slow {
            if let Ok(img) = &image {
                eprintln!("image ({label}) ready in {:.1?}: {}", started.elapsed(), img.kernel.display());
            }
        }
        image
    })
    .await
    .context("image build task")?
    .context("preparing the guest image")
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The default document for an image.
pub fn default_document(image: &Image, memory_mb: Option<u64>, cpus: Option<u32>) -> ComputeSystem {
    LcowDocumentBuilder::new(&image.kernel, &image.initrd)
        .cmdline(image.cmdline.clone())
        .memory_mb(memory_mb.unwrap_or(DEFAULT_MEMORY_MB))
        .processors(cpus.unwrap_or(DEFAULT_CPUS))
        .owner("uvmctl")
        .build()
}

/// `uvmctl doc`.
pub async fn doc(args: DocArgs) -> anyhow::Result<()> {
    let image = ensure_image(KernelKind::from(&args.kernel)).await?;
    println!("{}", default_document(&image, args.memory, args.cpus).to_json_pretty());
    Ok(())
}

/// `uvmctl image build|info`.
pub async fn image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build { kernel } => {
            let kinds = match kernel {
                ImageKernel::Tuned => vec![KernelKind::Tuned],
                ImageKernel::Stock => vec![KernelKind::Stock],
                ImageKernel::All => vec![KernelKind::Tuned, KernelKind::Stock],
            };
            for kind in kinds {
                let img = ensure_image(kind).await?;
                print_image(&img);
            }
            Ok(())
        }
        ImageCommand::Info => {
            println!("cache:   {}", uvm_image::cache_dir().display());
            match uvm_image::tuned_kernel_path() {
                Some(p) => println!("tuned:   {} ({})", p.display(), size(&p)),
                None => println!("tuned:   not built (uvmctl image build)"),
            }
            match uvm_image::stock_kernel() {
                Ok((p, rel)) => println!("stock:   {} ({rel}, {})", p.display(), size(&p)),
                Err(e) => println!("stock:   unavailable: {e}"),
            }
            match uvm_image::locate_agent() {
                Ok(p) => println!("agent:   {} ({})", p.display(), size(&p)),
                Err(e) => println!("agent:   {e}"),
            }
            match uvm_image::locate_busybox() {
                Ok(p) => println!("busybox: {}", p.display()),
                Err(e) => println!("busybox: {e}"),
            }
            Ok(())
        }
    }
}

fn print_image(img: &Image) {
    println!("kernel:  {} ({}, {:?})", img.kernel.display(), size(&img.kernel), img.machine);
    println!("initrd:  {} ({})", img.initrd.display(), size(&img.initrd));
    println!("cmdline: {}", img.cmdline);
}

fn size(p: &std::path::Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)),
        Err(e) => format!("unreadable: {e}"),
    }
}
