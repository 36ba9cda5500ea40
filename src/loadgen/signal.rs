//! Caller signal for the load generator: a deterministic speech-like generator and a
//! looping WAV clip, both producing one 20 ms frame of slin per call.
//!
//! Owns: [`SpeechSignal`] (talk spurts of a few harmonics at a 100-250 Hz pitch under
//! a 4-5 Hz syllable envelope, separated by pauses, all drawn from a per-call seed so
//! that calls differ but every run is the same), [`WavLoop`] (a shared PCM clip played
//! in a loop from a per-call offset), [`CallerSource`] (either of them), and
//! [`load_wav`] / [`parse_wav`], a minimal RIFF/WAVE reader for 16-bit PCM mono.
//!
//! Must not: read the clock, do I/O other than [`load_wav`]'s single file read, or
//! allocate per frame (the synthesis tables are built once per process; frames are
//! written into the caller's buffer). It does not resample: a WAV clip must already be
//! at the call's rate.

use crate::rng::SplitMix64;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::media::Rate;

/// Entries in the one-cycle synthesis tables (a power of two: indexed by the top
/// [`TABLE_BITS`] bits of a 32-bit phase).
const TABLE_LEN: usize = 1 << TABLE_BITS;
const TABLE_BITS: u32 = 10;

/// Relative amplitudes of harmonics 1..=5 of the voice table (a falling spectrum,
/// roughly a glottal source).
const HARMONICS: [f32; 5] = [1.0, 0.6, 0.4, 0.25, 0.15];

struct Tables {
    /// One cycle of the harmonic mix, peak normalised to 1.0.
    voice: [f32; TABLE_LEN],
    /// One cycle of the raised-cosine syllable envelope, 0 at both ends, 1.0 at the
    /// middle.
    envelope: [f32; TABLE_LEN],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut voice = [0f32; TABLE_LEN];
        let mut envelope = [0f32; TABLE_LEN];
        let mut peak = 0f32;
        for (i, v) in voice.iter_mut().enumerate() {
            let x = std::f32::consts::TAU * i as f32 / TABLE_LEN as f32;
            *v = HARMONICS
                .iter()
                .enumerate()
                .map(|(h, a)| a * ((h + 1) as f32 * x).sin())
                .sum();
            peak = peak.max(v.abs());
        }
        for v in &mut voice {
            *v /= peak;
        }
        for (i, e) in envelope.iter_mut().enumerate() {
            let x = std::f32::consts::TAU * i as f32 / TABLE_LEN as f32;
            *e = 0.5 * (1.0 - x.cos());
        }
        Tables { voice, envelope }
    })
}

/// Knobs of the synthetic caller. Durations are drawn uniformly from the inclusive
/// `(min, max)` ranges, per talk spurt or pause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalConfig {
    /// Talk spurt length in milliseconds (rounded to whole 20 ms frames, at least one).
    pub talk_ms: (u32, u32),
    /// Pause length in milliseconds (rounded to whole frames, at least one).
    pub pause_ms: (u32, u32),
    /// The pause before the first spurt; `None` draws it from `pause_ms`, which
    /// staggers the calls.
    pub initial_pause_ms: Option<u32>,
    /// Pitch (fundamental) range in Hz, drawn per spurt, varied +-15% per syllable.
    pub pitch_hz: (f64, f64),
    /// Syllable rate range in Hz, drawn per spurt.
    pub syllable_hz: (f64, f64),
    /// Peak amplitude of a syllable (full scale 32767), drawn per spurt between 70%
    /// and 100% of this.
    pub level: i16,
    /// Peak amplitude of the white noise filling the pauses; 0 is digital silence.
    pub noise: i16,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            talk_ms: (1_500, 3_000),
            pause_ms: (2_000, 6_000),
            initial_pause_ms: None,
            pitch_hz: (100.0, 250.0),
            syllable_hz: (4.0, 5.0),
            level: 8_000,
            noise: 0,
        }
    }
}

