//! G.711 mu-law and A-law conversion, table-driven and bit-exact with ffmpeg's
//! `pcm_mulaw` / `pcm_alaw` codecs.
//!
//! Owns: the four lookup tables (two 256-entry decode tables, two 16384-entry encode
//! tables indexed by the 16-bit sample shifted right by 2), all built at compile time
//! by `const fn`s that mirror ffmpeg's `pcm_tablegen.h`, and the slice and
//! single-sample conversions the call state machine uses to turn RTP/AudioSocket
//! mu-law or A-law payloads into slin and back.
//!
//! Must not: allocate, read the clock, do I/O, or panic on any input; every function
//! here is a pure mapping over caller-owned buffers.
//!
//! Encoding quantises the 16-bit sample to 14 bits (`(s + 32768) >> 2`) and picks the
//! code whose decision interval contains it, exactly as ffmpeg does; sox, which rounds
//! before quantising, differs from ffmpeg on about 1,000 (mu-law) and 2,000 (A-law) of
//! the 65,536 inputs, always by one step at a decision boundary. Decoding agrees with
//! both.

#![forbid(unsafe_code)]

/// The mu-law code for digital silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;
/// The A-law code for the smallest positive value (linear 8), used as silence.
pub const ALAW_SILENCE: u8 = 0xD5;

const SIGN_BIT: u8 = 0x80;
const QUANT_MASK: u8 = 0x0F;
const SEG_SHIFT: u32 = 4;
const SEG_MASK: u8 = 0x70;
const BIAS: i32 = 0x84;

/// ITU-T G.711 A-law expansion of one code (ffmpeg `alaw2linear`).
const fn alaw2linear_const(a_val: u8) -> i32 {
    let a = a_val ^ 0x55;
    let mut t = (a & QUANT_MASK) as i32;
    let seg = ((a & SEG_MASK) >> SEG_SHIFT) as u32;
    if seg != 0 {
        t = (t + t + 1 + 32) << (seg + 2);
    } else {
        t = (t + t + 1) << 3;
    }
    if a & SIGN_BIT != 0 {
        t
    } else {
        -t
    }
}

/// ITU-T G.711 mu-law expansion of one code (ffmpeg `ulaw2linear`).
const fn ulaw2linear_const(u_val: u8) -> i32 {
    let u = !u_val;
    let mut t = (((u & QUANT_MASK) as i32) << 3) + BIAS;
    t <<= ((u & SEG_MASK) >> SEG_SHIFT) as u32;
    if u & SIGN_BIT != 0 {
        BIAS - t
    } else {
        t - BIAS
    }
}

const fn build_decode_table(ulaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if ulaw {
            ulaw2linear_const(i as u8) as i16
        } else {
            alaw2linear_const(i as u8) as i16
        };
        i += 1;
    }
    table
}

/// ffmpeg's `build_xlaw_table`: a 14-bit index (sample + 32768) >> 2 to a code; the
/// boundary between codes i and i + 1 (in magnitude order) is the midpoint of their
/// decoded values, rounded, in 14-bit units.
const fn build_encode_table(ulaw: bool) -> [u8; 16384] {
    let mask: u8 = if ulaw { 0xFF } else { 0xD5 };
    let mut table = [0u8; 16384];
    let mut j: usize = 1;
    table[8192] = mask;
    let mut i: u32 = 0;
    while i < 127 {
        let (v1, v2) = if ulaw {
            (
                ulaw2linear_const((i as u8) ^ mask),
                ulaw2linear_const(((i + 1) as u8) ^ mask),
            )
        } else {
            (
                alaw2linear_const((i as u8) ^ mask),
                alaw2linear_const(((i + 1) as u8) ^ mask),
            )
        };
        let v = ((v1 + v2 + 4) >> 3) as usize;
        while j < v {
            table[8192 - j] = (i as u8) ^ (mask ^ 0x80);
            table[8192 + j] = (i as u8) ^ mask;
            j += 1;
        }
        i += 1;
    }
    while j < 8192 {
        table[8192 - j] = 127 ^ (mask ^ 0x80);
        table[8192 + j] = 127 ^ mask;
        j += 1;
    }
    table[0] = table[1];
    table
}

