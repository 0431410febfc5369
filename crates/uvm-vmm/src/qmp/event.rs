//! QMP events the backend cares about.

use serde_json::Value;

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    /// `SHUTDOWN`: QEMU is about to exit (or stop, with `-no-shutdown`).
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// QEMU's reason (`guest-shutdown`, `guest-reset`, `guest-panic`,
        /// `host-qmp-quit`, `host-signal`, ...).
        reason: String,
    },
    /// `GUEST_PANICKED`: the guest reported a panic (pvpanic).
    GuestPanicked {
        /// What QEMU does about it (`pause`, `poweroff`, `run`).
        action: String,
    },
    /// `STOP`: the vCPUs stopped.
    Stop,
    /// `RESUME`: the vCPUs resumed.
    Resume,
    /// Any other event.
    Other {
        /// Event name.
        name: String,
        /// Event data (`null` if none).
        data: Value,
    },
}

impl QmpEvent {
    /// Decodes an event message (`{"event": ..., "data": ...}`).
    pub fn from_message(msg: &Value) -> Option<QmpEvent> {
        let name = msg.get("event")?.as_str()?;
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let s = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(match name {
            "SHUTDOWN" => QmpEvent::Shutdown {
                guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
                reason: s("reason"),
            },
            "GUEST_PANICKED" => QmpEvent::GuestPanicked {
                action: s("action"),
            },
            "STOP" => QmpEvent::Stop,
            "RESUME" => QmpEvent::Resume,
            _ => QmpEvent::Other {
                name: name.to_string(),
                data,
            },
        })
    }
}

/// What the client has seen so far of the events that decide an exit reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenEvents {
    /// Reason of the last `SHUTDOWN` event.
    pub shutdown_reason: Option<String>,
    /// Whether a `GUEST_PANICKED` event arrived.
    pub panicked: bool,
}

impl SeenEvents {
    pub(crate) fn record(&mut self, ev: &QmpEvent) {
        match ev {
            QmpEvent::Shutdown { reason, .. } => self.shutdown_reason = Some(reason.clone()),
            QmpEvent::GuestPanicked { .. } => self.panicked = true,
            _ => {}
        }
    }
}
