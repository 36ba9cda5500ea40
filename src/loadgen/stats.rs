//! What the load generator measures about voxd, per call and over all calls, and the
//! timing-SLO verdict of the project targets (`targets.md`, "timing SLO at the caller
//! side").
//!
//! Owns: [`CallStats`] (one call's state machine over the frames voxd sends and the
//! caller's own talk spurts), [`Aggregate`] (all calls merged, in hdrhistogram),
//! [`Report`] (serde-serialisable summary, `to_table`) and [`SloVerdict`].
//!
//! Must not: read the clock (every time is a `u64` of microseconds on the load
//! generator's monotonic clock, passed in), parse wire formats (the caller module
//! does that and reports classified frames), or allocate per frame (per-call
//! histograms are allocated at call set-up; latency samples go into vectors whose
//! growth is per turn, not per frame, and bounded).
//!
//! # Definitions
//!
//! All times are on the load generator's clock: "sent" is when the caller produced a
//! frame, "arrival" is when a frame voxd sent reached the load generator's socket
//! (the kernel's receive stamp, `loadgen::rxstamp`; when read, where the kernel gives
//! no stamp).
//!
//! * **Agent audio frame**: a 20 ms frame from voxd whose samples are not all
//!   (near-)silent; the caller decides this. Anything else voxd sends is a **silent
//!   frame** (voxd sends one every 20 ms whether the agent speaks or not).
//! * **Inter-arrival deviation**: for every frame after the first,
//!   `|arrival - previous arrival - 20 ms|` in microseconds.
//! * **Late frame**: inter-arrival over 30 ms (20 ms + 10 ms), i.e. at least half a
//!   frame of audio missing at the caller. **Late in speech**: a late frame that is
//!   agent audio and follows an agent audio frame (the wire went quiet in the middle
//!   of agent speech).
//! * **Agent utterance**: agent audio frames, possibly with short silent runs inside.
//!   A **silent gap** is a run of one or more silent frames between two agent audio
//!   frames with no caller talk-spurt start in between (which would make the second a
//!   new reply or a barge-in) and lasting at most [`StatsConfig::max_gap_ms`] from
//!   the last audio frame to the next (longer is taken as a separate reply).
//! * **Gaps** = late in speech + silent gaps. The SLO asks for zero gaps *caused by
//!   voxd* (playout underflow while the agent has audio queued); the wire cannot show
//!   the cause, so with the in-process simulated agent every gap is counted against
//!   voxd, and with a network provider a gap may be the provider's.
//! * **Caller talk spurt**: from the first talking frame the caller sent to the last
//!   one; the end is confirmed after [`StatsConfig::caller_hangover_frames`]
//!   non-talking frames (which smooths the short pauses inside recorded speech).
//! * **First-audio latency**: call start -> arrival of the first agent audio frame.
//! * **Turn latency**: send time of the last talking frame of a caller spurt ->
//!   arrival of the first agent audio frame that starts an utterance (follows a
//!   silent frame) after it, if that comes before the caller's next spurt (otherwise
//!   the turn is **unanswered**). It includes the agent's end-of-utterance detection
//!   and `think_ms`; [`Report`] also shows it with `think_ms` subtracted.
//! * **Barge-in reaction**: send time of the first frame of a caller spurt that
//!   starts while the agent is speaking (the last frame received was agent audio) ->
//!   arrival of the first silent frame after it. It includes voxd's or the provider's
//!   speech detection, and an utterance that ends by itself in that window counts too.
//! * **RTP loss**: per SSRC, extended highest - first + 1 sequence numbers expected,
//!   minus packets received (never below zero); reordered = packets whose extended
//!   sequence is not above the highest seen before them.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::media::rtp::SeqExtender;

/// One pacing interval in microseconds.
pub const FRAME_US: u64 = crate::media::FRAME_MS as u64 * 1_000;
/// Inter-arrival above which a frame is late: 20 ms + 10 ms.
pub const LATE_US: u64 = FRAME_US + 10_000;
/// Largest value the histograms hold: 60 s (larger values are clamped to it).
pub const MAX_TRACKED_US: u64 = 60_000_000;
/// Significant digits of the per-call deviation histogram: exact to the microsecond
/// below 256 us, within 1% above (16 us buckets at 2 ms). Two digits keep a call's
/// histogram at about 10 KiB (2,000 calls: 20 MiB).
pub const CALL_SIGFIG: u8 = 2;
/// Significant digits of the aggregate histograms (0.1%).
pub const AGGREGATE_SIGFIG: u8 = 3;
/// Latency samples kept per call and kind; more are counted as dropped.
pub const MAX_EVENTS_PER_CALL: usize = 4_096;

/// SLO: p99 of the inter-arrival deviation, microseconds.
pub const SLO_P99_DEV_US: u64 = 2_000;
/// SLO: p99.9 of the inter-arrival deviation, microseconds.
pub const SLO_P999_DEV_US: u64 = 5_000;

/// The thresholds of the timing SLO. The defaults are `targets.md`'s; operators may
/// set their own (`voxd loadgen --slo-p99-ms`, `--slo-p999-ms`, `--slo-max-gaps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SloLimits {
    /// Largest p99 inter-arrival deviation that passes, microseconds.
    pub p99_dev_us: u64,
    /// Largest p99.9 inter-arrival deviation that passes, microseconds.
    pub p999_dev_us: u64,
    /// Most gaps that pass (0 in `targets.md`).
    pub max_gaps: u64,
}

