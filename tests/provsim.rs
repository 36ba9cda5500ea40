//! Provider simulators driven over real loopback WebSockets by a plain
//! tokio-tungstenite client written here (not voxd's provider clients): a correct
//! session gets a full turn and no violations; wrong keys, the typical protocol
//! mistakes, barge-in and every fault are observable from the client side.
//!
//! No timing asserts: deadlines are generous and only guard liveness.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxd::loadgen::provsim::{Fault, ProviderSim, ProviderSimConfig, SimProtocol};
use voxd::media::g711;

/// Liveness deadline for anything the simulator should do.
const DEADLINE: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the client got (payload fields are read through `Debug` in failure
/// messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Got {
    Json(Value),
    /// A text frame that is not JSON (len, first bytes).
    NotJson(usize, String),
    Bin(Vec<u8>),
    Close(Option<u16>),
    /// The stream ended or broke without a close frame.
    Broken(String),
    /// Nothing within the wait.
    Quiet,
}

struct Client {
    ws: Ws,
}

async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    let cfg = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..WebSocketConfig::default()
    };
    let (ws, _) = timeout(
        DEADLINE,
        tokio_tungstenite::connect_async_with_config(req, Some(cfg), false),
    )
    .await
    .expect("connect timed out")?;
    Ok(Client { ws })
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string()))
            .await
            .expect("send");
    }

    async fn send_bin(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b)).await.expect("send binary");
    }

    async fn next_within(&mut self, wait: Duration) -> Got {
        loop {
            let m = match timeout(wait, self.ws.next()).await {
                Err(_) => return Got::Quiet,
                Ok(None) => return Got::Broken("end of stream".into()),
                Ok(Some(Err(e))) => return Got::Broken(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            return match m {
                Message::Text(t) => match serde_json::from_str::<Value>(&t) {
                    Ok(v) => Got::Json(v),
                    Err(_) => Got::NotJson(t.len(), t.chars().take(40).collect()),
                },
                Message::Binary(b) => Got::Bin(b),
                Message::Close(f) => Got::Close(f.map(|f| u16::from(f.code))),
                _ => continue,
            };
        }
    }

    async fn next(&mut self) -> Got {
        match self.next_within(DEADLINE).await {
            Got::Quiet => panic!("nothing from the simulator within {DEADLINE:?}"),
            g => g,
        }
    }

    /// JSON messages (and binary ones, as `{"binary": len}`) up to and including
    /// the first of type `ty`.
    async fn until(&mut self, ty: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Got::Json(v) => {
                    let done = v["type"] == ty;
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                Got::Bin(b) => seen.push(json!({"binary": b.len()})),
                other => panic!("waiting for {ty}, got {other:?} after {:?}", types(&seen)),
            }
        }
    }
}

fn types(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|v| match v["type"].as_str() {
            Some(t) => t.to_string(),
            None => "binary".to_string(),
        })
        .collect()
}

fn pos(evs: &[Value], ty: &str) -> usize {
    types(evs)
        .iter()
        .position(|t| t == ty)
        .unwrap_or_else(|| panic!("no {ty} in {:?}", types(evs)))
}

/// `ms` of a loud 440 Hz tone at `rate` (speech for the simulators' VAD).
fn tone(ms: u32, rate: u32) -> Vec<i16> {
    let n = (rate / 1000 * ms) as usize;
    (0..n)
        .map(|i| {
            (6000.0 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin()) as i16
        })
        .collect()
}

fn silence(ms: u32, rate: u32) -> Vec<i16> {
    vec![0; (rate / 1000 * ms) as usize]
}

fn ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; pcm.len()];
    g711::ulaw_encode(pcm, &mut out);
    out
}

fn le16(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

async fn start(cfg: ProviderSimConfig) -> ProviderSim {
    ProviderSim::start(cfg).await.expect("start simulator")
}

// ---- OpenAI Realtime ----------------------------------------------------------

const KEY: &str = "sk-sim-test";

fn oa_cfg() -> ProviderSimConfig {
    ProviderSimConfig {
        api_key: Some(KEY.into()),
        think_ms: 100,
        reply_ms: 800,
        chunk_ms: 100,
        burst_interval_ms: 10,
        greeting_ms: 500,
        ..ProviderSimConfig::for_protocol(SimProtocol::OpenAi)
    }
}

async fn oa_connect(sim: &ProviderSim) -> Client {
    let url = format!("{}?model=gpt-realtime", sim.url());
    let auth = format!("Bearer {KEY}");
    let mut c = connect(&url, &[("Authorization", &auth)])
        .await
        .expect("connect");
    let created = c.until("session.created").await;
    let s = &created[0]["session"];
    assert_eq!(s["type"], "realtime");
    assert_eq!(s["object"], "realtime.session");
    assert_eq!(s["model"], "gpt-realtime");
    assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcm");
    assert_eq!(s["audio"]["input"]["format"]["rate"], 24000);
    c
}

fn oa_update_pcmu() -> Value {
    json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "You are a test agent.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.5,
                        "prefix_padding_ms": 300, "silence_duration_ms": 500,
                        "create_response": true, "interrupt_response": true}
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
            }
        }
    })
}

/// Append `pcm` as PCMU in 100 ms events.
async fn oa_append(c: &mut Client, pcm: &[i16]) {
    for chunk in pcm.chunks(800) {
        c.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(ulaw(chunk))}))
            .await;
    }
}

