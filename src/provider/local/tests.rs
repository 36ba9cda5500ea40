//! Session tests against a scripted `local-ai-server` on 127.0.0.1: auth, held
//! audio, batching to `chunk_ms`, reply audio converted to slin16, barge-in,
//! greeting and prompt, errors. Deadlines are for liveness only.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::provider::testkit::{
    drained, end_of, expect_close, next_event, next_json, send_json, start, ServerWs, LIMIT,
};

/// The scripted server for these tests (see [`crate::provider::testkit::serve`]).
async fn serve<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    crate::provider::testkit::serve("", None, script).await
}
use crate::config::{AgentConfig, Config, Secret};
use crate::media::{g711, resample::Resampler};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, Provider, ProviderError, Role, SessionEnd, SessionMeta,
};

const TOKEN: &str = "local-secret-token";

fn config(url: &str, token: Option<&str>, chunk_ms: u32) -> Config {
    let mut c = Config::default();
    let l = &mut c.providers.local;
    l.enabled = true;
    l.base_url = url.to_string();
    l.chunk_ms = chunk_ms;
    l.connect_timeout_ms = 10_000;
    l.auth_token = token.map(Secret::new).unwrap_or_default();
    c.agents.insert(
        "front".into(),
        AgentConfig {
            provider: None,
            prompt: Some("You are the front desk.".into()),
            greeting: Some("Front desk, hello.".into()),
            voice: None,
        },
    );
    c
}

fn meta(agent: Option<&str>) -> SessionMeta {
    SessionMeta {
        call_id: 42,
        caller_codec: CODEC,
        agent: agent.map(str::to_string),
        started_at_ms: 0,
        attempt: 0,
        history: Vec::new(),
    }
}

/// 20 ms of slin16 whose samples encode the frame number.
fn frame(i: usize) -> Bytes {
    let mut b = Vec::with_capacity(640);
    for n in 0..320u16 {
        b.extend_from_slice(&((i as u16) << 9 | n).to_le_bytes());
    }
    Bytes::from(b)
}

fn audio_of(msg: &Value) -> Vec<u8> {
    assert_eq!(msg["type"], "audio", "{msg}");
    assert_eq!(msg["rate"], 16000);
    assert_eq!(msg["format"], "pcm16le");
    assert_eq!(msg["call_id"], "42");
    base64::engine::general_purpose::STANDARD
        .decode(msg["data"].as_str().unwrap())
        .unwrap()
}

fn pcm_of(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn from_config_checks_url_and_chunk() {
    let c = config("ws://127.0.0.1:8765", None, 320);
    let p = LocalProvider::from_config(&c).unwrap();
    assert_eq!(p.name(), "local");
    assert_eq!(p.config().chunk_bytes, 320 * 32);
    for caller in [
        crate::call::Codec::Pcmu,
        crate::call::Codec::Slin(crate::media::Rate::Hz8000),
    ] {
        let f = p.formats(caller);
        assert_eq!((f.input, f.output), (CODEC, CODEC));
    }
    let e = LocalProvider::from_config(&config("http://x", None, 320)).unwrap_err();
    assert!(e.to_string().contains("providers.local.base_url"), "{e}");
    let e = LocalProvider::from_config(&config("ws://127.0.0.1:1", None, 0)).unwrap_err();
    assert!(e.to_string().contains("chunk_ms"), "{e}");
    let p = LocalProvider::from_config(&config("ws://10.0.0.9:8765", Some(TOKEN), 320)).unwrap();
    assert!(
        !format!("{p:?}").contains(TOKEN),
        "Debug must mask the token"
    );
}

#[tokio::test]
async fn auth_first_then_audio_batched_to_chunk_ms() {
    let (auth_tx, auth_rx) = oneshot::channel::<Value>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        // The first message is auth; no audio before auth_response.
        auth_tx.send(next_json(&mut ws).await).unwrap();
        go_rx.await.unwrap();
        send_json(&mut ws, json!({"type": "auth_response", "status": "ok"})).await;
        // 100 ms chunks (3200 bytes): 20 frames of 640 bytes make 4 messages.
        let all: Vec<u8> = (0..20).flat_map(|i| frame(i).to_vec()).collect();
        for k in 0..4 {
            let got = audio_of(&next_json(&mut ws).await);
            assert_eq!(got, all[k * 3200..(k + 1) * 3200], "chunk {k}");
        }
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, Some(TOKEN), 100)).unwrap();
    let (peer, task) = start(&p, meta(None));
    // 12 frames held before auth_response ...
    for i in 0..12 {
        peer.events
            .send(CallerEvent::Audio(frame(i), std::time::Instant::now()))
            .await
            .unwrap();
    }
    let auth = tokio::time::timeout(LIMIT, auth_rx).await.unwrap().unwrap();
    assert_eq!(
        auth,
        json!({"type": "auth", "auth_token": TOKEN, "call_id": "42"})
    );
    drained(&peer).await;
    go_tx.send(()).unwrap();
    // ... and 8 more live (the last 320 bytes of a partial chunk stay batched).
    for i in 12..20 {
        peer.events
            .send(CallerEvent::Audio(frame(i), std::time::Instant::now()))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().snapshot().audio_messages_sent < 4 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await, SessionEnd::new(EndReason::CallerHangup));
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.audio_messages_sent, 4);
    assert_eq!(st.audio_sent_bytes, 4 * 3200);
    assert_eq!(st.held_dropped_bytes, 0);
}

