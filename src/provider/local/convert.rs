//! Conversion of the local server's reply audio to the session's one output
//! codec, slin16 (PCM16LE at 16 kHz).
//!
//! Owns: the per-session buffers (decoded samples, resampled samples, an output
//! [`FrameSlab`]) and the resampler, reused chunk after chunk; the parsing of a
//! `tts_audio`'s `encoding`/`sample_rate_hz` into a [`SourceFormat`]. Linear PCM
//! at 16 kHz passes through without a copy; mu-law 8 kHz (the server's legacy
//! default) is decoded with [`crate::media::g711`] and upsampled with
//! [`crate::media::resample`].
//!
//! Must not: do I/O or read the clock.

#![forbid(unsafe_code)]

use bytes::Bytes;

use crate::media::resample::Resampler;
use crate::media::slab::FrameSlab;
use crate::media::{g711, Rate};

/// Output rate of every local session.
pub const OUT_RATE: Rate = Rate::Hz16000;

/// Bytes per refill of the output slab (1 s of slin16).
const SLAB_BYTES: usize = 32 * 1024;

/// How the server encoded a chunk of reply audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// G.711 mu-law at a rate.
    Mulaw(Rate),
    /// G.711 A-law at a rate.
    Alaw(Rate),
    /// PCM16 little-endian at a rate.
    Linear16(Rate),
}

impl SourceFormat {
    /// What the server sends without saying: mu-law 8 kHz (its legacy contract).
    pub const LEGACY: SourceFormat = SourceFormat::Mulaw(Rate::Hz8000);

    /// The format named by a `tts_audio`'s `encoding` and `sample_rate_hz` (0 = the
    /// encoding's usual rate: 8 kHz for G.711, 16 kHz for linear PCM). `None` for
    /// an encoding or rate voxd cannot play.
    pub fn parse(encoding: &str, sample_rate_hz: u32) -> Option<SourceFormat> {
        let enc = encoding.trim().to_ascii_lowercase().replace(['-', '_'], "");
        let (g711_law, default_hz) = match enc.as_str() {
            "" | "mulaw" | "ulaw" | "g711ulaw" | "pcmu" | "μlaw" => (Some(true), 8000),
            "alaw" | "g711alaw" | "pcma" => (Some(false), 8000),
            "linear16" | "pcm16" | "pcm16le" | "slin" | "slin16" | "pcm" => (None, 16000),
            _ => return None,
        };
        let hz = if sample_rate_hz == 0 {
            default_hz
        } else {
            sample_rate_hz
        };
        let rate = Rate::from_hz(hz)?;
        Some(match g711_law {
            Some(true) => SourceFormat::Mulaw(rate),
            Some(false) => SourceFormat::Alaw(rate),
            None => SourceFormat::Linear16(rate),
        })
    }

    fn rate(self) -> Rate {
        match self {
            SourceFormat::Mulaw(r) | SourceFormat::Alaw(r) | SourceFormat::Linear16(r) => r,
        }
    }
}

/// Turns reply audio into slin16; one per session.
pub struct OutputConverter {
    pcm: Vec<i16>,
    out: Vec<i16>,
    resampler: Option<Resampler>,
    slab: FrameSlab,
}

impl std::fmt::Debug for OutputConverter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputConverter")
            .field("from", &self.resampler.as_ref().map(Resampler::from_rate))
            .finish()
    }
}

impl Default for OutputConverter {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputConverter {
    /// An idle converter (buffers grow to the largest chunk seen, then are reused).
    pub fn new() -> Self {
        OutputConverter {
            pcm: Vec::new(),
            out: Vec::new(),
            resampler: None,
            slab: FrameSlab::new(SLAB_BYTES),
        }
    }

