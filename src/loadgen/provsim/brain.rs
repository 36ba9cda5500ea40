//! The simulators' agent brain, sans-IO: the `sim` provider's [`SimAgent`] (turn
//! detection, think time, speech-like reply audio in bursts, barge-in) plus an
//! utterance VAD that reports the start and end of *every* caller utterance, as the
//! real services' server-side VAD does (OpenAI `speech_started`/`speech_stopped`,
//! Deepgram `UserStartedSpeaking`, local STT partials and finals).
//!
//! Owns: turn-taking modes ([`TurnMode`]: the agent decides everything; VAD events
//! with optional auto-reply and interruption; manual), replies asked for by the
//! client (greetings, `response.create`), cancellation, and the conversion of reply
//! PCM to the session's output codec (resampled when its rate differs from the
//! input's). The VAD mirrors the agent's own rules (same energy threshold, same
//! timeline, same silence and barge-in lengths), so its events line up with the
//! agent's decisions chunk for chunk.
//!
//! Must not: use tokio, read the clock (times are ms since the connection opened,
//! passed in), touch sockets or know any protocol's message shapes.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use crate::call::Codec;
use crate::media::resample::Resampler;
use crate::media::vad::{BargeInDetector, VadConfig};
use crate::provider::sim::agent::mix_seed;
use crate::provider::sim::{SimAction, SimAgent, SimConfig};
use crate::provider::Role;

/// Who decides when the agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnMode {
    /// The agent: every caller utterance is answered after the think time, and
    /// caller speech over a reply cuts it (OpenAI server VAD with
    /// `create_response` and `interrupt_response`, Deepgram, local full mode).
    Agent,
    /// VAD events only; answer utterances when `auto`, cut replies on caller speech
    /// when `interrupt` (OpenAI server VAD with either flag off, local STT mode).
    /// An utterance that ends while a reply is still being delivered is not
    /// answered.
    Vad {
        /// Answer each utterance.
        auto: bool,
        /// Caller speech cuts the reply.
        interrupt: bool,
    },
    /// No VAD at all: replies only when the client asks (OpenAI
    /// `turn_detection: null`).
    Manual,
}

/// Knobs of a [`Brain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BrainConfig {
    /// End of utterance to first reply audio (ms).
    pub think_ms: u32,
    /// Length of an automatic reply (ms).
    pub reply_ms: u32,
    /// Audio per burst (ms).
    pub chunk_ms: u32,
    /// Time between bursts (ms).
    pub burst_interval_ms: u32,
    /// Quiet that ends an utterance (ms).
    pub silence_ms: u32,
    /// Seed of the synthesizer (already mixed with the connection number).
    pub seed: u64,
    /// Turn-taking mode.
    pub turns: TurnMode,
}

/// What the brain wants the protocol layer to tell the client, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BrainEvent {
    /// The caller started an utterance (after enough loud audio to be speech).
    /// `audio_ms`: where it started on the input audio timeline.
    SpeechStarted { audio_ms: u64 },
    /// The caller's utterance ended (`audio_ms`: end of speech plus the silence
    /// that ended it). `utterance`: long enough to be a turn (else a blip).
    /// `spoke_ms`: loud part's length.
    SpeechStopped {
        audio_ms: u64,
        utterance: bool,
        spoke_ms: u64,
    },
    /// The caller talked over a reply that was playing or being delivered: it is
    /// cut (a `ResponseDone { cancelled: true }` follows if audio was still being
    /// delivered).
    BargeIn,
    /// A reply starts; `total_ms` of audio will follow unless cut. `manual`: asked
    /// for by the client (greeting, `response.create`).
    ReplyStarted { total_ms: u32, manual: bool },
    /// Reply audio in the output codec.
    Audio(Vec<u8>),
    /// The reply's audio is complete.
    AudioDone,
    /// The reply ended; `cancelled` when it was cut before its audio was complete.
    ResponseDone { cancelled: bool },
}

/// What the VAD saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VadEvent {
    Started {
        audio_ms: u64,
    },
    Stopped {
        audio_ms: u64,
        eou_at: u64,
        utterance: bool,
        spoke_ms: u64,
    },
}

