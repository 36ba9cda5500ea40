//! The per-call state machine: caller audio to the provider, provider audio paced
//! back to the caller, barge-in, all driven by inputs and polled for outputs.
//!
//! Owns: one call's media pipeline, built from `media/` parts: decode, jitter buffer
//! (RTP), barge-in detector, resamplers both ways, playout, encode; the 20 ms pacing
//! schedule (`WakeAt`); the call's counters.
//!
//! Must not: read the clock (every input carries its time in ms on the caller's
//! monotonic clock), touch sockets or the provider connection, or allocate after
//! `Call::new` (buffers are fixed at construction; outputs borrow them).
//!
//! Use: feed `handle_input`, then call `poll_output` until it returns `None`, doing
//! what each output says before polling again.

#![forbid(unsafe_code)]

use thiserror::Error;

use super::codec::Codec;
use crate::media::jitter::{JitterBuffer, JitterStats};
use crate::media::playout::{FlushReport, Playout, PlayoutConfig, PlayoutStats, TickOutcome};
use crate::media::resample::Resampler;
use crate::media::vad::{BargeInDetector, VadConfig, VadEvent, VadStats};
use crate::media::FRAME_MS;

/// Largest PCM block handled in one step, in samples (20 ms at 48 kHz).
const MAX_BLOCK: usize = 960;
/// Room for resampled output of one block (upsampling 8 -> 48 kHz is x6 of 160).
const MAX_RESAMPLED: usize = 2 * MAX_BLOCK + 16;
/// Caller frames that may wait for `poll_output` on the way to the provider.
const PROVIDER_QUEUE_FRAMES: usize = 16;
/// A tick this late (ms) resets the schedule instead of bursting to catch up.
const MAX_TICK_LAG_MS: u64 = 100;

/// What a call is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallConfig {
    /// Encoding on the Asterisk side.
    pub caller: Codec,
    /// Encoding of the audio sent to the provider.
    pub provider: Codec,
    /// Encoding of the audio the provider sends (often the same as `provider`;
    /// OpenAI Realtime may use different input and output formats).
    pub provider_out: Codec,
    /// Outbound playout knobs.
    pub playout: PlayoutConfig,
    /// Barge-in knobs.
    pub vad: VadConfig,
    /// How long the RTP jitter buffer holds a gap open.
    pub jitter_depth_ms: u32,
}

/// Everything that can happen to a call.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Caller audio in order (AudioSocket): any whole number of samples.
    CallerAudio {
        /// Arrival time, ms.
        at_ms: u64,
        /// Payload in the caller codec.
        payload: &'a [u8],
    },
    /// Caller audio from RTP: one 20 ms frame with its extended sequence number.
    CallerRtp {
        /// Arrival time, ms.
        at_ms: u64,
        /// Extended (64-bit) RTP sequence number.
        seq: u64,
        /// Payload in the caller codec.
        payload: &'a [u8],
    },
    /// Agent audio from the provider, in the provider codec, any length. Only part of
    /// it may be taken when the playout queue is full: see `handle_input`'s return.
    ProviderAudio {
        /// Payload in the provider codec.
        payload: &'a [u8],
    },
    /// The provider finished the current utterance's audio.
    ProviderAudioDone,
    /// The provider heard the caller start talking (server-side VAD).
    ProviderSpeechStarted {
        /// When the event was received, ms.
        at_ms: u64,
    },
    /// The pacing timer fired.
    Tick {
        /// Now, ms.
        at_ms: u64,
    },
}

/// Who noticed the barge-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BargeInSource {
    /// voxd's own energy detector.
    Local,
    /// The provider's speech-started event.
    Provider,
}

/// What the caller of the state machine must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Write this frame to Asterisk (one per tick, agent audio or silence).
    SendToCaller {
        /// Payload in the caller codec.
        payload: &'a [u8],
        /// First frame of a talk spurt (RTP marker bit).
        marker: bool,
    },
    /// Write this audio to the provider (in the provider codec).
    SendToProvider(&'a [u8]),
    /// The agent's audio was cut: tell the provider (cancel / truncate at
    /// `played_ms`).
    BargeIn {
        /// Milliseconds of the interrupted utterance the caller heard.
        played_ms: u32,
        /// Who noticed.
        source: BargeInSource,
    },
    /// Call `Tick` at this time (ms).
    WakeAt(u64),
}

