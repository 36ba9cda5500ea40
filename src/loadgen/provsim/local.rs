//! The `local-ai-server` simulator: the WebSocket protocol of the reference
//! engine's (Asterisk AI Voice Agent) local STT/LLM/TTS server, as its source
//! (`local_ai_server/ws_protocol.py`, `server.py`) implements it.
//!
//! Owns: one session per connection (any path; the reference serves them all):
//! the optional `{"type": "auth", "auth_token" | "token"}` and its `auth_response`
//! (`ok`, or `error` with `invalid_auth_token` / `authentication_required` for
//! anything sent before it, binary audio included), `set_mode` / `mode_ready`
//! (`full`, `stt`, `llm`, `tts`; a message's own `mode` also switches the session,
//! like the reference), `audio` messages (base64 PCM16 LE, `rate`, `call_id`,
//! `request_id`) and raw binary PCM16 at 16 kHz, and the pipeline's answers:
//! `stt_result` partials (`is_final: false, is_partial: true`) and finals,
//! `llm_response` (`mode: "llm"`), then in `full` mode the reply as **one** binary
//! mu-law 8 kHz message, preceded by `tts_audio {encoding, sample_rate_hz,
//! byte_length}` only when the audio message carried a `request_id`. Also
//! `tts_request` -> `tts_response` (base64 mu-law), `llm_request` ->
//! `llm_response`, `status`, `capabilities`, `reload_models` / `reload_llm`,
//! `switch_model`, `backends`, and the reference's refusal to serve a non-loopback
//! bind without a token (close 1008).
//!
//! Must not: answer what the reference ignores. It ignores invalid JSON, messages
//! without `type`, unknown types and bad audio payloads, silently (`barge_in` is
//! answered with `barge_in_ack`, as the reference's ws_protocol.py does); the simulator stays silent on the wire
//! too but records each as a violation, so a client relying on them is caught.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::brain::{self, Brain, BrainConfig, BrainEvent, TurnMode};
use super::common::{Conn, FaultStyle, Flow, Gone, Handshake, Input, Verdict};
use crate::call::Codec;
use crate::media::resample::Resampler;
use crate::media::Rate;
use crate::provider::sim::agent::mix_seed;

/// The rate of the reference's STT (and of raw binary audio).
const STT_RATE: Rate = Rate::Hz16000;
/// Requests (tts / llm) answered later, at most; more are dropped (violation).
const MAX_PENDING: usize = 16;
/// Longest reply the simulator renders in one piece (ms).
const MAX_REPLY_MS: u32 = 120_000;

/// The local server's faults on the wire.
const STYLE: FaultStyle = FaultStyle {
    error: fault_error,
    fatal_close: 1011,
    big_type: "llm_response",
    big_field: "text",
};

fn fault_error(fatal: bool) -> Value {
    let (error, kind, message) = if fatal {
        (
            "Internal server error",
            "processing_error",
            "The pipeline failed and the session is closed.",
        )
    } else {
        (
            "LLM inference timeout after 20.0 seconds",
            "timeout",
            "Increase LOCAL_LLM_INFER_TIMEOUT_SEC or reduce max_tokens",
        )
    };
    json!({"type": "error", "error": error, "call_id": null,
           "details": {"error_type": kind, "component": "llm", "message": message}})
}

/// Any path is served, like the reference (`websockets.serve` routes nothing).
pub(crate) fn handshake(_hs: &Handshake) -> Verdict {
    Verdict::Accept { subprotocol: None }
}

/// The session's pipeline mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Stt,
    Llm,
    Tts,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "full" => Some(Mode::Full),
            "stt" => Some(Mode::Stt),
            "llm" => Some(Mode::Llm),
            "tts" => Some(Mode::Tts),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Stt => "stt",
            Mode::Llm => "llm",
            Mode::Tts => "tts",
        }
    }

    fn turns(self) -> TurnMode {
        match self {
            Mode::Full | Mode::Llm => TurnMode::Agent,
            Mode::Stt => TurnMode::Vad {
                auto: false,
                interrupt: false,
            },
            Mode::Tts => TurnMode::Manual,
        }
    }
}

/// One local-ai-server session.
struct Session {
    conn: Conn,
    authenticated: bool,
    mode: Mode,
    call_id: String,
    request_id: Option<String>,
    brain: Brain,
    resampler: Option<(Rate, Resampler)>,
    pcm: Vec<i16>,
    rs_buf: Vec<i16>,
    reply_text: String,
    reply_buf: Vec<u8>,
    replies: u64,
    pending: VecDeque<(u64, Value)>,
}

