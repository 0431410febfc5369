//! The runtime config (like Kata's `configuration.toml`): which kernel and
//! initramfs the UVM boots, its memory and vCPUs. The shim reads the file
//! containerd's runtime options name (`ConfigPath`), else `$UVM_SHIM_CONFIG`,
//! else [`DEFAULT_CONFIG_PATH`] if it exists; with none it boots the image
//! `uvmctl image build` recorded, with the defaults below.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;
use serde::{Deserialize, Serialize};
use uvm::VmOrigin;
use uvm_schema::{ComputeSystem, LcowDocumentBuilder};

use crate::error::{Result, ShimError};

/// Where the config is looked for when containerd names none.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/uvm/containerd-shim-uvm.toml";
/// Guest memory when the config sets none.
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// vCPUs when the config sets none.
pub const DEFAULT_VCPUS: u32 = 1;
/// The type containerd gives runtime options of a non-runc runtime
/// (`ctr run --runtime-config-path`, CRI's `options.ConfigPath`).
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The `[vm]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel file (default: the recorded image's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Initramfs with the uvm agent (default: the recorded image's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; replaces the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_cmdline: Option<String>,
    /// Guest memory in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// A snapshot dir (`uvmctl snapshot create`) the UVM starts from instead
    /// of booting; the snapshot fixes the kernel, memory and vCPUs, so the
    /// fields above must be unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
}

impl VmConfig {
    /// Why these settings cannot be used, naming the field; `None` when they can.
    fn invalid(&self) -> Option<String> {
        if let Some(dir) = &self.snapshot {
            if !dir.is_absolute() {
                return Some(format!(
                    "vm.snapshot must be an absolute path to a snapshot dir, not {:?}",
                    dir.display().to_string()
                ));
            }
            let set = [
                ("kernel", self.kernel.is_some()),
                ("initrd", self.initrd.is_some()),
                ("kernel_cmdline", self.kernel_cmdline.is_some()),
                ("memory_mb", self.memory_mb.is_some()),
                ("vcpus", self.vcpus.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
                return Some(format!(
                    "vm.{field} cannot be set with vm.snapshot: the snapshot fixes the kernel, memory and vCPUs"
                ));
            }
        }
        if self.memory_mb == Some(0) {
            return Some("vm.memory_mb must be at least 1".into());
        }
        if self.vcpus == Some(0) {
            return Some("vm.vcpus must be at least 1".into());
        }
        None
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The UVM's settings.
    #[serde(default)]
    pub vm: VmConfig,
}

impl RuntimeConfig {
    /// A config booting `kernel`/`initrd` with `cmdline`, `memory_mb` and `vcpus`.
    pub fn for_boot_files(
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
        memory_mb: u64,
        vcpus: u32,
    ) -> Self {
        Self {
            vm: VmConfig {
                kernel: Some(kernel.to_path_buf()),
                initrd: Some(initrd.to_path_buf()),
                kernel_cmdline: Some(cmdline.to_string()),
                memory_mb: Some(memory_mb),
                vcpus: Some(vcpus),
                snapshot: None,
            },
        }
    }

    /// A config restoring the snapshot in `dir`.
    pub fn for_snapshot(dir: &Path) -> Self {
        Self {
            vm: VmConfig {
                snapshot: Some(dir.to_path_buf()),
                ..VmConfig::default()
            },
        }
    }

    /// The config as the TOML file [`RuntimeConfig::parse`] reads.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a RuntimeConfig always serializes")
    }

    /// Parses `text` (the contents of `path`); errors name the field.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let c: RuntimeConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let at = inner
                    .span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default();
                ShimError::Config {
                    path: path.to_path_buf(),
                    reason: if field == "." {
                        format!("{}{at}", inner.message())
                    } else {
                        format!("{field}: {}{at}", inner.message())
                    },
                }
            })?;
        if let Some(reason) = c.vm.invalid() {
            return Err(ShimError::Config {
                path: path.to_path_buf(),
                reason,
            });
        }
        Ok(c)
    }

    /// Loads the config: `explicit` (from containerd) must exist; the
    /// environment's or the default path is used when present.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>)> {
        let from_env = std::env::var_os("UVM_SHIM_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let (path, required) = match (explicit, from_env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::parse(&path, &text)?, Some(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok((Self::default(), None))
            }
            Err(e) => Err(ShimError::io("read the runtime config", path, e)),
        }
    }

    /// The snapshot to restore when the config names one, else the document to boot.
    pub fn origin(&self, owner: &str) -> Result<VmOrigin> {
        match &self.vm.snapshot {
            Some(dir) => Ok(VmOrigin::Snapshot(dir.clone())),
            None => Ok(VmOrigin::Document(Box::new(self.document(owner)?))),
        }
    }

    /// The VM document: the config's files, else the recorded default image.
    pub fn document(&self, owner: &str) -> Result<ComputeSystem> {
        let vm = &self.vm;
        let (kernel, initrd, cmdline) = match (&vm.kernel, &vm.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone(), None),
            (k, i) => {
                let d = uvm_image::load_default_image(&uvm_image::cache_dir())
                    .map_err(ShimError::Image)?;
                (
                    k.clone().unwrap_or(d.kernel),
                    i.clone().unwrap_or(d.initrd),
                    Some(d.cmdline),
                )
            }
        };
        let mut builder = LcowDocumentBuilder::new(kernel, initrd);
        if let Some(c) = vm.kernel_cmdline.clone().or(cmdline) {
            builder = builder.cmdline(c);
        }
        Ok(builder
            .memory_mb(vm.memory_mb.unwrap_or(DEFAULT_MEMORY_MB))
            .processors(vm.vcpus.unwrap_or(DEFAULT_VCPUS))
            .owner(owner)
            .build())
    }
}

/// The `ConfigPath` of containerd's runtime options, when they are the
/// generic `runtimeoptions.v1.Options` and name one.
pub fn config_path_of(options: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if any.value.is_empty() || name != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    let bad = |e: String| ShimError::InvalidArgument(format!("runtime options: {e}"));
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .map_err(|e| bad(e.to_string()))?
    {
        // field 2 (config_path), wire type 2 (length-delimited)
        if tag == (2 << 3) | 2 {
            path = Some(input.read_string().map_err(|e| bad(e.to_string()))?);
        } else {
            input
                .skip_field(
                    containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)
                        .ok_or_else(|| bad(format!("bad wire type in tag {tag}")))?,
                )
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let p = Path::new("/etc/x.toml");
        let c = RuntimeConfig::parse(p, "[vm]\nmemory_mb = 512\nvcpus = 2\n").unwrap();
        assert_eq!(c.vm.memory_mb, Some(512));
        assert_eq!(c.vm.vcpus, Some(2));
        let e = RuntimeConfig::parse(p, "[vm]\nmemory = 512\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/x.toml") && msg.contains("memory"),
            "{msg}"
        );
        let e = RuntimeConfig::parse(p, "[vm]\nvcpus = 0\n").unwrap_err();
        assert!(e.to_string().contains("vm.vcpus"), "{e}");
        let e = RuntimeConfig::parse(p, "[vm]\nmemory_mb = \"lots\"\n").unwrap_err();
        assert!(e.to_string().contains("vm.memory_mb"), "{e}");
    }

    #[test]
    fn a_snapshot_excludes_the_boot_settings() {
        let p = Path::new("/etc/x.toml");
        let c = RuntimeConfig::parse(p, "[vm]\nsnapshot = \"/srv/snap\"\n").unwrap();
        assert_eq!(c, RuntimeConfig::for_snapshot(Path::new("/srv/snap")));
        assert!(
            matches!(c.origin("t").unwrap(), VmOrigin::Snapshot(d) if d == Path::new("/srv/snap"))
        );
        let e = RuntimeConfig::parse(p, "[vm]\nsnapshot = \"/s\"\nmemory_mb = 512\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("vm.memory_mb") && msg.contains("vm.snapshot"),
            "{msg}"
        );
        for bad in ["\"\"", "\"snap\""] {
            let e = RuntimeConfig::parse(p, &format!("[vm]\nsnapshot = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("absolute"), "{e}");
        }
        let e = RuntimeConfig::parse(p, "[vm]\nsnapshot = \"/s\"\nvcpus = 0\n").unwrap_err();
        assert!(e.to_string().contains("vm.snapshot"), "{e}");
        let back = RuntimeConfig::for_snapshot(Path::new("/s")).to_toml();
        assert_eq!(back.trim(), "[vm]\nsnapshot = \"/s\"");
    }

    #[test]
    fn written_config_reads_back() {
        let c = RuntimeConfig::for_boot_files(
            Path::new("/k \"x\""),
            Path::new("/i"),
            "console=hvc0 a=\"b\"",
            300,
            2,
        );
        assert_eq!(
            RuntimeConfig::parse(Path::new("/c"), &c.to_toml()).unwrap(),
            c
        );
    }

    #[test]
    fn explicit_config_must_exist() {
        let e = RuntimeConfig::load(Some(Path::new("/nonexistent/uvm.toml"))).unwrap_err();
        assert!(
            e.sentence().contains("/nonexistent/uvm.toml"),
            "{}",
            e.sentence()
        );
    }

    #[test]
    fn document_uses_configured_files() {
        let c = RuntimeConfig {
            vm: VmConfig {
                kernel: Some("/k".into()),
                initrd: Some("/i".into()),
                kernel_cmdline: Some("console=hvc0".into()),
                memory_mb: Some(300),
                vcpus: Some(2),
                snapshot: None,
            },
        };
        let json = c.document("test").unwrap().to_json_pretty();
        assert!(
            json.contains("/k") && json.contains("/i") && json.contains("300"),
            "{json}"
        );
    }

    #[test]
    fn config_path_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url: "x" (1), config_path: "/c.toml" (2) }
        let mut value = vec![0x0a, 1, b'x', 0x12, 7];
        value.extend_from_slice(b"/c.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_of(Some(&any)).unwrap(),
            Some(PathBuf::from("/c.toml"))
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x12, 1, b'a'],
            ..Default::default()
        };
        assert_eq!(config_path_of(Some(&other)).unwrap(), None);
        assert_eq!(config_path_of(None).unwrap(), None);
    }
}