/// The deterministic speech-like caller signal of one call.
///
/// The talk/pause state changes only on frame boundaries, so the `bool` that
/// [`SpeechSignal::next_frame`] returns is exact: `true` for every frame of a talk
/// spurt, `false` for every frame of a pause. Each spurt holds a whole number of
/// syllables, so the envelope is zero at both of its ends (no clicks).
#[derive(Debug, Clone)]
pub struct SpeechSignal {
    cfg: SignalConfig,
    rng: SplitMix64,
    rate_hz: u32,
    frame_len: usize,
    talking: bool,
    /// Frames left in the current spurt or pause.
    remaining_frames: u32,
    /// Pitch phase and step (32-bit fixed point, one cycle = 2^32).
    phase: u32,
    phase_step: u32,
    /// The spurt's base pitch step; each syllable varies around it.
    base_step: u32,
    env_phase: u32,
    env_step: u32,
    amplitude: f32,
    noise_state: u32,
}

impl SpeechSignal {
    /// The default signal (see [`SignalConfig::default`]) for the call with this
    /// seed, at `rate`.
    pub fn new(seed: u64, rate: Rate) -> Self {
        SpeechSignal::with_config(seed, rate, SignalConfig::default())
    }

    /// A signal with explicit knobs. Builds the shared synthesis tables on first use.
    pub fn with_config(seed: u64, rate: Rate, cfg: SignalConfig) -> Self {
        let _ = tables();
        let mut rng = SplitMix64(seed);
        let noise_state = (rng.next_u64() as u32) | 1;
        let mut s = SpeechSignal {
            cfg,
            rng,
            rate_hz: rate.hz(),
            frame_len: rate.samples_per_frame(),
            talking: false,
            remaining_frames: 0,
            phase: 0,
            phase_step: 0,
            base_step: 0,
            env_phase: 0,
            env_step: 0,
            amplitude: 0.0,
            noise_state,
        };
        let first = match cfg.initial_pause_ms {
            Some(ms) => ms,
            None => s.rng.range_u32(cfg.pause_ms.0, cfg.pause_ms.1),
        };
        s.remaining_frames = frames_for_ms(first);
        s
    }

    /// Samples per frame (160 at 8 kHz, 320 at 16 kHz).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// True while inside a talk spurt (the state of the last frame produced).
    pub fn is_talking(&self) -> bool {
        self.talking
    }

    /// Writes the next 20 ms into `out[..frame_len]` (any rest of `out` is left
    /// alone) and returns true if that frame belongs to a talk spurt. Panics if `out`
    /// is shorter than [`SpeechSignal::frame_len`]. Never allocates.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        let out = &mut out[..self.frame_len];
        if self.remaining_frames == 0 {
            if self.talking {
                self.start_pause();
            } else {
                self.start_spurt();
            }
        }
        self.remaining_frames -= 1;
        if self.talking {
            self.synthesize(out);
        } else {
            self.fill_pause(out);
        }
        self.talking
    }

    fn start_pause(&mut self) {
        self.talking = false;
        let ms = self.rng.range_u32(self.cfg.pause_ms.0, self.cfg.pause_ms.1);
        self.remaining_frames = frames_for_ms(ms);
    }

    fn start_spurt(&mut self) {
        self.talking = true;
        let cfg = self.cfg;
        let frames = frames_for_ms(self.rng.range_u32(cfg.talk_ms.0, cfg.talk_ms.1));
        self.remaining_frames = frames;
        let spurt_samples = frames as f64 * self.frame_len as f64;
        let syllable_hz = self.rng.range_f64(cfg.syllable_hz.0, cfg.syllable_hz.1);
        // A whole number of syllables over the spurt, so the envelope ends at zero.
        let syllables = (spurt_samples * syllable_hz / f64::from(self.rate_hz))
            .round()
            .max(1.0);
        self.env_step = (syllables * 4_294_967_296.0 / spurt_samples) as u32;
        self.env_phase = 0;
        let pitch = self.rng.range_f64(cfg.pitch_hz.0, cfg.pitch_hz.1);
        self.base_step = self.step_for_hz(pitch);
        self.phase_step = self.base_step;
        self.amplitude = f32::from(cfg.level) * self.rng.range_f64(0.7, 1.0) as f32;
    }

    fn step_for_hz(&self, hz: f64) -> u32 {
        (hz * 4_294_967_296.0 / f64::from(self.rate_hz)) as u32
    }

    fn synthesize(&mut self, out: &mut [i16]) {
        let t = tables();
        let shift = 32 - TABLE_BITS;
        for s in out.iter_mut() {
            let v = t.voice[(self.phase >> shift) as usize];
            let e = t.envelope[(self.env_phase >> shift) as usize];
            *s = (v * e * self.amplitude) as i16;
            self.phase = self.phase.wrapping_add(self.phase_step);
            let (next, wrapped) = self.env_phase.overflowing_add(self.env_step);
            self.env_phase = next;
            if wrapped {
                // New syllable: vary the pitch around the spurt's base (intonation).
                let f = self.rng.range_f64(0.85, 1.15);
                self.phase_step = (f64::from(self.base_step) * f) as u32;
            }
        }
    }

    fn fill_pause(&mut self, out: &mut [i16]) {
        let amp = i32::from(self.cfg.noise.max(0));
        if amp == 0 {
            out.fill(0);
            return;
        }
        for s in out.iter_mut() {
            // xorshift32: cheap white noise.
            let mut x = self.noise_state;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.noise_state = x;
            *s = ((x >> 16) as i32 % (2 * amp + 1) - amp) as i16;
        }
    }
}

