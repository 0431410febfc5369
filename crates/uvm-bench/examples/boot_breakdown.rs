//! Profiling aid: where a boot's time goes, on the guest clock (uptime =
//! `CLOCK_BOOTTIME`), ours next to the raw baseline, interleaved.
//!
//! - raw: the real baseline (`guest/rawinit`, host time to the first byte),
//!   and a *measurement-only* copy of it that, after its first byte, also
//!   sends its uptime at `main` and just before that byte (the real baseline
//!   is unchanged);
//! - ours, once per agent binary given (default: the one `locate_agent`
//!   finds): create + start, and from the agent's logs the guest uptime at
//!   `main`, "starting as PID 1", "serving GCS", "negotiated" (log line) and
//!   in the Negotiate response.
//!
//! `cargo run --release -p uvm-bench --example boot_breakdown -- RUNS [VARIANT...]`
//! where a variant is an agent binary, `initrd=PATH` (ours with that
//! initrd), `cmdline=WORDS` (ours with WORDS appended to the kernel command
//! line), `rawinitrd=PATH` (the uptime rawinit on top of PATH) or
//! `rawcmdline=WORDS` (the uptime rawinit with WORDS on the command line)
//! or `rawconsole[=WORDS]` (the uptime rawinit with a UART to a file, as
//! ours has; a word `-X` removes X from the command line).
//! `BREAKDOWN_KERNEL=VMLINUX` boots every variant, raw ones included, on that
//! kernel instead of the tuned image's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use uvm_bench::ours::OurVm;
use uvm_bench::stats::{median, ms};
use uvm_bench::{raw, setup, BenchOptions, KernelKind};

/// rawinit with two `clock_gettime(CLOCK_BOOTTIME)` reads; only for this tool.
fn uptime_rawinit_source() -> String {
    let src = uvm_image::RAWINIT_SOURCE;
    let src = src.replace(
        "int main(int argc, char **argv) {",
        "#include <time.h>\nstatic unsigned long long up_us(void) { struct timespec t; clock_gettime(CLOCK_BOOTTIME, &t); return t.tv_sec * 1000000ULL + t.tv_nsec / 1000; }\nint main(int argc, char **argv) {\n    unsigned long long t_main = up_us();",
    );
    let src = src.replace(
        "    if (write(out, \"!\", 1) != 1) die(\"write failed\");",
        "    unsigned long long t_byte = up_us();\n    if (write(out, \"!\", 1) != 1) die(\"write failed\");\n    { char l[64]; int n = snprintf(l, sizeof l, \"%llu %llu\\n\", t_main, t_byte); (void)!write(out, l, n); }",
    );
    assert!(
        src.contains("t_main = up_us") && src.contains("t_byte = up_us"),
        "rawinit source changed; update the patch"
    );
    src
}

#[derive(Default, Clone, Debug)]
struct Ev {
    target: String,
    fields: BTreeMap<String, String>,
}

