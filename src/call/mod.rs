//! The per-call state machine, built from the `media/` parts.
//!
//! Owns: what happens to one call's audio between the caller (Asterisk) and the
//! agent (provider): decode, reorder, barge-in detection, resampling, paced playout,
//! encode. Inputs carry their time; outputs say what to send and when to wake.
//!
//! Must not: import `engine`, `ari`, `provider`, `ops` or tokio, read the clock, or
//! touch a socket. A call is driven at any speed: tests run minutes of call in
//! milliseconds.

#![forbid(unsafe_code)]

pub mod codec;
pub mod machine;

pub use codec::Codec;
pub use machine::{
    BargeInSource, Call, CallConfig, CallError, CallStats, Input, LatencySamples, MsHistogram,
    Output, ReactionHistogram, TurnHistogram, BARGE_IN_BUCKETS_MS, FIRST_FRAME_BUCKETS_MS,
    TURN_BUCKETS_MS,
};

#[cfg(test)]
mod tests;
