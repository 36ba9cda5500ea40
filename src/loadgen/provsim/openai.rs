//! The OpenAI Realtime (GA) simulator: `GET /v1/realtime?model=...` with
//! `Authorization: Bearer <key>`, `session.created` first, then the GA event flow
//! of a server-VAD voice session.
//!
//! Owns: one session per connection: the handshake checks (path, key, a model that
//! is not a `*preview*` beta model, no `OpenAI-Beta: realtime=v1` header), the
//! client events (`session.update`, `input_audio_buffer.append/commit/clear`,
//! `response.create/cancel`, `conversation.item.create/truncate/delete/retrieve`),
//! and the server events a real session sends around each turn:
//! `input_audio_buffer.speech_started` / `speech_stopped` / `committed`,
//! `conversation.item.added` / `done`,
//! `conversation.item.input_audio_transcription.completed` (when transcription is
//! configured), `response.created`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_audio.delta`,
//! `response.output_audio_transcript.delta`, `response.output_audio.done`,
//! `response.output_audio_transcript.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.done` (`completed` or `cancelled`) and
//! `rate_limits.updated`. A caller talking over a response (with
//! `interrupt_response`) gets `speech_started` and the response is cancelled.
//!
//! Must not: accept what the GA service refuses: every client mistake is an
//! `error` event of type `invalid_request_error` and a recorded violation (the
//! retired beta interface and a missing model also close the connection).
//! Deliberate difference: `response.created` is sent when the reply's audio starts
//! (after the think time), not at the end of the caller's turn.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::brain::{self, Brain, BrainConfig, BrainEvent};
use super::common::{Conn, FaultStyle, Flow, Gone, Handshake, Ids, Input, Verdict};
use super::openai_session::{check_item, check_response, ApiError, ItemRole, SessionCfg};
use crate::call::Codec;
use crate::provider::sim::agent::mix_seed;

/// The realtime endpoint's path.
pub(crate) const PATH: &str = "/v1/realtime";
/// Largest audio one `input_audio_buffer.append` may carry (ms): a real-time
/// client sends 20-100 ms; more than this is a broken client.
const MAX_APPEND_MS: u64 = 10_000;
/// Audio a commit needs at least (ms), like the real service.
const MIN_COMMIT_MS: u64 = 100;
/// Conversation items remembered (for truncate / delete / retrieve).
const MAX_ITEMS: usize = 512;

/// The OpenAI faults on the wire.
const STYLE: FaultStyle = FaultStyle {
    error: fault_error,
    fatal_close: 1000,
    big_type: "response.output_audio.delta",
    big_field: "delta",
};

fn fault_error(fatal: bool) -> Value {
    if fatal {
        json!({
            "type": "error",
            "event_id": "event_simfault",
            "error": {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.",
                "param": null,
                "event_id": null
            }
        })
    } else {
        json!({
            "type": "error",
            "event_id": "event_simfault",
            "error": {
                "type": "server_error",
                "code": null,
                "message": "The server had an error while processing your request. Sorry about that!",
                "param": null,
                "event_id": null
            }
        })
    }
}

fn error_body(message: &str, code: Option<&str>) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}})
        .to_string()
}

/// Decide on an upgrade request: the path must be `/v1/realtime` (404 otherwise,
/// a violation) and, with a key configured, `Authorization: Bearer <key>` must
/// match (401 otherwise, an auth failure).
pub(crate) fn handshake(hs: &Handshake, key: Option<&str>) -> Verdict {
    if hs.path != PATH {
        return Verdict::Refuse {
            status: 404,
            body: error_body(&format!("Invalid URL (GET {})", hs.path), None),
            auth_failure: false,
            violation: Some(format!("upgrade on path `{}`, not `{PATH}`", hs.path)),
        };
    }
    if let Some(key) = key {
        let ok = hs
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| k.trim() == key);
        if !ok {
            let message = if hs.header("authorization").is_some() {
                "Incorrect API key provided."
            } else {
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth."
            };
            return Verdict::Refuse {
                status: 401,
                body: error_body(message, Some("invalid_api_key")),
                auth_failure: true,
                violation: None,
            };
        }
    }
    Verdict::Accept { subprotocol: None }
}

