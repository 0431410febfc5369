//! The WCOW variant against the fakes: no entropy channel, a log listener that
//! re-accepts, and the finalize step after negotiate. Also checks that guest
//! log lines become tracing events tagged with the VM id.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{env_with, Faults};
use uvm::{Controller, ManagerConfig, Platform, StartOptions, State};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let w = out.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (out, tracing::subscriber::set_default(sub))
}

// current_thread: every task runs on this thread, under the capturing subscriber.
#[tokio::test]
async fn wcow_variant() {
    let (logs, _guard) = capture();
    let config = ManagerConfig {
        platform: Some(Platform::Wcow),
        ..Default::default()
    };
    let e = env_with(
        Faults {
            log_reconnect: true,
            ..Default::default()
        },
        config,
    );
    e.create().await;
    assert_eq!(e.mgr.platform(), Some(Platform::Wcow));
    let roles: Vec<String> = e.hv.channel_sets.lock().unwrap()[0]
        .channels
        .iter()
        .map(|c| c.role.clone())
        .collect();
    assert_eq!(
        roles,
        ["gcs", "log", "stdout0"],
        "no entropy channel for WCOW"
    );
    e.mgr.start_vm(StartOptions::default()).await.unwrap();
    assert_eq!(e.mgr.state(), State::Running);
    assert_eq!(
        e.hv.last_vm().gcs.record().hv_socket_updates,
        1,
        "finalize step ran"
    );
    // Both log connections were relayed, one after the other.
    for _ in 0..100 {
        let t = logs.text();
        if t.contains("first connection") && t.contains("agent up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = logs.text();
    assert!(
        t.contains("first connection") && t.contains("agent up"),
        "{t}"
    );
    assert!(
        t.contains("uvm::guest") && (t.contains("vm_id=\"vm1\"") || t.contains("vm_id=vm1")),
        "{t}"
    );
    assert!(t.contains("uvm::lifecycle"), "lifecycle events: {t}");
    e.finish().await;
    tokio::time::timeout(Duration::from_secs(5), e.mgr.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn lcow_log_relay_end_releases_wait() {
    let (logs, _guard) = capture();
    let e = env_with(Faults::default(), ManagerConfig::default());
    e.run().await;
    assert_eq!(e.mgr.platform(), Some(Platform::Lcow));
    let waiter = tokio::time::timeout(Duration::from_millis(300), e.mgr.wait()).await;
    assert!(waiter.is_err(), "wait blocks while the VM runs");
    e.mgr.terminate_vm().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), e.mgr.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(logs.text().contains("agent up"));
    assert!(e.hv.all_released());
}
