//! The benchmark driver: every measurement interleaved with its baseline.

use crate::ours::{self, OurVm};
use crate::qemu::{self, Accel};
use crate::raw::{self, BaselineVm, RawSample, RawSource};
use crate::report::*;
use crate::stats::{median, ms, percentile, ratio, Summary};
use crate::{memory, qga_image, setup, BenchError, BenchOptions, KernelKind};
use std::time::Duration;
use tokio::time::Instant;
use uvm_image::Image;

fn img<T>(r: uvm_image::Result<T>) -> Result<T, BenchError> {
    r.map_err(BenchError::ImageBuild)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs every benchmark of `opts`. A failing section is recorded in
/// [`Report::errors`] and the others still run; `Err` only when no image can be built.
pub async fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    // exec, stdout, memory and density run on the tuned kernel when it is
    // measured (the qemu-guest-agent peer image has no modules for a stock one).
    let first = if opts.kernels.is_empty() || opts.kernels.contains(&KernelKind::Tuned) {
        KernelKind::Tuned
    } else {
        opts.kernels[0].clone()
    };
    let mut rep = Report {
        machine: MachineInfo {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            accel: Accel::detect().name().into(),
            qemu: qemu::version(),
            kernel: Vec::new(),
            loadavg: vec![loadavg()],
            quick: opts.quick,
            runs: opts.runs,
        },
        ..Default::default()
    };
    let progress = |m: &str| tracing::info!("{m}");
    let ours_img = img(uvm_image::ensure_image(&first, &progress))?;
    let raw_img = setup::raw_image(&first)?;
    let tmp = tempfile::Builder::new()
        .prefix("uvm-bench-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let qga_initrd = tmp.path().join("qga.cpio");
    if opts.wants("exec") || opts.wants("memory") {
        qga_image::build(&qga_initrd)?;
    }

    for kind in opts.kernels.iter().filter(|_| opts.wants("boot")) {
        let name = setup::kind_name(kind);
        let r = boot_section(opts, kind, &mut rep).await;
        match r {
            Ok(b) if kind == &KernelKind::Stock => rep.boot_stock = Some(b),
            Ok(b) if rep.boot.is_none() => rep.boot = Some(b),
            Ok(b) => rep.errors.push(format!(
                "boot {name}: measured, but only one non-stock kernel is reported ({:?} ms)",
                b.median_ms
            )),
            Err(e) => rep.errors.push(format!("boot {name}: {}", chain(&e))),
        }
    }
    let mem = opts.memory_mb;
    let base = setup::baseline(&raw_img, &raw_img.initrd, opts, mem);
    let peer = setup::baseline(&raw_img, &qga_initrd, opts, mem);
    let on_vm = ["exec", "stdout", "hotplug", "container"];
    if on_vm.iter().any(|s| opts.wants(s)) {
        match OurVm::boot("bench-exec", &ours_img, mem, opts.cpus).await {
            Ok(vm) => {
                if opts.wants("exec") {
                    match exec_section(opts, &vm, &peer, tmp.path()).await {
                        Ok((e, s)) => (rep.exec, rep.stats) = (Some(e), Some(s)),
                        Err(e) => rep.errors.push(format!("exec: {}", chain(&e))),
                    }
                }
                if opts.wants("stdout") {
                    match stdout_section(opts, &vm, &base, tmp.path()).await {
                        Ok(t) => rep.stdout_throughput = Some(t),
                        Err(e) => rep.errors.push(format!("stdout_throughput: {}", chain(&e))),
                    }
                }
                if opts.wants("hotplug") {
                    let size = if opts.quick { 16 } else { 64 };
                    match crate::hotplug::section(&vm, opts.runs, size, tmp.path()).await {
                        Ok(h) => rep.hotplug = Some(h),
                        Err(e) => rep.errors.push(format!("hotplug: {}", chain(&e))),
                    }
                }
                if opts.wants("container") {
                    match crate::container::section(&vm, &ours_img, opts, tmp.path()).await {
                        Ok(c) => {
                            if c.image.unpacked_second != 0 {
                                rep.errors.push(format!(
                                    "container: the second unpack of the image unpacked {} layers (0 expected: cached)",
                                    c.image.unpacked_second
                                ));
                            }
                            rep.container = Some(c);
                        }
                        Err(e) => rep.errors.push(format!("container: {}", chain(&e))),
                    }
                }
                if let Err(e) = vm.terminate().await {
                    rep.errors.push(format!("terminate: {}", chain(&e)));
                }
            }
            Err(e) => rep.errors.push(format!("exec/stdout boot: {}", chain(&e))),
        }
    }
    if opts.wants("containerd") {
        match crate::containerd::section(opts, &ours_img).await {
            Ok(c) => rep.containerd = Some(c),
            Err(e) => rep.errors.push(format!("containerd: {}", chain(&e))),
        }
    }
    if opts.wants("restore") {
        match crate::restore::section(&ours_img, opts, tmp.path()).await {
            Ok(r) => {
                // A failed step is in the section and, like every failure, here.
                let failed = r.errors.iter().map(|e| format!("restore: {e}"));
                rep.errors.extend(failed);
                rep.restore = Some(r);
            }
            Err(e) => rep.errors.push(format!("restore: {}", chain(&e))),
        }
    }
    if opts.wants("memory") {
        match memory_section(opts, &ours_img, &raw_img, &qga_initrd).await {
            Ok(m) => rep.memory = Some(m),
            Err(e) => rep.errors.push(format!("memory: {}", chain(&e))),
        }
    }
    for &n in opts.density_counts.iter().filter(|_| opts.wants("density")) {
        rep.density
            .push(crate::density::step(n, &ours_img, opts).await);
    }
    rep.machine.loadavg.push(loadavg());
    Ok(rep)
}

/// An error with its `source()` chain, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn boot_section(
    opts: &BenchOptions,
    kind: &KernelKind,
    rep: &mut Report,
) -> Result<Boot, BenchError> {
    let progress = |m: &str| tracing::info!("{m}");
    let ours_img = img(uvm_image::ensure_image(kind, &progress))?;
    let raw_img = setup::raw_image(kind)?;
    rep.machine.kernel.push(format!(
        "{}: {}",
        setup::kind_name(kind),
        ours_img.kernel.display()
    ));
    let base = setup::baseline(&raw_img, &raw_img.initrd, opts, opts.memory_mb);
    let (mut create, mut start, mut baseline, mut term) = (vec![], vec![], vec![], vec![]);
    let mut connected = vec![];
    for i in 0..opts.runs {
        // Ours and the baseline in turn, the order swapped every run so
        // that neither always follows the other's teardown.
        for ours_turn in [i % 2 == 0, i % 2 != 0] {
            if ours_turn {
                let vm = OurVm::boot(
                    &format!("bench-boot-{i}"),
                    &ours_img,
                    opts.memory_mb,
                    opts.cpus,
                )
                .await?;
                create.push(ms(vm.create));
                start.push(ms(vm.start));
                term.push(ms(vm.terminate().await?));
            } else {
                let s: RawSample = raw::raw_run(&base, None).await?;
                baseline.push(ms(s.first_byte));
                connected.push(ms(s.connected));
            }
        }
    }
    if *kind == KernelKind::Tuned || rep.terminate.is_none() {
        rep.terminate = Some(Latency::of(&term));
    }
    let mut boot = Boot::from_samples(&setup::kind_name(kind), &create, &start, &baseline);
    boot.baseline_chardev = Summary::of(&connected);
    Ok(boot)
}

