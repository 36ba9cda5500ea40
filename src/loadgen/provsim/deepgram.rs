//! The Deepgram Voice Agent (v1) simulator: `GET /v1/agent/converse` with
//! `Authorization: Token <key>` (or the `token, <key>` WebSocket subprotocol),
//! `Welcome` first, `Settings` before anything else, then binary audio both ways.
//!
//! Owns: one session per connection: `Settings` validation (`audio.input` and
//! `audio.output` encodings and rates, `container: "none"`, `agent.listen` /
//! `think` / `speak` with v1 `provider` objects, optional `greeting`),
//! `SettingsApplied`, the greeting spoken first, and the events of each turn:
//! `UserStartedSpeaking` (every utterance, barge-in included),
//! `ConversationText {role: "user"}`, `AgentThinking`, `AgentStartedSpeaking
//! {total_latency, tts_latency, ttt_latency}`, binary audio in the output encoding,
//! `ConversationText {role: "assistant"}`, `AgentAudioDone`. Also `KeepAlive`,
//! `UpdatePrompt` / `UpdateSpeak` / `UpdateThink`, `InjectAgentMessage`,
//! `InjectUserMessage`, `FunctionCallResponse`, and the idle close
//! (`Error CLIENT_MESSAGE_TIMEOUT` when neither audio nor a message arrived for
//! `idle_close_ms`).
//!
//! Must not: tolerate what the service refuses. Like Deepgram, every client error is
//! a fatal `Error {code, description}` followed by a close (codes
//! `UNPARSABLE_CLIENT_MESSAGE`, `NON_SETTINGS_MESSAGE_BEFORE_SETTINGS` for audio or
//! messages before `Settings`, `SETTINGS_ALREADY_APPLIED`, `INVALID_SETTINGS`), and
//! is recorded as a violation. The early-access shapes (`/agent`,
//! `SettingsConfiguration`, `listen.model`, `think.instructions`) are refused.

#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

use super::brain::{Brain, BrainConfig, BrainEvent, TurnMode};
use super::common::{Conn, FaultStyle, Flow, Gone, Handshake, Ids, Input, Verdict};
use crate::call::Codec;
use crate::media::Rate;
use crate::provider::sim::agent::mix_seed;

/// The agent endpoint's path.
pub(crate) const PATH: &str = "/v1/agent/converse";
/// The early-access endpoint's path (retired).
const EA_PATH: &str = "/agent";

/// The Deepgram faults on the wire.
const STYLE: FaultStyle = FaultStyle {
    error: fault_error,
    fatal_close: 1011,
    big_type: "ConversationText",
    big_field: "content",
};

fn fault_error(fatal: bool) -> Value {
    if fatal {
        json!({"type": "Error", "code": "INTERNAL_SERVER_ERROR",
               "description": "An internal server error occurred while processing the request."})
    } else {
        json!({"type": "Warning", "code": "SPEAK_REQUEST_FAILED",
               "description": "We encountered an error when making a request to the speak provider."})
    }
}

/// Decide on an upgrade request: the v1 path (404 and a violation otherwise, the
/// early-access `/agent` included) and, with a key configured, `Authorization:
/// Token <key>` or the subprotocols `token, <key>` (401 otherwise).
pub(crate) fn handshake(hs: &Handshake, key: Option<&str>) -> Verdict {
    let refuse = |status: u16, code: &str, msg: &str, auth: bool, violation: Option<String>| {
        Verdict::Refuse {
            status,
            body: json!({"err_code": code, "err_msg": msg}).to_string(),
            auth_failure: auth,
            violation,
        }
    };
    if hs.path != PATH {
        let what = if hs.path == EA_PATH {
            format!("upgrade on the early-access endpoint `{EA_PATH}` (v1 is `{PATH}`)")
        } else {
            format!("upgrade on path `{}`, not `{PATH}`", hs.path)
        };
        return refuse(404, "NOT_FOUND", "Not found.", false, Some(what));
    }
    let protocols: Vec<&str> = hs
        .header("sec-websocket-protocol")
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let offered_token = protocols
        .first()
        .is_some_and(|p| p.eq_ignore_ascii_case("token"));
    if let Some(key) = key {
        let by_header = hs.header("authorization").is_some_and(|v| {
            v.split_once(' ')
                .is_some_and(|(scheme, k)| scheme.eq_ignore_ascii_case("token") && k.trim() == key)
        });
        let by_protocol = offered_token && protocols.get(1) == Some(&key);
        if !by_header && !by_protocol {
            return refuse(401, "INVALID_AUTH", "Invalid credentials.", true, None);
        }
    }
    Verdict::Accept {
        subprotocol: offered_token.then_some("token"),
    }
}