fn new_brain(conn: &Conn, mode: Mode) -> Brain {
    let cfg = conn.cfg();
    let whole = cfg.reply_ms.max(cfg.greeting_ms).clamp(1, MAX_REPLY_MS);
    Brain::new(
        BrainConfig {
            think_ms: cfg.think_ms,
            reply_ms: cfg.reply_ms.clamp(1, MAX_REPLY_MS),
            chunk_ms: whole,
            burst_interval_ms: cfg.burst_interval_ms,
            silence_ms: 500,
            seed: mix_seed(cfg.seed, conn.no),
            turns: mode.turns(),
        },
        Codec::Slin(STT_RATE),
        Codec::Pcmu,
    )
}

/// Run an accepted connection to its end.
pub(crate) async fn run(mut conn: Conn) {
    if conn.cfg().api_key.is_none() && !conn.shared.addr.ip().is_loopback() {
        // The reference refuses to serve a remote bind without a token.
        conn.close(
            1008,
            "Server misconfigured: auth token required for remote access",
        )
        .await;
        return;
    }
    let brain = new_brain(&conn, Mode::Full);
    let mut s = Session {
        authenticated: conn.cfg().api_key.is_none(),
        conn,
        mode: Mode::Full,
        call_id: "unknown".into(),
        request_id: None,
        brain,
        resampler: None,
        pcm: Vec::new(),
        rs_buf: Vec::new(),
        reply_text: String::new(),
        reply_buf: Vec::new(),
        replies: 0,
        pending: VecDeque::new(),
    };
    let _ = s.run().await;
}

