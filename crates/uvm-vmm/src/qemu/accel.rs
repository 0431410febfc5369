//! Choosing the accelerator: KVM only where `/dev/kvm` opens **and** the CPU
//! advertises hardware virtualization (`vmx`/`svm`); TCG otherwise.

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (Tiny Code Generator).
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Whether `/proc/cpuinfo` text has a `flags` line with `vmx` or `svm`.
pub fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| {
        l.split_once(':')
            .is_some_and(|(_, f)| f.split_whitespace().any(|x| x == "vmx" || x == "svm"))
    })
}

/// The pure decision: KVM iff `/dev/kvm` opened and the CPU has vmx/svm.
pub fn choose_accel(cpuinfo: &str, kvm_opens: bool) -> Accel {
    if kvm_opens && cpu_has_virt(cpuinfo) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Probes this host.
pub fn detect_accel() -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let a = choose_accel(&cpuinfo, kvm_opens);
    tracing::debug!(accel = a.as_str(), kvm_opens, "accelerator chosen");
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse\n";
    const SVM: &str = "flags\t\t: fpu svm lm\n";
    const NONE: &str = "flags\t\t: fpu vme de pse tsc msr hypervisor sse\nbugs\t\t: vmx_whatever\n";

    #[test]
    fn kvm_needs_both_device_and_cpu_flag() {
        assert_eq!(choose_accel(VMX, true), Accel::Kvm);
        assert_eq!(choose_accel(SVM, true), Accel::Kvm);
        assert_eq!(choose_accel(VMX, false), Accel::Tcg);
        assert_eq!(choose_accel(NONE, true), Accel::Tcg);
        assert_eq!(choose_accel("", true), Accel::Tcg);
    }
}