impl Default for SloLimits {
    fn default() -> Self {
        SloLimits {
            p99_dev_us: SLO_P99_DEV_US,
            p999_dev_us: SLO_P999_DEV_US,
            max_gaps: 0,
        }
    }
}

impl SloLimits {
    /// The limits in words, e.g. `p99 dev <= 2 ms, p99.9 dev <= 5 ms, zero gaps`.
    pub fn describe(&self) -> String {
        let ms = |us: u64| us as f64 / 1_000.0;
        let gaps = if self.max_gaps == 0 {
            "zero gaps".to_string()
        } else {
            format!("gaps <= {}", self.max_gaps)
        };
        format!(
            "p99 dev <= {} ms, p99.9 dev <= {} ms, {gaps}",
            ms(self.p99_dev_us),
            ms(self.p999_dev_us)
        )
    }
}

/// Knobs of the per-call measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsConfig {
    /// Non-talking caller frames that end a talk spurt (default 10 = 200 ms).
    pub caller_hangover_frames: u32,
    /// Longest silent run inside one agent utterance, ms, from the last audio frame
    /// to the next (default 1,000); a longer one separates two replies.
    pub max_gap_ms: u32,
    /// Frames arriving at or after this time (load generator clock, us) are also
    /// counted in the steady-window deviation ([`Report::steady_dev_us`]): the
    /// driver sets it to one second after the ramp, so that call set-up is out of
    /// it. `None`: no steady window.
    pub steady_from_us: Option<u64>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            caller_hangover_frames: 10,
            max_gap_ms: 1_000,
            steady_from_us: None,
        }
    }
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, sigfig).expect("static histogram bounds")
}

fn new_call_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, CALL_SIGFIG).expect("static histogram bounds")
}

/// A bounded list of latency samples (microseconds) for one call.
#[derive(Debug, Clone, Default)]
struct Events {
    values: Vec<u64>,
    dropped: u64,
}

impl Events {
    fn push(&mut self, v: u64) {
        if self.values.len() < MAX_EVENTS_PER_CALL {
            self.values.push(v);
        } else {
            self.dropped += 1;
        }
    }
}

/// RTP sequence accounting for the stream voxd sends to one call.
#[derive(Debug, Clone, Default)]
struct RtpLoss {
    ssrc: Option<u32>,
    ext: SeqExtender,
    first: u64,
    received: u64,
    /// Totals of earlier SSRCs.
    done_expected: u64,
    done_received: u64,
    reordered: u64,
    ssrc_changes: u64,
}

impl RtpLoss {
    fn on_packet(&mut self, ssrc: u32, seq: u16) {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.ssrc_changes += 1;
                self.done_expected += self.expected_current();
                self.done_received += self.received;
            }
            self.ssrc = Some(ssrc);
            self.ext = SeqExtender::new();
            self.received = 0;
        }
        let before = self.ext.highest();
        let e = self.ext.extend(seq);
        match before {
            None => self.first = e,
            Some(h) if e <= h => self.reordered += 1,
            Some(_) => {}
        }
        self.received += 1;
    }

    fn expected_current(&self) -> u64 {
        self.ext.highest().map_or(0, |h| h - self.first + 1)
    }

    fn expected(&self) -> u64 {
        self.done_expected + self.expected_current()
    }

    fn received_total(&self) -> u64 {
        self.done_received + self.received
    }

    fn lost(&self) -> u64 {
        // Per SSRC, so that duplicates on one stream cannot hide loss on another.
        let current = self.expected_current().saturating_sub(self.received);
        self.done_expected.saturating_sub(self.done_received) + current
    }
}

/// Counters of one call (also the aggregate's counters: [`Aggregate`] sums them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Frames the caller sent (audio only; the AudioSocket UUID frame is not counted).
    pub frames_sent: u64,
    /// Caller talk spurts started.
    pub caller_spurts: u64,
    /// Frames received from voxd and measured.
    pub frames_received: u64,
    /// Of those, agent audio.
    pub agent_audio_frames: u64,
    /// Of those, silent.
    pub silent_frames: u64,
    /// Frames with inter-arrival over 30 ms.
    pub late_frames: u64,
    /// Late frames inside agent speech (audio after audio).
    pub late_in_speech: u64,
    /// Silent runs inside an agent utterance.
    pub silent_gaps: u64,
    /// Silent frames in those runs.
    pub silent_gap_frames: u64,
    /// Caller spurts with no agent reply before the next spurt.
    pub turns_unanswered: u64,
    /// Calls that received no agent audio at all (aggregate only; 0 or 1 per call).
    pub calls_without_agent_audio: u64,
    /// RTP packets expected from voxd (sequence span).
    pub rtp_expected: u64,
    /// RTP packets received from voxd.
    pub rtp_received: u64,
    /// RTP packets missing (expected - received, per SSRC, at least 0).
    pub rtp_lost: u64,
    /// RTP packets out of order or duplicated.
    pub rtp_reordered: u64,
    /// SSRC changes of voxd's stream.
    pub rtp_ssrc_changes: u64,
    /// Frames or packets from voxd refused (malformed, wrong kind, wrong size).
    pub bad_frames: u64,
    /// Hangup frames received from voxd.
    pub hangups: u64,
    /// Caller ticks run more than 10 ms after they were due (the load generator
    /// itself was late: its own overload, not voxd's).
    pub caller_late_ticks: u64,
    /// Latency samples dropped over the per-call bound.
    pub events_dropped: u64,
}

