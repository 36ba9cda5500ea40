//! Criterion benches of the shard <-> control bridge (`engine::bridge`): one caller
//! audio frame through the ring (build the chunk, push, pop; same thread), a batch of
//! 32, and the eventfd wake-up round trip in both directions. Same thread throughout:
//! these measure the per-message and per-wake cost, not cross-core latency.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voxd::engine::bridge::{link, AudioChunk, CallKey, ToControl, ToShard};

fn bench_ring(c: &mut Criterion) {
    let payload = [0x55u8; 160]; // 20 ms of PCMU
    let call = CallKey::new(0, 17, 1);
    let at = std::time::Instant::now();

    c.bench_function("ring/push+pop CallerAudio 160 B (same thread)", |b| {
        let (mut s, mut ctl) = link(0, 1024).expect("eventfd");
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            let chunk = AudioChunk::from_slice(black_box(&payload)).expect("fits");
            assert!(s.push(ToControl::CallerAudio { call, chunk, at }));
            out.clear();
            ctl.try_recv_batch(&mut out);
            black_box(&out);
        });
    });

    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(32));
    g.bench_function("push 32 CallerAudio + one drain (per batch)", |b| {
        let (mut s, mut ctl) = link(0, 1024).expect("eventfd");
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            for _ in 0..32 {
                let chunk = AudioChunk::from_slice(black_box(&payload)).expect("fits");
                assert!(s.push(ToControl::CallerAudio { call, chunk, at }));
            }
            out.clear();
            ctl.try_recv_batch(&mut out);
            black_box(&out);
        });
    });
    g.finish();

    c.bench_function("eventfd/control->shard push+notify+drain_wake+pop", |b| {
        let (mut s, mut ctl) = link(0, 1024).expect("eventfd");
        b.iter(|| {
            ctl.push(ToShard::SpeechStarted { call, at_ms: 0 })
                .expect("room");
            assert!(ctl.notify_shard());
            assert_eq!(s.drain_wake(), 1);
            black_box(s.pop());
        });
    });

    c.bench_function(
        "eventfd/shard->control push+notify(write)+recv_batch fast path (block_on)",
        |b| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let (mut s, mut ctl) = link(0, 1024).expect("eventfd");
            let mut out = Vec::with_capacity(64);
            b.iter(|| {
                assert!(s.push(ToControl::Played { call, ms: 20 }));
                assert!(s.notify_control());
                out.clear();
                let n = rt.block_on(ctl.recv_batch(&mut out)).expect("open");
                black_box(n);
            });
        },
    );
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