/// An utterance detector with the agent's rules: a chunk is loud above the energy
/// threshold; an utterance starts once `start_ms` of loud audio accumulated and
/// ends `silence_ms` after the last loud chunk; shorter than `min_speech_ms` of loud
/// audio is a blip.
#[derive(Debug, Clone)]
struct UtteranceVad {
    detector: BargeInDetector,
    spms: usize,
    silence_ms: u32,
    start_ms: u32,
    min_speech_ms: u32,
    stream_end: u64,
    in_speech: bool,
    speech_start: u64,
    voiced_ms: u32,
    last_loud_end: u64,
    started: bool,
    buffer_ms: u64,
    start_audio_ms: u64,
    last_loud_audio_end: u64,
    events: VecDeque<VadEvent>,
}

impl UtteranceVad {
    fn new(sim: &SimConfig, spms: usize) -> Self {
        UtteranceVad {
            detector: BargeInDetector::new(VadConfig {
                energy_threshold: sim.energy_threshold,
                ..VadConfig::default()
            }),
            spms: spms.max(1),
            silence_ms: sim.silence_ms,
            start_ms: sim.barge_in_ms.max(1),
            min_speech_ms: sim.min_speech_ms,
            stream_end: 0,
            in_speech: false,
            speech_start: 0,
            voiced_ms: 0,
            last_loud_end: 0,
            started: false,
            buffer_ms: 0,
            start_audio_ms: 0,
            last_loud_audio_end: 0,
            events: VecDeque::new(),
        }
    }

    fn on_audio(&mut self, now: u64, pcm: &[i16]) {
        if pcm.is_empty() {
            return;
        }
        let dur = pcm.len().div_ceil(self.spms) as u64;
        let start = now.max(self.stream_end);
        let end = start + dur;
        self.stream_end = end;
        self.check_end(start);
        let audio_start = self.buffer_ms;
        self.buffer_ms += dur;
        if self.detector.is_loud(pcm) {
            if !self.in_speech {
                self.in_speech = true;
                self.speech_start = start;
                self.voiced_ms = 0;
                self.started = false;
                self.start_audio_ms = audio_start;
            }
            self.voiced_ms = self.voiced_ms.saturating_add(dur as u32);
            self.last_loud_end = end;
            self.last_loud_audio_end = self.buffer_ms;
        }
        if self.in_speech && !self.started && self.voiced_ms >= self.start_ms {
            self.started = true;
            self.events.push_back(VadEvent::Started {
                audio_ms: self.start_audio_ms,
            });
        }
    }

    fn check_end(&mut self, t: u64) {
        if !self.in_speech {
            return;
        }
        let eou_at = self.last_loud_end + u64::from(self.silence_ms);
        if t < eou_at {
            return;
        }
        self.in_speech = false;
        if self.started {
            self.events.push_back(VadEvent::Stopped {
                audio_ms: self.last_loud_audio_end + u64::from(self.silence_ms),
                eou_at,
                utterance: self.voiced_ms >= self.min_speech_ms,
                spoke_ms: self.last_loud_end - self.speech_start,
            });
        }
    }

    fn next_wakeup(&self) -> Option<u64> {
        self.in_speech
            .then(|| self.last_loud_end + u64::from(self.silence_ms))
    }

    fn speaking(&self) -> bool {
        self.in_speech && self.started
    }
}

/// A reply asked for by the client, on its own agent whose clock starts at `t0`.
#[derive(Debug, Clone)]
struct ManualReply {
    agent: SimAgent,
    t0: u64,
    total_ms: u32,
    /// Its `ReplyStarted` was emitted.
    started: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Main,
    Manual,
}

/// The agent of one simulated session (see the module docs).
#[derive(Debug)]
pub(crate) struct Brain {
    cfg: BrainConfig,
    sim: SimConfig,
    out_codec: Codec,
    vad: UtteranceVad,
    main: SimAgent,
    manual: Option<ManualReply>,
    pending: Option<(u64, u32)>,
    active: Option<Who>,
    audio_done: bool,
    queue: VecDeque<BrainEvent>,
    resampler: Option<Resampler>,
    rs_buf: Vec<i16>,
    manual_count: u64,
    now: u64,
}

