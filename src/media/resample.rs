//! Polyphase FIR sample-rate conversion for i16 mono PCM between the [`Rate`]s.
//!
//! Owns: the filter design (a Kaiser-windowed sinc designed once in
//! [`Resampler::new`] for the combined interpolate-by-L / decimate-by-M ratio, with
//! L/M the reduced ratio of the two rates), the per-phase coefficient tables, the
//! input history (the last `taps - 1` samples, in a fixed buffer allocated at
//! construction) and the fractional phase, so that consecutive calls are
//! bit-identical to one call over the concatenated input. It also owns the choice of
//! the dot-product kernel (AVX2, SSE4.1 or portable scalar), made once at construction
//! with `is_x86_feature_detected!`; all kernels use the same integer arithmetic and
//! give bit-identical output.
//!
//! Must not: allocate in [`Resampler::process`] (buffers are the caller's), read the
//! clock, do IO, or panic on any input length (a too-short output slice is a
//! [`ResampleError`]).
//!
//! Arithmetic: each coefficient c is stored as two i16, `hi = round(c * 2^14)` and
//! `lo = round((c * 2^14 - hi) * 2^8)`, so it is carried with ~22 fractional bits (a
//! plain Q15 table caps the stopband at ~73-81 dB). An output sample is
//! `sum(x*hi) + (sum(x*lo) >> 8)` accumulated in i32 (`pmaddwd`; Q14 rather than Q15
//! because a phase's sum of |c| reaches ~2.3, and construction asserts that no
//! full-scale input can overflow), then rounded (+2^13, >> 14) and saturated to i16.
//! Integer sums are order-independent, so scalar, SSE4.1 and AVX2 are bit-identical.
//!
//! Kernels: the portable and SSE4.1 ones walk outputs one or four at a time over
//! 16-tap blocks (`pmaddwd` against `hi` and against `lo`). The AVX2 one is
//! specialised at compile time for the call-path ratios (L/M = 2, 1/2, 3, 1/3, 3/2,
//! 2/3, and the exact block counts of 8k<->16k, 8k<->24k, 16k<->24k): it produces a
//! group of 6-12 outputs (whole phase cycles) at once from a second table
//! (`packed`) that keeps only the live taps in 8-tap blocks of [8 `hi` | 8 `lo`]. One
//! 8-sample window load, broadcast to both 128-bit halves, feeds a single `pmaddwd`
//! that yields hi partial sums in the low half and lo partial sums in the high half,
//! so an output needs one accumulator instead of two; each window load is shared by
//! the phases that use it and each coefficient load by the cycles of the group, and
//! the group is reduced with one `phaddd` tree. Other ratios, a chunk that starts
//! mid-cycle and chunk tails use the one-at-a-time path. `pmaddwd` per output:
//! 5 (8k->16k, 8k->24k), 10 (16k->8k), 15 (24k->8k), 6 (16k->24k), 9 (24k->16k);
//! they run at about one per cycle. Cost per 20 ms frame, AVX2 (Zen 3, best of
//! 2 x 200 batches, `frame_time_min` below; criterion medians are noisier): 8k->16k
//! 0.50 us, 16k->8k 0.54, 8k->24k 0.74, 24k->8k 0.73, 16k->24k 1.03, 24k->16k 1.01
//! (1.1-2.9 us before). Measured and rejected: plain 16-sample loads against a
//! straddled [hi of block e-1 | lo of block e] table (20% fewer instructions, but
//! half the loads split a cache line: slower), the 16-tap layout with two
//! accumulators for L = 1 (slower), 12-output groups for 3/2 (accumulators spill).
//!
//! Achieved (measured by the tests in this file, `cargo test --release --lib
//! media::resample -- --nocapture`): group delay exactly [`Resampler::output_delay`]
//! output samples (impulse peak and tone phase agree to < 0.001 sample), 2.5 ms
//! whenever 8 kHz is one side, 1.5 ms for 16k<->24k, <= 2.5 ms for every pair;
//! passband gain spread 0.031 dB (8 kHz side) / <= 0.050 dB (others) up to
//! [`Resampler::passband_hz`]; images <= -83.7 dB and aliases <= -83.5 dB from
//! `min(from, to) - passband_hz` up (<= -85.8 dB when 8 kHz is not a side). The
//! passband edge is 0.9 x Nyquist of the lower rate (5.4 / 7.2 / 10.8 / 14.4 kHz)
//! except when 8 kHz is one side: there 80 dB within 2.5 ms of delay leaves a
//! ~1 kHz transition band, so the edge is 3,500 Hz (0.875 x Nyquist; the filter
//! stays within 0.1 dB to ~3,530 Hz).
//!
//! Filter per pair (Fs = L x from is the filter's rate): half-length D =
//! min(2.5 ms, 24 / lower-rate-in-kHz ms) x Fs, rounded to a multiple of M so the
//! delay is a whole number of output samples; a Kaiser window (beta 8.3) over
//! 2D + 1 points whose two end taps (~1e-5) are dropped, so N = 2D - 1 non-zero
//! taps; cutoff = lower/2 - 144 Hz*ms / (D / Fs). The 24 (rather than 26, which gave
//! 0.019 dB ripple) and the dropped ends make every phase fill whole 8-tap blocks.
//! Examples (non-zero taps; per phase padded to 16 for the 16-tap table / to 8 for
//! `packed`): 8k->16k D=40 N=79 (2 phases of 48 / 40), 16k->8k N=79 (96 / 80),
//! 8k->24k N=119 (3 x 48 / 40), 24k->8k N=119 (128 / 120), 16k->24k D=72 N=143
//! (3 x 64 / 48), 24k->16k N=143 (2 x 80 / 72).

#![allow(unsafe_code)]

use super::Rate;

/// Input samples handled per inner block (bounds the history buffer).
const BLOCK: usize = 512;

/// Fractional bits of the `hi` coefficient part (Q14: the per-phase sum of |c| is up
/// to ~2.3, so Q15 could overflow i32 on adversarial full-scale input).
const FRAC_BITS: i32 = 14;

/// Kaiser window shape parameter (~83 dB stopband).
const KAISER_BETA: f64 = 8.3;

/// Why [`Resampler::process`] refused a call. Always the caller's fault (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResampleError {
    /// The output slice cannot hold what this input produces; nothing was consumed.
    #[error("resampler output buffer too short: need {needed} samples, got {got}")]
    OutputTooShort {
        /// Samples this call would write ([`Resampler::output_len`]).
        needed: usize,
        /// Length of the slice that was passed.
        got: usize,
    },
}

/// The dot-product implementation, chosen once at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Sse41,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
            if std::arch::is_x86_feature_detected!("sse4.1") {
                return Kernel::Sse41;
            }
        }
        Kernel::Scalar
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse41 => "sse4.1",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
        }
    }
}

