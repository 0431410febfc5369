//! Host memory accounting: QEMU children's Rss and this process's Rss.

/// Rss of `pid` in KiB from `/proc/<pid>/smaps_rollup`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_kib(&s, "Rss:")
}

/// Pss of `pid` in KiB (shared pages, e.g. the kernel and initrd page cache
/// every QEMU maps, divided among their users).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_kib(&s, "Pss:")
}

/// This process's VmRSS in KiB.
pub fn self_rss_kib() -> Option<u64> {
    parse_kib(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Pids of this process's direct children whose command is `qemu-system-*`.
pub fn qemu_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm_ok = head.contains("(qemu-system-");
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            comm_ok && ppid == Some(me)
        })
        .collect()
}

/// Sum of the Rss of all QEMU children, MiB.
pub fn qemu_children_rss_mib() -> f64 {
    qemu_children().into_iter().filter_map(rss_kib).sum::<u64>() as f64 / 1024.0
}

/// Sum of the Pss of all QEMU children, MiB.
pub fn qemu_children_pss_mib() -> f64 {
    qemu_children().into_iter().filter_map(pss_kib).sum::<u64>() as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kib() {
        assert_eq!(parse_kib("Name: x\nRss:   1234 kB\n", "Rss:"), Some(1234));
        assert_eq!(parse_kib("VmRSS:\t  99 kB\n", "VmRSS:"), Some(99));
        assert!(self_rss_kib().unwrap() > 0);
        assert!(rss_kib(std::process::id()).is_some());
        assert!(pss_kib(std::process::id()).is_some());
    }
}
