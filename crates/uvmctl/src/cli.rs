//! Command-line syntax of `uvmctl`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run commands in Utility VMs: lightweight VMs booting a small Linux kernel
/// with the uvm agent as PID 1.
#[derive(Debug, Parser)]
#[command(name = "uvmctl", version, about, propagate_version = true)]
pub struct Cli {
    /// More output: -v shows guest logs and lifecycle events, -vv debug logs.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a UVM, run CMD in it with stdio attached, terminate it, exit with CMD's code.
    Run(Box<RunArgs>),
    /// Print a ready-to-run VM document (JSON) for the default image.
    Doc(DocArgs),
    /// Build or show the guest kernel and initramfs.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Measure boot, exec, throughput, terminate, memory and density against baselines.
    Bench(BenchArgs),
    /// Snapshots: save a booted UVM so later ones start without booting.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `uvmctl snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Boot a UVM, wait until it runs, snapshot it into DIR (made 0700), terminate it.
    Create {
        /// VM document (JSON) to boot instead of the default one.
        #[arg(long, value_name = "FILE")]
        doc: Option<PathBuf>,
        /// Guest memory in MiB.
        #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
        memory: Option<u64>,
        /// Virtual CPUs.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=255))]
        cpus: Option<u32>,
        /// Guest kernel: tuned, stock or a path.
        #[arg(long, value_name = "tuned|stock|PATH", default_value = "tuned")]
        kernel: KernelChoice,
        /// The snapshot dir (must not exist, or be empty).
        dir: PathBuf,
    },
    /// Show what a snapshot holds and whether this host can restore it.
    Info {
        /// The snapshot dir.
        dir: PathBuf,
    },
}

/// Which guest kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// The small kernel built from `guest/kernel/` (PVH, microvm).
    Tuned,
    /// The distribution's kernel (`linux-image-*-cloud-amd64`, q35).
    Stock,
    /// A kernel file of your own.
    Path(PathBuf),
}

impl std::str::FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tuned" => Ok(KernelChoice::Tuned),
            "stock" => Ok(KernelChoice::Stock),
            "" => Err("empty kernel: use tuned, stock or a path".into()),
            p => Ok(KernelChoice::Path(PathBuf::from(p))),
        }
    }
}

/// `uvmctl run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("container").args(["image", "rootfs"]).multiple(false))]
pub struct RunArgs {
    /// VM document (JSON, HCS v2 schema) to boot instead of the default one.
    #[arg(long, value_name = "FILE")]
    pub doc: Option<PathBuf>,
    /// Guest memory in MiB (64..=1048576).
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub memory: Option<u64>,
    /// Virtual CPUs (1..=255).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: Option<u32>,
    /// Guest kernel: tuned, stock or a path.
    #[arg(long, value_name = "tuned|stock|PATH", default_value = "tuned")]
    pub kernel: KernelChoice,
    /// Keep stdin open and forward it to CMD.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give CMD a terminal (raw mode, window size forwarded).
    #[arg(short, long)]
    pub tty: bool,
    /// Print the VM's statistics and lifecycle timings after CMD ends.
    #[arg(long)]
    pub stats: bool,
    /// With --stats: print them as JSON on stderr instead of a table.
    #[arg(long, requires = "stats")]
    pub json: bool,
    /// Kill CMD and the VM after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Environment variable for CMD (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of CMD inside the guest (or the container;
    /// default "/", or the image's WorkingDir).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run CMD as a container from this OCI image archive (an OCI image
    /// layout tar or a `docker save` tar); without CMD, the image's
    /// entrypoint and cmd. Layers are unpacked once, cached by digest.
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "rootfs")]
    pub image: Option<PathBuf>,
    /// Run CMD as a container whose root is this host directory (shared
    /// read-write).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Container user: UID[:GID] or a name of the image's /etc/passwd
    /// (default: the image's User, else 0).
    #[arg(short, long, value_name = "UID[:GID]", requires = "container")]
    pub user: Option<String>,
    /// Container memory limit (cgroup memory.max, swap included): bytes or
    /// with a k/m/g suffix.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "container")]
    pub memory_limit: Option<u64>,
    /// Container CPU limit in CPUs (cgroup cpu.max), e.g. 0.5.
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus, requires = "container")]
    pub cpus_limit: Option<f64>,
    /// Container process limit (cgroup pids.max).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "container")]
    pub pids_limit: Option<u32>,
    /// VM id (default: uvmctl-<random>).
    #[arg(long)]
    pub id: Option<String>,
    /// Start from this snapshot (`uvmctl snapshot create`) instead of
    /// booting; the VM gets its own id, hostname, entropy and clock.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["doc", "memory", "cpus"])]
    pub from_snapshot: Option<PathBuf>,
    /// Disk image hot-added once the VM runs and mounted at GUEST_DIR
    /// (default /mnt/disk<N>); `:ro` attaches and mounts it read-only. Its
    /// file system is read from its superblock. Repeatable.
    #[arg(long = "disk", value_name = "PATH[:GUEST_DIR][:ro]", value_parser = crate::devices::parse_disk)]
    pub disks: Vec<crate::devices::DiskArg>,
    /// Host directory (or file) shown at GUEST_DIR once the VM runs; `:ro`
    /// makes it read-only on the host side. Repeatable.
    #[arg(long = "share", value_name = "HOST:GUEST_DIR[:ro]", value_parser = crate::devices::parse_share)]
    pub shares: Vec<crate::devices::ShareArg>,
    /// The command and its arguments. With none and a terminal: an interactive shell.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `uvmctl doc`.