/// A stateful i16 mono resampler from one [`Rate`] to another.
///
/// Build one per stream direction with [`Resampler::new`]; feed it consecutive chunks
/// of any length with [`Resampler::process`]. Same-rate conversion is a copy.
#[derive(Clone)]
pub struct Resampler {
    from: Rate,
    to: Rate,
    /// Interpolation factor (reduced).
    l: usize,
    /// Decimation factor (reduced).
    m: usize,
    /// Taps per phase, padded to a multiple of 16; 0 for passthrough.
    taps: usize,
    /// Phase-major coefficients; per phase, per 16-tap block: 16 `hi` then 16 `lo`,
    /// ordered oldest input sample first (the portable and SSE4.1 kernels' layout).
    coefs: Box<[i16]>,
    /// The same coefficients for the AVX2 cycle kernels: only the last `8 * blocks8`
    /// taps of each phase (the ones before are zero padding), per 8-tap block 8 `hi`
    /// then 8 `lo`, so one 256-bit `pmaddwd` against an 8-sample window broadcast to
    /// both halves yields hi partial sums in the low half and lo in the high half.
    packed: Box<[i16]>,
    /// Taps per phase after the leading zeros common to all phases, in blocks of 8
    /// (rounded up).
    blocks8: usize,
    /// Per phase: (phase of the next output, input samples to advance).
    next: Box<[(u32, u32)]>,
    /// `taps - 1` samples of history followed by up to [`BLOCK`] new samples.
    buf: Box<[i16]>,
    /// Position of the next output relative to the next input sample, in units of
    /// the filter rate (always `< m`).
    off: usize,
    /// Filter half-length D (group delay) in filter-rate samples; a multiple of `m`.
    half_len: usize,
    passband_hz: u32,
    kernel: Kernel,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("l", &self.l)
            .field("m", &self.m)
            .field("taps_per_phase", &self.taps)
            .field("output_delay", &self.output_delay())
            .field("passband_hz", &self.passband_hz)
            .field("kernel", &self.kernel.name())
            .finish()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let y = x * x / 4.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..500 {
        let kf = k as f64;
        term *= y / (kf * kf);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

impl Resampler {
    /// Builds a resampler from `from` to `to` with the fastest kernel this CPU has.
    /// Called once per stream (allocates the tables and history, ~1-3 KiB).
    pub fn new(from: Rate, to: Rate) -> Resampler {
        Self::with_kernel(from, to, Kernel::detect())
    }

    /// Like [`Resampler::new`] but always uses the portable scalar kernel (for tests
    /// and benches that compare kernels; the output is bit-identical).
    pub fn new_scalar(from: Rate, to: Rate) -> Resampler {
        Self::with_kernel(from, to, Kernel::Scalar)
    }

    fn with_kernel(from: Rate, to: Rate, kernel: Kernel) -> Resampler {
        let fin = from.hz() as usize;
        let fout = to.hz() as usize;
        let g = gcd(fin, fout);
        let l = fout / g;
        let m = fin / g;
        let low = fin.min(fout);
        if l == 1 && m == 1 {
            return Resampler {
                from,
                to,
                l,
                m,
                taps: 0,
                coefs: Box::new([]),
                packed: Box::new([]),
                blocks8: 0,
                next: Box::new([(0, 1)]),
                buf: Box::new([]),
                off: 0,
                half_len: 0,
                passband_hz: (low as u32) / 2,
                kernel,
            };
        }
        let fs = (l * fin) as f64;
        // Half-length in output samples: 24 ms*kHz / lower rate (enough for 0.9 x
        // Nyquist with 80 dB and 0.05 dB ripple), capped at 2.5 ms (fout / 400, an
        // integer for all rates).
        let d_out = (24 * fout).div_ceil(low).min(fout / 400);
        let d = d_out * m;
        let tau_ms = d as f64 * 1000.0 / fs;
        let fc = low as f64 / 2.0 - 144.0 / tau_ms;
        let edge = (low as f64 / 2.0 - 1200.0 / tau_ms) / 100.0;
        let passband_hz = ((edge.floor() * 100.0) as u32).min(low as u32 * 9 / 20);

        // Prototype: windowed sinc, N = 2D + 1 taps, DC gain L.
        let n = 2 * d + 1;
        let i0_beta = bessel_i0(KAISER_BETA);
        let wc = 2.0 * fc / fs;
        let mut h: Vec<f64> = (0..n)
            .map(|i| {
                let x = i as f64 - d as f64;
                let r = x / d as f64;
                let w = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
                let s = if i == d {
                    wc
                } else {
                    (std::f64::consts::PI * wc * x).sin() / (std::f64::consts::PI * x)
                };
                s * w
            })
            .collect();
        // The two end taps (a sinc tail times the window's edge weight 1/I0(beta),
        // ~1e-5) are dropped: the delay stays D, and every phase then fits whole
        // 8-tap blocks for 8k<->16k, 8k->24k and 24k->8k (39-40 and 79 / 119 taps).
        h[0] = 0.0;
        h[n - 1] = 0.0;
        let sum: f64 = h.iter().sum();
        for v in &mut h {
            *v *= l as f64 / sum;
        }

        // Polyphase split: output at filter-rate time t = n0*L + p uses
        // x[n0 - j] * h[p + j*L]; stored reversed so the window is oldest first.
        let k = n.div_ceil(l);
        let taps = k.div_ceil(16) * 16;
        let mut coefs = vec![0i16; l * 2 * taps];
        let mut worst_sum = 0i64;
        for p in 0..l {
            let base = p * 2 * taps;
            let (mut s_hi, mut s_lo) = (0i64, 0i64);
            for i in 0..taps {
                let j = taps - 1 - i;
                let idx = p + j * l;
                let c = if idx < n {
                    h[idx] * (1 << FRAC_BITS) as f64
                } else {
                    0.0
                };
                let hi = c.round().clamp(-32767.0, 32767.0);
                let lo = ((c - hi) * 256.0).round().clamp(-32767.0, 32767.0);
                let pos = base + (i / 16) * 32 + i % 16;
                coefs[pos] = hi as i16;
                coefs[pos + 16] = lo as i16;
                s_hi += (hi as i64).abs();
                s_lo += (lo as i64).abs();
            }
            worst_sum = worst_sum
                .max(32768 * s_hi + ((32768 * s_lo) >> 8) + 1)
                .max(32768 * s_lo);
        }
        // No full-scale input can overflow the i32 accumulators (nor the rounding);
        // holds with margin for every pair (worst ~1.3e9).
        assert!(
            worst_sum + (1 << FRAC_BITS) < i32::MAX as i64,
            "resampler filter gain {worst_sum} {from:?}->{to:?}"
        );

        // Live taps: all but the leading zeros common to every phase.
        let lead = (0..taps)
            .take_while(|&i| {
                (0..l).all(|p| {
                    coefs[p * 2 * taps + (i / 16) * 32 + i % 16] == 0
                        && coefs[p * 2 * taps + (i / 16) * 32 + 16 + i % 16] == 0
                })
            })
            .count();
        let blocks8 = (taps - lead).div_ceil(8);
        let packed = pack_blocks8(&coefs, l, taps, blocks8);
        let next = (0..l)
            .map(|p| (((p + m) % l) as u32, ((p + m) / l) as u32))
            .collect();
        Resampler {
            from,
            to,
            l,
            m,
            taps,
            coefs: coefs.into_boxed_slice(),
            packed,
            blocks8,
            next,
            buf: vec![0i16; taps - 1 + BLOCK].into_boxed_slice(),
            off: 0,
            half_len: d,
            passband_hz,
            kernel,
        }
    }

    /// The input rate.
    pub fn from_rate(&self) -> Rate {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> Rate {
        self.to
    }

    /// Name of the kernel chosen at construction: `"avx2"`, `"sse4.1"` or `"scalar"`.
    pub fn kernel(&self) -> &'static str {
        self.kernel.name()
    }

    /// Upper edge of the guaranteed passband (ripple <= 0.1 dB from DC to here), in Hz.
    pub fn passband_hz(&self) -> u32 {
        self.passband_hz
    }

    /// Exactly how many samples the next [`Resampler::process`] call with an input of
    /// `input_len` samples will write. Over consecutive calls the total is always
    /// `ceil(total_in * to / from)`.
    pub fn output_len(&self, input_len: usize) -> usize {
        let produced = input_len as u128 * self.l as u128;
        let off = self.off as u128;
        if produced <= off {
            0
        } else {
            ((produced - off).div_ceil(self.m as u128)) as usize
        }
    }

    /// Group delay of the filter in output samples (exact; the filter is linear-phase
    /// and its delay is a whole number of output samples). 0 for same-rate.
    pub fn output_delay(&self) -> usize {
        self.half_len / self.m
    }

    /// Group delay in milliseconds (<= 2.5).
    pub fn delay_ms(&self) -> f64 {
        self.output_delay() as f64 * 1000.0 / self.to.hz() as f64
    }

    /// Forgets the history and phase (as if just built). Call when a stream restarts.
    pub fn reset(&mut self) {
        self.buf.fill(0);
        self.off = 0;
    }

    /// Resamples `input` (the next samples of the stream) into the front of `output`
    /// and returns how many samples were written (= [`Resampler::output_len`] of
    /// `input.len()`). Called once per frame; never allocates. If `output` is too
    /// short, nothing is consumed and [`ResampleError::OutputTooShort`] is returned.
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<usize, ResampleError> {
        let needed = self.output_len(input.len());
        if output.len() < needed {
            return Err(ResampleError::OutputTooShort {
                needed,
                got: output.len(),
            });
        }
        if self.taps == 0 {
            output[..needed].copy_from_slice(input);
            return Ok(needed);
        }
        let hist = self.taps - 1;
        let mut written = 0;
        for chunk in input.chunks(BLOCK) {
            let n = chunk.len();
            self.buf[hist..hist + n].copy_from_slice(chunk);
            let mut pos = Pos {
                rel: self.off / self.l,
                phase: self.off % self.l,
            };
            let out = &mut output[written..];
            let tables = Tables {
                coefs: &self.coefs,
                packed: &self.packed,
                blocks8: self.blocks8,
                next: &self.next,
                taps: self.taps,
                l: self.l,
                m: self.m,
            };
            let buf = &self.buf[..hist + n];
            let w = match self.kernel {
                Kernel::Scalar => run_scalar(&tables, buf, n, &mut pos, out),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Kernel::Avx2` is only chosen after
                // `is_x86_feature_detected!("avx2")` returned true on this CPU.
                Kernel::Avx2 => unsafe { run_avx2(&tables, buf, n, &mut pos, out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Kernel::Sse41` is only chosen after
                // `is_x86_feature_detected!("sse4.1")` returned true on this CPU (tests
                // that force it check the feature first).
                Kernel::Sse41 => unsafe { run_sse41(&tables, buf, n, &mut pos, out) },
            };
            written += w;
            self.off = (pos.rel - n) * self.l + pos.phase;
            self.buf.copy_within(n..n + hist, 0);
        }
        debug_assert_eq!(written, needed);
        Ok(written)
    }
}

/// Re-lays the 16-tap-block table out for the AVX2 cycle kernels (see
/// `Resampler::packed`): per phase, the last `8 * blocks8` taps in 8-tap blocks of 8
/// `hi` then 8 `lo`. The taps dropped in front are zero in every phase.
fn pack_blocks8(coefs: &[i16], l: usize, taps: usize, blocks8: usize) -> Box<[i16]> {
    let live = 8 * blocks8;
    let skip = taps - live;
    let mut packed = vec![0i16; l * 16 * blocks8];
    for p in 0..l {
        let phase = &coefs[p * 2 * taps..(p + 1) * 2 * taps];
        let hi = |i: usize| phase[(i / 16) * 32 + i % 16];
        let lo = |i: usize| phase[(i / 16) * 32 + 16 + i % 16];
        assert!(
            (0..skip).all(|i| hi(i) == 0 && lo(i) == 0),
            "non-zero padding"
        );
        for j in 0..live {
            let at = (p * blocks8 + j / 8) * 16 + j % 8;
            packed[at] = hi(skip + j);
            packed[at + 8] = lo(skip + j);
        }
    }
    packed.into_boxed_slice()
}

/// Read-only filter tables handed to a kernel run.
struct Tables<'a> {
    coefs: &'a [i16],
    packed: &'a [i16],
    blocks8: usize,
    next: &'a [(u32, u32)],
    taps: usize,
    l: usize,
    m: usize,
}

/// Next output position: its window ends at new-input index `rel`, with `phase`.
struct Pos {
    rel: usize,
    phase: usize,
}

/// Rounds the Q14 accumulators to i16 with saturation (identical in every kernel).
#[inline(always)]
fn finish(acc_hi: i32, acc_lo: i32) -> i16 {
    let acc = acc_hi.wrapping_add(acc_lo >> 8);
    (acc.wrapping_add(1 << (FRAC_BITS - 1)) >> FRAC_BITS).clamp(i16::MIN as i32, i16::MAX as i32)
        as i16
}

/// One kernel: dot products of one or four (window, phase coefficients) pairs.
///
/// # Safety
/// Implementations may use CPU instructions beyond the baseline; callers must only
/// use a kernel whose CPU feature was detected. Windows are exactly `taps` samples
/// and coefficient slices exactly `2 * taps`, `taps` a multiple of 16 (the run loop
/// slices them with bounds checks).
trait Dot {
    unsafe fn dot1(win: &[i16], c: &[i16]) -> i16;
    unsafe fn dot4(win: [&[i16]; 4], c: [&[i16]; 4]) -> [i16; 4];
}

/// The run loop shared by all kernels: produces every output whose window ends in
/// the `n` new samples at the end of `buf`. Returns the number written.
///
/// # Safety
/// `K`'s CPU feature must be present (see [`Dot`]).
#[inline(always)]
unsafe fn run<K: Dot>(
    t: &Tables<'_>,
    buf: &[i16],
    n: usize,
    pos: &mut Pos,
    out: &mut [i16],
) -> usize {
    let taps = t.taps;
    let stride = 2 * taps;
    let mut w = 0;
    let (mut r, mut p) = (pos.rel, pos.phase);
    loop {
        // Positions of up to four consecutive outputs.
        let (p1, r1) = (t.next[p].0 as usize, r + t.next[p].1 as usize);
        let (p2, r2) = (t.next[p1].0 as usize, r1 + t.next[p1].1 as usize);
        let (p3, r3) = (t.next[p2].0 as usize, r2 + t.next[p2].1 as usize);
        if r3 < n {
            let wins = [
                &buf[r..r + taps],
                &buf[r1..r1 + taps],
                &buf[r2..r2 + taps],
                &buf[r3..r3 + taps],
            ];
            let cs = [
                &t.coefs[p * stride..(p + 1) * stride],
                &t.coefs[p1 * stride..(p1 + 1) * stride],
                &t.coefs[p2 * stride..(p2 + 1) * stride],
                &t.coefs[p3 * stride..(p3 + 1) * stride],
            ];
            // SAFETY: forwarded precondition (feature present); slices have the exact
            // lengths the kernel needs (bounds-checked slicing above).
            let y = unsafe { K::dot4(wins, cs) };
            out[w..w + 4].copy_from_slice(&y);
            w += 4;
            p = t.next[p3].0 as usize;
            r = r3 + t.next[p3].1 as usize;
        } else if r < n {
            // SAFETY: as above.
            out[w] = unsafe { K::dot1(&buf[r..r + taps], &t.coefs[p * stride..(p + 1) * stride]) };
            w += 1;
            (p, r) = (p1, r1);
        } else {
            break;
        }
    }
    pos.rel = r;
    pos.phase = p;
    w
}

struct Scalar;

impl Dot for Scalar {
    #[inline(always)]
    unsafe fn dot1(win: &[i16], c: &[i16]) -> i16 {
        let (mut hi, mut lo) = (0i32, 0i32);
        for (x, cb) in win.chunks_exact(16).zip(c.chunks_exact(32)) {
            for i in 0..16 {
                let xi = x[i] as i32;
                hi = hi.wrapping_add(xi * cb[i] as i32);
                lo = lo.wrapping_add(xi * cb[16 + i] as i32);
            }
        }
        finish(hi, lo)
    }

