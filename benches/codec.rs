//! Codec and framing costs per 20 ms frame: G.711 mu-law/A-law encode and decode of
//! 160 samples, AudioSocket decode/encode of a 640-byte slin16 frame, RTP parse and
//! build of a 172-byte PCMU packet.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! Target: G.711 <= 0.3 us per 160 samples.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voxd::media::{audiosocket, g711, rtp};

fn speech_like(n: usize) -> Vec<i16> {
    // A deterministic, wide-range signal (so every G.711 segment is used).
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let tone = ((i as f32 * 0.07).sin() * 20_000.0) as i32;
            (tone + (x as i32 >> 20)).clamp(i16::MIN as i32, i16::MAX as i32) as i16
        })
        .collect()
}

fn g711_benches(c: &mut Criterion) {
    let pcm = speech_like(160);
    let mut ulaw = [0u8; 160];
    let mut alaw = [0u8; 160];
    g711::ulaw_encode(&pcm, &mut ulaw);
    g711::alaw_encode(&pcm, &mut alaw);
    let mut out_pcm = [0i16; 160];
    let mut out_bytes = [0u8; 160];

    let mut g = c.benchmark_group("g711");
    g.throughput(Throughput::Elements(160));
    g.bench_function("ulaw_decode_160", |b| {
        b.iter(|| g711::ulaw_decode(black_box(&ulaw), black_box(&mut out_pcm)))
    });
    g.bench_function("ulaw_encode_160", |b| {
        b.iter(|| g711::ulaw_encode(black_box(&pcm), black_box(&mut out_bytes)))
    });
    g.bench_function("alaw_decode_160", |b| {
        b.iter(|| g711::alaw_decode(black_box(&alaw), black_box(&mut out_pcm)))
    });
    g.bench_function("alaw_encode_160", |b| {
        b.iter(|| g711::alaw_encode(black_box(&pcm), black_box(&mut out_bytes)))
    });
    g.finish();
}

fn audiosocket_benches(c: &mut Criterion) {
    let samples = speech_like(320);
    let mut wire = BytesMut::new();
    audiosocket::encode_audio(audiosocket::Kind::Slin16, &samples, &mut wire).unwrap();
    let wire = wire.freeze();
    assert_eq!(wire.len(), 643);

    let mut g = c.benchmark_group("audiosocket");
    g.throughput(Throughput::Bytes(640));
    // The read buffer keeps its allocation across iterations: once the decoded frame
    // is dropped, `reserve` reclaims the same memory instead of allocating, as on a
    // real connection whose frames are consumed before the next read.
    g.bench_function("decode_slin16_640", |b| {
        let mut dec = audiosocket::Decoder::new();
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = [0i16; 320];
        b.iter(|| {
            buf.reserve(wire.len());
            buf.extend_from_slice(&wire);
            let frame = dec.decode(black_box(&mut buf)).unwrap().unwrap();
            black_box(frame.copy_samples_into(&mut out).unwrap());
        })
    });
    g.bench_function("decode_slin16_640_frame_only", |b| {
        let mut dec = audiosocket::Decoder::new();
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.reserve(wire.len());
            buf.extend_from_slice(&wire);
            black_box(dec.decode(black_box(&mut buf)).unwrap().unwrap());
        })
    });
    g.bench_function("encode_slin16_640", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            audiosocket::encode_audio(
                audiosocket::Kind::Slin16,
                black_box(&samples),
                black_box(&mut out),
            )
            .unwrap();
        })
    });
    g.finish();
}

fn rtp_benches(c: &mut Criterion) {
    let mut payload = [0u8; 160];
    g711::ulaw_encode(&speech_like(160), &mut payload);
    let mut sender = rtp::RtpSender::new(0x1234_5678, 1000, 160_000, rtp::PT_PCMU, 160);
    let header = sender.next_header(true);
    let mut packet = [0u8; 172];
    assert_eq!(rtp::build(&header, &payload, &mut packet).unwrap(), 172);

    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Bytes(172));
    g.bench_function("parse_172", |b| {
        b.iter(|| {
            let p = rtp::parse(black_box(&packet)).unwrap();
            black_box((p.header.sequence, p.payload.len()));
        })
    });
    g.bench_function("build_172", |b| {
        let mut out = [0u8; 1500];
        b.iter(|| {
            let h = sender.next_header(false);
            black_box(rtp::build(black_box(&h), black_box(&payload), &mut out).unwrap())
        })
    });
    g.bench_function("build_into_172", |b| {
        let mut out = BytesMut::with_capacity(1500);
        b.iter(|| {
            out.clear();
            let h = sender.next_header(false);
            black_box(rtp::build_into(black_box(&h), black_box(&payload), &mut out).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, g711_benches, audiosocket_benches, rtp_benches);
criterion_main!(benches);