async fn oa_session(sim: &ProviderSim) -> Client {
    let mut c = oa_connect(sim).await;
    c.send(oa_update_pcmu()).await;
    let upd = c.until("session.updated").await;
    assert_eq!(
        upd.last().unwrap()["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    c
}

fn delta_bytes(evs: &[Value]) -> usize {
    evs.iter()
        .filter(|v| v["type"] == "response.output_audio.delta")
        .map(|v| B64.decode(v["delta"].as_str().unwrap()).unwrap().len())
        .sum()
}

#[tokio::test]
async fn openai_full_turn_without_violations() {
    let sim = start(oa_cfg()).await;
    let mut c = oa_session(&sim).await;
    oa_append(&mut c, &tone(1000, 8000)).await;
    oa_append(&mut c, &silence(1000, 8000)).await;
    let evs = c.until("rate_limits.updated").await;
    let order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.done",
        "rate_limits.updated",
    ];
    let at: Vec<usize> = order.iter().map(|t| pos(&evs, t)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{:?}", types(&evs));
    let started = &evs[at[0]];
    let stopped = &evs[at[1]];
    assert_eq!(started["item_id"], stopped["item_id"]);
    assert!(stopped["audio_end_ms"].as_u64().unwrap() >= 1000);
    let user = &evs[at[3]]["item"];
    assert_eq!(user["role"], "user");
    let done = &evs[at[11]]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["role"], "assistant");
    let delta = &evs[at[7]];
    assert_eq!(delta["response_id"], done["id"]);
    assert_eq!(delta["item_id"], done["output"][0]["id"]);
    assert_eq!(delta["content_index"], 0);
    // The reply: reply_ms of PCMU.
    assert_eq!(delta_bytes(&evs), 800 * 8);
    drop(c);
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.turns, 1);
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.active, 0);
    assert_eq!(stats.audio_bytes_out, 6400);
    assert_eq!(stats.audio_bytes_in, 16_000);
    assert_eq!(
        stats.openings[0][..3],
        [
            "session.update",
            "input_audio_buffer.append",
            "input_audio_buffer.append"
        ]
    );
    assert_eq!(stats.messages_in["input_audio_buffer.append"], 20);
}

#[tokio::test]
async fn openai_greeting_with_response_create() {
    let sim = start(oa_cfg()).await;
    let mut c = oa_session(&sim).await;
    c.send(json!({"type": "response.create", "response": {"instructions": "Greet the caller."}}))
        .await;
    let evs = c.until("response.done").await;
    assert_eq!(evs.last().unwrap()["response"]["status"], "completed");
    assert_eq!(delta_bytes(&evs), 500 * 8, "greeting_ms of PCMU");
    // A second response.create while one runs is refused (not a violation).
    c.send(json!({"type": "response.create"})).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("error").await;
    assert_eq!(
        evs.last().unwrap()["error"]["code"],
        "conversation_already_has_active_response"
    );
    c.until("response.done").await;
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
}

#[tokio::test]
async fn openai_wrong_or_missing_key_is_401() {
    let sim = start(oa_cfg()).await;
    let url = format!("{}?model=gpt-realtime", sim.url());
    for headers in [vec![("Authorization", "Bearer sk-wrong")], vec![]] {
        match connect(&url, &headers).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
            Err(e) => panic!("expected HTTP 401, got {e}"),
            Ok(_) => panic!("expected HTTP 401, got a session"),
        }
    }
    let stats = sim.stop().await;
    assert_eq!(stats.auth_failures, 2);
    assert_eq!(stats.active, 0);
}

#[tokio::test]
async fn openai_beta_header_and_beta_models_are_refused() {
    let sim = start(oa_cfg()).await;
    let auth = format!("Bearer {KEY}");
    let cases = [
        (
            format!("{}?model=gpt-realtime", sim.url()),
            vec![
                ("Authorization", auth.as_str()),
                ("OpenAI-Beta", "realtime=v1"),
            ],
        ),
        (
            format!("{}?model=gpt-4o-realtime-preview-2024-12-17", sim.url()),
            vec![("Authorization", auth.as_str())],
        ),
        (sim.url(), vec![("Authorization", auth.as_str())]),
    ];
    for (url, headers) in cases {
        let mut c = connect(&url, &headers).await.expect("upgrade");
        match c.next().await {
            Got::Json(v) => {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "invalid_request_error");
            }
            other => panic!("expected an error event, got {other:?}"),
        }
        assert!(matches!(c.next().await, Got::Close(Some(1008))));
    }
    let stats = sim.stop().await;
    assert_eq!(stats.violations.len(), 3, "{:?}", stats.violations);
    assert!(stats.violations[..]
        .iter()
        .any(|v| v.contains("OpenAI-Beta")));
    assert!(stats.violations.iter().any(|v| v.contains("beta model")));
    assert!(stats.violations.iter().any(|v| v.contains("model")));
}

/// Send `ev`, expect an `invalid_request_error` with `code`.
async fn oa_expect_error(c: &mut Client, ev: Value, code: &str) {
    c.send(ev).await;
    let evs = c.until("error").await;
    let e = &evs.last().unwrap()["error"];
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], code, "{e}");
}