    #[inline(always)]
    unsafe fn dot4(win: [&[i16]; 4], c: [&[i16]; 4]) -> [i16; 4] {
        // SAFETY: the scalar kernel has no feature requirement.
        unsafe {
            [
                Self::dot1(win[0], c[0]),
                Self::dot1(win[1], c[1]),
                Self::dot1(win[2], c[2]),
                Self::dot1(win[3], c[3]),
            ]
        }
    }
}

fn run_scalar(t: &Tables<'_>, buf: &[i16], n: usize, pos: &mut Pos, out: &mut [i16]) -> usize {
    // SAFETY: the scalar kernel uses only baseline instructions.
    unsafe { run::<Scalar>(t, buf, n, pos, out) }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64 as arch;

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot1(win: &[i16], c: &[i16]) -> i16 {
        // SAFETY: caller guarantees AVX2 and lengths (taps % 16 == 0, c = 2 * taps);
        // every load reads 16 i16 starting at 16*b (window) or 32*b / 32*b + 16
        // (coefficients) with b < taps / 16, i.e. inside the slices.
        unsafe {
            let mut hi = arch::_mm256_setzero_si256();
            let mut lo = arch::_mm256_setzero_si256();
            let (wp, cp) = (win.as_ptr(), c.as_ptr());
            for b in 0..win.len() / 16 {
                let x = arch::_mm256_loadu_si256(wp.add(16 * b).cast());
                let ch = arch::_mm256_loadu_si256(cp.add(32 * b).cast());
                let cl = arch::_mm256_loadu_si256(cp.add(32 * b + 16).cast());
                hi = arch::_mm256_add_epi32(hi, arch::_mm256_madd_epi16(x, ch));
                lo = arch::_mm256_add_epi32(lo, arch::_mm256_madd_epi16(x, cl));
            }
            let h = arch::_mm_add_epi32(
                arch::_mm256_castsi256_si128(hi),
                arch::_mm256_extracti128_si256::<1>(hi),
            );
            let l = arch::_mm_add_epi32(
                arch::_mm256_castsi256_si128(lo),
                arch::_mm256_extracti128_si256::<1>(lo),
            );
            let s = arch::_mm_hadd_epi32(h, l); // [h01, h23, l01, l23]
            let s = arch::_mm_hadd_epi32(s, s); // [H, L, H, L]
            finish(arch::_mm_cvtsi128_si32(s), arch::_mm_extract_epi32::<1>(s))
        }
    }

    #[inline(always)]
    unsafe fn dot4(win: [&[i16]; 4], c: [&[i16]; 4]) -> [i16; 4] {
        // SAFETY: as in `dot1`, for each of the four (window, coefficient) pairs.
        unsafe {
            let z = arch::_mm256_setzero_si256();
            let (mut h0, mut h1, mut h2, mut h3) = (z, z, z, z);
            let (mut l0, mut l1, mut l2, mut l3) = (z, z, z, z);
            let w = [
                win[0].as_ptr(),
                win[1].as_ptr(),
                win[2].as_ptr(),
                win[3].as_ptr(),
            ];
            let cp = [c[0].as_ptr(), c[1].as_ptr(), c[2].as_ptr(), c[3].as_ptr()];
            macro_rules! step {
                ($j:expr, $h:ident, $l:ident, $b:ident) => {
                    let x = arch::_mm256_loadu_si256(w[$j].add(16 * $b).cast());
                    let ch = arch::_mm256_loadu_si256(cp[$j].add(32 * $b).cast());
                    let cl = arch::_mm256_loadu_si256(cp[$j].add(32 * $b + 16).cast());
                    $h = arch::_mm256_add_epi32($h, arch::_mm256_madd_epi16(x, ch));
                    $l = arch::_mm256_add_epi32($l, arch::_mm256_madd_epi16(x, cl));
                };
            }
            for b in 0..win[0].len() / 16 {
                step!(0, h0, l0, b);
                step!(1, h1, l1, b);
                step!(2, h2, l2, b);
                step!(3, h3, l3, b);
            }
            // [h0 h1 h2 h3] lane sums: hadd twice, then fold the 128-bit halves.
            let hh = arch::_mm256_hadd_epi32(
                arch::_mm256_hadd_epi32(h0, h1),
                arch::_mm256_hadd_epi32(h2, h3),
            );
            let ll = arch::_mm256_hadd_epi32(
                arch::_mm256_hadd_epi32(l0, l1),
                arch::_mm256_hadd_epi32(l2, l3),
            );
            let hs = arch::_mm_add_epi32(
                arch::_mm256_castsi256_si128(hh),
                arch::_mm256_extracti128_si256::<1>(hh),
            );
            let ls = arch::_mm_add_epi32(
                arch::_mm256_castsi256_si128(ll),
                arch::_mm256_extracti128_si256::<1>(ll),
            );
            finish4(hs, ls)
        }
    }
}

/// `finish` on four lanes: `hi + (lo >> 8)`, round, shift, saturating pack.
///
/// # Safety
/// SSE4.1 must be present (SSE2 suffices; AVX2 implies both).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish4(hs: arch::__m128i, ls: arch::__m128i) -> [i16; 4] {
    // SAFETY: SSE2 instructions only (caller has SSE4.1 or AVX2); the store writes 8
    // bytes into an 8-byte local array.
    unsafe {
        let acc = arch::_mm_add_epi32(hs, arch::_mm_srai_epi32::<8>(ls));
        let acc = arch::_mm_srai_epi32::<FRAC_BITS>(arch::_mm_add_epi32(
            acc,
            arch::_mm_set1_epi32(1 << (FRAC_BITS - 1)),
        ));
        let packed = arch::_mm_packs_epi32(acc, acc);
        let mut y = [0i16; 4];
        arch::_mm_storel_epi64(y.as_mut_ptr().cast(), packed);
        y
    }
}

