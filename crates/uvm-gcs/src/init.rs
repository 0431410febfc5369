//! PID 1 duties: file systems, console fds, kernel modules, power off.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Default `PATH` for the agent and its processes.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// File listing kernel modules to load, one guest path per line, deps first.
pub const MODULE_LOAD_ORDER: &str = "/lib/modules/uvm-load-order";

/// Makes sure fds 0, 1 and 2 are open (the kernel leaves them closed when the
/// initramfs has no `/dev/console`), so pipes never land on them.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console");
        let dev = dev.or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
        });
        if let Ok(file) = dev {
            // SAFETY: dup2 onto a closed standard descriptor; `file` stays valid for the call.
            unsafe { libc::dup2(file.as_raw_fd(), fd) };
        }
    }
}

fn mount_one(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => tracing::debug!(target, fstype, "mounted"),
        Err(Errno::EBUSY) => tracing::debug!(target, fstype, "already mounted"),
        Err(e) => tracing::warn!(target, fstype, error = %e, "mount failed"),
    }
}

/// Mounts `/proc` (nosuid, nodev, noexec) unless it is mounted already:
/// PID 1 needs it first of all, for its configuration.
pub fn mount_proc() {
    if std::path::Path::new("/proc/self").exists() {
        return;
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_one("proc", "/proc", "proc", nosuid, None);
}

/// Mounts the file systems a UVM needs. Failures are logged, never fatal.
pub fn mount_filesystems() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_proc();
    mount_one("sysfs", "/sys", "sysfs", nosuid, None);
    mount_one(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    ensure_std_fds();
    mount_one(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    mount_one(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mount_one(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mount_one(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mount_one("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
}

/// Sets the hostname (truncated to the kernel's 64-byte limit).
pub fn set_hostname(name: &str) {
    let mut name = name.to_owned();
    while name.len() > 64 {
        name.pop();
    }
    match nix::unistd::sethostname(&name) {
        Ok(()) => tracing::debug!(hostname = %name, "hostname set"),
        Err(e) => tracing::warn!(hostname = %name, error = %e, "sethostname failed"),
    }
}

/// Steps `CLOCK_REALTIME` to `unix_time_ns`; returns the step (new minus
/// old), nanoseconds.
pub fn step_clock(unix_time_ns: u64) -> nix::Result<i64> {
    use nix::time::{clock_gettime, clock_settime, ClockId};
    let before = clock_gettime(ClockId::CLOCK_REALTIME)?;
    let before_ns = before.tv_sec() as i128 * 1_000_000_000 + before.tv_nsec() as i128;
    let ts = nix::sys::time::TimeSpec::new(
        (unix_time_ns / 1_000_000_000) as libc::time_t,
        (unix_time_ns % 1_000_000_000) as libc::c_long,
    );
    clock_settime(ClockId::CLOCK_REALTIME, ts)?;
    Ok((unix_time_ns as i128 - before_ns) as i64)
}

fn finit_module(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = CString::default();
    // MODULE_INIT_COMPRESSED_FILE lets the kernel decompress `.ko.xz`/`.ko.zst`.
    let flags = if path.ends_with(".ko") { 0 } else { 4 };
    // SAFETY: finit_module takes an open fd, a NUL-terminated parameter string
    // that outlives the call, and flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Loads every module listed in [`MODULE_LOAD_ORDER`], in order; already
/// loaded ones are fine. A module that fails for a missing symbol (`ENOENT`:
/// listed before one of its dependencies) is retried after the others, until
/// a pass makes no progress. Returns how many were listed.
pub fn load_modules() -> usize {
    let Ok(list) = std::fs::read_to_string(MODULE_LOAD_ORDER) else {
        return 0;
    };
    let paths: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut pending = paths.clone();
    loop {
        let mut retry = Vec::new();
        for path in &pending {
            let started = std::time::Instant::now();
            match finit_module(path) {
                Ok(()) => {
                    tracing::debug!(module = %path, elapsed_us = started.elapsed().as_micros() as u64, "module loaded")
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    tracing::debug!(module = %path, "module already loaded")
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOENT)
                        && std::path::Path::new(path).exists() =>
                {
                    retry.push(*path)
                }
                Err(e) => tracing::warn!(module = %path, error = %e, "module load failed"),
            }
        }
        if retry.is_empty() || retry.len() == pending.len() {
            for path in &retry {
                tracing::warn!(module = %path, "module load failed: unknown symbols (missing dependency?)");
            }
            return paths.len();
        }
        tracing::info!(modules = ?retry, "retrying modules listed before their dependencies");
        pending = retry;
    }
}

/// Syncs, stops every other process (TERM, short grace, KILL) and powers off
/// or reboots. Only returns if the reboot call fails.
pub fn power_off(reboot: bool) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    nix::unistd::sync();
    // kill(-1) signals every process except PID 1 and the caller.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline && other_processes_exist() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    let mode = if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    tracing::info!(reboot, "powering off");
    let Err(e) = nix::sys::reboot::reboot(mode);
    tracing::error!(error = %e, "reboot(2) failed");
}

fn other_processes_exist() -> bool {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    return false;
                };
                // Kernel threads have an empty cmdline.
                pid != me
                    && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
            })
        })
        .unwrap_or(false)
}
