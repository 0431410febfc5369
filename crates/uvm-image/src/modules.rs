//! Kernel modules for stock (distro) kernels.
//!
//! The tuned kernel has everything built in. A stock kernel (e.g. Debian's
//! `linux-image-cloud-amd64`) has virtio and friends as modules, which the
//! agent must load before it can open its channels. [`KernelModules`] names
//! the wanted modules; [`KernelModules::resolve`] finds them and their
//! dependencies in `/lib/modules/<release>/modules.dep` and orders them so
//! that every module comes after the modules it depends on.
//!
//! # Contract with the agent
//!
//! The initramfs holds each module at its usual place,
//! `/lib/modules/<release>/<path from modules.dep>`, and the file
//! [`LOAD_ORDER_FILE`] (`/lib/modules/uvm-load-order`) lists their guest
//! paths, one absolute path per line, dependencies first. The agent (and
//! `guest/rawinit`) reads that file at boot and calls `finit_module(fd, "", 0)`
//! on each path in order, treating `EEXIST` as success. The file is absent
//! when no module is needed (tuned kernel). Modules are copied as they are:
//! compressed ones (`.ko.xz`, `.ko.zst`) need `MODULE_INIT_COMPRESSED_FILE`
//! (Debian's cloud kernel ships uncompressed `.ko` files).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Guest path of the module load-order file (see the module docs).
pub const LOAD_ORDER_FILE: &str = "/lib/modules/uvm-load-order";

/// Modules an agent needs on a stock kernel: virtio transports and
/// virtio-serial ([`KernelModules::stock`] treats these as required).
pub const REQUIRED_MODULES: &[&str] = &["virtio_pci", "virtio_mmio", "virtio_console"];

/// Useful modules loaded when the kernel has them (skipped otherwise).
pub const OPTIONAL_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_rng",
    "vsock",
    "vmw_vsock_virtio_transport",
    "overlay",
    "pvpanic_mmio",
    "pvpanic_pci",
    "9pnet_virtio",
    "9p",
    // Runtime devices (DESIGN §10): the SCSI controller and its disks, the
    // balloon, the file systems disks are mounted with.
    "virtio_scsi",
    "sd_mod",
    "virtio_balloon",
    "ext4",
    "squashfs",
    "erofs",
];

/// The modules to put into an initramfs for one kernel release.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelModules {
    /// Kernel release (`uname -r` of the guest kernel).
    pub release: String,
    /// Host directory holding `modules.dep`, usually `/lib/modules/<release>`.
    pub dir: PathBuf,
    /// Modules that must be found (or be built in).
    pub required: Vec<String>,
    /// Modules taken when present, silently skipped otherwise.
    pub optional: Vec<String>,
}

/// One module to ship, with its place on the host and in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Normalized module name (`virtio_rng` for `virtio-rng.ko`).
    pub name: String,
    /// Path relative to the modules directory, as in `modules.dep`.
    pub rel_path: String,
    /// Where the file is on the host.
    pub host_path: PathBuf,
    /// Where it goes in the guest: `/lib/modules/<release>/<rel_path>`.
    pub guest_path: String,
}

impl KernelModules {
    /// Everything the agent uses: [`REQUIRED_MODULES`] and [`OPTIONAL_MODULES`]
    /// of `/lib/modules/<release>`.
    pub fn stock(release: &str) -> Self {
        Self {
            release: release.to_owned(),
            dir: Path::new("/lib/modules").join(release),
            required: REQUIRED_MODULES.iter().map(|s| s.to_string()).collect(),
            optional: OPTIONAL_MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Only what a bare virtio-serial guest needs ([`REQUIRED_MODULES`]);
    /// used by the raw boot baseline.
    pub fn minimal(release: &str) -> Self {
        Self {
            optional: Vec::new(),
            ..Self::stock(release)
        }
    }

    /// Resolves the modules and their dependencies, in load order (deps first).
    pub fn resolve(&self) -> Result<Vec<ResolvedModule>> {
        let dep_path = self.dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModulesMissing {
                release: self.release.clone(),
                path: dep_path.clone(),
            },
            _ => Error::io("read", &dep_path, e),
        })?;
        let builtin = std::fs::read_to_string(self.dir.join("modules.builtin")).unwrap_or_default();
        let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
        let deps = parse_modules_dep(&text);

        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let wanted = self
            .required
            .iter()
            .map(|n| (n, true))
            .chain(self.optional.iter().map(|n| (n, false)));
        for (name, required) in wanted {
            let name = normalize(name);
            match deps.get(&name) {
                Some((rel, _)) => visit(rel, &deps, &mut seen, &mut order),
                None if builtin.contains(&name) => {
                    tracing::debug!(module = %name, "built into the kernel");
                }
                None if required => {
                    return Err(Error::ModuleNotFound {
                        name,
                        release: self.release.clone(),
                    });
                }
                None => {
                    tracing::debug!(module = %name, release = %self.release, "optional module absent")
                }
            }
        }
        Ok(order
            .into_iter()
            .map(|rel| ResolvedModule {
                name: module_name(&rel),
                host_path: self.dir.join(&rel),
                guest_path: format!("/lib/modules/{}/{}", self.release, rel),
                rel_path: rel,
            })
            .collect())
    }
}

/// Depth-first post-order walk: dependencies are pushed before dependents.
fn visit(
    rel: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(rel.to_owned()) {
        return;
    }
    if let Some((_, ds)) = deps.get(&module_name(rel)) {
        for d in ds {
            visit(d, deps, seen, order);
        }
    }
    order.push(rel.to_owned());
}

/// name -> (relative path, direct dependency paths).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        let ds = rest.split_whitespace().map(str::to_owned).collect();
        map.insert(module_name(path), (path.to_owned(), ds));
    }
    map
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko.xz` -> `virtio_rng`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    fn fake(required: &[&str], optional: &[&str]) -> (tempfile::TempDir, KernelModules) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko\n",
        )
        .unwrap();
        let m = KernelModules {
            release: "6.1.0-test".into(),
            dir: dir.path().to_owned(),
            required: required.iter().map(|s| s.to_string()).collect(),
            optional: optional.iter().map(|s| s.to_string()).collect(),
        };
        (dir, m)
    }

    fn pos(order: &[ResolvedModule], name: &str) -> usize {
        order
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn dependencies_come_first() {
        let (_d, m) = fake(
            &["vmw_vsock_virtio_transport", "virtio_console", "virtio_pci"],
            &["virtio-rng", "9p"],
        );
        let order = m.resolve().unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "virtio_ring",
                "virtio",
                "vmw_vsock_virtio_transport",
                "virtio_console",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_rng",
            ]
        );
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio"));
        let rng = &order[pos(&order, "virtio_rng")];
        assert_eq!(
            rng.guest_path,
            "/lib/modules/6.1.0-test/kernel/drivers/char/hw_random/virtio-rng.ko.xz"
        );
        assert_eq!(
            rng.host_path,
            m.dir.join("kernel/drivers/char/hw_random/virtio-rng.ko.xz")
        );
    }

    #[test]
    fn builtin_and_missing() {
        let (_d, m) = fake(&["pvpanic-mmio"], &[]);
        assert!(m.resolve().unwrap().is_empty());
        let (_d, m) = fake(&["virtio_console", "nosuch"], &[]);
        let err = m.resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel module nosuch not found for kernel 6.1.0-test (neither in modules.dep nor modules.builtin)"
        );
        let m = KernelModules {
            dir: "/nonexistent/modules".into(),
            ..m
        };
        let err = m.resolve().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/modules/modules.dep missing")
                && err.contains("apt-get install"),
            "{err}"
        );
    }
}
