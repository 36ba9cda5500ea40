//! Criterion benches of the per-call path: jitter buffer push/pop and one whole 20 ms
//! call step (caller frame in -> provider; provider chunk in -> playout -> caller).
//! Target (targets.md): one call step <= 3 us.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use voxd::call::{Call, CallConfig, Codec, Input, Output};
use voxd::media::jitter::JitterBuffer;
use voxd::media::playout::PlayoutConfig;
use voxd::media::vad::VadConfig;
use voxd::media::Rate;

fn tone(n: usize, freq: f64, amp: f64, rate: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
        .collect()
}

fn encode(s: &[i16], c: Codec) -> Vec<u8> {
    let mut b = vec![0u8; s.len() * c.bytes_per_sample()];
    c.encode(s, &mut b);
    b
}

fn bench_jitter(c: &mut Criterion) {
    let frame = [100i16; 160];
    let mut out = [0i16; 160];
    c.bench_function("jitter/push+pop 160 samples in order", |b| {
        let mut jb = JitterBuffer::new(160, 60);
        let mut seq = 0u64;
        b.iter(|| {
            jb.push(seq * 20, black_box(seq), black_box(&frame));
            while jb.pop_ready(seq * 20, &mut out).is_some() {}
            seq += 1;
            black_box(&out);
        })
    });
    c.bench_function("jitter/push+pop pairs swapped", |b| {
        let mut jb = JitterBuffer::new(160, 60);
        let mut seq = 0u64;
        b.iter(|| {
            jb.push(seq * 20, seq + 1, black_box(&frame));
            jb.push(seq * 20, seq, black_box(&frame));
            while jb.pop_ready(seq * 20, &mut out).is_some() {}
            seq += 2;
            black_box(&out);
        })
    });
}

fn bench_step(c: &mut Criterion, name: &str, caller: Codec, provider: Codec, rtp: bool) {
    let cfg = CallConfig {
        caller,
        provider,
        provider_out: provider,
        playout: PlayoutConfig::default(),
        vad: VadConfig::default(),
        jitter_depth_ms: 60,
    };
    let caller_frame = encode(
        &tone(
            caller.rate().samples_per_frame(),
            300.0,
            400.0,
            f64::from(caller.rate().hz()),
        ),
        caller,
    );
    let agent_frame = encode(
        &tone(
            provider.rate().samples_per_frame(),
            1000.0,
            8000.0,
            f64::from(provider.rate().hz()),
        ),
        provider,
    );
    c.bench_function(&format!("call step/{name}"), |b| {
        let mut call = Call::new(cfg, 0);
        let mut i = 0u64;
        b.iter(|| {
            let t = i * 20;
            if rtp {
                call.handle_input(Input::CallerRtp {
                    at_ms: t,
                    seq: i,
                    payload: &caller_frame,
                })
                .unwrap();
            } else {
                call.handle_input(Input::CallerAudio {
                    at_ms: t,
                    payload: &caller_frame,
                })
                .unwrap();
            }
            call.handle_input(Input::ProviderAudio {
                payload: &agent_frame,
            })
            .unwrap();
            call.handle_input(Input::Tick { at_ms: t }).unwrap();
            while let Some(o) = call.poll_output() {
                match o {
                    Output::SendToCaller { payload, .. } => {
                        black_box(payload);
                    }
                    Output::SendToProvider(p) => {
                        black_box(p);
                    }
                    other => {
                        black_box(other);
                    }
                }
            }
            i += 1;
        })
    });
}

fn bench_calls(c: &mut Criterion) {
    bench_step(c, "rtp pcmu <-> pcmu", Codec::Pcmu, Codec::Pcmu, true);
    bench_step(
        c,
        "rtp pcmu <-> pcm24k",
        Codec::Pcmu,
        Codec::Slin(Rate::Hz24000),
        true,
    );
    bench_step(
        c,
        "audiosocket slin16 <-> pcm24k",
        Codec::Slin(Rate::Hz16000),
        Codec::Slin(Rate::Hz24000),
        false,
    );
    bench_step(
        c,
        "audiosocket slin8 <-> pcmu",
        Codec::Slin(Rate::Hz8000),
        Codec::Pcmu,
        false,
    );
}

criterion_group!(benches, bench_jitter, bench_calls);
criterion_main!(benches);
