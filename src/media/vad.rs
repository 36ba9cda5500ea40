//! Energy-based speech detector for barge-in.
//!
//! Owns: the decision "the caller is talking over the agent", made frame by frame from
//! the RMS energy of the caller's audio, with the reference engine's knobs
//! (`barge_in.min_ms`, `energy_threshold`, `cooldown_ms`, `initial_protection_ms`,
//! `post_tts_end_protection_ms`).
//!
//! Must not: read the clock (time is passed in as milliseconds), allocate, or act on
//! the playout itself; it only reports, the call state machine flushes.
//!
//! Deterministic: the same frames at the same times give the same decisions.

#![forbid(unsafe_code)]

/// Knobs of the detector, all in milliseconds except the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadConfig {
    /// Whether barge-in detection runs at all.
    pub enabled: bool,
    /// Speech must last this long (leaky sum of loud frames) before it counts.
    pub min_ms: u32,
    /// RMS of the i16 samples above which a frame counts as loud.
    pub energy_threshold: u16,
    /// After a barge-in fires, no new one for this long.
    pub cooldown_ms: u32,
    /// For this long after the agent starts an utterance, detection is off (echo of
    /// the agent's first syllable, line clicks).
    pub initial_protection_ms: u32,
    /// For this long after the agent stops, detection stays off (echo tail). It only
    /// matters when the agent starts again inside that window.
    pub post_tts_end_protection_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            enabled: true,
            min_ms: 150,
            energy_threshold: 700,
            cooldown_ms: 500,
            initial_protection_ms: 100,
            post_tts_end_protection_ms: 800,
        }
    }
}

/// What one frame told the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Nothing to act on.
    None,
    /// The caller has talked over the agent for `min_ms`: flush the agent's audio.
    BargeIn,
}

/// Counters the detector keeps (summed per shard by the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VadStats {
    /// Barge-ins fired.
    pub barge_ins: u64,
    /// Loud frames ignored because a protection window or the cooldown was on.
    pub suppressed_frames: u64,
}

/// The per-call detector. Feed it every caller frame with `feed`.
#[derive(Debug, Clone)]
pub struct BargeInDetector {
    cfg: VadConfig,
    /// threshold² × samples is compared with the sum of squares: no sqrt per frame.
    threshold_sq: u64,
    voiced_ms: u32,
    agent_was_speaking: bool,
    agent_started_at: u64,
    agent_stopped_at: Option<u64>,
    cooldown_until: u64,
    stats: VadStats,
}

impl BargeInDetector {
    /// A detector with these knobs, in the "agent silent" state.
    pub fn new(cfg: VadConfig) -> Self {
        let t = u64::from(cfg.energy_threshold);
        BargeInDetector {
            cfg,
            threshold_sq: t * t,
            voiced_ms: 0,
            agent_was_speaking: false,
            agent_started_at: 0,
            agent_stopped_at: None,
            cooldown_until: 0,
            stats: VadStats::default(),
        }
    }

    /// Replace the knobs (live reload); the current state is kept.
    pub fn set_config(&mut self, cfg: VadConfig) {
        let t = u64::from(cfg.energy_threshold);
        self.threshold_sq = t * t;
        self.cfg = cfg;
    }

    /// The knobs in use.
    pub fn config(&self) -> &VadConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> VadStats {
        self.stats
    }

    /// True when the frame's RMS is above the threshold.
    pub fn is_loud(&self, frame: &[i16]) -> bool {
        if frame.is_empty() {
            return false;
        }
        let sum: u64 = frame
            .iter()
            .map(|&s| {
                let v = i64::from(s);
                (v * v) as u64
            })
            .sum();
        sum > self.threshold_sq * frame.len() as u64
    }

