//! Session tests against a scripted OpenAI Realtime server inside the test: a
//! tokio-tungstenite server on 127.0.0.1:0 that records the upgrade request, and
//! that each test drives message by message (what the server sends, what it must
//! receive next). Timeouts here are liveness limits only; no test asserts a
//! duration.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::config::{
    AgentConfig, Config, RealtimeAudioFormat, Secret, TurnDetectionConfig, TurnDetectionType,
};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, Provider, ProviderError, Role, SessionEnd, SessionIo,
    SessionMeta, SessionPeer,
};

const KEY: &str = "sk-test-VOXD-SECRET-0123456789abcdef";
const LIVENESS: Duration = Duration::from_secs(10);

async fn live<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(LIVENESS, f).await {
        Ok(v) => v,
        Err(_) => panic!("liveness limit reached waiting for {what}"),
    }
}

/// The scripted server's listener.
struct Server {
    listener: TcpListener,
    url: String,
}

/// One accepted connection and its upgrade request.
struct Conn {
    ws: WebSocketStream<TcpStream>,
    headers: HeaderMap,
    uri: String,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/realtime", listener.local_addr().unwrap());
        Server { listener, url }
    }

    // The callback's error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    async fn accept(&self) -> Conn {
        let (tcp, _) = live("a connection", self.listener.accept()).await.unwrap();
        let mut seen = None;
        let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            seen = Some((req.headers().clone(), req.uri().to_string()));
            Ok(resp)
        };
        let ws = live("the upgrade", tokio_tungstenite::accept_hdr_async(tcp, cb))
            .await
            .unwrap();
        let (headers, uri) = seen.unwrap();
        Conn { ws, headers, uri }
    }

    /// Accept one connection and refuse its upgrade with `status`.
    #[allow(clippy::result_large_err)]
    async fn refuse(&self, status: StatusCode) {
        let (tcp, _) = live("a connection", self.listener.accept()).await.unwrap();
        let cb = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut r = ErrorResponse::new(Some("no".into()));
            *r.status_mut() = status;
            Err(r)
        };
        let _ = tokio_tungstenite::accept_hdr_async(tcp, cb).await;
    }
}

impl Conn {
    async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string())).await.unwrap();
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next message other than ping/pong.
    async fn next_msg(&mut self) -> Message {
        loop {
            let m = live("a client message", self.ws.next())
                .await
                .expect("client closed the connection")
                .expect("client message");
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return m;
            }
        }
    }

    /// The next client event as JSON.
    async fn recv(&mut self) -> Value {
        match self.next_msg().await {
            Message::Text(t) => serde_json::from_str(&t).expect("client sent JSON"),
            other => panic!("expected a text event, got {other:?}"),
        }
    }

    /// `session.created`, then the client's `session.update`.
    async fn open(&mut self) -> Value {
        self.send(json!({"type": "session.created", "event_id": "ev_1", "session": {"type": "realtime", "id": "sess_1", "object": "realtime.session"}}))
            .await;
        let update = self.recv().await;
        assert_eq!(update["type"], "session.update", "{update}");
        update
    }

    /// The next client event must be an append; its decoded audio.
    async fn recv_append(&mut self) -> Vec<u8> {
        let v = self.recv().await;
        assert_eq!(v["type"], "input_audio_buffer.append", "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        B64.decode(v["audio"].as_str().unwrap()).unwrap()
    }
}

fn config(url: &str) -> Config {
    let mut c = Config::default();
    let o = &mut c.providers.openai_realtime;
    o.enabled = true;
    o.base_url = url.to_string();
    o.api_key = Secret::new(KEY);
    c
}

fn meta() -> SessionMeta {
    SessionMeta {
        call_id: 7,
        caller_codec: Codec::Pcmu,
        agent: None,
        started_at_ms: 0,
        attempt: 0,
        history: Vec::new(),
    }
}

struct Call {
    peer: SessionPeer,
    task: JoinHandle<SessionEnd>,
}

impl Call {
    fn start(p: &OpenAiProvider, meta: SessionMeta) -> Call {
        let (io, peer) = SessionIo::pair(64, 64);
        Call {
            peer,
            task: p.start(meta, io),
        }
    }

    async fn send(&self, ev: CallerEvent) {
        self.peer.events.send(ev).await.unwrap();
    }

    async fn next(&mut self) -> AgentEvent {
        live("an agent event", self.peer.out.recv())
            .await
            .expect("session ended")
    }

