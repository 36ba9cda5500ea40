//! The `sim` provider: a simulated AI agent that behaves like a network provider
//! (server-side VAD, think time, bursty reply audio, barge-in) without a network.
//!
//! Owns: the sans-IO agent ([`agent`]: turn detection, reply scheduling, the
//! speech-like synthesizer; no tokio, no clock) and the thin tokio session around it
//! ([`session`]: codec conversion, timers, channels).
//!
//! Must not: read the clock outside `session.rs`, touch sockets, or resample: a sim
//! session speaks the caller's codec both ways and synthesizes at its rate.

#![forbid(unsafe_code)]

pub mod agent;
pub mod session;

pub use agent::{SimAction, SimAgent, SimConfig, SimStats};
pub use session::SimProvider;