/// Bad input for this call; classified by who is at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CallError {
    /// Asterisk sent slin audio with an odd number of bytes.
    #[error("caller audio has an odd byte count ({0}) for 16-bit slin (Asterisk peer fault)")]
    OddCallerPayload(usize),
    /// Asterisk sent an empty audio payload.
    #[error("caller audio payload is empty (Asterisk peer fault)")]
    EmptyCallerPayload,
}

/// Upper bounds (ms) of the barge-in reaction buckets: from the barge-in (provider
/// `speech_started` received, or the caller frame that tripped the local detector)
/// to the first frame of silence on the wire. The last bucket is everything above.
pub const BARGE_IN_BUCKETS_MS: [u64; 7] = [5, 10, 20, 40, 80, 160, 320];

/// Upper bounds (ms) of the turn response buckets: from the caller's last loud
/// frame to the first frame of the agent's answer on the wire (what the caller
/// waits, playout start buffer included). The last bucket is everything above.
pub const TURN_BUCKETS_MS: [u64; 8] = [250, 500, 750, 1000, 1500, 2000, 3000, 5000];

/// Durations in ms counted per bucket of a fixed set of upper bounds (`N - 1`
/// bounds, the last bucket is "above"), with their sum: a Prometheus histogram's
/// raw parts, with no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsHistogram<const N: usize> {
    /// Count per bucket (not cumulative); the last is above the highest bound.
    pub buckets: [u64; N],
    /// Sum of all durations, ms.
    pub sum_ms: u64,
}

impl<const N: usize> Default for MsHistogram<N> {
    fn default() -> Self {
        MsHistogram {
            buckets: [0; N],
            sum_ms: 0,
        }
    }
}

impl<const N: usize> MsHistogram<N> {
    /// Count one duration of `ms` against `bounds` (`N - 1` ascending bounds).
    pub fn record(&mut self, bounds: &[u64], ms: u64) {
        let i = bounds
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(bounds.len())
            .min(N - 1);
        self.buckets[i] += 1;
        self.sum_ms += ms;
    }

    /// Add another histogram's counts.
    pub fn merge(&mut self, o: &MsHistogram<N>) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_ms += o.sum_ms;
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Upper bounds (ms) of the provider-audio-to-wire buckets.
pub const FIRST_FRAME_BUCKETS_MS: [u64; 7] = [20, 40, 80, 120, 160, 240, 400];

/// Barge-in reaction times per [`BARGE_IN_BUCKETS_MS`].
pub type ReactionHistogram = MsHistogram<8>;

/// Turn response times per [`TURN_BUCKETS_MS`].
pub type TurnHistogram = MsHistogram<9>;

/// Latencies a call measured on one tick (see [`Call::take_latency_samples`]), ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySamples {
    /// Barge-in to the first silent frame.
    pub barge_in_reaction_ms: Option<u64>,
    /// Provider audio of a new utterance received to its first frame on the wire.
    pub first_frame_ms: Option<u64>,
    /// Caller's last loud frame to the first frame of the answer.
    pub turn_response_ms: Option<u64>,
}

/// Counters of the whole call (the engine sums them per shard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Frames sent to the caller (audio and silence).
    pub frames_to_caller: u64,
    /// Caller frames (or blocks) sent to the provider.
    pub frames_to_provider: u64,
    /// Provider-bound bytes dropped because nobody polled them (engine bug guard).
    pub provider_bytes_dropped: u64,
    /// Ticks so late that the schedule was reset.
    pub late_ticks: u64,
    /// Barge-ins from the local detector.
    pub local_barge_ins: u64,
    /// Barge-ins from the provider.
    pub provider_barge_ins: u64,
    /// Barge-in to silence on the wire, ms.
    pub barge_in_reaction: ReactionHistogram,
    /// Caller's last loud frame to the agent's answer on the wire, ms.
    pub turn_response: TurnHistogram,
    /// Provider audio of a new utterance received to its first frame on the
    /// wire, ms per [`FIRST_FRAME_BUCKETS_MS`] (includes `min_start_ms`).
    pub first_frame: ReactionHistogram,
    /// Playout counters.
    pub playout: PlayoutStats,
    /// Jitter buffer counters (RTP calls).
    pub jitter: JitterStats,
    /// Detector counters.
    pub vad: VadStats,
}