    async fn end(self) -> SessionEnd {
        live("the session end", self.task).await.unwrap()
    }
}

fn provider(cfg: &Config) -> OpenAiProvider {
    OpenAiProvider::from_config(cfg).unwrap()
}

fn frame(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
            .collect::<Vec<u8>>(),
    )
}

fn delta(response: &str, item: &str, audio: &[u8]) -> Value {
    json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": response, "item_id": item, "output_index": 0, "content_index": 0, "delta": B64.encode(audio)})
}

fn assert_no_key(e: &ProviderError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(!text.contains("VOXD-SECRET"), "{text}");
}

// ---------------------------------------------------------------- configuration

#[test]
fn from_config_requires_key_and_safe_url() {
    let mut c = config("wss://api.openai.com/v1/realtime");
    let p = provider(&c);
    assert_eq!(
        p.url(),
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    );
    assert_eq!(p.name(), "openai_realtime");
    assert!(!format!("{p:?}").contains(KEY), "Debug masks the key");

    c.providers.openai_realtime.api_key = Secret::default();
    let e = OpenAiProvider::from_config(&c).unwrap_err();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("OPENAI_API_KEY"), "{e}");

    let mut c = config("ws://10.1.2.3:9000/v1/realtime");
    let e = OpenAiProvider::from_config(&c).unwrap_err();
    assert!(e.to_string().contains("in clear"), "{e}");
    assert_no_key(&e);
    c.providers.openai_realtime.base_url = "https://api.openai.com/v1/realtime".into();
    assert!(matches!(
        OpenAiProvider::from_config(&c),
        Err(ProviderError::Config { .. })
    ));
    c.providers.openai_realtime.base_url = "ws://localhost:1/x?a=b".into();
    c.providers.openai_realtime.model = "my model&x".into();
    assert_eq!(
        provider(&c).url(),
        "ws://localhost:1/x?a=b&model=my%20model%26x"
    );
}

#[test]
fn formats_follow_the_configured_formats() {
    let mut c = config("wss://api.openai.com/v1/realtime");
    let f = provider(&c).formats(Codec::Slin(Rate::Hz16000));
    assert_eq!((f.input, f.output), (Codec::Pcmu, Codec::Pcmu));
    c.providers.openai_realtime.input_format = RealtimeAudioFormat::Pcm24k;
    c.providers.openai_realtime.output_format = RealtimeAudioFormat::Pcma;
    let f = provider(&c).formats(Codec::Pcmu);
    assert_eq!(f.input, Codec::Slin(Rate::Hz24000));
    assert_eq!(f.output, Codec::Pcma);
}

// ---------------------------------------------------------------- opening