/// A conversation item the server knows about.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    role: ItemRole,
    /// Assistant audio produced for it (ms); truncation may not go past it.
    audio_ms: u64,
    has_audio: bool,
    json: Value,
}

/// The response being produced.
#[derive(Debug, Clone)]
struct Resp {
    id: String,
    item_id: String,
    transcript: String,
    audio_bytes: u64,
    deltas: u64,
    audio_done: bool,
    cancel_reason: Option<&'static str>,
}

/// One OpenAI session.
struct Session {
    conn: Conn,
    ids: Ids,
    s: SessionCfg,
    brain: Brain,
    expires_at: u64,
    conversation_id: String,
    buffer_bytes: u64,
    items: VecDeque<Item>,
    user_item: Option<String>,
    resp: Option<Resp>,
    replies: u64,
    user_turns: u64,
    pcm: Vec<i16>,
}

/// Run an accepted connection to its end.
pub(crate) async fn run(mut conn: Conn) {
    let mut ids = Ids::new(mix_seed(conn.cfg().seed, conn.no));
    let Some(model) = opening_checks(&mut conn, &mut ids).await else {
        return;
    };
    let s = SessionCfg::new(ids.next("sess_"), model);
    let brain = new_brain(&conn, &s);
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let mut sess = Session {
        conversation_id: ids.next("conv_"),
        conn,
        ids,
        s,
        brain,
        expires_at,
        buffer_bytes: 0,
        items: VecDeque::new(),
        user_item: None,
        resp: None,
        replies: 0,
        user_turns: 0,
        pcm: Vec::new(),
    };
    let _ = sess.run().await;
}

/// The checks a real GA endpoint makes before `session.created`: the retired beta
/// header and a usable model. Returns the model, or `None` after an error and a
/// close.
async fn opening_checks(conn: &mut Conn, ids: &mut Ids) -> Option<String> {
    let problem = if conn
        .hs
        .header("openai-beta")
        .is_some_and(|b| b.contains("realtime"))
    {
        Some((
            "beta_api_retired",
            "The Realtime API beta (OpenAI-Beta: realtime=v1) has been retired; use the GA interface without the OpenAI-Beta header.".to_string(),
            "`OpenAI-Beta: realtime=v1` header (the retired beta interface)".to_string(),
        ))
    } else {
        match conn.hs.query_value("model") {
            None | Some("") => Some((
                "missing_required_parameter",
                "Missing required parameter: 'model'.".to_string(),
                "no `model` query parameter".to_string(),
            )),
            Some(m) if m.contains("preview") => Some((
                "model_not_found",
                format!("The model `{m}` is a Realtime beta model and is not available on the GA interface; use e.g. `gpt-realtime`."),
                format!("beta model `{m}`"),
            )),
            Some(_) => None,
        }
    };
    if let Some((code, message, violation)) = problem {
        conn.violation(violation);
        let ev = json!({
            "type": "error",
            "event_id": ids.next("event_"),
            "error": {"type": "invalid_request_error", "code": code, "message": message,
                      "param": null, "event_id": null}
        });
        if conn.send_json(&ev).await.is_ok() {
            conn.close(1008, "invalid request").await;
        }
        return None;
    }
    conn.hs.query_value("model").map(str::to_string)
}

fn new_brain(conn: &Conn, s: &SessionCfg) -> Brain {
    let cfg = conn.cfg();
    let (turns, silence_ms) = s.turn_mode();
    Brain::new(
        BrainConfig {
            think_ms: cfg.think_ms,
            reply_ms: cfg.reply_ms.max(1),
            chunk_ms: cfg.chunk_ms.max(1),
            burst_interval_ms: cfg.burst_interval_ms,
            silence_ms,
            seed: mix_seed(cfg.seed, conn.no),
            turns,
        },
        s.in_codec,
        s.out_codec,
    )
}

fn codec_ms(codec: Codec, bytes: u64) -> u64 {
    bytes / (codec.bytes_per_sample() as u64 * codec.rate().samples_per_ms() as u64)
}