impl Brain {
    /// A brain hearing PCM at `in_codec`'s rate and answering in `out_codec`.
    pub(crate) fn new(cfg: BrainConfig, in_codec: Codec, out_codec: Codec) -> Self {
        let sim = SimConfig {
            think_ms: cfg.think_ms,
            reply_ms: cfg.reply_ms,
            silence_ms: cfg.silence_ms,
            burst_ms: cfg.chunk_ms.max(1),
            burst_interval_ms: cfg.burst_interval_ms,
            greeting_ms: 0,
            echo: false,
            seed: mix_seed(cfg.seed, 1),
            ..SimConfig::default()
        };
        let in_rate = in_codec.rate();
        let out_rate = out_codec.rate();
        Brain {
            cfg,
            sim,
            out_codec,
            vad: UtteranceVad::new(&sim, in_rate.samples_per_ms()),
            main: SimAgent::new(sim, in_codec),
            manual: None,
            pending: None,
            active: None,
            audio_done: false,
            queue: VecDeque::new(),
            resampler: (in_rate != out_rate).then(|| Resampler::new(in_rate, out_rate)),
            rs_buf: Vec::new(),
            manual_count: 0,
            now: 0,
        }
    }

    /// Caller PCM (at the input codec's rate) received at `now` ms. Then `poll`.
    pub(crate) fn on_audio(&mut self, now: u64, pcm: &[i16]) {
        self.now = self.now.max(now);
        if self.cfg.turns == TurnMode::Manual {
            return;
        }
        self.vad.on_audio(now, pcm);
        if self.cfg.turns == TurnMode::Agent {
            self.main.on_caller_audio(now, pcm);
        }
        self.process_vad();
    }

    /// Start a reply of `ms` asked for by the client (greeting, `response.create`,
    /// injected message). Returns `false` (and does nothing) while a reply is being
    /// delivered.
    pub(crate) fn start_reply(&mut self, now: u64, ms: u32) -> bool {
        self.now = self.now.max(now);
        if self.is_replying() {
            return false;
        }
        self.manual_count += 1;
        let sim = SimConfig {
            greeting_ms: ms.max(1),
            seed: mix_seed(self.cfg.seed, 1000 + self.manual_count),
            ..self.sim
        };
        self.manual = Some(ManualReply {
            agent: SimAgent::new(sim, self.main_codec()),
            t0: self.now,
            total_ms: ms.max(1),
            started: false,
        });
        true
    }

    /// Render a whole utterance of `ms` in the output codec at once (a TTS request
    /// answered in one piece), without touching the turn state.
    pub(crate) fn render(&mut self, ms: u32) -> Vec<u8> {
        self.manual_count += 1;
        let sim = SimConfig {
            greeting_ms: ms.max(1),
            burst_ms: ms.max(1),
            seed: mix_seed(self.cfg.seed, 1000 + self.manual_count),
            ..self.sim
        };
        let mut agent = SimAgent::new(sim, self.main_codec());
        let mut out = Vec::new();
        while let Some(a) = agent.poll(0) {
            if let SimAction::Audio(pcm) = a {
                if let Some(r) = &mut self.resampler {
                    r.reset();
                }
                out.extend(self.encode(&pcm));
            }
        }
        out
    }

    /// The client cancelled the reply (or cut it locally): stop delivering; a
    /// `ResponseDone { cancelled: true }` follows. Returns whether a reply was being
    /// delivered.
    pub(crate) fn cancel(&mut self, now: u64) -> bool {
        self.now = self.now.max(now);
        match self.active {
            Some(Who::Main) => self.main.on_barge_in(self.now, 0),
            Some(Who::Manual) => {
                if let Some(m) = &mut self.manual {
                    m.agent.on_barge_in(self.now.saturating_sub(m.t0), 0);
                }
            }
            None if self.manual.as_ref().is_some_and(|m| !m.started) => {
                // Asked for and not started yet: forget it.
                self.manual = None;
            }
            None => return false,
        }
        true
    }

    /// Whether a reply is being delivered (between `ReplyStarted` and
    /// `ResponseDone`) or was asked for and is about to start.
    pub(crate) fn is_replying(&self) -> bool {
        self.active.is_some() || self.manual.as_ref().is_some_and(|m| !m.started)
    }

    /// Whether the caller is in the middle of an utterance (started, not ended).
    pub(crate) fn user_speaking(&self) -> bool {
        self.vad.speaking()
    }