#[tokio::test]
async fn openai_protocol_violations_are_detected() {
    let sim = start(oa_cfg()).await;
    let mut c = oa_connect(&sim).await;
    // The beta session shape.
    oa_expect_error(
        &mut c,
        json!({"type": "session.update", "session": {"modalities": ["audio", "text"],
            "input_audio_format": "g711_ulaw", "voice": "alloy"}}),
        "unknown_parameter",
    )
    .await;
    oa_expect_error(
        &mut c,
        json!({"type": "session.update", "session": {"instructions": "x"}}),
        "missing_required_parameter",
    )
    .await;
    // Bad base64, odd PCM16 length.
    oa_expect_error(
        &mut c,
        json!({"type": "input_audio_buffer.append", "audio": "not base64!!"}),
        "invalid_value",
    )
    .await;
    oa_expect_error(
        &mut c,
        json!({"type": "input_audio_buffer.append", "audio": B64.encode([1u8, 2, 3])}),
        "invalid_value",
    )
    .await;
    // Unknown event, beta content type, not JSON.
    oa_expect_error(
        &mut c,
        json!({"type": "session.frobnicate"}),
        "invalid_value",
    )
    .await;
    oa_expect_error(
        &mut c,
        json!({"type": "conversation.item.create", "item": {"type": "message",
            "role": "assistant", "content": [{"type": "text", "text": "hi"}]}}),
        "invalid_value",
    )
    .await;
    c.ws.send(Message::Text("{not json".into())).await.unwrap();
    c.until("error").await;
    // Truncation: unknown item, then beyond the audio sent.
    oa_expect_error(
        &mut c,
        json!({"type": "conversation.item.truncate", "item_id": "item_nope",
            "content_index": 0, "audio_end_ms": 10}),
        "invalid_value",
    )
    .await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("response.done").await;
    let item_id = evs.last().unwrap()["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Default format: PCM 24 kHz, 48 bytes per ms; greeting_ms of audio was sent.
    assert_eq!(delta_bytes(&evs), 500 * 48);
    oa_expect_error(
        &mut c,
        json!({"type": "conversation.item.truncate", "item_id": item_id,
            "content_index": 0, "audio_end_ms": 1500}),
        "invalid_value",
    )
    .await;
    // A valid truncation is answered and counted.
    c.send(
        json!({"type": "conversation.item.truncate", "item_id": item_id,
        "content_index": 0, "audio_end_ms": 300}),
    )
    .await;
    let evs = c.until("conversation.item.truncated").await;
    assert_eq!(evs.last().unwrap()["audio_end_ms"], 300);
    let stats = sim.stop().await;
    assert_eq!(stats.truncates, 1);
    let v = &stats.violations;
    assert_eq!(v.len(), 9, "{v:#?}");
    for needle in [
        "unknown_parameter",
        "missing_required_parameter",
        "invalid base64",
        "16-bit",
        "unknown client event type `session.frobnicate`",
        "'text'",
        "not JSON",
        "unknown item",
        "only 500 ms of audio sent",
    ] {
        assert!(v.iter().any(|x| x.contains(needle)), "{needle}: {v:#?}");
    }
    assert!(v.iter().all(|x| x.starts_with("conn 1: ")));
}

#[tokio::test]
async fn openai_barge_in_cancels_the_response() {
    let mut cfg = oa_cfg();
    cfg.reply_ms = 4000;
    cfg.chunk_ms = 100;
    cfg.burst_interval_ms = 100; // a reply that takes a while to arrive
    let sim = start(cfg).await;
    let mut c = oa_session(&sim).await;
    oa_append(&mut c, &tone(800, 8000)).await;
    oa_append(&mut c, &silence(700, 8000)).await;
    c.until("response.output_audio.delta").await;
    // Talk over the reply.
    oa_append(&mut c, &tone(600, 8000)).await;
    oa_append(&mut c, &silence(100, 8000)).await;
    let evs = c.until("response.done").await;
    let ss = pos(&evs, "input_audio_buffer.speech_started");
    let done = evs.last().unwrap();
    assert!(ss < evs.len() - 1);
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "turn_detected"
    );
    let item_id = done["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Truncate to what was heard (here: nothing beyond the first delta).
    c.send(
        json!({"type": "conversation.item.truncate", "item_id": item_id,
        "content_index": 0, "audio_end_ms": 100}),
    )
    .await;
    c.until("conversation.item.truncated").await;
    // The interruption is a turn of its own: a full reply follows.
    let evs = c.until("response.done").await;
    assert_eq!(evs.last().unwrap()["response"]["status"], "completed");
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.barge_ins, 1);
    assert_eq!(stats.turns, 2);
}

#[tokio::test]
async fn openai_client_cancel_and_manual_turns() {
    let mut cfg = oa_cfg();
    cfg.reply_ms = 3000;
    cfg.burst_interval_ms = 100; // the cancel arrives long before the reply's end
    let sim = start(cfg).await;
    let mut c = oa_connect(&sim).await;
    c.send(
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": null}}}}),
    )
    .await;
    c.until("session.updated").await;
    // Manual turn: no VAD events; commit, then ask for the response.
    let pcm = tone(500, 24000);
    for chunk in pcm.chunks(2400) {
        c.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(le16(chunk))}))
            .await;
    }
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let evs = c.until("conversation.item.done").await;
    assert!(!types(&evs).iter().any(|t| t.contains("speech_started")));
    c.send(json!({"type": "response.create"})).await;
    c.until("response.output_audio.delta").await;
    c.send(json!({"type": "response.cancel"})).await;
    let evs = c.until("response.done").await;
    let r = &evs.last().unwrap()["response"];
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["status_details"]["reason"], "client_cancelled");
    // Cancelling again: an error, but no violation (a cancel may race the end).
    c.send(json!({"type": "response.cancel"})).await;
    let evs = c.until("error").await;
    assert_eq!(
        evs.last().unwrap()["error"]["code"],
        "response_cancel_not_active"
    );
    // Committing an empty buffer in manual mode is a client bug.
    oa_expect_error(
        &mut c,
        json!({"type": "input_audio_buffer.commit"}),
        "input_audio_buffer_commit_empty",
    )
    .await;
    let stats = sim.stop().await;
    assert_eq!(stats.violations.len(), 1, "{:?}", stats.violations);
    assert_eq!(stats.turns, 1);
}