/// The AVX2 run: the ratios the call path uses (and the pairs that reduce to them)
/// get a [`run_cycles`] loop specialised at compile time; any other ratio the generic
/// [`run`] loop.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(t: &Tables<'_>, buf: &[i16], n: usize, pos: &mut Pos, out: &mut [i16]) -> usize {
    // SAFETY: AVX2 is present (this function's own precondition); each `run_cycles`
    // is instantiated with the (L, M) it is called for.
    unsafe {
        match (t.l, t.m, t.blocks8) {
            // The call-path directions, block count fixed too (fully unrolled).
            (2, 1, 5) => run_cycles::<2, 1, 8, 5>(t, buf, n, pos, out),
            (1, 2, 10) => run_cycles::<1, 2, 8, 10>(t, buf, n, pos, out),
            (3, 1, 5) => run_cycles::<3, 1, 12, 5>(t, buf, n, pos, out),
            (1, 3, 15) => run_cycles::<1, 3, 8, 15>(t, buf, n, pos, out),
            (3, 2, 6) => run_cycles::<3, 2, 6, 6>(t, buf, n, pos, out),
            (2, 3, 9) => run_cycles::<2, 3, 8, 9>(t, buf, n, pos, out),
            // Other pairs with the same ratios (12k->24k, 16k->48k, ...).
            (2, 1, _) => run_cycles::<2, 1, 8, 0>(t, buf, n, pos, out),
            (1, 2, _) => run_cycles::<1, 2, 8, 0>(t, buf, n, pos, out),
            (3, 1, _) => run_cycles::<3, 1, 12, 0>(t, buf, n, pos, out),
            (1, 3, _) => run_cycles::<1, 3, 8, 0>(t, buf, n, pos, out),
            (3, 2, _) => run_cycles::<3, 2, 6, 0>(t, buf, n, pos, out),
            (2, 3, _) => run_cycles::<2, 3, 8, 0>(t, buf, n, pos, out),
            _ => run::<Avx2>(t, buf, n, pos, out),
        }
    }
}

