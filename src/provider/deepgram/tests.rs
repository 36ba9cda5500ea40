//! Session tests against a scripted Deepgram server on 127.0.0.1 (tokio-tungstenite
//! `accept_hdr_async`): auth header, opening sequence, held audio, audio both ways,
//! barge-in rules, errors, keepalive. Deadlines are for liveness only.

// tungstenite's handshake callback returns `Result<Response, ErrorResponse>`.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::provider::testkit::{
    drained, end_of, expect_close, next_event, next_json, next_msg, send_json, start, ServerWs,
    LIMIT,
};

/// The scripted server for these tests (see [`crate::provider::testkit::serve`]).
async fn serve<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    crate::provider::testkit::serve("/v1/agent/converse", Some("Token dg-test-key-123"), script)
        .await
}
use crate::config::{AgentConfig, Config, Secret};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, Provider, ProviderError, Role, SessionEnd, SessionMeta,
};
use std::sync::Arc;

const KEY: &str = "dg-test-key-123";

fn config(url: &str) -> Config {
    let mut c = Config::default();
    let d = &mut c.providers.deepgram;
    d.enabled = true;
    d.base_url = url.to_string();
    d.api_key = Secret::new(KEY);
    d.instructions = "Be brief.".into();
    d.greeting = Some("Hello!".into());
    d.keepalive_ms = 60_000;
    d.connect_timeout_ms = 10_000;
    c.agents.insert(
        "sales".into(),
        AgentConfig {
            provider: None,
            prompt: Some("Sell boats.".into()),
            greeting: Some("Boats here.".into()),
            voice: Some("aura-2-orion-en".into()),
        },
    );
    c
}

fn meta(agent: Option<&str>) -> SessionMeta {
    SessionMeta {
        call_id: 42,
        caller_codec: crate::call::Codec::Pcmu,
        agent: agent.map(str::to_string),
        started_at_ms: 0,
        attempt: 0,
        history: Vec::new(),
    }
}

/// Welcome -> Settings -> SettingsApplied; returns the Settings received.
async fn handshake(ws: &mut ServerWs) -> Value {
    send_json(ws, json!({"type": "Welcome", "request_id": "r1"})).await;
    let settings = next_json(ws).await;
    assert_eq!(settings["type"], "Settings");
    send_json(ws, json!({"type": "SettingsApplied"})).await;
    settings
}

fn frame(i: usize) -> Bytes {
    Bytes::from(vec![i as u8; 160])
}

#[test]
fn from_config_checks_key_url_and_plain_ws() {
    let mut c = config("wss://agent.deepgram.com/v1/agent/converse");
    assert!(DeepgramProvider::from_config(&c).is_ok());

    c.providers.deepgram.api_key = Secret::default();
    let e = DeepgramProvider::from_config(&c).unwrap_err();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("DEEPGRAM_API_KEY"), "{e}");

    let mut c = config("https://agent.deepgram.com");
    let e = DeepgramProvider::from_config(&c).unwrap_err();
    assert!(e.to_string().contains("providers.deepgram.base_url"), "{e}");

    c.providers.deepgram.base_url = "ws://10.1.2.3:9000/agent".into();
    let e = DeepgramProvider::from_config(&c).unwrap_err();
    assert!(e.to_string().contains("wss://"), "{e}");
    assert!(!e.to_string().contains(KEY));

    c.providers.deepgram.base_url = "ws://127.0.0.1:9000/agent".into();
    let p = DeepgramProvider::from_config(&c).unwrap();
    assert_eq!(p.name(), "deepgram");
    assert!(!format!("{p:?}").contains(KEY), "Debug must mask the key");
    for caller in [
        crate::call::Codec::Pcmu,
        crate::call::Codec::Pcma,
        crate::call::Codec::Slin(crate::media::Rate::Hz16000),
    ] {
        let f = p.formats(caller);
        assert_eq!(
            (f.input, f.output),
            (crate::call::Codec::Pcmu, crate::call::Codec::Pcmu)
        );
    }
}