async fn exec_section(
    opts: &BenchOptions,
    vm: &OurVm,
    peer: &BaselineVm,
    dir: &std::path::Path,
) -> Result<(Exec, Latency), BenchError> {
    let mut q = raw::start_qga(peer).await?;
    let poll = opts.qga_poll;
    // The first of each is reported apart (code run for the first time),
    // not in the medians.
    let first = ours::exec_true_ms(vm).await?;
    let t = Instant::now();
    q.client.run("/bin/true", &[], poll, raw::WAIT).await?;
    let peer_first = ms(t.elapsed());
    let (mut o, mut p, mut st) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs * 10 {
        o.push(ours::exec_true_ms(vm).await?);
        let t = Instant::now();
        let s = q.client.run("/bin/true", &[], poll, raw::WAIT).await?;
        p.push(ms(t.elapsed()));
        if s.exitcode != Some(0) {
            return Err(BenchError::Protocol(format!(
                "peer `true` exit {:?}",
                s.exitcode
            )));
        }
        st.push(vm.stats_ms().await?);
    }
    let iters = opts.floor_iterations;
    let floor = ours::floor_ms(vm, iters, dir).await?;
    let script = ours::floor_script(iters);
    let peer_floor = q
        .client
        .run(
            "/bin/sh",
            &["-c", &script],
            Duration::from_millis(5),
            raw::WAIT,
        )
        .await?;
    let peer_floor = ours::parse_floor(&String::from_utf8_lossy(&peer_floor.out), iters);
    let (so, sp) = (Summary::of(&o), Summary::of(&p));
    let exec = Exec {
        median_ms: so.median,
        p90_ms: so.p90,
        peer_median_ms: sp.median,
        peer_p90_ms: sp.p90,
        ratio: ratio(so.median, sp.median),
        peer: "qemu-guest-agent".into(),
        peer_poll_ms: ms(poll),
        peer_ready_ms: Some(ms(q.ready)),
        floor_ms: Some(floor),
        peer_floor_ms: peer_floor,
        floor_method: format!(
            "busybox sh loop of {iters} x /bin/true in the guest, timed by /proc/uptime (10 ms resolution), ms per iteration"
        ),
        first_ms: Some(first),
        peer_first_ms: Some(peer_first),
    };
    Ok((exec, Latency::of(&st)))
}