// ---- faults (OpenAI) -----------------------------------------------------------

async fn oa_fault_session(fault: Fault, after_ms: u32) -> (ProviderSim, Client) {
    let mut cfg = oa_cfg();
    cfg.fault = Some(fault);
    cfg.fault_after_ms = after_ms;
    cfg.reply_ms = 3000;
    cfg.burst_interval_ms = 50;
    let sim = start(cfg).await;
    let c = oa_connect(&sim).await;
    (sim, c)
}

/// Ask for a reply and read until something other than JSON shows up.
async fn oa_reply_until_odd(c: &mut Client) -> (Vec<Value>, Got) {
    c.send(json!({"type": "response.create"})).await;
    let mut seen = Vec::new();
    loop {
        match c.next().await {
            Got::Json(v) => {
                let end = v["type"] == "rate_limits.updated";
                seen.push(v);
                assert!(!end, "reply ended without the fault: {:?}", types(&seen));
            }
            other => return (seen, other),
        }
    }
}

#[tokio::test]
async fn fault_close_mid_response_drops_without_close_frame() {
    let (sim, mut c) = oa_fault_session(Fault::CloseMidResponse, 100).await;
    let (seen, got) = oa_reply_until_odd(&mut c).await;
    assert!(matches!(got, Got::Broken(_)), "{got:?}");
    assert!(types(&seen).contains(&"response.output_audio.delta".to_string()));
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 1);
}

#[tokio::test]
async fn fault_malformed_json_and_oversize() {
    let (sim, mut c) = oa_fault_session(Fault::MalformedJson, 100).await;
    let (_, got) = oa_reply_until_odd(&mut c).await;
    assert!(matches!(got, Got::NotJson(..)), "{got:?}");
    // The session goes on after the garbage.
    c.until("response.done").await;
    sim.set_fault(Some(Fault::Oversize));
    let mut c2 = oa_connect(&sim).await;
    c2.send(json!({"type": "response.create"})).await;
    loop {
        match c2.next().await {
            Got::Json(v) if v.to_string().len() >= 8 << 20 => break,
            Got::Json(v) => assert_ne!(v["type"], "response.done", "no oversize message"),
            other => panic!("{other:?}"),
        }
    }
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 2);
}

