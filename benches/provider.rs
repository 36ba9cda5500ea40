//! Provider protocol costs per message, the JSON and base64 work that the control
//! runtime does for every call: OpenAI Realtime `input_audio_buffer.append` built
//! from 20 ms of caller audio and `response.output_audio.delta` parsed and its audio
//! decoded; the local server's `audio` message built and its `tts_response` parsed;
//! a Deepgram Voice Agent text event parsed (its audio is binary, no JSON).
//!
//! Run: `cargo bench --bench provider`; `perf/bench.sh` runs every bench and
//! compares against the last recorded baseline.

use std::hint::black_box;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voxd::provider::{deepgram, local, openai};

fn pcm(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i * 7 + 3) as u8).collect()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn bench_openai(c: &mut Criterion) {
    let mut g = c.benchmark_group("openai");
    // 20 ms of pcm16 at 24 kHz: 960 bytes.
    let frame = pcm(960);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("append_message 20 ms pcm16 24k", |b| {
        b.iter(|| black_box(openai::append_message(black_box(&frame))))
    });
    // A 100 ms audio delta (4,800 bytes), as the service sends them.
    let audio = pcm(4_800);
    let delta = format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_8","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{}"}}"#,
        b64(&audio)
    );
    g.throughput(Throughput::Bytes(audio.len() as u64));
    g.bench_function("parse+decode audio delta 100 ms pcm16 24k", |b| {
        let mut out = Vec::with_capacity(8_192);
        b.iter(|| {
            let Ok(openai::Parsed::Event(ev)) = openai::parse_server_event(black_box(&delta))
            else {
                panic!("delta parses")
            };
            let item = ev.decode_audio(&mut out).expect("audio decodes");
            black_box((item.len(), out.len()));
        })
    });
    g.finish();
}

fn bench_local(c: &mut Criterion) {
    let mut g = c.benchmark_group("local");
    // 20 ms of pcm16 at 16 kHz: 640 bytes.
    let frame = pcm(640);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("audio message 20 ms pcm16 16k", |b| {
        b.iter(|| black_box(local::messages::audio(black_box(&frame), "17")))
    });
    let audio = pcm(3_200);
    let reply = format!(
        r#"{{"type":"tts_response","text":"Hello there.","audio_data":"{}","call_id":"17"}}"#,
        b64(&audio)
    );
    g.throughput(Throughput::Bytes(audio.len() as u64));
    g.bench_function("parse tts_response 100 ms pcm16 16k", |b| {
        b.iter(|| black_box(local::messages::parse(black_box(&reply)).expect("parses")))
    });
    g.finish();
}

fn bench_deepgram(c: &mut Criterion) {
    let mut g = c.benchmark_group("deepgram");
    let text = r#"{"type":"ConversationText","role":"assistant","content":"Sure, I can help you with that booking."}"#;
    g.bench_function("parse ConversationText", |b| {
        b.iter(|| black_box(deepgram::messages::parse(black_box(text)).expect("parses")))
    });
    g.finish();
}

criterion_group!(benches, bench_openai, bench_local, bench_deepgram);
criterion_main!(benches);