/// The AVX2 run loop for the ratio L/M known at compile time (and the block count
/// `NB` when it is not 0, which lets the compiler unroll the dot products). Outputs come in phase
/// cycles of L (phases `k * M % L`, window offsets `k * M / L`, then M samples on);
/// whole groups of `G` outputs (`G / L` cycles) starting at phase 0 go through
/// [`group_avx2`], which shares every window load between the phases that use it
/// and every coefficient load between the cycles. A chunk that starts mid-cycle and
/// the tail of a chunk go one output at a time through [`Avx2::dot1`]. Returns the
/// number written.
///
/// # Safety
/// AVX2 must be present, `(t.l, t.m) == (L, M)` and `NB` 0 or `t.blocks8`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn run_cycles<const L: usize, const M: usize, const G: usize, const NB: usize>(
    t: &Tables<'_>,
    buf: &[i16],
    n: usize,
    pos: &mut Pos,
    out: &mut [i16],
) -> usize {
    debug_assert!(G % L == 0 && G % 2 == 0 && (t.l, t.m) == (L, M));
    debug_assert!(NB == 0 || NB == t.blocks8);
    let nb = if NB == 0 { t.blocks8 } else { NB };
    let taps = t.taps;
    let stride = 2 * taps;
    let skip = taps - 8 * nb;
    let last = (G - 1) * M / L;
    let (mut r, mut p, mut w) = (pos.rel, pos.phase, 0);
    loop {
        if p == 0 && r + last < n {
            // Every window of the group (at r + offset, offset <= last) lies in `win`;
            // in bounds because `buf` holds `taps - 1 + n` samples.
            let win = &buf[r + skip..r + last + taps];
            // SAFETY: AVX2 and (L, M) are this function's preconditions; the slices
            // have the lengths `group_avx2` requires.
            unsafe { group_avx2::<L, M, G>(win, t.packed, nb, &mut out[w..w + G]) };
            w += G;
            r += G / L * M;
        } else if r < n {
            // SAFETY: AVX2 is present; exact `taps` / `2 * taps` slices.
            out[w] =
                unsafe { Avx2::dot1(&buf[r..r + taps], &t.coefs[p * stride..(p + 1) * stride]) };
            w += 1;
            let (np, adv) = t.next[p];
            (p, r) = (np as usize, r + adv as usize);
        } else {
            break;
        }
    }
    pos.rel = r;
    pos.phase = p;
    w
}

/// `G` consecutive outputs starting at phase 0 (see [`run_cycles`]) from the packed
/// table: output k dots the 8-tap blocks of the window at offset `k * M / L` with the
/// blocks of phase `k * M % L`, one 256-bit accumulator per output (hi sums in the
/// low half, lo sums in the high half), then all are reduced together.
///
/// # Safety
/// AVX2 must be present; `win` must hold `(G - 1) * M / L + 8 * nb` samples, `packed`
/// `L * 16 * nb` coefficients and `dst` exactly `G` slots.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn group_avx2<const L: usize, const M: usize, const G: usize>(
    win: &[i16],
    packed: &[i16],
    nb: usize,
    dst: &mut [i16],
) {
    debug_assert!(win.len() >= (G - 1) * M / L + 8 * nb);
    debug_assert!(packed.len() == L * 16 * nb && dst.len() == G);
    // SAFETY: AVX2 per the precondition. Window loads read 8 samples at
    // `offset + 8 * b` with offset <= (G - 1) * M / L and b < nb, inside `win`;
    // coefficient loads read 16 at `(phase * nb + b) * 16` with phase < L, b < nb,
    // inside `packed`.
    unsafe {
        let (wp, cp) = (win.as_ptr(), packed.as_ptr());
        let mut acc = [arch::_mm256_setzero_si256(); G];
        for b in 0..nb {
            for (k, a) in acc.iter_mut().enumerate() {
                let (phase, offset) = ((k * M) % L, (k * M) / L);
                let x = arch::_mm256_broadcastsi128_si256(arch::_mm_loadu_si128(
                    wp.add(offset + 8 * b).cast(),
                ));
                let c = arch::_mm256_loadu_si256(cp.add((phase * nb + b) * 16).cast());
                *a = arch::_mm256_add_epi32(*a, arch::_mm256_madd_epi16(x, c));
            }
        }
        finish_packed(&acc, dst);
    }
}

/// Reduces packed accumulators (hi partial sums in the low 128 bits, lo in the high)
/// with `phaddd` trees, eight, then four, then two at a time, and writes the
/// rounded, saturated outputs to `dst` (same length as `acc`, even).
///
/// # Safety
/// AVX2 must be present.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish_packed(acc: &[arch::__m256i], dst: &mut [i16]) {
    debug_assert!(acc.len() == dst.len() && acc.len() % 2 == 0);
    // SAFETY: AVX2 per the precondition; register-only intrinsics except the
    // 16-byte store into an 8-slot chunk of `dst`.
    unsafe {
        // [a0 a1 a2 a3 hi sums | a0 a1 a2 a3 lo sums]
        let quad = |a: &[arch::__m256i]| {
            arch::_mm256_hadd_epi32(
                arch::_mm256_hadd_epi32(a[0], a[1]),
                arch::_mm256_hadd_epi32(a[2], a[3]),
            )
        };
        let halves = |s: arch::__m256i| {
            finish4(
                arch::_mm256_castsi256_si128(s),
                arch::_mm256_extracti128_si256::<1>(s),
            )
        };
        let mut octets = acc.chunks_exact(8);
        let mut out = dst.chunks_exact_mut(8);
        for (a, d) in (&mut octets).zip(&mut out) {
            let (q0, q1) = (quad(&a[..4]), quad(&a[4..]));
            let hs = arch::_mm256_permute2x128_si256::<0x20>(q0, q1);
            let ls = arch::_mm256_permute2x128_si256::<0x31>(q0, q1);
            let y = finish8(hs, ls);
            arch::_mm_storeu_si128(d.as_mut_ptr().cast(), y);
        }
        let mut rest = octets.remainder();
        let mut out = out.into_remainder();
        if rest.len() >= 4 {
            out[..4].copy_from_slice(&halves(quad(&rest[..4])));
            (rest, out) = (&rest[4..], &mut out[4..]);
        }
        if let [a0, a1] = rest {
            let h = arch::_mm256_hadd_epi32(*a0, *a1);
            let y = halves(arch::_mm256_hadd_epi32(h, h));
            out.copy_from_slice(&y[..2]);
        }
    }
}

/// `finish` on eight lanes (hi sums, lo sums): the outputs in order.
///
/// # Safety
/// AVX2 must be present.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish8(hs: arch::__m256i, ls: arch::__m256i) -> arch::__m128i {
    // SAFETY: AVX2 per the precondition (register-only intrinsics).
    unsafe {
        let acc = arch::_mm256_add_epi32(hs, arch::_mm256_srai_epi32::<8>(ls));
        let acc = arch::_mm256_srai_epi32::<FRAC_BITS>(arch::_mm256_add_epi32(
            acc,
            arch::_mm256_set1_epi32(1 << (FRAC_BITS - 1)),
        ));
        // packs works per 128-bit half: [y0..y3 y0..y3 | y4..y7 y4..y7].
        let packed = arch::_mm256_packs_epi32(acc, acc);
        arch::_mm256_castsi256_si128(arch::_mm256_permute4x64_epi64::<0b1000>(packed))
    }
}

#[cfg(target_arch = "x86_64")]
struct Sse41;