fn frames_for_ms(ms: u32) -> u32 {
    ((ms + crate::media::FRAME_MS / 2) / crate::media::FRAME_MS).max(1)
}

/// A PCM clip played in a loop, for calls that send recorded speech.
///
/// The clip is shared (one copy for all calls); each call starts at its own offset.
/// A frame counts as talking when any sample's magnitude exceeds the threshold (a
/// raw per-frame decision; [`super::stats`] smooths it with a hangover).
#[derive(Debug, Clone)]
pub struct WavLoop {
    clip: Arc<[i16]>,
    pos: usize,
    frame_len: usize,
    threshold: i16,
}

/// Default [`WavLoop`] talk threshold: peak magnitude 330, about -40 dBFS.
pub const WAV_TALK_THRESHOLD: i16 = 330;

impl WavLoop {
    /// A loop over `clip` (which must be at `rate`; see [`load_wav`]) starting at
    /// sample `offset % clip.len()`. Returns `None` for an empty clip.
    pub fn new(clip: Arc<[i16]>, rate: Rate, offset: usize) -> Option<Self> {
        if clip.is_empty() {
            return None;
        }
        let pos = offset % clip.len();
        Some(WavLoop {
            clip,
            pos,
            frame_len: rate.samples_per_frame(),
            threshold: WAV_TALK_THRESHOLD,
        })
    }

    /// Changes the talk threshold (peak magnitude above which a frame is talking).
    pub fn with_threshold(mut self, threshold: i16) -> Self {
        self.threshold = threshold;
        self
    }

    /// Samples per frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Writes the next frame into `out[..frame_len]`, wrapping to the clip's start,
    /// and returns true if the frame is talking. Panics if `out` is too short.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        let out = &mut out[..self.frame_len];
        let mut filled = 0;
        while filled < out.len() {
            let n = (out.len() - filled).min(self.clip.len() - self.pos);
            out[filled..filled + n].copy_from_slice(&self.clip[self.pos..self.pos + n]);
            filled += n;
            self.pos = (self.pos + n) % self.clip.len();
        }
        let t = i32::from(self.threshold);
        out.iter().any(|&s| i32::from(s).abs() > t)
    }
}

/// What a caller sends: the synthetic signal or a looping clip.
#[derive(Debug, Clone)]
pub enum CallerSource {
    /// [`SpeechSignal`].
    Speech(SpeechSignal),
    /// [`WavLoop`].
    Wav(WavLoop),
}

impl CallerSource {
    /// Samples per frame.
    pub fn frame_len(&self) -> usize {
        match self {
            CallerSource::Speech(s) => s.frame_len(),
            CallerSource::Wav(w) => w.frame_len(),
        }
    }

    /// Writes the next frame into `out[..frame_len]`; true if it is talking.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        match self {
            CallerSource::Speech(s) => s.next_frame(out),
            CallerSource::Wav(w) => w.next_frame(out),
        }
    }
}

