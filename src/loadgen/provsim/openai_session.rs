//! OpenAI Realtime (GA) shapes the simulator checks, sans-IO: the session
//! configuration (defaults of `session.created`, validation of `session.update`,
//! the JSON echoed in `session.updated`), `response.create`'s `response` object, and
//! `conversation.item.create`'s `item`.
//!
//! Owns: what a GA client may send and how the server words its
//! `invalid_request_error`s (`unknown_parameter` for the retired beta fields such as
//! a top-level `input_audio_format`, `modalities` or `voice`; `invalid_value`,
//! `invalid_type`, `missing_required_parameter`). A rejected update changes
//! nothing, like the real server.
//!
//! Must not: do I/O or keep connection state (that is `openai`).

#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

use super::brain::TurnMode;
use crate::call::Codec;
use crate::media::Rate;

/// An `invalid_request_error` to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// `code` of the error.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The offending parameter, if any.
    pub param: Option<String>,
}

impl ApiError {
    fn new(code: &'static str, param: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    fn unknown(param: &str) -> Self {
        ApiError::new(
            "unknown_parameter",
            param,
            format!("Unknown parameter: '{param}'."),
        )
    }

    fn missing(param: &str) -> Self {
        ApiError::new(
            "missing_required_parameter",
            param,
            format!("Missing required parameter: '{param}'."),
        )
    }

    fn bad_type(param: &str, want: &str, v: &Value) -> Self {
        ApiError::new(
            "invalid_type",
            param,
            format!(
                "Invalid type for '{param}': expected {want}, but got {} instead.",
                type_name(v)
            ),
        )
    }

    fn bad_value(param: &str, message: impl Into<String>) -> Self {
        ApiError::new("invalid_value", param, message)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::bad_type(param, "an object", v))
}

fn check_keys(o: &Map<String, Value>, param: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::unknown(&format!("{param}.{k}"))),
        None => Ok(()),
    }
}

fn opt_u64(o: &Map<String, Value>, key: &str, param: &str) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_type(&format!("{param}.{key}"), "an integer >= 0", v)),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str, param: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::bad_type(&format!("{param}.{key}"), "a boolean", v)),
    }
}

/// Top-level session fields of the retired beta interface (GA moved them under
/// `audio` or renamed them).
const BETA_SESSION_KEYS: [&str; 8] = [
    "input_audio_format",
    "output_audio_format",
    "modalities",
    "voice",
    "turn_detection",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "max_response_output_tokens",
];

/// GA session fields a client may set (plus the read-only ones a client may echo
/// back from `session.created`).
const SESSION_KEYS: [&str; 15] = [
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "include",
    "tracing",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "truncation",
    "prompt",
    "id",
    "object",
    "expires_at",
];

/// Server VAD settings (`audio.input.turn_detection`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TurnDetection {
    /// `semantic_vad` rather than `server_vad`.
    pub semantic: bool,
    /// Activation threshold 0..1 (server_vad).
    pub threshold: f64,
    /// Audio kept before detected speech (ms).
    pub prefix_padding_ms: u64,
    /// Quiet that ends an utterance (ms).
    pub silence_duration_ms: u64,
    /// `idle_timeout_ms` (accepted, not acted on).
    pub idle_timeout_ms: Option<u64>,
    /// Create a response at the end of each utterance.
    pub create_response: bool,
    /// Caller speech cancels the running response.
    pub interrupt_response: bool,
    /// `semantic_vad` eagerness.
    pub eagerness: String,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            semantic: false,
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            idle_timeout_ms: None,
            create_response: true,
            interrupt_response: true,
            eagerness: "auto".into(),
        }
    }
}

impl TurnDetection {
    fn to_json(&self) -> Value {
        if self.semantic {
            json!({
                "type": "semantic_vad",
                "eagerness": self.eagerness,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            })
        } else {
            json!({
                "type": "server_vad",
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "idle_timeout_ms": self.idle_timeout_ms,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            })
        }
    }