    /// Feed one caller frame received at `now_ms`, lasting `frame_ms`, while the agent
    /// is (`agent_speaking`) or is not playing audio to the caller. Returns `BargeIn`
    /// once per detected interruption.
    pub fn feed(
        &mut self,
        now_ms: u64,
        frame: &[i16],
        frame_ms: u32,
        agent_speaking: bool,
    ) -> VadEvent {
        if agent_speaking && !self.agent_was_speaking {
            self.agent_started_at = now_ms;
            self.voiced_ms = 0;
        } else if !agent_speaking && self.agent_was_speaking {
            self.agent_stopped_at = Some(now_ms);
        }
        self.agent_was_speaking = agent_speaking;

        if !self.cfg.enabled || !agent_speaking {
            self.voiced_ms = 0;
            return VadEvent::None;
        }
        let loud = self.is_loud(frame);
        let protected = now_ms < self.agent_started_at + u64::from(self.cfg.initial_protection_ms)
            || now_ms < self.cooldown_until
            || self.agent_stopped_at.is_some_and(|t| {
                self.agent_started_at < t + u64::from(self.cfg.post_tts_end_protection_ms)
                    && now_ms < t + u64::from(self.cfg.post_tts_end_protection_ms)
            });
        if protected {
            if loud {
                self.stats.suppressed_frames += 1;
            }
            self.voiced_ms = 0;
            return VadEvent::None;
        }
        if loud {
            self.voiced_ms = self.voiced_ms.saturating_add(frame_ms);
        } else {
            // Leaky: a short dip between syllables does not reset the count at once.
            self.voiced_ms = self.voiced_ms.saturating_sub(frame_ms);
        }
        if self.voiced_ms >= self.cfg.min_ms.max(1) {
            self.voiced_ms = 0;
            self.cooldown_until = now_ms + u64::from(self.cfg.cooldown_ms);
            self.stats.barge_ins += 1;
            return VadEvent::BargeIn;
        }
        VadEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: [i16; 160] = [2000; 160];
    const QUIET: [i16; 160] = [100; 160];

    fn run(
        det: &mut BargeInDetector,
        from: u64,
        frames: usize,
        f: &[i16],
        speaking: bool,
    ) -> Vec<u64> {
        let mut fired = Vec::new();
        for i in 0..frames {
            let t = from + 20 * i as u64;
            if det.feed(t, f, 20, speaking) == VadEvent::BargeIn {
                fired.push(t);
            }
        }
        fired
    }

    #[test]
    fn rms_threshold_is_exact() {
        let det = BargeInDetector::new(VadConfig {
            energy_threshold: 700,
            ..Default::default()
        });
        assert!(!det.is_loud(&[700; 160]));
        assert!(det.is_loud(&[701; 160]));
        assert!(det.is_loud(&[-701; 160]));
        assert!(!det.is_loud(&[]));
    }

    #[test]
    fn fires_after_min_ms_of_speech_over_agent() {
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 0,
            ..Default::default()
        });
        // min_ms 150 => the 8th loud 20 ms frame (160 ms) fires.
        let fired = run(&mut det, 1000, 20, &LOUD, true);
        assert_eq!(fired, vec![1000 + 7 * 20]);
        assert_eq!(det.stats().barge_ins, 1);
    }

    #[test]
    fn silent_agent_means_no_barge_in() {
        let mut det = BargeInDetector::new(VadConfig::default());
        assert!(run(&mut det, 0, 100, &LOUD, false).is_empty());
    }

    #[test]
    fn quiet_caller_never_fires() {
        let mut det = BargeInDetector::new(VadConfig::default());
        assert!(run(&mut det, 0, 500, &QUIET, true).is_empty());
    }

    #[test]
    fn disabled_never_fires() {
        let mut det = BargeInDetector::new(VadConfig {
            enabled: false,
            ..Default::default()
        });
        assert!(run(&mut det, 0, 500, &LOUD, true).is_empty());
    }

    #[test]
    fn initial_protection_delays_detection() {
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 100,
            ..Default::default()
        });
        // Agent starts at 0: frames at 0..80 are protected, counting starts at 100.
        let fired = run(&mut det, 0, 13, &LOUD, true);
        assert_eq!(fired, vec![100 + 7 * 20]);
        assert_eq!(det.stats().suppressed_frames, 5);
    }

    #[test]
    fn cooldown_spaces_barge_ins() {
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 0,
            cooldown_ms: 500,
            ..Default::default()
        });
        let fired = run(&mut det, 0, 60, &LOUD, true);
        // First at 140; cooldown until 640; counting restarts at 640 -> fires at 780.
        assert_eq!(fired[0], 140);
        assert_eq!(fired[1], 640 + 7 * 20);
    }

    #[test]
    fn short_dips_are_tolerated_but_isolated_clicks_are_not() {
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 0,
            ..Default::default()
        });
        // Alternating loud/quiet never accumulates.
        let mut fired = false;
        for i in 0..200u64 {
            let f: &[i16] = if i % 2 == 0 { &LOUD } else { &QUIET };
            fired |= det.feed(i * 20, f, 20, true) == VadEvent::BargeIn;
        }
        assert!(!fired);
        // Loud with one quiet frame every 4: accumulates 2 frames net per 4 frames.
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 0,
            ..Default::default()
        });
        let mut at = None;
        for i in 0..40u64 {
            let f: &[i16] = if i % 4 == 3 { &QUIET } else { &LOUD };
            if det.feed(i * 20, f, 20, true) == VadEvent::BargeIn {
                at = Some(i);
                break;
            }
        }
        assert!(at.is_some());
    }

    #[test]
    fn post_tts_end_protection_covers_a_quick_restart() {
        let mut det = BargeInDetector::new(VadConfig {
            initial_protection_ms: 0,
            post_tts_end_protection_ms: 800,
            ..Default::default()
        });
        run(&mut det, 0, 5, &QUIET, true);
        run(&mut det, 100, 5, &QUIET, false); // agent stopped at 100
                                              // Agent restarts at 200, inside the window: protected until 900.
        let fired = run(&mut det, 200, 60, &LOUD, true);
        assert_eq!(fired[0], 900 + 7 * 20);
    }
}