#[tokio::test]
async fn fault_error_events() {
    let (sim, mut c) = oa_fault_session(Fault::ErrorEvent { fatal: true }, 100).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("error").await;
    assert_eq!(evs.last().unwrap()["error"]["code"], "session_expired");
    loop {
        match c.next().await {
            Got::Json(_) => {}
            Got::Close(code) => {
                assert_eq!(code, Some(u16::from(CloseCode::Normal)));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    sim.set_fault(Some(Fault::ErrorEvent { fatal: false }));
    let mut c = oa_connect(&sim).await;
    c.send(json!({"type": "response.create"})).await;
    let evs = c.until("error").await;
    assert_eq!(evs.last().unwrap()["error"]["type"], "server_error");
    // Non-fatal: the response completes.
    let evs = c.until("response.done").await;
    assert_eq!(evs.last().unwrap()["response"]["status"], "completed");
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 2);
}

#[tokio::test]
async fn fault_stall_keeps_reading_but_sends_nothing() {
    let (sim, mut c) = oa_fault_session(Fault::Stall, 0).await;
    c.send(oa_update_pcmu()).await;
    for _ in 0..5 {
        c.send(json!({"type": "input_audio_buffer.append", "audio": B64.encode(ulaw(&tone(100, 8000)))}))
            .await;
    }
    // The simulator reads everything ...
    let deadline = Instant::now() + DEADLINE;
    while sim
        .stats()
        .messages_in
        .get("input_audio_buffer.append")
        .copied()
        .unwrap_or(0)
        < 5
    {
        assert!(
            Instant::now() < deadline,
            "the stalled simulator stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... answers nothing, and keeps the socket open.
    assert!(matches!(
        c.next_within(Duration::from_millis(700)).await,
        Got::Quiet
    ));
    c.send(json!({"type": "response.create"})).await;
    assert!(matches!(
        c.next_within(Duration::from_millis(300)).await,
        Got::Quiet
    ));
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 1);
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
}

#[tokio::test]
async fn fault_slow_read_backs_up_the_client() {
    let (sim, mut c) = oa_fault_session(Fault::SlowRead, 0).await;
    let frame = json!({"type": "input_audio_buffer.append",
        "audio": B64.encode(le16(&tone(1000, 24000)))})
    .to_string();
    let mut sent = 0usize;
    let blocked = loop {
        let send = c.ws.send(Message::Text(frame.clone()));
        match timeout(Duration::from_secs(2), send).await {
            Err(_) => break true,
            Ok(r) => r.expect("send"),
        }
        sent += frame.len();
        if sent > 512 << 20 {
            break false;
        }
    };
    assert!(
        blocked,
        "the client's writes never backed up ({sent} bytes sent)"
    );
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 1);
}

// ---- Deepgram Voice Agent --------------------------------------------------------

const DG_KEY: &str = "dg-sim-test";

fn dg_cfg() -> ProviderSimConfig {
    ProviderSimConfig {
        api_key: Some(DG_KEY.into()),
        think_ms: 100,
        reply_ms: 800,
        chunk_ms: 40,
        burst_interval_ms: 5,
        greeting_ms: 400,
        ..ProviderSimConfig::for_protocol(SimProtocol::Deepgram)
    }
}

async fn dg_connect(sim: &ProviderSim) -> Client {
    let auth = format!("Token {DG_KEY}");
    let mut c = connect(&sim.url(), &[("Authorization", &auth)])
        .await
        .expect("connect");
    match c.next().await {
        Got::Json(v) => {
            assert_eq!(v["type"], "Welcome");
            assert_eq!(v["request_id"].as_str().unwrap().len(), 36);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    c
}

fn dg_settings(greeting: Option<&str>) -> Value {
    let mut v = json!({
        "type": "Settings",
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}
        },
        "agent": {
            "language": "en",
            "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
            "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."},
            "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
        }
    });
    if let Some(g) = greeting {
        v["agent"]["greeting"] = json!(g);
    }
    v
}

/// Send `pcm` as 20 ms mu-law binary frames.
async fn dg_audio(c: &mut Client, pcm: &[i16]) {
    for chunk in pcm.chunks(160) {
        c.send_bin(ulaw(chunk)).await;
    }
}

fn bin_bytes(evs: &[Value]) -> u64 {
    evs.iter().filter_map(|v| v["binary"].as_u64()).sum()
}

async fn dg_expect_fatal(c: &mut Client, code: &str) {
    loop {
        match c.next().await {
            Got::Json(v) if v["type"] == "Error" => {
                assert_eq!(v["code"], code, "{v}");
                break;
            }
            Got::Json(_) | Got::Bin(_) => {}
            other => panic!("expected Error {code}, got {other:?}"),
        }
    }
    assert!(matches!(c.next().await, Got::Close(Some(_))));
}

#[tokio::test]
async fn deepgram_greeting_and_full_turn_without_violations() {
    let sim = start(dg_cfg()).await;
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(Some("Hello, how can I help?"))).await;
    let evs = c.until("AgentAudioDone").await;
    assert_eq!(
        types(&evs)[..3],
        ["SettingsApplied", "AgentStartedSpeaking", "binary"]
    );
    assert_eq!(bin_bytes(&evs), 400 * 8, "greeting_ms of mu-law");
    let said = &evs[evs.len() - 2];
    assert_eq!(said["type"], "ConversationText");
    assert_eq!(said["role"], "assistant");
    assert_eq!(said["content"], "Hello, how can I help?");
    c.send(json!({"type": "KeepAlive"})).await;
    dg_audio(&mut c, &tone(1000, 8000)).await;
    dg_audio(&mut c, &silence(1000, 8000)).await;
    let evs = c.until("AgentAudioDone").await;
    let order = [
        "UserStartedSpeaking",
        "ConversationText",
        "AgentThinking",
        "AgentStartedSpeaking",
        "binary",
    ];
    let at: Vec<usize> = order.iter().map(|t| pos(&evs, t)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{:?}", types(&evs));
    assert_eq!(evs[at[1]]["role"], "user");
    let started = &evs[at[3]];
    for k in ["total_latency", "tts_latency", "ttt_latency"] {
        assert!(started[k].is_number(), "{k} in {started}");
    }
    assert_eq!(bin_bytes(&evs), 800 * 8);
    let said = &evs[evs.len() - 2];
    assert_eq!(
        (said["type"].as_str(), said["role"].as_str()),
        (Some("ConversationText"), Some("assistant"))
    );
    drop(c);
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.turns, 1);
    assert_eq!(stats.audio_bytes_out, 1200 * 8);
    assert_eq!(stats.audio_bytes_in, 16_000);
    assert_eq!(stats.openings[0][..3], ["Settings", "KeepAlive", "binary"]);
    assert_eq!(stats.messages_in["binary"], 100);
}

