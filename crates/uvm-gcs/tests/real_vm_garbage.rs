//! Real VM (issue 2): a garbage frame on the `gcs` channel does not kill the
//! agent. Boots the uvm image (tuned kernel, the static `uvm-gcs` as PID 1)
//! under QEMU with the real backend, plays the host side of the gcs, log and
//! entropy channels, breaks the agent's HTTP/2 connection twice with garbage
//! and checks that a fresh client on the same stream is served each time.
//!
//! Prerequisites: `qemu-system-x86_64`, busybox, a static agent (`make
//! agent`, or `$UVM_AGENT`) and the tuned kernel (built once by
//! `uvm_image::ensure_image`). When one is missing the test prints why and
//! passes, unless `UVM_REQUIRE_REAL_VM=1` (`make test`), which fails it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gcs_stream::{client_over, dup, read_to_goaway, retire, Client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use uvm_proto::gcs::{exited, InitialState, NegotiateRequest};
use uvm_vmm::{Hypervisor, QemuConfig, QemuHypervisor, UtilityVm};

/// Bound on every wait but the first handshake.
const WAIT: Duration = Duration::from_secs(60);
/// Bound on boot + first handshake (TCG on a loaded 2-core host).
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn skip(why: String) {
    if std::env::var_os("UVM_REQUIRE_REAL_VM").is_some_and(|v| v == "1") {
        panic!("real-VM prerequisite missing: {why}");
    }
    eprintln!("skipping real-VM test: {why}");
}

/// The VM under test: terminated and closed on drop, even on panic (then the
/// guest's log lines and console tail are printed).
struct VmGuard {
    vm: Arc<dyn UtilityVm>,
    root: tempfile::TempDir,
    pid: Option<u32>,
    log: Arc<Mutex<Vec<String>>>,
    done: bool,
}

impl VmGuard {
    async fn stop(vm: &dyn UtilityVm) -> Result<(), String> {
        tokio::time::timeout(WAIT, async {
            vm.terminate()
                .await
                .map_err(|e| format!("terminate: {e}"))?;
            vm.close().await.map_err(|e| format!("close: {e}"))
        })
        .await
        .map_err(|_| "terminate/close timed out".to_string())?
    }

    /// Stops the VM and checks that no QEMU and nothing under the runtime
    /// root is left.
    async fn finish(mut self) {
        self.done = true;
        Self::stop(&*self.vm).await.unwrap();
        let left: Vec<_> = std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "runtime root not empty: {left:?}");
        let pid = self.pid.expect("QEMU pid while running");
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "QEMU {pid} still alive");
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for l in self.log.lock().unwrap().iter() {
            println!("guest log: {l}");
        }
        if let Ok(c) = std::fs::read_to_string(self.vm.runtime_dir().join("console.log")) {
            let tail: String = c.lines().rev().take(40).collect::<Vec<_>>().join("\n    ");
            println!("console (last lines first):\n    {tail}");
        }
        let vm = self.vm.clone();
        tokio::task::block_in_place(|| {
            if let Err(e) = tokio::runtime::Handle::current().block_on(Self::stop(&*vm)) {
                println!("cleanup: {e}");
            }
        });
    }
}

async fn accept(l: &UnixListener, role: &str) -> tokio::net::UnixStream {
    tokio::time::timeout(WAIT, l.accept())
        .await
        .unwrap_or_else(|_| panic!("QEMU did not connect the {role} channel"))
        .unwrap_or_else(|e| panic!("accept {role}: {e}"))
        .0
}

/// Negotiate, then `echo ok` → "ok\n", exit 0.
async fn serves(c: &mut Client, what: &str, initial: Option<InitialState>, within: Duration) {
    let req = NegotiateRequest {
        min_version: uvm_proto::PROTOCOL_VERSION,
        max_version: uvm_proto::PROTOCOL_VERSION,
        initial_state: initial,
    };
    let neg = match tokio::time::timeout(within, c.negotiate(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => panic!("{what}: Negotiate: {e}"),
        Err(_) => panic!("{what}: Negotiate timed out"),
    };
    assert_eq!(neg.version, uvm_proto::PROTOCOL_VERSION, "{what}");
    let echo = common::run(c, common::spec(&["echo", "ok"]), vec![]);
    let o = match tokio::time::timeout(WAIT, echo).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("{what}: exec: {e}"),
        Err(_) => panic!("{what}: exec timed out"),
    };
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok\n",
        "{what}: stdout (stderr {:?})",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status, Some(exited::Status::ExitCode(0)), "{what}");
}

