//! Outbound playout: the agent's audio queued for the caller, one 20 ms frame a tick.
//!
//! Owns: a fixed-capacity sample ring per call and the playout policy, with the
//! reference engine's knobs in milliseconds:
//!
//! * `jitter_buffer_ms`: capacity. `push` accepts what fits and says how much; the
//!   caller keeps the rest (nothing is dropped silently).
//! * `min_start_ms`: an utterance starts playing once this much audio is queued (or
//!   the provider said it is complete).
//! * `low_watermark_ms`: after an underflow, playing resumes once this much is queued.
//! * `provider_grace_ms`: if the queue stays empty this long mid-utterance without an
//!   end mark, the utterance is taken as ended (the provider just went quiet).
//!
//! Underflow is counted only while the agent is mid-utterance (started, not marked
//! complete, queue empty). `flush()` is the barge-in: it drops the queue and returns
//! how many milliseconds of the utterance the caller actually heard.
//!
//! Must not: read the clock (time is passed in), allocate after construction, or know
//! about codecs or sockets: samples in, samples out.

#![forbid(unsafe_code)]

use super::FRAME_MS;

/// Playout knobs, in milliseconds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Queue capacity.
    pub jitter_buffer_ms: u32,
    /// Audio queued before the first frame of an utterance goes out.
    pub min_start_ms: u32,
    /// Audio queued before playing resumes after an underflow.
    pub low_watermark_ms: u32,
    /// Quiet time after which an unfinished utterance is taken as ended.
    pub provider_grace_ms: u32,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            jitter_buffer_ms: 950,
            min_start_ms: 120,
            low_watermark_ms: 80,
            provider_grace_ms: 200,
        }
    }
}

/// Where the current utterance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayoutState {
    /// No agent audio: ticks give silence.
    Idle,
    /// Utterance started, waiting for `min_start_ms` of audio.
    Buffering,
    /// Frames go out.
    Playing,
    /// Queue ran dry mid-utterance; waiting for `low_watermark_ms` or the grace time.
    Starved,
}

/// What a tick put into the output frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// A frame of agent audio; `first` marks the start of a talk spurt (RTP marker).
    Audio {
        /// First frame since the last silence.
        first: bool,
    },
    /// Silence: idle, buffering, or starved.
    Silence,
}

/// What a barge-in flush reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushReport {
    /// Milliseconds of the current utterance played to the caller.
    pub played_ms: u32,
    /// Milliseconds of queued audio dropped.
    pub dropped_ms: u32,
    /// Whether an utterance was active at all.
    pub was_active: bool,
}

/// Counters (summed per shard by the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Frames of agent audio sent.
    pub frames_played: u64,
    /// Silence frames sent.
    pub silence_frames: u64,
    /// Times the queue ran dry mid-utterance.
    pub underflow_events: u64,
    /// Silence frames sent while starved mid-utterance.
    pub underflow_frames: u64,
    /// Utterances started.
    pub utterances: u64,
    /// Barge-in flushes of an active utterance.
    pub flushes: u64,
    /// Samples `push` could not take because the queue was full (the caller kept them).
    pub refused_samples: u64,
}

/// Per-call playout queue at one sample rate.
#[derive(Debug)]
pub struct Playout {
    cfg: PlayoutConfig,
    frame: usize,
    samples_per_ms: usize,
    ring: Box<[i16]>,
    head: usize,
    len: usize,
    state: PlayoutState,
    end_marked: bool,
    starved_since: u64,
    played_samples: u64,
    last_was_audio: bool,
    stats: PlayoutStats,
}

