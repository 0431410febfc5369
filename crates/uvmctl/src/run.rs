//! `uvmctl run`: boot a UVM, run one command in it with stdio attached, tear it down.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use uvm::{Controller, Manager, StartOptions, VmOrigin};
use uvm_guest::{GuestError, Process, ProcessExit, ProcessSpec};
use uvm_image::KernelKind;
use uvm_schema::ComputeSystem;

use crate::cli::RunArgs;
use crate::exit;
use crate::image::{default_document, ensure_image};
use crate::stats_table::{print_report, Timings};
use crate::tty::{host_window_size, RawMode};

/// Runs `uvmctl run` and returns the process exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let container_mode = args.image.is_some() || args.rootfs.is_some();
    let interactive_shell = args.cmd.is_empty() && !container_mode;
    if interactive_shell && !std::io::stdin().is_terminal() {
        bail!("no command given (usage: uvmctl run [OPTIONS] -- CMD [ARGS...])");
    }
    let tty = args.tty || interactive_shell;
    let interactive = args.interactive || interactive_shell;
    let cmd = if interactive_shell {
        vec!["/bin/sh".to_owned()]
    } else {
        args.cmd.clone()
    };
    for e in &args.env {
        if !e.contains('=') {
            bail!("--env {e:?}: expected KEY=VALUE");
        }
    }

    // The image is unpacked (or found cached) before any VM exists, so a
    // bad archive leaves nothing to clean up.
    let prepared = if container_mode {
        Some(crate::container::prepare(&args).await?)
    } else {
        None
    };
    let origin = match &args.from_snapshot {
        Some(dir) => VmOrigin::Snapshot(dir.clone()),
        None => VmOrigin::Document(Box::new(
            load_document(args.doc.as_deref(), args.memory, args.cpus, &args.kernel).await?,
        )),
    };
    let id = args.id.clone().unwrap_or_else(|| {
        format!(
            "uvmctl-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    let manager = Arc::new(Manager::new());
    let mut timings = Timings::default();

    let t = Instant::now();
    let what = match &origin {
        VmOrigin::Document(_) => "creating the VM",
        VmOrigin::Snapshot(_) => "creating the VM from the snapshot",
    };
    manager
        .create_vm_from(id.clone(), origin)
        .await
        .context(what)?;
    timings.create = Some(t.elapsed());

    // From here on the VM exists: every path goes through terminate.
    let outcome = async {
        let t = Instant::now();
        interruptible(manager.start_vm(StartOptions::default()), "starting the VM").await?;
        timings.start = Some(t.elapsed());
        crate::devices::attach(&manager, &args.disks, &args.shares).await?;
        let window = if tty {
            host_window_size().map(|(r, c)| (r as u16, c as u16))
        } else {
            None
        };
        let t = Instant::now();
        let started = match &prepared {
            Some(p) => start_container(&manager, p, &args, &id, tty, window).await?,
            None => {
                let guest = manager.guest().context("the VM has no guest connection")?;
                let spec = ProcessSpec {
                    args: cmd.clone(),
                    env: args.env.clone(),
                    workdir: args.workdir.clone().unwrap_or_else(|| "/".into()),
                    terminal: tty,
                    window,
                    container: None,
                };
                guest.spawn(spec).await
            }
        };
        let process = match started {
            Ok(p) => p,
            Err(GuestError::VmExited { reason }) => return Err(stopped_under_command(reason)),
            Err(e) => return Ok(RunEnd::Refused(e)),
        };
        let end = attach(process, interactive, tty, args.timeout, &manager).await?;
        timings.exec = Some(t.elapsed());
        if args.stats {
            match manager.stats().await {
                Ok(s) => timings.stats = Some(s),
                Err(e) => eprintln!("uvmctl: stats: {e}"),
            }
        }
        Ok::<_, anyhow::Error>(end)
    }
    .await;

    // Once CMD ran, unmounting flushes what it wrote to the host's images
    // (when attaching failed, CMD never ran and terminate is enough).
    if outcome.is_ok()
        && !(args.disks.is_empty() && args.shares.is_empty())
        && Controller::state(manager.as_ref()) == uvm::State::Running
    {
        if let Err(e) = manager.detach_all().await {
            eprintln!("uvmctl: detaching disks and shares: {e}");
        }
    }
    let t = Instant::now();
    let terminated = manager.terminate_vm().await;
    timings.terminate = Some(t.elapsed());
    let end = outcome?;
    terminated.context("terminating the VM")?;
    if args.stats {
        print_report(&timings, args.json);
    }
    Ok(match end {
        RunEnd::Exited(e) => {
            if e.oom_killed {
                eprintln!(
                    "uvmctl: {}: killed: out of memory (the container's memory limit)",
                    cmd.first().map_or("the container", |c| c.as_str())
                );
            }
            e.outcome.code()
        }
        RunEnd::Refused(e) => refused_code(&cmd[0], e)?,
        RunEnd::Interrupted(sig) => exit::signaled(sig),
        RunEnd::TimedOut(d) => {
            eprintln!(
                "uvmctl: {} timed out after {}",
                cmd[0],
                humantime::format_duration(d)
            );
            exit::UVMCTL_FAILED
        }
    })
}

/// Creates and starts the container of `--image`/`--rootfs`. A refusal the
/// guest explains (command not found, ...) is the inner error; anything
/// else (a bad spec, a share that failed) is the outer one.
async fn start_container(
    manager: &Manager,
    p: &crate::container::Prepared,
    args: &RunArgs,
    id: &str,
    tty: bool,
    window: Option<(u16, u16)>,
) -> anyhow::Result<Result<Process, GuestError>> {
    let layers = match &p.rootfs {
        uvm::ContainerRootfs::Layers { layers, .. } => layers.clone(),
        uvm::ContainerRootfs::Directory { path, .. } => vec![path.clone()],
    };
    let pa = crate::container::ProcessArgs {
        cmd: &args.cmd,
        env: &args.env,
        workdir: args.workdir.as_deref(),
        user: args.user.as_deref(),
        tty,
        memory_limit: args.memory_limit,
        cpus_limit: args.cpus_limit,
        pids_limit: args.pids_limit,
        hostname: id,
    };
    let mut spec = crate::container::container_spec(p.config.as_ref(), &layers, &pa)?;
    if let (Some((rows, cols)), Some(proc_)) = (window, spec.process_mut().as_mut()) {
        let size = oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build()?;
        proc_.set_console_size(Some(size));
    }
    const CONTAINER: &str = "main";
    match manager
        .create_container(CONTAINER, &spec, p.rootfs.clone())
        .await
    {
        Ok(_) => {}
        Err(uvm::Error::VmExited { reason, .. }) => return Err(stopped_under_command(reason.0)),
        Err(e) => return Err(anyhow::Error::new(e).context("creating the container")),
    }
    Ok(match manager.start_container(CONTAINER).await {
        Ok(p) => Ok(p),
        Err(uvm::Error::Guest { source, .. }) => Err(source),
        Err(uvm::Error::VmExited { reason, .. }) => Err(GuestError::VmExited { reason: reason.0 }),
        Err(e) => return Err(anyhow::Error::new(e).context("starting the container")),
    })
}

/// How the guest command ended, as far as `run` is concerned.
enum RunEnd {
    Exited(ProcessExit),
    Refused(GuestError),
    Interrupted(i32),
    TimedOut(Duration),
}

/// Maps an exec refusal to 126/127, or an error for everything else.
fn refused_code(cmd: &str, e: GuestError) -> anyhow::Result<i32> {
    match e {
        GuestError::CommandNotFound { .. } => {
            eprintln!("uvmctl: {cmd}: command not found");
            Ok(exit::NOT_FOUND)
        }
        GuestError::NotExecutable { message } => {
            eprintln!("uvmctl: {cmd}: cannot execute: {message}");
            Ok(exit::NOT_EXECUTABLE)
        }
        GuestError::DeniedByPolicy { message } => {
            eprintln!("uvmctl: {cmd}: denied by the guest security policy: {message}");
            Ok(exit::NOT_EXECUTABLE)
        }
        other => Err(anyhow::Error::new(other).context(format!("running {cmd}"))),
    }
}

/// The VM document: `doc` (JSON) with `memory`/`cpus` applied, else the
/// default one for `kernel`.
pub(crate) async fn load_document(
    doc: Option<&std::path::Path>,
    memory: Option<u64>,
    cpus: Option<u32>,
    kernel: &crate::cli::KernelChoice,
) -> anyhow::Result<ComputeSystem> {
    if let Some(path) = doc {
        let json = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("reading VM document {}", path.display()))?;
        let mut doc = ComputeSystem::from_json(&json)
            .with_context(|| format!("VM document {}", path.display()))?;
        if let Some(vm) = doc.virtual_machine.as_mut() {
            if let Some(mb) = memory {
                vm.compute_topology.memory.size_in_mb = mb;
            }
            if let Some(n) = cpus {
                vm.compute_topology.processor.count = n;
            }
        }
        return Ok(doc);
    }
    let image = ensure_image(KernelKind::from(kernel)).await?;
    Ok(default_document(&image, memory, cpus))
}

/// Awaits `fut` unless SIGINT/SIGTERM arrives first.
async fn interruptible<T, E>(
    fut: impl std::future::Future<Output = Result<T, E>>,
    what: &'static str,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = fut => r.context(what),
        _ = int.recv() => bail!("interrupted while {what}"),
        _ = term.recv() => bail!("terminated while {what}"),
    }
}