#[tokio::test]
async fn opening_sequence_holds_audio_until_settings_applied() {
    let (settings_tx, settings_rx) = oneshot::channel::<Value>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        send_json(&mut ws, json!({"type": "Welcome", "request_id": "r1"})).await;
        // The very first client message is Settings: no audio before it.
        let settings = next_json(&mut ws).await;
        settings_tx.send(settings).unwrap();
        go_rx.await.unwrap();
        send_json(&mut ws, json!({"type": "SettingsApplied"})).await;
        // The held audio, all of it, in order, then live audio.
        let held: Vec<u8> = (0..10).flat_map(|i| frame(i).to_vec()).collect();
        assert_eq!(next_msg(&mut ws).await, Message::Binary(held));
        assert_eq!(next_msg(&mut ws).await, Message::Binary(frame(99).to_vec()));
        // Agent audio to the caller.
        ws.send(Message::Binary(vec![0x55; 800])).await.unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (mut peer, task) = start(&p, meta(Some("sales")));
    // Audio during the connect and while waiting for Welcome ...
    for i in 0..5 {
        peer.events
            .send(CallerEvent::Audio(frame(i), std::time::Instant::now()))
            .await
            .unwrap();
    }
    let settings = tokio::time::timeout(LIMIT, settings_rx)
        .await
        .unwrap()
        .unwrap();
    // ... and after Settings went out, before SettingsApplied: all of it is held.
    for i in 5..10 {
        peer.events
            .send(CallerEvent::Audio(frame(i), std::time::Instant::now()))
            .await
            .unwrap();
    }
    assert_eq!(
        settings,
        json!({
            "type": "Settings",
            "audio": {
                "input": {"encoding": "mulaw", "sample_rate": 8000},
                "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}
            },
            "agent": {
                "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
                "think": {
                    "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
                    "prompt": "Sell boats."
                },
                "speak": {"provider": {"type": "deepgram", "model": "aura-2-orion-en"}},
                "greeting": "Boats here."
            }
        })
    );
    // Every frame is in the session's hold buffer before SettingsApplied is sent.
    drained(&peer).await;
    go_tx.send(()).unwrap();
    // Live audio once the held audio is out (else it would join the held batch).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().snapshot().audio_sent_bytes == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peer.events
        .send(CallerEvent::Audio(frame(99), std::time::Instant::now()))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(vec![0x55; 800]))
    );
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await, SessionEnd::new(EndReason::CallerHangup));
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.sessions, 1);
    assert_eq!(st.audio_sent_bytes, 11 * 160);
    assert_eq!(st.audio_received_bytes, 800);
    assert_eq!(st.held_dropped_bytes, 0);
    assert_eq!(st.connect_failures, 0);
}

#[tokio::test]
async fn hold_buffer_keeps_the_last_second() {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        send_json(&mut ws, json!({"type": "Welcome"})).await;
        assert_eq!(next_json(&mut ws).await["type"], "Settings");
        go_rx.await.unwrap();
        send_json(&mut ws, json!({"type": "SettingsApplied"})).await;
        // 60 frames were held; the oldest 10 (200 ms) did not fit in 1 s.
        let kept: Vec<u8> = (10..60).flat_map(|i| frame(i).to_vec()).collect();
        assert_eq!(next_msg(&mut ws).await, Message::Binary(kept));
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (peer, task) = start(&p, meta(None));
    for i in 0..60 {
        peer.events
            .send(CallerEvent::Audio(frame(i), std::time::Instant::now()))
            .await
            .unwrap();
    }
    drained(&peer).await;
    go_tx.send(()).unwrap();
    // Hang up once the server has seen the audio (it then expects the close).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().snapshot().audio_sent_bytes == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.held_dropped_bytes, 10 * 160);
    assert_eq!(st.audio_sent_bytes, 50 * 160);
}

#[tokio::test]
async fn user_started_speaking_interrupts_only_playing_audio() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        // Nothing playing: no SpeechStarted.
        send_json(&mut ws, json!({"type": "UserStartedSpeaking"})).await;
        send_json(&mut ws, json!({"type": "ConversationText", "role": "user", "content": "hello"})).await;
        send_json(
            &mut ws,
            json!({"type": "AgentStartedSpeaking", "total_latency": 1.5, "tts_latency": 0.25, "ttt_latency": 1.0}),
        )
        .await;
        // 30 s of reply audio: still playing when the caller starts talking.
        ws.send(Message::Binary(vec![1; 240_000])).await.unwrap();
        send_json(&mut ws, json!({"type": "UserStartedSpeaking"})).await;
        // The rest of the cut reply is dropped.
        ws.send(Message::Binary(vec![9; 160])).await.unwrap();
        send_json(&mut ws, json!({"type": "AgentAudioDone"})).await;
        // The next turn plays again.
        send_json(&mut ws, json!({"type": "AgentStartedSpeaking"})).await;
        ws.send(Message::Binary(vec![7; 160])).await.unwrap();
        send_json(&mut ws, json!({"type": "AgentAudioDone"})).await;
        send_json(&mut ws, json!({"type": "ConversationText", "role": "assistant", "content": "bye"})).await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(next_event(&mut peer).await);
    }
    assert_eq!(
        got,
        [
            AgentEvent::Transcript {
                role: Role::User,
                text: "hello".into(),
                is_final: true
            },
            AgentEvent::Audio(Bytes::from(vec![1; 240_000])),
            AgentEvent::SpeechStarted,
            AgentEvent::ResponseDone,
            AgentEvent::Audio(Bytes::from(vec![7; 160])),
            AgentEvent::AudioDone,
            AgentEvent::ResponseDone,
            AgentEvent::Transcript {
                role: Role::Agent,
                text: "bye".into(),
                is_final: true
            },
        ]
    );
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.barge_ins, 1);
    assert_eq!(st.audio_dropped_bytes, 160);
    assert_eq!(st.agent_turns, 2);
    assert_eq!(st.total_latency_ms_sum, 1500);
    assert_eq!(st.think_latency_ms_sum, 1000);
    assert_eq!(st.tts_latency_ms_sum, 250);
}

