//! The simulated agent's logic, sans-IO: turn detection, think time, reply audio
//! delivered in bursts, barge-in, and a deterministic speech-like synthesizer.
//!
//! Owns: the decisions a real provider's server makes (the caller started / stopped
//! talking, when to answer, when to cut the answer) and the reply's samples. Time is
//! passed in as milliseconds on any clock that starts near 0 for the session; the
//! agent is driven by `on_caller_audio` / `on_barge_in` and polled with `poll` at
//! `next_wakeup`, so tests run a call at 1000x real time.
//!
//! Must not: use tokio, read the clock, touch channels or codecs (it works on PCM at
//! the session's rate), or draw randomness from anywhere but its seed: the same seed
//! and inputs give the same events and the same samples.
//!
//! Reply audio is cut from a per-rate speech track rendered once per process (the
//! [`Bank`]): a reply starts at a word chosen by its seed and plays on from there.
//! Rendering speech per sample for every reply was the sim's main cost under load
//! (~17% of voxd's CPU at 500 calls); copying from the track costs a memcpy.

#![forbid(unsafe_code)]

use crate::rng::SplitMix64;
use std::collections::VecDeque;
use std::f32::consts::{PI, TAU};

use crate::call::Codec;
use crate::config::Config;
use crate::media::vad::{BargeInDetector, VadConfig};
use crate::media::Rate;
use crate::provider::Role;

/// Caller speech kept for an echo-mode reply, at most (ms).
const MAX_ECHO_MS: usize = 30_000;
/// Target RMS at a syllable's peak: the sin² envelope's mean square is 3/8, so the
/// average over words is 3277 (-20 dBFS).
const PEAK_RMS: f32 = 3277.0 / 0.612_372_4;
/// Harmonics of the glottal pulse, at most.
const MAX_HARMONICS: usize = 16;
/// (F1, F2) formants of a few vowels, Hz.
const VOWELS: [(f32, f32); 5] = [
    (730.0, 1090.0),
    (530.0, 1840.0),
    (270.0, 2290.0),
    (570.0, 840.0),
    (300.0, 870.0),
];

/// Knobs of the simulated agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Delay from the end of the caller's utterance to the first reply audio (ms).
    pub think_ms: u32,
    /// Length of each synthetic reply (ms of audio).
    pub reply_ms: u32,
    /// RMS of i16 samples above which a caller chunk counts as speech.
    pub energy_threshold: u16,
    /// Caller speech shorter than this (ms of loud audio) is a blip, not a turn.
    pub min_speech_ms: u32,
    /// Quiet after speech that ends the caller's utterance (ms), like OpenAI's
    /// `silence_duration_ms`.
    pub silence_ms: u32,
    /// Loud caller audio over the agent's reply (ms) before the agent hears a
    /// barge-in, emits `SpeechStarted` and stops.
    pub barge_in_ms: u32,
    /// Length of a greeting spoken at session start (ms); 0 = wait for the caller.
    pub greeting_ms: u32,
    /// Reply with the caller's own utterance instead of synthetic speech.
    pub echo: bool,
    /// Audio per delivered chunk (ms), like a network provider's deltas.
    pub burst_ms: u32,
    /// Time between chunks (ms); `burst_ms / burst_interval_ms` is the delivery
    /// speed-up (160 / 40: a reply arrives within 25% of its duration).
    pub burst_interval_ms: u32,
    /// Seed of the synthesizer; the session mixes in the call id.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            think_ms: 300,
            reply_ms: 1500,
            energy_threshold: 700,
            min_speech_ms: 200,
            silence_ms: 500,
            barge_in_ms: 120,
            greeting_ms: 0,
            echo: false,
            burst_ms: 160,
            burst_interval_ms: 40,
            seed: 0x5EED_5EED,
        }
    }
}

impl SimConfig {
    /// From `providers.sim` (`think_ms`, `reply_ms`, `echo`) and the barge-in
    /// energy threshold (`barge_in.energy_threshold`); the other knobs keep their
    /// defaults (the config has no greeting knob for the sim yet: greeting off).
    pub fn from_config(cfg: &Config) -> Self {
        let sim = &cfg.providers.sim;
        SimConfig {
            think_ms: sim.think_ms,
            reply_ms: sim.reply_ms,
            echo: sim.echo,
            energy_threshold: cfg.barge_in.energy_threshold.clamp(1, 32767) as u16,
            ..SimConfig::default()
        }
    }
}