    fn parse(v: &Value, param: &str) -> Result<Option<TurnDetection>, ApiError> {
        if v.is_null() {
            return Ok(None);
        }
        let o = object(v, param)?;
        let mut td = TurnDetection::default();
        match o.get("type").and_then(Value::as_str) {
            Some("server_vad") => {
                check_keys(
                    o,
                    param,
                    &[
                        "type",
                        "threshold",
                        "prefix_padding_ms",
                        "silence_duration_ms",
                        "idle_timeout_ms",
                        "create_response",
                        "interrupt_response",
                    ],
                )?;
                if let Some(t) = o.get("threshold").filter(|t| !t.is_null()) {
                    match t.as_f64() {
                        Some(x) if (0.0..=1.0).contains(&x) => td.threshold = x,
                        _ => {
                            return Err(ApiError::bad_value(
                                &format!("{param}.threshold"),
                                "threshold must be a number between 0 and 1",
                            ))
                        }
                    }
                }
                if let Some(x) = opt_u64(o, "prefix_padding_ms", param)? {
                    td.prefix_padding_ms = x;
                }
                if let Some(x) = opt_u64(o, "silence_duration_ms", param)? {
                    td.silence_duration_ms = x;
                }
                td.idle_timeout_ms = opt_u64(o, "idle_timeout_ms", param)?;
            }
            Some("semantic_vad") => {
                check_keys(
                    o,
                    param,
                    &["type", "eagerness", "create_response", "interrupt_response"],
                )?;
                td.semantic = true;
                if let Some(e) = o.get("eagerness").filter(|e| !e.is_null()) {
                    match e.as_str() {
                        Some(s @ ("low" | "medium" | "high" | "auto")) => {
                            td.eagerness = s.to_string();
                            td.silence_duration_ms = match s {
                                "low" => 1000,
                                "high" => 250,
                                _ => 500,
                            };
                        }
                        _ => {
                            return Err(ApiError::bad_value(
                                &format!("{param}.eagerness"),
                                "Invalid value for 'eagerness'. Supported values are: 'low', 'medium', 'high', and 'auto'.",
                            ))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::bad_value(
                    &format!("{param}.type"),
                    format!("Invalid value: '{other}'. Supported values are: 'server_vad' and 'semantic_vad'."),
                ))
            }
            None => return Err(ApiError::missing(&format!("{param}.type"))),
        }
        if let Some(b) = opt_bool(o, "create_response", param)? {
            td.create_response = b;
        }
        if let Some(b) = opt_bool(o, "interrupt_response", param)? {
            td.interrupt_response = b;
        }
        Ok(Some(td))
    }
}

/// The `{type, rate}` object of an audio format.
pub(crate) fn format_json(c: Codec) -> Value {
    match c {
        Codec::Slin(_) => json!({"type": "audio/pcm", "rate": 24000}),
        Codec::Pcmu => json!({"type": "audio/pcmu"}),
        Codec::Pcma => json!({"type": "audio/pcma"}),
    }
}

/// Parse an `audio.*.format`: GA objects only (`audio/pcm` at 24 kHz, `audio/pcmu`,
/// `audio/pcma`); the beta strings (`pcm16`, `g711_ulaw`) are errors.
pub(crate) fn parse_format(v: &Value, param: &str) -> Result<Codec, ApiError> {
    let o = object(v, param)?;
    check_keys(o, param, &["type", "rate"])?;
    match o.get("type").and_then(Value::as_str) {
        Some("audio/pcm") => match o.get("rate") {
            None | Some(Value::Null) => Ok(Codec::Slin(Rate::Hz24000)),
            Some(r) if r.as_u64() == Some(24000) => Ok(Codec::Slin(Rate::Hz24000)),
            Some(_) => Err(ApiError::bad_value(
                &format!("{param}.rate"),
                "Invalid value for 'rate': audio/pcm supports 24000 only.",
            )),
        },
        Some("audio/pcmu") => Ok(Codec::Pcmu),
        Some("audio/pcma") => Ok(Codec::Pcma),
        Some(other) => Err(ApiError::bad_value(
            &format!("{param}.type"),
            format!("Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'."),
        )),
        None => Err(ApiError::missing(&format!("{param}.type"))),
    }
}

/// A realtime session's configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionCfg {
    /// `sess_...`.
    pub id: String,
    /// The model of the URL.
    pub model: String,
    /// `audio.input.format`.
    pub in_codec: Codec,
    /// `audio.output.format`.
    pub out_codec: Codec,
    /// `audio.output.voice`.
    pub voice: Value,
    /// `audio.output.speed`.
    pub speed: f64,
    /// `instructions`.
    pub instructions: String,
    /// `audio.input.turn_detection` (`None`: null, manual turns).
    pub turn_detection: Option<TurnDetection>,
    /// `audio.input.transcription` (`None`: off).
    pub transcription: Option<Value>,
    /// `audio.input.noise_reduction`.
    pub noise_reduction: Value,
    /// `output_modalities`.
    pub output_modalities: Vec<String>,
    /// Other fields echoed as set.
    pub rest: Map<String, Value>,
}

impl SessionCfg {
    /// The defaults a GA session starts with.
    pub(crate) fn new(id: String, model: String) -> Self {
        let mut rest = Map::new();
        rest.insert("tools".into(), json!([]));
        rest.insert("tool_choice".into(), json!("auto"));
        rest.insert("max_output_tokens".into(), json!("inf"));
        rest.insert("tracing".into(), Value::Null);
        rest.insert("truncation".into(), json!("auto"));
        rest.insert("prompt".into(), Value::Null);
        rest.insert("include".into(), Value::Null);
        SessionCfg {
            id,
            model,
            in_codec: Codec::Slin(Rate::Hz24000),
            out_codec: Codec::Slin(Rate::Hz24000),
            voice: json!("alloy"),
            speed: 1.0,
            instructions: "You are a helpful, witty, and friendly AI.".into(),
            turn_detection: Some(TurnDetection::default()),
            transcription: None,
            noise_reduction: Value::Null,
            output_modalities: vec!["audio".into()],
            rest,
        }
    }

