//! OCI mount options (`["nosuid", "ro", "mode=755"]`) split into `MS_*`
//! flags, propagation and file-system data, the way runc reads them.

use nix::mount::MsFlags;

/// What a mount's `options` mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags to set.
    pub flags: MsFlags,
    /// `bind` or `rbind`.
    pub bind: bool,
    /// `rbind`.
    pub recursive: bool,
    /// `private`, `rslave`, ... (0 when none).
    pub propagation: MsFlags,
    /// Everything else, comma-joined, for the file system.
    pub data: String,
}

/// Flags an option sets (`true`) or clears (`false`).
fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        _ => return None,
    })
}

fn propagation(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses `options`. Err: an option the runtime refuses, as a sentence
/// (shared propagation would leak the container's mounts into the guest).
pub fn parse(options: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        bind: false,
        recursive: false,
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options {
        let opt = opt.as_str();
        if let Some((set, f)) = flag(opt) {
            o.flags.set(f, set);
        } else if let Some(p) = propagation(opt) {
            o.propagation = p;
        } else if opt == "bind" {
            o.bind = true;
        } else if opt == "rbind" {
            o.bind = true;
            o.recursive = true;
        } else if matches!(opt, "shared" | "rshared") {
            return Err(format!(
                "option {opt:?} is not supported: container mounts stay private"
            ));
        } else if matches!(opt, "remount" | "move") {
            return Err(format!("option {opt:?} is not supported"));
        } else if opt.starts_with("idmap") || opt.starts_with("ridmap") {
            return Err(format!(
                "option {opt:?} is not supported: no user namespaces"
            ));
        } else if opt.contains(',') {
            return Err(format!("option {opt:?} must not contain a comma"));
        } else {
            data.push(opt);
        }
    }
    o.data = data.join(",");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_data_are_split() {
        let o = parse(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k"])).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
        let o = parse(&opts(&["rbind", "ro", "rprivate", "rw", "ro"])).unwrap();
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, "");
        let o = parse(&opts(&[
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]))
        .unwrap();
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    }

    #[test]
    fn shared_propagation_and_idmaps_are_refused() {
        assert!(parse(&opts(&["rshared"])).unwrap_err().contains("private"));
        assert!(parse(&opts(&["idmap"])).is_err());
        assert!(parse(&opts(&["a,b"])).is_err());
    }
}
