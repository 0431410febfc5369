//! An async QMP (QEMU Machine Protocol) client, generic over any
//! `AsyncRead + AsyncWrite` stream so tests can drive it over an in-memory pipe.
//!
//! One reader task owns the read half: it routes replies to the caller that
//! sent the matching `id`, and broadcasts events. Every command has its own
//! timeout; a reply that arrives after its caller gave up is dropped.

mod client;
mod event;

pub use client::{QmpClient, QmpError};
pub use event::{QmpEvent, SeenEvents};

#[cfg(test)]
mod tests;