    /// The `session` object of `session.created` / `session.updated`.
    pub(crate) fn to_json(&self, expires_at: u64) -> Value {
        let mut o = self.rest.clone();
        let set = |o: &mut Map<String, Value>, k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        set(&mut o, "type", json!("realtime"));
        set(&mut o, "object", json!("realtime.session"));
        set(&mut o, "id", json!(self.id));
        set(&mut o, "model", json!(self.model));
        set(&mut o, "expires_at", json!(expires_at));
        set(&mut o, "output_modalities", json!(self.output_modalities));
        set(&mut o, "instructions", json!(self.instructions));
        set(
            &mut o,
            "audio",
            json!({
                "input": {
                    "format": format_json(self.in_codec),
                    "transcription": self.transcription,
                    "noise_reduction": self.noise_reduction,
                    "turn_detection": self.turn_detection.as_ref().map(TurnDetection::to_json),
                },
                "output": {
                    "format": format_json(self.out_codec),
                    "voice": self.voice,
                    "speed": self.speed,
                }
            }),
        );
        Value::Object(o)
    }

    /// How the brain takes turns under this configuration, and its silence (ms).
    pub(crate) fn turn_mode(&self) -> (TurnMode, u32) {
        match &self.turn_detection {
            None => (TurnMode::Manual, 500),
            Some(td) => {
                let mode = if td.create_response && td.interrupt_response {
                    TurnMode::Agent
                } else {
                    TurnMode::Vad {
                        auto: td.create_response,
                        interrupt: td.interrupt_response,
                    }
                };
                (mode, td.silence_duration_ms.min(60_000) as u32)
            }
        }
    }

