//! voxd: a media server for AI voice agents on Asterisk.
//!
//! The library holds everything the `voxd` binary runs, so that tests, benches and
//! fuzz targets can drive the same code. Layout (see `docs/architecture.md`):
//!
//! * [`config`]: the typed configuration, its YAML loader and its validation.
//! * [`media`]: sans-IO building blocks (framing, codecs, resampling, jitter buffer,
//!   playout, barge-in detection). No sockets, no clock, no tokio.
//! * [`call`]: the per-call state machine built from the media blocks; also sans-IO.
//! * [`engine`]: the shards (pinned threads, sockets, timer wheel, I/O backends), the
//!   rings to the control runtime, and the control-side dispatch to providers.
//! * [`provider`]: the `Provider` interface, its registry, and the in-process agents.
//! * [`ari`]: the Asterisk REST Interface client (REST, events WebSocket, TLS).
//! * [`loadgen`]: the load generator and the Asterisk/ARI emulators it drives.
//! * [`rng`]: the small deterministic PRNG shared by the simulators.

#![deny(unsafe_code)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod ari;
pub mod call;
pub mod config;
pub mod engine;
pub mod loadgen;
pub mod media;
pub mod ops;
pub mod provider;
pub mod rng;
