//! `uvmctl run --stats`: lifecycle timings and VM statistics, as a table or JSON.

use std::time::Duration;

use serde_json::json;
use uvm::VirtualMachineStatistics;

/// Wall-clock time of each lifecycle step of one `run`.
#[derive(Debug, Default)]
pub struct Timings {
    /// create_vm.
    pub create: Option<Duration>,
    /// start_vm (boot to agent ready).
    pub start: Option<Duration>,
    /// The command, spawn to exit.
    pub exec: Option<Duration>,
    /// terminate_vm.
    pub terminate: Option<Duration>,
    /// Statistics taken after the command ended.
    pub stats: Option<VirtualMachineStatistics>,
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The report as a JSON value.
pub fn to_json(t: &Timings) -> serde_json::Value {
    let s = t.stats.as_ref();
    let processor = s.and_then(|s| s.processor.as_ref());
    let memory = s.and_then(|s| s.memory.as_ref());
    let vm_memory = memory.and_then(|m| m.vm_memory.as_ref());
    json!({
        "timings_ms": {
            "create": ms(t.create),
            "start": ms(t.start),
            "exec": ms(t.exec),
            "terminate": ms(t.terminate),
        },
        "stats": s.map(|_| json!({
            "processor": { "total_runtime_ns": processor.map(|p| p.total_runtime_ns) },
            "memory": {
                "working_set_bytes": memory.map(|m| m.working_set_bytes),
                "virtual_node_count": memory.map(|m| m.virtual_node_count),
                "vm_memory": vm_memory.map(|v| json!({
                    "available_memory": v.available_memory,
                    "available_memory_buffer": v.available_memory_buffer,
                    "reserved_memory": v.reserved_memory,
                    "assigned_memory": v.assigned_memory,
                })),
            },
        })),
    })
}

/// The report as table rows (label, value).
pub fn rows(t: &Timings) -> Vec<(&'static str, String)> {
    let fmt = |d: Option<Duration>| ms(d).map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    let mut rows = vec![
        ("create", fmt(t.create)),
        ("start (to Running)", fmt(t.start)),
        ("exec", fmt(t.exec)),
        ("terminate", fmt(t.terminate)),
    ];
    if let Some(s) = &t.stats {
        if let Some(p) = &s.processor {
            rows.push((
                "vCPU time",
                format!("{:.1} ms", p.total_runtime_ns as f64 / 1e6),
            ));
        }
        if let Some(m) = &s.memory {
            rows.push((
                "working set (host RSS)",
                format!("{:.1} MiB", m.working_set_bytes as f64 / 1048576.0),
            ));
            if let Some(v) = &m.vm_memory {
                rows.push((
                    "assigned memory",
                    format!("{} MiB", v.assigned_memory / 1048576),
                ));
                rows.push((
                    "guest available memory",
                    format!("{} MiB", v.available_memory),
                ));
            }
        }
    }
    rows
}

/// Prints the report on stderr (so it never mixes with the command's stdout).
pub fn print_report(t: &Timings, as_json: bool) {
    if as_json {
        eprintln!("{}", to_json(t));
        return;
    }
    let rows = rows(t);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    eprintln!("{:-<1$}", "", width + 16);
    for (k, v) in rows {
        eprintln!("{k:<width$}  {v:>12}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_timing() {
        let t = Timings {
            create: Some(Duration::from_millis(12)),
            ..Default::default()
        };
        let v = to_json(&t);
        assert_eq!(v["timings_ms"]["create"], 12.0);
        assert!(v["timings_ms"]["start"].is_null());
        assert!(v["stats"].is_null());
    }

    #[test]
    fn table_shows_missing_as_dash() {
        let rows = rows(&Timings::default());
        assert_eq!(rows[0], ("create", "-".to_owned()));
    }
}