#[cfg(target_arch = "x86_64")]
impl Dot for Sse41 {
    #[inline(always)]
    unsafe fn dot1(win: &[i16], c: &[i16]) -> i16 {
        // SAFETY: caller guarantees SSE4.1 and lengths (taps % 16 == 0, c = 2 * taps);
        // each load reads 8 i16 at 16*b (+8) in the window and 32*b (+8, +16, +24) in
        // the coefficients with b < taps / 16, i.e. inside the slices.
        unsafe {
            let mut hi = arch::_mm_setzero_si128();
            let mut lo = arch::_mm_setzero_si128();
            let (wp, cp) = (win.as_ptr(), c.as_ptr());
            for b in 0..win.len() / 16 {
                for half in 0..2 {
                    let x = arch::_mm_loadu_si128(wp.add(16 * b + 8 * half).cast());
                    let ch = arch::_mm_loadu_si128(cp.add(32 * b + 8 * half).cast());
                    let cl = arch::_mm_loadu_si128(cp.add(32 * b + 16 + 8 * half).cast());
                    hi = arch::_mm_add_epi32(hi, arch::_mm_madd_epi16(x, ch));
                    lo = arch::_mm_add_epi32(lo, arch::_mm_madd_epi16(x, cl));
                }
            }
            let s = arch::_mm_hadd_epi32(hi, lo);
            let s = arch::_mm_hadd_epi32(s, s);
            finish(arch::_mm_cvtsi128_si32(s), arch::_mm_extract_epi32::<1>(s))
        }
    }

    #[inline(always)]
    unsafe fn dot4(win: [&[i16]; 4], c: [&[i16]; 4]) -> [i16; 4] {
        // SAFETY: as in `dot1`, for each of the four (window, coefficient) pairs.
        unsafe {
            let z = arch::_mm_setzero_si128();
            let (mut h0, mut h1, mut h2, mut h3) = (z, z, z, z);
            let (mut l0, mut l1, mut l2, mut l3) = (z, z, z, z);
            let w = [
                win[0].as_ptr(),
                win[1].as_ptr(),
                win[2].as_ptr(),
                win[3].as_ptr(),
            ];
            let cp = [c[0].as_ptr(), c[1].as_ptr(), c[2].as_ptr(), c[3].as_ptr()];
            macro_rules! step {
                ($j:expr, $h:ident, $l:ident, $o:ident) => {
                    let x = arch::_mm_loadu_si128(w[$j].add($o).cast());
                    let ch = arch::_mm_loadu_si128(cp[$j].add(2 * $o - $o % 16).cast());
                    let cl = arch::_mm_loadu_si128(cp[$j].add(2 * $o - $o % 16 + 16).cast());
                    $h = arch::_mm_add_epi32($h, arch::_mm_madd_epi16(x, ch));
                    $l = arch::_mm_add_epi32($l, arch::_mm_madd_epi16(x, cl));
                };
            }
            // o = window offset of an 8-tap half block; its hi coefs sit at
            // 32*(o/16) + o%16 = 2*o - o%16.
            for half in 0..win[0].len() / 8 {
                let o = 8 * half;
                step!(0, h0, l0, o);
                step!(1, h1, l1, o);
                step!(2, h2, l2, o);
                step!(3, h3, l3, o);
            }
            let hs =
                arch::_mm_hadd_epi32(arch::_mm_hadd_epi32(h0, h1), arch::_mm_hadd_epi32(h2, h3));
            let ls =
                arch::_mm_hadd_epi32(arch::_mm_hadd_epi32(l0, l1), arch::_mm_hadd_epi32(l2, l3));
            finish4(hs, ls)
        }
    }
}