impl Session {
    async fn run(&mut self) -> Result<(), Gone> {
        loop {
            let now = self.conn.now_ms();
            while let Some(ev) = self.brain.poll(now) {
                self.on_brain(ev).await?;
            }
            while self.pending.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, msg)) = self.pending.pop_front() {
                    self.conn.send_json(&msg).await?;
                }
            }
            let wake = [
                self.brain.next_wakeup(),
                self.pending.front().map(|(due, _)| *due),
            ]
            .into_iter()
            .flatten()
            .min();
            match self.conn.next(wake).await {
                Input::Text(t) => {
                    if self.on_text(&t).await? == Flow::End {
                        return Ok(());
                    }
                }
                Input::Binary(b) => self.on_binary(b).await?,
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

    fn set_mode(&mut self, mode: Mode) {
        if mode != self.mode {
            let rebuild = mode.turns() != self.mode.turns();
            self.mode = mode;
            if rebuild {
                self.brain = new_brain(&self.conn, mode);
                self.reply_buf.clear();
            }
        }
    }

    /// A message's `mode` (if valid) switches the session, like the reference's
    /// `_normalize_mode`.
    fn normalize_mode(&mut self, v: &Value) {
        if let Some(m) = v.get("mode").and_then(Value::as_str).and_then(Mode::parse) {
            self.set_mode(m);
        }
    }

    fn take_call_id(&mut self, v: &Value) {
        if let Some(c) = v.get("call_id").and_then(Value::as_str) {
            if !c.is_empty() {
                self.call_id = c.to_string();
            }
        }
    }

    /// Answer `msg` after the pipeline's latency (think time), in order.
    fn later(&mut self, msg: Value) {
        if self.pending.len() >= MAX_PENDING {
            self.conn.violation(format!(
                "more than {MAX_PENDING} tts/llm requests outstanding; one dropped"
            ));
            return;
        }
        let due = self.conn.now_ms() + u64::from(self.conn.cfg().think_ms);
        self.pending.push_back((due, msg));
    }

    async fn auth_error(&mut self, message: &str) -> Result<(), Gone> {
        self.conn
            .send_json(&json!({"type": "auth_response", "status": "error", "message": message}))
            .await
    }

    async fn on_text(&mut self, text: &str) -> Result<Flow, Gone> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.conn.note_in("<invalid>");
            self.conn
                .violation("text frame is not JSON (the reference ignores it)");
            return Ok(Flow::Continue);
        };
        let Some(ty) = v
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
        else {
            self.conn.note_in("<invalid>");
            self.conn
                .violation("message without `type` (the reference ignores it)");
            return Ok(Flow::Continue);
        };
        self.conn.note_in(&ty);
        if ty == "auth" {
            return self.on_auth(&v).await.map(|()| Flow::Continue);
        }
        if !self.authenticated {
            self.conn.violation(format!("`{ty}` before authenticating"));
            self.auth_error("authentication_required").await?;
            return Ok(Flow::Continue);
        }
        match ty.as_str() {
            "set_mode" => {
                match v
                    .get("mode")
                    .and_then(Value::as_str)
                    .map(|m| (m, Mode::parse(m)))
                {
                    Some((_, Some(m))) => self.set_mode(m),
                    None => self.set_mode(Mode::Full),
                    Some((m, None)) => self
                        .conn
                        .violation(format!("set_mode: unsupported mode `{m}`")),
                }
                self.take_call_id(&v);
                let ready = json!({"type": "mode_ready", "mode": self.mode.as_str(),
                                   "call_id": self.call_id});
                self.conn.send_json(&ready).await?;
            }
            "audio" => return self.on_audio_message(&v).await,
            "tts_request" => self.on_tts_request(&v),
            "llm_request" => self.on_llm_request(&v),
            "status" => {
                let st = status_response();
                self.conn.send_json(&st).await?;
            }
            "capabilities" => {
                let caps = json!({"type": "capabilities_response", "capabilities": {
                    "vosk": true, "sherpa": false, "kroko_embedded": false,
                    "piper": true, "kokoro": false, "llama": true}});
                self.conn.send_json(&caps).await?;
            }
            "reload_models" | "reload_llm" => {
                let msg = if ty == "reload_models" {
                    "All models reloaded successfully"
                } else {
                    "LLM model reloaded with optimizations (ctx=4096, batch=512, temp=0.7, max_tokens=128)"
                };
                let r = json!({"type": "reload_response", "status": "success", "message": msg});
                self.conn.send_json(&r).await?;
            }
            "switch_model" => {
                // As the reference: a session-scoped switch sets the session's system
                // prompt (it needs llm_config.system_prompt) and echoes the call id.
                let session_scope = v
                    .get("scope")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case("session"));
                let r = if session_scope {
                    self.take_call_id(&v);
                    let has_prompt = v
                        .get("llm_config")
                        .and_then(|c| c.get("system_prompt"))
                        .is_some();
                    if has_prompt {
                        json!({"type": "switch_response", "status": "success",
                               "message": "Session system prompt synchronized",
                               "scope": "session", "call_id": self.call_id,
                               "changed": ["system_prompt"]})
                    } else {
                        json!({"type": "switch_response", "status": "error",
                               "message": "session-scoped switch requires llm_config.system_prompt",
                               "scope": "session", "call_id": self.call_id})
                    }
                } else {
                    json!({"type": "switch_response", "status": "success",
                           "message": "Simulated: nothing to switch", "changed": []})
                };
                self.conn.send_json(&r).await?;
            }
            "backends" => {
                let r = json!({"type": "backends_response", "stt": {}, "tts": {}, "llm": {}});
                self.conn.send_json(&r).await?;
            }
            "backend_schema" => {
                let r =
                    json!({"type": "backend_schema_response", "error": "Unknown backend type: "});
                self.conn.send_json(&r).await?;
            }
            "barge_in" => {
                // The reference cancels the session's response tasks and acks
                // (`barge_in_ack` with status, call_id, request_id).
                self.take_call_id(&v);
                let now = self.conn.now_ms();
                if self.brain.cancel(now) {
                    self.conn.barge_in();
                }
                self.reply_buf.clear();
                let ack = json!({"type": "barge_in_ack", "status": "ok",
                                 "call_id": self.call_id,
                                 "request_id": v.get("request_id").cloned().unwrap_or(Value::Null)});
                self.conn.send_json(&ack).await?;
            }
            other => self.conn.violation(format!(
                "unknown message type `{other}` (the reference ignores it)"
            )),
        }
        Ok(Flow::Continue)
    }

    async fn on_auth(&mut self, v: &Value) -> Result<(), Gone> {
        let token = v
            .get("auth_token")
            .and_then(Value::as_str)
            .or_else(|| v.get("token").and_then(Value::as_str))
            .unwrap_or("")
            .trim()
            .to_string();
        self.take_call_id(v);
        let ok = match self.conn.cfg().api_key.as_deref() {
            None => true,
            Some(k) => token == k,
        };
        if ok {
            self.authenticated = true;
            self.conn
                .send_json(&json!({"type": "auth_response", "status": "ok"}))
                .await
        } else {
            self.conn.auth_failure();
            self.auth_error("invalid_auth_token").await
        }
    }

    async fn on_binary(&mut self, bytes: Vec<u8>) -> Result<(), Gone> {
        self.conn.note_in("binary");
        if !self.authenticated {
            self.conn.violation("binary audio before authenticating");
            return self.auth_error("authentication_required").await;
        }
        self.feed(&bytes, STT_RATE.hz(), "binary audio");
        Ok(())
    }

    async fn on_audio_message(&mut self, v: &Value) -> Result<Flow, Gone> {
        self.normalize_mode(v);
        if let Some(r) = v.get("request_id").and_then(Value::as_str) {
            self.request_id = Some(r.to_string());
        } else {
            self.request_id = None;
        }
        self.take_call_id(v);
        let Some(data) = v
            .get("data")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        else {
            self.conn
                .violation("audio message without `data` (the reference ignores it)");
            return Ok(Flow::Continue);
        };
        let bytes = match B64.decode(data) {
            Ok(b) => b,
            Err(e) => {
                self.conn.violation(format!(
                    "audio `data` is not valid base64 ({e}); the reference drops it"
                ));
                return Ok(Flow::Continue);
            }
        };
        let rate = match v.get("rate") {
            None => STT_RATE.hz(),
            Some(r) => match python_int(r) {
                Some(r) => r,
                None => {
                    // The reference's int() raises and its handler ends the connection.
                    self.conn
                        .violation(format!("audio `rate` {r} is not an integer"));
                    self.conn.close(1000, "").await;
                    return Ok(Flow::End);
                }
            },
        };
        if let Some(f) = v.get("format") {
            if f.as_str() != Some("pcm16le") {
                self.conn.violation(format!(
                    "audio `format` {f}: the server decodes PCM16 little-endian only"
                ));
            }
        }
        self.feed(&bytes, rate, "audio message");
        Ok(Flow::Continue)
    }

    /// Check and feed PCM16 LE at `rate` to the STT (the brain, at 16 kHz).
    fn feed(&mut self, bytes: &[u8], rate: u32, what: &str) {
        if bytes.is_empty() {
            return;
        }
        if self.mode == Mode::Tts {
            self.conn.violation(format!(
                "{what} in `tts` mode (the reference skips it; use tts_request)"
            ));
            return;
        }
        if bytes.len() % 2 != 0 {
            self.conn.violation(format!(
                "{what}: {} bytes is not a whole number of PCM16 samples",
                bytes.len()
            ));
        }
        let Some(rate) = Rate::from_hz(rate) else {
            self.conn.violation(format!(
                "{what} at {rate} Hz: the simulator resamples 8/12/16/24/32/48 kHz only"
            ));
            return;
        };
        self.conn.audio_in(bytes.len());
        brain::decode(Codec::Slin(rate), bytes, &mut self.pcm);
        if rate != STT_RATE {
            if self.resampler.as_ref().is_none_or(|(r, _)| *r != rate) {
                self.resampler = Some((rate, Resampler::new(rate, STT_RATE)));
            }
            if let Some((_, rs)) = &mut self.resampler {
                self.rs_buf.resize(rs.output_len(self.pcm.len()), 0);
                let n = rs.process(&self.pcm, &mut self.rs_buf).unwrap_or(0);
                self.rs_buf.truncate(n);
                std::mem::swap(&mut self.pcm, &mut self.rs_buf);
            }
        }
        let now = self.conn.now_ms();
        self.brain.on_audio(now, &self.pcm);
    }

    fn on_tts_request(&mut self, v: &Value) {
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        if text.is_empty() {
            self.conn
                .violation("tts_request without `text` (the reference ignores it)");
            return;
        }
        self.normalize_mode(v);
        self.take_call_id(v);
        let cfg = self.conn.cfg();
        let ms = if cfg.greeting_ms > 0 {
            cfg.greeting_ms
        } else {
            cfg.reply_ms
        }
        .clamp(1, MAX_REPLY_MS);
        let audio = self.brain.render(ms);
        self.conn.audio_out(audio.len());
        let mut r = json!({
            "type": "tts_response", "text": text, "call_id": self.call_id,
            "audio_data": B64.encode(&audio), "encoding": "mulaw",
            "sample_rate_hz": 8000, "byte_length": audio.len()
        });
        if let Some(id) = v.get("request_id").and_then(Value::as_str) {
            r["request_id"] = json!(id);
        }
        self.later(r);
    }

    fn on_llm_request(&mut self, v: &Value) {
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        if text.is_empty() {
            self.conn
                .violation("llm_request without `text` (the reference ignores it)");
            return;
        }
        self.normalize_mode(v);
        self.take_call_id(v);
        let mut r = json!({
            "type": "llm_response", "text": format!("[sim answer to {} chars]", text.len()),
            "call_id": self.call_id, "mode": self.mode.as_str()
        });
        if let Some(id) = v.get("request_id").and_then(Value::as_str) {
            r["request_id"] = json!(id);
        }
        self.later(r);
    }

    fn with_request_id(&self, mut v: Value) -> Value {
        if let Some(id) = &self.request_id {
            v["request_id"] = json!(id);
        }
        v
    }

    async fn on_brain(&mut self, ev: BrainEvent) -> Result<(), Gone> {
        if self.mode == Mode::Tts {
            return Ok(());
        }
        match ev {
            BrainEvent::SpeechStarted { .. } => {
                let p = json!({"type": "stt_result", "text": "[caller speaking]",
                    "call_id": self.call_id, "mode": self.mode.as_str(),
                    "is_final": false, "is_partial": true});
                let p = self.with_request_id(p);
                self.conn.send_json(&p).await
            }
            BrainEvent::SpeechStopped {
                utterance: true,
                spoke_ms,
                ..
            } => {
                self.conn.turn();
                let f = json!({"type": "stt_result", "text": format!("[caller spoke {spoke_ms} ms]"),
                    "call_id": self.call_id, "mode": self.mode.as_str(),
                    "is_final": true, "is_partial": false, "confidence": 0.9});
                let f = self.with_request_id(f);
                self.conn.send_json(&f).await
            }
            BrainEvent::SpeechStopped { .. } => Ok(()),
            BrainEvent::BargeIn => {
                self.conn.barge_in();
                Ok(())
            }
            BrainEvent::ReplyStarted { total_ms, .. } => {
                self.replies += 1;
                self.reply_text = format!("[sim reply {}: {total_ms} ms]", self.replies);
                self.reply_buf.clear();
                self.conn.reply_started();
                let r = json!({"type": "llm_response", "text": self.reply_text,
                               "call_id": self.call_id, "mode": "llm"});
                let r = self.with_request_id(r);
                self.conn.send_json(&r).await
            }
            BrainEvent::Audio(bytes) => {
                if self.mode == Mode::Full {
                    self.reply_buf.extend_from_slice(&bytes);
                }
                Ok(())
            }
            BrainEvent::AudioDone => {
                if self.mode != Mode::Full {
                    return Ok(());
                }
                let audio = std::mem::take(&mut self.reply_buf);
                if self.request_id.is_some() {
                    let meta = json!({"type": "tts_audio", "call_id": self.call_id,
                        "mode": "full", "encoding": "mulaw", "sample_rate_hz": 8000,
                        "byte_length": audio.len()});
                    let meta = self.with_request_id(meta);
                    self.conn.send_json(&meta).await?;
                }
                self.conn.send_audio(audio).await
            }
            BrainEvent::ResponseDone { .. } => {
                self.reply_buf.clear();
                Ok(())
            }
        }
    }
}

