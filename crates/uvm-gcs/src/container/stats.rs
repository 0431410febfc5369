//! A container's figures from its cgroup v2 files.

use std::path::Path;

use uvm_proto::gcs::ContainerStatistics;

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// A single-number file (`memory.current`); `max` and missing read as 0.
fn number(dir: &Path, file: &str) -> u64 {
    read(dir, file).trim().parse().unwrap_or(0)
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `memory.events`).
pub fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `memory.events` `oom_kill` of the cgroup at `dir`.
pub fn oom_kills(dir: &Path) -> u64 {
    keyed(&read(dir, "memory.events"), "oom_kill")
}

/// Collects the statistics of the cgroup at `dir`; files the kernel lacks
/// (`memory.peak` before 5.19) read as 0.
pub fn collect(dir: &Path) -> ContainerStatistics {
    let cpu = read(dir, "cpu.stat");
    let events = read(dir, "memory.events");
    ContainerStatistics {
        cpu_usage_ns: keyed(&cpu, "usage_usec").saturating_mul(1000),
        cpu_user_ns: keyed(&cpu, "user_usec").saturating_mul(1000),
        cpu_system_ns: keyed(&cpu, "system_usec").saturating_mul(1000),
        memory_current_bytes: number(dir, "memory.current"),
        memory_peak_bytes: number(dir, "memory.peak"),
        memory_limit_bytes: number(dir, "memory.max"),
        oom_events: keyed(&events, "oom"),
        oom_kills: keyed(&events, "oom_kill"),
        pids_current: number(dir, "pids.current"),
        pids_limit: number(dir, "pids.max"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        w("pids.current", "3\n");
        w("pids.max", "20\n");
        let s = collect(dir.path());
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!(s.cpu_user_ns, 1_000_000);
        assert_eq!(s.cpu_system_ns, 500_000);
        assert_eq!(s.memory_current_bytes, 4096);
        assert_eq!(s.memory_peak_bytes, 0, "missing file");
        assert_eq!(s.memory_limit_bytes, 0, "max = no limit");
        assert_eq!((s.oom_events, s.oom_kills), (2, 1));
        assert_eq!((s.pids_current, s.pids_limit), (3, 20));
        assert_eq!(oom_kills(dir.path()), 1);
        assert_eq!(keyed("oom_kill 5", "oom"), 0, "keys match whole");
    }
}
