//! The `container` section: OCI containers in a running UVM next to a plain
//! exec in the UVM itself (the peer), plus the busybox image's unpack and
//! its layer cache, and the first container of a freshly booted VM.
//!
//! Per iteration, in turn: the peer (a plain `/bin/true` spawned in the
//! UVM, spawn to exit), ours (create_container + start_container of
//! `/bin/true` to its exit, then delete_container timed apart), and an
//! exec of `/bin/true` into a long-running container. The long-running
//! container holds the image's layer share, so the iterations' creates
//! find it bound; the first container after boot pays for binding it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Process as OciProcess, Spec};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::time::{timeout, Instant};
use uvm::{ContainerRootfs, Controller};
use uvm_guest::{ExitOutcome, Process, ProcessOutput, ProcessSpec};
use uvm_image::{Image, LayerCache};

use crate::ours::{self, bounded, OurVm, CALL};
use crate::report::Latency;
use crate::stats::{median, ms};
use crate::{BenchError, BenchOptions};

/// The busybox binary the image is made of (`apt-get install busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The goal of the issue: create+start at most this much over a plain exec.
pub const GOAL_OVER_EXEC_MS: f64 = 30.0;

/// The image step: the busybox archive unpacked twice into one fresh cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageUnpack {
    /// Size of the OCI archive, bytes.
    pub archive_bytes: u64,
    /// First `unpack_archive` into the empty cache, ms.
    pub first_unpack_ms: Option<f64>,
    /// Second `unpack_archive` of the same archive, ms (all layers cached).
    pub second_unpack_ms: Option<f64>,
    /// Layers of the image.
    pub layers: usize,
    /// Layers the first unpack unpacked.
    pub unpacked_first: usize,
    /// Layers the second unpack unpacked (0: the cache worked).
    pub unpacked_second: usize,
}

/// What the section reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContainerBench {
    /// Median of create_container + start_container of `/bin/true` to its
    /// exit, ms (the key).
    pub create_start_median_ms: Option<f64>,
    /// Median of exec_in_container of `/bin/true` to its exit, ms (the
    /// issue's key).
    pub exec_median_ms: Option<f64>,
    /// The first container of a freshly booted VM: create + start + exit of
    /// `/bin/true`, ms (one sample; includes binding the layer share).
    pub first_container_after_boot_ms: Option<f64>,
    /// The peer: a plain `/bin/true` spawned in the UVM itself, median ms.
    pub plain_exec_median_ms: Option<f64>,
    /// create_start_median_ms - plain_exec_median_ms.
    pub create_start_over_exec_ms: Option<f64>,
    /// Median of create_container alone, ms.
    pub create_median_ms: Option<f64>,
    /// Median of start_container to the init's exit, ms.
    pub start_median_ms: Option<f64>,
    /// Median of delete_container of an exited container, ms.
    pub delete_median_ms: Option<f64>,
    /// create + start to exit.
    pub create_start: Latency,
    /// create_container alone.
    pub create: Latency,
    /// start_container to the init's exit.
    pub start: Latency,
    /// start_container until it returned the process (the rest of `start`
    /// is the init running and its exit reaching the host).
    pub start_call: Latency,
    /// delete_container.
    pub delete: Latency,
    /// exec_in_container of `/bin/true` to exit.
    pub exec: Latency,
    /// The peer: `Guest::spawn` of `/bin/true` to exit (the same process
    /// path as the container's, without a container).
    pub plain_exec: Latency,
    /// Today's `exec_into_host` of `/bin/true` (host-side stdio paths), for
    /// context.
    pub exec_into_host: Latency,
    /// Boot (create_vm + start_vm) of the VM of the first container, ms.
    pub first_vm_boot_ms: Option<f64>,
    /// What the peer is.
    pub peer: String,
    /// The image step.
    pub image: ImageUnpack,
    /// The goal.
    pub goal: String,
    /// Whether create_start_over_exec_ms meets it; None off TCG (the goal
    /// is TCG's) or when unmeasured.
    pub goal_met: Option<bool>,
}

fn oci(what: &'static str) -> impl FnOnce(uvm_image::OciError) -> BenchError {
    move |source| BenchError::Oci {
        what,
        source: Box::new(source),
    }
}

