//! Sans-IO media building blocks.
//!
//! Owns: wire framing (AudioSocket, RTP), G.711, resampling, the inbound jitter
//! buffer, the outbound playout buffer and the barge-in detector. Everything here is
//! a pure function or a state machine that is handed its inputs (bytes, samples, a
//! time in milliseconds) and returns what to do.
//!
//! `unsafe` is denied here; only `resample.rs` allows it, for its SIMD kernels.
//!
//! Must not: open sockets, read the clock, spawn threads, use tokio, or allocate on
//! the per-frame path once warmed up (buffers are passed in by the caller).

#![deny(unsafe_code)]

pub mod audiosocket;
pub mod g711;
pub mod jitter;
pub mod playout;
pub mod resample;
pub mod rtp;
pub mod slab;
pub mod vad;

/// One pacing interval: every call moves one frame of this length per tick.
pub const FRAME_MS: u32 = 20;

/// PCM sample rates voxd handles internally (slin at these rates, G.711 at 8 kHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rate {
    /// 8 kHz: narrowband telephony, G.711, AudioSocket kind 0x10.
    Hz8000,
    /// 12 kHz: AudioSocket kind 0x11.
    Hz12000,
    /// 16 kHz: wideband, slin16, AudioSocket kind 0x12.
    Hz16000,
    /// 24 kHz: OpenAI Realtime `audio/pcm`, AudioSocket kind 0x13.
    Hz24000,
    /// 32 kHz: AudioSocket kind 0x14.
    Hz32000,
    /// 48 kHz: AudioSocket kind 0x16.
    Hz48000,
}

impl Rate {
    /// All rates, lowest first.
    pub const ALL: [Rate; 6] = [
        Rate::Hz8000,
        Rate::Hz12000,
        Rate::Hz16000,
        Rate::Hz24000,
        Rate::Hz32000,
        Rate::Hz48000,
    ];

    /// The rate in samples per second.
    pub const fn hz(self) -> u32 {
        match self {
            Rate::Hz8000 => 8_000,
            Rate::Hz12000 => 12_000,
            Rate::Hz16000 => 16_000,
            Rate::Hz24000 => 24_000,
            Rate::Hz32000 => 32_000,
            Rate::Hz48000 => 48_000,
        }
    }

    /// The rate for a number of samples per second, if voxd supports it.
    pub const fn from_hz(hz: u32) -> Option<Rate> {
        match hz {
            8_000 => Some(Rate::Hz8000),
            12_000 => Some(Rate::Hz12000),
            16_000 => Some(Rate::Hz16000),
            24_000 => Some(Rate::Hz24000),
            32_000 => Some(Rate::Hz32000),
            48_000 => Some(Rate::Hz48000),
            _ => None,
        }
    }

    /// Samples in one 20 ms frame at this rate (160 at 8 kHz).
    pub const fn samples_per_frame(self) -> usize {
        (self.hz() / 1000 * FRAME_MS) as usize
    }

    /// Samples per millisecond at this rate.
    pub const fn samples_per_ms(self) -> usize {
        (self.hz() / 1000) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_match_protocol() {
        assert_eq!(Rate::Hz8000.samples_per_frame(), 160);
        assert_eq!(Rate::Hz16000.samples_per_frame(), 320);
        assert_eq!(Rate::Hz24000.samples_per_frame(), 480);
        for r in Rate::ALL {
            assert_eq!(Rate::from_hz(r.hz()), Some(r));
        }
        assert_eq!(Rate::from_hz(44_100), None);
    }
}