/// Why a WAV file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file could not be read.
    #[error("cannot read WAV file: {0}")]
    Io(#[from] std::io::Error),
    /// Not a RIFF/WAVE file.
    #[error("not a RIFF/WAVE file (missing 'RIFF'...'WAVE' header)")]
    NotWave,
    /// A chunk header or the `fmt ` chunk is cut short.
    #[error("truncated WAV: {what}")]
    Truncated {
        /// What was cut short.
        what: &'static str,
    },
    /// No `fmt ` chunk before the `data` chunk.
    #[error("WAV has no 'fmt ' chunk before its 'data' chunk")]
    MissingFmt,
    /// No `data` chunk.
    #[error("WAV has no 'data' chunk")]
    MissingData,
    /// Not integer PCM (e.g. float, mu-law, ADPCM).
    #[error("WAV format tag 0x{tag:04x} is not PCM; convert to 16-bit PCM mono (e.g. sox in.wav -b 16 -c 1 -e signed out.wav)")]
    NotPcm {
        /// The format tag (1 is PCM, 0xFFFE extensible).
        tag: u16,
    },
    /// More than one channel.
    #[error("WAV has {channels} channels; only mono is supported")]
    NotMono {
        /// Channel count.
        channels: u16,
    },
    /// Not 16 bits per sample.
    #[error("WAV has {bits} bits per sample; only 16-bit PCM is supported")]
    Not16Bit {
        /// Bits per sample.
        bits: u16,
    },
    /// The sample rate is zero.
    #[error("WAV sample rate is 0")]
    ZeroRate,
    /// The `data` chunk holds no samples.
    #[error("WAV 'data' chunk is empty")]
    Empty,
}

/// Reads a RIFF/WAVE file of 16-bit PCM mono and returns its samples and sample
/// rate. Refuses anything else with a [`WavError`] saying what is wrong. The caller
/// checks the rate against the call's and loops the clip with [`WavLoop`].
pub fn load_wav(path: impl AsRef<Path>) -> Result<(Vec<i16>, u32), WavError> {
    let bytes = std::fs::read(path)?;
    parse_wav(&bytes)
}

/// [`load_wav`] on bytes already in memory.
///
/// Accepts format tag 1 (PCM) and 0xFFFE (extensible) with the PCM sub-format; skips
/// unknown chunks (with RIFF's pad byte after odd sizes). A `data` chunk whose size
/// runs past the end of the file (as streaming writers leave it) is read to the end
/// of the file; an odd trailing byte is ignored.
pub fn parse_wav(bytes: &[u8]) -> Result<(Vec<i16>, u32), WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut pos = 12;
    let mut rate = None;
    while pos < bytes.len() {
        if bytes.len() - pos < 8 {
            return Err(WavError::Truncated {
                what: "chunk header",
            });
        }
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => rate = Some(parse_fmt(body)?),
            b"data" => {
                let rate = rate.ok_or(WavError::MissingFmt)?;
                let samples: Vec<i16> = body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                if samples.is_empty() {
                    return Err(WavError::Empty);
                }
                return Ok((samples, rate));
            }
            _ => {}
        }
        pos = body_start.saturating_add(size).saturating_add(size & 1);
    }
    Err(WavError::MissingData)
}