/// Writes the busybox archive to `dir` and unpacks it twice into a fresh
/// cache there; the layers, bottom first.
pub fn unpack_image(dir: &Path) -> Result<(ImageUnpack, Vec<PathBuf>), BenchError> {
    let archive = dir.join("busybox-oci.tar");
    uvm_image::write_busybox_archive(Path::new(BUSYBOX), &archive).map_err(oci(
        "writing the busybox archive (apt-get install busybox-static)",
    ))?;
    let archive_bytes = std::fs::metadata(&archive).map_or(0, |m| m.len());
    let cache = LayerCache::new(dir.join("layer-cache"));
    let t = Instant::now();
    let first = uvm_image::unpack_archive(&archive, &cache).map_err(oci("first unpack"))?;
    let first_ms = ms(t.elapsed());
    let t = Instant::now();
    let second = uvm_image::unpack_archive(&archive, &cache).map_err(oci("second unpack"))?;
    let second_ms = ms(t.elapsed());
    let u = ImageUnpack {
        archive_bytes,
        first_unpack_ms: Some(first_ms),
        second_unpack_ms: Some(second_ms),
        layers: second.layers.len(),
        unpacked_first: first.unpacked_now,
        unpacked_second: second.unpacked_now,
    };
    Ok((u, second.layers))
}

/// The default spec running `args`, hostname `host`.
fn spec(args: &[&str], host: &str) -> Spec {
    let mut s = uvm::default_spec();
    s.set_hostname(Some(host.into()));
    let p = s
        .process_mut()
        .as_mut()
        .expect("default spec has a process");
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    s
}

fn rootfs(layers: &[PathBuf]) -> ContainerRootfs {
    ContainerRootfs::Layers {
        layers: layers.to_vec(),
        scratch_bytes: 16 << 20,
    }
}

async fn drain(s: Option<ProcessOutput>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut s) = s {
        s.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Closes stdin, reads stdout and stderr to EOF, waits for the exit
/// (bounded by [`CALL`]); an error unless it exited 0.
async fn finish(what: &'static str, mut p: Process) -> Result<(), BenchError> {
    drop(p.stdin.take());
    let (out, err) = (p.stdout.take(), p.stderr.take());
    let run = async move {
        let (o, e) = tokio::try_join!(drain(out), drain(err))
            .map_err(|e| BenchError::io(format!("{what}: reading its output"), e))?;
        let exit = p
            .wait_exit()
            .await
            .map_err(|source| BenchError::Guest { what, source })?;
        if exit.outcome != ExitOutcome::Code(0) {
            return Err(BenchError::Protocol(format!(
                "{what}: `/bin/true` ended {:?}; stdout {:?}, stderr {:?}",
                exit.outcome,
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            )));
        }
        Ok(())
    };
    match timeout(CALL, run).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Timeout {
            what,
            secs: CALL.as_secs(),
        }),
    }
}

/// Timings of one container run, ms.
struct Run {
    create: f64,
    start_call: f64,
    start: f64,
    delete: f64,
}

/// create + start + run `/bin/true` to its exit, then delete, each timed.
async fn container_true(vm: &OurVm, id: &str, layers: &[PathBuf]) -> Result<Run, BenchError> {
    let s = spec(&["/bin/true"], id);
    let t = Instant::now();
    bounded(
        "create_container",
        vm.mgr.create_container(id, &s, rootfs(layers)),
    )
    .await?;
    let create = ms(t.elapsed());
    let t = Instant::now();
    let p = bounded("start_container", vm.mgr.start_container(id)).await?;
    let start_call = ms(t.elapsed());
    finish("container init", p).await?;
    let start = ms(t.elapsed());
    let t = Instant::now();
    bounded("delete_container", vm.mgr.delete_container(id)).await?;
    Ok(Run {
        create,
        start_call,
        start,
        delete: ms(t.elapsed()),
    })
}

/// The peer: `/bin/true` spawned in the UVM itself, spawn to exit, ms.
async fn plain_true(vm: &OurVm) -> Result<f64, BenchError> {
    let guest = vm.mgr.guest().ok_or_else(|| BenchError::Controller {
        what: "guest",
        source: uvm::Error::InvalidState {
            op: "guest",
            state: vm.mgr.state(),
        },
    })?;
    let t = Instant::now();
    let spec = ProcessSpec {
        args: vec!["/bin/true".into()],
        ..Default::default()
    };
    let p = match timeout(CALL, guest.spawn(spec)).await {
        Ok(r) => r.map_err(|source| BenchError::Guest {
            what: "spawn",
            source,
        })?,
        Err(_) => {
            return Err(BenchError::Timeout {
                what: "spawn",
                secs: CALL.as_secs(),
            })
        }
    };
    finish("plain exec", p).await?;
    Ok(ms(t.elapsed()))
}

/// exec_in_container of `/bin/true` into the running `id`, to exit, ms.
async fn exec_true(vm: &OurVm, id: &str, process: &OciProcess) -> Result<f64, BenchError> {
    let t = Instant::now();
    let p = bounded("exec_in_container", vm.mgr.exec_in_container(id, process)).await?;
    finish("exec in container", p).await?;
    Ok(ms(t.elapsed()))
}