/// Measurements of one call. Fed by the caller; merged into an [`Aggregate`].
#[derive(Debug, Clone)]
pub struct CallStats {
    cfg: StatsConfig,
    start_us: u64,
    counts: Counts,
    deviation: Histogram<u32>,
    /// Deviation of the frames in the steady window (allocated with the call when
    /// there is one).
    steady: Option<Histogram<u32>>,
    first_audio_us: Option<u64>,
    turns: Events,
    barge_ins: Events,
    rtp: RtpLoss,

    // Received side.
    last_arrival_us: Option<u64>,
    /// Whether the last frame received was agent audio.
    agent_speaking: bool,
    /// Arrival of the last agent audio frame.
    last_audio_us: Option<u64>,
    /// Silent frames since the last agent audio frame.
    silent_run: u64,
    /// A caller spurt started since the last agent audio frame.
    spurt_since_audio: bool,
    /// Arrival of the most recent agent audio frame that followed a silent frame.
    last_utterance_start_us: Option<u64>,

    // Caller side.
    caller_talking: bool,
    caller_quiet_frames: u32,
    last_talk_us: u64,
    /// End of the caller's last spurt, waiting for the agent's reply.
    pending_turn_us: Option<u64>,
    /// Start of a caller spurt over agent speech, waiting for the agent to stop.
    pending_barge_in_us: Option<u64>,
}

impl CallStats {
    /// Statistics for a call that started (connected, UUID sent) at `start_us`.
    pub fn new(start_us: u64) -> Self {
        CallStats::with_config(start_us, StatsConfig::default())
    }

    /// [`CallStats::new`] with explicit knobs.
    pub fn with_config(start_us: u64, cfg: StatsConfig) -> Self {
        CallStats {
            cfg,
            start_us,
            counts: Counts::default(),
            deviation: new_call_hist(),
            steady: cfg.steady_from_us.map(|_| new_call_hist()),
            first_audio_us: None,
            turns: Events::default(),
            barge_ins: Events::default(),
            rtp: RtpLoss::default(),
            last_arrival_us: None,
            agent_speaking: false,
            last_audio_us: None,
            silent_run: 0,
            spurt_since_audio: false,
            last_utterance_start_us: None,
            caller_talking: false,
            caller_quiet_frames: 0,
            last_talk_us: 0,
            pending_turn_us: None,
            pending_barge_in_us: None,
        }
    }

    /// The counters so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// First-audio latency, once the first agent audio frame has arrived.
    pub fn first_audio_us(&self) -> Option<u64> {
        self.first_audio_us
    }

    /// Turn latencies recorded so far, microseconds.
    pub fn turn_latencies_us(&self) -> &[u64] {
        &self.turns.values
    }

    /// Barge-in reactions recorded so far, microseconds.
    pub fn barge_in_us(&self) -> &[u64] {
        &self.barge_ins.values
    }

    /// This call's inter-arrival deviation histogram (microseconds).
    pub fn deviation(&self) -> &Histogram<u32> {
        &self.deviation
    }

    /// Gaps so far (late in speech + silent gaps).
    pub fn gaps(&self) -> u64 {
        self.counts.late_in_speech + self.counts.silent_gaps
    }

    /// Called by the caller for every frame it sends, with the send time and whether
    /// the frame is talking. Tracks talk spurts (for turn latency and barge-in).
    pub fn on_caller_frame(&mut self, sent_us: u64, talking: bool) {
        self.counts.frames_sent += 1;
        if talking {
            self.caller_quiet_frames = 0;
            self.last_talk_us = sent_us;
            if !self.caller_talking {
                self.caller_talking = true;
                self.on_spurt_start(sent_us);
            }
        } else if self.caller_talking {
            self.caller_quiet_frames += 1;
            if self.caller_quiet_frames >= self.cfg.caller_hangover_frames.max(1) {
                self.caller_talking = false;
                self.on_spurt_end(self.last_talk_us);
            }
        }
    }

    fn on_spurt_start(&mut self, at_us: u64) {
        self.counts.caller_spurts += 1;
        self.spurt_since_audio = true;
        if self.pending_turn_us.take().is_some() {
            self.counts.turns_unanswered += 1;
        }
        if self.agent_speaking && self.pending_barge_in_us.is_none() {
            self.pending_barge_in_us = Some(at_us);
        }
    }

    fn on_spurt_end(&mut self, end_us: u64) {
        // The agent may already have started replying during the hangover.
        match self.last_utterance_start_us {
            Some(t) if t > end_us => self.turns.push(t - end_us),
            _ => self.pending_turn_us = Some(end_us),
        }
    }