/// What Python's `int()` makes of a JSON value the reference reads as a rate: an
/// integer, an integral float, or a string of digits; `None` where `int()` raises.
fn python_int(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.trunc() as u64))
            .and_then(|r| u32::try_from(r).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn status_response() -> Value {
    json!({
        "type": "status_response", "status": "ok",
        "stt_backend": "vosk", "tts_backend": "piper",
        "models": {
            "stt": {"backend": "vosk", "loaded": true, "path": "/sim/stt", "display": "sim-stt"},
            "llm": {"loaded": true, "path": "/sim/llm", "display": "sim-llm", "config": {}},
            "tts": {"backend": "piper", "loaded": true, "path": "/sim/tts", "display": "sim-tts"}
        },
        "kroko": {"embedded": false, "port": null, "language": null, "url": null, "model_path": null},
        "kokoro": {"mode": "local", "voice": null, "model_path": null, "api_base_url": null,
                   "api_key_set": false},
        "config": {"log_level": "INFO", "debug_audio": false, "mock_models": true}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        for m in ["full", "stt", "llm", "tts"] {
            assert_eq!(Mode::parse(m).map(Mode::as_str), Some(m));
        }
        assert_eq!(Mode::parse("echo"), None);
        assert_eq!(Mode::Full.turns(), TurnMode::Agent);
        assert!(matches!(
            Mode::Stt.turns(),
            TurnMode::Vad { auto: false, .. }
        ));
    }

    #[test]
    fn rates_are_read_like_python_int() {
        assert_eq!(python_int(&json!(16000)), Some(16000));
        assert_eq!(python_int(&json!(8000.0)), Some(8000));
        assert_eq!(python_int(&json!(" 16000 ")), Some(16000));
        assert_eq!(python_int(&json!("16k")), None);
        assert_eq!(python_int(&json!(null)), None);
    }

    #[test]
    fn any_path_is_served() {
        assert_eq!(
            handshake(&Handshake::for_test("/whatever", &[])),
            Verdict::Accept { subprotocol: None }
        );
    }
}
