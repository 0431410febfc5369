//! Our side of each measurement: the `uvm` controller with the production image.

use crate::stats::ms;
use crate::BenchError;
use std::path::Path;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use uvm::{Controller, CreateOptions, ExecRequest, Manager, StartOptions};
use uvm_image::Image;

/// Upper bound of one controller call.
pub const CALL: Duration = Duration::from_secs(120);

/// A VM document for `image` with `memory_mb` and `cpus`.
pub fn document(image: &Image, memory_mb: u32, cpus: u32) -> uvm_schema::ComputeSystem {
    uvm_schema::LcowDocumentBuilder::new(&image.kernel, &image.initrd)
        .memory_mb(u64::from(memory_mb))
        .processors(cpus)
        .cmdline(image.cmdline.clone())
        .build()
}

/// Runs a controller call with the [`CALL`] bound.
pub async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, uvm::Error>>,
) -> Result<T, BenchError> {
    match timeout(CALL, f).await {
        Ok(r) => r.map_err(|source| BenchError::Controller { what, source }),
        Err(_) => Err(BenchError::Timeout {
            what,
            secs: CALL.as_secs(),
        }),
    }
}

/// A Running UVM of ours. Dropping the [`Manager`] terminates its VM; call
/// [`OurVm::terminate`] to do it (and time it) explicitly.
pub struct OurVm {
    /// The controller.
    pub mgr: Manager,
    /// create_vm duration.
    pub create: Duration,
    /// start_vm duration (to Running).
    pub start: Duration,
}

impl OurVm {
    /// create_vm + start_vm, timed separately.
    pub async fn boot(
        id: &str,
        image: &Image,
        memory_mb: u32,
        cpus: u32,
    ) -> Result<OurVm, BenchError> {
        Self::boot_with(Manager::new(), id, image, memory_mb, cpus).await
    }

    /// [`OurVm::boot`] on a given (e.g. differently configured) Manager.
    pub async fn boot_with(
        mgr: Manager,
        id: &str,
        image: &Image,
        memory_mb: u32,
        cpus: u32,
    ) -> Result<OurVm, BenchError> {
        let doc = document(image, memory_mb, cpus);
        let t0 = Instant::now();
        bounded(
            "create_vm",
            mgr.create_vm(CreateOptions {
                id: id.into(),
                document: doc,
            }),
        )
        .await?;
        let create = t0.elapsed();
        let t1 = Instant::now();
        bounded("start_vm", mgr.start_vm(StartOptions::default())).await?;
        Ok(OurVm {
            mgr,
            create,
            start: t1.elapsed(),
        })
    }

    /// [`OurVm::boot`] with owned arguments (for `tokio::spawn`).
    pub async fn boot_owned(
        id: String,
        image: Image,
        memory_mb: u32,
        cpus: u32,
    ) -> Result<OurVm, BenchError> {
        Self::boot(&id, &image, memory_mb, cpus).await
    }

    /// Runs `args` through `exec_into_host`, stdout to `stdout` if given; returns (exit code, elapsed).
    pub async fn exec(
        &self,
        args: &[&str],
        stdout: Option<&Path>,
    ) -> Result<(i32, Duration), BenchError> {
        self.exec_io(args, None, stdout).await
    }

    /// [`OurVm::exec`], with the process's stdin read from `stdin` if given.
    pub async fn exec_io(
        &self,
        args: &[&str],
        stdin: Option<&Path>,
        stdout: Option<&Path>,
    ) -> Result<(i32, Duration), BenchError> {
        let req = ExecRequest {
            args: args.iter().map(|s| s.to_string()).collect(),
            workdir: String::new(),
            terminal: false,
            stdin: stdin.map(Path::to_path_buf),
            stdout: stdout.map(Path::to_path_buf),
            stderr: None,
            container: None,
        };
        let t = Instant::now();
        let code = bounded("exec_into_host", self.mgr.exec_into_host(req)).await?;
        Ok((code, t.elapsed()))
    }

    /// One `stats()` call, timed (ms).
    pub async fn stats_ms(&self) -> Result<f64, BenchError> {
        let t = Instant::now();
        bounded("stats", self.mgr.stats()).await?;
        Ok(ms(t.elapsed()))
    }

    /// terminate_vm, timed.
    pub async fn terminate(self) -> Result<Duration, BenchError> {
        let t = Instant::now();
        bounded("terminate_vm", self.mgr.terminate_vm()).await?;
        Ok(t.elapsed())
    }
}