fn parse_fmt(body: &[u8]) -> Result<u32, WavError> {
    if body.len() < 16 {
        return Err(WavError::Truncated {
            what: "'fmt ' chunk shorter than 16 bytes",
        });
    }
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let bits = u16_at(14);
    let pcm = match tag {
        1 => true,
        // WAVE_FORMAT_EXTENSIBLE: cbSize(2) validBits(2) channelMask(4) subformat GUID
        // whose first two bytes are the format tag.
        0xFFFE => body.len() >= 26 && u16_at(24) == 1,
        _ => false,
    };
    if !pcm {
        return Err(WavError::NotPcm { tag });
    }
    if channels != 1 {
        return Err(WavError::NotMono { channels });
    }
    if bits != 16 {
        return Err(WavError::Not16Bit { bits });
    }
    if rate == 0 {
        return Err(WavError::ZeroRate);
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `frames` frames and returns (talk flags, all samples).
    fn run(sig: &mut SpeechSignal, frames: usize) -> (Vec<bool>, Vec<i16>) {
        let n = sig.frame_len();
        let mut buf = vec![0i16; n];
        let mut flags = Vec::with_capacity(frames);
        let mut all = Vec::with_capacity(frames * n);
        for _ in 0..frames {
            flags.push(sig.next_frame(&mut buf));
            all.extend_from_slice(&buf);
        }
        (flags, all)
    }

    /// Lengths in frames of the runs of equal flags, as (flag, length).
    fn runs(flags: &[bool]) -> Vec<(bool, usize)> {
        let mut out: Vec<(bool, usize)> = Vec::new();
        for &f in flags {
            match out.last_mut() {
                Some((g, n)) if *g == f => *n += 1,
                _ => out.push((f, 1)),
            }
        }
        out
    }

    #[test]
    fn same_seed_same_signal_different_seed_differs() {
        let a = run(&mut SpeechSignal::new(7, Rate::Hz8000), 1500);
        let b = run(&mut SpeechSignal::new(7, Rate::Hz8000), 1500);
        let c = run(&mut SpeechSignal::new(8, Rate::Hz8000), 1500);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn spurts_and_pauses_have_configured_lengths() {
        for rate in [Rate::Hz8000, Rate::Hz16000] {
            for seed in 0..20 {
                let mut s = SpeechSignal::new(seed, rate);
                let (flags, samples) = run(&mut s, 3000); // 60 s
                let r = runs(&flags);
                assert!(r.len() >= 6, "several spurts in 60 s: {r:?}");
                assert!(!r[0].0, "starts with a pause");
                // Skip the first (initial pause) and last (cut off) runs.
                for &(talk, len) in &r[1..r.len() - 1] {
                    if talk {
                        assert!((75..=150).contains(&len), "spurt {len} frames");
                    } else {
                        assert!((100..=300).contains(&len), "pause {len} frames");
                    }
                }
                // Pauses are digital silence; spurts are not.
                let n = rate.samples_per_frame();
                for (i, &talk) in flags.iter().enumerate() {
                    let f = &samples[i * n..(i + 1) * n];
                    let peak = f.iter().map(|s| s.unsigned_abs()).max().unwrap();
                    if talk {
                        assert!(peak > 0, "frame {i} of a spurt is silent");
                    } else {
                        assert_eq!(peak, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn spurt_has_voice_pitch_and_syllable_envelope() {
        let cfg = SignalConfig {
            initial_pause_ms: Some(20),
            talk_ms: (2_000, 2_000),
            ..SignalConfig::default()
        };
        let mut s = SpeechSignal::with_config(3, Rate::Hz8000, cfg);
        let (flags, samples) = run(&mut s, 101);
        assert!(!flags[0] && flags[1..].iter().all(|&f| f));
        let spurt = &samples[160..];
        // Peak within the configured level, and loud enough to be speech.
        let peak = spurt.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((4_000..=8_000).contains(&peak), "peak {peak}");
        // Envelope: zero at the start and end of the spurt, and dips between
        // syllables: count 10 ms blocks whose RMS falls below 10% of the loudest.
        assert!(spurt[0].unsigned_abs() < 50 && spurt[spurt.len() - 1].unsigned_abs() < 50);
        let rms: Vec<f64> = spurt
            .chunks(80)
            .map(|c| (c.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 80.0).sqrt())
            .collect();
        let max = rms.iter().cloned().fold(0.0, f64::max);
        let mut dips = 0;
        let mut low = false;
        for &r in &rms {
            if r < 0.1 * max && !low {
                dips += 1;
            }
            low = r < 0.1 * max;
        }
        // 2 s at 4-5 syllables/s: 8-10 syllables, so 8-11 dips counting both ends.
        assert!((8..=11).contains(&dips), "dips {dips}");
        // Pitch: zero crossings per second in 2 x (100..250 Hz) x (0.85..1.15), with
        // room for the higher harmonics adding a few.
        let crossings = spurt
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        let per_s = crossings as f64 / 2.0;
        assert!((170.0..=1_200.0).contains(&per_s), "crossings/s {per_s}");
    }

    #[test]
    fn noise_fills_pauses_when_asked() {
        let cfg = SignalConfig {
            noise: 30,
            ..SignalConfig::default()
        };
        let mut s = SpeechSignal::with_config(1, Rate::Hz8000, cfg);
        let mut buf = [0i16; 160];
        assert!(!s.next_frame(&mut buf));
        assert!(buf.iter().any(|&x| x != 0));
        assert!(buf.iter().all(|&x| x.abs() <= 30));
    }

    #[test]
    fn frame_leaves_rest_of_buffer_alone() {
        let mut s = SpeechSignal::new(1, Rate::Hz8000);
        let mut buf = [i16::MAX; 200];
        s.next_frame(&mut buf);
        assert!(buf[160..].iter().all(|&x| x == i16::MAX));
    }

    fn wav_bytes(fmt: &[u8], data: &[u8], extra_chunk: bool) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(b"WAVE");
        if extra_chunk {
            v.extend_from_slice(b"LIST");
            v.extend_from_slice(&3u32.to_le_bytes());
            v.extend_from_slice(&[1, 2, 3, 0]); // odd size + pad byte
        }
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        v.extend_from_slice(fmt);
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        let riff = (v.len() - 8) as u32;
        v[4..8].copy_from_slice(&riff.to_le_bytes());
        v
    }

    fn fmt_chunk(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        let align = channels * bits / 8;
        f.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn wav_pcm16_mono_reads_with_extra_chunks() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 1234];
        let bytes = wav_bytes(&fmt_chunk(1, 1, 16_000, 16), &pcm(&samples), true);
        assert_eq!(parse_wav(&bytes).unwrap(), (samples.to_vec(), 16_000));
        // And through a file.
        let path = std::env::temp_dir().join(format!("voxd-loadgen-{}.wav", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let got = load_wav(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(got.unwrap(), (samples.to_vec(), 16_000));
    }

    #[test]
    fn wav_extensible_pcm_accepted() {
        let mut fmt = fmt_chunk(0xFFFE, 1, 8_000, 16);
        fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        fmt.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        fmt.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        fmt.extend_from_slice(&1u16.to_le_bytes()); // sub-format: PCM
        fmt.extend_from_slice(&[0u8; 14]);
        let bytes = wav_bytes(&fmt, &pcm(&[5, 6]), false);
        assert_eq!(parse_wav(&bytes).unwrap(), (vec![5, 6], 8_000));
    }

    #[test]
    fn wav_refusals_are_clear() {
        let data = pcm(&[1, 2, 3, 4]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"RIFX....WAVE".to_vec(), "RIFF/WAVE"),
            (
                wav_bytes(&fmt_chunk(3, 1, 8_000, 32), &data, false),
                "not PCM",
            ),
            (
                wav_bytes(&fmt_chunk(7, 1, 8_000, 8), &data, false),
                "0x0007",
            ),
            (
                wav_bytes(&fmt_chunk(1, 2, 8_000, 16), &data, false),
                "2 channels",
            ),
            (
                wav_bytes(&fmt_chunk(1, 1, 8_000, 8), &data, false),
                "8 bits",
            ),
            (
                wav_bytes(&fmt_chunk(1, 1, 0, 16), &data, false),
                "rate is 0",
            ),
            (wav_bytes(&fmt_chunk(1, 1, 8_000, 16), &[], false), "empty"),
            (
                wav_bytes(&fmt_chunk(1, 1, 8_000, 16)[..10], &data, false),
                "16 bytes",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_wav(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // data before fmt; no data at all.
        let mut v = b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\x01\x02".to_vec();
        assert!(matches!(parse_wav(&v), Err(WavError::MissingFmt)));
        v.truncate(12);
        assert!(matches!(parse_wav(&v), Err(WavError::MissingData)));
        assert!(matches!(
            load_wav("/nonexistent/voxd.wav"),
            Err(WavError::Io(_))
        ));
    }

    #[test]
    fn wav_data_size_past_end_reads_to_end() {
        let mut bytes = wav_bytes(&fmt_chunk(1, 1, 8_000, 16), &pcm(&[9, 8, 7]), false);
        let n = bytes.len();
        bytes[n - 10..n - 6].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes.push(0xAA); // odd trailing byte ignored
        assert_eq!(parse_wav(&bytes).unwrap(), (vec![9, 8, 7], 8_000));
    }

    #[test]
    fn wav_loop_wraps_and_flags_talk() {
        let mut clip = vec![0i16; 300];
        for s in &mut clip[200..250] {
            *s = 1000;
        }
        let clip: Arc<[i16]> = clip.into();
        let mut w = WavLoop::new(clip.clone(), Rate::Hz8000, 250).unwrap();
        let mut buf = [0i16; 160];
        // 250..300 silence, then 0..110 silence: quiet.
        assert!(!w.next_frame(&mut buf));
        // 110..270 includes the loud part.
        assert!(w.next_frame(&mut buf));
        assert_eq!(&buf[90..140], &[1000i16; 50][..]);
        assert!(WavLoop::new(Vec::new().into(), Rate::Hz8000, 0).is_none());
        let mut quiet = WavLoop::new(clip, Rate::Hz8000, 200)
            .unwrap()
            .with_threshold(1000);
        assert!(!quiet.next_frame(&mut buf));
    }
}
