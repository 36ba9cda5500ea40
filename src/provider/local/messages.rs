//! Messages of the reference engine's `local-ai-server` WebSocket protocol
//! (protocol version 2, as its `ws_protocol.py` and engine client speak it): the
//! client messages voxd sends and the server messages it parses into
//! [`ServerMsg`].
//!
//! Owns: the JSON shapes. Client: `auth {auth_token, call_id}`; `audio {data
//! (base64 PCM16LE 16 kHz), rate: 16000, format: "pcm16le", call_id, mode:
//! "full", output_encoding, output_sample_rate_hz}`; `barge_in {call_id,
//! request_id, protocol_version}`; `tts_request {text, call_id, request_id, ...}`
//! (the greeting); `switch_model {scope: "session", call_id, request_id,
//! llm_config: {system_prompt}}` (an agent's prompt). Server: `auth_response
//! {status, message}`, `stt_result {text, is_final, error?}`, `llm_response
//! {text}`, `tts_audio {encoding, sample_rate_hz, byte_length, utterance_id?,
//! chunk_index?, is_final?}` (a binary message with the audio follows unless
//! `byte_length` is 0), `tts_response {text, audio_data (base64), encoding,
//! sample_rate_hz}`, `barge_in_ack {request_id}`, `switch_response {status,
//! message}`, `mode_ready`. Types are matched as the server matches them:
//! lower-cased, `-` read as `_`.
//!
//! Must not: do I/O, hold session state, or fail on unknown fields or types.

#![forbid(unsafe_code)]

use base64::Engine as _;
use serde_json::{json, Value};

/// Protocol version voxd speaks (the server only warns on a mismatch).
pub const PROTOCOL_VERSION: u32 = 2;

/// What voxd asks the server to send: linear PCM 16 kHz (Piper and Kokoro can; the
/// server falls back to mu-law 8 kHz otherwise and says so in `tts_audio`).
const OUTPUT_PREFS: &str = r#""output_encoding":"linear16","output_sample_rate_hz":16000"#;

/// The `auth` message.
pub fn auth(token: &str, call_id: &str) -> String {
    json!({"type": "auth", "auth_token": token, "call_id": call_id}).to_string()
}

