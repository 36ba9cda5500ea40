//! Wire codecs of the two sides of a call, and conversion between their bytes and
//! PCM samples.
//!
//! Owns: the `Codec` enum (what bytes on one side mean) and the byte<->sample
//! conversions the call state machine needs (slin little-endian, G.711).
//!
//! Must not: allocate, or know about sockets or framing.

#![forbid(unsafe_code)]

use crate::media::{g711, Rate};

/// How audio is encoded on one side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Signed 16-bit little-endian PCM at a rate (AudioSocket slin, OpenAI `audio/pcm`).
    Slin(Rate),
    /// G.711 mu-law at 8 kHz (RTP PT 0, OpenAI `audio/pcmu`, Deepgram `mulaw`).
    Pcmu,
    /// G.711 A-law at 8 kHz (RTP PT 8, OpenAI `audio/pcma`).
    Pcma,
}

impl Codec {
    /// Sample rate of the PCM behind the codec.
    pub const fn rate(self) -> Rate {
        match self {
            Codec::Slin(r) => r,
            Codec::Pcmu | Codec::Pcma => Rate::Hz8000,
        }
    }

    /// Bytes per sample on the wire.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Codec::Slin(_) => 2,
            Codec::Pcmu | Codec::Pcma => 1,
        }
    }

    /// Bytes of one 20 ms frame on the wire (160 for G.711, 640 for slin16).
    pub const fn frame_bytes(self) -> usize {
        self.rate().samples_per_frame() * self.bytes_per_sample()
    }

    /// Decode `src` (a whole number of samples) into `dst`; returns samples written.
    /// `dst` must hold `src.len() / bytes_per_sample()` samples.
    pub fn decode(self, src: &[u8], dst: &mut [i16]) -> usize {
        match self {
            Codec::Slin(_) => {
                let n = (src.len() / 2).min(dst.len());
                for (d, c) in dst[..n].iter_mut().zip(src.chunks_exact(2)) {
                    *d = i16::from_le_bytes([c[0], c[1]]);
                }
                n
            }
            Codec::Pcmu => g711::ulaw_decode(src, dst),
            Codec::Pcma => g711::alaw_decode(src, dst),
        }
    }

    /// Encode `src` into `dst`; returns bytes written. `dst` must hold
    /// `src.len() * bytes_per_sample()` bytes.
    pub fn encode(self, src: &[i16], dst: &mut [u8]) -> usize {
        match self {
            Codec::Slin(_) => {
                let n = src.len().min(dst.len() / 2);
                for (c, s) in dst[..n * 2].chunks_exact_mut(2).zip(src) {
                    c.copy_from_slice(&s.to_le_bytes());
                }
                n * 2
            }
            Codec::Pcmu => g711::ulaw_encode(src, dst),
            Codec::Pcma => g711::alaw_encode(src, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(Codec::Pcmu.frame_bytes(), 160);
        assert_eq!(Codec::Slin(Rate::Hz8000).frame_bytes(), 320);
        assert_eq!(Codec::Slin(Rate::Hz16000).frame_bytes(), 640);
        assert_eq!(Codec::Slin(Rate::Hz24000).frame_bytes(), 960);
    }

    #[test]
    fn slin_is_little_endian_and_round_trips() {
        let s = [1i16, -2, 0x1234, i16::MIN, i16::MAX];
        let mut b = [0u8; 10];
        assert_eq!(Codec::Slin(Rate::Hz16000).encode(&s, &mut b), 10);
        assert_eq!(&b[4..6], &[0x34, 0x12]);
        let mut back = [0i16; 5];
        assert_eq!(Codec::Slin(Rate::Hz16000).decode(&b, &mut back), 5);
        assert_eq!(back, s);
    }

    #[test]
    fn g711_round_trips_every_code() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let codes: Vec<u8> = (0..=255).collect();
            let mut pcm = [0i16; 256];
            codec.decode(&codes, &mut pcm);
            let mut again = [0u8; 256];
            codec.encode(&pcm, &mut again);
            let mut pcm2 = [0i16; 256];
            codec.decode(&again, &mut pcm2);
            assert_eq!(
                pcm, pcm2,
                "{codec:?}: decode(encode(decode(x))) == decode(x)"
            );
        }
    }
}
