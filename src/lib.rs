//! voxd: a media server for AI voice agents on Asterisk.
//!
//! The library holds everything the `voxd` binary runs, so that tests, benches and
//! fuzz targets can drive the same code. Layout (see `docs/architecture.md`):
//!
//! * [`config`]: the typed configuration, its YAML loader and its validation.
//! * [`media`]: sans-IO building blocks (framing, codecs, resampling, jitter buffer,
//!   playout, barge-in detection). No sockets, no clock, no tokio.
//! * [`call`]: the per-call state machine built from the media blocks; also sans-IO.
//!
//! Engine (shards, sockets), ARI and providers arrive with later issues; until then
//! `voxd serve` validates its configuration and refuses to start with a clear error.

#![deny(unsafe_code)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod call;
pub mod config;
pub mod engine;
pub mod loadgen;
pub mod media;
pub mod provider;
pub mod rng;