    /// Whether the caller still hears (or is about to hear) agent audio at `now`.
    pub(crate) fn agent_speaking(&self, now: u64) -> bool {
        self.main.is_speaking(now)
            || self
                .manual
                .as_ref()
                .is_some_and(|m| m.agent.is_speaking(now.saturating_sub(m.t0)))
    }

    /// The next event at `now`, if any. Call until `None` after every input and at
    /// `next_wakeup`.
    pub(crate) fn poll(&mut self, now: u64) -> Option<BrainEvent> {
        self.now = self.now.max(now);
        let now = self.now;
        if let Some(e) = self.queue.pop_front() {
            return Some(e);
        }
        if self.cfg.turns != TurnMode::Manual {
            self.vad.check_end(now);
            self.process_vad();
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
        }
        if let Some((at, ms)) = self.pending {
            if now >= at {
                self.pending = None;
                if self.active.is_none() {
                    self.start_reply(at, ms);
                }
            }
        }
        while self.queue.is_empty() {
            let Some(a) = self.main.poll(now) else { break };
            self.on_action(Who::Main, a);
        }
        while self.queue.is_empty() {
            let Some(m) = &mut self.manual else { break };
            let Some(a) = m.agent.poll(now.saturating_sub(m.t0)) else {
                break;
            };
            self.on_action(Who::Manual, a);
        }
        if let Some(m) = &self.manual {
            let t = now.saturating_sub(m.t0);
            if self.active != Some(Who::Manual)
                && !m.agent.is_speaking(t)
                && m.agent.next_wakeup().is_none()
            {
                self.manual = None;
            }
        }
        self.queue.pop_front()
    }

