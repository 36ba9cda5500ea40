//! Criterion bench: one 20 ms frame through `media::resample::Resampler` per
//! iteration, for the call-path directions, with the kernel `new()` picks on this CPU
//! and with the forced scalar kernel. Target: <= 1.5 us per frame (targets.md).
//!
//! Run: `cargo bench --bench resample -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voxd::media::resample::Resampler;
use voxd::media::Rate;

const DIRECTIONS: [(Rate, Rate, &str); 6] = [
    (Rate::Hz8000, Rate::Hz16000, "8k->16k"),
    (Rate::Hz16000, Rate::Hz8000, "16k->8k"),
    (Rate::Hz8000, Rate::Hz24000, "8k->24k"),
    (Rate::Hz24000, Rate::Hz8000, "24k->8k"),
    (Rate::Hz16000, Rate::Hz24000, "16k->24k"),
    (Rate::Hz24000, Rate::Hz16000, "24k->16k"),
];

/// A speech-like 20 ms frame: two tones plus a little deterministic noise.
fn frame(rate: Rate) -> Vec<i16> {
    let fs = rate.hz() as f64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..rate.samples_per_frame())
        .map(|n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let t = n as f64 / fs;
            let v = 8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 4000.0 * (2.0 * std::f64::consts::PI * 1900.0 * t).sin()
                + (seed % 512) as f64
                - 256.0;
            v as i16
        })
        .collect()
}

fn bench_resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_20ms");
    for (from, to, name) in DIRECTIONS {
        let input = frame(from);
        let mut out = vec![0i16; to.samples_per_frame()];
        group.throughput(Throughput::Elements(input.len() as u64));
        for (label, mut r) in [
            ("chosen", Resampler::new(from, to)),
            ("scalar", Resampler::new_scalar(from, to)),
        ] {
            let id = format!("{name}/{label}-{}", r.kernel());
            group.bench_function(id, |b| {
                b.iter(|| {
                    let n = r.process(black_box(&input), black_box(&mut out)).unwrap();
                    black_box(n)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_resample);
criterion_main!(benches);