#[tokio::test]
async fn refused_auth_ends_the_session_without_leaking_the_token() {
    let (url, server) = serve(|mut ws| async move {
        assert_eq!(next_json(&mut ws).await["type"], "auth");
        send_json(
            &mut ws,
            json!({"type": "auth_response", "status": "error", "message": "invalid_auth_token"}),
        )
        .await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, Some(TOKEN), 320)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    let err = end.error.expect("an error");
    assert!(matches!(err, ProviderError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("invalid_auth_token"), "{err}");
    assert!(!err.to_string().contains(TOKEN));
    assert_eq!(p.stats().snapshot().connect_failures, 1);
    server.await.unwrap();

    // Without a token, a server that requires one refuses the first audio.
    let (url, server) = serve(|mut ws| async move {
        assert_eq!(next_json(&mut ws).await["type"], "audio");
        send_json(
            &mut ws,
            json!({"type": "auth_response", "status": "error", "message": "authentication_required"}),
        )
        .await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 20)).unwrap();
    let (peer, task) = start(&p, meta(None));
    peer.events
        .send(CallerEvent::Audio(frame(0), std::time::Instant::now()))
        .await
        .unwrap();
    let err = end_of(task).await.error.expect("an error");
    assert!(err.to_string().contains("LOCAL_AI_AUTH_TOKEN"), "{err}");
    assert_eq!(p.stats().snapshot().connect_failures, 1);
    server.await.unwrap();
}

/// A 1 kHz tone at 8 kHz, amplitude 8000.
fn tone_8k(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()).round()
                as i16
        })
        .collect()
}

