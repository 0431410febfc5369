//! The agent as PID 1 in a real VM, driven through the controller: bulk
//! stdio, stacks, stats, orphan reaping, and both kernels (issue 2).

mod common;

use std::time::Duration;

use common::real::{req, VmGuard};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uvm::Controller;
use uvm_guest::{ExitOutcome, ProcessSpec};

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Runs `sh -c script` and returns (stdout, exit outcome).
async fn sh(vm: &VmGuard, script: &str) -> (String, ExitOutcome) {
    let f = common::real::sh(&vm.mgr.guest().unwrap(), script).await;
    (f.stdout, f.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ten_mib_of_random_bytes_through_cat_byte_exact() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    common::real::stdout_ports_ready(&guest, 1).await;
    let mut data = vec![0u8; 10 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    let mut p = guest.spawn(spec(&["cat"])).await.unwrap();
    assert!(p.stdout_on_port(), "bulk stdout goes through a stdout port");
    let mut stdin = p.stdin.take().unwrap();
    let mut stdout = p.stdout.take().unwrap();
    let mut stderr = p.stderr.take().unwrap();
    let input = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let err_reader = tokio::spawn(async move {
        let mut e = Vec::new();
        stderr.read_to_end(&mut e).await.unwrap();
        e
    });
    let mut got = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(300), stdout.read_to_end(&mut got))
        .await
        .expect("cat output bounded")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(p.wait().await.unwrap(), ExitOutcome::Code(0));
    assert!(err_reader.await.unwrap().is_empty(), "nothing on stderr");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_stdout_and_stderr_kept_apart() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    let f = common::real::sh(
        &guest,
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7",
    )
    .await;
    assert_eq!(f.stdout, "out1\nout2\nout3\n");
    assert_eq!(f.stderr.as_deref(), Some("err1\nerr2\nerr3\n"));
    assert_eq!(f.status, ExitOutcome::Code(7));
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dump_during_a_long_exec_names_the_exec_handler() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    let mut p = guest.spawn(spec(&["sleep", "30"])).await.unwrap();
    let dump = vm.mgr.dump_stacks().await.unwrap();
    assert!(
        dump.to_lowercase().contains("exec [sleep 30]"),
        "no exec handler in the dump:\n{dump}"
    );
    // The exec records its stack once the process has run for 100 ms.
    let mut dump = dump;
    for _ in 0..50 {
        if dump.contains("uvm_gcs::exec") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        dump = vm.mgr.dump_stacks().await.unwrap();
    }
    assert!(
        dump.contains("uvm_gcs::exec::exec_still_running"),
        "no symbolized exec frame:\n{dump}"
    );
    assert!(dump.contains("in-flight"), "{dump}");
    // Kernel stacks of guest tasks are part of it too (the sleeping child).
    assert!(dump.contains("sleep"), "{dump}");
    p.signal(9).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), ExitOutcome::Signal(9));
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_stats_are_plausible() {
    let mem_mb = 256u64;
    let Some(vm) = VmGuard::boot(mem_mb).await else {
        return;
    };
    let guest = vm.mgr.guest().unwrap();
    let s = guest.stats(Duration::from_secs(10)).await.unwrap();
    let configured = mem_mb << 20;
    let lo = configured * 90 / 100; // within 10%: the kernel keeps its image and reserved pages
    assert!(
        (lo..=configured).contains(&s.mem_total_bytes),
        "MemTotal {} not within the configured {configured}",
        s.mem_total_bytes
    );
    assert!(s.mem_available_bytes > 0 && s.mem_available_bytes <= s.mem_total_bytes);
    assert!(s.process_count >= 1);
    assert!(s.uptime_ns > 0);
    assert_eq!(s.online_cpus, 1);
    let vm_stats = vm.mgr.stats().await.unwrap();
    let vmm = vm_stats.memory.unwrap().vm_memory.unwrap();
    assert_eq!(vmm.assigned_memory, configured);
    assert!(
        vmm.available_memory > 0,
        "guest-reported available memory (MiB)"
    );
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_mounts_proc_once_without_suid_dev_or_exec() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let (procs, o) = sh(&vm, "grep ' /proc ' /proc/self/mountinfo").await;
    assert_eq!(o, ExitOutcome::Code(0));
    assert_eq!(procs.lines().count(), 1, "one /proc mount: {procs}");
    assert!(procs.contains("nosuid,nodev,noexec"), "{procs}");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_orphans_are_reaped_and_exit_statuses_are_not_stolen() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    // 100 short-lived orphans: their parent shell exits at once, PID 1 inherits them.
    let (_, o) = sh(&vm, "for i in $(seq 100); do (sleep 0.05 &) ; done").await;
    assert_eq!(o, ExitOutcome::Code(0));
    // Meanwhile exec'd processes still get their own statuses.
    let codes = futures::future::join_all((0..8).map(|i| {
        let mgr = vm.mgr.clone();
        async move {
            mgr.exec_into_host(req(&["sh", "-c", &format!("sleep 0.2; exit {i}")]))
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(codes, (0..8).collect::<Vec<i32>>());
    // Once the orphans are done, none is left as a zombie.
    let mut zombies = String::new();
    for _ in 0..50 {
        let (out, _) = sh(
            &vm,
            "cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l",
        )
        .await;
        zombies = out.trim().to_owned();
        if zombies == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(zombies, "0", "zombies left in the guest");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_stock_kernel_boots_and_runs_commands() {
    use uvm::{CreateOptions, Manager, StartOptions, State};
    let _serial = common::real::SERIAL.lock().await;
    let img = match tokio::task::spawn_blocking(|| {
        uvm_image::ensure_image(&uvm_image::KernelKind::Stock, &|p| eprintln!("image: {p}"))
    })
    .await
    .unwrap()
    {
        Ok(img) => img,
        Err(e) => return common::real::skip(format!("stock image: {e}")).unwrap_or(()),
    };
    assert_eq!(img.machine, uvm_image::MachineHint::Q35);
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("UVM_RUNTIME_DIR", root.path());
    let doc = uvm_schema::LcowDocumentBuilder::new(&img.kernel, &img.initrd)
        .memory_mb(256)
        .processors(1)
        .cmdline(img.cmdline.clone())
        .build();
    let mgr = Manager::new().with_gcs_timeout(Duration::from_secs(120));
    mgr.create_vm(CreateOptions {
        id: format!("stock-{}", std::process::id()),
        document: doc,
    })
    .await
    .unwrap();
    let pid = mgr.utility_vm().and_then(|v| v.pid());
    let started = mgr.start_vm(StartOptions::default()).await;
    if let Err(e) = started {
        let _ = mgr.terminate_vm().await;
        panic!("stock kernel start: {e}: {}", common::real::chain(&e));
    }
    let guest = mgr.guest().unwrap();
    common::real::stdout_ports_ready(&guest, 1).await;
    let mut p = guest.spawn(spec(&["uname", "-r"])).await.unwrap();
    // The stock kernel has debugfs, so its port counters work too.
    assert!(p.stdout_on_port(), "stock kernel: stdout on a port");
    drop(p.stdin.take());
    let mut out = String::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(p.wait().await.unwrap(), ExitOutcome::Code(0));
    assert_eq!(
        Some(out.trim()),
        img.release.as_deref(),
        "guest runs the stock kernel"
    );
    mgr.terminate_vm().await.unwrap();
    assert_eq!(mgr.state(), State::Terminated);
    common::real::assert_nothing_left(root.path(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kernel_panic_lands_in_the_console_tail() {
    // The image's cmdline puts the console on the virtio console (hvc0):
    // a panic must still be classified and its text kept.
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    assert!(vm.mgr.utility_vm().is_some(), "VM handle while running");
    let guest = vm.mgr.guest().unwrap();
    // The agent may not answer once the kernel is gone: ignore the outcome.
    let crash = async {
        if let Ok(mut p) = guest
            .spawn(spec(&["sh", "-c", "echo c > /proc/sysrq-trigger"]))
            .await
        {
            let _ = p.wait().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), crash).await;
    drop(guest);
    tokio::time::timeout(Duration::from_secs(60), vm.mgr.wait())
        .await
        .expect("VM exits after the panic")
        .unwrap();
    let status = vm.mgr.exit_status().unwrap();
    let reason = status.err.expect("a panic is not a clean exit").0;
    match reason {
        uvm_vmm::ExitReason::GuestPanic { console_tail } => assert!(
            console_tail.contains("Kernel panic") && console_tail.contains("sysrq"),
            "console tail:\n{console_tail}"
        ),
        other => panic!("{other:?}"),
    }
    vm.finish().await;
}

/// Guest timers fire when due and the guest clock keeps host time. The
/// tuned kernel is told its local APIC timer's clock (`lapic_bus_hz` on its
/// command line) instead of calibrating it: a wrong value would make every
/// sleep overshoot (too slow a timer) and a wrong TSC rate would make the
/// guest clock run fast. Also checks that the kernel's patches took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_sleep_keeps_host_time() {
    let Some(vm) = VmGuard::boot(128).await else {
        return;
    };
    let started = std::time::Instant::now();
    let (out, o) = sh(
        &vm,
        "read a _ < /proc/uptime; sleep 3; read b _ < /proc/uptime; echo $a $b",
    )
    .await;
    let host = started.elapsed().as_secs_f64();
    assert_eq!(o, ExitOutcome::Code(0), "{out}");
    let up: Vec<f64> = out
        .split_whitespace()
        .map(|v| v.parse().expect("uptime"))
        .collect();
    let guest = up[1] - up[0];
    // /proc/uptime counts hundredths; 1 s of slack for a loaded host.
    assert!(
        (2.98..4.0).contains(&guest),
        "`sleep 3` took {guest:.2} s on the guest's clock"
    );
    assert!(
        host >= guest - 0.02,
        "the guest clock ran ahead: {guest:.2} s in the guest, {host:.2} s on the host"
    );
    // The tuned kernel took the word: an unpatched one hands unknown words
    // to /init's environment and says so in its log.
    let (env, _) = sh(&vm, "tr '\\0' '\\n' < /proc/1/environ").await;
    assert!(!env.contains("lapic_bus_hz"), "PID 1 got the word: {env}");
    let (log, _) = sh(&vm, "dmesg").await;
    assert!(log.contains("lapic_bus_hz=1000000000"), "{log}");
    assert!(!log.contains("Unknown kernel command line"), "{log}");
    // And the virtio-serial receive-buffer limit (`virtio-console-rx-buffers.patch`).
    let (n, _) = sh(&vm, "cat /sys/module/virtio_console/parameters/rx_buffers").await;
    assert_eq!(n.trim(), "16");
    vm.finish().await;
}
