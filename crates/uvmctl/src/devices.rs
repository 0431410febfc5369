//! `uvmctl run --disk` and `--share`: parsed here, attached through the
//! library's runtime device path once the VM is Running.

use std::path::PathBuf;

use anyhow::Context;
use uvm::{DiskMount, Manager};

/// `--disk PATH[:GUEST_DIR][:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// Host image.
    pub path: PathBuf,
    /// Guest mount point; `None` = `/mnt/disk<N>`.
    pub guest_dir: Option<String>,
    /// Attached and mounted read-only.
    pub read_only: bool,
}

/// `--share HOST:GUEST_DIR[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareArg {
    /// Host directory or file.
    pub host: PathBuf,
    /// Guest mount point.
    pub guest_dir: String,
    /// Read-only (a read-only bind on the host).
    pub read_only: bool,
}

/// Splits a trailing `:ro` / `:rw` off.
fn mode(s: &str) -> (&str, bool) {
    if let Some(rest) = s.strip_suffix(":ro") {
        (rest, true)
    } else if let Some(rest) = s.strip_suffix(":rw") {
        (rest, false)
    } else {
        (s, false)
    }
}

/// Parses `--disk`.
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let (rest, read_only) = mode(s);
    let (path, guest_dir) = match rest.split_once(':') {
        Some((p, g)) => (p, Some(g.to_string())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err("expected PATH[:GUEST_DIR][:ro]".into());
    }
    if let Some(g) = &guest_dir {
        if !g.starts_with('/') {
            return Err(format!("guest directory {g:?} must be absolute"));
        }
    }
    Ok(DiskArg {
        path: path.into(),
        guest_dir,
        read_only,
    })
}

/// Parses `--share`.
pub fn parse_share(s: &str) -> Result<ShareArg, String> {
    let (rest, read_only) = mode(s);
    let (host, guest) = rest.split_once(':').ok_or("expected HOST:GUEST_DIR[:ro]")?;
    if host.is_empty() || !guest.starts_with('/') {
        return Err("expected HOST:GUEST_DIR[:ro] with an absolute GUEST_DIR".into());
    }
    Ok(ShareArg {
        host: host.into(),
        guest_dir: guest.into(),
        read_only,
    })
}

/// Hot-adds and mounts every `--disk`, then every `--share`.
pub async fn attach(
    manager: &Manager,
    disks: &[DiskArg],
    shares: &[ShareArg],
) -> anyhow::Result<()> {
    for (i, d) in disks.iter().enumerate() {
        let target = d
            .guest_dir
            .clone()
            .unwrap_or_else(|| format!("/mnt/disk{i}"));
        let how = DiskMount {
            read_only: d.read_only,
            ..DiskMount::default()
        };
        manager
            .attach_disk(&d.path, d.read_only, &target, &how)
            .await
            .with_context(|| format!("--disk {}", d.path.display()))?;
    }
    for s in shares {
        let share = manager
            .add_share(&s.host, s.read_only)
            .await
            .with_context(|| format!("--share {}", s.host.display()))?;
        manager
            .mount_share(&share.name, &s.guest_dir, s.read_only)
            .await
            .with_context(|| format!("--share {}", s.host.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_forms() {
        assert_eq!(
            parse_disk("a.img").unwrap(),
            DiskArg {
                path: "a.img".into(),
                guest_dir: None,
                read_only: false
            }
        );
        assert_eq!(
            parse_disk("/x/a.img:/mnt/data:ro").unwrap(),
            DiskArg {
                path: "/x/a.img".into(),
                guest_dir: Some("/mnt/data".into()),
                read_only: true
            }
        );
        assert!(parse_disk("a.img:ro").unwrap().read_only);
        assert!(!parse_disk("a.img:/mnt/d:rw").unwrap().read_only);
        assert!(parse_disk("a.img:rel").is_err());
        assert!(parse_disk(":ro").is_err());
    }

    #[test]
    fn share_forms() {
        assert_eq!(
            parse_share("/srv:/mnt/srv:ro").unwrap(),
            ShareArg {
                host: "/srv".into(),
                guest_dir: "/mnt/srv".into(),
                read_only: true
            }
        );
        assert!(!parse_share("/srv:/mnt/srv").unwrap().read_only);
        for bad in ["/srv", "/srv:rel", ":/mnt/x"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }
}