#[tokio::test]
async fn deepgram_keys_header_subprotocol_and_401() {
    let sim = start(dg_cfg()).await;
    match connect(&sim.url(), &[("Authorization", "Token wrong")]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    match connect(
        &sim.url(),
        &[("Authorization", &format!("Bearer {DG_KEY}"))],
    )
    .await
    {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // The browser-style subprotocol credential.
    let proto = format!("token, {DG_KEY}");
    let mut c = connect(&sim.url(), &[("Sec-WebSocket-Protocol", &proto)])
        .await
        .expect("subprotocol auth");
    assert!(matches!(c.next().await, Got::Json(v) if v["type"] == "Welcome"));
    // The early-access endpoint is gone.
    let ea = sim.url().replace("/v1/agent/converse", "/agent");
    let auth = format!("Token {DG_KEY}");
    match connect(&ea, &[("Authorization", &auth)]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    let stats = sim.stop().await;
    assert_eq!(stats.auth_failures, 2);
    assert_eq!(stats.violations.len(), 1, "{:?}", stats.violations);
    assert!(stats.violations[0].contains("early-access endpoint"));
}

#[tokio::test]
async fn deepgram_protocol_violations_are_fatal_errors() {
    let sim = start(dg_cfg()).await;
    // Audio before Settings.
    let mut c = dg_connect(&sim).await;
    dg_audio(&mut c, &tone(40, 8000)).await;
    dg_expect_fatal(&mut c, "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS").await;
    // KeepAlive before Settings.
    let mut c = dg_connect(&sim).await;
    c.send(json!({"type": "KeepAlive"})).await;
    dg_expect_fatal(&mut c, "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS").await;
    // The early-access settings message.
    let mut c = dg_connect(&sim).await;
    let mut ea = dg_settings(None);
    ea["type"] = json!("SettingsConfiguration");
    c.send(ea).await;
    dg_expect_fatal(&mut c, "UNPARSABLE_CLIENT_MESSAGE").await;
    // Invalid settings.
    let mut c = dg_connect(&sim).await;
    let mut bad = dg_settings(None);
    bad["audio"]["output"]["container"] = json!("wav");
    c.send(bad).await;
    dg_expect_fatal(&mut c, "INVALID_SETTINGS").await;
    // Settings twice.
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(None)).await;
    c.until("SettingsApplied").await;
    c.send(dg_settings(None)).await;
    dg_expect_fatal(&mut c, "SETTINGS_ALREADY_APPLIED").await;
    // Unknown message type, and not JSON.
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(None)).await;
    c.until("SettingsApplied").await;
    c.send(json!({"type": "Frobnicate"})).await;
    dg_expect_fatal(&mut c, "UNPARSABLE_CLIENT_MESSAGE").await;
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(None)).await;
    c.until("SettingsApplied").await;
    c.ws.send(Message::Text("{oops".into())).await.unwrap();
    dg_expect_fatal(&mut c, "UNPARSABLE_CLIENT_MESSAGE").await;
    let stats = sim.stop().await;
    let v = &stats.violations;
    assert_eq!(v.len(), 7, "{v:#?}");
    for needle in [
        "before SettingsApplied",
        "`KeepAlive` arrived before Settings",
        "early-access message",
        "container",
        "SETTINGS_ALREADY_APPLIED",
        "unknown message type `Frobnicate`",
        "not JSON",
    ] {
        assert!(v.iter().any(|x| x.contains(needle)), "{needle}: {v:#?}");
    }
}

#[tokio::test]
async fn deepgram_barge_in_stops_the_reply() {
    let mut cfg = dg_cfg();
    cfg.reply_ms = 4000;
    cfg.chunk_ms = 100;
    cfg.burst_interval_ms = 100;
    let sim = start(cfg).await;
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(None)).await;
    c.until("SettingsApplied").await;
    dg_audio(&mut c, &tone(800, 8000)).await;
    dg_audio(&mut c, &silence(700, 8000)).await;
    let first = c.until("AgentStartedSpeaking").await;
    assert!(types(&first).contains(&"UserStartedSpeaking".to_string()));
    // Talk over the reply once its audio flows.
    let mut evs = match c.next().await {
        Got::Bin(b) => vec![json!({"binary": b.len()})],
        other => panic!("expected reply audio, got {other:?}"),
    };
    dg_audio(&mut c, &tone(600, 8000)).await;
    evs.extend(c.until("AgentAudioDone").await);
    let ss = pos(&evs, "UserStartedSpeaking");
    let next_reply = pos(&evs, "AgentStartedSpeaking");
    assert!(ss < next_reply);
    // Nothing of the cut reply after UserStartedSpeaking; its audio is short.
    assert!(!types(&evs[ss..next_reply]).contains(&"binary".to_string()));
    assert!(bin_bytes(&evs[..ss]) < 4000 * 8);
    assert!(!types(&evs[..ss]).contains(&"AgentAudioDone".to_string()));
    // The interruption got a full reply.
    assert_eq!(bin_bytes(&evs[next_reply..]), 4000 * 8);
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.barge_ins, 1);
    assert_eq!(stats.turns, 2);
}

#[tokio::test]
async fn deepgram_idle_close_and_keepalive() {
    let mut cfg = dg_cfg();
    cfg.idle_close_ms = 1000;
    let sim = start(cfg).await;
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(None)).await;
    c.until("SettingsApplied").await;
    // KeepAlives every 100 ms keep the session open ...
    for _ in 0..15 {
        c.send(json!({"type": "KeepAlive"})).await;
        assert!(matches!(
            c.next_within(Duration::from_millis(100)).await,
            Got::Quiet
        ));
    }
    // ... silence closes it like the service does.
    dg_expect_fatal(&mut c, "CLIENT_MESSAGE_TIMEOUT").await;
    let stats = sim.stop().await;
    assert_eq!(stats.messages_in["KeepAlive"], 15);
    assert_eq!(stats.violations.len(), 1, "{:?}", stats.violations);
    assert!(stats.violations[0].contains("KeepAlive"));
}

#[tokio::test]
async fn deepgram_faults_error_and_warning() {
    let mut cfg = dg_cfg();
    cfg.fault = Some(Fault::ErrorEvent { fatal: false });
    cfg.fault_after_ms = 50;
    cfg.reply_ms = 2000;
    cfg.burst_interval_ms = 50;
    let sim = start(cfg).await;
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(Some("Hi"))).await;
    let evs = c.until("Warning").await;
    assert!(evs.last().unwrap()["code"].is_string());
    // Non-fatal: the greeting completes.
    c.until("AgentAudioDone").await;
    sim.set_fault(Some(Fault::ErrorEvent { fatal: true }));
    let mut c = dg_connect(&sim).await;
    c.send(dg_settings(Some("Hi"))).await;
    dg_expect_fatal(&mut c, "INTERNAL_SERVER_ERROR").await;
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 2);
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
}

