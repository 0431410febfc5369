//! Host-side statistics from `/proc`: vCPU thread CPU time and the VM process's
//! resident set.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Thread ids of the vCPUs from a QMP `query-cpus-fast` reply.
pub fn vcpu_thread_ids(reply: &Value) -> Vec<u32> {
    reply
        .as_array()
        .map(|cpus| {
            cpus.iter()
                .filter_map(|c| c.get("thread-id")?.as_u64())
                .filter_map(|t| u32::try_from(t).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `utime + stime` (clock ticks) from the text of `/proc/<pid>/task/<tid>/stat`.
/// The command name (field 2) may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(3) ppid(4) ... utime(14) stime(15): indices 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `Rss` in bytes from the text of `/proc/<pid>/smaps_rollup` (or `status`'s `VmRSS`).
pub fn parse_rss_bytes(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l
            .strip_prefix("Rss:")
            .or_else(|| l.strip_prefix("VmRSS:"))?;
        let mut it = rest.split_whitespace();
        let n: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(n * 1024),
            _ => None,
        }
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Converts clock ticks to a duration.
pub fn ticks_to_duration(ticks: u64, per_sec: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_sec.max(1))
}

/// Summed CPU time of the given threads of `pid`; threads that vanished count 0.
pub fn threads_cpu_time(pid: u32, tids: &[u32]) -> Duration {
    let per_sec = clock_ticks_per_sec();
    let ticks: u64 = tids
        .iter()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok())
        .filter_map(|s| parse_stat_cpu_ticks(&s))
        .sum();
    ticks_to_duration(ticks, per_sec)
}

/// Resident set of `pid` in bytes (`smaps_rollup`, falling back to `status`).
pub fn process_rss_bytes(pid: u32) -> std::io::Result<u64> {
    let proc = Path::new("/proc").join(pid.to_string());
    let text = std::fs::read_to_string(proc.join("smaps_rollup"))
        .or_else(|_| std::fs::read_to_string(proc.join("status")))?;
    parse_rss_bytes(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no Rss line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thread_ids_from_query_cpus_fast() {
        let reply = json!([
            {"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 1234, "target": "x86_64"},
            {"cpu-index": 1, "thread-id": 1235},
            {"cpu-index": 2}
        ]);
        assert_eq!(vcpu_thread_ids(&reply), vec![1234, 1235]);
        assert!(vcpu_thread_ids(&json!({})).is_empty());
    }

    #[test]
    fn stat_ticks_with_awkward_comm() {
        let stat =
            "4321 (CPU 0/TCG) S 1 4321 4321 0 -1 4194368 1000 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        let stat = "7 (a) b) R 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(10));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_from_smaps_rollup_and_status() {
        let smaps = "55d0c0000000-7ffc0000000 ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              100000 kB\n";
        assert_eq!(parse_rss_bytes(smaps), Some(204800 * 1024));
        assert_eq!(
            parse_rss_bytes("Name:\tqemu\nVmRSS:\t  1024 kB\n"),
            Some(1024 * 1024)
        );
        assert_eq!(parse_rss_bytes("Pss: 1 kB\n"), None);
    }

    #[test]
    fn ticks_convert() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    }

    #[test]
    fn own_process_reads() {
        let pid = std::process::id();
        assert!(process_rss_bytes(pid).unwrap() > 0);
        let _ = threads_cpu_time(pid, &[pid]);
    }
}