impl Playout {
    /// A queue for `samples_per_ms` (8 at 8 kHz) with these knobs. The ring holds
    /// `jitter_buffer_ms` rounded up to whole frames; this is the only allocation.
    pub fn new(cfg: PlayoutConfig, samples_per_ms: usize) -> Self {
        let frame = samples_per_ms * FRAME_MS as usize;
        let frames = (cfg.jitter_buffer_ms.max(FRAME_MS) as usize).div_ceil(FRAME_MS as usize);
        Playout {
            cfg,
            frame,
            samples_per_ms,
            ring: vec![0; frames * frame].into_boxed_slice(),
            head: 0,
            len: 0,
            state: PlayoutState::Idle,
            end_marked: false,
            starved_since: 0,
            played_samples: 0,
            last_was_audio: false,
            stats: PlayoutStats::default(),
        }
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Replace the watermarks (live reload). Capacity stays as built.
    pub fn set_config(&mut self, cfg: PlayoutConfig) {
        self.cfg = PlayoutConfig {
            jitter_buffer_ms: self.cfg.jitter_buffer_ms,
            ..cfg
        };
    }

    /// The state of the current utterance.
    pub fn state(&self) -> PlayoutState {
        self.state
    }

    /// True while an utterance is in progress (buffering, playing or starved): the
    /// agent is "speaking" for barge-in purposes.
    pub fn is_active(&self) -> bool {
        self.state != PlayoutState::Idle
    }

    /// Queued audio in milliseconds.
    pub fn depth_ms(&self) -> u32 {
        (self.len / self.samples_per_ms.max(1)) as u32
    }

    /// Free room in samples.
    pub fn free_samples(&self) -> usize {
        self.ring.len() - self.len
    }

    /// Counters so far.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Queue agent audio. Returns how many samples were taken (all of them unless the
    /// queue is full); the caller keeps the rest and offers it again later.
    pub fn push(&mut self, samples: &[i16]) -> usize {
        let n = samples.len().min(self.free_samples());
        if n < samples.len() {
            self.stats.refused_samples += (samples.len() - n) as u64;
        }
        if n == 0 {
            return 0;
        }
        if self.state == PlayoutState::Idle {
            self.state = PlayoutState::Buffering;
            self.end_marked = false;
            self.played_samples = 0;
            self.stats.utterances += 1;
        }
        let cap = self.ring.len();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.ring[tail..tail + first].copy_from_slice(&samples[..first]);
        self.ring[..n - first].copy_from_slice(&samples[first..n]);
        self.len += n;
        n
    }

    /// The provider says the current utterance is complete: play what is queued, then
    /// go idle without counting an underflow.
    pub fn mark_end(&mut self) {
        if self.state != PlayoutState::Idle {
            self.end_marked = true;
        }
    }

    /// One pacing tick at `now_ms`: fill `out` (exactly one frame, `frame_samples()`
    /// long) with agent audio or silence and say which.
    pub fn tick(&mut self, now_ms: u64, out: &mut [i16]) -> TickOutcome {
        debug_assert_eq!(out.len(), self.frame);
        match self.state {
            PlayoutState::Idle => {}
            PlayoutState::Buffering => {
                if self.depth_ms() >= self.cfg.min_start_ms.max(FRAME_MS)
                    || (self.end_marked && self.len > 0)
                    || self.len == self.ring.len()
                {
                    self.state = PlayoutState::Playing;
                } else if self.end_marked {
                    self.state = PlayoutState::Idle;
                }
            }
            PlayoutState::Starved => {
                if self.depth_ms() >= self.cfg.low_watermark_ms.max(FRAME_MS)
                    || (self.end_marked && self.len > 0)
                    || self.len == self.ring.len()
                {
                    self.state = PlayoutState::Playing;
                } else if self.end_marked
                    || now_ms >= self.starved_since + u64::from(self.cfg.provider_grace_ms)
                {
                    // Provider finished (or went quiet past the grace time): flush the
                    // partial remainder as the last frame below, then idle.
                    self.state = if self.len > 0 {
                        PlayoutState::Playing
                    } else {
                        PlayoutState::Idle
                    };
                    self.end_marked = true;
                } else {
                    self.stats.underflow_frames += 1;
                }
            }
            PlayoutState::Playing => {}
        }

        if self.state == PlayoutState::Playing {
            if self.len >= self.frame || (self.end_marked && self.len > 0) {
                let n = self.len.min(self.frame);
                self.pop_into(&mut out[..n]);
                out[n..].fill(0);
                self.played_samples += n as u64;
                self.stats.frames_played += 1;
                let first = !self.last_was_audio;
                self.last_was_audio = true;
                if self.len == 0 && self.end_marked {
                    self.state = PlayoutState::Idle;
                }
                return TickOutcome::Audio { first };
            }
            if self.end_marked {
                self.state = PlayoutState::Idle;
            } else {
                // Mid-utterance and dry: an underflow.
                self.state = PlayoutState::Starved;
                self.starved_since = now_ms;
                self.stats.underflow_events += 1;
                self.stats.underflow_frames += 1;
            }
        }
        out.fill(0);
        self.stats.silence_frames += 1;
        self.last_was_audio = false;
        TickOutcome::Silence
    }

    /// Barge-in: drop everything queued, end the utterance, and report how much of it
    /// the caller heard (for `conversation.item.truncate`'s `audio_end_ms`).
    pub fn flush(&mut self) -> FlushReport {
        let was_active = self.state != PlayoutState::Idle;
        let report = FlushReport {
            played_ms: (self.played_samples / self.samples_per_ms.max(1) as u64) as u32,
            dropped_ms: self.depth_ms(),
            was_active,
        };
        if was_active {
            self.stats.flushes += 1;
        }
        self.head = 0;
        self.len = 0;
        self.state = PlayoutState::Idle;
        self.end_marked = false;
        self.played_samples = 0;
        report
    }

    fn pop_into(&mut self, out: &mut [i16]) {
        let n = out.len();
        let cap = self.ring.len();
        let first = n.min(cap - self.head);
        out[..first].copy_from_slice(&self.ring[self.head..self.head + first]);
        out[first..].copy_from_slice(&self.ring[..n - first]);
        self.head = (self.head + n) % cap;
        self.len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPMS: usize = 8; // 8 kHz

    fn ramp(n: usize, start: i16) -> Vec<i16> {
        (0..n).map(|i| start.wrapping_add(i as i16)).collect()
    }

    fn ticks(p: &mut Playout, from: u64, n: usize) -> Vec<(TickOutcome, Vec<i16>)> {
        (0..n)
            .map(|i| {
                let mut out = vec![0i16; p.frame_samples()];
                let o = p.tick(from + 20 * i as u64, &mut out);
                (o, out)
            })
            .collect()
    }

    #[test]
    fn idle_gives_silence() {
        let mut p = Playout::new(PlayoutConfig::default(), SPMS);
        for (o, f) in ticks(&mut p, 0, 10) {
            assert_eq!(o, TickOutcome::Silence);
            assert!(f.iter().all(|&s| s == 0));
        }
        assert_eq!(p.stats().underflow_events, 0);
    }

    #[test]
    fn waits_for_min_start_then_plays_in_order() {
        let mut p = Playout::new(
            PlayoutConfig {
                min_start_ms: 60,
                ..Default::default()
            },
            SPMS,
        );
        let audio = ramp(160 * 5, 1);
        p.push(&audio[..160 * 2]); // 40 ms: below min_start
        assert_eq!(ticks(&mut p, 0, 1)[0].0, TickOutcome::Silence);
        assert_eq!(p.state(), PlayoutState::Buffering);
        p.push(&audio[160 * 2..]); // now 100 ms
        p.mark_end();
        let out = ticks(&mut p, 20, 6);
        assert_eq!(out[0].0, TickOutcome::Audio { first: true });
        assert_eq!(out[1].0, TickOutcome::Audio { first: false });
        let played: Vec<i16> = out[..5].iter().flat_map(|(_, f)| f.clone()).collect();
        assert_eq!(played, audio);
        assert_eq!(out[5].0, TickOutcome::Silence);
        assert_eq!(p.state(), PlayoutState::Idle);
        assert_eq!(
            p.stats().underflow_events,
            0,
            "end-marked utterance never underflows"
        );
    }

    #[test]
    fn short_complete_utterance_plays_without_reaching_min_start() {
        let mut p = Playout::new(PlayoutConfig::default(), SPMS);
        p.push(&ramp(100, 5)); // 12.5 ms, marked complete
        p.mark_end();
        let out = ticks(&mut p, 0, 2);
        assert_eq!(out[0].0, TickOutcome::Audio { first: true });
        assert_eq!(&out[0].1[..100], &ramp(100, 5)[..]);
        assert!(
            out[0].1[100..].iter().all(|&s| s == 0),
            "partial frame padded with silence"
        );
        assert_eq!(out[1].0, TickOutcome::Silence);
        assert_eq!(p.stats().underflow_events, 0);
    }

    #[test]
    fn underflow_counted_only_mid_utterance_and_resumes_at_low_watermark() {
        let cfg = PlayoutConfig {
            min_start_ms: 40,
            low_watermark_ms: 60,
            provider_grace_ms: 1000,
            ..Default::default()
        };
        let mut p = Playout::new(cfg, SPMS);
        p.push(&ramp(320, 0)); // 40 ms
        let out = ticks(&mut p, 0, 3);
        assert!(matches!(out[0].0, TickOutcome::Audio { .. }));
        assert!(matches!(out[1].0, TickOutcome::Audio { .. }));
        assert_eq!(out[2].0, TickOutcome::Silence);
        assert_eq!(p.state(), PlayoutState::Starved);
        assert_eq!(p.stats().underflow_events, 1);
        p.push(&ramp(320, 0)); // 40 ms < low watermark 60
        assert_eq!(ticks(&mut p, 60, 1)[0].0, TickOutcome::Silence);
        p.push(&ramp(160, 0)); // 60 ms
        let out = ticks(&mut p, 80, 1);
        assert_eq!(out[0].0, TickOutcome::Audio { first: true });
        assert_eq!(p.stats().underflow_events, 1);
        assert_eq!(p.stats().underflow_frames, 2);
    }

    #[test]
    fn grace_time_ends_a_silent_provider_utterance() {
        let cfg = PlayoutConfig {
            min_start_ms: 20,
            provider_grace_ms: 200,
            ..Default::default()
        };
        let mut p = Playout::new(cfg, SPMS);
        p.push(&ramp(160, 0));
        ticks(&mut p, 0, 2); // plays, then starves at t=20
        assert_eq!(p.state(), PlayoutState::Starved);
        ticks(&mut p, 40, 8); // up to t=180: still starved
        assert_eq!(p.state(), PlayoutState::Starved);
        ticks(&mut p, 220, 1);
        assert_eq!(p.state(), PlayoutState::Idle);
        assert!(!p.is_active());
    }

    #[test]
    fn flush_reports_played_ms_and_drops_queue() {
        let mut p = Playout::new(
            PlayoutConfig {
                min_start_ms: 20,
                ..Default::default()
            },
            SPMS,
        );
        p.push(&ramp(8 * 500, 0)); // 500 ms
        ticks(&mut p, 0, 7); // 140 ms played
        let r = p.flush();
        assert_eq!(
            r,
            FlushReport {
                played_ms: 140,
                dropped_ms: 360,
                was_active: true
            }
        );
        assert_eq!(p.depth_ms(), 0);
        assert!(!p.is_active());
        assert_eq!(ticks(&mut p, 200, 1)[0].0, TickOutcome::Silence);
        // A flush while idle reports nothing played.
        assert_eq!(p.flush(), FlushReport::default());
        assert_eq!(p.stats().flushes, 1);
    }

    #[test]
    fn push_refuses_what_does_not_fit_and_nothing_is_lost() {
        let cfg = PlayoutConfig {
            jitter_buffer_ms: 100,
            min_start_ms: 20,
            ..Default::default()
        };
        let mut p = Playout::new(cfg, SPMS);
        let audio = ramp(8 * 300, 7);
        let mut sent = 0;
        let mut played = Vec::new();
        let mut t = 0;
        while played.len() < audio.len() {
            sent += p.push(&audio[sent..]);
            if sent == audio.len() {
                p.mark_end();
            }
            let mut out = vec![0; 160];
            if let TickOutcome::Audio { .. } = p.tick(t, &mut out) {
                played.extend_from_slice(&out);
            }
            t += 20;
            assert!(t < 10_000);
        }
        assert_eq!(played, audio);
        assert!(p.stats().refused_samples > 0);
        assert_eq!(p.stats().underflow_events, 0);
    }

    #[test]
    fn ring_wraps_correctly() {
        let cfg = PlayoutConfig {
            jitter_buffer_ms: 60,
            min_start_ms: 20,
            ..Default::default()
        };
        let mut p = Playout::new(cfg, SPMS);
        let audio = ramp(8 * 1000, -500);
        let mut sent = 0;
        let mut played = Vec::new();
        let mut t = 0;
        // Odd-sized pushes so the tail wraps mid-push.
        while played.len() < audio.len() {
            let end = (sent + 211).min(audio.len());
            sent += p.push(&audio[sent..end]);
            if sent == audio.len() {
                p.mark_end();
            }
            let mut out = vec![0; 160];
            if let TickOutcome::Audio { .. } = p.tick(t, &mut out) {
                let n = (audio.len() - played.len()).min(160);
                played.extend_from_slice(&out[..n]);
            }
            t += 20;
        }
        assert_eq!(played, audio);
    }
}