/// One call's media state machine.
#[derive(Debug)]
pub struct Call {
    cfg: CallConfig,
    jitter: JitterBuffer,
    vad: BargeInDetector,
    up: Resampler,
    down: Resampler,
    playout: Playout,
    // Scratch and output buffers, fixed at construction.
    caller_pcm: Box<[i16]>,
    resampled: Box<[i16]>,
    provider_pcm: Box<[i16]>,
    to_provider: Box<[u8]>,
    to_provider_len: usize,
    tick_pcm: Box<[i16]>,
    to_caller: Box<[u8]>,
    caller_pending: Option<bool>,
    barge_in: Option<(u32, BargeInSource)>,
    /// When the barge-in whose reaction is not measured yet happened, ms.
    barge_in_at: Option<u64>,
    /// Latencies measured since the engine last took them.
    samples: LatencySamples,
    /// The caller's last loud frame while the agent was quiet (turn response).
    caller_spoke_at: Option<u64>,
    /// When the first audio of an utterance not yet on the wire arrived.
    audio_arrived_at: Option<u64>,
    /// RFC 3550 interarrival jitter estimate, in 8 kHz units times 16.
    jitter_x16: u64,
    /// Previous packet's transit (arrival minus timestamp, 8 kHz units).
    last_transit: Option<i64>,
    wake: Option<u64>,
    next_tick: u64,
    odd_byte: Option<u8>,
    stats: CallStats,
}

impl Call {
    /// A call starting at `now_ms`; its first output is `WakeAt(now_ms)`.
    pub fn new(cfg: CallConfig, now_ms: u64) -> Self {
        let caller_rate = cfg.caller.rate();
        let provider_rate = cfg.provider.rate();
        let provider_out_rate = cfg.provider_out.rate();
        let caller_frame = caller_rate.samples_per_frame();
        Call {
            cfg,
            jitter: JitterBuffer::new(caller_frame, cfg.jitter_depth_ms),
            vad: BargeInDetector::new(cfg.vad),
            up: Resampler::new(caller_rate, provider_rate),
            down: Resampler::new(provider_out_rate, caller_rate),
            playout: Playout::new(cfg.playout, caller_rate.samples_per_ms()),
            caller_pcm: vec![0; MAX_BLOCK].into_boxed_slice(),
            resampled: vec![0; MAX_RESAMPLED].into_boxed_slice(),
            provider_pcm: vec![0; MAX_BLOCK].into_boxed_slice(),
            to_provider: vec![0; PROVIDER_QUEUE_FRAMES * cfg.provider.frame_bytes() * 2]
                .into_boxed_slice(),
            to_provider_len: 0,
            tick_pcm: vec![0; caller_frame].into_boxed_slice(),
            to_caller: vec![0; cfg.caller.frame_bytes()].into_boxed_slice(),
            caller_pending: None,
            barge_in: None,
            barge_in_at: None,
            samples: LatencySamples::default(),
            caller_spoke_at: None,
            audio_arrived_at: None,
            jitter_x16: 0,
            last_transit: None,
            wake: Some(now_ms),
            next_tick: now_ms,
            odd_byte: None,
            stats: CallStats::default(),
        }
    }

