//! Filling `VirtualMachineStatistics`.

use uvm_proto::gcs::GuestStats;
use uvm_proto::stats::{
    VirtualMachineMemory, VirtualMachineMemoryStatistics, VirtualMachineProcessorStatistics,
    VirtualMachineStatistics,
};
use uvm_vmm::VmStatistics;

/// Builds the statistics from the host figures and the guest's report.
///
/// Sources: `processor.total_runtime_ns` = user+system time of the vCPU
/// threads; `memory.working_set_bytes` = RSS of the VM process;
/// `virtual_node_count` = NUMA nodes backing guest memory;
/// `vm_memory.assigned_memory` = document memory (bytes);
/// `vm_memory.available_memory` = guest MemAvailable (MiB).
///
/// Always 0/false, because QEMU here has no such mechanism:
/// `available_memory_buffer`, `reserved_memory` (memory is assigned at boot,
/// nothing is reserved beside it), `slp_active`, `balancing_enabled` and
/// `dm_operation_in_progress` (no dynamic-memory balancer).
pub(crate) fn build(
    host: &VmStatistics,
    assigned_fallback_bytes: u64,
    guest: &GuestStats,
) -> VirtualMachineStatistics {
    let assigned = if host.assigned_memory_bytes > 0 {
        host.assigned_memory_bytes
    } else {
        assigned_fallback_bytes
    };
    let available_mib = i32::try_from(guest.mem_available_bytes >> 20).unwrap_or(i32::MAX);
    VirtualMachineStatistics {
        processor: Some(VirtualMachineProcessorStatistics {
            total_runtime_ns: u64::try_from(host.vcpu_runtime.as_nanos()).unwrap_or(u64::MAX),
        }),
        memory: Some(VirtualMachineMemoryStatistics {
            working_set_bytes: host.working_set_bytes,
            virtual_node_count: host.virtual_node_count,
            vm_memory: Some(VirtualMachineMemory {
                available_memory: available_mib,
                assigned_memory: assigned,
                ..Default::default()
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fills_from_host_and_guest() {
        let host = VmStatistics {
            vcpu_runtime: Duration::from_millis(1500),
            working_set_bytes: 100 << 20,
            assigned_memory_bytes: 0,
            virtual_node_count: 1,
        };
        let guest = GuestStats {
            mem_available_bytes: 300 << 20,
            ..Default::default()
        };
        let s = build(&host, 512 << 20, &guest);
        assert_eq!(s.processor.unwrap().total_runtime_ns, 1_500_000_000);
        let m = s.memory.unwrap();
        assert_eq!((m.working_set_bytes, m.virtual_node_count), (100 << 20, 1));
        let vm = m.vm_memory.unwrap();
        assert_eq!((vm.assigned_memory, vm.available_memory), (512 << 20, 300));
    }
}
