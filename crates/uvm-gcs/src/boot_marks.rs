//! Guest uptimes at the agent's start-up milestones, recorded on the boot
//! path and logged later in one line: formatting the first JSON log line
//! runs a lot of code for the first time (~8 ms under TCG), so nothing is
//! logged (at the default level) before the first GCS response is out.

use std::sync::atomic::{AtomicU64, Ordering};

/// A start-up milestone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The GCS port is open and served.
    Serving,
    /// The first `Negotiate` was answered.
    Negotiated,
}

static SERVING_US: AtomicU64 = AtomicU64::new(0);
static NEGOTIATED_US: AtomicU64 = AtomicU64::new(0);

fn slot(mark: Mark) -> &'static AtomicU64 {
    match mark {
        Mark::Serving => &SERVING_US,
        Mark::Negotiated => &NEGOTIATED_US,
    }
}

/// Records the guest uptime now for `mark`, the first time only.
pub fn mark(mark: Mark) {
    let now = crate::stats::uptime_ns() / 1_000;
    let _ = slot(mark).compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
}

/// Guest uptime at `mark` in µs, if it happened.
pub fn uptime_us(mark: Mark) -> Option<u64> {
    match slot(mark).load(Ordering::Relaxed) {
        0 => None,
        us => Some(us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_mark_sticks() {
        assert_eq!(uptime_us(Mark::Serving), None);
        mark(Mark::Serving);
        let first = uptime_us(Mark::Serving).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark(Mark::Serving);
        assert_eq!(uptime_us(Mark::Serving), Some(first));
    }
}