    /// Switch the provider side to `input` / `output` codecs (the call's provider
    /// was chosen after the media session started). Called once at set-up, before
    /// provider audio flows: it rebuilds the converters (allocates) and drops any
    /// caller audio queued for the provider in the old codec.
    pub fn set_provider_codecs(&mut self, input: Codec, output: Codec) {
        if input == self.cfg.provider && output == self.cfg.provider_out {
            return;
        }
        let caller_rate = self.cfg.caller.rate();
        if input != self.cfg.provider {
            self.up = Resampler::new(caller_rate, input.rate());
            let need = PROVIDER_QUEUE_FRAMES * input.frame_bytes() * 2;
            if self.to_provider.len() < need {
                self.to_provider = vec![0; need].into_boxed_slice();
            }
            self.to_provider_len = 0;
        }
        if output != self.cfg.provider_out {
            self.down = Resampler::new(output.rate(), caller_rate);
            self.odd_byte = None;
        }
        self.cfg.provider = input;
        self.cfg.provider_out = output;
    }

    /// The configuration the call was built with.
    pub fn config(&self) -> &CallConfig {
        &self.cfg
    }

    /// The latencies measured since the last call (each at most once per tick),
    /// for the engine's per-shard percentiles; clears them.
    pub fn take_latency_samples(&mut self) -> LatencySamples {
        std::mem::take(&mut self.samples)
    }

    /// Counters so far.
    pub fn stats(&self) -> CallStats {
        CallStats {
            playout: self.playout.stats(),
            jitter: self.jitter.stats(),
            vad: self.vad.stats(),
            ..self.stats
        }
    }

    /// Provider audio is about to be handed in at `at_ms` (the engine calls this
    /// before `Input::ProviderAudio`): the first audio of an utterance starts the
    /// provider-audio-to-wire clock.
    pub fn provider_audio_arrived(&mut self, at_ms: u64) {
        if !self.playout.is_active() && self.audio_arrived_at.is_none() {
            self.audio_arrived_at = Some(at_ms);
        }
    }

    /// The RFC 3550 interarrival jitter estimate of the caller's RTP, ms (0 for
    /// AudioSocket calls).
    pub fn rtp_jitter_ms(&self) -> f64 {
        self.jitter_x16 as f64 / 16.0 / 8.0
    }

    /// RFC 3550 A.8 with the sequence number standing in for the timestamp (one
    /// packet per 20 ms frame of `samples` samples), arrival in ms: J += (|D| - J)/16.
    fn estimate_jitter(&mut self, at_ms: u64, seq: u64, samples: usize) {
        let units_per_sample = 8000 / self.cfg.caller.rate().hz().max(1) as i64;
        let ts = (seq as i64).wrapping_mul(samples as i64 * units_per_sample.max(1));
        let transit = (at_ms as i64).wrapping_mul(8).wrapping_sub(ts);
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last).unsigned_abs().min(1 << 20);
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Queued agent audio, ms.
    pub fn playout_depth_ms(&self) -> u32 {
        self.playout.depth_ms()
    }

    /// RTP jitter buffer depth, ms.
    pub fn jitter_depth_ms(&self) -> u32 {
        self.jitter.depth_ms()
    }

    /// True while the agent is speaking (an utterance is queued or playing).
    pub fn agent_speaking(&self) -> bool {
        self.playout.is_active()
    }