#[derive(Debug, Args)]
pub struct DocArgs {
    /// Guest kernel: tuned, stock or a path.
    #[arg(long, default_value = "tuned")]
    pub kernel: KernelChoice,
    /// Guest memory in MiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub memory: Option<u64>,
    /// Virtual CPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: Option<u32>,
}

/// `uvmctl image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) the kernel and initramfs.
    Build {
        /// Which kernel(s) to prepare.
        #[arg(long, value_enum, default_value = "tuned")]
        kernel: ImageKernel,
        /// Also make (or keep, if still valid) the default snapshot of the
        /// tuned image, for `uvmctl run --from-snapshot`.
        #[arg(long)]
        snapshot: bool,
    },
    /// Show where the image parts are and whether they are built.
    Info,
    /// Write an OCI image archive (OCI layout tar) of Debian's
    /// busybox-static, for `uvmctl run --image` when no registry is near.
    OciBusybox {
        /// Where to write it.
        out: PathBuf,
        /// The static busybox to pack.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

/// Kernels `image build` can prepare.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImageKernel {
    /// The tuned kernel.
    Tuned,
    /// The stock kernel.
    Stock,
    /// Both.
    All,
}

/// `uvmctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run (fewer iterations, tuned kernel only): under 10 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run only these sections (comma-separated; default: all).
    #[arg(long, value_name = "SECTION[,SECTION]", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(uvm_bench::SECTIONS))]
    pub only: Vec<String>,
}

/// A byte size: digits with an optional k, m or g (binary) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512m, 1g, 1048576)"))?;
    n.checked_mul(1 << shift)
        .filter(|b| *b >= 1 << 20)
        .ok_or_else(|| format!("{s:?}: a size from 1m up is needed"))
}

/// A CPU count above 0, e.g. `0.5` or `2`.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if (0.01..=1024.0).contains(&c) => Ok(c),
        _ => Err(format!("{s:?} is not a CPU count (0.01 to 1024, e.g. 0.5)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("uvmctl").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_command_after_double_dash() {
        let cli = parse(&["run", "--memory", "256", "--", "ls", "-l"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.cmd, vec!["ls", "-l"]);
        assert_eq!(r.memory, Some(256));
        assert_eq!(r.kernel, KernelChoice::Tuned);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["run", "--memory", "0", "--", "true"][..],
            &["run", "--memory", "lots", "--", "true"],
            &["run", "--cpus", "0", "--", "true"],
            &["run", "--timeout", "0s", "--", "true"],
            &["run", "--json", "--", "true"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn from_snapshot_excludes_boot_settings() {
        let cli = parse(&["run", "--from-snapshot", "/s", "--", "true"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.from_snapshot, Some(PathBuf::from("/s")));
        assert!(parse(&[
            "run",
            "--from-snapshot",
            "/s",
            "--memory",
            "256",
            "--",
            "true"
        ])
        .is_err());
        assert!(parse(&["snapshot", "create", "/s"]).is_ok());
        assert!(parse(&["snapshot", "create"]).is_err());
    }

    #[test]
    fn kernel_choice_parses_paths() {
        assert_eq!(
            "stock".parse::<KernelChoice>().unwrap(),
            KernelChoice::Stock
        );
        assert_eq!(
            "/boot/vmlinuz".parse::<KernelChoice>().unwrap(),
            KernelChoice::Path("/boot/vmlinuz".into())
        );
    }
}
