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

use hdrhistogram::Histogram;

use super::shard::ShardStats;
use crate::call::{LatencySamples, MsHistogram};
use crate::ops::latency;

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
        a.read_timeouts += b.read_timeouts;
        a.rtp_rate_limited += b.rtp_rate_limited;
        a.as_ignored_frames += b.as_ignored_frames;
        self.active_calls += o.active_calls;
        self.audiosocket_connections += o.audiosocket_connections;
        self.busy_ratio += o.busy_ratio;
        self.rtp_jitter.merge(&o.rtp_jitter);
        self.playout_depth.merge(&o.playout_depth);
    }
}

/// One shard's latency samples (us, hdrhistogram with [`latency::empty`]'s
/// bounds): the source of the percentiles in `/health`. Recording and copying
/// never allocate (the histograms are sized at creation).
#[derive(Debug, Clone)]
pub struct ShardLatency {
    /// Caller's last loud frame to the first frame of the agent's answer.
    pub turn_response: Histogram<u64>,
    /// Barge-in to the first silent frame.
    pub barge_in_reaction: Histogram<u64>,
    /// Provider audio of a new utterance to its first frame on the wire.
    pub first_frame: Histogram<u64>,
}

impl Default for ShardLatency {
    fn default() -> Self {
        ShardLatency {
            turn_response: latency::empty(),
            barge_in_reaction: latency::empty(),
            first_frame: latency::empty(),
        }
    }
}

impl ShardLatency {
    /// Adds one call tick's samples (ms, kept as us).
    pub fn record(&mut self, s: LatencySamples) {
        let us = |ms: u64| ms.saturating_mul(1000).clamp(1, latency::MAX_US);
        if let Some(ms) = s.turn_response_ms {
            let _ = self.turn_response.record(us(ms));
        }
        if let Some(ms) = s.barge_in_reaction_ms {
            let _ = self.barge_in_reaction.record(us(ms));
        }
        if let Some(ms) = s.first_frame_ms {
            let _ = self.first_frame.record(us(ms));
        }
    }

    /// Adds another shard's samples.
    pub fn add(&mut self, o: &ShardLatency) {
        let _ = self.turn_response.add(&o.turn_response);
        let _ = self.barge_in_reaction.add(&o.barge_in_reaction);
        let _ = self.first_frame.add(&o.first_frame);
    }

    /// Becomes a copy of `o` (same bounds: no allocation).
    pub fn copy_from(&mut self, o: &ShardLatency) {
        self.turn_response.reset();
        self.barge_in_reaction.reset();
        self.first_frame.reset();
        self.add(o);
    }
}

/// The slots of all shards, shared by the shards (one writer each) and the
/// scraper.
#[derive(Debug)]
pub struct Published {
    slots: Vec<Mutex<ShardSnapshot>>,
    latency: Vec<Mutex<ShardLatency>>,
}

impl Published {
    /// Empty snapshots for `shards` shards.
    pub fn new(shards: usize) -> Arc<Published> {
        Arc::new(Published {
            slots: (0..shards)
                .map(|_| Mutex::new(ShardSnapshot::default()))
                .collect(),
            latency: (0..shards)
                .map(|_| Mutex::new(ShardLatency::default()))
                .collect(),
        })
    }

    /// Shard `index` publishes its latency samples; skipped (returns false) if a
    /// reader holds the slot right now.
    pub fn publish_latency(&self, index: usize, l: &ShardLatency) -> bool {
        match self.latency.get(index).map(Mutex::try_lock) {
            Some(Ok(mut slot)) => {
                slot.copy_from(l);
                true
            }
            _ => false,
        }
    }

    /// Every shard's last latency samples, in shard order.
    pub fn latency(&self) -> Vec<ShardLatency> {
        self.latency
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
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
    fn latency_samples_publish_and_sum() {
        let p = Published::new(2);
        let mut a = ShardLatency::default();
        a.record(LatencySamples {
            turn_response_ms: Some(700),
            barge_in_reaction_ms: Some(12),
            first_frame_ms: None,
        });
        assert!(p.publish_latency(0, &a));
        a.record(LatencySamples {
            turn_response_ms: Some(900),
            ..Default::default()
        });
        assert!(p.publish_latency(1, &a));
        assert!(
            p.publish_latency(0, &ShardLatency::default()),
            "republish replaces"
        );
        let mut total = ShardLatency::default();
        for l in p.latency() {
            total.add(&l);
        }
        assert_eq!(total.turn_response.len(), 2);
        assert_eq!(total.barge_in_reaction.len(), 1);
        assert_eq!(total.first_frame.len(), 0);
        let s = latency::Summary::of(&total.turn_response);
        assert!((s.max_ms - 900.0).abs() < 9.0, "{s:?}");
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
