//! Guest statistics from procfs.

use uvm_proto::gcs::GuestStats;

/// `USER_HZ`: the unit of `/proc/stat` CPU times on Linux.
const USER_HZ: u64 = 100;
const NS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// Parses `/proc/meminfo` text into (total, available, free) bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal"), field("MemAvailable"), field("MemFree"))
}

/// Parses the aggregate `cpu` line of `/proc/stat` into (user, system, idle) ns.
/// `user` includes `nice`; `idle` includes `iowait`.
pub fn parse_stat(text: &str) -> (u64, u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let ns = |t: u64| t.saturating_mul(NS_PER_TICK);
    (
        ns(at(0) + at(1)),
        ns(at(2) + at(5) + at(6)),
        ns(at(3) + at(4)),
    )
}

/// Monotonic time since boot (`CLOCK_BOOTTIME`), nanoseconds.
pub fn uptime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Number of online CPUs.
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

/// Collects the current guest statistics.
pub fn collect() -> GuestStats {
    let (mem_total_bytes, mem_available_bytes, mem_free_bytes) =
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let (cpu_user_ns, cpu_system_ns, cpu_idle_ns) =
        parse_stat(&std::fs::read_to_string("/proc/stat").unwrap_or_default());
    let process_count = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u32
        })
        .unwrap_or(0);
    GuestStats {
        mem_total_bytes,
        mem_available_bytes,
        mem_free_bytes,
        cpu_user_ns,
        cpu_system_ns,
        cpu_idle_ns,
        process_count,
        uptime_ns: uptime_ns(),
        online_cpus: online_cpus(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_bytes() {
        let text = "MemTotal:        2000 kB\nMemFree:          500 kB\nMemAvailable:    1000 kB\n";
        assert_eq!(parse_meminfo(text), (2000 * 1024, 1000 * 1024, 500 * 1024));
    }

    #[test]
    fn stat_cpu_line_is_ns() {
        let text = "cpu  10 2 3 100 4 5 6 0 0 0\ncpu0 1 1 1 1 1 1 1 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            (12 * NS_PER_TICK, 14 * NS_PER_TICK, 104 * NS_PER_TICK)
        );
    }

    #[test]
    fn collect_is_plausible_here() {
        let s = collect();
        assert!(s.mem_total_bytes > 0 && s.mem_available_bytes <= s.mem_total_bytes);
        assert!(s.process_count >= 1 && s.online_cpus >= 1 && s.uptime_ns > 0);
    }
}