    /// The configuration after `session.update`'s `session`, or the error the
    /// server answers (nothing applied). `voice_locked`: assistant audio was already
    /// produced, so the voice may no longer change.
    pub(crate) fn updated(
        &self,
        session: &Value,
        voice_locked: bool,
    ) -> Result<SessionCfg, ApiError> {
        let o = object(session, "session")?;
        if let Some(k) = BETA_SESSION_KEYS.iter().find(|k| o.contains_key(**k)) {
            return Err(ApiError::unknown(&format!("session.{k}")));
        }
        check_keys(o, "session", &SESSION_KEYS)?;
        match o.get("type") {
            None => return Err(ApiError::missing("session.type")),
            Some(Value::String(t)) if t == "realtime" => {}
            Some(v) => {
                return Err(ApiError::bad_value(
                    "session.type",
                    format!(
                    "Invalid value: {v}. This endpoint (the simulator) serves 'realtime' sessions."
                ),
                ))
            }
        }
        let mut next = self.clone();
        if let Some(m) = o.get("model") {
            match m.as_str() {
                Some(m) if m == self.model => {}
                Some(_) => {
                    return Err(ApiError::bad_value(
                        "session.model",
                        "The model cannot be changed during a session.",
                    ))
                }
                None => return Err(ApiError::bad_type("session.model", "a string", m)),
            }
        }
        if let Some(v) = o.get("output_modalities") {
            let list = v
                .as_array()
                .ok_or_else(|| ApiError::bad_type("session.output_modalities", "an array", v))?;
            let mut mods = Vec::new();
            for m in list {
                match m.as_str() {
                    Some(s @ ("audio" | "text")) => mods.push(s.to_string()),
                    _ => {
                        return Err(ApiError::bad_value(
                            "session.output_modalities",
                            "Invalid value. Supported values are: 'audio' and 'text'.",
                        ))
                    }
                }
            }
            if mods.len() != 1 {
                return Err(ApiError::bad_value(
                    "session.output_modalities",
                    "output_modalities must be exactly one of ['audio'] or ['text'].",
                ));
            }
            next.output_modalities = mods;
        }
        if let Some(v) = o.get("instructions") {
            next.instructions = v
                .as_str()
                .ok_or_else(|| ApiError::bad_type("session.instructions", "a string", v))?
                .to_string();
        }
        if let Some(audio) = o.get("audio") {
            let a = object(audio, "session.audio")?;
            check_keys(a, "session.audio", &["input", "output"])?;
            if let Some(input) = a.get("input") {
                let i = object(input, "session.audio.input")?;
                check_keys(
                    i,
                    "session.audio.input",
                    &[
                        "format",
                        "transcription",
                        "noise_reduction",
                        "turn_detection",
                    ],
                )?;
                if let Some(f) = i.get("format") {
                    next.in_codec = parse_format(f, "session.audio.input.format")?;
                }
                if let Some(t) = i.get("transcription") {
                    next.transcription = match t {
                        Value::Null => None,
                        Value::Object(to) => {
                            check_keys(
                                to,
                                "session.audio.input.transcription",
                                &["model", "language", "prompt"],
                            )?;
                            if !to.get("model").is_some_and(Value::is_string) {
                                return Err(ApiError::missing(
                                    "session.audio.input.transcription.model",
                                ));
                            }
                            Some(t.clone())
                        }
                        v => {
                            return Err(ApiError::bad_type(
                                "session.audio.input.transcription",
                                "an object",
                                v,
                            ))
                        }
                    };
                }
                if let Some(n) = i.get("noise_reduction") {
                    match n {
                        Value::Null => {}
                        Value::Object(no) => match no.get("type").and_then(Value::as_str) {
                            Some("near_field" | "far_field") => {}
                            _ => {
                                return Err(ApiError::bad_value(
                                    "session.audio.input.noise_reduction.type",
                                    "Supported values are: 'near_field' and 'far_field'.",
                                ))
                            }
                        },
                        v => {
                            return Err(ApiError::bad_type(
                                "session.audio.input.noise_reduction",
                                "an object",
                                v,
                            ))
                        }
                    }
                    next.noise_reduction = n.clone();
                }
                if let Some(t) = i.get("turn_detection") {
                    next.turn_detection =
                        TurnDetection::parse(t, "session.audio.input.turn_detection")?;
                }
            }
            if let Some(output) = a.get("output") {
                let op = object(output, "session.audio.output")?;
                check_keys(op, "session.audio.output", &["format", "voice", "speed"])?;
                if let Some(f) = op.get("format") {
                    next.out_codec = parse_format(f, "session.audio.output.format")?;
                }
                if let Some(v) = op.get("voice") {
                    if !(v.is_string() || v.get("id").is_some_and(Value::is_string)) {
                        return Err(ApiError::bad_type(
                            "session.audio.output.voice",
                            "a string",
                            v,
                        ));
                    }
                    if voice_locked && *v != self.voice {
                        return Err(ApiError {
                            code: "cannot_update_voice",
                            message: "Cannot update a conversation's voice if assistant audio is present.".into(),
                            param: Some("session.audio.output.voice".into()),
                        });
                    }
                    next.voice = v.clone();
                }
                if let Some(s) = op.get("speed").filter(|s| !s.is_null()) {
                    match s.as_f64() {
                        Some(x) if (0.25..=1.5).contains(&x) => next.speed = x,
                        _ => {
                            return Err(ApiError::bad_value(
                                "session.audio.output.speed",
                                "speed must be between 0.25 and 1.5",
                            ))
                        }
                    }
                }
            }
        }
        for k in [
            "include",
            "tracing",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "truncation",
            "prompt",
        ] {
            if let Some(v) = o.get(k) {
                next.rest.insert(k.to_string(), v.clone());
            }
        }
        Ok(next)
    }
}

/// Fields of a `response.create`'s `response` (GA); beta fields are unknown.
pub(crate) fn check_response(v: &Value) -> Result<(), ApiError> {
    let o = object(v, "response")?;
    for k in [
        "modalities",
        "voice",
        "output_audio_format",
        "max_response_output_tokens",
    ] {
        if o.contains_key(k) {
            return Err(ApiError::unknown(&format!("response.{k}")));
        }
    }
    check_keys(
        o,
        "response",
        &[
            "output_modalities",
            "instructions",
            "audio",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "conversation",
            "metadata",
            "input",
            "prompt",
        ],
    )?;
    if let Some(c) = o.get("conversation") {
        if !matches!(c.as_str(), Some("auto" | "none")) {
            return Err(ApiError::bad_value(
                "response.conversation",
                "Supported values are: 'auto' and 'none'.",
            ));
        }
    }
    if let Some(audio) = o.get("audio") {
        let a = object(audio, "response.audio")?;
        check_keys(a, "response.audio", &["output"])?;
        if let Some(out) = a.get("output") {
            let op = object(out, "response.audio.output")?;
            check_keys(op, "response.audio.output", &["format", "voice"])?;
            if let Some(f) = op.get("format") {
                parse_format(f, "response.audio.output.format")?;
            }
        }
    }
    Ok(())
}

/// What a valid `conversation.item.create` item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemRole {
    /// A user message.
    User,
    /// An assistant message (text only when created by the client).
    Assistant,
    /// A system message.
    System,
    /// A function call or its output.
    Function,
}