/// One `audio` message carrying `pcm` (PCM16LE, 16 kHz) for call `call_id` (a
/// decimal id: nothing to escape). Built in one string, without an intermediate
/// JSON value (it is the one message sent several times a second).
pub fn audio(pcm: &[u8], call_id: &str) -> String {
    let b64_len = pcm.len().div_ceil(3) * 4;
    let mut s = String::with_capacity(b64_len + 200);
    s.push_str(r#"{"type":"audio","data":""#);
    base64::engine::general_purpose::STANDARD.encode_string(pcm, &mut s);
    s.push_str(r#"","rate":16000,"format":"pcm16le","call_id":""#);
    s.push_str(call_id);
    s.push_str(r#"","mode":"full","#);
    s.push_str(OUTPUT_PREFS);
    s.push('}');
    s
}

/// The `barge_in` message (the server cancels the running reply and answers
/// `barge_in_ack` with the same `request_id`).
pub fn barge_in(call_id: &str, request_id: &str) -> String {
    json!({
        "type": "barge_in",
        "protocol_version": PROTOCOL_VERSION,
        "call_id": call_id,
        "request_id": request_id,
    })
    .to_string()
}

/// The `tts_request` that speaks the greeting (answered with `tts_response`).
pub fn tts_request(text: &str, call_id: &str, request_id: &str) -> String {
    json!({
        "type": "tts_request",
        "text": text,
        "call_id": call_id,
        "request_id": request_id,
        "output_encoding": "linear16",
        "output_sample_rate_hz": 16000,
    })
    .to_string()
}

/// The session-scoped `switch_model` that sets the call's system prompt (servers
/// without session scope answer `no_change`).
pub fn system_prompt(prompt: &str, call_id: &str, request_id: &str) -> String {
    json!({
        "type": "switch_model",
        "scope": "session",
        "protocol_version": PROTOCOL_VERSION,
        "call_id": call_id,
        "request_id": request_id,
        "llm_config": {"system_prompt": prompt},
    })
    .to_string()
}

/// The format facts of a `tts_audio` (or `tts_response`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TtsMeta {
    /// `mulaw`, `linear16`, ... as sent (empty when absent).
    pub encoding: String,
    /// Sample rate; 0 when absent.
    pub sample_rate_hz: u32,
    /// Bytes of the binary message that follows, when given.
    pub byte_length: Option<u64>,
    /// `Some(false)` for a chunk of a streamed utterance that more chunks follow;
    /// `Some(true)` on its last chunk; `None` for a single-blob reply.
    pub is_final: Option<bool>,
}

/// A server text message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    /// Answer to `auth` (or a refusal of a message sent before it).
    AuthResponse {
        /// `status == "ok"`.
        ok: bool,
        /// The server's reason (`invalid_auth_token`, `authentication_required`).
        message: String,
    },
    /// A transcript of the caller.
    SttResult {
        /// The text.
        text: String,
        /// `false` for a partial.
        is_final: bool,
        /// Set when the server's STT failed (`stt_unavailable`).
        error: Option<String>,
    },
    /// The agent's reply text.
    LlmResponse {
        /// The text.
        text: String,
    },
    /// Format of the binary message that follows.
    TtsAudio(TtsMeta),
    /// A synthesized text with its audio inline (answer to `tts_request`).
    TtsResponse {
        /// The text spoken.
        text: String,
        /// The audio, decoded from base64.
        audio: Vec<u8>,
        /// Its format.
        meta: TtsMeta,
    },
    /// Answer to `barge_in`.
    BargeInAck {
        /// The `request_id` of the `barge_in`, when echoed.
        request_id: Option<String>,
    },
    /// Answer to `switch_model`.
    SwitchResponse {
        /// `success`, `no_change` or `error`.
        status: String,
        /// The server's words.
        message: String,
    },
    /// A known message voxd has nothing to do with (`mode_ready`, ...).
    Ignored(String),
    /// A type voxd does not know (counted, ignored).
    Unknown(String),
}

const IGNORED: [&str; 6] = [
    "mode_ready",
    "status_response",
    "capabilities_response",
    "reload_response",
    "llm_tool_response",
    "backends_response",
];

fn meta_of(v: &Value) -> TtsMeta {
    TtsMeta {
        encoding: v
            .get("encoding")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        sample_rate_hz: v
            .get("sample_rate_hz")
            .or_else(|| v.get("sample_rate"))
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        byte_length: v.get("byte_length").and_then(Value::as_u64),
        is_final: v.get("is_final").and_then(Value::as_bool),
    }
}

/// A server text message voxd cannot read: a protocol error of the server that
/// ends the session. The text never quotes the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON (the parser's words: what it expected and where).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// JSON, but not an object with a string `type`.
    #[error("message without a string `type`")]
    NoType,
    /// A `tts_response` whose audio is not base64.
    #[error("tts_response audio is not base64: {0}")]
    Base64(String),
}