/// # Safety
/// The CPU must support SSE4.1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn run_sse41(
    t: &Tables<'_>,
    buf: &[i16],
    n: usize,
    pos: &mut Pos,
    out: &mut [i16],
) -> usize {
    // SAFETY: SSE4.1 is present (this function's own precondition).
    unsafe { run::<Sse41>(t, buf, n, pos, out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// The directions the call path uses; tested with every kernel.
    const REQUIRED: [(Rate, Rate); 6] = [
        (Rate::Hz8000, Rate::Hz16000),
        (Rate::Hz16000, Rate::Hz8000),
        (Rate::Hz8000, Rate::Hz24000),
        (Rate::Hz24000, Rate::Hz8000),
        (Rate::Hz16000, Rate::Hz24000),
        (Rate::Hz24000, Rate::Hz16000),
    ];

    fn all_pairs() -> Vec<(Rate, Rate)> {
        let mut v = Vec::new();
        for a in Rate::ALL {
            for b in Rate::ALL {
                if a != b {
                    v.push((a, b));
                }
            }
        }
        v
    }

    /// Every kernel this CPU can run (scalar always).
    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.1") {
                k.push(Kernel::Sse41);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                k.push(Kernel::Avx2);
            }
        }
        k
    }

    struct Lcg(u64);
    impl Lcg {
        fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            self.next_u32() as f64 / (1u64 << 31) as f64
        }
        fn i16(&mut self) -> i16 {
            self.next_u32() as i16
        }
    }

    /// -6 dBFS tone with TPDF dither (so quantisation error is white, not harmonics).
    fn tone(freq: f64, rate: Rate, len: usize, amp: f64, seed: u64) -> Vec<i16> {
        let mut rng = Lcg(seed);
        let fs = rate.hz() as f64;
        (0..len)
            .map(|n| {
                let v = amp * (2.0 * PI * freq * n as f64 / fs + 0.3).sin();
                let d = rng.unit() - rng.unit();
                (v + d).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    /// Amplitude and phase of `freq` in `x[start..start + len]` (absolute-index phase).
    fn dft(x: &[i16], start: usize, len: usize, freq: f64, rate: Rate) -> (f64, f64) {
        let w = 2.0 * PI * freq / rate.hz() as f64;
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &v) in x[start..start + len].iter().enumerate() {
            let a = w * (start + i) as f64;
            re += v as f64 * a.cos();
            im -= v as f64 * a.sin();
        }
        let scale = if freq == 0.0 { 1.0 } else { 2.0 };
        (
            scale * (re * re + im * im).sqrt() / len as f64,
            im.atan2(re),
        )
    }

    fn run_all(r: &mut Resampler, input: &[i16]) -> Vec<i16> {
        let mut out = vec![0i16; r.output_len(input.len())];
        let n = r.process(input, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    fn db(x: f64) -> f64 {
        20.0 * x.log10()
    }

    /// Folds a frequency into [0, fs/2] as sampling at `fs` does.
    fn fold(f: f64, fs: f64) -> f64 {
        let r = f.rem_euclid(fs);
        if r > fs / 2.0 {
            fs - r
        } else {
            r
        }
    }

    const AMP: f64 = 16384.0; // -6 dBFS

    /// Gain spread (dB) over tones every 100 Hz from 100 Hz to the passband edge.
    fn ripple(from: Rate, to: Rate, kernel: Kernel) -> (f64, f64, f64) {
        let probe = Resampler::with_kernel(from, to, kernel);
        let edge = probe.passband_hz() as f64;
        let (skip, win) = (to.hz() as usize / 50, to.hz() as usize / 4);
        let in_len = (from.hz() as usize) * 3 / 10;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        let mut f = 100.0;
        while f <= edge {
            let mut r = Resampler::with_kernel(from, to, kernel);
            let y = run_all(&mut r, &tone(f, from, in_len, AMP, f as u64));
            let g = db(dft(&y, skip, win, f, to).0 / AMP);
            lo = lo.min(g);
            hi = hi.max(g);
            f = if f < edge && f + 100.0 > edge {
                edge
            } else {
                f + 100.0
            };
        }
        (hi - lo, lo, hi)
    }

    /// Worst spurious component (dB relative to the tone's input amplitude) for
    /// passband tones (images) and, when downsampling, stopband input tones (aliases).
    fn spurs(from: Rate, to: Rate, kernel: Kernel, step: f64) -> (f64, f64) {
        let probe = Resampler::with_kernel(from, to, kernel);
        let edge = probe.passband_hz() as f64;
        let (fin, fout) = (from.hz() as f64, to.hz() as f64);
        let low = fin.min(fout);
        let (skip, win) = (to.hz() as usize / 50, to.hz() as usize / 4);
        let in_len = (from.hz() as usize) * 3 / 10;
        let mut tones: Vec<(f64, bool)> = Vec::new();
        let mut f = 100.0;
        while f <= edge {
            tones.push((f, true));
            f += step;
        }
        tones.push((edge, true));
        let mut f = low - edge;
        while f < fin / 2.0 {
            tones.push((f, false));
            f += step;
        }
        // -inf when the direction has no such spur (no aliases when upsampling).
        let (mut worst_image, mut worst_alias) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for (f, passband) in tones {
            let mut r = Resampler::with_kernel(from, to, kernel);
            let y = run_all(&mut r, &tone(f, from, in_len, AMP, 7 + f as u64));
            for k in 0..=probe.l {
                for s in [-1.0, 1.0] {
                    let spur = fold(k as f64 * fin + s * f, fout);
                    if passband && spur == f {
                        continue;
                    }
                    let level = db(dft(&y, skip, win, spur, to).0 / AMP);
                    if passband {
                        worst_image = worst_image.max(level);
                    } else {
                        worst_alias = worst_alias.max(level);
                    }
                }
            }
        }
        (worst_image, worst_alias)
    }

    #[test]
    fn passband_ripple_within_0_1_db() {
        for (from, to) in all_pairs() {
            let r = Resampler::new(from, to);
            let (spread, lo, hi) = ripple(from, to, r.kernel);
            println!(
                "ripple {:>5}->{:>5} [{}]: edge {} Hz, spread {spread:.4} dB (gain {lo:+.4}..{hi:+.4} dB)",
                from.hz(),
                to.hz(),
                r.kernel(),
                r.passband_hz()
            );
            assert!(spread <= 0.1, "{from:?}->{to:?} ripple {spread} dB");
            assert!(
                lo.abs() < 0.1 && hi.abs() < 0.1,
                "{from:?}->{to:?} gain {lo}..{hi}"
            );
            let low = from.hz().min(to.hz());
            assert!(r.passband_hz() >= 3400, "{from:?}->{to:?}");
            if low > 8000 {
                assert!(
                    r.passband_hz() * 20 >= low * 9,
                    "{from:?}->{to:?} edge below 0.9 Nyquist"
                );
            }
        }
    }

    #[test]
    fn image_and_alias_rejection_80_db() {
        for (from, to) in REQUIRED {
            for kernel in kernels() {
                let (img, alias) = spurs(from, to, kernel, 100.0);
                println!(
                    "rejection {:>5}->{:>5} [{}]: worst image {img:.1} dB, worst alias {alias:.1} dB",
                    from.hz(),
                    to.hz(),
                    kernel.name()
                );
                assert!(img <= -80.0, "{from:?}->{to:?} {kernel:?} image {img} dB");
                assert!(
                    alias <= -80.0,
                    "{from:?}->{to:?} {kernel:?} alias {alias} dB"
                );
            }
        }
    }

    #[test]
    fn image_and_alias_rejection_80_db_other_pairs() {
        for (from, to) in all_pairs() {
            if REQUIRED.contains(&(from, to)) {
                continue;
            }
            let kernel = Kernel::detect();
            let (img, alias) = spurs(from, to, kernel, 300.0);
            println!(
                "rejection {:>5}->{:>5} [{}]: worst image {img:.1} dB, worst alias {alias:.1} dB",
                from.hz(),
                to.hz(),
                kernel.name()
            );
            assert!(img <= -80.0, "{from:?}->{to:?} image {img} dB");
            assert!(alias <= -80.0, "{from:?}->{to:?} alias {alias} dB");
        }
    }

    #[test]
    fn delay_matches_impulse_and_tone_phase() {
        for (from, to) in all_pairs() {
            let mut r = Resampler::new(from, to);
            let d = r.output_delay();
            assert!(r.delay_ms() <= 2.5, "{from:?}->{to:?} {} ms", r.delay_ms());
            assert!((r.delay_ms() - d as f64 * 1000.0 / to.hz() as f64).abs() < 1e-9);
            // Impulse at an input index whose time is a whole output sample.
            let k = 10;
            let n0 = k * r.m;
            let mut x = vec![0i16; from.samples_per_frame() * 2];
            x[n0] = 16384;
            let y = run_all(&mut r, &x);
            let peak = (0..y.len()).max_by_key(|&i| (y[i] as i32).abs()).unwrap();
            let expect = k * r.l + d;
            // Tone phase at 200 Hz (period 5 ms > any delay).
            let f = 200.0;
            let mut r = Resampler::new(from, to);
            let x = tone(f, from, from.hz() as usize / 2, AMP, 3);
            let y = run_all(&mut r, &x);
            let (pin, pout) = (
                dft(&x, from.hz() as usize / 20, from.hz() as usize / 5, f, from).1,
                dft(&y, to.hz() as usize / 20, to.hz() as usize / 5, f, to).1,
            );
            let tau = (pin - pout).rem_euclid(2.0 * PI) / (2.0 * PI * f) * to.hz() as f64;
            println!(
                "delay {:>5}->{:>5}: reported {d} samples ({:.3} ms), impulse peak at +{}, tone phase {tau:.3} samples",
                from.hz(),
                to.hz(),
                r.delay_ms(),
                peak as i64 - (k * r.l) as i64
            );
            assert_eq!(peak, expect, "{from:?}->{to:?} impulse");
            assert!(
                (tau - d as f64).abs() < 1.0,
                "{from:?}->{to:?} tone delay {tau} vs {d}"
            );
        }
        let r = Resampler::new(Rate::Hz16000, Rate::Hz16000);
        assert_eq!((r.output_delay(), r.delay_ms()), (0, 0.0));
    }

    fn signal(rate: Rate, len: usize, seed: u64) -> Vec<i16> {
        let mut rng = Lcg(seed);
        let fs = rate.hz() as f64;
        (0..len)
            .map(|n| {
                let t = n as f64 / fs;
                let v = 9000.0 * (2.0 * PI * 440.0 * t).sin()
                    + 6000.0 * (2.0 * PI * 3150.0 * t).sin()
                    + 3000.0 * (rng.unit() - 0.5);
                v.round() as i16
            })
            .collect()
    }

    fn chunked(r: &mut Resampler, x: &[i16], sizes: &mut dyn FnMut() -> usize) -> Vec<i16> {
        let mut out = Vec::new();
        let mut buf = vec![0i16; 16384];
        let mut i = 0;
        while i < x.len() {
            let n = sizes().min(x.len() - i);
            let expect = r.output_len(n);
            let got = r.process(&x[i..i + n], &mut buf).unwrap();
            assert_eq!(got, expect);
            out.extend_from_slice(&buf[..got]);
            i += n;
        }
        out
    }

    #[test]
    fn chunking_is_bit_identical() {
        for (from, to) in all_pairs()
            .into_iter()
            .chain([(Rate::Hz8000, Rate::Hz8000)])
        {
            let x = signal(from, from.hz() as usize * 2, 11);
            let whole = run_all(&mut Resampler::new(from, to), &x);
            let total = (x.len() * to.hz() as usize).div_ceil(from.hz() as usize);
            assert_eq!(whole.len(), total, "{from:?}->{to:?}");
            let frame = from.samples_per_frame();
            let a = chunked(&mut Resampler::new(from, to), &x, &mut || frame);
            assert!(a == whole, "{from:?}->{to:?} 20 ms frames differ");
            let b = chunked(&mut Resampler::new(from, to), &x, &mut || 7);
            assert!(b == whole, "{from:?}->{to:?} 7-sample chunks differ");
            let mut rng = Lcg(5);
            let c = chunked(&mut Resampler::new(from, to), &x, &mut || {
                (rng.next_u32() % 1500) as usize
            });
            assert!(c == whole, "{from:?}->{to:?} random chunks differ");
            // reset() returns to the initial state.
            let mut r = Resampler::new(from, to);
            run_all(&mut r, &x[..333]);
            r.reset();
            assert!(run_all(&mut r, &x) == whole, "{from:?}->{to:?} reset");
        }
    }

    #[test]
    fn output_len_is_exact_for_20ms_frames() {
        for (from, to) in all_pairs() {
            let mut r = Resampler::new(from, to);
            let x = vec![0i16; from.samples_per_frame()];
            let mut out = vec![0i16; 2000];
            for _ in 0..5 {
                assert_eq!(r.output_len(x.len()), to.samples_per_frame());
                assert_eq!(r.process(&x, &mut out), Ok(to.samples_per_frame()));
            }
        }
        let r = Resampler::new(Rate::Hz8000, Rate::Hz16000);
        assert_eq!(r.output_len(160), 320);
    }

    #[test]
    fn short_output_is_an_error_not_a_panic() {
        let mut r = Resampler::new(Rate::Hz8000, Rate::Hz16000);
        let mut out = [0i16; 319];
        assert_eq!(
            r.process(&[1; 160], &mut out),
            Err(ResampleError::OutputTooShort {
                needed: 320,
                got: 319
            })
        );
        let mut r = Resampler::new(Rate::Hz8000, Rate::Hz8000);
        assert!(r.process(&[1; 160], &mut out[..10]).is_err());
        assert_eq!(r.process(&[], &mut []), Ok(0));
    }

    #[test]
    fn simd_and_scalar_are_bit_identical() {
        let ks = kernels();
        println!(
            "kernels on this CPU: {:?}; new() picks {}",
            ks,
            Kernel::detect().name()
        );
        for (from, to) in all_pairs() {
            let mut rng = Lcg(from.hz() as u64 * 7 + to.hz() as u64);
            // Random full-scale samples, a loud stretch at the rails, then quieter noise.
            let mut x: Vec<i16> = (0..from.hz() as usize / 5).map(|_| rng.i16()).collect();
            x.extend((0..500).map(|i| {
                if (i / 37) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            }));
            x.extend((0..3000).map(|_| rng.i16() >> 6));
            let reference = run_all(&mut Resampler::new_scalar(from, to), &x);
            for &k in &ks[1..] {
                let mut r = Resampler::with_kernel(from, to, k);
                let mut sizes = Lcg(9);
                let y = chunked(&mut r, &x, &mut || (sizes.next_u32() % 900) as usize);
                assert!(y == reference, "{from:?}->{to:?} {k:?} differs from scalar");
            }
        }
    }

    /// Exact reference in i64 (no wrap possible), saturated.
    fn reference(r: &Resampler, x: &[i16]) -> Vec<i16> {
        let taps = r.taps;
        let mut hist = vec![0i16; taps - 1];
        hist.extend_from_slice(x);
        let total = (x.len() * r.l).div_ceil(r.m);
        (0..total)
            .map(|m| {
                let t = m * r.m;
                let (n0, p) = (t / r.l, t % r.l);
                let c = &r.coefs[p * 2 * taps..(p + 1) * 2 * taps];
                let (mut hi, mut lo) = (0i64, 0i64);
                for i in 0..taps {
                    let xv = hist[n0 + i] as i64;
                    hi += xv * c[(i / 16) * 32 + i % 16] as i64;
                    lo += xv * c[(i / 16) * 32 + 16 + i % 16] as i64;
                }
                ((hi + (lo >> 8) + (1 << (FRAC_BITS - 1))) >> FRAC_BITS).clamp(-32768, 32767) as i16
            })
            .collect()
    }

    #[test]
    fn full_scale_square_wave_saturates_without_wrapping() {
        for (from, to) in all_pairs() {
            let period = from.hz() as usize / 300;
            let x: Vec<i16> = (0..from.hz() as usize / 10)
                .map(|n| {
                    if (n / (period / 2)) % 2 == 0 {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                })
                .collect();
            for k in kernels() {
                let mut r = Resampler::with_kernel(from, to, k);
                let y = run_all(&mut r, &x);
                let want = reference(&r, &x);
                assert!(y == want, "{from:?}->{to:?} {k:?} wrapped or mis-rounded");
                // The Gibbs overshoot really reached both rails.
                assert!(
                    y.contains(&i16::MAX) && y.contains(&i16::MIN),
                    "{from:?}->{to:?}"
                );
            }
        }
    }

    /// 10,000 20 ms frames of one direction with the kernel `new()` picks, for a
    /// stable instruction count: `valgrind --tool=callgrind <test binary> --ignored
    /// --exact media::resample::tests::callgrind_<dir>` and compare the `Ir` totals.
    fn frames_for_profiling(from: Rate, to: Rate) {
        let x = signal(from, from.samples_per_frame(), 1);
        let mut out = vec![0i16; to.samples_per_frame()];
        let mut r = Resampler::new(from, to);
        let mut sum = 0i64;
        for _ in 0..10_000 {
            let n = r.process(std::hint::black_box(&x), &mut out).unwrap();
            sum += out[..n].iter().map(|&v| v as i64).sum::<i64>();
        }
        println!("{from:?}->{to:?} [{}] checksum {sum}", r.kernel());
    }

    /// Best-of-many wall time per 20 ms frame for the call-path directions (the
    /// minimum over 200 batches of 200 frames is robust on a shared machine):
    /// `<test binary> --ignored --exact media::resample::tests::frame_time_min --nocapture`.
    #[test]
    #[ignore = "timing aid, not a check"]
    fn frame_time_min() {
        for (from, to) in REQUIRED {
            for mut r in [Resampler::new(from, to), Resampler::new_scalar(from, to)] {
                let x = signal(from, from.samples_per_frame(), 1);
                let mut out = vec![0i16; to.samples_per_frame()];
                let batch = if r.kernel() == "scalar" { 20 } else { 200 };
                let mut best = f64::MAX;
                for _ in 0..200 {
                    let t = std::time::Instant::now();
                    for _ in 0..batch {
                        r.process(std::hint::black_box(&x), std::hint::black_box(&mut out))
                            .unwrap();
                    }
                    best = best.min(t.elapsed().as_nanos() as f64 / batch as f64);
                }
                println!(
                    "frame_time_min {:>5}->{:>5} [{}]: {best:.0} ns",
                    from.hz(),
                    to.hz(),
                    r.kernel()
                );
            }
        }
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_8k_16k() {
        frames_for_profiling(Rate::Hz8000, Rate::Hz16000);
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_16k_8k() {
        frames_for_profiling(Rate::Hz16000, Rate::Hz8000);
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_8k_24k() {
        frames_for_profiling(Rate::Hz8000, Rate::Hz24000);
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_24k_8k() {
        frames_for_profiling(Rate::Hz24000, Rate::Hz8000);
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_16k_24k() {
        frames_for_profiling(Rate::Hz16000, Rate::Hz24000);
    }

    #[test]
    #[ignore = "profiling aid (callgrind), not a check"]
    fn callgrind_24k_16k() {
        frames_for_profiling(Rate::Hz24000, Rate::Hz16000);
    }

    #[test]
    fn design_summary() {
        for (from, to) in all_pairs() {
            let r = Resampler::new(from, to);
            println!(
                "design {:>5}->{:>5}: L={} M={} taps={} ({} phases x {} padded), delay {} out samples = {:.3} ms, passband {} Hz",
                from.hz(),
                to.hz(),
                r.l,
                r.m,
                2 * r.half_len + 1,
                r.l,
                r.taps,
                r.output_delay(),
                r.delay_ms(),
                r.passband_hz()
            );
            assert!(r.delay_ms() <= 2.5);
            assert_eq!(r.taps % 16, 0);
        }
    }
}