impl ItemRole {
    /// `user`, `assistant`, `system` or `function`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ItemRole::User => "user",
            ItemRole::Assistant => "assistant",
            ItemRole::System => "system",
            ItemRole::Function => "function",
        }
    }
}

/// Check a `conversation.item.create` item (GA content types: user `input_text` /
/// `input_audio` / `input_image`, assistant `output_text` / `output_audio`, system
/// `input_text`; the beta `text` is an error).
pub(crate) fn check_item(v: &Value) -> Result<ItemRole, ApiError> {
    let o = object(v, "item")?;
    match o.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some("function_call") => {
            for k in ["name", "call_id", "arguments"] {
                if !o.get(k).is_some_and(Value::is_string) {
                    return Err(ApiError::missing(&format!("item.{k}")));
                }
            }
            return Ok(ItemRole::Function);
        }
        Some("function_call_output") => {
            for k in ["call_id", "output"] {
                if !o.get(k).is_some_and(Value::is_string) {
                    return Err(ApiError::missing(&format!("item.{k}")));
                }
            }
            return Ok(ItemRole::Function);
        }
        Some(other) => {
            return Err(ApiError::bad_value(
                "item.type",
                format!("Invalid value: '{other}'. Supported values are: 'message', 'function_call', and 'function_call_output'."),
            ))
        }
        None => return Err(ApiError::missing("item.type")),
    }
    let (role, allowed): (ItemRole, &[&str]) = match o.get("role").and_then(Value::as_str) {
        Some("user") => (ItemRole::User, &["input_text", "input_audio", "input_image"]),
        Some("assistant") => (ItemRole::Assistant, &["output_text", "output_audio"]),
        Some("system") => (ItemRole::System, &["input_text"]),
        Some(other) => {
            return Err(ApiError::bad_value(
                "item.role",
                format!("Invalid value: '{other}'. Supported values are: 'user', 'assistant', and 'system'."),
            ))
        }
        None => return Err(ApiError::missing("item.role")),
    };
    let content = match o.get("content") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None => return Err(ApiError::missing("item.content")),
        Some(v) => return Err(ApiError::bad_type("item.content", "an array", v)),
    };
    for (i, part) in content.iter().enumerate() {
        let param = format!("item.content[{i}].type");
        match part.get("type").and_then(Value::as_str) {
            Some(t) if allowed.contains(&t) => {}
            Some(t) => {
                let list = allowed
                    .iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::bad_value(
                    &param,
                    format!("Invalid value: '{t}'. Supported values are: {list}."),
                ));
            }
            None => return Err(ApiError::missing(&param)),
        }
    }
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SessionCfg {
        SessionCfg::new("sess_1".into(), "gpt-realtime".into())
    }

    #[test]
    fn telephony_update_is_accepted() {
        let s = base()
            .updated(
                &json!({
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "Be brief.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400,
                                               "create_response": true, "interrupt_response": true}
                        },
                        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
                    }
                }),
                false,
            )
            .unwrap();
        assert_eq!(s.in_codec, Codec::Pcmu);
        assert_eq!(s.out_codec, Codec::Pcmu);
        assert_eq!(s.turn_mode(), (TurnMode::Agent, 400));
        assert!(s.transcription.is_some());
        let j = s.to_json(0);
        assert_eq!(j["audio"]["output"]["voice"], "marin");
        assert_eq!(j["audio"]["input"]["format"]["type"], "audio/pcmu");
        assert_eq!(j["type"], "realtime");
    }

    #[test]
    fn beta_shapes_are_refused() {
        for (session, param) in [
            (
                json!({"type": "realtime", "input_audio_format": "g711_ulaw"}),
                "session.input_audio_format",
            ),
            (
                json!({"type": "realtime", "modalities": ["audio", "text"]}),
                "session.modalities",
            ),
            (
                json!({"type": "realtime", "voice": "alloy"}),
                "session.voice",
            ),
            (json!({"modalities": ["audio"]}), "session.modalities"),
        ] {
            let e = base().updated(&session, false).unwrap_err();
            assert_eq!(e.code, "unknown_parameter", "{session}");
            assert_eq!(e.param.as_deref(), Some(param));
        }
        let e = base()
            .updated(&json!({"instructions": "x"}), false)
            .unwrap_err();
        assert_eq!(e.code, "missing_required_parameter");
        let e = base()
            .updated(
                &json!({"type": "realtime", "audio": {"input": {"format": "pcm16"}}}),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, "invalid_type");
        let e = base()
            .updated(
                &json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, "invalid_value");
    }

    #[test]
    fn turn_detection_modes() {
        let upd = |td: Value| {
            base()
                .updated(
                    &json!({"type": "realtime", "audio": {"input": {"turn_detection": td}}}),
                    false,
                )
                .map(|s| s.turn_mode())
        };
        assert_eq!(upd(Value::Null).unwrap().0, TurnMode::Manual);
        assert_eq!(
            upd(json!({"type": "server_vad", "create_response": false}))
                .unwrap()
                .0,
            TurnMode::Vad {
                auto: false,
                interrupt: true
            }
        );
        assert_eq!(
            upd(json!({"type": "semantic_vad", "eagerness": "low"})).unwrap(),
            (TurnMode::Agent, 1000)
        );
        assert!(upd(json!({"type": "client_vad"})).is_err());
        assert!(upd(json!({"type": "server_vad", "threshold": 3})).is_err());
    }

    #[test]
    fn voice_is_locked_after_audio() {
        let upd = json!({"type": "realtime", "audio": {"output": {"voice": "cedar"}}});
        assert!(base().updated(&upd, false).is_ok());
        assert_eq!(
            base().updated(&upd, true).unwrap_err().code,
            "cannot_update_voice"
        );
    }

    #[test]
    fn items_and_responses() {
        assert_eq!(
            check_item(&json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hi"}]})),
            Ok(ItemRole::User)
        );
        assert_eq!(
            check_item(&json!({"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "hello"}]})),
            Ok(ItemRole::Assistant)
        );
        let e = check_item(&json!({"type": "message", "role": "assistant",
            "content": [{"type": "text", "text": "hello"}]}))
        .unwrap_err();
        assert_eq!(e.code, "invalid_value");
        assert!(check_item(&json!({"type": "message", "role": "user", "content": []})).is_err());
        assert!(check_response(&json!({"instructions": "greet"})).is_ok());
        assert_eq!(
            check_response(&json!({"modalities": ["audio"]}))
                .unwrap_err()
                .code,
            "unknown_parameter"
        );
    }
}
