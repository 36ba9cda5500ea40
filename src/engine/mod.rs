//! The thread-per-core engine: shards, their I/O backends, timer wheels and the
//! bridge to the control runtime. See `docs/engine.md` for the design.
//!
//! Owns: every syscall on media sockets (AudioSocket TCP, RTP UDP), the pacing
//! clock, and the shard threads. Must not: lock on the hot path, allocate per
//! frame, or touch provider connections (those live on the control runtime).

pub mod allow;
pub mod asconn;
pub mod bind;
pub mod bridge;
pub mod control;
pub mod io;
pub mod lifecycle;
pub mod published;
pub mod runner;
pub mod shard;
pub mod timer;