impl Session {
    async fn run(&mut self) -> Result<(), Gone> {
        let created = json!({"session": self.s.to_json(self.expires_at)});
        self.emit("session.created", created).await?;
        loop {
            let now = self.conn.now_ms();
            while let Some(ev) = self.brain.poll(now) {
                self.on_brain(ev).await?;
            }
            match self.conn.next(self.brain.next_wakeup()).await {
                Input::Text(t) => self.on_text(&t).await?,
                Input::Binary(b) => {
                    self.conn.note_in("binary");
                    self.fail(
                        "invalid_value",
                        "Binary WebSocket messages are not supported; send JSON events (audio goes in input_audio_buffer.append).",
                        None,
                        None,
                        &format!("binary frame of {} bytes", b.len()),
                    )
                    .await?;
                }
                Input::Wake => {}
                Input::Fault(f) => {
                    if self.conn.inject(f, &STYLE).await? == Flow::End {
                        return Ok(());
                    }
                }
                Input::Closed => return Ok(()),
                Input::Shutdown => {
                    self.conn.close(1001, "server shutting down").await;
                    return Ok(());
                }
            }
        }
    }

    /// Send a server event with a fresh `event_id`.
    async fn emit(&mut self, ty: &str, mut body: Value) -> Result<(), Gone> {
        if let Some(o) = body.as_object_mut() {
            o.insert("type".into(), json!(ty));
            o.insert("event_id".into(), json!(self.ids.next("event_")));
        }
        self.conn.send_json(&body).await
    }

    /// Send an `error` event (type `invalid_request_error`).
    async fn error(
        &mut self,
        code: &str,
        message: &str,
        param: Option<&str>,
        event_id: Option<&str>,
    ) -> Result<(), Gone> {
        let body = json!({"error": {
            "type": "invalid_request_error", "code": code, "message": message,
            "param": param, "event_id": event_id
        }});
        self.emit("error", body).await
    }

    /// A client protocol error: recorded, and answered with an `error` event.
    async fn fail(
        &mut self,
        code: &str,
        message: &str,
        param: Option<&str>,
        event_id: Option<&str>,
        what: &str,
    ) -> Result<(), Gone> {
        self.conn.violation(what);
        self.error(code, message, param, event_id).await
    }

    async fn fail_api(
        &mut self,
        e: ApiError,
        event_id: Option<&str>,
        ty: &str,
    ) -> Result<(), Gone> {
        let what = format!("{ty}: {} ({})", e.message, e.code);
        self.fail(e.code, &e.message, e.param.as_deref(), event_id, &what)
            .await
    }

    fn remember(&mut self, item: Item) {
        if self.items.len() >= MAX_ITEMS {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    fn last_item_id(&self) -> Value {
        self.items.back().map_or(Value::Null, |i| json!(i.id))
    }

    fn find_item(&mut self, id: &str) -> Option<&mut Item> {
        self.items.iter_mut().find(|i| i.id == id)
    }

    // ---- brain -> server events ----------------------------------------------

    async fn on_brain(&mut self, ev: BrainEvent) -> Result<(), Gone> {
        match ev {
            BrainEvent::SpeechStarted { audio_ms } => {
                let item_id = self.ids.next("item_");
                self.user_item = Some(item_id.clone());
                let pad = self
                    .s
                    .turn_detection
                    .as_ref()
                    .map_or(0, |t| t.prefix_padding_ms);
                let body =
                    json!({"audio_start_ms": audio_ms.saturating_sub(pad), "item_id": item_id});
                self.emit("input_audio_buffer.speech_started", body).await
            }
            BrainEvent::SpeechStopped {
                audio_ms,
                utterance,
                spoke_ms,
            } => {
                let item_id = self
                    .user_item
                    .take()
                    .unwrap_or_else(|| self.ids.next("item_"));
                let body = json!({"audio_end_ms": audio_ms, "item_id": item_id});
                self.emit("input_audio_buffer.speech_stopped", body).await?;
                self.commit(item_id, spoke_ms, utterance).await
            }
            BrainEvent::BargeIn => {
                self.conn.barge_in();
                if let Some(r) = &mut self.resp {
                    r.cancel_reason.get_or_insert("turn_detected");
                }
                Ok(())
            }
            BrainEvent::ReplyStarted { total_ms, .. } => self.response_started(total_ms).await,
            BrainEvent::Audio(bytes) => self.audio_delta(bytes).await,
            BrainEvent::AudioDone => self.audio_done().await,
            BrainEvent::ResponseDone { cancelled } => self.response_done(cancelled).await,
        }
    }

    /// Commit the input buffer as a user item (server VAD or a manual commit).
    async fn commit(
        &mut self,
        item_id: String,
        spoke_ms: u64,
        utterance: bool,
    ) -> Result<(), Gone> {
        self.buffer_bytes = 0;
        let previous = self.last_item_id();
        self.emit(
            "input_audio_buffer.committed",
            json!({"previous_item_id": previous, "item_id": item_id}),
        )
        .await?;
        let item = json!({
            "id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": null}]
        });
        self.remember(Item {
            id: item_id.clone(),
            role: ItemRole::User,
            audio_ms: 0,
            has_audio: false,
            json: item.clone(),
        });
        self.emit(
            "conversation.item.added",
            json!({"previous_item_id": previous, "item": item}),
        )
        .await?;
        self.emit(
            "conversation.item.done",
            json!({"previous_item_id": previous, "item": item}),
        )
        .await?;
        if utterance {
            self.user_turns += 1;
            self.conn.turn();
        }
        if self.s.transcription.is_some() {
            let body = json!({
                "item_id": item_id, "content_index": 0,
                "transcript": format!("[caller spoke {spoke_ms} ms]"),
                "usage": {"type": "duration", "seconds": (spoke_ms as f64 / 1000.0).ceil()}
            });
            self.emit(
                "conversation.item.input_audio_transcription.completed",
                body,
            )
            .await?;
        }
        Ok(())
    }

