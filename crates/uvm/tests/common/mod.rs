//! Shared helpers of the controller tests.
#![allow(dead_code)]

pub mod fake;
pub mod real;

use std::sync::Arc;
use std::time::Duration;

pub use fake::{FakeHypervisor, Faults};
use uvm::{Controller, CreateOptions, Manager, ManagerConfig, StartOptions, State};

/// A valid LCOW document whose kernel and initrd are empty temp files (the
/// fake backend never reads them).
pub fn document(dir: &std::path::Path) -> uvm_schema::ComputeSystem {
    let k = dir.join("vmlinux");
    let i = dir.join("initrd");
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"initrd").unwrap();
    uvm_schema::LcowDocumentBuilder::new(k, i)
        .memory_mb(256)
        .processors(1)
        .build()
}

/// Files the documents point at; keep alive for the test.
pub struct Env {
    pub files: tempfile::TempDir,
    pub hv: Arc<FakeHypervisor>,
    pub mgr: Manager,
}

pub fn env_with(faults: Faults, config: ManagerConfig) -> Env {
    let hv = FakeHypervisor::new(faults);
    let mgr = Manager::with_config(hv.clone(), config);
    Env {
        files: tempfile::tempdir().unwrap(),
        hv,
        mgr,
    }
}

pub fn env(faults: Faults) -> Env {
    env_with(
        faults,
        ManagerConfig {
            gcs_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
}

impl Env {
    pub fn create_opts(&self) -> CreateOptions {
        CreateOptions {
            id: "vm1".into(),
            document: document(self.files.path()),
        }
    }

    pub async fn create(&self) {
        self.mgr.create_vm(self.create_opts()).await.unwrap();
        assert_eq!(self.mgr.state(), State::Created);
    }

    pub async fn run(&self) {
        self.create().await;
        self.mgr.start_vm(StartOptions::default()).await.unwrap();
        assert_eq!(self.mgr.state(), State::Running);
    }

    /// Brings the manager to `state` with the fakes.
    pub async fn reach(&self, state: State) {
        match state {
            State::NotCreated => {}
            State::Created => self.create().await,
            State::Running => self.run().await,
            State::Terminated => {
                self.run().await;
                self.mgr.terminate_vm().await.unwrap();
            }
            State::Invalid => {
                self.create().await;
                self.hv.set_faults(|f| f.start_fails = true);
                assert!(self.mgr.start_vm(StartOptions::default()).await.is_err());
                self.hv.set_faults(|f| f.start_fails = false);
            }
        }
        assert_eq!(self.mgr.state(), state);
    }

    /// Terminates and checks nothing is left.
    pub async fn finish(&self) {
        self.mgr.terminate_vm().await.unwrap();
        assert!(matches!(
            self.mgr.state(),
            State::Terminated | State::NotCreated
        ));
        assert!(self.hv.all_released(), "fake VM left behind");
    }
}

/// Drains the transitions received so far and checks they form one chain
/// from `start`, each step allowed by the table. Returns them.
pub fn checked_transitions(
    rx: &mut tokio::sync::broadcast::Receiver<uvm::Transition>,
    start: State,
) -> Vec<uvm::Transition> {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut seen = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(t) => seen.push(t),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(n)) => panic!("transition observer lagged by {n}"),
        }
    }
    let mut cur = start;
    for t in &seen {
        assert_eq!(t.from, cur, "transitions do not chain: {seen:?}");
        assert_eq!(
            uvm::transition(t.from, t.event),
            Ok(t.to),
            "not in the table: {t:?}"
        );
        cur = t.to;
    }
    seen
}
