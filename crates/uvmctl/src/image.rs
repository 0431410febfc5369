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

/// Builds (or finds in the cache) the image for `kind`. Long steps show a
/// spinner; the kernel build shows a bar with an ETA.
pub async fn ensure_image(kind: KernelKind) -> anyhow::Result<Image> {
    let label = format!("{kind:?}").to_lowercase();
    tokio::task::spawn_blocking(move || {
        let progress = BuildProgress::new();
        let started = std::time::Instant::now();
        let image = uvm_image::ensure_image(&kind, &|line: &str| progress.line(line));
        progress.finish();
        if started.elapsed() > Duration::from_secs(2) {
            if let Ok(img) = &image {
                eprintln!(
                    "image ({label}) ready in {:.1?}: {}",
                    started.elapsed(),
                    img.kernel.display()
                );
            }
        }
        image
    })
    .await
    .context("image build task")?
    .context("preparing the guest image")
}

/// Kernel build steps (kbuild `CC`, `LD`, ... lines) of a build of the
/// tuned config, measured here; replaced by the count of the last build.
const DEFAULT_KERNEL_STEPS: u64 = 1500;

/// Progress of an image build: a spinner, then a bar with ETA once kbuild
/// starts printing its steps. The step count of a finished build is kept in
/// the cache so the next estimate is exact for the same config.
struct BuildProgress {
    bar: ProgressBar,
    steps: std::sync::atomic::AtomicU64,
    steps_file: std::path::PathBuf,
}

impl BuildProgress {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let steps_file = uvm_image::cache_dir().join("kernel").join("build-steps");
        BuildProgress {
            bar,
            steps: 0.into(),
            steps_file,
        }
    }

    fn line(&self, line: &str) {
        use std::sync::atomic::Ordering;
        if is_kbuild_step(line) {
            let n = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 {
                let total = std::fs::read_to_string(&self.steps_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(DEFAULT_KERNEL_STEPS);
                self.bar.set_length(total);
                self.bar.set_style(
                    ProgressStyle::with_template(
                        "building kernel [{elapsed_precise}] [{bar:30}] {pos}/{len} ETA {eta} {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            if n >= self.bar.length().unwrap_or(u64::MAX) {
                self.bar.set_length(n + 1);
            }
            self.bar.set_position(n);
        }
        self.bar
            .set_message(line.trim().chars().take(80).collect::<String>());
    }

    fn finish(&self) {
        let n = self.steps.load(std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            let _ = std::fs::write(&self.steps_file, n.to_string());
        }
        self.bar.finish_and_clear();
    }
}

/// Whether a kernel build output line is one kbuild step (`  CC      kernel/fork.o`).
fn is_kbuild_step(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  ") else {
        return false;
    };
    let word = rest.split_whitespace().next().unwrap_or("");
    !word.is_empty()
        && word.len() <= 8
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
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
    println!(
        "{}",
        default_document(&image, args.memory, args.cpus).to_json_pretty()
    );
    Ok(())
}

/// `uvmctl image build|info|oci-busybox`.
pub async fn image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build { kernel, snapshot } => {
            let kinds = match kernel {
                ImageKernel::Tuned => vec![KernelKind::Tuned],
                ImageKernel::Stock => vec![KernelKind::Stock],
                ImageKernel::All => vec![KernelKind::Tuned, KernelKind::Stock],
            };
            for kind in kinds {
                let tuned = kind == KernelKind::Tuned;
                let img = ensure_image(kind).await?;
                print_image(&img);
                if tuned {
                    // The containerd shim boots this image when its runtime
                    // config names none.
                    let record = uvm_image::record_default_image(&uvm_image::cache_dir(), &img)?;
                    println!("default: {}", record.display());
                    if snapshot {
                        let dir = crate::snapshot::ensure_default_snapshot(&img).await?;
                        println!("snapshot: {}", dir.display());
                    }
                }
            }
            Ok(())
        }
        ImageCommand::OciBusybox { out, busybox } => {
            tokio::task::spawn_blocking(move || crate::container::write_busybox(&busybox, &out))
                .await?
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
    println!(
        "kernel:  {} ({}, {:?})",
        img.kernel.display(),
        size(&img.kernel),
        img.machine
    );
    println!("initrd:  {} ({})", img.initrd.display(), size(&img.initrd));
    println!("cmdline: {}", img.cmdline);
}

fn size(p: &std::path::Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)),
        Err(e) => format!("unreadable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_steps_are_recognised() {
        assert!(is_kbuild_step("  CC      kernel/fork.o"));
        assert!(is_kbuild_step("  LD      vmlinux.o"));
        assert!(is_kbuild_step("  HOSTCC  scripts/basic/fixdep"));
        assert!(!is_kbuild_step("build.sh: configuring in /x"));
        assert!(!is_kbuild_step("make[1]: Entering directory"));
        assert!(!is_kbuild_step(""));
    }
}