    /// Called for every 20 ms frame received from voxd, with its arrival time and
    /// whether it carries agent audio (see the module docs).
    pub fn on_frame(&mut self, arrival_us: u64, is_agent_audio: bool) {
        let c = &mut self.counts;
        c.frames_received += 1;
        let mut late = false;
        if let Some(prev) = self.last_arrival_us {
            let dt = arrival_us.saturating_sub(prev);
            let dev = dt.abs_diff(FRAME_US).clamp(1, MAX_TRACKED_US);
            // hdrhistogram's lowest bound is 1: a 0 us deviation is recorded as 1.
            self.deviation.saturating_record(dev);
            if let (Some(h), Some(from)) = (self.steady.as_mut(), self.cfg.steady_from_us) {
                if arrival_us >= from {
                    h.saturating_record(dev);
                }
            }
            if dt > LATE_US {
                late = true;
                c.late_frames += 1;
            }
        }
        self.last_arrival_us = Some(arrival_us);

        if is_agent_audio {
            c.agent_audio_frames += 1;
            if late && self.agent_speaking {
                c.late_in_speech += 1;
            }
            if self.first_audio_us.is_none() {
                self.first_audio_us = Some(arrival_us.saturating_sub(self.start_us));
            }
            if !self.agent_speaking {
                // Start of an utterance, or the end of a silent run inside one.
                let within = self.last_audio_us.is_some_and(|t| {
                    arrival_us.saturating_sub(t) <= u64::from(self.cfg.max_gap_ms) * 1_000
                });
                if self.silent_run > 0 && within && !self.spurt_since_audio {
                    c.silent_gaps += 1;
                    c.silent_gap_frames += self.silent_run;
                }
                self.last_utterance_start_us = Some(arrival_us);
                if let Some(end) = self.pending_turn_us.take() {
                    self.turns.push(arrival_us.saturating_sub(end));
                }
            }
            self.agent_speaking = true;
            self.last_audio_us = Some(arrival_us);
            self.silent_run = 0;
            self.spurt_since_audio = false;
        } else {
            c.silent_frames += 1;
            self.agent_speaking = false;
            self.silent_run += 1;
            if let Some(t) = self.pending_barge_in_us.take() {
                self.barge_ins.push(arrival_us.saturating_sub(t));
            }
        }
    }

    /// Called for every RTP packet received from voxd (before [`CallStats::on_frame`]
    /// for its payload).
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16) {
        self.rtp.on_packet(ssrc, seq);
    }

    /// Counts a frame or packet from voxd that was refused.
    pub fn on_bad_frame(&mut self) {
        self.counts.bad_frames += 1;
    }

    /// Counts a hangup frame from voxd.
    pub fn on_hangup(&mut self) {
        self.counts.hangups += 1;
    }

    /// Counts a caller tick run more than 10 ms late (the load generator's fault).
    pub fn on_caller_late_tick(&mut self) {
        self.counts.caller_late_ticks += 1;
    }

    /// The counters with the RTP and event figures filled in.
    fn final_counts(&self) -> Counts {
        let mut c = self.counts;
        c.rtp_expected = self.rtp.expected();
        c.rtp_received = self.rtp.received_total();
        c.rtp_lost = self.rtp.lost();
        c.rtp_reordered = self.rtp.reordered;
        c.rtp_ssrc_changes = self.rtp.ssrc_changes;
        c.events_dropped = self.turns.dropped + self.barge_ins.dropped;
        c.calls_without_agent_audio = u64::from(self.first_audio_us.is_none());
        c
    }
}

/// All calls merged.
#[derive(Debug, Clone)]
pub struct Aggregate {
    calls: u64,
    counts: Counts,
    deviation: Histogram<u64>,
    steady: Histogram<u64>,
    first_audio: Histogram<u64>,
    turn: Histogram<u64>,
    barge_in: Histogram<u64>,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate::new()
    }
}

fn add_counts(a: &mut Counts, b: &Counts) {
    a.frames_sent += b.frames_sent;
    a.caller_spurts += b.caller_spurts;
    a.frames_received += b.frames_received;
    a.agent_audio_frames += b.agent_audio_frames;
    a.silent_frames += b.silent_frames;
    a.late_frames += b.late_frames;
    a.late_in_speech += b.late_in_speech;
    a.silent_gaps += b.silent_gaps;
    a.silent_gap_frames += b.silent_gap_frames;
    a.turns_unanswered += b.turns_unanswered;
    a.calls_without_agent_audio += b.calls_without_agent_audio;
    a.rtp_expected += b.rtp_expected;
    a.rtp_received += b.rtp_received;
    a.rtp_lost += b.rtp_lost;
    a.rtp_reordered += b.rtp_reordered;
    a.rtp_ssrc_changes += b.rtp_ssrc_changes;
    a.bad_frames += b.bad_frames;
    a.hangups += b.hangups;
    a.caller_late_ticks += b.caller_late_ticks;
    a.events_dropped += b.events_dropped;
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Self {
        Aggregate {
            calls: 0,
            counts: Counts::default(),
            deviation: new_hist(AGGREGATE_SIGFIG),
            steady: new_hist(AGGREGATE_SIGFIG),
            first_audio: new_hist(AGGREGATE_SIGFIG),
            turn: new_hist(AGGREGATE_SIGFIG),
            barge_in: new_hist(AGGREGATE_SIGFIG),
        }
    }

    /// Adds one finished (or running, for an interim report) call.
    pub fn merge(&mut self, other: &CallStats) {
        self.calls += 1;
        add_counts(&mut self.counts, &other.final_counts());
        for v in other.deviation.iter_recorded() {
            // Each per-call bucket lands at its highest equivalent value (<= 1% high).
            self.deviation
                .saturating_record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
        }
        if let Some(h) = &other.steady {
            for v in h.iter_recorded() {
                self.steady
                    .saturating_record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
            }
        }
        if let Some(v) = other.first_audio_us {
            self.first_audio
                .saturating_record(v.clamp(1, MAX_TRACKED_US));
        }
        for &v in &other.turns.values {
            self.turn.saturating_record(v.clamp(1, MAX_TRACKED_US));
        }
        for &v in &other.barge_ins.values {
            self.barge_in.saturating_record(v.clamp(1, MAX_TRACKED_US));
        }
    }

    /// Calls merged.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Summed counters.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The report; `think_ms` is the simulated agent's think time, subtracted from
    /// turn latency in [`Report::turn_minus_think_us`].
    pub fn report(&self, think_ms: u32) -> Report {
        let think_us = u64::from(think_ms) * 1_000;
        let turn = Percentiles::of(&self.turn);
        let sub = |v: u64| v.saturating_sub(think_us);
        Report {
            calls: self.calls,
            counts: self.counts,
            gaps: self.counts.late_in_speech + self.counts.silent_gaps,
            rtp_loss_ratio: if self.counts.rtp_expected > 0 {
                self.counts.rtp_lost as f64 / self.counts.rtp_expected as f64
            } else {
                0.0
            },
            inter_arrival_dev_us: Percentiles::of(&self.deviation),
            steady_dev_us: (!self.steady.is_empty()).then(|| Percentiles::of(&self.steady)),
            first_audio_us: Percentiles::of(&self.first_audio),
            turn_us: turn,
            think_ms,
            turn_minus_think_us: Percentiles {
                count: turn.count,
                min: sub(turn.min),
                p50: sub(turn.p50),
                p90: sub(turn.p90),
                p99: sub(turn.p99),
                p999: sub(turn.p999),
                max: sub(turn.max),
                mean: (turn.mean - think_us as f64).max(0.0),
            },
            barge_in_us: Percentiles::of(&self.barge_in),
            process: None,
            slo_limits: SloLimits::default(),
        }
    }
}

