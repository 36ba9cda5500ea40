//! Inbound jitter buffer for the caller's RTP audio.
//!
//! Owns: reordering of 20 ms frames keyed on extended (64-bit) sequence numbers,
//! loss / late / duplicate accounting, concealment of lost frames, and the depth
//! report. The first frame of a call is held for `depth_ms` (so a reordered first
//! pair is repaired); after that frames leave as soon as they are in order (no added
//! delay on a clean network); a gap is held open for at most `depth_ms` (or until `depth_ms` of later
//! frames are waiting), then the missing frame is concealed: the last frame repeated
//! at half the amplitude per repeat, silence after three.
//!
//! Must not: read the clock (arrival time is passed in), decode codecs (frames arrive
//! as samples), or allocate after construction.

#![forbid(unsafe_code)]

use super::FRAME_MS;

/// Repeats of the last frame before concealment turns to silence.
const MAX_REPEATS: u32 = 3;

/// What `push` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored; it leaves with `pop_ready` when its turn comes.
    Stored,
    /// Its frame was already played or concealed: dropped and counted as late.
    Late,
    /// Same sequence number already stored: dropped and counted.
    Duplicate,
    /// So far ahead that the buffer resynchronised on it (everything older was given
    /// up and counted as lost).
    Resync,
    /// Payload is not one frame long: dropped and counted.
    WrongSize,
}

/// How a frame from `pop_ready` came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopKind {
    /// The real frame.
    Frame,
    /// A lost frame, concealed.
    Concealed,
}

/// Counters (summed per shard by the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets stored.
    pub received: u64,
    /// Frames given up as lost (concealed or skipped on resync).
    pub lost: u64,
    /// Packets that came after their frame was played.
    pub late: u64,
    /// Duplicate packets.
    pub duplicate: u64,
    /// Packets that arrived out of order but in time.
    pub reordered: u64,
    /// Frames concealed.
    pub concealed: u64,
    /// Resynchronisations (sequence jumps).
    pub resyncs: u64,
    /// Packets of the wrong size.
    pub wrong_size: u64,
}

/// The per-call jitter buffer.
#[derive(Debug)]
pub struct JitterBuffer {
    frame: usize,
    depth_ms: u32,
    slots: usize,
    samples: Box<[i16]>,
    seqs: Box<[Option<u64>]>,
    /// Next sequence number to leave; `None` until the first packet.
    next: Option<u64>,
    /// When the first packet arrived; frames start leaving `depth_ms` later (or once
    /// `depth_ms` of frames wait), so a reordered first pair is still repaired.
    first_at: Option<u64>,
    /// Whether frames have started leaving.
    started: bool,
    /// Highest sequence stored.
    highest: u64,
    stored: usize,
    /// When a frame beyond a gap first waited (for the `depth_ms` deadline).
    gap_since: Option<u64>,
    last: Box<[i16]>,
    repeats: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer for frames of `frame_samples` samples that waits at most `depth_ms`
    /// for a missing frame. Capacity is `depth_ms` of frames plus slack; this is the
    /// only allocation.
    pub fn new(frame_samples: usize, depth_ms: u32) -> Self {
        let depth_frames = (depth_ms as usize).div_ceil(FRAME_MS as usize).max(1);
        let slots = (depth_frames * 2 + 2).next_power_of_two();
        JitterBuffer {
            frame: frame_samples,
            depth_ms,
            slots,
            samples: vec![0; slots * frame_samples].into_boxed_slice(),
            seqs: vec![None; slots].into_boxed_slice(),
            next: None,
            first_at: None,
            started: false,
            highest: 0,
            stored: 0,
            gap_since: None,
            last: vec![0; frame_samples].into_boxed_slice(),
            repeats: 0,
            stats: JitterStats::default(),
        }
    }