/// What `Settings` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    input: Codec,
    output: Codec,
    greeting: Option<String>,
}

/// A fatal `Error` to answer with (and a violation to record).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientError {
    code: &'static str,
    description: String,
}

fn invalid(description: impl Into<String>) -> ClientError {
    ClientError {
        code: "INVALID_SETTINGS",
        description: description.into(),
    }
}

/// Parse an `audio.input` / `audio.output` encoding and rate into a codec the
/// simulator serves.
fn codec_of(o: &Map<String, Value>, side: &str) -> Result<Codec, ClientError> {
    let enc = o
        .get("encoding")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("audio.{side}.encoding is required")))?;
    let rate = o
        .get("sample_rate")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid(format!("audio.{side}.sample_rate is required")))?;
    match enc {
        "mulaw" | "alaw" if rate == 8000 => Ok(if enc == "mulaw" {
            Codec::Pcmu
        } else {
            Codec::Pcma
        }),
        "mulaw" | "alaw" => Err(invalid(format!(
            "audio.{side}: {enc} at {rate} Hz (the simulator serves G.711 at 8000 Hz)"
        ))),
        "linear16" => u32::try_from(rate)
            .ok()
            .and_then(Rate::from_hz)
            .map(Codec::Slin)
            .ok_or_else(|| invalid(format!("audio.{side}: linear16 at unsupported rate {rate}"))),
        other => Err(invalid(format!(
            "audio.{side}.encoding `{other}` (the simulator serves linear16, mulaw, alaw)"
        ))),
    }
}

/// Whether `v` is a v1 provider holder: `{"provider": {"type": ...}}`.
fn has_provider(v: &Value) -> bool {
    v.get("provider")
        .and_then(|p| p.get("type"))
        .is_some_and(Value::is_string)
}

/// Validate a v1 `Settings` message.
fn parse_settings(v: &Value) -> Result<Settings, ClientError> {
    let audio = v
        .get("audio")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("audio is required (input and output formats)"))?;
    let input = audio
        .get("input")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("audio.input is required"))?;
    let output = audio
        .get("output")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("audio.output is required"))?;
    let input = codec_of(input, "input")?;
    let container = output.get("container").map(|c| c.as_str());
    match container {
        None | Some(Some("none")) => {}
        Some(c) => {
            return Err(invalid(format!(
                "audio.output.container {:?}: streamed telephony audio needs \"none\"",
                c.unwrap_or("<not a string>")
            )))
        }
    }
    let output = codec_of(output, "output")?;
    let agent = v
        .get("agent")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("agent is required"))?;
    for part in ["listen", "think", "speak"] {
        let p = agent
            .get(part)
            .ok_or_else(|| invalid(format!("agent.{part} is required")))?;
        let ok = match p {
            Value::Array(list) if part != "listen" => {
                !list.is_empty() && list.iter().all(has_provider)
            }
            p => has_provider(p),
        };
        if !ok {
            let ea = match part {
                "listen" | "speak" => p.get("model").is_some(),
                _ => p.get("instructions").is_some() || p.get("model").is_some(),
            };
            return Err(invalid(if ea {
                format!("agent.{part}: early-access shape; v1 needs agent.{part}.provider {{type, ...}}")
            } else {
                format!("agent.{part}.provider.type is required")
            }));
        }
    }
    if agent
        .get("think")
        .and_then(|t| t.get("instructions"))
        .is_some()
    {
        return Err(invalid(
            "agent.think.instructions is the early-access field; v1 uses agent.think.prompt",
        ));
    }
    let greeting = match agent.get("greeting") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) if g.trim().is_empty() => None,
        Some(Value::String(g)) => Some(g.clone()),
        Some(_) => return Err(invalid("agent.greeting must be a string")),
    };
    Ok(Settings {
        input,
        output,
        greeting,
    })
}

