//! `uvm-gcs`: PID 1 of a uvm Utility VM, or (`--serve-unix PATH`) a
//! development server on a unix socket.

use std::time::Duration;

use uvm_gcs::config::{Config, Platform};
use uvm_gcs::logging::{self, LogSink};
use uvm_gcs::reaper::Reaper;
use uvm_gcs::service::{Agent, Role};
use uvm_gcs::{init, ports, server};

const USAGE: &str = "usage: uvm-gcs            (as PID 1 inside a UVM)\n       uvm-gcs --serve-unix SOCKET\n       uvm-gcs --version";

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let bt = std::backtrace::Backtrace::force_capture();
        tracing::error!(thread = %thread, backtrace = %bt, "panic: {info}");
    }));
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gcs-worker")
        .enable_all()
        .build()
}

/// The PID 1 runtime: on a one-vCPU guest a current-thread runtime (worker
/// threads add no parallelism there, only thread start-up and cross-thread
/// wake-ups: agent start to first `Negotiate` answered 72 -> 63 ms under
/// TCG, PERF.md "Boot, session 2"); otherwise the multi-thread one.
fn init_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if uvm_gcs::stats::online_cpus() <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        runtime()
    }
}

fn main() {
    // The container zygote: a fresh, single-threaded process that must not
    // start a runtime or do anything PID 1 does.
    if std::env::args_os().nth(1).as_deref()
        == Some(uvm_gcs::container::zygote::ZYGOTE_ARG.as_ref())
    {
        uvm_gcs::container::zygote::main();
    }
    // Guest uptime when the kernel handed over to us (boot profiling).
    let main_uptime_us = uvm_gcs::stats::uptime_ns() / 1_000;
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        // Kernel-provided arguments (if any) are not ours to interpret.
        run_init(main_uptime_us);
    }
    match args.get(1).map(String::as_str) {
        Some("--serve-unix") if args.len() == 3 => run_dev(&args[2]),
        Some("--version") => println!("uvm-gcs {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Development mode: an ordinary process serving a unix socket. It becomes a
/// child subreaper, so orphans of its processes come back to its reaper as
/// they would to PID 1.
fn run_dev(socket: &str) {
    let level = std::env::var("UVM_GCS_LOG").unwrap_or_else(|_| "info".into());
    let lvl = level.parse().unwrap_or(tracing::Level::INFO);
    let _sink = logging::init(&level, lvl);
    install_panic_hook();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process's reaping behaviour.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper");
    }
    let rt = runtime().unwrap_or_else(|e| {
        eprintln!("uvm-gcs: cannot start the runtime: {e}");
        std::process::exit(1);
    });
    let result = rt.block_on(async {
        let reaper = Reaper::new();
        tokio::spawn(reaper.clone().run());
        server::serve_unix(Agent::new(reaper, Role::Process), socket.as_ref()).await
    });
    if let Err(e) = result {
        eprintln!("uvm-gcs: {e}");
        std::process::exit(1);
    }
}

/// PID 1: never returns; a failed step is logged and the agent carries on.
fn run_init(main_uptime_us: u64) -> ! {
    std::env::set_var("PATH", init::DEFAULT_PATH);
    init::mount_proc();
    let root = uvm_gcs::newroot::leave_initramfs();
    let cfg = Config::from_proc();
    let sink = logging::init(&cfg.log_level, tracing::Level::WARN);
    install_panic_hook();
    log_root(&root);
    init::mount_filesystems();
    // Logged once the first GCS response is out (see `boot_marks`).
    let started = Started {
        main_uptime_us,
        uptime_ms: uvm_gcs::stats::uptime_ns() / 1_000_000,
    };
    if let Some(id) = &cfg.id {
        init::set_hostname(id);
    }
    let reaper = Reaper::new();
    let mut first = true;
    loop {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match init_runtime() {
                Ok(rt) => rt.block_on(init_main(&cfg, &sink, reaper.clone(), first, started)),
                Err(e) => tracing::error!(error = %e, "cannot start the runtime"),
            }));
        if result.is_err() {
            tracing::error!("agent main loop panicked; restarting it");
        }
        first = false;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Logs how PID 1 left the initramfs (see `uvm_gcs::newroot`).
fn log_root(root: &uvm_gcs::newroot::Outcome) {
    use uvm_gcs::newroot::Outcome;
    match root {
        Outcome::Moved { took, copy, bytes } => tracing::info!(
            took_us = took.as_micros() as u64,
            copy_us = copy.as_micros() as u64,
            bytes,
            "left the initramfs for a tmpfs root"
        ),
        Outcome::NotInitramfs => tracing::debug!("the root is not the initramfs; kept"),
        Outcome::Failed(why) => tracing::error!(
            error = %why,
            "cannot leave the initramfs; containers cannot pivot_root"
        ),
    }
}

/// Guest uptimes at the agent's start, for the "starting" log line.
#[derive(Debug, Clone, Copy)]
struct Started {
    main_uptime_us: u64,
    uptime_ms: u64,
}

async fn init_main(
    cfg: &Config,
    sink: &std::sync::Arc<LogSink>,
    reaper: Reaper,
    first: bool,
    started: Started,
) {
    tokio::spawn(reaper.clone().run());
    if first {
        // Modules (stock kernels) first: the ports only appear once virtio
        // is loaded. Then serve the GCS as soon as its port exists; the log
        // port and entropy are set up once the first response is out (early
        // log lines stay queued until the log port opens).
        let n = init::load_modules();
        let setup = tokio::spawn(setup_log_and_entropy(cfg.clone(), started, sink.clone(), n));
        let gcs = [cfg.gcs_port.as_str()];
        let missing = ports::wait_for(&gcs, Duration::from_secs(5)).await;
        if !missing.is_empty() {
            tracing::warn!(modules = n, missing = ?missing, "GCS port missing after waiting");
        }
        drop(setup);
    }
    let agent = Agent::new(reaper, Role::Init);
    server::serve_port(agent, &cfg.gcs_port).await
}

/// Opens the log port and (LCOW) reads and credits the host's entropy, each
/// bounded by 5 s; runs beside the GCS server, starting once the first GCS
/// response (the host's `Negotiate`) has been written or after 2 s: on a
/// one-vCPU guest it would otherwise compete with that first answer.
async fn setup_log_and_entropy(
    cfg: Config,
    started: Started,
    sink: std::sync::Arc<LogSink>,
    modules: usize,
) {
    server::first_response_flushed(Duration::from_secs(2)).await;
    use uvm_gcs::boot_marks::{uptime_us, Mark};
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = ?cfg,
        main_uptime_us = started.main_uptime_us,
        uptime_ms = started.uptime_ms,
        serving_uptime_us = uptime_us(Mark::Serving),
        negotiated_uptime_us = uptime_us(Mark::Negotiated),
        "uvm-gcs starting as PID 1"
    );
    let lcow = cfg.platform == Platform::Lcow;
    let mut wanted = vec![uvm_proto::ports::LOG];
    if lcow {
        wanted.push(uvm_proto::ports::ENTROPY);
    }
    let missing = ports::wait_for(&wanted, Duration::from_secs(5)).await;
    if !missing.is_empty() {
        tracing::warn!(modules, missing = ?missing, "virtio ports missing after waiting");
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .open(ports::find(uvm_proto::ports::LOG).unwrap_or_default())
    {
        Ok(port) => sink.attach(port),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the log port; logging to the console only")
        }
    }
    if lcow {
        let n = uvm_proto::ports::ENTROPY_BYTES;
        match ports::receive_entropy(uvm_proto::ports::ENTROPY, n, Duration::from_secs(5)).await {
            Ok(port) => {
                tracing::info!(bytes = n, "entropy credited");
                tokio::spawn(ports::serve_reseeds(port, n));
            }
            Err(e) => tracing::warn!(error = %e, "no entropy from the host"),
        }
    }
    tracing::info!(
        uptime_ms = uvm_gcs::stats::uptime_ns() / 1_000_000,
        dropped_log_lines = sink.dropped(),
        "agent ready"
    );
}
