//! Per-shard metrics as the scraper sees them: each shard publishes a snapshot of
//! its counters (calls that ended plus calls still up) a few times a second; the
//! health endpoint sums the shards' snapshots when `/metrics` is read.
//!
//! Owns: [`ShardSnapshot`] and the slot each shard publishes into. The shard only
//! ever `try_lock`s its slot (a contended publish is skipped, never waited for), so
//! a slow scrape cannot stall a shard; nothing here runs per packet.
//!
//! Must not: be touched on the media path (publishing walks the live calls, which
//! is fine a few times a second and wrong per frame).

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

use super::shard::ShardStats;
use crate::call::MsHistogram;

/// How often a shard publishes, ms.
pub const PUBLISH_MS: u64 = 250;

/// Upper bounds (ms) of the RTP jitter buckets (RFC 3550 estimate of each live RTP
/// call, sampled at every publish).
pub const JITTER_BUCKETS_MS: [u64; 7] = [1, 2, 5, 10, 20, 40, 80];

/// Upper bounds (ms) of the playout depth buckets (agent audio queued per live
/// call, sampled at every publish).
pub const DEPTH_BUCKETS_MS: [u64; 7] = [0, 40, 80, 160, 320, 640, 1280];

/// RTP jitter samples per [`JITTER_BUCKETS_MS`].
pub type JitterHistogram = MsHistogram<8>;

/// One shard's numbers at its last publish.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardSnapshot {
    /// Counters, with the per-call ones summed over ended and live calls.
    pub stats: ShardStats,
    /// Calls up now.
    pub active_calls: u64,
    /// AudioSocket connections up now.
    pub audiosocket_connections: u64,
    /// Share of wall time the loop spent working (not waiting) since the last
    /// publish, 0..=1.
    pub busy_ratio: f64,
    /// Jitter samples of live RTP calls, all publishes so far.
    pub rtp_jitter: JitterHistogram,
    /// Playout depth samples of live calls (ms), all publishes so far.
    pub playout_depth: JitterHistogram,
}

impl ShardSnapshot {
    /// Add another shard's numbers (busy ratio: the caller averages).
    pub fn add(&mut self, o: &ShardSnapshot) {
        let a = &mut self.stats;
        let b = &o.stats;
        a.calls_started += b.calls_started;
        a.calls_ended += b.calls_ended;
        a.refused += b.refused;
        a.protocol_errors += b.protocol_errors;
        a.rtp_dropped += b.rtp_dropped;
        a.frames_out += b.frames_out;
        a.bridge_dropped += b.bridge_dropped;
        a.agent_audio_dropped += b.agent_audio_dropped;
        a.barge_in_reaction.merge(&b.barge_in_reaction);
        a.turn_response.merge(&b.turn_response);
        a.first_frame.merge(&b.first_frame);
        a.rtp_in += b.rtp_in;
        a.rtp_out += b.rtp_out;
        a.rtp_lost += b.rtp_lost;
        a.rtp_late += b.rtp_late;
        a.rtp_reordered += b.rtp_reordered;
        a.as_rx_bytes += b.as_rx_bytes;
        a.as_tx_bytes += b.as_tx_bytes;
        a.underflows += b.underflows;
        a.frames_to_caller += b.frames_to_caller;
        self.active_calls += o.active_calls;
        self.audiosocket_connections += o.audiosocket_connections;
        self.busy_ratio += o.busy_ratio;
        self.rtp_jitter.merge(&o.rtp_jitter);
        self.playout_depth.merge(&o.playout_depth);
    }
}

/// The slots of all shards, shared by the shards (one writer each) and the
/// scraper.
#[derive(Debug)]
pub struct Published {
    slots: Vec<Mutex<ShardSnapshot>>,
}

impl Published {
    /// Empty snapshots for `shards` shards.
    pub fn new(shards: usize) -> Arc<Published> {
        Arc::new(Published {
            slots: (0..shards)
                .map(|_| Mutex::new(ShardSnapshot::default()))
                .collect(),
        })
    }

    /// Shard `index` publishes `snap`; skipped (returns false) if a reader holds
    /// the slot right now.
    pub fn publish(&self, index: usize, snap: &ShardSnapshot) -> bool {
        match self.slots.get(index).map(Mutex::try_lock) {
            Some(Ok(mut slot)) => {
                *slot = *snap;
                true
            }
            _ => false,
        }
    }

    /// Every shard's last snapshot, in shard order.
    pub fn shards(&self) -> Vec<ShardSnapshot> {
        self.slots
            .iter()
            .map(|m| *m.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_read_and_sum() {
        let p = Published::new(2);
        let mut a = ShardSnapshot::default();
        a.stats.rtp_in = 5;
        a.active_calls = 2;
        a.busy_ratio = 0.25;
        assert!(p.publish(0, &a));
        assert!(p.publish(1, &a));
        assert!(!p.publish(7, &a), "no such shard");
        let shards = p.shards();
        let mut total = ShardSnapshot::default();
        for s in &shards {
            total.add(s);
        }
        assert_eq!(total.stats.rtp_in, 10);
        assert_eq!(total.active_calls, 4);
        assert!((total.busy_ratio - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_held_slot_is_skipped_not_waited_for() {
        let p = Published::new(1);
        let guard = p.slots[0].lock().unwrap();
        assert!(!p.publish(0, &ShardSnapshot::default()));
        drop(guard);
        assert!(p.publish(0, &ShardSnapshot::default()));
    }
}
