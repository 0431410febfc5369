//! Finding the QEMU binary and checking its version.

use std::path::{Path, PathBuf};

use crate::VmmError;

/// Binary name looked up on `$PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Oldest QEMU this backend drives.
pub const MIN_VERSION: (u32, u32) = (7, 0);

/// Resolves the QEMU binary: `explicit`, else `$UVM_QEMU`, else `$PATH`.
/// The result must be an existing file.
pub fn find_qemu(explicit: Option<&Path>) -> Result<PathBuf, VmmError> {
    let env = std::env::var_os("UVM_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let not_found = |name: &Path| VmmError::HypervisorNotFound {
        binary: name.display().to_string(),
    };
    if let Some(p) = explicit.map(Path::to_path_buf).or(env) {
        if p.components().count() > 1 || p.is_absolute() {
            return if p.is_file() {
                Ok(p)
            } else {
                Err(not_found(&p))
            };
        }
        return search_path(&p).ok_or_else(|| not_found(&p));
    }
    search_path(Path::new(QEMU_BINARY)).ok_or_else(|| not_found(Path::new(QEMU_BINARY)))
}

fn search_path(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Parses `major.minor[.micro]` from `qemu --version` output.
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let rest = &output[output.find("version ")? + "version ".len()..];
    let v = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut it = v.split('.').map(|n| n.parse::<u32>());
    let major = it.next()?.ok()?;
    let minor = it.next()?.ok()?;
    let micro = it.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, micro))
}

/// Runs `<binary> --version` and checks it is at least [`MIN_VERSION`].
pub async fn check_version(binary: &Path) -> Result<(u32, u32, u32), VmmError> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::process::Command::new(binary)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| VmmError::Timeout {
        what: "qemu --version",
        timeout: std::time::Duration::from_secs(10),
    })?
    .map_err(|source| VmmError::Spawn {
        binary: binary.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = parse_version(&text).ok_or_else(|| {
        VmmError::Unsupported(format!(
            "{}: cannot read a version from {:?}",
            binary.display(),
            text.trim()
        ))
    })?;
    if (v.0, v.1) < MIN_VERSION {
        return Err(VmmError::Unsupported(format!(
            "{} is QEMU {}.{}.{}; at least {}.{} is needed",
            binary.display(),
            v.0,
            v.1,
            v.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        )));
    }
    Ok(v)
}

/// Whether the binary accepts our `-sandbox` settings (built with seccomp).
pub async fn supports_sandbox(binary: &Path, sandbox_arg: &str) -> bool {
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::process::Command::new(binary)
            .args(["-sandbox", sandbox_arg, "-version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await;
    matches!(r, Ok(Ok(s)) if s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let s = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022";
        assert_eq!(parse_version(s), Some((7, 2, 22)));
        assert_eq!(
            parse_version("QEMU emulator version 8.1\n"),
            Some((8, 1, 0))
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn explicit_missing_binary_is_not_found() {
        let e = find_qemu(Some(Path::new("/nonexistent/qemu"))).unwrap_err();
        assert!(matches!(e, VmmError::HypervisorNotFound { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/qemu"));
        let e = find_qemu(Some(Path::new("no-such-qemu-binary"))).unwrap_err();
        assert!(matches!(e, VmmError::HypervisorNotFound { .. }), "{e}");
    }
}