struct Visitor<'a>(&'a mut BTreeMap<String, String>);
impl Visit for Visitor<'_> {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Ev>>>);
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut ev = Ev {
            target: e.metadata().target().to_owned(),
            ..Ev::default()
        };
        e.record(&mut Visitor(&mut ev.fields));
        self.0.lock().unwrap().push(ev);
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time with microseconds (same day only matters).
fn secs_of_day(t: &str) -> Option<f64> {
    let hms = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = hms.split(':');
    let (h, m, s): (f64, f64, f64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

fn field(fields: &str, key: &str) -> Option<f64> {
    fields
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

async fn raw_uptime_run(vm: &raw::BaselineVm) -> (f64, f64, f64) {
    let (mut run, mut streams, t0) = raw::spawn_with_ports(vm, &[raw::RAW_PORT])
        .await
        .expect("spawn raw");
    let mut s = streams.remove(0);
    let mut b = [0u8; 1];
    raw::guard(&mut run, "first byte", async {
        s.read_exact(&mut b)
            .await
            .map_err(|e| uvm_bench::BenchError::io("read", e))
    })
    .await
    .expect("first byte");
    let first = ms(t0.elapsed());
    let mut line = String::new();
    let mut r = BufReader::new(s);
    raw::guard(&mut run, "uptime line", async {
        r.read_line(&mut line)
            .await
            .map_err(|e| uvm_bench::BenchError::io("read", e))
    })
    .await
    .expect("uptime line");
    let mut it = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap() / 1e3);
    (first, it.next().unwrap(), it.next().unwrap())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let collect = Collect::default();
    tracing_subscriber::registry()
        .with(collect.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .init();
    let opts = BenchOptions::quick();
    let kernel_override = std::env::var_os("BREAKDOWN_KERNEL");
    let mut raw_img = setup::raw_image(&KernelKind::Tuned).expect("raw image");
    if let Some(k) = &kernel_override {
        raw_img.kernel = k.into();
    }
    let raw_vm = setup::baseline(&raw_img, &raw_img.initrd, &opts, 128);
    // The measurement-only rawinit copy.
    let dir = tempfile::Builder::new()
        .prefix("uvm-breakdown-")
        .tempdir()
        .unwrap();
    let src = dir.path().join("rawinit-uptime.c");
    std::fs::write(&src, uptime_rawinit_source()).unwrap();
    let bin = dir.path().join("rawinit-uptime");
    let st = std::process::Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gcc failed");
    let spec = uvm_image::InitramfsSpec {
        agent: bin,
        busybox: None,
        modules: None,
        extra_files: Vec::new(),
    };
    let up_initrd = dir.path().join("rawinit-uptime.cpio");
    std::fs::write(&up_initrd, uvm_image::build_initramfs(&spec).unwrap()).unwrap();
    let up_vm = setup::baseline(&raw_img, &up_initrd, &opts, 128);

    // Arguments: agent binaries; `initrd=PATH` boots ours (default agent's
    // image) with that initrd instead; `rawinitrd=PATH` boots the uptime
    // rawinit on PATH with the rawinit archive appended (its /init wins).
    let mut agents: Vec<Option<String>> = Vec::new();
    let mut images = Vec::new();
    let mut raw_extra: Vec<(String, raw::BaselineVm)> = Vec::new();
    let mut default_img = uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image");
    if let Some(k) = &kernel_override {
        default_img.kernel = k.into();
    }
    for a in args.iter().skip(1) {
        if let Some(p) = a.strip_prefix("initrd=") {
            let mut img = default_img.clone();
            img.initrd = p.into();
            images.push(img);
            agents.push(Some(a.clone()));
        } else if let Some(w) = a.strip_prefix("cmdline=") {
            let mut img = default_img.clone();
            img.cmdline = format!("{} {w}", img.cmdline);
            images.push(img);
            agents.push(Some(a.clone()));
        } else if let Some(w) = a.strip_prefix("rawconsole") {
            // `rawconsole[=WORDS]`; a word `-X` removes word X.
            let mut vm = up_vm.clone();
            vm.keep_console = true;
            for word in w.trim_start_matches('=').split_whitespace() {
                match word.strip_prefix('-') {
                    Some(x) => vm.vm.cmdline = vm.vm.cmdline.replace(x, ""),
                    None => vm.vm.cmdline = format!("{} {word}", vm.vm.cmdline),
                }
            }
            raw_extra.push((a.clone(), vm));
        } else if let Some(w) = a.strip_prefix("rawcmdline=") {
            let mut vm = up_vm.clone();
            vm.vm.cmdline = format!("{} {w}", vm.vm.cmdline);
            raw_extra.push((a.clone(), vm));
        } else if let Some(p) = a.strip_prefix("rawinitrd=") {
            let mut bytes = std::fs::read(p).unwrap();
            bytes.extend(std::fs::read(&up_initrd).unwrap());
            let path = dir.path().join(format!("extra-{}.cpio", raw_extra.len()));
            std::fs::write(&path, bytes).unwrap();
            raw_extra.push((a.clone(), setup::baseline(&raw_img, &path, &opts, 128)));
        } else {
            std::env::set_var("UVM_AGENT", a);
            images.push(uvm_image::ensure_image(&KernelKind::Tuned, &|_| {}).expect("image"));
            agents.push(Some(a.clone()));
        }
    }
    if images.is_empty() && raw_extra.is_empty() {
        images.push(default_img);
        agents.push(None);
    }
    let mut extra_res: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        vec![Default::default(); raw_extra.len()];
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() >> 10).unwrap_or(0);

    let (mut raw_first, mut raw_conn) = (vec![], vec![]);
    let (mut up_first, mut up_main, mut up_byte) = (vec![], vec![], vec![]);
    let mut ours: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); images.len()];
    for i in 0..runs {
        let r = raw::raw_run(&raw_vm, None).await.expect("raw");
        raw_first.push(ms(r.first_byte));
        raw_conn.push(ms(r.connected));
        let (f, m, b) = raw_uptime_run(&up_vm).await;
        up_first.push(f);
        up_main.push(m);
        up_byte.push(b);
        for (k, (_, vm)) in raw_extra.iter().enumerate() {
            let (f, m, b) = raw_uptime_run(vm).await;
            extra_res[k].0.push(f);
            extra_res[k].1.push(m);
            extra_res[k].2.push(b);
        }
        for (k, img) in images.iter().enumerate() {
            collect.0.lock().unwrap().clear();
            let vm = OurVm::boot(&format!("bd-{k}-{i}"), img, 128, 1)
                .await
                .expect("boot");
            // Let the log lines of the boot arrive.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let evs = collect.0.lock().unwrap().clone();
            let (create, start) = (ms(vm.create), ms(vm.start));
            vm.terminate().await.expect("terminate");
            let m = &mut ours[k];
            m.entry(String::from("create")).or_default().push(create);
            m.entry(String::from("start")).or_default().push(start);
            m.entry(String::from("create+start"))
                .or_default()
                .push(create + start);
            let guest: Vec<(String, f64, String)> = evs
                .iter()
                .filter(|e| e.target == "uvm::guest")
                .filter_map(|e| {
                    Some((
                        e.fields.get("guest_msg")?.clone(),
                        secs_of_day(e.fields.get("guest_time")?)?,
                        e.fields.get("fields").cloned().unwrap_or_default(),
                    ))
                })
                .collect();
            for e in &evs {
                let msg = e.fields.get("message").map(String::as_str).unwrap_or("");
                let g = |k: &str| e.fields.get(k).and_then(|v| v.parse::<f64>().ok());
                if msg.starts_with("QEMU spawned") {
                    for k in ["spawn_ms", "qmp_connect_ms", "qmp_ready_ms"] {
                        if let Some(v) = g(k) {
                            m.entry(k.to_string()).or_default().push(v);
                        }
                    }
                }
                if msg.starts_with("GCS negotiated") {
                    for k in ["cont_ms", "connected_ms"] {
                        if let Some(v) = g(k) {
                            m.entry(k.to_string()).or_default().push(v);
                        }
                    }
                }
            }
            if let Some(n) = evs.iter().find(|e| {
                e.target == "uvm::lifecycle"
                    && e.fields
                        .get("message")
                        .is_some_and(|x| x.starts_with("GCS negotiated"))
            }) {
                let g = |k: &str| n.fields.get(k).and_then(|v| v.parse::<f64>().ok());
                if let (Some(up), Some(neg)) = (g("guest_uptime_ms"), g("negotiated_ms")) {
                    m.entry(String::from("up@answer")).or_default().push(up);
                    m.entry(String::from("cont->Running(host)"))
                        .or_default()
                        .push(neg);
                }
            }
            let Some((_, t_start, f_start)) =
                guest.iter().find(|g| g.0.contains("starting as PID 1"))
            else {
                // No agent logs (e.g. `floor_agent`): host-side marks only.
                continue;
            };
            let up_start = field(f_start, "uptime_ms").unwrap_or(f64::NAN);
            let at = |msg: &str| {
                guest
                    .iter()
                    .find(|g| g.0.starts_with(msg))
                    .map(|g| up_start + (g.1 - t_start) * 1e3)
            };
            m.entry(String::from("up@starting"))
                .or_default()
                .push(up_start);
            if let Some(v) = field(f_start, "main_uptime_us") {
                m.entry(String::from("up@main")).or_default().push(v / 1e3);
            }
            // Agents log their milestones in the "starting" line (µs of
            // guest uptime); older ones logged a line at each.
            for (name, key, msg) in [
                ("up@serving", "serving_uptime_us", "serving GCS"),
                ("up@negotiated-log", "negotiated_uptime_us", "negotiated"),
            ] {
                let v = field(f_start, key).map(|us| us / 1e3).or_else(|| at(msg));
                if let Some(v) = v {
                    m.entry(name.to_string()).or_default().push(v);
                }
            }
            if let Some((_, _, f)) = guest.iter().find(|g| g.0 == "negotiated") {
                for tok in f.split_whitespace() {
                    let tok = tok.strip_prefix("marks=").unwrap_or(tok);
                    if let Some((k, v)) = tok.split_once('=') {
                        if let Ok(us) = v.parse::<f64>() {
                            if k != "version" {
                                m.entry(format!("mark {k}")).or_default().push(us / 1e3);
                            }
                        }
                    }
                }
            }
            let main_up = field(f_start, "main_uptime_us").map(|v| v / 1e3);
            let serving = at("serving GCS");
            let answer = evs
                .iter()
                .find(|e| {
                    e.target == "uvm::lifecycle"
                        && e.fields
                            .get("message")
                            .is_some_and(|x| x.starts_with("GCS negotiated"))
                })
                .and_then(|e| e.fields.get("guest_uptime_ms")?.parse::<f64>().ok());
            if let (Some(a), Some(b), Some(c)) = (main_up, serving, answer) {
                m.entry("Δ agent main->answer".into())
                    .or_default()
                    .push(c - a);
                m.entry("Δ agent main->serving".into())
                    .or_default()
                    .push(b - a);
                m.entry("Δ agent serving->answer".into())
                    .or_default()
                    .push(c - b);
            }
        }
    }
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    println!(
        "runs {runs}; loadavg {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "raw ({} KiB initrd): spawn->first byte {:.1} ms (spawn->port chardev connected {:.1} ms)",
        size(&raw_img.initrd),
        med(&raw_first),
        med(&raw_conn)
    );
    println!(
        "raw+uptime: spawn->first byte {:.1} ms; guest uptime at main {:.1} ms, at the byte {:.1} ms",
        med(&up_first),
        med(&up_main),
        med(&up_byte)
    );
    for (k, (name, _)) in raw_extra.iter().enumerate() {
        let (f, m, b) = &extra_res[k];
        println!(
            "raw+uptime [{name}]: spawn->first byte {:.1} ms; uptime at main {:.1} ms, at the byte {:.1} ms",
            med(f),
            med(m),
            med(b)
        );
    }
    for (k, img) in images.iter().enumerate() {
        let name = agents[k].clone().unwrap_or_else(|| "default agent".into());
        println!("ours [{name}] ({} KiB initrd):", size(&img.initrd));
        let mut marks = Vec::new();
        for (key, v) in &ours[k] {
            if key.starts_with("mark ") || key.starts_with("up@") {
                marks.push((med(v), key, v.len()));
            } else {
                println!("  {key:<26} {:>7.1} ms  (n={})", med(v), v.len());
            }
        }
        marks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut prev = f64::NAN;
        for (t, key, n) in marks {
            println!("  {key:<26} {t:>7.1} ms  (+{:>5.1}, n={n})", t - prev);
            prev = t;
        }
    }
}