/// Percentiles of one histogram, microseconds (all 0 when `count` is 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Reads the percentiles of `h`: `min` is the lowest and the others the highest
    /// value equivalent to the true one at the histogram's precision.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The load generator's result, for the terminal ([`Report::to_table`]) and for
/// `--json FILE` (serde).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Calls merged.
    pub calls: u64,
    /// Summed counters.
    pub counts: Counts,
    /// Late in speech + silent gaps (the SLO's gap count).
    pub gaps: u64,
    /// RTP lost / expected (0 without RTP).
    pub rtp_loss_ratio: f64,
    /// Deviation of voxd's frame inter-arrival from 20 ms, over each call's whole
    /// life (call set-up included): what the SLO verdict judges.
    pub inter_arrival_dev_us: Percentiles,
    /// The same over the steady window only (from one second after the ramp; see
    /// [`StatsConfig::steady_from_us`]), shown beside it; `None` without one.
    pub steady_dev_us: Option<Percentiles>,
    /// Call start -> first agent audio.
    pub first_audio_us: Percentiles,
    /// End of caller spurt -> first agent audio of the reply.
    pub turn_us: Percentiles,
    /// The agent think time subtracted below.
    pub think_ms: u32,
    /// `turn_us` minus `think_ms` (at least 0).
    pub turn_minus_think_us: Percentiles,
    /// Caller starts over the agent -> agent audio stops.
    pub barge_in_us: Percentiles,
    /// voxd's CPU and memory over the measured window, when sampled.
    pub process: Option<crate::loadgen::procstat::ProcSummary>,
    /// The SLO thresholds [`Report::slo`] applies (`targets.md`'s unless the
    /// operator set others).
    pub slo_limits: SloLimits,
}

/// The timing SLO of `targets.md` applied to a [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SloVerdict {
    /// At least one inter-arrival was measured (an empty run does not pass).
    pub measured: bool,
    /// p99 inter-arrival deviation <= 2 ms.
    pub p99_dev_ok: bool,
    /// p99.9 inter-arrival deviation <= 5 ms.
    pub p999_dev_ok: bool,
    /// Zero gaps.
    pub gaps_ok: bool,
    /// All of the above.
    pub pass: bool,
}

impl Report {
    /// The timing-SLO verdict under [`Report::slo_limits`].
    pub fn slo(&self) -> SloVerdict {
        let lim = &self.slo_limits;
        let d = &self.inter_arrival_dev_us;
        let measured = d.count > 0;
        let p99_dev_ok = measured && d.p99 <= lim.p99_dev_us;
        let p999_dev_ok = measured && d.p999 <= lim.p999_dev_us;
        let gaps_ok = self.gaps <= lim.max_gaps;
        SloVerdict {
            measured,
            p99_dev_ok,
            p999_dev_ok,
            gaps_ok,
            pass: measured && p99_dev_ok && p999_dev_ok && gaps_ok,
        }
    }