/// Writes `garbage` on the gcs stream (no client reading it) and checks
/// that the agent ends the connection it broke with a GOAWAY. The agent's
/// next connection waits, silent, for the next client's preface.
async fn break_connection(keep: &std::os::unix::net::UnixStream, garbage: &[u8], what: &str) {
    let mut raw = dup(keep);
    tokio::time::timeout(WAIT, raw.write_all(garbage))
        .await
        .unwrap_or_else(|_| panic!("{what}: write timed out"))
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    // The code is usually a protocol/frame-size error, but when the previous
    // client's graceful close wins the race the old connection ends with
    // NO_ERROR and the garbage lands before the next preface (and is skipped).
    let r = read_to_goaway(&mut raw, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: the old connection did not end with a GOAWAY: {e}"));
    println!(
        "{what}: frames of the broken connection (type, flags, len): {:?}, GOAWAY code {}",
        r.dead, r.goaway
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_vm_garbage_on_gcs_does_not_kill_the_agent() {
    // Cached; the first run may build the tuned kernel (minutes), so this
    // step is outside the bound on the VM part.
    let img = match tokio::task::spawn_blocking(|| {
        uvm_image::ensure_image(&uvm_image::KernelKind::Tuned, &|p| eprintln!("image: {p}"))
    })
    .await
    .unwrap()
    {
        Ok(img) => img,
        Err(e) => return skip(format!("image: {e}")),
    };
    tokio::time::timeout(Duration::from_secs(300), garbage_test(img))
        .await
        .expect("test timed out");
}

async fn garbage_test(img: uvm_image::Image) {
    let root = tempfile::tempdir().unwrap();
    let hv = QemuHypervisor::with_config(QemuConfig {
        runtime_root: Some(root.path().to_path_buf()),
        ..Default::default()
    });
    let id = format!("garbage-{}", std::process::id());
    let cmdline = format!(
        "{} {}={id} {}=lcow {}={}",
        img.cmdline,
        uvm_proto::cmdline::ID,
        uvm_proto::cmdline::PLATFORM,
        uvm_proto::cmdline::GCS_PORT,
        uvm_proto::ports::GCS
    );
    let doc = uvm_schema::LcowDocumentBuilder::new(&img.kernel, &img.initrd)
        .memory_mb(256)
        .processors(1)
        .cmdline(cmdline)
        .build();
    let channels = uvm_guest::channel_set(uvm_proto::ports::GCS, true, 0);
    let vm = match tokio::time::timeout(WAIT, hv.create(&id, &doc, &channels)).await {
        Ok(Ok(vm)) => vm,
        Ok(Err(e @ uvm_vmm::VmmError::HypervisorNotFound { .. })) => {
            return skip(format!("backend: {e}"))
        }
        Ok(Err(e)) => panic!("create: {e:?}"),
        Err(_) => panic!("create timed out"),
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let guard = VmGuard {
        vm: vm.clone(),
        root,
        pid: vm.pid(),
        log: log.clone(),
        done: false,
    };
    let take = |role: &str| {
        vm.take_channel(role)
            .unwrap_or_else(|| panic!("no {role} channel"))
    };
    let (gcs_l, log_l, ent_l) = (take("gcs"), take("log"), take("entropy"));
    tokio::time::timeout(WAIT, vm.start())
        .await
        .expect("start timed out")
        .expect("start");

    // Entropy: 512 bytes, and the stream stays open until the VM is gone
    // (QEMU drops unread bytes when the host hangs up).
    let mut entropy = accept(&ent_l, "entropy").await;
    tokio::time::timeout(WAIT, uvm_guest::send_entropy(&mut entropy))
        .await
        .expect("entropy write timed out")
        .expect("entropy write");
    // Log: drained for the whole run, kept for the report on failure.
    let log_s = accept(&log_l, "log").await;
    let log_task = tokio::spawn({
        let log = log.clone();
        async move {
            let mut lines = BufReader::new(log_s).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log.lock().unwrap().push(l);
            }
        }
    });
    // Our own handle on the gcs stream keeps QEMU's chardev connected
    // whatever the clients do.
    let keep = accept(&gcs_l, "gcs").await.into_std().unwrap();

    let (mut c, retired) = client_over(dup(&keep), Vec::new()).await;
    let initial = InitialState {
        hostname: "garbage".into(),
        timezone: "UTC".into(),
        env: vec![],
    };
    serves(&mut c, "before any garbage", Some(initial), BOOT_WAIT).await;
    retire(c, &retired);

    // 1. Junk on a live connection: not a frame at all.
    let junk = b"this is not an HTTP/2 frame\r\n\r\n";
    break_connection(&keep, junk, "junk on a live connection").await;
    let (mut c, retired) = client_over(dup(&keep), Vec::new()).await;
    serves(&mut c, "after junk on a live connection", None, WAIT).await;
    retire(c, &retired);

    // 2. A valid preface, then a malformed frame (a 5-byte SETTINGS) and more
    // junk: on a live connection (where the preface itself is garbage), then
    // on a fresh one (the agent skips the leading junk up to the preface, then
    // the bad frame breaks that connection too).
    let bad = [
        H2_PREFACE,
        &[0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
        b"\xff\xfe more junk \x00\x01\x02",
    ]
    .concat();
    break_connection(&keep, &bad, "preface + bad frame on a live connection").await;
    let fresh = [&junk[..], &bad].concat();
    break_connection(
        &keep,
        &fresh,
        "junk + preface + bad frame on a fresh connection",
    )
    .await;
    let (mut c, _retired) = client_over(dup(&keep), Vec::new()).await;
    serves(&mut c, "after garbage on a fresh connection", None, WAIT).await;
    // The junk before the preface was skipped, not served.
    let skipped = tokio::time::timeout(WAIT, async {
        while !log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("skipped bytes before the HTTP/2 preface"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(skipped.is_ok(), "the agent logged no skipped bytes");

    // The agent (PID 1: its death would panic the guest) is still up, and the
    // VM has not exited.
    assert!(
        vm.exit_reason().is_none(),
        "VM exited: {:?}",
        vm.exit_reason()
    );
    drop(c);
    guard.finish().await;
    drop(entropy);
    drop(keep);
    let _ = tokio::time::timeout(WAIT, log_task).await;
    let lines = log.lock().unwrap();
    println!("guest log ({} lines):", lines.len());
    for l in lines.iter() {
        println!("  {l}");
    }
}