    fn assistant_item(&self, r: &Resp, status: &str) -> Value {
        json!({
            "id": r.item_id, "object": "realtime.item", "type": "message", "status": status,
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": r.transcript}]
        })
    }

    fn response_json(&self, r: &Resp, status: &str, output: Vec<Value>) -> Value {
        let details = match (status, r.cancel_reason) {
            ("cancelled", reason) => {
                json!({"type": "cancelled", "reason": reason.unwrap_or("client_cancelled")})
            }
            _ => Value::Null,
        };
        let audio_tokens = codec_ms(self.s.out_codec, r.audio_bytes) / 50;
        json!({
            "object": "realtime.response", "id": r.id, "status": status,
            "status_details": details, "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": self.s.output_modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": super::openai_session::format_json(self.s.out_codec),
                                 "voice": self.s.voice}},
            "usage": if status == "in_progress" { Value::Null } else { json!({
                "total_tokens": 120 + audio_tokens, "input_tokens": 100, "output_tokens": 20 + audio_tokens,
                "input_token_details": {"text_tokens": 80, "audio_tokens": 20, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 20, "audio_tokens": audio_tokens}
            })},
            "metadata": null
        })
    }

    async fn response_started(&mut self, total_ms: u32) -> Result<(), Gone> {
        self.replies += 1;
        let r = Resp {
            id: self.ids.next("resp_"),
            item_id: self.ids.next("item_"),
            transcript: format!("[sim reply {}: {total_ms} ms]", self.replies),
            audio_bytes: 0,
            deltas: 0,
            audio_done: false,
            cancel_reason: None,
        };
        let previous = self.last_item_id();
        let created = json!({"response": self.response_json(&r, "in_progress", Vec::new())});
        let mut item = self.assistant_item(&r, "in_progress");
        item["content"] = json!([]);
        self.remember(Item {
            id: r.item_id.clone(),
            role: ItemRole::Assistant,
            audio_ms: 0,
            has_audio: true,
            json: item.clone(),
        });
        let (rid, iid) = (r.id.clone(), r.item_id.clone());
        self.resp = Some(r);
        self.conn.reply_started();
        self.emit("response.created", created).await?;
        self.emit(
            "response.output_item.added",
            json!({"response_id": rid, "output_index": 0, "item": item}),
        )
        .await?;
        self.emit(
            "conversation.item.added",
            json!({"previous_item_id": previous, "item": item}),
        )
        .await?;
        self.emit(
            "response.content_part.added",
            json!({"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_audio", "transcript": ""}}),
        )
        .await
    }

    async fn audio_delta(&mut self, bytes: Vec<u8>) -> Result<(), Gone> {
        let Some(r) = &mut self.resp else {
            return Ok(());
        };
        r.audio_bytes += bytes.len() as u64;
        r.deltas += 1;
        let (rid, iid, first) = (r.id.clone(), r.item_id.clone(), r.deltas == 1);
        let transcript = r.transcript.clone();
        let total = r.audio_bytes;
        let ms = codec_ms(self.s.out_codec, total);
        if let Some(item) = self.find_item(&iid) {
            item.audio_ms = ms;
        }
        self.conn.audio_out(bytes.len());
        let delta = B64.encode(&bytes);
        self.emit(
            "response.output_audio.delta",
            json!({"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0,
                   "delta": delta}),
        )
        .await?;
        if first {
            self.emit(
                "response.output_audio_transcript.delta",
                json!({"response_id": rid, "item_id": iid, "output_index": 0,
                       "content_index": 0, "delta": transcript}),
            )
            .await?;
        }
        Ok(())
    }

    async fn audio_done(&mut self) -> Result<(), Gone> {
        let Some(r) = &mut self.resp else {
            return Ok(());
        };
        r.audio_done = true;
        let r = r.clone();
        let ids = json!({"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0});
        self.emit("response.output_audio.done", ids.clone()).await?;
        let mut t = ids.clone();
        t["transcript"] = json!(r.transcript);
        self.emit("response.output_audio_transcript.done", t)
            .await?;
        let mut p = ids;
        p["part"] = json!({"type": "output_audio", "transcript": r.transcript});
        self.emit("response.content_part.done", p).await?;
        let item = self.assistant_item(&r, "completed");
        if let Some(i) = self.find_item(&r.item_id) {
            i.json = item.clone();
        }
        self.emit(
            "response.output_item.done",
            json!({"response_id": r.id, "output_index": 0, "item": item}),
        )
        .await?;
        self.emit("conversation.item.done", json!({"item": item}))
            .await
    }

    async fn response_done(&mut self, cancelled: bool) -> Result<(), Gone> {
        let Some(r) = self.resp.take() else {
            return Ok(());
        };
        let status = if cancelled { "cancelled" } else { "completed" };
        let item_status = if r.audio_done {
            "completed"
        } else {
            "incomplete"
        };
        let item = self.assistant_item(&r, item_status);
        if !r.audio_done {
            if let Some(i) = self.find_item(&r.item_id) {
                i.json = item.clone();
            }
            self.emit(
                "response.output_item.done",
                json!({"response_id": r.id, "output_index": 0, "item": item}),
            )
            .await?;
        }
        let body = json!({"response": self.response_json(&r, status, vec![item])});
        self.emit("response.done", body).await?;
        self.emit(
            "rate_limits.updated",
            json!({"rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 800000, "remaining": 795000, "reset_seconds": 0.375}
            ]}),
        )
        .await
    }

    // ---- client events ---------------------------------------------------------

    async fn on_text(&mut self, text: &str) -> Result<(), Gone> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.conn.note_in("<invalid>");
                return self
                    .fail(
                        "invalid_json",
                        "We could not parse the JSON body of your request.",
                        None,
                        None,
                        &format!("text frame is not JSON ({e})"),
                    )
                    .await;
            }
        };
        let Some(ty) = v.get("type").and_then(Value::as_str) else {
            self.conn.note_in("<invalid>");
            return self
                .fail(
                    "missing_required_parameter",
                    "Missing required parameter: 'type'.",
                    Some("type"),
                    None,
                    "event without a string `type`",
                )
                .await;
        };
        let ty = ty.to_string();
        self.conn.note_in(&ty);
        let eid = v
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let eid = eid.as_deref();
        match ty.as_str() {
            "session.update" => self.session_update(&v, eid).await,
            "input_audio_buffer.append" => self.append(&v, eid).await,
            "input_audio_buffer.commit" => self.manual_commit(eid).await,
            "input_audio_buffer.clear" => {
                self.buffer_bytes = 0;
                self.emit("input_audio_buffer.cleared", json!({})).await
            }
            "response.create" => self.response_create(&v, eid).await,
            "response.cancel" => self.response_cancel(&v, eid).await,
            "conversation.item.create" => self.item_create(&v, eid).await,
            "conversation.item.truncate" => self.item_truncate(&v, eid).await,
            "conversation.item.delete" | "conversation.item.retrieve" => {
                self.item_lookup(&ty, &v, eid).await
            }
            "output_audio_buffer.clear" => {
                self.fail(
                    "invalid_value",
                    "output_audio_buffer.clear is only supported for WebRTC sessions.",
                    Some("type"),
                    eid,
                    "output_audio_buffer.clear on a WebSocket session (WebRTC only)",
                )
                .await
            }
            other => {
                let msg = format!("Invalid value: '{other}'. Supported values are: 'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', 'input_audio_buffer.clear', 'conversation.item.create', 'conversation.item.retrieve', 'conversation.item.truncate', 'conversation.item.delete', 'response.create', and 'response.cancel'.");
                self.fail(
                    "invalid_value",
                    &msg,
                    Some("type"),
                    eid,
                    &format!("unknown client event type `{other}`"),
                )
                .await
            }
        }
    }

    async fn session_update(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let Some(session) = v.get("session") else {
            return self
                .fail_api(
                    ApiError {
                        code: "missing_required_parameter",
                        message: "Missing required parameter: 'session'.".into(),
                        param: Some("session".into()),
                    },
                    eid,
                    "session.update",
                )
                .await;
        };
        let voice_locked = self.replies > 0;
        let next = match self.s.updated(session, voice_locked) {
            Ok(n) => n,
            Err(e) => return self.fail_api(e, eid, "session.update").await,
        };
        if next.output_modalities != ["audio"] {
            self.conn
                .violation("session.update: output_modalities [\"text\"]: voxd must ask for audio");
        }
        let rebuild = next.in_codec != self.s.in_codec
            || next.out_codec != self.s.out_codec
            || next.turn_mode() != self.s.turn_mode();
        self.s = next;
        if rebuild {
            if self.resp.is_some() {
                self.response_done(true).await?;
            }
            self.brain = new_brain(&self.conn, &self.s);
            self.user_item = None;
        }
        let body = json!({"session": self.s.to_json(self.expires_at)});
        self.emit("session.updated", body).await
    }

    async fn append(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let Some(audio) = v.get("audio").and_then(Value::as_str) else {
            return self
                .fail(
                    "missing_required_parameter",
                    "Missing required parameter: 'audio'.",
                    Some("audio"),
                    eid,
                    "input_audio_buffer.append without a string `audio`",
                )
                .await;
        };
        let bytes = match B64.decode(audio) {
            Ok(b) => b,
            Err(e) => {
                return self
                    .fail(
                        "invalid_value",
                        "Invalid 'audio'. Expected base64-encoded audio bytes.",
                        Some("audio"),
                        eid,
                        &format!("input_audio_buffer.append: invalid base64 ({e})"),
                    )
                    .await
            }
        };
        let codec = self.s.in_codec;
        if bytes.is_empty() {
            return self
                .fail(
                    "invalid_value",
                    "Invalid 'audio': no audio in the event.",
                    Some("audio"),
                    eid,
                    "input_audio_buffer.append with empty audio",
                )
                .await;
        }
        if bytes.len() % codec.bytes_per_sample() != 0 {
            return self
                .fail(
                    "invalid_value",
                    "Invalid 'audio': not a whole number of 16-bit PCM samples.",
                    Some("audio"),
                    eid,
                    &format!(
                        "input_audio_buffer.append: {} bytes is not a whole number of 16-bit samples",
                        bytes.len()
                    ),
                )
                .await;
        }
        let ms = codec_ms(codec, bytes.len() as u64);
        if ms > MAX_APPEND_MS {
            return self
                .fail(
                    "invalid_value",
                    "Invalid 'audio': too much audio in one event.",
                    Some("audio"),
                    eid,
                    &format!("input_audio_buffer.append of {ms} ms (more than {MAX_APPEND_MS} ms)"),
                )
                .await;
        }
        self.conn.audio_in(bytes.len());
        self.buffer_bytes += bytes.len() as u64;
        brain::decode(codec, &bytes, &mut self.pcm);
        let now = self.conn.now_ms();
        self.brain.on_audio(now, &self.pcm);
        Ok(())
    }

    async fn manual_commit(&mut self, eid: Option<&str>) -> Result<(), Gone> {
        let ms = codec_ms(self.s.in_codec, self.buffer_bytes);
        if ms < MIN_COMMIT_MS {
            let msg = format!("Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {ms}.00ms of audio.");
            if self.s.turn_detection.is_none() {
                return self
                    .fail(
                        "input_audio_buffer_commit_empty",
                        &msg,
                        None,
                        eid,
                        &format!("input_audio_buffer.commit with {ms} ms of audio"),
                    )
                    .await;
            }
            // With server VAD the buffer may just have been committed: a race, not
            // a client bug.
            return self
                .error("input_audio_buffer_commit_empty", &msg, None, eid)
                .await;
        }
        let item_id = self
            .user_item
            .take()
            .unwrap_or_else(|| self.ids.next("item_"));
        self.commit(item_id, ms, true).await
    }

    async fn response_create(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        if let Some(r) = v.get("response").filter(|r| !r.is_null()) {
            if let Err(e) = check_response(r) {
                return self.fail_api(e, eid, "response.create").await;
            }
        }
        if self.brain.is_replying() {
            let id = self.resp.as_ref().map_or("resp_pending", |r| r.id.as_str());
            let msg = format!("Conversation already has an active response in progress: {id}. Wait until the response is finished before creating a new one.");
            return self
                .error("conversation_already_has_active_response", &msg, None, eid)
                .await;
        }
        let cfg = self.conn.cfg();
        let ms = if self.user_turns == 0 && self.replies == 0 && cfg.greeting_ms > 0 {
            cfg.greeting_ms
        } else {
            cfg.reply_ms.max(1)
        };
        let now = self.conn.now_ms();
        self.brain.start_reply(now, ms);
        Ok(())
    }

    async fn response_cancel(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let wanted = v.get("response_id").and_then(Value::as_str);
        let current = self.resp.as_ref().map(|r| r.id.clone());
        let matches = match (wanted, &current) {
            (Some(w), Some(c)) => w == c,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let now = self.conn.now_ms();
        if matches && self.brain.cancel(now) {
            if let Some(r) = &mut self.resp {
                r.cancel_reason.get_or_insert("client_cancelled");
            }
            return Ok(());
        }
        // Not a violation: the response may have finished while the cancel was on
        // its way.
        self.error(
            "response_cancel_not_active",
            "Cancellation failed: no active response found.",
            None,
            eid,
        )
        .await
    }

    async fn item_create(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let Some(item) = v.get("item") else {
            return self
                .fail(
                    "missing_required_parameter",
                    "Missing required parameter: 'item'.",
                    Some("item"),
                    eid,
                    "conversation.item.create without `item`",
                )
                .await;
        };
        let role = match check_item(item) {
            Ok(r) => r,
            Err(e) => return self.fail_api(e, eid, "conversation.item.create").await,
        };
        let id = match item.get("id") {
            Some(Value::String(id)) => {
                if self.items.iter().any(|i| i.id == *id) {
                    let msg = format!("Item with id '{id}' already exists.");
                    return self
                        .fail(
                            "item_id_already_exists",
                            &msg,
                            Some("item.id"),
                            eid,
                            &format!("conversation.item.create: duplicate item id `{id}`"),
                        )
                        .await;
                }
                id.clone()
            }
            _ => self.ids.next("item_"),
        };
        let previous = match v.get("previous_item_id") {
            None | Some(Value::Null) => self.last_item_id(),
            Some(Value::String(p)) if p == "root" => Value::Null,
            Some(Value::String(p)) => {
                if !self.items.iter().any(|i| i.id == *p) {
                    let msg = format!("Item with id '{p}' not found.");
                    return self
                        .fail(
                            "invalid_value",
                            &msg,
                            Some("previous_item_id"),
                            eid,
                            &format!("conversation.item.create: unknown previous_item_id `{p}`"),
                        )
                        .await;
                }
                json!(p)
            }
            Some(_) => Value::Null,
        };
        let mut stored = item.clone();
        stored["id"] = json!(id);
        stored["object"] = json!("realtime.item");
        stored["status"] = json!("completed");
        self.remember(Item {
            id,
            role,
            audio_ms: 0,
            has_audio: false,
            json: stored.clone(),
        });
        let body = json!({"previous_item_id": previous, "item": stored});
        self.emit("conversation.item.added", body.clone()).await?;
        self.emit("conversation.item.done", body).await
    }

    async fn item_truncate(&mut self, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let item_id = v.get("item_id").and_then(Value::as_str);
        let content_index = v.get("content_index").and_then(Value::as_u64);
        let audio_end_ms = v.get("audio_end_ms").and_then(Value::as_u64);
        let (Some(item_id), Some(content_index), Some(audio_end_ms)) =
            (item_id, content_index, audio_end_ms)
        else {
            return self
                .fail(
                    "missing_required_parameter",
                    "conversation.item.truncate needs 'item_id' (string), 'content_index' and 'audio_end_ms' (integers >= 0).",
                    None,
                    eid,
                    "conversation.item.truncate without item_id / content_index / audio_end_ms",
                )
                .await;
        };
        let item_id = item_id.to_string();
        let problem = match self.items.iter().find(|i| i.id == item_id) {
            None => Some((
                format!("Item with item_id '{item_id}' not found."),
                format!("truncate of unknown item `{item_id}`"),
            )),
            Some(i) if i.role != ItemRole::Assistant || !i.has_audio => Some((
                "Only assistant messages with audio can be truncated.".to_string(),
                format!("truncate of a {} item without audio", i.role.as_str()),
            )),
            Some(_) if content_index != 0 => Some((
                format!("Invalid content_index {content_index}: the item has one content part."),
                format!("truncate with content_index {content_index}"),
            )),
            Some(i) if audio_end_ms > i.audio_ms => Some((
                format!(
                    "Audio content of {}ms is already shorter than {audio_end_ms}ms",
                    i.audio_ms
                ),
                format!(
                    "truncate to {audio_end_ms} ms of an item with only {} ms of audio sent",
                    i.audio_ms
                ),
            )),
            Some(_) => None,
        };
        if let Some((msg, what)) = problem {
            return self
                .fail("invalid_value", &msg, Some("item_id"), eid, &what)
                .await;
        }
        if let Some(i) = self.find_item(&item_id) {
            i.audio_ms = audio_end_ms;
        }
        self.conn.truncate();
        self.emit(
            "conversation.item.truncated",
            json!({"item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms}),
        )
        .await
    }

    async fn item_lookup(&mut self, ty: &str, v: &Value, eid: Option<&str>) -> Result<(), Gone> {
        let Some(item_id) = v.get("item_id").and_then(Value::as_str).map(str::to_string) else {
            return self
                .fail(
                    "missing_required_parameter",
                    "Missing required parameter: 'item_id'.",
                    Some("item_id"),
                    eid,
                    &format!("{ty} without `item_id`"),
                )
                .await;
        };
        let Some(pos) = self.items.iter().position(|i| i.id == item_id) else {
            let msg = format!("Item with item_id '{item_id}' not found.");
            return self
                .fail(
                    "invalid_value",
                    &msg,
                    Some("item_id"),
                    eid,
                    &format!("{ty} of unknown item `{item_id}`"),
                )
                .await;
        };
        if ty == "conversation.item.delete" {
            self.items.remove(pos);
            self.emit("conversation.item.deleted", json!({"item_id": item_id}))
                .await
        } else {
            let item = self.items[pos].json.clone();
            self.emit("conversation.item.retrieved", json!({"item": item}))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(path: &str, auth: Option<&str>) -> Handshake {
        match auth {
            Some(a) => Handshake::for_test(path, &[("Authorization", a)]),
            None => Handshake::for_test(path, &[]),
        }
    }

    #[test]
    fn handshake_checks_path_and_key() {
        assert_eq!(
            handshake(&hs(PATH, Some("Bearer k1")), Some("k1")),
            Verdict::Accept { subprotocol: None }
        );
        assert_eq!(
            handshake(&hs(PATH, None), None),
            Verdict::Accept { subprotocol: None }
        );
        assert!(matches!(
            handshake(&hs(PATH, Some("Bearer nope")), Some("k1")),
            Verdict::Refuse {
                status: 401,
                auth_failure: true,
                violation: None,
                ..
            }
        ));
        assert!(matches!(
            handshake(&hs(PATH, None), Some("k1")),
            Verdict::Refuse {
                status: 401,
                auth_failure: true,
                ..
            }
        ));
        assert!(matches!(
            handshake(&hs("/v1/realtime/x", Some("Bearer k1")), Some("k1")),
            Verdict::Refuse {
                status: 404,
                violation: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn codec_ms_per_format() {
        assert_eq!(codec_ms(Codec::Pcmu, 8000), 1000);
        assert_eq!(
            codec_ms(Codec::Slin(crate::media::Rate::Hz24000), 48_000),
            1000
        );
    }
}