// ---- local-ai-server ---------------------------------------------------------------

fn local_cfg() -> ProviderSimConfig {
    ProviderSimConfig {
        think_ms: 100,
        reply_ms: 800,
        greeting_ms: 600,
        ..ProviderSimConfig::for_protocol(SimProtocol::Local)
    }
}

/// `pcm` (16 kHz) as base64 `audio` messages of 100 ms.
async fn local_audio(c: &mut Client, pcm: &[i16], request_id: &str) {
    for chunk in pcm.chunks(1600) {
        c.send(
            json!({"type": "audio", "data": B64.encode(le16(chunk)), "rate": 16000,
            "format": "pcm16le", "call_id": "call-1", "request_id": request_id}),
        )
        .await;
    }
}

/// Round-trip a `status` so everything sent before it has been processed.
async fn local_sync(c: &mut Client) -> Vec<Value> {
    c.send(json!({"type": "status"})).await;
    c.until("status_response").await
}

#[tokio::test]
async fn local_full_pipeline_turn_without_violations() {
    let sim = start(local_cfg()).await;
    assert!(!sim.url().contains("/v1"));
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    c.send(json!({"type": "set_mode", "mode": "full", "call_id": "call-1"}))
        .await;
    let evs = c.until("mode_ready").await;
    assert_eq!(evs[0]["mode"], "full");
    assert_eq!(evs[0]["call_id"], "call-1");
    // Greeting through TTS.
    c.send(
        json!({"type": "tts_request", "text": "Hello!", "call_id": "call-1", "request_id": "g1"}),
    )
    .await;
    let evs = c.until("tts_response").await;
    let tts = evs.last().unwrap();
    assert_eq!(tts["encoding"], "mulaw");
    assert_eq!(tts["sample_rate_hz"], 8000);
    assert_eq!(tts["request_id"], "g1");
    let audio = B64.decode(tts["audio_data"].as_str().unwrap()).unwrap();
    assert_eq!(audio.len(), 600 * 8);
    assert_eq!(tts["byte_length"], audio.len());
    // A caller turn.
    local_audio(&mut c, &tone(1000, 16000), "r1").await;
    local_audio(&mut c, &silence(1000, 16000), "r1").await;
    let evs = c.until("tts_audio").await;
    let partial = &evs[pos(&evs, "stt_result")];
    assert_eq!(
        (
            partial["is_final"].as_bool(),
            partial["is_partial"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let finals: Vec<&Value> = evs
        .iter()
        .filter(|v| v["type"] == "stt_result" && v["is_final"] == true)
        .collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0]["call_id"], "call-1");
    let llm = &evs[pos(&evs, "llm_response")];
    assert_eq!(llm["mode"], "llm");
    assert_eq!(llm["request_id"], "r1");
    let meta = evs.last().unwrap();
    assert_eq!(meta["encoding"], "mulaw");
    assert_eq!(meta["byte_length"], 800 * 8);
    // The reply arrives whole, as one binary message.
    match c.next().await {
        Got::Bin(b) => assert_eq!(b.len(), 800 * 8),
        other => panic!("expected the reply audio, got {other:?}"),
    }
    drop(c);
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.turns, 1);
    assert_eq!(stats.audio_bytes_out, 1400 * 8);
    assert_eq!(stats.audio_bytes_in, 64_000);
    assert_eq!(stats.openings[0][..3], ["set_mode", "tts_request", "audio"]);
}

#[tokio::test]
async fn local_stt_mode_binary_audio_and_8k_rate() {
    let sim = start(local_cfg()).await;
    let mut c = connect(&format!("{}/any/path", sim.url()), &[])
        .await
        .expect("connect");
    c.send(json!({"type": "set_mode", "mode": "stt", "call_id": "c2"}))
        .await;
    c.until("mode_ready").await;
    // Raw binary PCM16 at 16 kHz.
    for chunk in tone(1000, 16000).chunks(320) {
        c.send_bin(le16(chunk)).await;
    }
    for chunk in silence(1000, 16000).chunks(320) {
        c.send_bin(le16(chunk)).await;
    }
    let evs = c.until("stt_result").await;
    assert_eq!(evs.last().unwrap()["is_partial"], true);
    let evs = c.until("stt_result").await;
    assert_eq!(evs.last().unwrap()["is_final"], true);
    // STT mode: no LLM, no audio.
    let evs = local_sync(&mut c).await;
    assert_eq!(types(&evs), ["status_response"]);
    // An audio message at 8 kHz is resampled to the STT rate.
    c.send(json!({"type": "set_mode", "mode": "full"})).await;
    c.until("mode_ready").await;
    for chunk in tone(1000, 8000).chunks(800) {
        c.send(json!({"type": "audio", "data": B64.encode(le16(chunk)), "rate": 8000}))
            .await;
    }
    for chunk in silence(1000, 8000).chunks(800) {
        c.send(json!({"type": "audio", "data": B64.encode(le16(chunk)), "rate": 8000}))
            .await;
    }
    let evs = c.until("llm_response").await;
    assert!(types(&evs).contains(&"stt_result".to_string()));
    // No request_id: no tts_audio metadata, just the audio.
    assert!(matches!(c.next().await, Got::Bin(b) if b.len() == 800 * 8));
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.turns, 2);
}