/// Connects the host's stdio to the guest process until it exits, the VM dies,
/// the timeout passes or we are signalled.
async fn attach(
    mut process: Process,
    interactive: bool,
    tty: bool,
    timeout: Option<Duration>,
    manager: &Arc<Manager>,
) -> anyhow::Result<RunEnd> {
    // Listen for signals before any output can reach the user.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut winch = signal(SignalKind::window_change())?;
    let _raw = if tty && std::io::stdin().is_terminal() {
        RawMode::enable()?
    } else {
        None
    };
    let stdin_task = match (process.stdin.take(), interactive) {
        (Some(stdin), true) => Some(tokio::spawn(copy_then_close(tokio::io::stdin(), stdin))),
        (Some(mut stdin), false) => {
            let _ = stdin.shutdown().await;
            None
        }
        (None, _) => None,
    };
    let out = process
        .stdout
        .take()
        .map(|o| tokio::spawn(copy_out(o, tokio::io::stdout())));
    let err = process
        .stderr
        .take()
        .map(|e| tokio::spawn(copy_out(e, tokio::io::stderr())));
    let deadline = async {
        match timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            r = process.wait_exit() => break command_end(r)?,
            _ = int.recv() => break RunEnd::Interrupted(libc::SIGINT),
            _ = term.recv() => break RunEnd::Interrupted(libc::SIGTERM),
            _ = &mut deadline => break RunEnd::TimedOut(timeout.unwrap_or_default()),
            _ = winch.recv(), if tty => {
                if let Some((r, c)) = host_window_size() {
                    let _ = process.resize(r as u16, c as u16).await;
                }
            }
            _ = manager.wait() => {
                // The exec stream says how the command ended once the VM is
                // gone: its exit code if the agent reported it first, else
                // the VM's exit reason (bounded by the guest's exit grace).
                let bound = uvm::VM_EXIT_GRACE + Duration::from_secs(5);
                match tokio::time::timeout(bound, process.wait_exit()).await {
                    Ok(r) => break command_end(r)?,
                    Err(_) => match manager.exit_status().ok().and_then(|s| s.err) {
                        Some(e) => return Err(stopped_under_command(e.0)),
                        None => bail!("the VM stopped while the command ran"),
                    },
                }
            }
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    // Output that arrived before the exit status is flushed; bounded so a
    // stuck stream cannot hold us.
    for task in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(end)
}

/// How the command ended, from its exit status or the reason its stream broke.
fn command_end(r: Result<ProcessExit, GuestError>) -> anyhow::Result<RunEnd> {
    match r {
        Ok(outcome) => Ok(RunEnd::Exited(outcome)),
        Err(GuestError::VmExited { reason }) => Err(stopped_under_command(reason)),
        Err(e) => Err(anyhow::Error::new(e).context("waiting for the command")),
    }
}

/// The error for a VM that stopped under the command (125, with the
/// console tail printed after it when the guest panicked).
fn stopped_under_command(reason: uvm::ExitReason) -> anyhow::Error {
    anyhow::Error::new(reason).context("the VM stopped while the command ran")
}

async fn copy_then_close<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

async fn copy_out<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Write each chunk as it comes so interactive output is not held back.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::io::AsyncReadExt::read(&mut from, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}
