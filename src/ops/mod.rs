//! Operations: the HTTP endpoints that probes, load balancers and Prometheus read
//! (`/live`, `/ready`, `/health`, `/metrics`), served from the control runtime.
//!
//! Owns: the health server ([`health`]) and the Prometheus text rendering
//! ([`metrics`]). Everything here reads counters the engine, the call flow and the
//! providers already keep; nothing here touches a shard, a media socket or a call.
//!
//! Must not: block the runtime, expose per-call labels (a label per call would grow
//! without bound), or print a secret.

pub mod audit;
pub mod health;
pub mod latency;
pub mod metrics;
pub mod reload;
pub mod sdnotify;
