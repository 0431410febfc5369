//! `uvmctl run --image/--rootfs`: the container's root file system and its
//! OCI runtime spec from the image config and the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Spec, UserBuilder,
};
use uvm::ContainerRootfs;

use crate::cli::RunArgs;

/// A container's root and what its image says about the process.
pub struct Prepared {
    /// Layers or a directory.
    pub rootfs: ContainerRootfs,
    /// The image config (none for `--rootfs`).
    pub config: Option<ImageConfiguration>,
}

/// Scratch size of an image container: writes beyond it fail with ENOSPC.
pub const SCRATCH_BYTES: u64 = 256 << 20;

/// Where unpacked image layers are cached: `$UVM_OCI_CACHE`, else `oci/`
/// in the image cache.
pub fn layer_cache() -> uvm_image::oci::LayerCache {
    let root = std::env::var_os("UVM_OCI_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| uvm_image::cache_dir().join("oci"));
    uvm_image::oci::LayerCache::new(root)
}

/// Unpacks `--image` (cached) or takes `--rootfs`.
pub async fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    if let Some(dir) = &args.rootfs {
        let path =
            std::path::absolute(dir).with_context(|| format!("--rootfs {}", dir.display()))?;
        return Ok(Prepared {
            rootfs: ContainerRootfs::Directory {
                path,
                read_only: false,
            },
            config: None,
        });
    }
    let archive = args.image.clone().expect("--image or --rootfs");
    let unpacked = tokio::task::spawn_blocking(move || {
        uvm_image::oci::unpack_archive(&archive, &layer_cache())
    })
    .await
    .context("unpacking the image")??;
    tracing::info!(
        layers = unpacked.layers.len(),
        unpacked_now = unpacked.unpacked_now,
        "image ready"
    );
    Ok(Prepared {
        rootfs: ContainerRootfs::Layers {
            layers: unpacked.layers,
            scratch_bytes: SCRATCH_BYTES,
        },
        config: Some(unpacked.config),
    })
}

/// What the command line says about the container process.
#[derive(Debug, Default)]
pub struct ProcessArgs<'a> {
    /// CMD (empty: the image's entrypoint + cmd).
    pub cmd: &'a [String],
    /// `-e KEY=VALUE`.
    pub env: &'a [String],
    /// `-w`.
    pub workdir: Option<&'a str>,
    /// `-u`.
    pub user: Option<&'a str>,
    /// `-t`.
    pub tty: bool,
    /// `--memory-limit` in bytes.
    pub memory_limit: Option<u64>,
    /// `--cpus-limit`.
    pub cpus_limit: Option<f64>,
    /// `--pids-limit`.
    pub pids_limit: Option<u32>,
    /// The container's hostname.
    pub hostname: &'a str,
}

/// Period of the container's `cpu.max`.
const CPU_PERIOD_US: u64 = 100_000;

/// The runtime spec: uvm's default, with the image's and the command
/// line's process (the command line wins; env adds to the image's).
/// `layers` (bottom first) resolve a user name through `/etc/passwd`.
pub fn container_spec(
    config: Option<&ImageConfiguration>,
    layers: &[PathBuf],
    a: &ProcessArgs,
) -> anyhow::Result<Spec> {
    let image = config.and_then(|c| c.config().clone());
    let mut args: Vec<String> = a.cmd.to_vec();
    if args.is_empty() {
        let ep = image
            .as_ref()
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default();
        let cmd = image
            .as_ref()
            .and_then(|c| c.cmd().clone())
            .unwrap_or_default();
        args = ep.into_iter().chain(cmd).collect();
    } else if let Some(ep) = image.as_ref().and_then(|c| c.entrypoint().clone()) {
        args = ep.into_iter().chain(args).collect();
    }
    if args.is_empty() {
        bail!("no command given and the image has neither Entrypoint nor Cmd");
    }
    let mut env: Vec<String> = image
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_else(|| {
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
        });
    for e in a.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|old| old.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if a.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = a
        .workdir
        .map(str::to_string)
        .or_else(|| image.as_ref().and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        bail!("working directory {cwd:?} must be an absolute path");
    }
    let user_s = a
        .user
        .map(str::to_string)
        .or_else(|| image.as_ref().and_then(|c| c.user().clone()))
        .filter(|u| !u.is_empty());
    let (uid, gid) = match &user_s {
        Some(u) => resolve_user(u, layers)?,
        None => (0, 0),
    };
    let mut spec = uvm::default_spec();
    spec.set_hostname(Some(a.hostname.to_string()));
    let p = spec
        .process_mut()
        .as_mut()
        .expect("the default spec has a process");
    p.set_args(Some(args));
    p.set_env(Some(env));
    p.set_cwd(PathBuf::from(cwd));
    p.set_terminal(Some(a.tty));
    p.set_user(UserBuilder::default().uid(uid).gid(gid).build()?);
    let mut res = LinuxResourcesBuilder::default();
    if let Some(m) = a.memory_limit {
        let m = i64::try_from(m).context("--memory-limit is too large")?;
        res = res.memory(LinuxMemoryBuilder::default().limit(m).swap(m).build()?);
    }
    if let Some(c) = a.cpus_limit {
        let quota = (c * CPU_PERIOD_US as f64).round() as i64;
        res = res.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(n) = a.pids_limit {
        res = res.pids(LinuxPidsBuilder::default().limit(i64::from(n)).build()?);
    }
    spec.linux_mut()
        .as_mut()
        .expect("the default spec has linux")
        .set_resources(Some(res.build()?));
    Ok(spec)
}

/// `UID[:GID]`, or a user (and group) name from the image's files.
fn resolve_user(u: &str, layers: &[PathBuf]) -> anyhow::Result<(u32, u32)> {
    let (user, group) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(n) => (n, passwd_entry(layers, |f| f[2] == user).map_or(n, |f| f.1)),
        Err(_) => passwd_entry(layers, |f| f[0] == user)
            .with_context(|| format!("user {user:?} is not in the image's /etc/passwd"))?,
    };
    let gid = match group {
        None => user_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_id(layers, g)
                .with_context(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The topmost layer's copy of `etc/<name>` (a whiteout or none: None).
fn image_file(layers: &[PathBuf], name: &str) -> Option<String> {
    layers
        .iter()
        .rev()
        .map(|l| l.join("etc").join(name))
        .find(|p| p.symlink_metadata().is_ok())
        .and_then(|p| std::fs::read_to_string(p).ok())
}

fn passwd_entry(layers: &[PathBuf], pick: impl Fn(&[&str]) -> bool) -> Option<(u32, u32)> {
    image_file(layers, "passwd")?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && pick(&f)).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn group_id(layers: &[PathBuf], name: &str) -> Option<u32> {
    image_file(layers, "group")?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// `uvmctl image oci-busybox OUT`.
pub fn write_busybox(busybox: &Path, out: &Path) -> anyhow::Result<()> {
    if !busybox.exists() {
        bail!(
            "{} not found: install it with `apt-get install busybox-static`",
            busybox.display()
        );
    }
    let written = uvm_image::oci::write_busybox_archive(busybox, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: {} (manifest {})",
        out.display(),
        written.reference,
        written.manifest_digest
    );
    Ok(())
}

#[cfg(test)]
mod tests;