static ULAW_DECODE: [i16; 256] = build_decode_table(true);
static ALAW_DECODE: [i16; 256] = build_decode_table(false);
static ULAW_ENCODE: [u8; 16384] = build_encode_table(true);
static ALAW_ENCODE: [u8; 16384] = build_encode_table(false);

/// The 14-bit table index of a 16-bit sample; always < 16384.
#[inline(always)]
fn index(sample: i16) -> usize {
    ((sample as i32 + 32768) >> 2) as usize & 0x3FFF
}

/// Decodes one mu-law code to a 16-bit linear sample (range -32124..=32124).
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Decodes one A-law code to a 16-bit linear sample (range -32256..=32256).
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// Encodes one 16-bit linear sample to mu-law.
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[index(sample)]
}

/// Encodes one 16-bit linear sample to A-law.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[index(sample)]
}

/// Decodes mu-law bytes (an RTP PCMU payload, or a `c(ulaw)` AudioSocket payload)
/// into `dst`. Converts `min(src.len(), dst.len())` samples and returns that count.
#[inline]
pub fn ulaw_decode(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = ULAW_DECODE[s as usize];
    }
    n
}

/// Decodes A-law bytes (an RTP PCMA payload) into `dst`. Converts
/// `min(src.len(), dst.len())` samples and returns that count.
#[inline]
pub fn alaw_decode(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = ALAW_DECODE[s as usize];
    }
    n
}

/// Encodes 16-bit samples to mu-law bytes in `dst` (for an outbound PCMU packet).
/// Converts `min(src.len(), dst.len())` samples and returns that count.
#[inline]
pub fn ulaw_encode(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = ULAW_ENCODE[index(s)];
    }
    n
}

/// Encodes 16-bit samples to A-law bytes in `dst` (for an outbound PCMA packet).
/// Converts `min(src.len(), dst.len())` samples and returns that count.
#[inline]
pub fn alaw_encode(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = ALAW_ENCODE[index(s)];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Reference points from ITU-T G.711 / ffmpeg.
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(0), ULAW_SILENCE);
        assert_eq!(linear_to_alaw(0), ALAW_SILENCE);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_round_trips_through_linear() {
        for code in 0..=255u8 {
            let u = ulaw_to_linear(code);
            // 0x7F (negative zero) re-encodes to 0xFF (positive zero).
            let want = if code == 0x7F { 0xFF } else { code };
            assert_eq!(linear_to_ulaw(u), want, "ulaw code {code:#04x} -> {u}");
            let a = alaw_to_linear(code);
            assert_eq!(linear_to_alaw(a), code, "alaw code {code:#04x} -> {a}");
        }
    }

    #[test]
    fn encode_is_monotone() {
        // Decoding the encode of a ramp must never go down.
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            assert!(u >= prev_u, "ulaw not monotone at {s}");
            assert!(a >= prev_a, "alaw not monotone at {s}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn slices_match_single_sample_and_stop_at_shorter() {
        let src: Vec<i16> = (0..200).map(|i| (i * 331 - 30000) as i16).collect();
        let mut u = [0u8; 160];
        let mut a = [0u8; 160];
        assert_eq!(ulaw_encode(&src, &mut u), 160);
        assert_eq!(alaw_encode(&src, &mut a), 160);
        for i in 0..160 {
            assert_eq!(u[i], linear_to_ulaw(src[i]));
            assert_eq!(a[i], linear_to_alaw(src[i]));
        }
        let mut back = [0i16; 300];
        assert_eq!(ulaw_decode(&u, &mut back), 160);
        for i in 0..160 {
            assert_eq!(back[i], ulaw_to_linear(u[i]));
        }
        assert_eq!(alaw_decode(&a, &mut back[..10]), 10);
        for i in 0..10 {
            assert_eq!(back[i], alaw_to_linear(a[i]));
        }
    }
}