/// One Deepgram session.
struct Session {
    conn: Conn,
    settings: Option<Settings>,
    brain: Option<Brain>,
    last_in: u64,
    pcm: Vec<i16>,
    carry: Option<u8>,
    replies: u64,
    reply_text: String,
    eou_at: Option<u64>,
}

/// Run an accepted connection to its end.
pub(crate) async fn run(conn: Conn) {
    let mut ids = Ids::new(mix_seed(conn.cfg().seed, conn.no));
    let mut s = Session {
        last_in: conn.now_ms(),
        conn,
        settings: None,
        brain: None,
        pcm: Vec::new(),
        carry: None,
        replies: 0,
        reply_text: String::new(),
        eou_at: None,
    };
    let welcome = json!({"type": "Welcome", "request_id": ids.uuid()});
    if s.conn.send_json(&welcome).await.is_ok() {
        let _ = s.run().await;
    }
}

impl Session {
    async fn run(&mut self) -> Result<(), Gone> {
        loop {
            let now = self.conn.now_ms();
            if let Some(brain) = &mut self.brain {
                let mut events = Vec::new();
                while let Some(ev) = brain.poll(now) {
                    events.push(ev);
                }
                for ev in events {
                    self.on_brain(ev).await?;
                }
            }
            let idle_ms = u64::from(self.conn.cfg().idle_close_ms);
            let idle_at = (idle_ms > 0 && !self.conn.is_stalled()).then(|| self.last_in + idle_ms);
            if idle_at.is_some_and(|t| now >= t) {
                self.conn.violation(format!(
                    "no audio or KeepAlive for {idle_ms} ms (the service closes the session)"
                ));
                return self
                    .fatal(
                        "CLIENT_MESSAGE_TIMEOUT",
                        "We did not receive audio or a KeepAlive message within the timeout.",
                        1011,
                    )
                    .await;
            }
            let wake = [self.brain.as_ref().and_then(Brain::next_wakeup), idle_at]
                .into_iter()
                .flatten()
                .min();
            match self.conn.next(wake).await {
                Input::Text(t) => {
                    self.last_in = self.conn.now_ms();
                    if self.on_text(&t).await? == Flow::End {
                        return Ok(());
                    }
                }
                Input::Binary(b) => {
                    self.last_in = self.conn.now_ms();
                    if self.on_audio(b).await? == Flow::End {
                        return Ok(());
                    }
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

    /// A fatal `Error`, then close.
    async fn fatal(&mut self, code: &str, description: &str, close: u16) -> Result<(), Gone> {
        let e = json!({"type": "Error", "code": code, "description": description});
        self.conn.send_json(&e).await?;
        self.conn.close(close, code).await;
        Ok(())
    }

    /// A client error: recorded, answered with a fatal `Error`, connection closed.
    async fn reject(&mut self, e: ClientError, what: &str) -> Result<Flow, Gone> {
        self.conn
            .violation(format!("{what}: {} ({})", e.description, e.code));
        self.fatal(e.code, &e.description, 1008).await?;
        Ok(Flow::End)
    }

    async fn on_text(&mut self, text: &str) -> Result<Flow, Gone> {
        let unparsable = |d: String| ClientError {
            code: "UNPARSABLE_CLIENT_MESSAGE",
            description: d,
        };
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.conn.note_in("<invalid>");
                return self
                    .reject(
                        unparsable(format!("message is not JSON ({e})")),
                        "text frame",
                    )
                    .await;
            }
        };
        let Some(ty) = v.get("type").and_then(Value::as_str).map(str::to_string) else {
            self.conn.note_in("<invalid>");
            return self
                .reject(
                    unparsable("message without a string `type`".into()),
                    "text frame",
                )
                .await;
        };
        self.conn.note_in(&ty);
        if matches!(ty.as_str(), "SettingsConfiguration" | "UpdateInstructions") {
            let d = format!("`{ty}` is an early-access message; v1 has no such type");
            return self.reject(unparsable(d), &ty).await;
        }
        if self.settings.is_none() && ty != "Settings" {
            let e = ClientError {
                code: "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
                description: format!("`{ty}` arrived before Settings"),
            };
            return self.reject(e, &ty).await;
        }
        match ty.as_str() {
            "Settings" => self.on_settings(&v).await,
            "KeepAlive" => Ok(Flow::Continue),
            "UpdatePrompt" => {
                self.update(&v, "prompt", Value::is_string, "PromptUpdated")
                    .await
            }
            "UpdateSpeak" => {
                self.update(
                    &v,
                    "speak",
                    |s| s.is_object() || s.is_array(),
                    "SpeakUpdated",
                )
                .await
            }
            "UpdateThink" => {
                self.update(
                    &v,
                    "think",
                    |s| s.is_object() || s.is_array(),
                    "ThinkUpdated",
                )
                .await
            }
            "InjectAgentMessage" => self.inject_agent(&v).await,
            "InjectUserMessage" => self.inject_user(&v).await,
            "FunctionCallResponse" => {
                let ok = ["id", "name", "content"]
                    .iter()
                    .all(|k| v.get(*k).is_some_and(Value::is_string));
                if ok {
                    Ok(Flow::Continue)
                } else {
                    let d = "FunctionCallResponse needs string id, name and content".to_string();
                    self.reject(unparsable(d), &ty).await
                }
            }
            other => {
                let d = format!("unknown message type `{other}`");
                self.reject(unparsable(d), other).await
            }
        }
    }

    async fn on_settings(&mut self, v: &Value) -> Result<Flow, Gone> {
        if self.settings.is_some() {
            let e = ClientError {
                code: "SETTINGS_ALREADY_APPLIED",
                description: "Settings were already applied for this session.".into(),
            };
            return self.reject(e, "Settings").await;
        }
        let settings = match parse_settings(v) {
            Ok(s) => s,
            Err(e) => return self.reject(e, "Settings").await,
        };
        let cfg = self.conn.cfg();
        let mut brain = Brain::new(
            BrainConfig {
                think_ms: cfg.think_ms,
                reply_ms: cfg.reply_ms.max(1),
                chunk_ms: cfg.chunk_ms.max(1),
                burst_interval_ms: cfg.burst_interval_ms,
                silence_ms: 500,
                seed: mix_seed(cfg.seed, self.conn.no),
                turns: TurnMode::Agent,
            },
            settings.input,
            settings.output,
        );
        let greeting_ms = if cfg.greeting_ms > 0 {
            cfg.greeting_ms
        } else {
            cfg.reply_ms.max(1)
        };
        self.conn
            .send_json(&json!({"type": "SettingsApplied"}))
            .await?;
        if let Some(g) = &settings.greeting {
            self.reply_text = g.clone();
            brain.start_reply(self.conn.now_ms(), greeting_ms);
        }
        self.brain = Some(brain);
        self.settings = Some(settings);
        Ok(Flow::Continue)
    }

    async fn update(
        &mut self,
        v: &Value,
        field: &str,
        ok: fn(&Value) -> bool,
        answer: &str,
    ) -> Result<Flow, Gone> {
        if !v.get(field).is_some_and(ok) {
            let ty = v["type"].as_str().unwrap_or("?").to_string();
            let e = ClientError {
                code: "UNPARSABLE_CLIENT_MESSAGE",
                description: format!("{ty} needs `{field}`"),
            };
            return self.reject(e, &ty).await;
        }
        self.conn.send_json(&json!({"type": answer})).await?;
        Ok(Flow::Continue)
    }

    async fn inject_agent(&mut self, v: &Value) -> Result<Flow, Gone> {
        let Some(message) = v.get("message").and_then(Value::as_str).map(str::to_string) else {
            let d = if v.get("content").is_some() {
                "InjectAgentMessage: `content` is the early-access field; v1 uses `message`"
            } else {
                "InjectAgentMessage needs a string `message`"
            };
            let e = ClientError {
                code: "UNPARSABLE_CLIENT_MESSAGE",
                description: d.into(),
            };
            return self.reject(e, "InjectAgentMessage").await;
        };
        let now = self.conn.now_ms();
        let reply_ms = self.conn.cfg().reply_ms.max(1);
        let Some(brain) = &mut self.brain else {
            return Ok(Flow::Continue);
        };
        let refused = if brain.user_speaking() {
            Some("INJECT_AGENT_MESSAGE_DURING_USER_SPEECH")
        } else if brain.is_replying() || brain.agent_speaking(now) {
            Some("INJECT_AGENT_MESSAGE_DURING_AGENT_SPEECH")
        } else {
            brain.start_reply(now, reply_ms);
            None
        };
        match refused {
            Some(code) => {
                self.conn
                    .send_json(&json!({"type": "InjectionRefused", "message": code}))
                    .await?
            }
            None => self.reply_text = message,
        }
        Ok(Flow::Continue)
    }

    async fn inject_user(&mut self, v: &Value) -> Result<Flow, Gone> {
        let Some(content) = v.get("content").and_then(Value::as_str).map(str::to_string) else {
            let e = ClientError {
                code: "UNPARSABLE_CLIENT_MESSAGE",
                description: "InjectUserMessage needs a string `content`".into(),
            };
            return self.reject(e, "InjectUserMessage").await;
        };
        let now = self.conn.now_ms();
        let reply_ms = self.conn.cfg().reply_ms.max(1);
        self.conn
            .send_json(&json!({"type": "ConversationText", "role": "user", "content": content}))
            .await?;
        self.conn.turn();
        self.conn
            .send_json(&json!({"type": "AgentThinking", "content": ""}))
            .await?;
        if let Some(brain) = &mut self.brain {
            if brain.start_reply(now, reply_ms) {
                self.eou_at = Some(now);
                self.reply_text.clear();
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_audio(&mut self, bytes: Vec<u8>) -> Result<Flow, Gone> {
        self.conn.note_in("binary");
        let (Some(settings), Some(brain)) = (&self.settings, &mut self.brain) else {
            let e = ClientError {
                code: "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
                description: format!(
                    "binary audio ({} bytes) before SettingsApplied",
                    bytes.len()
                ),
            };
            return self.reject(e, "audio").await;
        };
        self.conn.audio_in(bytes.len());
        let codec = settings.input;
        // linear16 is a byte stream: a frame may split a sample.
        let mut data = bytes;
        if codec.bytes_per_sample() == 2 {
            if let Some(b) = self.carry.take() {
                data.insert(0, b);
            }
            if data.len() % 2 == 1 {
                self.carry = data.pop();
            }
        }
        super::brain::decode(codec, &data, &mut self.pcm);
        brain.on_audio(self.conn.now_ms(), &self.pcm);
        Ok(Flow::Continue)
    }

    async fn on_brain(&mut self, ev: BrainEvent) -> Result<(), Gone> {
        match ev {
            BrainEvent::SpeechStarted { .. } => {
                self.conn
                    .send_json(&json!({"type": "UserStartedSpeaking"}))
                    .await
            }
            BrainEvent::SpeechStopped {
                utterance: true,
                spoke_ms,
                ..
            } => {
                self.conn.turn();
                self.eou_at = Some(self.conn.now_ms());
                self.reply_text.clear();
                let text = format!("[caller spoke {spoke_ms} ms]");
                self.conn
                    .send_json(
                        &json!({"type": "ConversationText", "role": "user", "content": text}),
                    )
                    .await?;
                self.conn
                    .send_json(&json!({"type": "AgentThinking", "content": ""}))
                    .await
            }
            BrainEvent::SpeechStopped { .. } => Ok(()),
            BrainEvent::BargeIn => {
                self.conn.barge_in();
                Ok(())
            }
            BrainEvent::ReplyStarted { total_ms, .. } => {
                self.replies += 1;
                if self.reply_text.is_empty() {
                    self.reply_text = format!("[sim reply {}: {total_ms} ms]", self.replies);
                }
                self.conn.reply_started();
                let now = self.conn.now_ms();
                let total = self
                    .eou_at
                    .take()
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
                let tts = (total * 0.3 * 1000.0).round() / 1000.0;
                let ev = json!({"type": "AgentStartedSpeaking", "total_latency": total,
                                "tts_latency": tts, "ttt_latency": ((total - tts) * 1000.0).round() / 1000.0});
                self.conn.send_json(&ev).await
            }
            BrainEvent::Audio(bytes) => self.conn.send_audio(bytes).await,
            BrainEvent::AudioDone => {
                let text = std::mem::take(&mut self.reply_text);
                self.conn
                    .send_json(
                        &json!({"type": "ConversationText", "role": "assistant", "content": text}),
                    )
                    .await?;
                self.conn
                    .send_json(&json!({"type": "AgentAudioDone"}))
                    .await
            }
            BrainEvent::ResponseDone { .. } => {
                self.reply_text.clear();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Value {
        json!({
            "type": "Settings",
            "audio": {
                "input": {"encoding": "mulaw", "sample_rate": 8000},
                "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}
            },
            "agent": {
                "language": "en",
                "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
                "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."},
                "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
                "greeting": "Hello!"
            }
        })
    }

    #[test]
    fn v1_settings_are_accepted() {
        let s = parse_settings(&settings()).unwrap();
        assert_eq!(s.input, Codec::Pcmu);
        assert_eq!(s.output, Codec::Pcmu);
        assert_eq!(s.greeting.as_deref(), Some("Hello!"));
        let mut v = settings();
        v["audio"]["output"] = json!({"encoding": "linear16", "sample_rate": 16000});
        v["agent"]["speak"] =
            json!([{"provider": {"type": "deepgram"}}, {"provider": {"type": "open_ai"}}]);
        assert_eq!(
            parse_settings(&v).unwrap().output,
            Codec::Slin(Rate::Hz16000)
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        type Mutate = fn(&mut Value);
        let cases: Vec<(Mutate, &str)> = vec![
            (|v| v["audio"]["input"]["encoding"] = json!("opus"), "opus"),
            (
                |v| v["audio"]["input"]["sample_rate"] = json!(16000),
                "8000",
            ),
            (
                |v| v["audio"]["output"]["container"] = json!("wav"),
                "container",
            ),
            (
                |v| v["agent"]["listen"] = json!({"model": "nova-3"}),
                "early-access",
            ),
            (
                |v| {
                    v["agent"]["think"] =
                        json!({"provider": {"type": "open_ai"}, "instructions": "x"})
                },
                "prompt",
            ),
            (
                |v| {
                    v["agent"].as_object_mut().unwrap().remove("speak");
                },
                "agent.speak",
            ),
            (
                |v| {
                    v.as_object_mut().unwrap().remove("audio");
                },
                "audio",
            ),
        ];
        for (mutate, needle) in cases {
            let mut v = settings();
            mutate(&mut v);
            let e = parse_settings(&v).unwrap_err();
            assert_eq!(e.code, "INVALID_SETTINGS");
            assert!(
                e.description.contains(needle),
                "{needle}: {}",
                e.description
            );
        }
    }

    #[test]
    fn handshake_paths_and_keys() {
        let h = |path: &str, headers: &[(&str, &str)]| Handshake::for_test(path, headers);
        assert_eq!(
            handshake(&h(PATH, &[("Authorization", "Token k1")]), Some("k1")),
            Verdict::Accept { subprotocol: None }
        );
        assert_eq!(
            handshake(
                &h(PATH, &[("Sec-WebSocket-Protocol", "token, k1")]),
                Some("k1")
            ),
            Verdict::Accept {
                subprotocol: Some("token")
            }
        );
        assert!(matches!(
            handshake(&h(PATH, &[("Authorization", "Token k2")]), Some("k1")),
            Verdict::Refuse {
                status: 401,
                auth_failure: true,
                ..
            }
        ));
        assert!(matches!(
            handshake(&h(PATH, &[("Authorization", "Bearer k1")]), Some("k1")),
            Verdict::Refuse { status: 401, .. }
        ));
        match handshake(&h("/agent", &[]), None) {
            Verdict::Refuse {
                status: 404,
                violation: Some(v),
                ..
            } => assert!(v.contains("early-access")),
            other => panic!("{other:?}"),
        }
    }
}