/// What the agent wants sent to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimAction {
    /// Reply audio, PCM at the agent's rate (one burst).
    Audio(Vec<i16>),
    /// The reply's audio is complete.
    AudioDone,
    /// The caller talked over the reply: barge-in (the reply was stopped).
    SpeechStarted,
    /// A transcript line (placeholder text: the sim understands nothing).
    Transcript {
        /// Who spoke.
        role: Role,
        /// The text.
        text: String,
    },
    /// The response finished or was cancelled.
    ResponseDone,
}

/// Counters of one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Caller utterances that got a reply scheduled.
    pub utterances: u64,
    /// Loud caller audio too short to be an utterance.
    pub blips: u64,
    /// Replies (greeting included) that started.
    pub replies_started: u64,
    /// Replies whose audio was delivered in full.
    pub replies_completed: u64,
    /// Replies cut by the caller (SpeechStarted) or by voxd (`on_barge_in`).
    pub replies_cut: u64,
    /// `SpeechStarted` events emitted.
    pub speech_started: u64,
    /// Scheduled replies dropped because the caller spoke again while thinking.
    pub thinks_cancelled: u64,
}

/// Mix a seed with a stream number (reply index, call id) into a new seed.
pub(crate) fn mix_seed(seed: u64, stream: u64) -> u64 {
    SplitMix64(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// Length of the pre-rendered speech track per rate (ms).
const BANK_MS: usize = 20_000;

/// Speech rendered once per rate: replies are windows of it, starting at a word.
#[derive(Debug)]
pub(crate) struct Bank {
    /// The track; it ends where a word would begin, so playing on from its end
    /// back to its start (a pause) stays speech-like.
    pcm: Box<[i16]>,
    /// Sample index of each word's first sample.
    word_starts: Box<[usize]>,
}

impl Bank {
    fn render(rate: Rate) -> Bank {
        let mut voice = Voice::new(0xBA4C_0FF5, rate);
        let n = BANK_MS * rate.samples_per_ms();
        let mut pcm = Vec::with_capacity(n);
        let mut word_starts = Vec::new();
        let mut was_in_word = false;
        while pcm.len() < n {
            voice.render(1, &mut pcm);
            if voice.in_word && !was_in_word {
                word_starts.push(pcm.len() - 1);
            }
            was_in_word = voice.in_word;
        }
        // End right before the last word began (after its pause).
        if let Some(&last) = word_starts.last() {
            if word_starts.len() > 1 {
                pcm.truncate(last);
                word_starts.pop();
            }
        }
        Bank {
            pcm: pcm.into_boxed_slice(),
            word_starts: word_starts.into_boxed_slice(),
        }
    }

    /// The track of `rate`, rendered on first use.
    pub(crate) fn get(rate: Rate) -> &'static Bank {
        static BANKS: [std::sync::OnceLock<Bank>; Rate::ALL.len()] =
            [const { std::sync::OnceLock::new() }; Rate::ALL.len()];
        let i = Rate::ALL.iter().position(|&r| r == rate).unwrap_or(0);
        let cell = &BANKS[i];
        cell.get_or_init(|| Bank::render(rate))
    }

    /// Renders the tracks of the telephony rates (8, 16 and 24 kHz: ~50 ms of CPU)
    /// on a background thread, once per process, so the first reply of a busy
    /// server does not hold up the control runtime while they render.
    pub(crate) fn warm_in_background() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("voxd-sim-warm".into())
                .spawn(|| {
                    for r in [Rate::Hz8000, Rate::Hz16000, Rate::Hz24000] {
                        Bank::get(r);
                    }
                });
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "sim voice warm-up thread not started; rendering on first use");
            }
        });
    }

    /// Where a reply with this seed starts (a word start).
    fn start(&self, seed: u64) -> usize {
        if self.word_starts.is_empty() {
            return 0;
        }
        let i = SplitMix64(seed).range_u32(0, self.word_starts.len() as u32 - 1);
        self.word_starts[i as usize]
    }

    /// Appends `n` samples from `pos` on (wrapping) to `out`; returns the new position.
    fn copy(&self, mut pos: usize, mut n: usize, out: &mut Vec<i16>) -> usize {
        while n > 0 {
            let take = n.min(self.pcm.len() - pos);
            out.extend_from_slice(&self.pcm[pos..pos + take]);
            n -= take;
            pos = (pos + take) % self.pcm.len();
        }
        pos
    }
}

/// A speech-like voice: words of 4-5 Hz syllables (sin² envelopes) on a harmonic
/// series at 120-200 Hz with vowel formants, vibrato and declination, separated by
/// silent pauses.
#[derive(Debug, Clone)]
struct Voice {
    rng: SplitMix64,
    rate: f32,
    spms: usize,
    base_f0: f32,
    phase: f32,
    t: u64,
    seg_left: usize,
    in_word: bool,
    word_len: usize,
    word_pos: usize,
    syll_len: usize,
    n_harm: usize,
    amps: [f32; MAX_HARMONICS],
}