async fn stdout_section(
    opts: &BenchOptions,
    vm: &OurVm,
    base: &BaselineVm,
    dir: &std::path::Path,
) -> Result<Throughput, BenchError> {
    let bytes = opts.throughput_mib << 20;
    let writer = img(uvm_image::compile_rawinit(&|m| tracing::info!("{m}")))?;
    ours::install_writer(vm, &writer).await?;
    // Both sides write the same payload into a file in the same directory;
    // the raw one is also run discarding (the channel's ceiling).
    let sink = dir.join("raw-payload.bin");
    let (mut tm, mut tb, mut tc, mut td, mut tz) = (vec![], vec![], vec![], vec![], vec![]);
    let raw = |source, sink| async move {
        let s = raw::raw_run_into(base, Some(bytes), source, sink).await?;
        Ok::<f64, BenchError>(s.payload_mib_s().expect("payload requested"))
    };
    for _ in 0..opts.runs {
        tm.push(ours::stdout_static_mib_s(vm, bytes, dir).await?);
        tb.push(raw(RawSource::Static, Some(&sink)).await?);
        tc.push(raw(RawSource::Static, None).await?);
        td.push(ours::stdout_mib_s(vm, bytes, dir).await?);
        tz.push(raw(RawSource::Zero, Some(&sink)).await?);
        let _ = std::fs::remove_file(&sink);
    }
    let (mo, mb, mc) = (median(&tm), median(&tb), median(&tc));
    let (md, mz) = (median(&td), median(&tz));
    Ok(Throughput {
        bytes,
        sink: crate::hostfs::describe(dir),
        mib_s: mo,
        // Same payload every run: the 90th percentile of time is the
        // 10th of the rate.
        p90_mib_s: percentile(&tm, 10.0),
        baseline_mib_s: mb,
        baseline_p90_mib_s: percentile(&tb, 10.0),
        ratio: ratio(mo, mb),
        discard_baseline_mib_s: mc,
        discard_ratio: ratio(mo, mc),
        dd_mib_s: md,
        same_producer_baseline_mib_s: mz,
        same_producer_ratio: ratio(md, mz),
    })
}

async fn memory_section(
    opts: &BenchOptions,
    ours_img: &Image,
    raw_img: &Image,
    qga_initrd: &std::path::Path,
) -> Result<Memory, BenchError> {
    let mut rows = Vec::new();
    for &mb in &opts.memory_sizes_mb {
        let before = memory::self_rss_kib().unwrap_or(0);
        let vm = OurVm::boot(&format!("bench-mem-{mb}"), ours_img, mb, opts.cpus).await?;
        ours::exec_true_ms(&vm).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let q = memory::qemu_children_rss_mib();
        let qp = memory::qemu_children_pss_mib();
        let c = memory::self_rss_kib().unwrap_or(0).saturating_sub(before) as f64 / 1024.0;
        vm.terminate().await?;
        let peer = setup::baseline(raw_img, qga_initrd, opts, mb);
        let mut p = raw::start_qga(&peer).await?;
        p.client
            .run("/bin/true", &[], opts.qga_poll, raw::WAIT)
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peer_rss = memory::rss_kib(p.run.qemu.pid()).map(|k| k as f64 / 1024.0);
        drop(p);
        rows.push(MemoryRow {
            guest_mb: mb,
            rss_mib: Some(q + c),
            qemu_rss_mib: Some(q),
            qemu_pss_mib: Some(qp),
            controller_rss_mib: Some(c),
            peer_qemu_rss_mib: peer_rss,
        });
    }
    // The cap only exists under TCG.
    let tb_size_mb = opts.tb_size_mb.filter(|_| Accel::detect() == Accel::Tcg);
    Ok(Memory {
        tb_size_mb,
        rss_mib: rows,
    })
}
