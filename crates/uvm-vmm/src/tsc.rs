//! Host TSC frequency, for `tsc_early_khz=` on `-M microvm`.
//!
//! Under TCG, QEMU's guest TSC counts at the host's TSC rate, but `microvm`
//! has nothing the kernel can calibrate it against (no PIT gate on port 0x61,
//! no HPET, no ACPI PM timer): without a hint the guest marks the TSC
//! unusable and hangs in delay-loop / LAPIC timer calibration. Passing the
//! host's TSC frequency as `tsc_early_khz=` makes it boot, with an accurate
//! guest clock. Harmless under KVM (kvmclock takes over).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The host TSC frequency in kHz: `$UVM_TSC_KHZ` if set, else measured once
/// per process against the monotonic clock (about 50 ms). `None` on
/// non-x86_64 hosts or if the measurement looks wrong.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Some(v) = std::env::var("UVM_TSC_KHZ")
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            return Some(v);
        }
        let khz = measure();
        tracing::debug!(?khz, "host TSC frequency");
        khz
    })
}

/// The kernel command line for a `microvm` guest: `cmdline` with
/// `tsc_early_khz=<host kHz>` appended unless it already sets it (or the
/// frequency is unknown, which is logged). Other machines get `cmdline` as is.
pub fn with_tsc_hint(cmdline: &str, microvm: bool) -> String {
    if !microvm || cmdline.split_whitespace().any(|w| w.starts_with("tsc_early_khz=")) {
        return cmdline.to_owned();
    }
    match host_tsc_khz() {
        Some(khz) if cmdline.trim().is_empty() => format!("tsc_early_khz={khz}"),
        Some(khz) => format!("{} tsc_early_khz={khz}", cmdline.trim_end()),
        None => {
            tracing::warn!("host TSC frequency unknown; a microvm guest may hang under TCG");
            cmdline.to_owned()
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64; it only reads a counter.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// (instant, tsc) pair taken with the tightest bracket of a few tries.
#[cfg(target_arch = "x86_64")]
fn sample() -> (Instant, u64) {
    let mut best: Option<(Duration, Instant, u64)> = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        let tsc = rdtsc();
        let t1 = Instant::now();
        let width = t1 - t0;
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, t0 + width / 2, tsc));
        }
    }
    let (_, t, tsc) = best.expect("at least one sample");
    (t, tsc)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let (t0, c0) = sample();
    std::thread::sleep(Duration::from_millis(50));
    let (t1, c1) = sample();
    let secs = (t1 - t0).as_secs_f64();
    let khz = (c1.checked_sub(c0)? as f64 / secs / 1000.0).round() as u64;
    // Sanity: 100 MHz .. 10 GHz.
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn microvm_cmdline_gets_the_tsc_hint_once() {
        let with = super::with_tsc_hint("console=ttyS0 panic=-1", true);
        assert!(with.starts_with("console=ttyS0 panic=-1 tsc_early_khz="), "{with}");
        assert_eq!(super::with_tsc_hint(&with, true), with, "appended twice");
        assert_eq!(super::with_tsc_hint("quiet tsc_early_khz=1000", true), "quiet tsc_early_khz=1000");
        assert_eq!(super::with_tsc_hint("console=ttyS0", false), "console=ttyS0");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn measures_a_plausible_frequency() {
        let a = super::measure().expect("TSC frequency");
        let b = super::measure().expect("TSC frequency");
        // Two measurements agree within 2% even on a loaded machine.
        assert!(a.abs_diff(b) * 50 < a, "{a} vs {b}");
    }
}