#[tokio::test]
async fn caller_barge_in_sends_nothing_and_drops_the_rest_of_the_reply() {
    let (cut_tx, cut_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        send_json(&mut ws, json!({"type": "AgentStartedSpeaking"})).await;
        ws.send(Message::Binary(vec![1; 400])).await.unwrap();
        cut_rx.await.unwrap();
        ws.send(Message::Binary(vec![2; 400])).await.unwrap();
        send_json(&mut ws, json!({"type": "AgentAudioDone"})).await;
        send_json(&mut ws, json!({"type": "AgentStartedSpeaking"})).await;
        ws.send(Message::Binary(vec![3; 400])).await.unwrap();
        send_json(&mut ws, json!({"type": "AgentAudioDone"})).await;
        // Nothing was sent for the barge-in: the next message is the close.
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(vec![1; 400]))
    );
    peer.events
        .send(CallerEvent::BargeIn { played_ms: 20 })
        .await
        .unwrap();
    drained(&peer).await;
    cut_tx.send(()).unwrap();
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    assert_eq!(
        next_event(&mut peer).await,
        AgentEvent::Audio(Bytes::from(vec![3; 400]))
    );
    assert_eq!(next_event(&mut peer).await, AgentEvent::AudioDone);
    assert_eq!(next_event(&mut peer).await, AgentEvent::ResponseDone);
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.barge_ins, 1);
    assert_eq!(st.audio_dropped_bytes, 400);
}

#[tokio::test]
async fn error_message_is_fatal() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        send_json(
            &mut ws,
            json!({"type": "Error", "code": "FAILED_TO_THINK", "description": "LLM unavailable"}),
        )
        .await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    assert_eq!(
        end,
        SessionEnd::failed(ProviderError::Remote {
            name: "deepgram".into(),
            code: "FAILED_TO_THINK".into(),
            message: "LLM unavailable".into(),
        })
    );
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.errors, 1);
    assert_eq!(
        st.connect_failures, 0,
        "the error came after SettingsApplied"
    );
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        ws.send(Message::Text("{\"type\": \"Conversation".into()))
            .await
            .unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    assert_eq!(end.reason, EndReason::Error);
    assert!(
        matches!(end.error, Some(ProviderError::Protocol { .. })),
        "{end:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn keepalive_is_sent_when_no_audio_flows() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        assert_eq!(next_json(&mut ws).await, json!({"type": "KeepAlive"}));
        expect_close(&mut ws).await;
    })
    .await;
    let mut c = config(&url);
    c.providers.deepgram.keepalive_ms = 50;
    let p = DeepgramProvider::from_config(&c).unwrap();
    let (peer, task) = start(&p, meta(None));
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().snapshot().keepalives_sent == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no keepalive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
}

#[tokio::test]
async fn client_side_function_call_gets_an_error_result_and_unknown_types_are_ignored() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        send_json(
            &mut ws,
            json!({"type": "SomethingNew", "content": {"x": 1}}),
        )
        .await;
        send_json(
            &mut ws,
            json!({"type": "FunctionCallRequest", "functions": [
                {"id": "srv", "name": "internal", "arguments": "{}", "client_side": false},
                {"id": "f1", "name": "book", "arguments": "{}", "client_side": true}
            ]}),
        )
        .await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "FunctionCallResponse");
        assert_eq!(reply["id"], "f1");
        assert_eq!(reply["name"], "book");
        send_json(
            &mut ws,
            json!({"type": "Warning", "code": "W1", "description": "slow"}),
        )
        .await;
        send_json(
            &mut ws,
            json!({"type": "ConversationText", "role": "user", "content": "ok"}),
        )
        .await;
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (mut peer, task) = start(&p, meta(None));
    assert!(matches!(
        next_event(&mut peer).await,
        AgentEvent::Transcript { .. }
    ));
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await.reason, EndReason::CallerHangup);
    server.await.unwrap();
    let st = p.stats().snapshot();
    assert_eq!(st.unknown_messages, 1);
    assert_eq!(st.function_calls_refused, 1);
    assert_eq!(st.warnings, 1);
}

