//! Turning `uvm_image` images into baseline VM templates.

use crate::qemu::{Accel, Machine, RawVm};
use crate::raw::BaselineVm;
use crate::{BenchError, BenchOptions, KernelKind};
use std::path::Path;
use uvm_image::{Image, MachineHint};

/// Short name of a kernel kind for reports.
pub fn kind_name(kind: &KernelKind) -> String {
    match kind {
        KernelKind::Tuned => "tuned".into(),
        KernelKind::Stock => "stock".into(),
        KernelKind::Path(p) => p.display().to_string(),
    }
}

/// The raw baseline image for `kind` (built and cached by uvm-image).
pub fn raw_image(kind: &KernelKind) -> Result<Image, BenchError> {
    uvm_image::raw_baseline_image(kind, &|m| tracing::info!("{m}")).map_err(BenchError::ImageBuild)
}

/// A baseline VM template: `image`'s kernel, machine and cmdline with `initrd`.
pub fn baseline(image: &Image, initrd: &Path, opts: &BenchOptions, memory_mb: u32) -> BaselineVm {
    BaselineVm {
        vm: RawVm {
            machine: match image.machine {
                MachineHint::Microvm => Machine::Microvm,
                MachineHint::Q35 => Machine::Q35,
            },
            accel: Accel::detect(),
            tb_size_mb: opts.tb_size_mb,
            memory_mb,
            cpus: opts.cpus,
            kernel: image.kernel.clone(),
            initrd: initrd.to_path_buf(),
            cmdline: image.cmdline.clone(),
            ports: Vec::new(),
            console: None,
        },
        keep_console: std::env::var_os("UVM_BENCH_CONSOLE").is_some(),
    }
}
