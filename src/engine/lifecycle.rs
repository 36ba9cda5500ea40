//! Process-wide lifecycle facts the shards and the control runtime share: whether
//! voxd is draining (SIGTERM: no new calls) and each shard loop's heartbeat (the
//! systemd watchdog is pinged only while every shard loop is turning).
//!
//! Owns: one `draining` flag (written once by the owner, read by shards when a call
//! would start, never per packet) and one heartbeat per shard (a relaxed store by
//! that shard once per loop turn, its only writer).
//!
//! Must not: hold locks, or be read on the per-packet path.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared lifecycle state; one per engine.
#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    heartbeats: Box<[AtomicU64]>,
}

impl Lifecycle {
    /// State for `shards` shards, not draining, heartbeats at `now_ms`.
    pub fn new(shards: usize, now_ms: u64) -> Lifecycle {
        Lifecycle {
            draining: AtomicBool::new(false),
            heartbeats: (0..shards).map(|_| AtomicU64::new(now_ms)).collect(),
        }
    }

    /// Stop taking new calls (calls already up go on).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether new calls are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Shard `index` turned its loop at `now_ms`.
    pub fn beat(&self, index: usize, now_ms: u64) {
        if let Some(h) = self.heartbeats.get(index) {
            h.store(now_ms, Ordering::Relaxed);
        }
    }

    /// How long ago (ms, at `now_ms`) the slowest shard last turned its loop.
    pub fn stalest_ms(&self, now_ms: u64) -> u64 {
        self.heartbeats
            .iter()
            .map(|h| now_ms.saturating_sub(h.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalest_shard_decides() {
        let l = Lifecycle::new(2, 100);
        l.beat(0, 1000);
        assert_eq!(l.stalest_ms(1000), 900, "shard 1 never turned");
        l.beat(1, 990);
        assert_eq!(l.stalest_ms(1000), 10);
        assert!(!l.is_draining());
        l.drain();
        assert!(l.is_draining());
    }
}
