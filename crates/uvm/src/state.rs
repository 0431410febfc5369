//! The lifecycle state machine: one transition function, one table.

use std::fmt;

/// Where a VM is in its lifecycle (the seed's `State`).
///
/// ```text
/// NotCreated ──create ok──► Created ──start ok──► Running ──exit / terminate ok──► Terminated
///                              │  └─start fails / terminate fails─► Invalid ──terminate ok / exit─┘
///                              └──────────────terminate ok──────────────────────────────────────►
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Initial state: nothing created yet.
    NotCreated,
    /// The VM exists (vCPUs stopped) but has not started.
    Created,
    /// The guest is up and the GCS connection is established.
    Running,
    /// The VM exited or was terminated. Terminal.
    Terminated,
    /// Start or terminate failed; only `terminate_vm` can clean up.
    Invalid,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::NotCreated => "NotCreated",
            State::Created => "Created",
            State::Running => "Running",
            State::Terminated => "Terminated",
            State::Invalid => "Invalid",
        })
    }
}

/// What happened to the VM: the input of [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// `create_vm` succeeded.
    CreateOk,
    /// `start_vm` succeeded.
    StartOk,
    /// `start_vm` failed (or was aborted) after it began.
    StartFailed,
    /// `terminate_vm` succeeded.
    TerminateOk,
    /// `terminate_vm` failed (terminate or close of the VM).
    TerminateFailed,
    /// The VM process exited on its own.
    VmExited,
}

impl Event {
    /// Every event, for table tests.
    pub const ALL: [Event; 6] = [
        Event::CreateOk,
        Event::StartOk,
        Event::StartFailed,
        Event::TerminateOk,
        Event::TerminateFailed,
        Event::VmExited,
    ];
}

impl State {
    /// Every state, for table tests.
    pub const ALL: [State; 5] = [
        State::NotCreated,
        State::Created,
        State::Running,
        State::Terminated,
        State::Invalid,
    ];
}

/// One applied step of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// What happened.
    pub event: Event,
    /// State after (`transition(from, event)`).
    pub to: State,
}

/// An event that the table does not allow in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {event:?} in state {from}")]
pub struct InvalidTransition {
    /// The state.
    pub from: State,
    /// The refused event.
    pub event: Event,
}

/// The state machine of DESIGN §3 (the seed's table). The only place a next
/// state is computed. A failed terminate from `Invalid` stays `Invalid`.
pub fn transition(from: State, event: Event) -> Result<State, InvalidTransition> {
    use Event::*;
    use State::*;
    match (from, event) {
        (NotCreated, CreateOk) => Ok(Created),
        (Created, StartOk) => Ok(Running),
        (Created, StartFailed) => Ok(Invalid),
        (Created, TerminateOk) => Ok(Terminated),
        (Created | Running | Invalid, TerminateFailed) => Ok(Invalid),
        (Running, VmExited | TerminateOk) => Ok(Terminated),
        (Invalid, TerminateOk | VmExited) => Ok(Terminated),
        _ => Err(InvalidTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;
    use State::*;

    #[test]
    fn every_state_event_pair() {
        let table: &[(State, Event, Option<State>)] = &[
            (NotCreated, CreateOk, Some(Created)),
            (NotCreated, StartOk, None),
            (NotCreated, StartFailed, None),
            (NotCreated, TerminateOk, None),
            (NotCreated, TerminateFailed, None),
            (NotCreated, VmExited, None),
            (Created, CreateOk, None),
            (Created, StartOk, Some(Running)),
            (Created, StartFailed, Some(Invalid)),
            (Created, TerminateOk, Some(Terminated)),
            (Created, TerminateFailed, Some(Invalid)),
            (Created, VmExited, None),
            (Running, CreateOk, None),
            (Running, StartOk, None),
            (Running, StartFailed, None),
            (Running, TerminateOk, Some(Terminated)),
            (Running, TerminateFailed, Some(Invalid)),
            (Running, VmExited, Some(Terminated)),
            (Terminated, CreateOk, None),
            (Terminated, StartOk, None),
            (Terminated, StartFailed, None),
            (Terminated, TerminateOk, None),
            (Terminated, TerminateFailed, None),
            (Terminated, VmExited, None),
            (Invalid, CreateOk, None),
            (Invalid, StartOk, None),
            (Invalid, StartFailed, None),
            (Invalid, TerminateOk, Some(Terminated)),
            (Invalid, TerminateFailed, Some(Invalid)),
            (Invalid, VmExited, Some(Terminated)),
        ];
        assert_eq!(table.len(), State::ALL.len() * Event::ALL.len());
        for s in State::ALL {
            for e in Event::ALL {
                let want = table
                    .iter()
                    .find(|(ts, te, _)| *ts == s && *te == e)
                    .unwrap()
                    .2;
                assert_eq!(transition(s, e).ok(), want, "{s} + {e:?}");
            }
        }
    }

    #[test]
    fn display_names() {
        let names: Vec<_> = State::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            ["NotCreated", "Created", "Running", "Terminated", "Invalid"]
        );
    }
}