    /// Samples per frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Audio waiting, in milliseconds (stored frames × 20 ms).
    pub fn depth_ms(&self) -> u32 {
        self.stored as u32 * FRAME_MS
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn depth_frames(&self) -> u64 {
        (u64::from(self.depth_ms))
            .div_ceil(u64::from(FRAME_MS))
            .max(1)
    }

    /// Store a packet with extended sequence number `seq`, arrived at `now_ms`.
    pub fn push(&mut self, now_ms: u64, seq: u64, frame: &[i16]) -> PushOutcome {
        if frame.len() != self.frame {
            self.stats.wrong_size += 1;
            return PushOutcome::WrongSize;
        }
        let mut next = *self.next.get_or_insert(seq);
        self.first_at.get_or_insert(now_ms);
        if seq < next && !self.started && self.highest.saturating_sub(seq) < self.slots as u64 {
            // Before the first frame left, an earlier packet moves the start back.
            self.next = Some(seq);
            next = seq;
        }
        if seq < next {
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        let mut outcome = PushOutcome::Stored;
        if seq >= next + self.slots as u64 {
            // Too far ahead to hold: give up everything before it.
            let skipped = seq - next;
            let waiting = self.stored as u64;
            self.stats.lost += skipped - waiting;
            self.stats.resyncs += 1;
            self.seqs.fill(None);
            self.stored = 0;
            self.next = Some(seq);
            self.gap_since = None;
            outcome = PushOutcome::Resync;
        }
        let slot = (seq % self.slots as u64) as usize;
        if self.seqs[slot] == Some(seq) {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        self.samples[slot * self.frame..(slot + 1) * self.frame].copy_from_slice(frame);
        self.seqs[slot] = Some(seq);
        self.stored += 1;
        self.stats.received += 1;
        if self.stored > 1 && seq < self.highest {
            self.stats.reordered += 1;
        }
        self.highest = self.highest.max(seq);
        if seq != self.next.unwrap_or(seq) && self.gap_since.is_none() {
            self.gap_since = Some(now_ms);
        }
        outcome
    }

    /// Take the next frame into `out` (one frame long) if it may leave at `now_ms`: it
    /// is there, or it is missing and the gap deadline passed (then it is concealed).
    /// Call in a loop until `None`.
    pub fn pop_ready(&mut self, now_ms: u64, out: &mut [i16]) -> Option<PopKind> {
        let next = self.next?;
        if !self.started {
            let waited = self
                .first_at
                .is_some_and(|t| now_ms >= t + u64::from(self.depth_ms));
            if !(waited || self.stored as u64 >= self.depth_frames()) {
                return None;
            }
            self.started = true;
        }
        let slot = (next % self.slots as u64) as usize;
        if self.seqs[slot] == Some(next) {
            out.copy_from_slice(&self.samples[slot * self.frame..(slot + 1) * self.frame]);
            self.last.copy_from_slice(out);
            self.seqs[slot] = None;
            self.stored -= 1;
            self.repeats = 0;
            self.advance(now_ms);
            return Some(PopKind::Frame);
        }
        if self.stored == 0 {
            return None;
        }
        let waited = self
            .gap_since
            .is_some_and(|t| now_ms >= t + u64::from(self.depth_ms));
        let piled = (self.highest - next) >= self.depth_frames();
        if !(waited || piled) {
            return None;
        }
        self.conceal(out);
        self.stats.lost += 1;
        self.stats.concealed += 1;
        self.advance(now_ms);
        Some(PopKind::Concealed)
    }

    /// After `next` left: move on, and restart the gap clock if the new head is still
    /// missing while later frames wait.
    fn advance(&mut self, now_ms: u64) {
        let next = self.next.unwrap_or(0) + 1;
        self.next = Some(next);
        let slot = (next % self.slots as u64) as usize;
        if self.stored == 0 || self.seqs[slot] == Some(next) {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now_ms);
        }
    }

    fn conceal(&mut self, out: &mut [i16]) {
        self.repeats += 1;
        if self.repeats > MAX_REPEATS {
            out.fill(0);
            return;
        }
        let shift = self.repeats;
        for (o, &s) in out.iter_mut().zip(self.last.iter()) {
            *o = s >> shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 160;

    fn frame(seq: u64) -> Vec<i16> {
        vec![(seq as i16).wrapping_mul(7).wrapping_add(1000); F]
    }

    fn drain(jb: &mut JitterBuffer, now: u64) -> Vec<(PopKind, i16)> {
        let mut v = Vec::new();
        let mut out = vec![0; F];
        while let Some(k) = jb.pop_ready(now, &mut out) {
            v.push((k, out[0]));
        }
        v
    }

    #[test]
    fn first_frame_waits_depth_then_in_order_frames_leave_at_once() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 99, &frame(99));
        assert!(drain(&mut jb, 59).is_empty(), "start is held for depth_ms");
        assert_eq!(drain(&mut jb, 60), vec![(PopKind::Frame, frame(99)[0])]);
        for s in 100..110u64 {
            assert_eq!(jb.push(s * 20, s, &frame(s)), PushOutcome::Stored);
            let out = drain(&mut jb, s * 20);
            assert_eq!(out, vec![(PopKind::Frame, frame(s)[0])]);
        }
        assert_eq!(jb.depth_ms(), 0);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn reorder_within_depth_is_repaired() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 1, &frame(1));
        assert_eq!(drain(&mut jb, 60).len(), 1);
        jb.push(80, 3, &frame(3)); // 2 is late
        assert!(drain(&mut jb, 80).is_empty(), "waits for the gap");
        assert_eq!(jb.depth_ms(), 20);
        jb.push(90, 2, &frame(2));
        let out = drain(&mut jb, 90);
        assert_eq!(
            out,
            vec![(PopKind::Frame, frame(2)[0]), (PopKind::Frame, frame(3)[0])]
        );
        assert_eq!(jb.stats().reordered, 1);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn loss_is_concealed_after_depth_and_late_packet_counted() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 1, &frame(1));
        drain(&mut jb, 60);
        jb.push(100, 3, &frame(3));
        assert!(drain(&mut jb, 140).is_empty());
        let out = drain(&mut jb, 160); // 100 + 60
        assert_eq!(out[0].0, PopKind::Concealed);
        assert_eq!(out[0].1, frame(1)[0] >> 1, "repeat at half amplitude");
        assert_eq!(out[1], (PopKind::Frame, frame(3)[0]));
        assert_eq!(jb.stats().lost, 1);
        assert_eq!(jb.push(120, 2, &frame(2)), PushOutcome::Late);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn pile_up_releases_without_waiting_for_the_clock() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 10, &frame(10));
        drain(&mut jb, 60);
        for s in 12..=14 {
            jb.push(61, s, &frame(s));
        }
        // 3 frames (60 ms) wait behind the gap: conceal 11 now.
        let out = drain(&mut jb, 61);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].0, PopKind::Concealed);
    }

    #[test]
    fn duplicates_and_wrong_sizes_are_dropped() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 5, &frame(5));
        jb.push(0, 6, &frame(6));
        assert_eq!(jb.push(0, 6, &frame(6)), PushOutcome::Duplicate);
        assert_eq!(jb.push(0, 7, &[0; 10]), PushOutcome::WrongSize);
        assert_eq!(drain(&mut jb, 60).len(), 2);
        assert_eq!(jb.stats().duplicate, 1);
        assert_eq!(jb.stats().wrong_size, 1);
    }

    #[test]
    fn big_jump_resyncs_and_counts_loss() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 1, &frame(1));
        drain(&mut jb, 60);
        assert_eq!(jb.push(80, 1001, &frame(1001)), PushOutcome::Resync);
        assert_eq!(drain(&mut jb, 80), vec![(PopKind::Frame, frame(1001)[0])]);
        assert_eq!(jb.stats().lost, 999);
        assert_eq!(jb.stats().resyncs, 1);
    }

    #[test]
    fn concealment_fades_to_silence() {
        let mut jb = JitterBuffer::new(F, 100);
        jb.push(0, 0, &[8000; F]);
        drain(&mut jb, 100);
        jb.push(100, 6, &frame(6));
        let out = drain(&mut jb, 1000);
        let vals: Vec<i16> = out.iter().map(|x| x.1).collect();
        assert_eq!(vals[..5], [4000, 2000, 1000, 0, 0]);
        assert_eq!(jb.stats().concealed, 5);
    }

    #[test]
    fn a_swapped_first_pair_is_repaired() {
        let mut jb = JitterBuffer::new(F, 60);
        jb.push(0, 501, &frame(501));
        jb.push(5, 500, &frame(500));
        jb.push(20, 502, &frame(502));
        let out = drain(&mut jb, 60);
        let want: Vec<_> = (500..503).map(|s| (PopKind::Frame, frame(s)[0])).collect();
        assert_eq!(out, want);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn random_reorder_within_depth_loses_nothing() {
        // Deterministic shuffle inside windows of 3 frames (depth 60 ms).
        let mut jb = JitterBuffer::new(F, 60);
        let mut order: Vec<u64> = (0..3000).collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for w in order.chunks_mut(3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.rotate_left((x % 3) as usize);
        }
        let mut got = Vec::new();
        for (i, &s) in order.iter().enumerate() {
            jb.push(i as u64 * 20, s, &frame(s));
            got.extend(drain(&mut jb, i as u64 * 20));
        }
        assert_eq!(got.len(), 3000);
        assert!(got.iter().all(|(k, _)| *k == PopKind::Frame));
        let want: Vec<i16> = (0..3000).map(|s| frame(s)[0]).collect();
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), want);
        assert_eq!(jb.stats().lost, 0);
    }
}
