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

/// Runs `<binary> ARGS` (bounded), returning whether it succeeded and its stdout.
async fn run_probe(binary: &Path, args: &[&str]) -> Result<(bool, String), VmmError> {
    let timeout = std::time::Duration::from_secs(10);
    let out = tokio::time::timeout(
        timeout,
        tokio::process::Command::new(binary)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| VmmError::Timeout {
        what: "qemu --version",
        timeout,
    })?
    .map_err(|source| VmmError::Spawn {
        binary: binary.display().to_string(),
        source,
    })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The version in `text` (a `--version` output), if at least [`MIN_VERSION`].
fn supported_version(binary: &Path, text: &str) -> Result<(u32, u32, u32), VmmError> {
    let v = parse_version(text).ok_or_else(|| {
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

/// Runs `<binary> --version` and checks it is at least [`MIN_VERSION`].
pub async fn check_version(binary: &Path) -> Result<(u32, u32, u32), VmmError> {
    let (_, text) = run_probe(binary, &["--version"]).await?;
    supported_version(binary, &text)
}

/// What probing a QEMU binary found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryProbe {
    /// `major.minor.micro` from `--version`.
    pub version: (u32, u32, u32),
    /// Whether it accepts our `-sandbox` settings.
    pub sandbox: bool,
}

/// Identity of a binary for the probe cache: its path plus size and mtime,
/// so a binary replaced in place (an upgrade) is probed again.
type ProbeKey = (PathBuf, Option<(u64, std::time::SystemTime)>);

/// The version check and the `-sandbox` probe, run once per binary per process.
///
/// Each probe spawns QEMU (15-50 ms each here), and every
/// `Manager::new()` builds a fresh backend, so without this cache each VM's
/// create paid for two extra QEMU runs. Failures are not cached.
pub async fn probe_binary(binary: &Path, sandbox_arg: &str) -> Result<BinaryProbe, VmmError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Cell = Arc<tokio::sync::OnceCell<BinaryProbe>>;
    static CACHE: OnceLock<Mutex<HashMap<(ProbeKey, String), Cell>>> = OnceLock::new();
    let meta = std::fs::metadata(binary)
        .ok()
        .and_then(|m| Some((m.len(), m.modified().ok()?)));
    let key = ((binary.to_path_buf(), meta), sandbox_arg.to_string());
    let cell = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_try_init(|| async {
        // One QEMU run answers both questions where seccomp is built in
        // (`-version` prints the version after the options were accepted);
        // only a binary that refuses `-sandbox` costs a second run.
        let (ok, text) = run_probe(binary, &["-sandbox", sandbox_arg, "-version"]).await?;
        if ok {
            if let Ok(version) = supported_version(binary, &text) {
                return Ok(BinaryProbe {
                    version,
                    sandbox: true,
                });
            }
        }
        let version = check_version(binary).await?;
        Ok(BinaryProbe {
            version,
            sandbox: false,
        })
    })
    .await
    .copied()
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

    /// A fake QEMU that logs each invocation to `log`.
    fn counting_qemu(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("calls");
        let bin = dir.join("fake-qemu");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\necho 'QEMU emulator version 7.2.0'\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        (bin, log)
    }

    /// Retries while exec fails with ETXTBSY: another test thread may fork
    /// while a just-written script's fd is still open, and the forked child
    /// holds it until its own exec. Failures are not cached, and a failed
    /// exec runs nothing, so the call counts stay exact.
    async fn retry_busy<T, F, Fut>(mut f: F) -> Result<T, VmmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, VmmError>>,
    {
        for _ in 0..50 {
            match f().await {
                Err(VmmError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                r => return r,
            }
        }
        f().await
    }

    fn calls(log: &Path) -> usize {
        std::fs::read_to_string(log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// B1: each `Manager::new()` builds a fresh `QemuHypervisor`; the version
    /// and `-sandbox` probes of a binary run once per process, not per backend.
    #[tokio::test]
    async fn probe_runs_once_per_binary_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, log) = counting_qemu(dir.path());
        for _ in 0..3 {
            let hv = crate::QemuHypervisor::with_config(crate::QemuConfig {
                binary: Some(bin.clone()),
                accel: Some(crate::Accel::Tcg),
                ..Default::default()
            });
            retry_busy(|| async { hv.probe().await.map(drop) })
                .await
                .unwrap();
        }
        assert_eq!(
            calls(&log),
            1,
            "one `-sandbox .. -version` run answers both"
        );
        // A different binary is probed on its own.
        let dir2 = tempfile::tempdir().unwrap();
        let (bin2, log2) = counting_qemu(dir2.path());
        let hv = crate::QemuHypervisor::with_config(crate::QemuConfig {
            binary: Some(bin2),
            accel: Some(crate::Accel::Tcg),
            ..Default::default()
        });
        retry_busy(|| async { hv.probe().await.map(drop) })
            .await
            .unwrap();
        assert_eq!(calls(&log2), 1);
        assert_eq!(calls(&log), 1);
    }

    /// A QEMU built without seccomp: the combined run fails, `--version`
    /// alone gives the version and the sandbox is off.
    #[tokio::test]
    async fn probe_without_sandbox_support() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("qemu-noseccomp");
        std::fs::write(
            &bin,
            "#!/bin/sh\nif [ \"$1\" = -sandbox ]; then echo 'no seccomp' >&2; exit 1; fi\necho 'QEMU emulator version 8.1.3'\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = retry_busy(|| probe_binary(&bin, "on")).await.unwrap();
        assert_eq!(
            p,
            BinaryProbe {
                version: (8, 1, 3),
                sandbox: false
            }
        );
        // Too old is refused either way.
        let old = dir.path().join("qemu-old");
        std::fs::write(&old, "#!/bin/sh\necho 'QEMU emulator version 6.2.0'\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = retry_busy(|| probe_binary(&old, "on")).await.unwrap_err();
        assert!(matches!(e, VmmError::Unsupported(_)), "{e}");
    }
}
