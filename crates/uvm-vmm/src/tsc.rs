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
/// per process against the monotonic clock (10 ms where it confirms the
/// kernel's known TSC rate, else 50 ms). `None` on
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
    if !microvm
        || cmdline
            .split_whitespace()
            .any(|w| w.starts_with("tsc_early_khz="))
    {
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

/// The TSC rate the kernel already knows, from `/proc/cpuinfo` text: its
/// `cpu MHz` is the TSC rate when the kernel took the frequency from CPUID
/// or the hypervisor (`tsc_known_freq`), the TSC is invariant
/// (`constant_tsc`), and no `aperfmperf` makes `cpu MHz` a live core clock.
pub(crate) fn cpuinfo_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if !has("tsc_known_freq") || !has("constant_tsc") || has("aperfmperf") {
        return None;
    }
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split_once(':')?
        .1
        .trim()
        .parse()
        .ok()?;
    let khz = (mhz * 1000.0).round() as u64;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

/// Whether a short measurement confirms `known` within 100 ppm.
fn confirms(known: u64, measured: u64) -> bool {
    known.abs_diff(measured) * 10_000 <= known
}

/// Measures the TSC rate: 50 ms against the monotonic clock, or 10 ms when
/// that confirms the kernel's own value (`cpuinfo_tsc_khz`), which is then
/// used: it is exact, and `uvmctl run` pays this once per process.
#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(known) = cpuinfo_tsc_khz(&cpuinfo) {
        if measure_for(Duration::from_millis(10)).is_some_and(|m| confirms(known, m)) {
            return Some(known);
        }
    }
    measure_for(Duration::from_millis(50))
}

#[cfg(target_arch = "x86_64")]
fn measure_for(window: Duration) -> Option<u64> {
    let (t0, c0) = sample();
    std::thread::sleep(window);
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
        assert!(
            with.starts_with("console=ttyS0 panic=-1 tsc_early_khz="),
            "{with}"
        );
        assert_eq!(super::with_tsc_hint(&with, true), with, "appended twice");
        assert_eq!(
            super::with_tsc_hint("quiet tsc_early_khz=1000", true),
            "quiet tsc_early_khz=1000"
        );
        assert_eq!(
            super::with_tsc_hint("console=ttyS0", false),
            "console=ttyS0"
        );
    }

    #[test]
    fn kernel_known_tsc_rate_from_cpuinfo() {
        let known = "processor\t: 0\ncpu MHz\t\t: 2596.100\nflags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq\n";
        assert_eq!(super::cpuinfo_tsc_khz(known), Some(2_596_100));
        // Calibrated (not known), or cpu MHz being a live core clock: not used.
        let calibrated = known.replace(" tsc_known_freq", "");
        assert_eq!(super::cpuinfo_tsc_khz(&calibrated), None);
        let live = known.replace("tsc_known_freq", "tsc_known_freq aperfmperf");
        assert_eq!(super::cpuinfo_tsc_khz(&live), None);
        assert_eq!(super::cpuinfo_tsc_khz(""), None);
        assert!(super::confirms(2_596_100, 2_596_300));
        assert!(!super::confirms(2_596_100, 2_600_000));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn short_measurement_agrees_with_long() {
        let short = super::measure_for(std::time::Duration::from_millis(10)).unwrap();
        let long = super::measure_for(std::time::Duration::from_millis(50)).unwrap();
        assert!(short.abs_diff(long) * 50 < long, "{short} vs {long}");
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