/// Exec of `true` with stdout discarded, checked for exit code 0; ms.
pub async fn exec_true_ms(vm: &OurVm) -> Result<f64, BenchError> {
    let (code, d) = vm.exec(&["/bin/true"], None).await?;
    if code != 0 {
        return Err(BenchError::Protocol(format!(
            "`true` exited {code} in our guest"
        )));
    }
    Ok(ms(d))
}

/// Where [`install_writer`] puts the stdout benchmark's writer in the guest.
pub const GUEST_WRITER: &str = "/tmp/uvm-bench-writer";

/// Copies `writer` (a static host binary: the raw baseline's `rawinit`, whose
/// `write N` mode writes its static 64 KiB buffer to stdout) to
/// [`GUEST_WRITER`] through an exec's stdin.
pub async fn install_writer(vm: &OurVm, writer: &Path) -> Result<(), BenchError> {
    let script = format!("cat >{GUEST_WRITER} && chmod 755 {GUEST_WRITER}");
    let (code, _) = vm
        .exec_io(&["/bin/sh", "-c", &script], Some(writer), None)
        .await?;
    if code != 0 {
        return Err(BenchError::Protocol(format!(
            "copying the writer into the guest: exit {code}"
        )));
    }
    Ok(())
}

/// [`GUEST_WRITER`] writing `bytes` from a static buffer to a host file (the
/// raw baseline's own writer, so only the channel differs); MiB/s of the
/// whole exec after checking the size. Needs [`install_writer`] first.
pub async fn stdout_static_mib_s(vm: &OurVm, bytes: usize, dir: &Path) -> Result<f64, BenchError> {
    let n = bytes.to_string();
    stdout_run(vm, &[GUEST_WRITER, "write", &n], bytes as u64, dir).await
}

/// `dd if=/dev/zero bs=64k` (the raw baseline's chunk size) to a host file;
/// returns MiB/s of the whole exec after checking the size. (busybox `head -c`
/// is itself limited to ~30 MiB/s under TCG, so it would measure the producer.)
pub async fn stdout_mib_s(vm: &OurVm, bytes: usize, dir: &Path) -> Result<f64, BenchError> {
    let chunks = bytes.div_ceil(64 << 10);
    let count = format!("count={chunks}");
    let args = ["dd", "if=/dev/zero", "bs=65536", &count];
    stdout_run(vm, &args, (chunks * (64 << 10)) as u64, dir).await
}

/// Runs `args` with stdout to a host file, checks it got `want` bytes; MiB/s.
async fn stdout_run(vm: &OurVm, args: &[&str], want: u64, dir: &Path) -> Result<f64, BenchError> {
    let out = dir.join("stdout.bin");
    let (code, d) = vm.exec(args, Some(&out)).await?;
    let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    if code != 0 || got != want {
        return Err(BenchError::Protocol(format!(
            "stdout run `{}`: exit {code}, {got} of {want} bytes",
            args.join(" ")
        )));
    }
    Ok(got as f64 / (1 << 20) as f64 / d.as_secs_f64())
}

/// The in-guest fork+exec+wait floor: a busybox sh loop of `iters` `/bin/true`
/// runs timed with `/proc/uptime` (10 ms resolution) before and after; ms per run.
pub fn floor_script(iters: usize) -> String {
    format!("read a x </proc/uptime; for i in $(seq {iters}); do /bin/true; done; read b x </proc/uptime; echo $a $b")
}

/// Parses the output of [`floor_script`] into ms per iteration.
pub fn parse_floor(out: &str, iters: usize) -> Option<f64> {
    let mut it = out.split_whitespace().map(str::parse::<f64>);
    let (a, b) = (it.next()?.ok()?, it.next()?.ok()?);
    Some((b - a) * 1000.0 / iters as f64)
}

/// Runs [`floor_script`] through our exec.
pub async fn floor_ms(vm: &OurVm, iters: usize, dir: &Path) -> Result<f64, BenchError> {
    let out = dir.join("floor.txt");
    let (code, _) = vm
        .exec(&["/bin/sh", "-c", &floor_script(iters)], Some(&out))
        .await?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    parse_floor(&text, iters)
        .filter(|_| code == 0)
        .ok_or_else(|| BenchError::Protocol(format!("floor output {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_parse() {
        let f = parse_floor("10.50 10.70\n", 100).unwrap();
        assert!((f - 2.0).abs() < 1e-9, "{f}");
        assert_eq!(parse_floor("garbage", 100), None);
        assert!(floor_script(5).contains("seq 5"));
    }
}
