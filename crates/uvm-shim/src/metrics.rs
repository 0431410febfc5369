//! `Stats` as containerd's `ctr task metrics` decodes it: a cgroup v2
//! `io.containerd.cgroups.v2.Metrics` (containerd/cgroups
//! `cgroup2/stats/metrics.proto`) from the container's cgroup in the guest.
//! containerd-shim-protos carries only the v1 message, so the fields used
//! are encoded here with the protobuf runtime, by their proto numbers.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedOutputStream;
use uvm_guest::ContainerStatistics;

/// The type URL containerd resolves to its cgroup v2 metrics.
pub const CGROUP2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// A nested message: (field number, its encoded bytes).
fn message(fields: &[(u32, u64)]) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut buf);
        for &(n, v) in fields {
            if v != 0 {
                out.write_uint64(n, v).expect("writing to a Vec");
            }
        }
        out.flush().expect("writing to a Vec");
    }
    buf
}

/// Encodes `s` as cgroup v2 metrics.
pub fn cgroup2_metrics(s: &ContainerStatistics) -> Any {
    let us = |ns: u64| ns / 1000;
    // PidsStat { current = 1; limit = 2 }
    let pids = message(&[(1, s.pids_current), (2, s.pids_limit)]);
    // CPUStat { usage_usec = 1; user_usec = 2; system_usec = 3 }
    let cpu = message(&[
        (1, us(s.cpu_usage_ns)),
        (2, us(s.cpu_user_ns)),
        (3, us(s.cpu_system_ns)),
    ]);
    // MemoryStat { usage = 32; usage_limit = 33; max_usage = 36 }
    let memory = message(&[
        (32, s.memory_current_bytes),
        (33, s.memory_limit_bytes),
        (36, s.memory_peak_bytes),
    ]);
    // MemoryEvents { oom = 4; oom_kill = 5 }
    let events = message(&[(4, s.oom_events), (5, s.oom_kills)]);
    let mut value = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        // Metrics { pids = 1; cpu = 2; memory = 4; memory_events = 8 }
        for (n, m) in [(1, &pids), (2, &cpu), (4, &memory), (8, &events)] {
            out.write_bytes(n, m).expect("writing to a Vec");
        }
        out.flush().expect("writing to a Vec");
    }
    Any {
        type_url: CGROUP2_METRICS_TYPE.to_string(),
        value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedInputStream;

    /// Decodes (field, varint) pairs of one message level; nested messages as bytes.
    fn fields(b: &[u8]) -> Vec<(u32, Result<u64, Vec<u8>>)> {
        let mut input = CodedInputStream::from_bytes(b);
        let mut out = Vec::new();
        while let Some(tag) = input.read_raw_tag_or_eof().unwrap() {
            let v = match tag & 7 {
                0 => Ok(input.read_uint64().unwrap()),
                2 => Err(input.read_bytes().unwrap()),
                w => panic!("wire type {w}"),
            };
            out.push((tag >> 3, v));
        }
        out
    }

    #[test]
    fn memory_cpu_and_pids_by_their_proto_numbers() {
        let s = ContainerStatistics {
            cpu_usage_ns: 5_000_000,
            cpu_user_ns: 3_000_000,
            cpu_system_ns: 2_000_000,
            memory_current_bytes: 4096,
            memory_peak_bytes: 8192,
            memory_limit_bytes: 33_554_432,
            oom_events: 1,
            oom_kills: 1,
            pids_current: 2,
            pids_limit: 10,
        };
        let any = cgroup2_metrics(&s);
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let top = fields(&any.value);
        let get = |n: u32| {
            top.iter()
                .find(|(f, _)| *f == n)
                .and_then(|(_, v)| v.clone().err())
                .unwrap()
        };
        assert_eq!(fields(&get(1)), vec![(1, Ok(2)), (2, Ok(10))]);
        assert_eq!(
            fields(&get(2)),
            vec![(1, Ok(5000)), (2, Ok(3000)), (3, Ok(2000))]
        );
        assert_eq!(
            fields(&get(4)),
            vec![(32, Ok(4096)), (33, Ok(33_554_432)), (36, Ok(8192))]
        );
        assert_eq!(fields(&get(8)), vec![(4, Ok(1)), (5, Ok(1))]);
    }
}