    /// When `poll` next has something to do (ms), if ever without new input.
    pub(crate) fn next_wakeup(&self) -> Option<u64> {
        if !self.queue.is_empty() {
            return Some(self.now);
        }
        [
            self.vad.next_wakeup(),
            self.pending.map(|(at, _)| at),
            self.main.next_wakeup(),
            self.manual
                .as_ref()
                .and_then(|m| m.agent.next_wakeup().map(|w| w + m.t0)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The codec the agents synthesize in (the input's rate).
    fn main_codec(&self) -> Codec {
        Codec::Slin(self.main.rate())
    }

    fn process_vad(&mut self) {
        while let Some(e) = self.vad.events.pop_front() {
            match e {
                VadEvent::Started { audio_ms } => {
                    self.queue.push_back(BrainEvent::SpeechStarted { audio_ms });
                    let interrupt = match self.cfg.turns {
                        TurnMode::Agent => true,
                        TurnMode::Vad { interrupt, .. } => interrupt,
                        TurnMode::Manual => false,
                    };
                    // A scheduled answer is dropped: the turn is not over.
                    self.pending = None;
                    if interrupt {
                        self.cut_manual();
                    }
                }
                VadEvent::Stopped {
                    audio_ms,
                    eou_at,
                    utterance,
                    spoke_ms,
                } => {
                    self.queue.push_back(BrainEvent::SpeechStopped {
                        audio_ms,
                        utterance,
                        spoke_ms,
                    });
                    if utterance && matches!(self.cfg.turns, TurnMode::Vad { auto: true, .. }) {
                        self.pending =
                            Some((eou_at + u64::from(self.cfg.think_ms), self.cfg.reply_ms));
                    }
                }
            }
        }
    }

    /// Caller speech over a client-requested reply: cut it if the caller hears it.
    fn cut_manual(&mut self) {
        let now = self.now;
        if let Some(m) = &mut self.manual {
            let t = now.saturating_sub(m.t0);
            if m.agent.is_speaking(t) {
                m.agent.on_barge_in(t, 0);
                self.queue.push_back(BrainEvent::BargeIn);
            }
        }
    }

    fn on_action(&mut self, who: Who, action: SimAction) {
        match action {
            SimAction::Transcript {
                role: Role::Agent, ..
            } => {
                if who == Who::Manual && self.active == Some(Who::Main) {
                    // One reply at a time: the agent is already answering.
                    self.manual = None;
                    return;
                }
                if who == Who::Main && self.manual.is_some() {
                    // The agent answers the caller: a client-requested reply still
                    // running (or about to) is cancelled first.
                    self.manual = None;
                    if self.active == Some(Who::Manual) {
                        self.queue
                            .push_back(BrainEvent::ResponseDone { cancelled: true });
                    }
                }
                if who == Who::Manual {
                    if let Some(m) = &mut self.manual {
                        m.started = true;
                    }
                }
                self.active = Some(who);
                self.audio_done = false;
                if let Some(r) = &mut self.resampler {
                    r.reset();
                }
                let (total_ms, manual) = match who {
                    Who::Main => (self.cfg.reply_ms, false),
                    Who::Manual => (self.manual.as_ref().map_or(0, |m| m.total_ms), true),
                };
                self.queue
                    .push_back(BrainEvent::ReplyStarted { total_ms, manual });
            }
            SimAction::Transcript { .. } => {} // the VAD reports the caller's side
            SimAction::Audio(pcm) => {
                if self.active == Some(who) {
                    let bytes = self.encode(&pcm);
                    self.queue.push_back(BrainEvent::Audio(bytes));
                }
                match who {
                    Who::Main => self.main.recycle(pcm),
                    Who::Manual => {
                        if let Some(m) = &mut self.manual {
                            m.agent.recycle(pcm);
                        }
                    }
                }
            }
            SimAction::AudioDone => {
                if self.active == Some(who) {
                    self.audio_done = true;
                    self.queue.push_back(BrainEvent::AudioDone);
                }
            }
            SimAction::ResponseDone => {
                if self.active == Some(who) {
                    self.active = None;
                    self.queue.push_back(BrainEvent::ResponseDone {
                        cancelled: !self.audio_done,
                    });
                }
            }
            SimAction::SpeechStarted => self.queue.push_back(BrainEvent::BargeIn),
        }
    }

    fn encode(&mut self, pcm: &[i16]) -> Vec<u8> {
        let samples: &[i16] = match &mut self.resampler {
            Some(r) => {
                self.rs_buf.resize(r.output_len(pcm.len()), 0);
                let n = r.process(pcm, &mut self.rs_buf).unwrap_or(0);
                &self.rs_buf[..n]
            }
            None => pcm,
        };
        let mut bytes = vec![0u8; samples.len() * self.out_codec.bytes_per_sample()];
        let n = self.out_codec.encode(samples, &mut bytes);
        bytes.truncate(n);
        bytes
    }
}

/// Decode whole samples of `codec` from `bytes` into `pcm` (cleared first); a
/// trailing odd byte of 16-bit PCM is ignored.
pub(crate) fn decode(codec: Codec, bytes: &[u8], pcm: &mut Vec<i16>) {
    let n = bytes.len() / codec.bytes_per_sample();
    pcm.clear();
    pcm.resize(n, 0);
    let k = codec.decode(&bytes[..n * codec.bytes_per_sample()], pcm);
    pcm.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Rate;
    use std::f32::consts::TAU;

    fn cfg(turns: TurnMode) -> BrainConfig {
        BrainConfig {
            think_ms: 300,
            reply_ms: 1000,
            chunk_ms: 100,
            burst_interval_ms: 20,
            silence_ms: 500,
            seed: 7,
            turns,
        }
    }

    fn tone(n: usize, rate: u32) -> Vec<i16> {
        (0..n)
            .map(|i| (5000.0 * (TAU * 440.0 * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    /// Feed 20 ms frames per `script` entry (true = loud) from `from`, polling at
    /// every wake-up, then run without input until `until`.
    fn drive(
        b: &mut Brain,
        rate: u32,
        from: u64,
        script: &[bool],
        until: u64,
    ) -> Vec<(u64, BrainEvent)> {
        let n = rate as usize / 50;
        let loud = tone(n, rate);
        let quiet = vec![0i16; n];
        let mut out = Vec::new();
        let mut t = from;
        let mut i = 0;
        loop {
            let frame_t = (i < script.len()).then(|| from + 20 * i as u64);
            let wake = b.next_wakeup().map(|w| w.max(t));
            let step = match (frame_t, wake) {
                (Some(f), Some(w)) => f.min(w),
                (Some(f), None) => f,
                (None, Some(w)) => w,
                (None, None) => break,
            };
            if step > until {
                break;
            }
            t = step;
            if frame_t == Some(t) {
                b.on_audio(t, if script[i] { &loud } else { &quiet });
                i += 1;
            }
            while let Some(e) = b.poll(t) {
                out.push((t, e));
            }
        }
        out
    }

    fn speech(loud: usize, quiet: usize) -> Vec<bool> {
        let mut v = vec![true; loud];
        v.extend(std::iter::repeat_n(false, quiet));
        v
    }

    fn audio_bytes(ev: &[(u64, BrainEvent)]) -> usize {
        ev.iter()
            .map(|(_, e)| match e {
                BrainEvent::Audio(b) => b.len(),
                _ => 0,
            })
            .sum()
    }

    fn kinds(ev: &[(u64, BrainEvent)]) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = ev
            .iter()
            .map(|(_, e)| match e {
                BrainEvent::SpeechStarted { .. } => "started",
                BrainEvent::SpeechStopped { .. } => "stopped",
                BrainEvent::BargeIn => "barge_in",
                BrainEvent::ReplyStarted { .. } => "reply",
                BrainEvent::Audio(_) => "audio",
                BrainEvent::AudioDone => "audio_done",
                BrainEvent::ResponseDone { cancelled: false } => "done",
                BrainEvent::ResponseDone { cancelled: true } => "cancelled",
            })
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn agent_turn_has_vad_events_then_a_full_reply() {
        let mut b = Brain::new(cfg(TurnMode::Agent), Codec::Pcmu, Codec::Pcmu);
        let ev = drive(&mut b, 8000, 0, &speech(50, 100), 10_000);
        assert_eq!(
            kinds(&ev),
            ["started", "stopped", "reply", "audio", "audio_done", "done"]
        );
        // Started after 120 ms of speech, at the utterance's start on the audio
        // timeline; stopped 500 ms after the last loud frame.
        assert_eq!(ev[0], (100, BrainEvent::SpeechStarted { audio_ms: 0 }));
        assert_eq!(
            ev[1],
            (
                1500,
                BrainEvent::SpeechStopped {
                    audio_ms: 1500,
                    utterance: true,
                    spoke_ms: 1000
                }
            )
        );
        assert_eq!(ev[2].0, 1800, "think time");
        assert_eq!(audio_bytes(&ev), 8000);
        assert!(!b.is_replying());
    }

    #[test]
    fn output_is_resampled_when_rates_differ() {
        let mut b = Brain::new(
            cfg(TurnMode::Agent),
            Codec::Pcmu,
            Codec::Slin(Rate::Hz24000),
        );
        let ev = drive(&mut b, 8000, 0, &speech(50, 100), 10_000);
        // 1 s at 24 kHz, 16-bit.
        assert_eq!(audio_bytes(&ev), 48_000);
    }

    #[test]
    fn caller_over_the_reply_is_a_barge_in() {
        let mut b = Brain::new(cfg(TurnMode::Agent), Codec::Pcmu, Codec::Pcmu);
        // Reply starts at 1800; the caller talks again from 1840.
        let mut script = speech(50, 42);
        script.extend(speech(30, 100));
        let ev = drive(&mut b, 8000, 0, &script, 20_000);
        let k = kinds(&ev);
        assert_eq!(
            &k[..7],
            [
                "started",
                "stopped",
                "reply",
                "audio",
                "started",
                "barge_in",
                "cancelled"
            ]
        );
        // The second utterance gets its own full reply.
        assert_eq!(k.last(), Some(&"done"));
        let first: usize = ev
            .iter()
            .take_while(|(_, e)| *e != BrainEvent::BargeIn)
            .map(|(_, e)| match e {
                BrainEvent::Audio(a) => a.len(),
                _ => 0,
            })
            .sum();
        assert!(first > 0 && first < 8000, "{first}");
    }

    #[test]
    fn blip_is_reported_but_not_answered() {
        let mut b = Brain::new(cfg(TurnMode::Agent), Codec::Pcmu, Codec::Pcmu);
        let ev = drive(&mut b, 8000, 0, &speech(8, 60), 10_000);
        assert_eq!(kinds(&ev), ["started", "stopped"]);
        assert!(matches!(
            ev[1].1,
            BrainEvent::SpeechStopped {
                utterance: false,
                ..
            }
        ));
    }

    #[test]
    fn manual_reply_and_cancel() {
        let mut b = Brain::new(cfg(TurnMode::Manual), Codec::Pcmu, Codec::Pcmu);
        assert!(b.start_reply(0, 600));
        assert!(b.is_replying());
        assert!(!b.start_reply(0, 600), "one reply at a time");
        let ev = drive(&mut b, 8000, 0, &[], 10_000);
        assert_eq!(kinds(&ev), ["reply", "audio", "audio_done", "done"]);
        assert_eq!(audio_bytes(&ev), 4800);
        // A second one, cancelled after its first burst.
        assert!(b.start_reply(20_000, 2000));
        assert!(matches!(
            b.poll(20_000),
            Some(BrainEvent::ReplyStarted {
                total_ms: 2000,
                manual: true
            })
        ));
        assert!(matches!(b.poll(20_000), Some(BrainEvent::Audio(_))));
        assert!(!b.start_reply(20_001, 100));
        assert!(b.cancel(20_010));
        assert_eq!(
            b.poll(20_010),
            Some(BrainEvent::ResponseDone { cancelled: true })
        );
        assert_eq!(b.poll(30_000), None);
        assert!(!b.cancel(30_000));
    }

    #[test]
    fn manual_mode_ignores_caller_audio() {
        let mut b = Brain::new(cfg(TurnMode::Manual), Codec::Pcmu, Codec::Pcmu);
        let ev = drive(&mut b, 8000, 0, &speech(50, 100), 10_000);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn vad_mode_without_auto_reports_but_does_not_answer() {
        let turns = TurnMode::Vad {
            auto: false,
            interrupt: true,
        };
        let mut b = Brain::new(cfg(turns), Codec::Slin(Rate::Hz16000), Codec::Pcmu);
        let ev = drive(&mut b, 16000, 0, &speech(50, 100), 10_000);
        assert_eq!(kinds(&ev), ["started", "stopped"]);
    }

    #[test]
    fn vad_mode_auto_answers_and_interrupt_cuts_a_greeting() {
        let turns = TurnMode::Vad {
            auto: true,
            interrupt: true,
        };
        let mut b = Brain::new(cfg(turns), Codec::Pcmu, Codec::Pcmu);
        assert!(b.start_reply(0, 3000));
        // The caller talks over the greeting from 100 ms.
        let mut script = speech(5, 0);
        script.extend(speech(30, 100));
        let ev = drive(&mut b, 8000, 0, &script, 20_000);
        let k = kinds(&ev);
        assert_eq!(
            k,
            [
                "reply",
                "audio",
                "started",
                "barge_in",
                "cancelled",
                "stopped",
                "reply",
                "audio",
                "audio_done",
                "done"
            ]
        );
    }

    #[test]
    fn agent_mode_caller_cuts_a_greeting() {
        let mut b = Brain::new(cfg(TurnMode::Agent), Codec::Pcmu, Codec::Pcmu);
        assert!(b.start_reply(0, 3000));
        let ev = drive(&mut b, 8000, 0, &speech(30, 100), 20_000);
        let k = kinds(&ev);
        assert_eq!(
            &k[..5],
            ["reply", "audio", "started", "barge_in", "cancelled"]
        );
        assert_eq!(&k[5..], ["stopped", "reply", "audio", "audio_done", "done"]);
    }

    #[test]
    fn render_makes_a_whole_utterance_without_a_turn() {
        let mut b = Brain::new(
            cfg(TurnMode::Agent),
            Codec::Slin(Rate::Hz16000),
            Codec::Pcmu,
        );
        assert_eq!(b.render(700).len(), 700 * 8);
        assert!(!b.is_replying());
        assert_eq!(b.next_wakeup(), None);
    }

    #[test]
    fn decode_ignores_a_trailing_odd_byte() {
        let mut pcm = Vec::new();
        decode(Codec::Slin(Rate::Hz16000), &[1, 0, 2, 0, 9], &mut pcm);
        assert_eq!(pcm, [1, 2]);
        decode(Codec::Pcmu, &[0xFF, 0x7F], &mut pcm);
        assert_eq!(pcm.len(), 2);
    }
}