#[tokio::test]
async fn reply_audio_is_converted_to_slin16_with_transcripts_and_utterance_ends() {
    let tone = tone_8k(800);
    let mut ulaw = vec![0u8; tone.len()];
    g711::ulaw_encode(&tone, &mut ulaw);
    let ulaw_sent = ulaw.clone();
    let pcm16: Vec<u8> = (0..320i16).flat_map(|s| (s * 50).to_le_bytes()).collect();
    let pcm16_sent = pcm16.clone();
    let (url, server) = serve(|mut ws| async move {
        send_json(&mut ws, json!({"type": "stt_result", "text": "hel", "is_final": false, "is_partial": true})).await;
        send_json(&mut ws, json!({"type": "stt_result", "text": "hello", "is_final": true, "is_partial": false})).await;
        send_json(&mut ws, json!({"type": "llm_response", "text": "Hi there.", "call_id": "42", "mode": "llm"})).await;
        // A single-blob reply in the legacy mu-law 8 kHz.
        send_json(
            &mut ws,
            json!({"type": "tts_audio", "call_id": "42", "mode": "full", "encoding": "mulaw", "sample_rate_hz": 8000, "byte_length": 800}),
        )
        .await;
        ws.send(Message::Binary(ulaw_sent)).await.unwrap();
        // A streamed utterance in PCM16 16 kHz: one chunk, then a zero-length final marker.
        send_json(
            &mut ws,
            json!({"type": "tts_audio", "encoding": "linear16", "sample_rate_hz": 16000, "byte_length": 640,
                   "utterance_id": "u1", "chunk_index": 0, "is_final": false}),
        )
        .await;
        ws.send(Message::Binary(pcm16_sent)).await.unwrap();
        send_json(
            &mut ws,
            json!({"type": "tts_audio", "encoding": "linear16", "sample_rate_hz": 16000, "byte_length": 0,
                   "utterance_id": "u1", "chunk_index": 1, "is_final": true}),
        )
        .await;
        send_json(&mut ws, json!({"type": "mode_ready", "mode": "full"})).await;
        send_json(&mut ws, json!({"type": "brand_new"})).await;
        send_json(&mut ws, json!({"type": "llm_response", "text": "Anything else?"})).await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 320)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Transcript {
            role: Role::User,
            text: "hel".into(),
            is_final: false
        }
    );
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Transcript {
            role: Role::User,
            text: "hello".into(),
            is_final: true
        }
    );
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Transcript {
            role: Role::Agent,
            text: "Hi there.".into(),
            is_final: true
        }
    );
    // The mu-law tone, decoded and upsampled: a 1 kHz tone at 16 kHz, delayed by
    // the resampler's group delay, within the G.711 noise.
    let AgentEvent::Audio(up) = next_event(&mut peer).await else {
        panic!("expected audio")
    };
    let got = pcm_of(&up);
    assert_eq!(got.len(), 1600);
    let delay =
        Resampler::new(crate::media::Rate::Hz8000, crate::media::Rate::Hz16000).output_delay();
    let (mut signal, mut noise) = (0f64, 0f64);
    for (n, &y) in got.iter().enumerate().skip(2 * delay + 16) {
        let t = (n - delay) as f64 / 16000.0;
        let want = 8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin();
        signal += want * want;
        noise += (y as f64 - want).powi(2);
    }
    let snr_db = 10.0 * (signal / noise).log10();
    assert!(snr_db > 30.0, "SNR {snr_db:.1} dB");
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    // PCM16 16 kHz passes through unchanged; the zero-length final chunk ends it.
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(pcm16))
    );
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Transcript {
            role: Role::Agent,
            text: "Anything else?".into(),
            is_final: true
        }
    );
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.audio_received_bytes, 800 + 640);
    assert_eq!(st.unknown_messages, 1);
    assert_eq!(st.length_mismatches, 0);
}

#[tokio::test]
async fn barge_in_is_sent_and_reply_audio_dropped_until_the_ack() {
    let (url, server) = serve(|mut ws| async move {
        let chunk = |final_: bool| {
            json!({"type": "tts_audio", "encoding": "linear16", "sample_rate_hz": 16000,
                   "byte_length": 640, "utterance_id": "u1", "is_final": final_})
        };
        send_json(&mut ws, chunk(false)).await;
        ws.send(Message::Binary(vec![1; 640])).await.unwrap();
        let bi = next_json(&mut ws).await;
        assert_eq!(bi["type"], "barge_in");
        assert_eq!(bi["call_id"], "42");
        let rid = bi["request_id"].as_str().unwrap().to_string();
        // Audio already in flight before the server cancelled: dropped.
        send_json(&mut ws, chunk(true)).await;
        ws.send(Message::Binary(vec![2; 640])).await.unwrap();
        send_json(&mut ws, json!({"type": "barge_in_ack", "status": "ok", "call_id": "42", "request_id": rid})).await;
        // The next reply plays.
        send_json(&mut ws, json!({"type": "tts_audio", "encoding": "linear16", "sample_rate_hz": 16000, "byte_length": 640})).await;
        ws.send(Message::Binary(vec![3; 640])).await.unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 320)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(vec![1; 640]))
    );
    peer.events
        .send(CallerEvent::BargeIn { played_ms: 20 })
        .await
        .unwrap();
    // The cut reply ends at once; its remaining audio never shows up.
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(vec![3; 640]))
    );
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.barge_ins, 1);
    assert_eq!(st.audio_dropped_bytes, 640);
}