impl Voice {
    fn new(seed: u64, rate: Rate) -> Self {
        let mut rng = SplitMix64(seed);
        let base_f0 = 120.0 + 80.0 * rng.unit_f32();
        let rate_hz = rate.hz() as f32;
        let top = (0.45 * rate_hz).min(3600.0);
        let n_harm = ((top / (base_f0 * 1.06)) as usize).clamp(1, MAX_HARMONICS);
        Voice {
            rng,
            rate: rate_hz,
            spms: rate.samples_per_ms(),
            base_f0,
            phase: 0.0,
            t: 0,
            seg_left: 0,
            in_word: false,
            word_len: 1,
            word_pos: 0,
            syll_len: 1,
            n_harm,
            amps: [0.0; MAX_HARMONICS],
        }
    }

    fn next_segment(&mut self) {
        if self.in_word {
            self.in_word = false;
            self.seg_left = self.rng.range_u32(60, 180) as usize * self.spms;
        } else {
            let ms = self.rng.range_u32(220, 600);
            let syllables = ((ms as f32 * 4.5 / 1000.0).round() as usize).max(1);
            self.in_word = true;
            self.word_len = ms as usize * self.spms;
            self.seg_left = self.word_len;
            self.word_pos = 0;
            self.syll_len = (self.word_len / syllables).max(1);
        }
    }

    fn new_syllable(&mut self) {
        let (f1, f2) = VOWELS[self.rng.range_u32(0, VOWELS.len() as u32 - 1) as usize];
        let mut power = 0.0f32;
        for k in 0..self.n_harm {
            let f = (k + 1) as f32 * self.base_f0;
            let d1 = (f - f1) / 120.0;
            let d2 = (f - f2) / 200.0;
            let g = (1.0 + 4.0 * (-d1 * d1).exp() + 2.5 * (-d2 * d2).exp()) / (k + 1) as f32;
            self.amps[k] = g;
            power += g * g / 2.0;
        }
        let scale = PEAK_RMS / power.sqrt();
        for a in &mut self.amps[..self.n_harm] {
            *a *= scale;
        }
    }

    fn render(&mut self, n: usize, out: &mut Vec<i16>) {
        for _ in 0..n {
            if self.seg_left == 0 {
                self.next_segment();
            }
            self.seg_left -= 1;
            self.t += 1;
            if !self.in_word {
                // Comfort noise (about -66 dBFS) between words, as real TTS has:
                // a pause inside a reply is not digital silence, so it is never
                // mistaken on the wire for the playout running dry.
                out.push(self.rng.range_u32(0, 48) as i16 - 24);
                continue;
            }
            let sp = self.word_pos % self.syll_len;
            if sp == 0 {
                self.new_syllable();
            }
            let env = (PI * sp as f32 / self.syll_len as f32).sin().powi(2);
            let decl = 1.0 - 0.12 * self.word_pos as f32 / self.word_len as f32;
            let vib = 1.0 + 0.03 * (TAU * 5.0 * self.t as f32 / self.rate).sin();
            self.word_pos += 1;
            self.phase += TAU * self.base_f0 * decl * vib / self.rate;
            if self.phase >= TAU {
                self.phase -= TAU;
            }
            // sin(k*phase) for k = 1.. by the Chebyshev recurrence
            // sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x): one sin_cos per sample
            // instead of one sin per harmonic (the profile's top item).
            let (sin1, cos1) = self.phase.sin_cos();
            let two_cos = 2.0 * cos1;
            let (mut prev, mut cur) = (0.0f32, sin1);
            let mut s = 0.0f32;
            for a in &self.amps[..self.n_harm] {
                s += a * cur;
                let next = two_cos * cur - prev;
                prev = cur;
                cur = next;
            }
            let noise = (self.rng.unit_f32() * 2.0 - 1.0) * 0.05 * PEAK_RMS;
            let v = ((s + noise) * env).round();
            out.push(v.clamp(-32768.0, 32767.0) as i16);
        }
    }
}

