//! Small commands run in the UVM itself (outside any container), for what
//! the agent has no RPC for yet: a container's pid list and resource
//! updates, both read from or written to its cgroup.

use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use uvm::{Controller, Manager};
use uvm_guest::ProcessSpec;

use crate::error::{Result, ShimError};

/// Bound on one such command.
pub const GUEST_CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `args` in the VM and returns its stdout; a non-zero exit is an error
/// carrying its stderr.
pub async fn output(manager: &Manager, args: &[&str]) -> Result<String> {
    let guest = manager
        .guest()
        .ok_or_else(|| ShimError::FailedPrecondition("the UVM has no guest connection".into()))?;
    let spec = ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        workdir: "/".into(),
        ..Default::default()
    };
    let run = async {
        let mut p = guest.spawn(spec).await.map_err(|e| e.to_string())?;
        drop(p.stdin.take());
        let (mut out, mut err) = (p.stdout.take(), p.stderr.take());
        let collect = |o: Option<uvm_guest::ProcessOutput>| async move {
            let mut buf: Vec<u8> = Vec::new();
            if let Some(mut o) = o {
                while let Some(chunk) = o.recv().await {
                    buf.extend_from_slice(&chunk);
                }
            }
            buf
        };
        let (o, e, exit) = tokio::join!(collect(out.take()), collect(err.take()), p.wait());
        let exit = exit.map_err(|e| e.to_string())?;
        if exit.code() != 0 {
            return Err(format!(
                "exit {}: {}",
                exit.code(),
                String::from_utf8_lossy(&e).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&o).into_owned())
    };
    match tokio::time::timeout(GUEST_CMD_TIMEOUT, run).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ShimError::FailedPrecondition(format!(
            "`{}` in the UVM failed: {e}",
            args.join(" ")
        ))),
        Err(_) => Err(ShimError::FailedPrecondition(format!(
            "`{}` in the UVM did not finish within {GUEST_CMD_TIMEOUT:?}",
            args.join(" ")
        ))),
    }
}

/// The cgroup v2 files and values an update of `r` writes.
pub fn cgroup_writes(r: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
        w.push((
            "memory.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            },
        ));
    }
    if let Some(cpu) = r.cpu() {
        if cpu.quota().is_some() || cpu.period().is_some() {
            let period = cpu.period().unwrap_or(100_000);
            let quota = match cpu.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            w.push(("cpu.max", format!("{quota} {period}")));
        }
    }
    if let Some(p) = r.pids() {
        let limit = p.limit();
        w.push((
            "pids.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            },
        ));
    }
    w
}

/// Writes `writes` into the cgroup directory `cgroup` in the guest.
pub async fn write_cgroup(
    manager: &Manager,
    cgroup: &str,
    writes: &[(&'static str, String)],
) -> Result<()> {
    let mut script = String::from("set -e; cd \"$1\"; shift");
    for (i, _) in writes.iter().enumerate() {
        let (f, v) = (2 * i + 1, 2 * i + 2);
        script.push_str(&format!("; echo \"${{{v}}}\" > \"${{{f}}}\""));
    }
    let mut args = vec!["sh", "-c", &script, "sh", cgroup];
    for (file, value) in writes {
        args.push(file);
        args.push(value);
    }
    output(manager, &args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn resources_map_to_cgroup_v2_files() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(20).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(
            cgroup_writes(&r),
            vec![
                ("memory.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "20".to_string()),
            ]
        );
        let unlimited = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(
            cgroup_writes(&unlimited),
            vec![("memory.max", "max".to_string())]
        );
    }
}