#[tokio::test]
async fn agent_prompt_and_greeting_on_the_first_attempt_only() {
    let greeting_pcm: Vec<u8> = vec![9; 320];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&greeting_pcm);
    let (url, server) = serve(|mut ws| async move {
        let sw = next_json(&mut ws).await;
        assert_eq!(sw["type"], "switch_model");
        assert_eq!(sw["scope"], "session");
        assert_eq!(sw["call_id"], "42");
        assert_eq!(sw["llm_config"]["system_prompt"], "You are the front desk.");
        let tts = next_json(&mut ws).await;
        assert_eq!(tts["type"], "tts_request");
        assert_eq!(tts["text"], "Front desk, hello.");
        send_json(&mut ws, json!({"type": "switch_response", "status": "success", "scope": "session"})).await;
        send_json(
            &mut ws,
            json!({"type": "tts_response", "text": "Front desk, hello.", "call_id": "42",
                   "audio_data": b64, "encoding": "linear16", "sample_rate_hz": 16000, "byte_length": 320}),
        )
        .await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 320)).unwrap();
    let (mut peer, task) = start(&p, meta(Some("front")));
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Transcript {
            role: Role::Agent,
            text: "Front desk, hello.".into(),
            is_final: true
        }
    );
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(greeting_pcm))
    );
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();

    // A reconnect (attempt 1): the prompt again, no greeting; audio comes next.
    let (url, server) = serve(|mut ws| async move {
        assert_eq!(next_json(&mut ws).await["type"], "switch_model");
        assert_eq!(next_json(&mut ws).await["type"], "audio");
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 20)).unwrap();
    let mut m = meta(Some("front"));
    m.attempt = 1;
    m.history = vec![(Role::User, "hi".into())];
    let (peer, task) = start(&p, m);
    peer.events
        .send(CallerEvent::Audio(frame(0), std::time::Instant::now()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().snapshot().audio_messages_sent == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error() {
    let (url, server) = serve(|mut ws| async move {
        ws.send(Message::Text("{\"type\": ".into())).await.unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 320)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    assert!(
        matches!(end.error, Some(ProviderError::Protocol { .. })),
        "{end:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn unplayable_audio_is_reported_and_headerless_audio_is_legacy_mulaw() {
    let (url, server) = serve(|mut ws| async move {
        send_json(&mut ws, json!({"type": "tts_audio", "encoding": "opus", "sample_rate_hz": 48000, "byte_length": 10})).await;
        ws.send(Message::Binary(vec![0; 10])).await.unwrap();
        // No metadata: mu-law 8 kHz, a single blob.
        ws.send(Message::Binary(vec![0xFF; 160])).await.unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = LocalProvider::from_config(&config(&url, None, 320)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    assert!(matches!(
        next_event(&mut peer).await,
        AgentEvent::Error {
            error: ProviderError::Protocol { .. }
        }
    ));
    let AgentEvent::Audio(a) = next_event(&mut peer).await else {
        panic!("expected audio")
    };
    assert_eq!(a.len(), 160 * 2 * 2, "8 kHz mu-law became 16 kHz slin");
    assert!(pcm_of(&a).iter().all(|&s| s == 0), "mu-law 0xFF is silence");
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    assert_eq!(p.stats().snapshot().audio_unplayable, 1);
}

#[tokio::test]
async fn a_server_that_stops_reading_stops_the_caller_audio_then_times_out() {
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|ws| async move {
        // Never read; keep the socket open until the test is done.
        done_rx.await.unwrap();
        drop(ws);
    })
    .await;
    let mut p = LocalProvider::from_config(&config(&url, None, 1000)).unwrap();
    std::sync::Arc::make_mut(&mut p.cfg).write_stall = Duration::from_millis(300);
    let (peer, task) = start(&p, meta(None));
    let chunk = Bytes::from(vec![0x11; 64 * 1024]);
    let mut pushed = 0;
    while !task.is_finished() {
        assert!(
            pushed < 1024,
            "the session kept taking audio from a server that does not read"
        );
        let send = peer
            .events
            .send(CallerEvent::Audio(chunk.clone(), std::time::Instant::now()));
        match tokio::time::timeout(Duration::from_millis(200), send).await {
            Ok(Ok(())) => pushed += 1,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let end = end_of(task).await;
    assert!(
        matches!(end.error, Some(ProviderError::Timeout { ref what, .. }) if what.contains("read")),
        "{end:?}"
    );
    done_tx.send(()).unwrap();
    server.await.unwrap();
}