/// Where a reply's samples come from.
#[derive(Debug, Clone)]
enum Source {
    /// A window of the rate's [`Bank`], at this position.
    Bank(&'static Bank, usize),
    Clip(Vec<i16>),
}

/// A reply waiting for its start time.
#[derive(Debug, Clone)]
enum Pending {
    Synth { ms: u32 },
    Clip(Vec<i16>),
}

#[derive(Debug, Clone)]
struct Reply {
    source: Source,
    total: usize,
    sent: usize,
    next_burst_at: u64,
}

#[derive(Debug, Clone)]
enum Turn {
    Idle,
    Thinking { start_at: u64, pending: Pending },
    Delivering(Reply),
}

/// The simulated agent of one call (see the module docs).
#[derive(Debug, Clone)]
pub struct SimAgent {
    cfg: SimConfig,
    rate: Rate,
    spms: usize,
    detector: BargeInDetector,
    now: u64,
    stream_end: u64,
    in_speech: bool,
    speech_start: u64,
    voiced_ms: u32,
    last_loud_end: u64,
    interrupt_checked: bool,
    recorded: Vec<i16>,
    turn: Turn,
    speaking_until: Option<u64>,
    queue: VecDeque<SimAction>,
    stats: SimStats,
    /// A buffer handed back with [`SimAgent::recycle`], reused by the next burst.
    spare: Vec<i16>,
}

impl SimAgent {
    /// An agent with these knobs producing PCM at `codec`'s rate. With
    /// `greeting_ms > 0` a greeting is due at time 0.
    pub fn new(cfg: SimConfig, codec: Codec) -> Self {
        let rate = codec.rate();
        let turn = if cfg.greeting_ms > 0 {
            Turn::Thinking {
                start_at: 0,
                pending: Pending::Synth {
                    ms: cfg.greeting_ms,
                },
            }
        } else {
            Turn::Idle
        };
        SimAgent {
            cfg,
            rate,
            spms: rate.samples_per_ms(),
            detector: BargeInDetector::new(VadConfig {
                energy_threshold: cfg.energy_threshold,
                ..VadConfig::default()
            }),
            now: 0,
            stream_end: 0,
            in_speech: false,
            speech_start: 0,
            voiced_ms: 0,
            last_loud_end: 0,
            interrupt_checked: false,
            recorded: Vec::new(),
            turn,
            speaking_until: None,
            queue: VecDeque::new(),
            spare: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// The knobs in use.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Sample rate of the PCM in and out.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Whether the caller is hearing (or about to hear) a reply at `now_ms`: audio
    /// is being delivered or the delivered audio has not finished playing.
    pub fn is_speaking(&self, now_ms: u64) -> bool {
        matches!(self.turn, Turn::Delivering(_)) || self.speaking_until.is_some_and(|u| now_ms < u)
    }

    /// Caller audio (PCM at the agent's rate, any length, normally 20 ms) received at
    /// `now_ms`. Chunks are laid end to end on the caller's timeline, so a burst of
    /// queued frames counts as the audio time it holds. Then call `poll`.
    pub fn on_caller_audio(&mut self, now_ms: u64, pcm: &[i16]) {
        self.now = self.now.max(now_ms);
        if pcm.is_empty() {
            return;
        }
        let dur = pcm.len().div_ceil(self.spms) as u64;
        let start = now_ms.max(self.stream_end);
        let end = start + dur;
        self.stream_end = end;
        self.check_end_of_utterance(start);
        let loud = self.detector.is_loud(pcm);
        if loud {
            if !self.in_speech {
                self.in_speech = true;
                self.speech_start = start;
                self.voiced_ms = 0;
                self.interrupt_checked = false;
                self.recorded.clear();
            }
            self.voiced_ms = self.voiced_ms.saturating_add(dur as u32);
            self.last_loud_end = end;
        }
        if !self.in_speech {
            return;
        }
        if self.cfg.echo {
            let room = (MAX_ECHO_MS * self.spms).saturating_sub(self.recorded.len());
            self.recorded.extend_from_slice(&pcm[..pcm.len().min(room)]);
        }
        if !self.interrupt_checked && self.voiced_ms >= self.cfg.barge_in_ms.max(1) {
            self.interrupt_checked = true;
            if self.is_speaking(start) {
                // Like a provider's server VAD: the caller talks over the reply.
                self.queue.push_back(SimAction::SpeechStarted);
                self.stats.speech_started += 1;
                self.cut_reply();
            } else if matches!(self.turn, Turn::Thinking { .. }) {
                // The caller went on talking: the turn is not over, drop the answer.
                self.turn = Turn::Idle;
                self.stats.thinks_cancelled += 1;
            }
        }
    }

    /// voxd's local detector cut the agent after `played_ms` of the reply: stop the
    /// reply (a `ResponseDone` follows if audio was still being delivered).
    pub fn on_barge_in(&mut self, now_ms: u64, played_ms: u32) {
        self.now = self.now.max(now_ms);
        let _ = played_ms; // the sim keeps no conversation to truncate
        self.cut_reply();
    }

    /// The next thing to send at `now_ms`, if any. Call until `None` after every
    /// input and at `next_wakeup`.
    pub fn poll(&mut self, now_ms: u64) -> Option<SimAction> {
        self.now = self.now.max(now_ms);
        let now = self.now;
        self.check_end_of_utterance(now);
        if let Some(a) = self.queue.pop_front() {
            return Some(a);
        }
        match &mut self.turn {
            Turn::Thinking { start_at, .. } if now >= *start_at => {
                let start_at = *start_at;
                let Turn::Thinking { pending, .. } = std::mem::replace(&mut self.turn, Turn::Idle)
                else {
                    unreachable!("matched Thinking above")
                };
                Some(self.begin_reply(start_at, pending))
            }
            Turn::Delivering(r) if now >= r.next_burst_at => {
                let n = (self.cfg.burst_ms.max(1) as usize * self.spms).min(r.total - r.sent);
                let mut pcm = std::mem::take(&mut self.spare);
                pcm.clear();
                pcm.reserve(n);
                match &mut r.source {
                    Source::Bank(b, pos) => *pos = b.copy(*pos, n, &mut pcm),
                    Source::Clip(c) => pcm.extend_from_slice(&c[r.sent..r.sent + n]),
                }
                r.sent += n;
                r.next_burst_at += u64::from(self.cfg.burst_interval_ms);
                if r.sent >= r.total {
                    self.turn = Turn::Idle;
                    self.finish_reply();
                }
                Some(SimAction::Audio(pcm))
            }
            _ => None,
        }
    }

    /// Hand back the buffer of a [`SimAction::Audio`] once it has been used: the next
    /// burst renders into it, so a long call does not allocate per burst.
    pub fn recycle(&mut self, mut buf: Vec<i16>) {
        if buf.capacity() > self.spare.capacity() {
            buf.clear();
            self.spare = buf;
        }
    }

    /// When `poll` next has something to do (ms), if ever without new input.
    pub fn next_wakeup(&self) -> Option<u64> {
        if !self.queue.is_empty() {
            return Some(self.now);
        }
        let turn = match &self.turn {
            Turn::Idle => None,
            Turn::Thinking { start_at, .. } => Some(*start_at),
            Turn::Delivering(r) => Some(r.next_burst_at),
        };
        let eou = self
            .in_speech
            .then(|| self.last_loud_end + u64::from(self.cfg.silence_ms));
        match (turn, eou) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn begin_reply(&mut self, start_at: u64, pending: Pending) -> SimAction {
        self.stats.replies_started += 1;
        let n = self.stats.replies_started;
        let source = match pending {
            Pending::Synth { ms } => {
                let bank = Bank::get(self.rate);
                let at = bank.start(mix_seed(self.cfg.seed, n));
                (Source::Bank(bank, at), ms as usize * self.spms)
            }
            Pending::Clip(c) => {
                let len = c.len();
                (Source::Clip(c), len)
            }
        };
        let (source, total) = source;
        let total_ms = (total / self.spms) as u64;
        if total == 0 {
            self.finish_reply();
        } else {
            self.speaking_until = Some(start_at + total_ms);
            self.turn = Turn::Delivering(Reply {
                source,
                total,
                sent: 0,
                next_burst_at: start_at,
            });
        }
        SimAction::Transcript {
            role: Role::Agent,
            text: format!("[sim reply {n}: {total_ms} ms]"),
        }
    }

    fn finish_reply(&mut self) {
        self.stats.replies_completed += 1;
        self.queue.push_back(SimAction::AudioDone);
        self.queue.push_back(SimAction::ResponseDone);
    }

    /// Stop the reply: drop undelivered audio (`ResponseDone` follows) and forget
    /// the delivered audio still playing.
    fn cut_reply(&mut self) {
        if matches!(self.turn, Turn::Delivering(_)) {
            self.turn = Turn::Idle;
            self.queue.push_back(SimAction::ResponseDone);
            self.stats.replies_cut += 1;
        } else if self.speaking_until.is_some_and(|u| self.now < u) {
            self.stats.replies_cut += 1;
        }
        self.speaking_until = None;
    }

    fn check_end_of_utterance(&mut self, t: u64) {
        if !self.in_speech {
            return;
        }
        let eou_at = self.last_loud_end + u64::from(self.cfg.silence_ms);
        if t < eou_at {
            return;
        }
        self.in_speech = false;
        if self.voiced_ms < self.cfg.min_speech_ms {
            self.stats.blips += 1;
            self.recorded.clear();
            return;
        }
        self.stats.utterances += 1;
        let spoke_ms = self.last_loud_end - self.speech_start;
        self.queue.push_back(SimAction::Transcript {
            role: Role::User,
            text: format!("[caller spoke {spoke_ms} ms]"),
        });
        let pending = if self.cfg.echo {
            let mut clip = std::mem::take(&mut self.recorded);
            clip.truncate(spoke_ms as usize * self.spms);
            Pending::Clip(clip)
        } else {
            Pending::Synth {
                ms: self.cfg.reply_ms,
            }
        };
        if matches!(self.turn, Turn::Delivering(_)) {
            self.cut_reply();
        }
        self.turn = Turn::Thinking {
            start_at: eou_at + u64::from(self.cfg.think_ms),
            pending,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: usize = 160; // 20 ms at 8 kHz

    fn tone(amp: f32) -> Vec<i16> {
        (0..FRAME)
            .map(|i| (amp * (TAU * 440.0 * i as f32 / 8000.0).sin()) as i16)
            .collect()
    }

    /// Drive `agent` on a virtual clock: caller frames every 20 ms from `script`
    /// (a frame per entry, `true` = loud) starting at `from`, polls at every wake-up,
    /// and then runs without input until `until`. Returns (time, action).
    fn drive(
        agent: &mut SimAgent,
        from: u64,
        script: &[bool],
        until: u64,
    ) -> Vec<(u64, SimAction)> {
        let loud = tone(5000.0);
        let quiet = vec![0i16; FRAME];
        let mut out = Vec::new();
        let mut t = from;
        let mut next_frame = 0usize;
        loop {
            let frame_t = (next_frame < script.len()).then(|| from + 20 * next_frame as u64);
            let wake = agent.next_wakeup().map(|w| w.max(t));
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
                let f = if script[next_frame] { &loud } else { &quiet };
                agent.on_caller_audio(t, f);
                next_frame += 1;
            }
            while let Some(a) = agent.poll(t) {
                out.push((t, a));
            }
        }
        out
    }

    fn speech(loud_frames: usize, quiet_frames: usize) -> Vec<bool> {
        let mut v = vec![true; loud_frames];
        v.extend(std::iter::repeat_n(false, quiet_frames));
        v
    }

    fn audio_samples(ev: &[(u64, SimAction)]) -> usize {
        ev.iter()
            .map(|(_, a)| match a {
                SimAction::Audio(p) => p.len(),
                _ => 0,
            })
            .sum()
    }

    fn cfg() -> SimConfig {
        SimConfig {
            think_ms: 300,
            reply_ms: 1500,
            ..SimConfig::default()
        }
    }

    #[test]
    fn utterance_think_reply() {
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        // 1 s of speech from t=0, then 3 s of silence frames.
        let ev = drive(&mut a, 0, &speech(50, 150), 10_000);
        // End of utterance at 1000 + 500; reply at +300.
        let first_audio = ev
            .iter()
            .find(|(_, a)| matches!(a, SimAction::Audio(_)))
            .unwrap()
            .0;
        assert_eq!(first_audio, 1800);
        let user = ev
            .iter()
            .find(|(_, a)| {
                matches!(
                    a,
                    SimAction::Transcript {
                        role: Role::User,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(user.0, 1500);
        assert_eq!(audio_samples(&ev), 1500 * 8);
        // Bursty delivery: the whole reply within 30% of its duration.
        let last_audio = ev
            .iter()
            .rev()
            .find(|(_, a)| matches!(a, SimAction::Audio(_)))
            .unwrap()
            .0;
        assert!(last_audio - first_audio <= 1500 * 30 / 100, "{last_audio}");
        // Then AudioDone, ResponseDone, in that order, once.
        let tail: Vec<_> = ev
            .iter()
            .filter(|(_, a)| matches!(a, SimAction::AudioDone | SimAction::ResponseDone))
            .map(|(_, a)| a.clone())
            .collect();
        assert_eq!(tail, [SimAction::AudioDone, SimAction::ResponseDone]);
        assert!(!ev.iter().any(|(_, a)| *a == SimAction::SpeechStarted));
        assert_eq!(a.stats().replies_completed, 1);
    }

    #[test]
    fn end_of_utterance_without_trailing_frames() {
        // The caller's frames stop after speech: the timer still ends the turn.
        let mut a = SimAgent::new(cfg(), Codec::Slin(Rate::Hz16000));
        let loud: Vec<i16> = (0..320)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        for i in 0..20 {
            a.on_caller_audio(i * 20, &loud);
        }
        assert_eq!(a.next_wakeup(), Some(400 + 500));
        assert!(a.poll(899).is_none());
        assert!(matches!(
            a.poll(900),
            Some(SimAction::Transcript {
                role: Role::User,
                ..
            })
        ));
        assert_eq!(a.next_wakeup(), Some(1200));
        assert!(matches!(
            a.poll(1200),
            Some(SimAction::Transcript {
                role: Role::Agent,
                ..
            })
        ));
        match a.poll(1200) {
            Some(SimAction::Audio(p)) => assert_eq!(p.len(), 160 * 16),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn quiet_caller_gets_no_reply() {
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        let quiet_speech: Vec<i16> = tone(600.0); // RMS ~424, under 700
        for i in 0..500 {
            a.on_caller_audio(i * 20, &quiet_speech);
            assert!(a.poll(i * 20).is_none());
        }
        assert_eq!(a.next_wakeup(), None);
        // A short blip (100 ms) is not a turn either.
        let ev = drive(&mut a, 10_000, &speech(5, 100), 20_000);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(a.stats().blips, 1);
    }

    #[test]
    fn barge_in_during_reply_emits_speech_started_and_stops() {
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        // Utterance, reply starts at 1800; caller talks again from 1840 (while the
        // first bursts arrive) for 600 ms, then silence.
        let mut script = speech(50, 42); // frames until t=1840
        script.extend(speech(30, 150));
        let ev = drive(&mut a, 0, &script, 20_000);
        let ss = ev
            .iter()
            .position(|(_, a)| *a == SimAction::SpeechStarted)
            .expect("SpeechStarted");
        let ss_t = ev[ss].0;
        assert_eq!(ss_t, 1840 + 120 - 20, "barge_in_ms of loud audio");
        // The reply stopped: ResponseDone right after, without AudioDone, and the
        // first reply's audio is short of 1500 ms.
        assert_eq!(ev[ss + 1].1, SimAction::ResponseDone);
        let first_reply: usize = audio_samples(&ev[..ss]);
        assert!(first_reply < 1500 * 8, "{first_reply}");
        assert!(first_reply > 0);
        // The interruption is a new turn: a full second reply follows.
        let second = &ev[ss + 2..];
        assert_eq!(audio_samples(second), 1500 * 8);
        assert_eq!(a.stats().replies_cut, 1);
        assert_eq!(a.stats().replies_completed, 1);
        assert_eq!(a.stats().speech_started, 1);
    }

    #[test]
    fn barge_in_while_reply_still_plays_out() {
        // All audio delivered by ~2160 but playing until 3300: speech at 2500 cuts it.
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        let mut script = speech(50, 75); // until t=2500
        script.extend(speech(15, 100));
        let ev = drive(&mut a, 0, &script, 20_000);
        let ss = ev
            .iter()
            .position(|(_, a)| *a == SimAction::SpeechStarted)
            .expect("SpeechStarted");
        assert_eq!(audio_samples(&ev[..ss]), 1500 * 8);
        assert_eq!(a.stats().replies_cut, 1);
    }

    #[test]
    fn local_barge_in_stops_the_reply() {
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        let mut ev = drive(&mut a, 0, &speech(50, 0), 1800);
        assert!(matches!(ev.last(), Some((1800, SimAction::Audio(_)))));
        a.on_barge_in(1810, 10);
        assert_eq!(a.poll(1810), Some(SimAction::ResponseDone));
        ev.clear();
        while let Some(x) = a.poll(5000) {
            ev.push((5000, x));
        }
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(a.next_wakeup(), None);
        assert!(!a.is_speaking(1811));
    }

    #[test]
    fn caller_resuming_while_thinking_cancels_the_answer() {
        let mut c = cfg();
        c.think_ms = 1000;
        let mut a = SimAgent::new(c, Codec::Pcmu);
        // Speech 0..1000, EOU at 1500, talks again at 1600 (before the 2500 reply).
        let mut script = speech(50, 30);
        script.extend(speech(20, 100));
        let ev = drive(&mut a, 0, &script, 20_000);
        assert_eq!(a.stats().thinks_cancelled, 1);
        assert_eq!(a.stats().replies_started, 1);
        assert!(!ev.iter().any(|(_, a)| *a == SimAction::SpeechStarted));
        assert_eq!(audio_samples(&ev), 1500 * 8);
    }

    #[test]
    fn same_seed_same_audio_other_seed_other_audio() {
        let run = |seed| {
            let mut c = cfg();
            c.seed = seed;
            let mut a = SimAgent::new(c, Codec::Pcmu);
            drive(&mut a, 0, &speech(50, 150), 10_000)
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn replies_are_windows_of_the_bank_starting_at_words() {
        let bank = Bank::get(Rate::Hz8000);
        assert_eq!(
            bank.pcm.len() / 8 / 1000,
            BANK_MS / 1000 - 1,
            "about BANK_MS long"
        );
        assert!(bank.word_starts.len() > 20, "{}", bank.word_starts.len());
        // Seeds spread replies over the track.
        let starts: std::collections::HashSet<usize> =
            (0..50).map(|s| bank.start(mix_seed(7, s))).collect();
        assert!(starts.len() > 10, "{}", starts.len());
        assert!(starts.iter().all(|s| bank.word_starts.contains(s)));
        // Copying across the end wraps to the start.
        let mut out = Vec::new();
        let pos = bank.copy(bank.pcm.len() - 5, 8, &mut out);
        assert_eq!(pos, 3);
        assert_eq!(&out[..5], &bank.pcm[bank.pcm.len() - 5..]);
        assert_eq!(&out[5..], &bank.pcm[..3]);
        // A reply is the bank from its start word on, sample for sample.
        let mut a = SimAgent::new(cfg(), Codec::Pcmu);
        let ev = drive(&mut a, 0, &speech(50, 150), 10_000);
        let got: Vec<i16> = ev
            .iter()
            .flat_map(|(_, a)| match a {
                SimAction::Audio(p) => p.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(got.len(), 1500 * 8);
        let at = bank.start(mix_seed(cfg().seed, 1));
        let mut want = Vec::new();
        bank.copy(at, got.len(), &mut want);
        assert_eq!(got, want);
    }

    #[test]
    fn reply_sounds_like_speech() {
        for rate in [Rate::Hz8000, Rate::Hz16000, Rate::Hz24000] {
            let mut v = Voice::new(42, rate);
            let spms = rate.samples_per_ms();
            let mut pcm = Vec::new();
            v.render(5000 * spms, &mut pcm);
            // Level over voiced audio around -20 dBFS.
            let voiced: Vec<f64> = pcm
                .iter()
                .filter(|&&s| s.abs() > 24)
                .map(|&s| s as f64)
                .collect();
            let rms = (voiced.iter().map(|s| s * s).sum::<f64>() / voiced.len() as f64).sqrt();
            let dbfs = 20.0 * (rms / 32768.0).log10();
            assert!((-24.0..=-16.0).contains(&dbfs), "{rate:?}: {dbfs:.1} dBFS");
            // Pauses between words: some 20 ms frames of comfort noise only (never
            // digital silence), but mostly voiced.
            let frames: Vec<&[i16]> = pcm.chunks(20 * spms).collect();
            assert!(
                frames.iter().all(|f| f.iter().any(|&s| s.abs() > 8)),
                "no silent frame inside a reply"
            );
            let silent = frames
                .iter()
                .filter(|f| f.iter().all(|&s| s.abs() <= 24))
                .count();
            assert!(
                silent * 20 > frames.len() && silent * 3 < frames.len(),
                "{silent}"
            );
            // Syllables: the 20 ms energy rises through the threshold about 4-6 times
            // per second (syllables + words).
            let thr = 1000.0f64;
            let mut rises = 0;
            let mut above = false;
            for f in &frames {
                let e =
                    (f.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
                if e > thr && !above {
                    rises += 1;
                }
                above = e > thr;
            }
            assert!(
                (15..=35).contains(&rises),
                "{rate:?}: {rises} syllables in 5 s"
            );
            // Not clipped.
            assert!(pcm.iter().all(|&s| s > i16::MIN && s < i16::MAX));
        }
    }

    #[test]
    fn greeting_first_then_echo_mode_replays_the_caller() {
        let mut c = cfg();
        c.greeting_ms = 400;
        c.echo = true;
        let mut a = SimAgent::new(c, Codec::Pcmu);
        assert_eq!(a.next_wakeup(), Some(0));
        let ev = drive(&mut a, 0, &[], 1000);
        assert_eq!(audio_samples(&ev), 400 * 8);
        assert_eq!(ev.last().unwrap().1, SimAction::ResponseDone);
        // Echo: the reply is the caller's utterance (600 ms of tone), bit for bit.
        let ev = drive(&mut a, 1000, &speech(30, 60), 10_000);
        let got: Vec<i16> = ev
            .iter()
            .flat_map(|(_, a)| match a {
                SimAction::Audio(p) => p.clone(),
                _ => Vec::new(),
            })
            .collect();
        let want: Vec<i16> = std::iter::repeat_n(tone(5000.0), 30).flatten().collect();
        assert_eq!(got, want);
    }
}