    /// Handle one input. Returns the number of payload bytes taken: all of them,
    /// except for `ProviderAudio` when the playout queue is full, in which case the
    /// caller keeps the rest and offers it again after the next tick.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<usize, CallError> {
        match input {
            Input::CallerAudio { at_ms, payload } => {
                self.caller_audio(at_ms, payload)?;
                Ok(payload.len())
            }
            Input::CallerRtp {
                at_ms,
                seq,
                payload,
            } => {
                let n = payload.len() / self.cfg.caller.bytes_per_sample();
                if payload.is_empty() || n > MAX_BLOCK {
                    // Counted as a wrong-size frame by the jitter buffer.
                    self.jitter.push(at_ms, seq, &[]);
                    return Ok(payload.len());
                }
                let got = self.cfg.caller.decode(payload, &mut self.caller_pcm[..n]);
                self.estimate_jitter(at_ms, seq, got);
                self.jitter.push(at_ms, seq, &self.caller_pcm[..got]);
                self.drain_jitter(at_ms);
                Ok(payload.len())
            }
            Input::ProviderAudio { payload } => Ok(self.provider_audio(payload)),
            Input::ProviderAudioDone => {
                self.playout.mark_end();
                Ok(0)
            }
            Input::ProviderSpeechStarted { at_ms } => {
                let r = self.flush();
                if r.was_active {
                    self.stats.provider_barge_ins += 1;
                    self.barge_in = Some((r.played_ms, BargeInSource::Provider));
                    self.barge_in_at = Some(at_ms);
                }
                Ok(0)
            }
            Input::Tick { at_ms } => {
                self.tick(at_ms);
                Ok(0)
            }
        }
    }

    /// The next thing to do, or `None` when there is nothing until the next input.
    /// The returned slice lives until the next call on this `Call`.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        if let Some((played_ms, source)) = self.barge_in.take() {
            return Some(Output::BargeIn { played_ms, source });
        }
        if self.to_provider_len > 0 {
            let n = std::mem::take(&mut self.to_provider_len);
            return Some(Output::SendToProvider(&self.to_provider[..n]));
        }
        if let Some(marker) = self.caller_pending.take() {
            return Some(Output::SendToCaller {
                payload: &self.to_caller[..],
                marker,
            });
        }
        self.wake.take().map(Output::WakeAt)
    }

    fn flush(&mut self) -> FlushReport {
        let r = self.playout.flush();
        self.down.reset();
        self.odd_byte = None;
        self.audio_arrived_at = None;
        r
    }

    fn caller_audio(&mut self, at_ms: u64, payload: &[u8]) -> Result<(), CallError> {
        let bps = self.cfg.caller.bytes_per_sample();
        if payload.is_empty() {
            return Err(CallError::EmptyCallerPayload);
        }
        if payload.len() % bps != 0 {
            return Err(CallError::OddCallerPayload(payload.len()));
        }
        let block = self.cfg.caller.frame_bytes().min(MAX_BLOCK * bps);
        let mut t = at_ms;
        for chunk in payload.chunks(block) {
            let n = self.cfg.caller.decode(chunk, &mut self.caller_pcm);
            self.caller_block(t, Some(chunk), n);
            t += (n / self.cfg.caller.rate().samples_per_ms().max(1)) as u64;
        }
        Ok(())
    }

    fn drain_jitter(&mut self, now_ms: u64) {
        let frame = self.jitter.frame_samples();
        while self
            .jitter
            .pop_ready(now_ms, &mut self.caller_pcm[..frame])
            .is_some()
        {
            // The jitter buffer holds samples, so the provider side is re-encoded
            // from PCM (no byte passthrough on this path).
            self.caller_block(now_ms, None, frame);
        }
    }

    /// One block of decoded caller audio in `caller_pcm[..n]`; `raw` is its wire bytes
    /// when they can be passed through to a provider using the same codec.
    fn caller_block(&mut self, at_ms: u64, raw: Option<&[u8]>, n: usize) {
        let ms = (n / self.cfg.caller.rate().samples_per_ms().max(1)) as u32;
        let speaking = self.playout.is_active();
        if !speaking && self.vad.is_loud(&self.caller_pcm[..n]) {
            self.caller_spoke_at = Some(at_ms);
        }
        if self
            .vad
            .feed(at_ms, &self.caller_pcm[..n], ms.max(1), speaking)
            == VadEvent::BargeIn
        {
            let r = self.flush();
            if r.was_active {
                self.stats.local_barge_ins += 1;
                self.barge_in = Some((r.played_ms, BargeInSource::Local));
                self.barge_in_at = Some(at_ms);
            }
        }
        match raw {
            Some(raw) if self.cfg.caller == self.cfg.provider => self.queue_to_provider_bytes(raw),
            _ => self.queue_to_provider_pcm(n),
        }
    }

    fn queue_to_provider_bytes(&mut self, raw: &[u8]) {
        let room = self.to_provider.len() - self.to_provider_len;
        if raw.len() > room {
            self.stats.provider_bytes_dropped += raw.len() as u64;
            return;
        }
        self.to_provider[self.to_provider_len..self.to_provider_len + raw.len()]
            .copy_from_slice(raw);
        self.to_provider_len += raw.len();
        self.stats.frames_to_provider += 1;
    }

    fn queue_to_provider_pcm(&mut self, n: usize) {
        let out_n = self.up.output_len(n).min(self.resampled.len());
        let got = self
            .up
            .process(&self.caller_pcm[..n], &mut self.resampled[..out_n])
            .unwrap_or(0);
        let bytes = got * self.cfg.provider.bytes_per_sample();
        let room = self.to_provider.len() - self.to_provider_len;
        if bytes > room {
            self.stats.provider_bytes_dropped += bytes as u64;
            return;
        }
        let start = self.to_provider_len;
        let w = self.cfg.provider.encode(
            &self.resampled[..got],
            &mut self.to_provider[start..start + bytes],
        );
        self.to_provider_len += w;
        self.stats.frames_to_provider += 1;
    }

    fn provider_audio(&mut self, payload: &[u8]) -> usize {
        let codec = self.cfg.provider_out;
        let bps = codec.bytes_per_sample();
        let mut taken = 0;
        let mut rest = payload;
        // A slin byte left over from the previous chunk completes a sample first.
        if let (Some(lo), Some(&hi)) = (self.odd_byte, rest.first()) {
            let s = i16::from_le_bytes([lo, hi]);
            let out_n = self.down.output_len(1);
            if self.playout.free_samples() < out_n {
                return 0;
            }
            let got = self
                .down
                .process(&[s], &mut self.resampled[..out_n])
                .unwrap_or(0);
            self.playout.push(&self.resampled[..got]);
            self.odd_byte = None;
            rest = &rest[1..];
            taken += 1;
        }
        let block_bytes = codec.frame_bytes().min(MAX_BLOCK * bps);
        while rest.len() >= bps {
            let len = (rest.len() - rest.len() % bps).min(block_bytes);
            let n = len / bps;
            let out_n = self.down.output_len(n);
            if out_n > self.resampled.len() || self.playout.free_samples() < out_n {
                return taken;
            }
            let d = codec.decode(&rest[..len], &mut self.provider_pcm[..n]);
            let got = self
                .down
                .process(&self.provider_pcm[..d], &mut self.resampled[..out_n])
                .unwrap_or(0);
            self.playout.push(&self.resampled[..got]);
            rest = &rest[len..];
            taken += len;
        }
        if rest.len() == 1 && bps == 2 {
            self.odd_byte = Some(rest[0]);
            taken += 1;
        }
        taken
    }

    fn tick(&mut self, at_ms: u64) {
        if at_ms < self.next_tick {
            // Early (spurious) wake-up: just ask again for the right time.
            self.wake = Some(self.next_tick);
            return;
        }
        if at_ms >= self.next_tick + MAX_TICK_LAG_MS {
            self.stats.late_ticks += 1;
            self.next_tick = at_ms;
        }
        self.next_tick += u64::from(FRAME_MS);
        self.drain_jitter(at_ms);
        let outcome = self.playout.tick(at_ms, &mut self.tick_pcm);
        if let Some(t0) = self.barge_in_at.take() {
            // This frame is the first the caller gets after the flush.
            let ms = at_ms.saturating_sub(t0);
            self.stats
                .barge_in_reaction
                .record(&BARGE_IN_BUCKETS_MS, ms);
            self.samples.barge_in_reaction_ms = Some(ms);
        }
        let marker = matches!(outcome, TickOutcome::Audio { first: true });
        if marker {
            if let Some(t) = self.audio_arrived_at.take() {
                let ms = at_ms.saturating_sub(t);
                self.stats.first_frame.record(&FIRST_FRAME_BUCKETS_MS, ms);
                self.samples.first_frame_ms = Some(ms);
            }
            if let Some(t) = self.caller_spoke_at.take() {
                let ms = at_ms.saturating_sub(t);
                self.stats.turn_response.record(&TURN_BUCKETS_MS, ms);
                self.samples.turn_response_ms = Some(ms);
            }
        }
        self.cfg.caller.encode(&self.tick_pcm, &mut self.to_caller);
        self.caller_pending = Some(marker);
        self.stats.frames_to_caller += 1;
        self.wake = Some(self.next_tick);
    }
}