    /// `data` in `fmt` as slin16 bytes. Consecutive chunks of one utterance are
    /// resampled as one stream; call [`OutputConverter::end_utterance`] between
    /// utterances. A trailing odd byte of linear PCM is dropped.
    pub fn convert(&mut self, fmt: SourceFormat, data: Vec<u8>) -> Bytes {
        if let SourceFormat::Linear16(OUT_RATE) = fmt {
            let mut data = data;
            data.truncate(data.len() & !1);
            return Bytes::from(data);
        }
        // Decode to PCM at the source rate.
        let n = match fmt {
            SourceFormat::Linear16(_) => data.len() / 2,
            SourceFormat::Mulaw(_) | SourceFormat::Alaw(_) => data.len(),
        };
        self.pcm.resize(n, 0);
        match fmt {
            SourceFormat::Mulaw(_) => {
                g711::ulaw_decode(&data, &mut self.pcm);
            }
            SourceFormat::Alaw(_) => {
                g711::alaw_decode(&data, &mut self.pcm);
            }
            SourceFormat::Linear16(_) => {
                for (d, c) in self.pcm.iter_mut().zip(data.chunks_exact(2)) {
                    *d = i16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
        // Resample to 16 kHz (a no-op copy when the source is 16 kHz G.711).
        let from = fmt.rate();
        if self.resampler.as_ref().map(Resampler::from_rate) != Some(from) {
            self.resampler = Some(Resampler::new(from, OUT_RATE));
        }
        let written = match self.resampler.as_mut() {
            Some(r) => {
                self.out.resize(r.output_len(self.pcm.len()), 0);
                // The output is sized by output_len, so process cannot refuse.
                r.process(&self.pcm, &mut self.out).unwrap_or(0)
            }
            None => 0,
        };
        let samples = &self.out[..written];
        self.slab.fill(written * 2, |dst| {
            for (d, s) in dst.chunks_exact_mut(2).zip(samples) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        })
    }

    /// The utterance ended: the next chunk starts a fresh stream (the filter's
    /// last ~2.5 ms of history are dropped, not smeared into the next reply).
    pub fn end_utterance(&mut self) {
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!(
            SourceFormat::parse("mulaw", 8000),
            Some(SourceFormat::Mulaw(Rate::Hz8000))
        );
        assert_eq!(
            SourceFormat::parse("ulaw", 0),
            Some(SourceFormat::Mulaw(Rate::Hz8000))
        );
        assert_eq!(
            SourceFormat::parse("linear16", 16000),
            Some(SourceFormat::Linear16(Rate::Hz16000))
        );
        assert_eq!(
            SourceFormat::parse("pcm16", 24000),
            Some(SourceFormat::Linear16(Rate::Hz24000))
        );
        assert_eq!(SourceFormat::parse("", 0), Some(SourceFormat::LEGACY));
        assert_eq!(SourceFormat::parse("opus", 48000), None);
        assert_eq!(SourceFormat::parse("linear16", 11025), None);
    }

    #[test]
    fn slin16_passes_through() {
        let mut c = OutputConverter::new();
        let data: Vec<u8> = (0..641u32).map(|i| i as u8).collect();
        let out = c.convert(SourceFormat::Linear16(Rate::Hz16000), data.clone());
        assert_eq!(&out[..], &data[..640], "odd byte dropped, rest untouched");
    }

    #[test]
    fn mulaw_8k_becomes_slin16_of_twice_the_samples_in_chunks_as_in_one() {
        let tone: Vec<i16> = (0..1600)
            .map(|n| {
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 8000.0).sin()) as i16
            })
            .collect();
        let mut ulaw = vec![0u8; tone.len()];
        g711::ulaw_encode(&tone, &mut ulaw);
        let mut whole = OutputConverter::new();
        let one = whole.convert(SourceFormat::Mulaw(Rate::Hz8000), ulaw.clone());
        assert_eq!(one.len(), 1600 * 2 * 2);
        let mut chunked = OutputConverter::new();
        let mut parts = Vec::new();
        for c in ulaw.chunks(160) {
            parts
                .extend_from_slice(&chunked.convert(SourceFormat::Mulaw(Rate::Hz8000), c.to_vec()));
        }
        assert_eq!(parts, one.to_vec(), "chunking does not change the output");
    }
}