#[tokio::test]
async fn opening_sequence_has_the_ga_shape_and_auth() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    {
        let o = &mut c.providers.openai_realtime;
        o.instructions = "You are a test agent.".into();
        o.voice = "marin".into();
        o.greeting = Some("Hello from voxd".into());
        o.turn_detection = TurnDetectionConfig {
            kind: TurnDetectionType::ServerVad,
            threshold: 0.65,
            prefix_padding_ms: 250,
            silence_duration_ms: 700,
            create_response: true,
            interrupt_response: true,
        };
    }
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    assert_eq!(
        conn.headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {KEY}")
    );
    assert!(conn.headers.get("openai-beta").is_none(), "GA only");
    assert!(
        conn.uri.ends_with("/v1/realtime?model=gpt-realtime"),
        "{}",
        conn.uri
    );

    let update = conn.open().await;
    assert_eq!(
        update,
        json!({
            "type": "session.update",
            "event_id": "voxd_session_update",
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "output_modalities": ["audio"],
                "instructions": "You are a test agent.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.65,
                            "prefix_padding_ms": 250,
                            "silence_duration_ms": 700,
                            "create_response": true,
                            "interrupt_response": true
                        }
                    },
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
                }
            }
        })
    );
    let greet = conn.recv().await;
    assert_eq!(greet["type"], "response.create", "{greet}");
    let instr = greet["response"]["instructions"].as_str().unwrap();
    assert!(instr.contains("Hello from voxd"), "{instr}");

    call.send(CallerEvent::Hangup).await;
    match conn.next_msg().await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected a normal close, got {other:?}"),
    }
    assert_eq!(call.end().await, SessionEnd::new(EndReason::CallerHangup));
    let st = p.stats().snapshot();
    assert_eq!(
        (st.sessions, st.connect_failures, st.errors_fatal),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn agent_overrides_formats_and_semantic_vad() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    {
        let o = &mut c.providers.openai_realtime;
        o.instructions = "default prompt".into();
        o.greeting = Some("default greeting".into());
        o.input_format = RealtimeAudioFormat::Pcm24k;
        o.output_format = RealtimeAudioFormat::Pcma;
        o.turn_detection.kind = TurnDetectionType::SemanticVad;
        o.turn_detection.interrupt_response = false;
    }
    c.agents.insert(
        "sales".into(),
        AgentConfig {
            provider: None,
            prompt: Some("You sell things.".into()),
            greeting: Some("Sales, hello!".into()),
            voice: Some("cedar".into()),
        },
    );
    let p = provider(&c).with_input_transcription(Some("gpt-4o-mini-transcribe".into()));
    let call = Call::start(
        &p,
        SessionMeta {
            agent: Some("sales".into()),
            ..meta()
        },
    );
    let mut conn = srv.accept().await;
    let u = conn.open().await;
    let s = &u["session"];
    assert_eq!(s["instructions"], "You sell things.");
    assert_eq!(
        s["audio"]["input"],
        json!({
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "semantic_vad", "create_response": true, "interrupt_response": false},
            "transcription": {"model": "gpt-4o-mini-transcribe"}
        })
    );
    assert_eq!(
        s["audio"]["output"],
        json!({"format": {"type": "audio/pcma"}, "voice": "cedar"})
    );
    let greet = conn.recv().await;
    assert!(greet["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("Sales, hello!"));
    drop(call.peer);
    assert_eq!(
        live("end", call.task).await.unwrap(),
        SessionEnd::new(EndReason::ChannelClosed)
    );
    assert!(matches!(conn.next_msg().await, Message::Close(_)));
}

#[tokio::test]
async fn reconnect_replays_history_and_skips_the_greeting() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    c.providers.openai_realtime.greeting = Some("Hi there".into());
    c.providers.openai_realtime.instructions = String::new();
    let p = provider(&c);
    let call = Call::start(
        &p,
        SessionMeta {
            attempt: 1,
            history: vec![
                (Role::User, "I need a taxi".into()),
                (Role::Agent, "Where to?".into()),
            ],
            ..meta()
        },
    );
    let mut conn = srv.accept().await;
    let u = conn.open().await;
    assert!(
        u["session"].get("instructions").is_none(),
        "empty instructions keep the server default: {u}"
    );
    assert_eq!(
        conn.recv().await,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I need a taxi"}]}})
    );
    assert_eq!(
        conn.recv().await,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Where to?"}]}})
    );
    // No greeting: the next event is the caller's audio.
    let f = frame(1, 160);
    call.send(CallerEvent::Audio(f.clone(), std::time::Instant::now()))
        .await;
    assert_eq!(conn.recv_append().await, &f[..]);
    // DTMF becomes a user text item.
    call.send(CallerEvent::Dtmf('5')).await;
    let d = conn.recv().await;
    assert_eq!(d["item"]["content"][0]["text"], "DTMF 5", "{d}");
    call.send(CallerEvent::Hangup).await;
    assert_eq!(call.end().await.reason, EndReason::CallerHangup);
}

// ---------------------------------------------------------------- caller audio

#[tokio::test]
async fn appends_carry_exactly_the_audio_batched_by_append_ms() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    c.providers.openai_realtime.append_ms = 60;
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    // Audio sent before the session exists is kept and sent after session.update.
    let early = [frame(1, 160), frame(2, 160)];
    for f in &early {
        call.send(CallerEvent::Audio(f.clone(), std::time::Instant::now()))
            .await;
    }
    conn.open().await;
    let frames: Vec<Bytes> = (3..10).map(|k| frame(k, 160)).collect();
    for f in &frames {
        call.send(CallerEvent::Audio(f.clone(), std::time::Instant::now()))
            .await;
    }
    let all: Vec<u8> = early
        .iter()
        .chain(&frames)
        .flat_map(|f| f.to_vec())
        .collect();
    // 9 frames of 20 ms = 3 appends of 60 ms (480 bytes each), in order.
    for k in 0..3 {
        assert_eq!(
            conn.recv_append().await,
            &all[k * 480..(k + 1) * 480],
            "append {k}"
        );
    }
    call.send(CallerEvent::Hangup).await;
    assert!(
        matches!(conn.next_msg().await, Message::Close(_)),
        "no partial append"
    );
    call.end().await;
    let st = p.stats().snapshot();
    assert_eq!(st.audio_bytes_in, 9 * 160);
}