#[tokio::test]
async fn provider_close_mid_call_is_a_provider_fault() {
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        ws.close(None).await.unwrap();
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    let err = end.error.expect("an error");
    assert_eq!(err.fault(), crate::provider::Fault::Provider, "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn refused_key_is_a_connect_error_that_does_not_leak_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/agent/converse", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tokio_tungstenite::accept_hdr_async(tcp, |_: &Request, _: Response| {
            let mut resp = ErrorResponse::new(None);
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            Err(resp)
        })
        .await;
    });
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    let err = end.error.expect("an error");
    assert!(matches!(err, ProviderError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("check the API key"), "{err}");
    assert!(!err.to_string().contains(KEY));
    assert_eq!(p.stats().snapshot().connect_failures, 1);
    server.await.unwrap();
}

#[tokio::test]
async fn missing_welcome_times_out_and_hangup_during_handshake_ends_cleanly() {
    // No Welcome within connect_timeout_ms.
    let (url, server) = serve(|mut ws| async move {
        expect_close(&mut ws).await;
    })
    .await;
    let mut c = config(&url);
    c.providers.deepgram.connect_timeout_ms = 200;
    let p = DeepgramProvider::from_config(&c).unwrap();
    let (_peer, task) = start(&p, meta(None));
    let end = end_of(task).await;
    assert!(
        matches!(end.error, Some(ProviderError::Timeout { ref what, .. }) if what.starts_with("Welcome")),
        "{end:?}"
    );
    assert_eq!(p.stats().snapshot().connect_failures, 1);
    server.await.unwrap();

    // A hang-up while waiting for SettingsApplied ends the session without error.
    let (seen_tx, seen_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        send_json(&mut ws, json!({"type": "Welcome"})).await;
        assert_eq!(next_json(&mut ws).await["type"], "Settings");
        seen_tx.send(()).unwrap();
        expect_close(&mut ws).await;
    })
    .await;
    let p = DeepgramProvider::from_config(&config(&url)).unwrap();
    let (peer, task) = start(&p, meta(None));
    peer.events
        .send(CallerEvent::Audio(frame(1), std::time::Instant::now()))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, seen_rx).await.unwrap().unwrap();
    peer.events.send(CallerEvent::Hangup).await.unwrap();
    assert_eq!(end_of(task).await, SessionEnd::new(EndReason::CallerHangup));
    server.await.unwrap();
    assert_eq!(p.stats().snapshot().connect_failures, 0);
}

#[tokio::test]
async fn a_provider_that_stops_reading_stops_the_caller_audio_then_times_out() {
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (url, server) = serve(|mut ws| async move {
        handshake(&mut ws).await;
        // Never read again; keep the socket open until the test is done.
        done_rx.await.unwrap();
        drop(ws);
    })
    .await;
    let mut p = DeepgramProvider::from_config(&config(&url)).unwrap();
    Arc::make_mut(&mut p.cfg).write_stall = Duration::from_millis(300);
    let (peer, task) = start(&p, meta(None));
    // Push 64 KiB chunks while the session takes them. It must stop taking them
    // (a session that kept taking audio would buffer without bound: 64 MiB is far
    // beyond the kernel's socket buffers plus the WebSocket write buffer), and
    // then end on the stalled write.
    let chunk = Bytes::from(vec![0xFF; 64 * 1024]);
    let mut pushed = 0;
    while !task.is_finished() {
        assert!(
            pushed < 1024,
            "the session kept taking audio from a provider that does not read"
        );
        let send = peer
            .events
            .send(CallerEvent::Audio(chunk.clone(), std::time::Instant::now()));
        match tokio::time::timeout(Duration::from_millis(200), send).await {
            Ok(Ok(())) => pushed += 1,
            Ok(Err(_)) => break, // the session ended and dropped its receiver
            Err(_) => {}         // blocked: the session is not taking events
        }
    }
    // A provider fault, so the glue may reconnect or apply its failure policy.
    let end = end_of(task).await;
    assert!(
        matches!(end.error, Some(ProviderError::Timeout { ref what, .. }) if what.contains("read")),
        "{end:?}"
    );
    done_tx.send(()).unwrap();
    server.await.unwrap();
}