/// Boots a fresh VM and times its very first container; (container ms,
/// boot ms). The VM is terminated.
pub async fn first_after_boot(
    image: &Image,
    opts: &BenchOptions,
    layers: &[PathBuf],
) -> Result<(f64, f64), BenchError> {
    let vm = OurVm::boot("bench-container-first", image, opts.memory_mb, opts.cpus).await?;
    let boot = ms(vm.create + vm.start);
    let r = container_true(&vm, "first", layers).await;
    let term = vm.terminate().await;
    let r = r?;
    term?;
    Ok((r.create + r.start, boot))
}

/// Runs the section: the image step under `dir`, the first container of a
/// fresh VM of `image`, then the interleaved iterations on the running `vm`.
pub async fn section(
    vm: &OurVm,
    image: &Image,
    opts: &BenchOptions,
    dir: &Path,
) -> Result<ContainerBench, BenchError> {
    let (unpack, layers) = unpack_image(dir)?;
    let (first, first_boot) = first_after_boot(image, opts, &layers).await?;

    let long = "bench-long";
    let s = spec(&["/bin/sleep", "3600"], long);
    bounded(
        "create_container",
        vm.mgr.create_container(long, &s, rootfs(&layers)),
    )
    .await?;
    let sleeper = bounded("start_container", vm.mgr.start_container(long)).await?;
    let mut process = s.process().clone().expect("default spec has a process");
    process.set_args(Some(vec!["/bin/true".into()]));

    let r = iterations(vm, opts, &layers, long, &process).await;
    // The sleeper goes whatever happened (delete kills it); its error is
    // reported only when the rest worked.
    let del = bounded("delete_container", vm.mgr.delete_container(long)).await;
    drop(sleeper);
    let mut c = r?;
    del?;
    c.first_container_after_boot_ms = Some(first);
    c.first_vm_boot_ms = Some(first_boot);
    c.image = unpack;
    Ok(c)
}

async fn iterations(
    vm: &OurVm,
    opts: &BenchOptions,
    layers: &[PathBuf],
    long: &str,
    process: &OciProcess,
) -> Result<ContainerBench, BenchError> {
    // One untimed round first: code run for the first time (translated
    // first under TCG) is not in the medians.
    plain_true(vm).await?;
    container_true(vm, "warm", layers).await?;
    exec_true(vm, long, process).await?;
    ours::exec_true_ms(vm).await?;

    let n = opts.runs * 3;
    let (mut plain, mut host) = (vec![], vec![]);
    let (mut cs, mut create, mut start, mut call, mut delete, mut exec) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        // Ours and the peer in turn, the order swapped every iteration.
        for ours_turn in [i % 2 == 0, i % 2 != 0] {
            if ours_turn {
                let r = container_true(vm, &format!("c{i}"), layers).await?;
                cs.push(r.create + r.start);
                create.push(r.create);
                start.push(r.start);
                call.push(r.start_call);
                delete.push(r.delete);
                exec.push(exec_true(vm, long, process).await?);
            } else {
                plain.push(plain_true(vm).await?);
                host.push(ours::exec_true_ms(vm).await?);
            }
        }
        // Let the guest reap and settle between iterations.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (csm, pm) = (median(&cs), median(&plain));
    let over = csm.zip(pm).map(|(a, b)| a - b);
    let tcg = crate::qemu::Accel::detect() == crate::qemu::Accel::Tcg;
    Ok(ContainerBench {
        create_start_median_ms: csm,
        exec_median_ms: median(&exec),
        first_container_after_boot_ms: None,
        plain_exec_median_ms: pm,
        create_start_over_exec_ms: over,
        create_median_ms: median(&create),
        start_median_ms: median(&start),
        delete_median_ms: median(&delete),
        create_start: Latency::of(&cs),
        create: Latency::of(&create),
        start: Latency::of(&start),
        start_call: Latency::of(&call),
        delete: Latency::of(&delete),
        exec: Latency::of(&exec),
        plain_exec: Latency::of(&plain),
        exec_into_host: Latency::of(&host),
        first_vm_boot_ms: None,
        peer: "plain exec of /bin/true in the UVM (Guest::spawn, spawn to exit)".into(),
        image: ImageUnpack::default(),
        goal: format!("create+start ≤ {GOAL_OVER_EXEC_MS:.0} ms over a plain exec (TCG)"),
        goal_met: over.filter(|_| tcg).map(|d| d <= GOAL_OVER_EXEC_MS),
    })
}
