//! `DumpStacks`: agent threads, in-flight requests, and guest kernel stacks.

use std::backtrace::Backtrace;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bound on the size of a dump.
pub const MAX_DUMP_BYTES: usize = 1 << 20;
/// Upper bound on one captured backtrace in the dump.
const MAX_BACKTRACE_BYTES: usize = 32 << 10;

struct Entry {
    name: &'static str,
    summary: String,
    started: Instant,
    pid: Arc<AtomicU32>,
    backtrace: Option<Backtrace>,
}

/// Registry of in-flight RPCs and long-running tasks.
#[derive(Clone, Default)]
pub struct InFlight {
    next: Arc<AtomicU64>,
    entries: Arc<Mutex<BTreeMap<u64, Entry>>>,
}

/// Removes its registry entry when dropped.
pub struct InFlightGuard {
    id: u64,
    reg: InFlight,
    pid: Arc<AtomicU32>,
}

impl InFlightGuard {
    /// Records the caller's stack for this request (once; symbolized at dump
    /// time).
    pub fn record_stack(&self) {
        let wanted = (self.reg.lock().get(&self.id)).is_some_and(|e| e.backtrace.is_none());
        if wanted {
            // Unwound outside the lock: a dump meanwhile must not wait for it.
            let bt = Backtrace::force_capture();
            if let Some(entry) = self.reg.lock().get_mut(&self.id) {
                entry.backtrace = Some(bt);
            }
        }
    }

    /// Records the pid of the process this request runs.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.reg.lock().remove(&self.id);
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request (its stack follows through
    /// [`InFlightGuard::record_stack`], if at all).
    pub fn enter(&self, name: &'static str, summary: String) -> InFlightGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let pid = Arc::new(AtomicU32::new(0));
        let entry = Entry {
            name,
            summary,
            started: Instant::now(),
            pid: pid.clone(),
            backtrace: None,
        };
        self.lock().insert(id, entry);
        InFlightGuard {
            id,
            reg: self.clone(),
            pid,
        }
    }

    /// How many requests named `name` are in flight.
    pub fn count(&self, name: &str) -> usize {
        self.lock().values().filter(|e| e.name == name).count()
    }

    /// One line per in-flight request, plus its captured stack.
    pub fn render(&self, out: &mut String) {
        let entries = self.lock();
        let _ = writeln!(out, "=== in-flight requests ({}) ===", entries.len());
        for entry in entries.values() {
            let _ = write!(
                out,
                "{} [{}] running {:.1}s",
                entry.name,
                entry.summary,
                entry.started.elapsed().as_secs_f64()
            );
            match entry.pid.load(Ordering::Relaxed) {
                0 => out.push('\n'),
                pid => {
                    let _ = writeln!(out, " pid {pid}");
                }
            }
            if let Some(bt) = &entry.backtrace {
                let mut text = format!("{bt}");
                truncate(&mut text, MAX_BACKTRACE_BYTES);
                let _ = writeln!(out, "  stack of the {} handler:", entry.name);
                for line in text.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        out.push('\n');
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n... (truncated)\n");
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn numeric_dirs(dir: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn kernel_stack(out: &mut String, path: &str) {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => out.push_str("    (empty kernel stack)\n"),
        Ok(s) => {
            for line in s.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "    (kernel stack unreadable: {e})");
        }
    }
}

/// Builds the full dump: agent threads, in-flight requests, guest tasks.
pub fn dump(inflight: &InFlight) -> String {
    let mut out = String::new();
    let me = std::process::id();
    let tids = numeric_dirs("/proc/self/task");
    let _ = writeln!(
        out,
        "=== uvm-gcs {} (pid {me}): {} threads ===",
        env!("CARGO_PKG_VERSION"),
        tids.len()
    );
    for tid in &tids {
        let comm = read_trimmed(&format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        let _ = writeln!(out, "thread {tid} \"{comm}\"");
        kernel_stack(&mut out, &format!("/proc/self/task/{tid}/stack"));
    }
    out.push('\n');
    inflight.render(&mut out);
    let _ = writeln!(out, "=== guest tasks (kernel stacks) ===");
    for pid in numeric_dirs("/proc") {
        if out.len() > MAX_DUMP_BYTES {
            break;
        }
        let comm = read_trimmed(&format!("/proc/{pid}/comm")).unwrap_or_default();
        for tid in numeric_dirs(&format!("/proc/{pid}/task")) {
            let tcomm = read_trimmed(&format!("/proc/{pid}/task/{tid}/comm"))
                .unwrap_or_else(|| comm.clone());
            let _ = writeln!(out, "task {pid}/{tid} \"{tcomm}\"");
            kernel_stack(&mut out, &format!("/proc/{pid}/task/{tid}/stack"));
        }
    }
    truncate(&mut out, MAX_DUMP_BYTES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn later_frame(guard: &InFlightGuard) {
        guard.record_stack();
    }

    #[test]
    fn a_stack_recorded_later_shows_up_once() {
        let reg = InFlight::default();
        let guard = reg.enter("exec", "sleep 30".into());
        let mut out = String::new();
        reg.render(&mut out);
        assert!(!out.contains("stack of the exec handler"), "{out}");
        later_frame(&guard);
        // A second call keeps the first stack.
        guard.record_stack();
        let mut out = String::new();
        reg.render(&mut out);
        assert_eq!(out.matches("stack of the exec handler").count(), 1, "{out}");
        assert!(out.contains("later_frame"), "{out}");
    }

    #[test]
    fn registry_lists_and_forgets_requests() {
        let reg = InFlight::default();
        let guard = reg.enter("exec", "sleep 30".into());
        guard.record_stack();
        guard.set_pid(42);
        let mut out = String::new();
        reg.render(&mut out);
        assert!(out.contains("exec [sleep 30] running"), "{out}");
        assert!(out.contains("pid 42"), "{out}");
        assert!(out.contains("registry_lists_and_forgets_requests"), "{out}");
        drop(guard);
        let mut out = String::new();
        reg.render(&mut out);
        assert!(out.contains("(0)"), "{out}");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "ééé".to_string();
        truncate(&mut s, 3);
        assert!(s.starts_with('é'));
    }
}