/// Parses a server text message; the session calls it for every text message it
/// receives. Errors (for a protocol error) when it is not a JSON object with a
/// string `type`, or a `tts_response` carries invalid base64; never panics.
pub fn parse(text: &str) -> Result<ServerMsg, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ParseError::NoType)?
        .trim()
        .to_ascii_lowercase()
        .replace('-', "_");
    let str_of = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(match kind.as_str() {
        "auth_response" => ServerMsg::AuthResponse {
            ok: v.get("status").and_then(Value::as_str) == Some("ok"),
            message: str_of("message"),
        },
        "stt_result" => ServerMsg::SttResult {
            text: str_of("text"),
            is_final: v.get("is_final").and_then(Value::as_bool).unwrap_or(true),
            error: v.get("error").and_then(Value::as_str).map(str::to_string),
        },
        "llm_response" => ServerMsg::LlmResponse {
            text: str_of("text"),
        },
        "tts_audio" => ServerMsg::TtsAudio(meta_of(&v)),
        "tts_response" => {
            let b64 = v
                .get("audio_data")
                .or_else(|| v.get("audio"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let audio = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ParseError::Base64(e.to_string()))?;
            ServerMsg::TtsResponse {
                text: str_of("text"),
                audio,
                meta: meta_of(&v),
            }
        }
        "barge_in_ack" => ServerMsg::BargeInAck {
            request_id: v
                .get("request_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        "switch_response" => ServerMsg::SwitchResponse {
            status: str_of("status"),
            message: str_of("message"),
        },
        k if IGNORED.contains(&k) => ServerMsg::Ignored(kind),
        _ => ServerMsg::Unknown(kind),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_message_shape() {
        let pcm = [1u8, 0, 2, 0, 0xFF, 0x7F];
        let v: Value = serde_json::from_str(&audio(&pcm, "42")).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "audio",
                "data": base64::engine::general_purpose::STANDARD.encode(pcm),
                "rate": 16000,
                "format": "pcm16le",
                "call_id": "42",
                "mode": "full",
                "output_encoding": "linear16",
                "output_sample_rate_hz": 16000
            })
        );
    }

    #[test]
    fn client_control_messages() {
        let v: Value = serde_json::from_str(&auth("tok", "7")).unwrap();
        assert_eq!(
            v,
            json!({"type": "auth", "auth_token": "tok", "call_id": "7"})
        );
        let v: Value = serde_json::from_str(&barge_in("7", "barge-7-1")).unwrap();
        assert_eq!(v["type"], "barge_in");
        assert_eq!(v["request_id"], "barge-7-1");
        let v: Value = serde_json::from_str(&system_prompt("Be kind", "7", "p1")).unwrap();
        assert_eq!(v["scope"], "session");
        assert_eq!(v["llm_config"]["system_prompt"], "Be kind");
        let v: Value = serde_json::from_str(&tts_request("Hi \"you\"", "7", "g1")).unwrap();
        assert_eq!(v["text"], "Hi \"you\"");
    }

    #[test]
    fn parses_server_messages() {
        assert_eq!(
            parse(r#"{"type":"auth_response","status":"error","message":"invalid_auth_token"}"#),
            Ok(ServerMsg::AuthResponse {
                ok: false,
                message: "invalid_auth_token".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"stt_result","text":"hi","is_final":false,"is_partial":true}"#),
            Ok(ServerMsg::SttResult {
                text: "hi".into(),
                is_final: false,
                error: None
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"TTS-Audio","encoding":"mulaw","sample_rate_hz":8000,"byte_length":160,"is_final":true}"#
            ),
            Ok(ServerMsg::TtsAudio(TtsMeta {
                encoding: "mulaw".into(),
                sample_rate_hz: 8000,
                byte_length: Some(160),
                is_final: Some(true)
            }))
        );
        assert_eq!(
            parse(
                r#"{"type":"tts_response","text":"Hi","audio_data":"AAEC","encoding":"linear16","sample_rate_hz":16000}"#
            ),
            Ok(ServerMsg::TtsResponse {
                text: "Hi".into(),
                audio: vec![0, 1, 2],
                meta: TtsMeta {
                    encoding: "linear16".into(),
                    sample_rate_hz: 16000,
                    byte_length: None,
                    is_final: None
                }
            })
        );
        assert!(parse(r#"{"type":"tts_response","audio_data":"!!"}"#).is_err());
        assert_eq!(
            parse(r#"{"type":"barge_in_ack","status":"ok","request_id":"b1"}"#),
            Ok(ServerMsg::BargeInAck {
                request_id: Some("b1".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":"mode_ready","mode":"full"}"#),
            Ok(ServerMsg::Ignored("mode_ready".into()))
        );
        assert_eq!(
            parse(r#"{"type":"whatever"}"#),
            Ok(ServerMsg::Unknown("whatever".into()))
        );
        assert!(parse("nope").is_err());
        assert!(parse(r#"{"type":5}"#).is_err());
    }

    /// The seed corpus of the `local_event` fuzz target: real server messages.
    const SEEDS: &[&str] = &[
        include_str!("../../../fuzz/corpus/local_event/seed-auth-response"),
        include_str!("../../../fuzz/corpus/local_event/seed-stt-result"),
        include_str!("../../../fuzz/corpus/local_event/seed-llm-response"),
        include_str!("../../../fuzz/corpus/local_event/seed-tts-audio"),
        include_str!("../../../fuzz/corpus/local_event/seed-tts-response"),
        include_str!("../../../fuzz/corpus/local_event/seed-barge-in-ack"),
        include_str!("../../../fuzz/corpus/local_event/seed-switch-response"),
        include_str!("../../../fuzz/corpus/local_event/seed-mode-ready"),
    ];

    /// Every server message type voxd reads.
    const KINDS: &[&str] = &[
        "auth_response",
        "stt_result",
        "llm_response",
        "tts_audio",
        "tts_response",
        "barge_in_ack",
        "switch_response",
    ];

    /// The fields voxd reads from them.
    const FIELDS: &[&str] = &[
        "status",
        "message",
        "text",
        "is_final",
        "error",
        "encoding",
        "sample_rate_hz",
        "sample_rate",
        "byte_length",
        "audio_data",
        "audio",
        "request_id",
    ];

    /// What every parse must satisfy, whatever the input.
    fn check(text: &str) -> Option<ServerMsg> {
        let parsed = parse(text);
        let oracle = crate::provider::testkit::inputs::type_of(text);
        if crate::provider::testkit::inputs::not_an_object(text) || oracle.is_none() {
            assert!(parsed.is_err(), "accepted without a string type: {text:?}");
        }
        if let Some(t) = &oracle {
            // Types are matched as the server matches them; only a tts_response
            // with bad base64 may refuse a typed object.
            let norm = t.trim().to_ascii_lowercase().replace('-', "_");
            match parsed.as_ref() {
                Ok(ServerMsg::Unknown(k)) | Ok(ServerMsg::Ignored(k)) => assert_eq!(*k, norm),
                Ok(_) => assert!(KINDS.contains(&norm.as_str()), "{t}"),
                Err(ParseError::Base64(_)) => assert_eq!(norm, "tts_response"),
                Err(e) => panic!("refused a typed object ({e}): {text:?}"),
            }
        }
        if let Ok(ServerMsg::TtsAudio(meta) | ServerMsg::TtsResponse { meta, .. }) = &parsed {
            // The session turns the facts into a format and converts the audio.
            if let Some(fmt) =
                super::super::convert::SourceFormat::parse(&meta.encoding, meta.sample_rate_hz)
            {
                let mut c = super::super::convert::OutputConverter::new();
                let out = c.convert(fmt, text.as_bytes().to_vec());
                assert_eq!(out.len() % 2, 0);
            }
        }
        parsed.ok()
    }

    #[test]
    fn seeds_parse_to_known_messages() {
        for seed in SEEDS {
            match check(seed) {
                Some(ServerMsg::Unknown(k)) => panic!("seed of unknown type {k}"),
                Some(_) => {}
                None => panic!("seed does not parse: {seed}"),
            }
        }
    }

    mod prop {
        use super::*;
        use crate::provider::testkit::inputs::{garbage, mutated, typed_message};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4_000))]

            #[test]
            fn garbage_is_refused_without_panic(text in garbage()) {
                check(&text);
            }

            #[test]
            fn mutated_messages_never_panic(text in mutated(SEEDS)) {
                check(&text);
            }

            #[test]
            fn fields_of_any_json_type_never_panic(text in typed_message(KINDS, FIELDS)) {
                check(&text);
            }

            #[test]
            fn tts_response_audio_round_trips(audio in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&audio);
                let text = json!({"type": "TTS-Response", "audio_data": b64, "encoding": "mulaw"}).to_string();
                match check(&text) {
                    Some(ServerMsg::TtsResponse { audio: got, .. }) => prop_assert_eq!(got, audio),
                    other => panic!("{other:?}"),
                }
            }

        }
    }
}