    /// The report as pretty JSON, for `--json FILE`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct WithSlo<'a> {
            #[serde(flatten)]
            report: &'a Report,
            slo: SloVerdict,
        }
        serde_json::to_string_pretty(&WithSlo {
            report: self,
            slo: self.slo(),
        })
        .expect("report serialises")
    }

    /// A human summary, one measurement a line.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let c = &self.counts;
        let slo = self.slo();
        let ok = |b: bool| if b { "ok" } else { "FAIL" };
        let ms = |us: u64| us as f64 / 1_000.0;
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<28} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                p.count,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.p999),
                ms(p.max)
            )
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "calls {}  frames sent {}  received {} (agent audio {}, silent {})",
            self.calls, c.frames_sent, c.frames_received, c.agent_audio_frames, c.silent_frames
        );
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        s.push_str(&row("inter-arrival deviation", &self.inter_arrival_dev_us));
        if let Some(p) = &self.steady_dev_us {
            s.push_str(&row("  steady window only", p));
        }
        s.push_str(&row("first audio", &self.first_audio_us));
        s.push_str(&row("turn", &self.turn_us));
        s.push_str(&row(
            &format!("turn - think ({} ms)", self.think_ms),
            &self.turn_minus_think_us,
        ));
        s.push_str(&row("barge-in reaction", &self.barge_in_us));
        let _ = writeln!(
            s,
            "gaps {} (late in speech {}, silent gaps {} / {} frames); late frames {}",
            self.gaps, c.late_in_speech, c.silent_gaps, c.silent_gap_frames, c.late_frames
        );
        let _ = writeln!(
            s,
            "turns unanswered {}; calls without agent audio {}; caller spurts {}",
            c.turns_unanswered, c.calls_without_agent_audio, c.caller_spurts
        );
        if c.rtp_expected > 0 || c.rtp_received > 0 {
            let _ = writeln!(
                s,
                "rtp expected {} received {} lost {} ({:.4}%) reordered {} ssrc changes {}",
                c.rtp_expected,
                c.rtp_received,
                c.rtp_lost,
                self.rtp_loss_ratio * 100.0,
                c.rtp_reordered,
                c.rtp_ssrc_changes
            );
        }
        let _ = writeln!(
            s,
            "bad frames {}; hangups {}; loadgen late ticks {}{}",
            c.bad_frames,
            c.hangups,
            c.caller_late_ticks,
            if c.caller_late_ticks > 0 {
                " (the load generator fell behind: its figures are suspect)"
            } else {
                ""
            }
        );
        if let Some(p) = &self.process {
            let _ = writeln!(
                s,
                "voxd cpu {:.1} us/call-second ({:.2} cores), rss {:.1} MiB -> {:.1} MiB \
                 ({:+.0} B/call), threads {}, fds {} -> {}",
                p.cpu_us_per_call_second,
                p.cores_busy,
                p.before.rss_bytes as f64 / 1_048_576.0,
                p.after.rss_bytes as f64 / 1_048_576.0,
                p.rss_growth_per_call_bytes,
                p.after.threads,
                p.before.fds,
                p.after.fds
            );
        }
        let lim = &self.slo_limits;
        let gaps = if lim.max_gaps == 0 {
            "zero gaps".to_string()
        } else {
            format!("gaps <= {}", lim.max_gaps)
        };
        let _ = writeln!(
            s,
            "timing SLO: p99 dev <= {} ms {}, p99.9 dev <= {} ms {}, {gaps} {} => {}",
            ms(lim.p99_dev_us),
            ok(slo.p99_dev_ok),
            ms(lim.p999_dev_us),
            ok(slo.p999_dev_ok),
            ok(slo.gaps_ok),
            if slo.pass { "PASS" } else { "FAIL" }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    /// Feeds `pattern` (`A` agent audio, `.` silent, `_` nothing arrives) at 20 ms
    /// steps from `t0`; returns the time after the last slot.
    fn feed(s: &mut CallStats, t0: u64, pattern: &str) -> u64 {
        let mut t = t0;
        for ch in pattern.chars() {
            match ch {
                'A' => s.on_frame(t, true),
                '.' => s.on_frame(t, false),
                '_' => {}
                _ => panic!("bad pattern"),
            }
            t += FRAME_US;
        }
        t
    }

    /// Caller frames: `T` talking, `q` quiet, from `t0`, one per 20 ms.
    fn talk(s: &mut CallStats, t0: u64, pattern: &str) -> u64 {
        let mut t = t0;
        for ch in pattern.chars() {
            s.on_caller_frame(t, ch == 'T');
            t += FRAME_US;
        }
        t
    }

    #[test]
    fn perfect_pacing_has_zero_deviation_and_passes() {
        let mut s = CallStats::new(0);
        feed(&mut s, 0, &"A".repeat(500));
        let mut agg = Aggregate::new();
        agg.merge(&s);
        let r = agg.report(300);
        assert_eq!(r.inter_arrival_dev_us.count, 499);
        assert!(r.inter_arrival_dev_us.max <= 1);
        assert_eq!(r.gaps, 0);
        assert!(r.slo().pass);
    }

    #[test]
    fn the_steady_window_leaves_call_set_up_out_but_the_verdict_does_not() {
        let cfg = StatsConfig {
            steady_from_us: Some(1_000 * MS),
            ..StatsConfig::default()
        };
        let mut s = CallStats::with_config(0, cfg);
        let mut t = 0;
        s.on_frame(t, false);
        // 100 intervals: the 3rd is 35 ms (15 ms off, inside set-up), the rest exact.
        for i in 0..100 {
            t += if i == 2 { 35 * MS } else { 20 * MS };
            s.on_frame(t, false);
        }
        let mut agg = Aggregate::new();
        agg.merge(&s);
        let r = agg.report(0);
        assert!(r.inter_arrival_dev_us.max >= 15_000);
        let steady = r.steady_dev_us.expect("frames after 1 s");
        // Frames arriving at or after 1,000 ms: 1,015 .. 2,015 ms, every 20 ms.
        assert_eq!(steady.count, 51);
        assert!(steady.max <= 1, "steady max {}", steady.max);
        assert!(!r.slo().pass, "the SLO judges the whole life");
        assert!(r.to_table().contains("steady window only"));
        // No window configured: no steady figures.
        let mut plain = Aggregate::new();
        plain.merge(&CallStats::new(0));
        assert!(plain.report(0).steady_dev_us.is_none());
    }

    #[test]
    fn deviation_percentiles() {
        let mut s = CallStats::new(0);
        let mut t = 0;
        // 1000 intervals: 989 exact, 10 of 23 ms (3 ms dev), 1 of 40 ms (20 ms dev).
        s.on_frame(t, false);
        for i in 0..1000 {
            t += match i {
                0..=9 => 23 * MS,
                10 => 40 * MS,
                _ => 20 * MS,
            };
            s.on_frame(t, false);
        }
        assert_eq!(s.counts().late_frames, 1);
        assert_eq!(s.counts().late_in_speech, 0, "silence, not speech");
        let mut agg = Aggregate::new();
        agg.merge(&s);
        let r = agg.report(0);
        let d = r.inter_arrival_dev_us;
        assert_eq!(d.count, 1000);
        assert!(d.p50 <= 1);
        assert!((3_000..=3_030).contains(&d.p99), "p99 {}", d.p99);
        assert!((3_000..=3_030).contains(&d.p999) || d.p999 >= 20_000);
        assert!((20_000..=20_200).contains(&d.max), "max {}", d.max);
        let v = r.slo();
        assert!(!v.p99_dev_ok && v.gaps_ok && !v.pass);
    }

    #[test]
    fn slo_thresholds_are_inclusive() {
        let mut r = Aggregate::new().report(0);
        assert!(!r.slo().measured && !r.slo().pass, "no data does not pass");
        r.inter_arrival_dev_us = Percentiles {
            count: 10,
            p99: SLO_P99_DEV_US,
            p999: SLO_P999_DEV_US,
            ..Percentiles::default()
        };
        assert!(r.slo().pass);
        r.inter_arrival_dev_us.p999 += 1;
        assert!(!r.slo().p999_dev_ok && !r.slo().pass);
        r.inter_arrival_dev_us.p999 -= 1;
        r.gaps = 1;
        assert!(!r.slo().gaps_ok && !r.slo().pass);
    }

    #[test]
    fn slo_limits_can_be_overridden() {
        let mut r = Aggregate::new().report(0);
        r.inter_arrival_dev_us = Percentiles {
            count: 10,
            p50: 100,
            p99: 1_000,
            p999: 3_000,
            ..Percentiles::default()
        };
        r.gaps = 2;
        assert!(!r.slo().pass, "2 gaps fail the default SLO");
        r.slo_limits.max_gaps = 2;
        assert!(r.slo().pass);
        r.slo_limits.p99_dev_us = 0;
        assert!(
            !r.slo().p99_dev_ok && !r.slo().pass,
            "an impossible p99 limit"
        );
        assert!(r.to_table().contains("p99 dev <= 0 ms FAIL"));
        assert!(r.to_table().contains("gaps <= 2 ok"));
        assert_eq!(
            SloLimits::default().describe(),
            "p99 dev <= 2 ms, p99.9 dev <= 5 ms, zero gaps"
        );
    }

    #[test]
    fn silent_frames_inside_an_utterance_are_gaps() {
        let mut s = CallStats::new(0);
        // Utterance, 2 silent frames, audio again: one gap of two frames.
        let t = feed(&mut s, 0, "AAAA..AAAA");
        assert_eq!(
            (s.counts().silent_gaps, s.counts().silent_gap_frames),
            (1, 2)
        );
        // A long pause (> max_gap_ms) then audio: a separate reply, no gap.
        let t = feed(&mut s, t, &".".repeat(60));
        let t = feed(&mut s, t, "AAA");
        assert_eq!(s.counts().silent_gaps, 1);
        // A short pause but the caller started talking in it: a new reply.
        let t = feed(&mut s, t, "...");
        s.on_caller_frame(t, true);
        feed(&mut s, t, "AA");
        assert_eq!(s.counts().silent_gaps, 1);
        assert_eq!(s.gaps(), 1);
    }

    #[test]
    fn late_frames_inside_speech_are_gaps() {
        let mut s = CallStats::new(0);
        // A missing slot between audio frames: 40 ms inter-arrival.
        feed(&mut s, 0, "AAA_AAA");
        assert_eq!(s.counts().late_frames, 1);
        assert_eq!(s.counts().late_in_speech, 1);
        // 29 ms is not late; 31 ms is.
        s.on_frame(7 * FRAME_US + 9 * MS, true);
        assert_eq!(s.counts().late_frames, 1);
        s.on_frame(7 * FRAME_US + 9 * MS + 31 * MS, true);
        assert_eq!(s.counts().late_in_speech, 2);
        // Late while silent: late frame, not a gap.
        let mut q = CallStats::new(0);
        feed(&mut q, 0, ".._..");
        assert_eq!((q.counts().late_frames, q.gaps()), (1, 0));
    }

    #[test]
    fn first_audio_and_turn_latency() {
        let mut s = CallStats::new(1_000 * MS);
        // Greeting starts 500 ms after the call started.
        let t = feed(
            &mut s,
            1_000 * MS,
            &format!("{}{}", ".".repeat(25), "A".repeat(50)),
        );
        assert_eq!(s.first_audio_us(), Some(500 * MS));
        // Caller talks 1 s (starting after the greeting), stops; hangover 10 frames.
        let t = feed(&mut s, t, ".");
        let talk_start = t;
        let end = talk(&mut s, talk_start, &"T".repeat(50)) - FRAME_US;
        let after = talk(&mut s, end + FRAME_US, &"q".repeat(40));
        // voxd silent meanwhile, then replies 600 ms after the last talking frame.
        feed(&mut s, talk_start, &".".repeat(80));
        feed(&mut s, end + 600 * MS, "AAAA");
        assert_eq!(s.turn_latencies_us(), &[600 * MS]);
        assert!(after > end);
        let mut agg = Aggregate::new();
        agg.merge(&s);
        let r = agg.report(300);
        assert_eq!(r.turn_us.count, 1);
        assert!((600 * MS..=601 * MS).contains(&r.turn_us.p50));
        assert!((300 * MS..=301 * MS).contains(&r.turn_minus_think_us.p50));
        assert_eq!(r.counts.calls_without_agent_audio, 0);
    }

    #[test]
    fn reply_during_hangover_still_counts() {
        let mut s = CallStats::new(0);
        let end = talk(&mut s, 0, "TTTTT") - FRAME_US; // last talk at 80 ms
        feed(&mut s, 0, "......");
        // The agent answers 60 ms after the end, before the hangover confirms it.
        s.on_frame(end + 60 * MS, true);
        talk(&mut s, end + FRAME_US, &"q".repeat(10));
        assert_eq!(s.turn_latencies_us(), &[60 * MS]);
    }

    #[test]
    fn unanswered_turn_and_hangover_smoothing() {
        let mut s = CallStats::with_config(
            0,
            StatsConfig {
                caller_hangover_frames: 3,
                ..StatsConfig::default()
            },
        );
        // Two quiet frames inside speech do not split the spurt.
        let t = talk(&mut s, 0, "TTTqqTTTqqq");
        assert_eq!(s.counts().caller_spurts, 1);
        // No reply; the caller talks again: the first turn is unanswered.
        talk(&mut s, t, "TTqqq");
        assert_eq!(s.counts().caller_spurts, 2);
        assert_eq!(s.counts().turns_unanswered, 1);
        assert!(s.turn_latencies_us().is_empty());
    }

    #[test]
    fn barge_in_reaction() {
        let mut s = CallStats::new(0);
        let t = feed(&mut s, 0, "AAAAA");
        // Caller starts over the agent; audio stops 3 frames later.
        s.on_caller_frame(t, true);
        feed(&mut s, t, "AAA..");
        assert_eq!(s.barge_in_us(), &[60 * MS]);
        // A spurt that starts while the agent is silent is not a barge-in.
        let mut q = CallStats::new(0);
        let t = feed(&mut q, 0, "AA..");
        q.on_caller_frame(t, true);
        feed(&mut q, t, "...");
        assert!(q.barge_in_us().is_empty());
    }

    #[test]
    fn rtp_loss_reorder_wrap_and_ssrc_change() {
        let mut s = CallStats::new(0);
        for seq in [65_530u16, 65_531, 65_533, 65_532, 65_535, 0, 1, 3] {
            s.on_rtp(7, seq);
        }
        // 65530..=3 is 10 expected, 8 received (65534, 2 missing), 1 reordered.
        let c = s.final_counts();
        assert_eq!((c.rtp_expected, c.rtp_received, c.rtp_lost), (10, 8, 2));
        assert_eq!(c.rtp_reordered, 1);
        // New SSRC: its own sequence space.
        for seq in [100u16, 101, 102] {
            s.on_rtp(8, seq);
        }
        let c = s.final_counts();
        assert_eq!((c.rtp_expected, c.rtp_received, c.rtp_lost), (13, 11, 2));
        assert_eq!(c.rtp_ssrc_changes, 1);
        // A duplicate does not hide loss.
        let mut d = CallStats::new(0);
        for seq in [1u16, 1, 3] {
            d.on_rtp(1, seq);
        }
        assert_eq!(d.final_counts().rtp_lost, 0, "3 received of 3 expected");
        assert_eq!(d.final_counts().rtp_reordered, 1);
    }

    #[test]
    fn aggregate_report_json_and_table() {
        let mut agg = Aggregate::new();
        for call in 0..3u64 {
            let mut s = CallStats::new(0);
            feed(
                &mut s,
                0,
                &format!("{}{}", ".".repeat(10 + call as usize), "A".repeat(20)),
            );
            s.on_rtp(1, 10);
            s.on_rtp(1, 12);
            s.on_bad_frame();
            agg.merge(&s);
        }
        // A call with no audio at all.
        agg.merge(&CallStats::new(0));
        assert_eq!(agg.calls(), 4);
        let r = agg.report(300);
        assert_eq!(r.counts.calls_without_agent_audio, 1);
        assert_eq!(r.first_audio_us.count, 3);
        assert!((199 * MS..=201 * MS).contains(&r.first_audio_us.min));
        assert_eq!((r.counts.rtp_lost, r.counts.rtp_expected), (3, 9));
        assert!((r.rtp_loss_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.counts.bad_frames, 3);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["calls"], 4);
        assert_eq!(json["slo"]["pass"], true);
        assert!(json["inter_arrival_dev_us"]["p999"].is_u64());
        assert!(json["process"].is_null());
        let table = r.to_table();
        assert!(table.contains("inter-arrival deviation"));
        assert!(table.contains("=> PASS"));
        assert!(table.contains("rtp expected 9 received 6 lost 3"));
    }

    #[test]
    fn huge_values_clamp_not_panic() {
        let mut s = CallStats::new(0);
        s.on_frame(0, true);
        s.on_frame(u64::MAX / 2, true);
        s.on_frame(0, false); // clock went backwards: 20 ms deviation, no panic
        let mut agg = Aggregate::new();
        agg.merge(&s);
        let r = agg.report(u32::MAX);
        assert!(r.inter_arrival_dev_us.max >= MAX_TRACKED_US);
        assert_eq!(r.turn_minus_think_us.p50, 0);
    }
}