#[tokio::test]
async fn local_auth_token() {
    let mut cfg = local_cfg();
    cfg.api_key = Some("local-secret".into());
    let sim = start(cfg).await;
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    // Anything before auth is refused (and dropped).
    c.send_bin(le16(&tone(20, 16000))).await;
    let evs = c.until("auth_response").await;
    assert_eq!(evs[0]["status"], "error");
    assert_eq!(evs[0]["message"], "authentication_required");
    c.send(json!({"type": "auth", "auth_token": "wrong"})).await;
    let evs = c.until("auth_response").await;
    assert_eq!(evs[0]["message"], "invalid_auth_token");
    c.send(json!({"type": "auth", "token": "local-secret", "call_id": "c3"}))
        .await;
    let evs = c.until("auth_response").await;
    assert_eq!(evs[0]["status"], "ok");
    let evs = local_sync(&mut c).await;
    assert_eq!(evs[0]["stt_backend"], "vosk");
    let stats = sim.stop().await;
    assert_eq!(stats.auth_failures, 1);
    assert_eq!(stats.audio_bytes_in, 0, "audio before auth is dropped");
    assert_eq!(stats.violations.len(), 1, "{:?}", stats.violations);
    assert!(stats.violations[0].contains("before authenticating"));
}

#[tokio::test]
async fn local_ignored_messages_are_violations() {
    let sim = start(local_cfg()).await;
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    c.ws.send(Message::Text("not json".into())).await.unwrap();
    c.send(json!({"mode": "full"})).await;
    c.send(json!({"type": "audio", "data": "%%%", "rate": 16000}))
        .await;
    c.send(json!({"type": "audio", "data": B64.encode([1u8, 2, 3]), "rate": 16000}))
        .await;
    c.send(json!({"type": "audio", "data": B64.encode([0u8; 64]), "rate": 11025}))
        .await;
    c.send(json!({"type": "audio", "data": B64.encode([0u8; 64]), "format": "ulaw"}))
        .await;
    c.send(json!({"type": "tts_request", "text": "  "})).await;
    // The reference answers none of these: the next thing on the wire is the status.
    let evs = local_sync(&mut c).await;
    assert_eq!(types(&evs), ["status_response"]);
    let stats = sim.stop().await;
    let v = &stats.violations;
    assert_eq!(v.len(), 7, "{v:#?}");
    for needle in [
        "not JSON",
        "without `type`",
        "base64",
        "whole number of PCM16 samples",
        "11025 Hz",
        "`format`",
        "tts_request without `text`",
    ] {
        assert!(v.iter().any(|x| x.contains(needle)), "{needle}: {v:#?}");
    }
}

#[tokio::test]
async fn local_caller_over_the_reply_is_heard() {
    let mut cfg = local_cfg();
    cfg.reply_ms = 3000;
    let sim = start(cfg).await;
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    local_audio(&mut c, &tone(800, 16000), "r1").await;
    local_audio(&mut c, &silence(700, 16000), "r1").await;
    c.until("tts_audio").await;
    assert!(matches!(c.next().await, Got::Bin(_)));
    // The caller talks while the engine plays the reply: the server hears it (a new
    // partial) and answers the new turn; the reply already sent cannot be recalled.
    local_audio(&mut c, &tone(600, 16000), "r2").await;
    local_audio(&mut c, &silence(600, 16000), "r2").await;
    let evs = c.until("tts_audio").await;
    let p = pos(&evs, "stt_result");
    assert_eq!(evs[p]["is_partial"], true);
    assert_eq!(evs[p]["request_id"], "r2");
    assert!(matches!(c.next().await, Got::Bin(b) if b.len() == 3000 * 8));
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.barge_ins, 1);
    assert_eq!(stats.turns, 2);
}

#[tokio::test]
async fn local_fatal_error_fault() {
    let mut cfg = local_cfg();
    cfg.fault = Some(Fault::ErrorEvent { fatal: true });
    cfg.fault_after_ms = 50;
    let sim = start(cfg).await;
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    local_audio(&mut c, &tone(800, 16000), "r1").await;
    local_audio(&mut c, &silence(700, 16000), "r1").await;
    let evs = c.until("error").await;
    let e = evs.last().unwrap();
    assert_eq!(e["details"]["error_type"], "processing_error");
    loop {
        match c.next().await {
            Got::Close(code) => {
                assert_eq!(code, Some(1011));
                break;
            }
            Got::Bin(_) | Got::Json(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let stats = sim.stop().await;
    assert_eq!(stats.faults_injected, 1);
}

#[tokio::test]
async fn local_barge_in_is_acknowledged_like_the_reference() {
    let sim = start(local_cfg()).await;
    let mut c = connect(&sim.url(), &[]).await.expect("connect");
    c.send(json!({"type": "barge_in", "call_id": "c9", "request_id": "r1"}))
        .await;
    let evs = local_sync(&mut c).await;
    assert_eq!(types(&evs), ["barge_in_ack", "status_response"]);
    assert_eq!(evs[0]["status"], "ok");
    assert_eq!(evs[0]["call_id"], "c9");
    assert_eq!(evs[0]["request_id"], "r1");
    let stats = sim.stop().await;
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
}