#[tokio::test]
async fn twenty_ms_appends_send_every_frame() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    c.providers.openai_realtime.input_format = RealtimeAudioFormat::Pcm24k;
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    for k in 0..4 {
        let f = frame(k, 960); // 20 ms of 24 kHz PCM
        call.send(CallerEvent::Audio(f.clone(), std::time::Instant::now()))
            .await;
        assert_eq!(conn.recv_append().await, &f[..]);
    }
    call.send(CallerEvent::Hangup).await;
    call.end().await;
}

// ---------------------------------------------------------------- agent audio and barge-in

#[tokio::test]
async fn deltas_become_audio_and_provider_barge_in_truncates_without_cancel() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let mut call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.send(
        json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
    )
    .await;
    // 4 s of PCMU in two deltas: plenty still queued when speech_started comes.
    let a = frame(1, 16_000);
    let b = frame(2, 16_000);
    conn.send(delta("resp_1", "item_1", &a)).await;
    conn.send(delta("resp_1", "item_1", &b)).await;
    assert_eq!(call.next().await, AgentEvent::Audio(a));
    assert_eq!(call.next().await, AgentEvent::Audio(b));
    conn.send(json!({"type": "response.output_audio_transcript.delta", "response_id": "resp_1", "item_id": "item_1", "delta": "Hel"}))
        .await;
    assert_eq!(
        call.next().await,
        AgentEvent::Transcript {
            role: Role::Agent,
            text: "Hel".into(),
            is_final: false
        }
    );
    conn.send(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": "item_u"}))
        .await;
    assert_eq!(call.next().await, AgentEvent::SpeechStarted);
    // Audio of the cut item still in flight is dropped, its done suppressed.
    conn.send(delta("resp_1", "item_1", &frame(3, 800))).await;
    conn.send(
        json!({"type": "response.output_audio.done", "response_id": "resp_1", "item_id": "item_1"}),
    )
    .await;
    conn.send(json!({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled", "output": []}}))
        .await;
    assert_eq!(call.next().await, AgentEvent::ResponseDone);

    // The glue flushed the playout after 700 ms heard.
    call.send(CallerEvent::BargeIn { played_ms: 700 }).await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 700})
    );
    // No cancel (the server cut its own response), no second truncate.
    call.send(CallerEvent::BargeIn { played_ms: 900 }).await;
    let f = frame(9, 160);
    call.send(CallerEvent::Audio(f.clone(), std::time::Instant::now()))
        .await;
    assert_eq!(conn.recv_append().await, &f[..]);

    call.send(CallerEvent::Hangup).await;
    call.end().await;
    let st = p.stats().snapshot();
    assert_eq!(st.barge_ins_provider, 1);
    assert_eq!(st.truncates_sent, 1);
    assert_eq!(st.cancels_sent, 0);
    assert_eq!(st.audio_bytes_out, 32_000);
    assert_eq!(st.audio_bytes_dropped, 800);
}

#[tokio::test]
async fn local_barge_in_cancels_the_running_response_then_truncates_clamped() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let mut call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.send(json!({"type": "response.created", "response": {"id": "resp_9"}}))
        .await;
    let a = frame(4, 4000); // 500 ms received so far
    conn.send(delta("resp_9", "item_9", &a)).await;
    assert_eq!(call.next().await, AgentEvent::Audio(a));
    call.send(CallerEvent::BargeIn { played_ms: 900 }).await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "response.cancel", "response_id": "resp_9"})
    );
    assert_eq!(
        conn.recv().await,
        json!({"type": "conversation.item.truncate", "item_id": "item_9", "content_index": 0, "audio_end_ms": 500})
    );
    // A late cancel race answer is not an error for the call.
    conn.send(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "response_cancel_not_active", "message": "no active response"}}))
        .await;
    conn.send(
        json!({"type": "response.done", "response": {"id": "resp_9", "status": "cancelled"}}),
    )
    .await;
    assert_eq!(call.next().await, AgentEvent::ResponseDone);
    call.send(CallerEvent::Hangup).await;
    call.end().await;
    let st = p.stats().snapshot();
    assert_eq!(
        (st.barge_ins_local, st.cancels_sent, st.truncates_sent),
        (1, 1, 1)
    );
    assert_eq!(st.errors_retryable, 0);
}

