//! Per-frame costs of the two media stages that had no bench of their own: the
//! barge-in detector (`media::vad`, one 20 ms caller frame while the agent talks)
//! and the outbound playout queue (`media::playout`, one 20 ms provider chunk in and
//! one pacing tick out), at 8 kHz and 16 kHz.
//!
//! Run: `cargo bench --bench media`; `perf/bench.sh` runs every bench and compares
//! against the last recorded baseline.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voxd::media::playout::{Playout, PlayoutConfig};
use voxd::media::vad::{BargeInDetector, VadConfig};

fn tone(n: usize, amp: f64, rate: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate).sin()) as i16)
        .collect()
}

fn bench_vad(c: &mut Criterion) {
    let mut g = c.benchmark_group("vad");
    for (name, hz) in [("8k", 8_000usize), ("16k", 16_000)] {
        let n = hz / 50;
        let quiet = tone(n, 100.0, hz as f64);
        let loud = tone(n, 8_000.0, hz as f64);
        g.throughput(Throughput::Elements(n as u64));
        // The agent is speaking and the caller is quiet: the usual frame.
        g.bench_function(format!("feed quiet 20 ms {name}"), |b| {
            let mut d = BargeInDetector::new(VadConfig::default());
            let mut now = 0u64;
            b.iter(|| {
                now += 20;
                black_box(d.feed(now, black_box(&quiet), 20, true))
            })
        });
        // The caller talks over the agent (barge-ins fire every cooldown).
        g.bench_function(format!("feed loud 20 ms {name}"), |b| {
            let mut d = BargeInDetector::new(VadConfig::default());
            let mut now = 0u64;
            b.iter(|| {
                now += 20;
                black_box(d.feed(now, black_box(&loud), 20, true))
            })
        });
    }
    g.finish();
}

fn bench_playout(c: &mut Criterion) {
    let mut g = c.benchmark_group("playout");
    for (name, per_ms) in [("8k", 8usize), ("16k", 16)] {
        let frame = 20 * per_ms;
        let chunk = tone(frame, 8_000.0, per_ms as f64 * 1_000.0);
        g.throughput(Throughput::Elements(frame as u64));
        // Steady state of a long reply: one 20 ms chunk in, one frame out.
        g.bench_function(format!("push 20 ms + tick {name}"), |b| {
            let mut p = Playout::new(PlayoutConfig::default(), per_ms);
            let mut out = vec![0i16; p.frame_samples()];
            let mut now = 0u64;
            // Fill past min_start_ms so that every tick plays audio.
            for _ in 0..10 {
                p.push(&chunk);
            }
            b.iter(|| {
                now += 20;
                let taken = p.push(black_box(&chunk));
                let o = p.tick(now, &mut out);
                black_box((taken, o, &out));
            })
        });
        // Barge-in: a full queue flushed, then the next tick (silence).
        g.bench_function(format!("flush 500 ms + tick {name}"), |b| {
            let mut p = Playout::new(PlayoutConfig::default(), per_ms);
            let mut out = vec![0i16; p.frame_samples()];
            let mut now = 0u64;
            b.iter(|| {
                for _ in 0..25 {
                    p.push(&chunk);
                }
                black_box(p.flush());
                now += 20;
                black_box(p.tick(now, &mut out));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_vad, bench_playout);
criterion_main!(benches);