#[tokio::test]
async fn speech_started_without_agent_audio_is_just_the_callers_turn() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let mut call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.send(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 20}))
        .await;
    conn.send(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900}))
        .await;
    conn.send(json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1", "content_index": 0, "transcript": "Hello? \"Anyone\""}))
        .await;
    // The first event after speech_started is the transcript: no SpeechStarted.
    assert_eq!(
        call.next().await,
        AgentEvent::Transcript {
            role: Role::User,
            text: "Hello? \"Anyone\"".into(),
            is_final: true
        }
    );
    conn.send(json!({"type": "response.output_audio_transcript.done", "item_id": "i", "transcript": "Hi!"}))
        .await;
    assert_eq!(
        call.next().await,
        AgentEvent::Transcript {
            role: Role::Agent,
            text: "Hi!".into(),
            is_final: true
        }
    );
    call.send(CallerEvent::Hangup).await;
    call.end().await;
    assert_eq!(p.stats().snapshot().barge_ins_provider, 0);
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn non_fatal_errors_go_on_and_fatal_errors_end_the_session() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let mut call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.send(json!({"type": "error", "event_id": "e1", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad audio_end_ms", "param": null, "event_id": "x"}}))
        .await;
    match call.next().await {
        AgentEvent::Error {
            error: ProviderError::Remote { code, message, .. },
        } => {
            assert_eq!(code, "invalid_value");
            assert_eq!(message, "bad audio_end_ms");
        }
        other => panic!("expected a non-fatal error, got {other:?}"),
    }
    conn.send(json!({"type": "rate_limits.updated", "rate_limits": [
        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.01},
        {"name": "tokens", "limit": 40000, "remaining": 39000.0, "reset_seconds": 1.5}
    ]}))
    .await;
    conn.send(json!({"type": "some.future_event", "delta": {"an": "object"}, "item_id": 5}))
        .await;
    conn.send(json!({"type": "response.done", "response": {"id": "r"}}))
        .await;
    assert_eq!(
        call.next().await,
        AgentEvent::ResponseDone,
        "the session went on"
    );
    conn.send(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired", "message": "Your session hit the maximum duration."}}))
        .await;
    let end = call.end().await;
    match &end.error {
        Some(ProviderError::Remote { code, .. }) => assert_eq!(code, "session_expired"),
        other => panic!("expected a fatal remote error, got {other:?}"),
    }
    assert_eq!(end.reason, EndReason::Error);
    let st = p.stats().snapshot();
    assert_eq!((st.errors_retryable, st.errors_fatal), (1, 1));
    assert_eq!(st.unknown_events, 1);
    assert_eq!(
        (st.rate_requests_remaining, st.rate_requests_limit),
        (4999, 5000)
    );
    assert_eq!(
        (st.rate_tokens_remaining, st.rate_tokens_limit),
        (39000, 40000)
    );
}

#[tokio::test]
async fn failed_session_update_and_auth_errors_are_fatal() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.send(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Invalid voice", "event_id": "voxd_session_update"}}))
        .await;
    assert!(matches!(
        call.end().await.error,
        Some(ProviderError::Remote { .. })
    ));

    // An error before session.created ends the attempt, and the key is scrubbed.
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.send(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": format!("Incorrect API key provided: {KEY}. Find yours at https://platform.openai.com")}}))
        .await;
    let end = call.end().await;
    let e = end.error.expect("fatal");
    assert!(matches!(e, ProviderError::Remote { .. }), "{e:?}");
    assert!(
        e.to_string().contains("Incorrect API key provided: ***"),
        "{e}"
    );
    assert_no_key(&e);
    let st = p.stats().snapshot();
    assert_eq!((st.connect_failures, st.errors_fatal), (1, 1));
}

#[tokio::test]
async fn malformed_or_binary_messages_end_with_a_protocol_error() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    for bad in [
        Message::Text("{not json".into()),
        Message::Binary(vec![1, 2, 3]),
        Message::Text(
            r#"{"type":"response.output_audio.delta","item_id":"i","delta":"%%%"}"#.into(),
        ),
        Message::Text(r#"{"type":"response.done","response":7}"#.into()),
        Message::Text(r#"{"no_type":1}"#.into()),
    ] {
        let call = Call::start(&p, meta());
        let mut conn = srv.accept().await;
        conn.open().await;
        conn.send_raw(bad.clone()).await;
        let end = call.end().await;
        assert!(
            matches!(end.error, Some(ProviderError::Protocol { .. })),
            "{bad:?} -> {end:?}"
        );
        assert_no_key(end.error.as_ref().unwrap());
    }
}

#[tokio::test]
async fn server_close_mid_call_is_a_connect_failure() {
    let srv = Server::start().await;
    let p = provider(&config(&srv.url));
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    conn.ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "maintenance".into(),
        }))
        .await
        .unwrap();
    let end = call.end().await;
    match end.error {
        Some(ProviderError::Connect { message, .. }) => {
            assert!(
                message.contains("1001") && message.contains("maintenance"),
                "{message}"
            )
        }
        other => panic!("expected a connect error, got {other:?}"),
    }

    // A TCP drop without a close frame too.
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    drop(conn);
    assert!(matches!(
        call.end().await.error,
        Some(ProviderError::Connect { .. }) | Some(ProviderError::Protocol { .. })
    ));
}

#[tokio::test]
async fn no_session_created_is_a_timeout_and_no_error_shows_the_key() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    c.providers.openai_realtime.connect_timeout_ms = 300;
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let _conn = srv.accept().await; // upgrades, then says nothing
    let e = call.end().await.error.expect("timeout");
    assert!(
        matches!(&e, ProviderError::Timeout { what, .. } if what.contains("session.created")),
        "{e:?}"
    );
    assert_no_key(&e);

    // A refused upgrade (401) and a refused TCP connection.
    let call = Call::start(&p, meta());
    srv.refuse(StatusCode::UNAUTHORIZED).await;
    let e = call.end().await.error.expect("401");
    assert!(matches!(e, ProviderError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("401"), "{e}");
    assert_no_key(&e);

    let url = srv.url.clone();
    drop(srv);
    let p = provider(&config(&url));
    let e = Call::start(&p, meta()).end().await.error.expect("refused");
    assert!(matches!(e, ProviderError::Connect { .. }), "{e:?}");
    assert_no_key(&e);
    assert_eq!(p.stats().snapshot().connect_failures, 1);
}

#[tokio::test]
async fn hangup_while_connecting_ends_at_once() {
    // A listener that never answers the upgrade, with a long connect timeout:
    // only the hang-up can end this session within the liveness limit.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/realtime", listener.local_addr().unwrap());
    let mut c = config(&url);
    c.providers.openai_realtime.connect_timeout_ms = 600_000;
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let (_tcp, _) = live("a connection", listener.accept()).await.unwrap();
    call.send(CallerEvent::Audio(frame(1, 160), std::time::Instant::now()))
        .await;
    call.send(CallerEvent::Hangup).await;
    assert_eq!(call.end().await, SessionEnd::new(EndReason::CallerHangup));
    assert_eq!(p.stats().snapshot().connect_failures, 0);
}

// ---------------------------------------------------------------- back-pressure

#[tokio::test]
async fn a_provider_that_does_not_read_stops_the_intake() {
    let srv = Server::start().await;
    let mut c = config(&srv.url);
    c.providers.openai_realtime.input_format = RealtimeAudioFormat::Pcm24k;
    c.providers.openai_realtime.append_ms = 1000;
    let p = provider(&c);
    let call = Call::start(&p, meta());
    let mut conn = srv.accept().await;
    conn.open().await;
    // The server stops reading. One second of 24 kHz audio per event, until the
    // session stops taking events (socket buffers full, its write not flushed).
    let chunk = frame(5, 48_000);
    let mut sent = 0u32;
    loop {
        match call
            .peer
            .events
            .try_send(CallerEvent::Audio(chunk.clone(), std::time::Instant::now()))
        {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(_)) => {
                // Maybe the session just had no turn yet: give it many.
                for _ in 0..200 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if call
                    .peer
                    .events
                    .try_send(CallerEvent::Audio(chunk.clone(), std::time::Instant::now()))
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            Err(TrySendError::Closed(_)) => panic!("session ended"),
        }
        assert!(sent < 2000, "the session kept taking audio nobody reads");
        tokio::task::yield_now().await;
    }
    // Now the server reads again: everything sent arrives, in order, and the
    // session takes events again.
    let mut got = 0u32;
    while got < sent.saturating_sub(64 + 2) {
        let a = conn.recv_append().await;
        assert_eq!(a.len(), 48_000);
        assert_eq!(a, &chunk[..]);
        got += 1;
    }
    live(
        "the intake to resume",
        call.peer.events.send(CallerEvent::Hangup),
    )
    .await
    .unwrap();
    // Drain what is left so the close frame can go out.
    let drain = tokio::spawn(async move {
        while let Some(Ok(m)) = conn.ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    });
    assert_eq!(call.end().await.reason, EndReason::CallerHangup);
    live("drain", drain).await.unwrap();
}
