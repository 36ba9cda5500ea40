//! The OpenAI Realtime (GA) wire shapes voxd uses: the client events it sends and
//! the fields of the server events it reads.
//!
//! Owns: serde structs for `session.update`, `response.create`, `response.cancel`,
//! `conversation.item.create` and `conversation.item.truncate`; the hand-written
//! `input_audio_buffer.append` encoder ([`AppendBatcher`]) that batches caller audio
//! to `append_ms` in one fixed buffer and writes the base64 straight into the
//! outgoing message; and [`ServerEvent`], one flat borrowed view of any server event
//! (one parse per message, strings borrowed from the message where JSON allows).
//!
//! Must not: hold session state, perform I/O, or emit any beta-shape field
//! (`modalities`, `input_audio_format`, `OpenAI-Beta`): the beta API is retired.

#![forbid(unsafe_code)]

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{RealtimeAudioFormat, TurnDetectionConfig, TurnDetectionType};

/// `event_id` voxd puts on its `session.update`: an `error` event naming it means
/// the session could not be configured (formats, voice), which is fatal.
pub(super) const SESSION_UPDATE_EVENT_ID: &str = "voxd_session_update";

/// A GA audio format object (`{"type":"audio/pcmu"}`, `{"type":"audio/pcm","rate":24000}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub(super) enum Format {
    /// G.711 mu-law, 8 kHz.
    #[serde(rename = "audio/pcmu")]
    Pcmu,
    /// G.711 A-law, 8 kHz.
    #[serde(rename = "audio/pcma")]
    Pcma,
    /// 16-bit little-endian PCM; GA supports only 24 kHz.
    #[serde(rename = "audio/pcm")]
    Pcm {
        /// Always 24000.
        rate: u32,
    },
}

impl From<RealtimeAudioFormat> for Format {
    fn from(f: RealtimeAudioFormat) -> Self {
        match f {
            RealtimeAudioFormat::Pcmu => Format::Pcmu,
            RealtimeAudioFormat::Pcma => Format::Pcma,
            RealtimeAudioFormat::Pcm24k => Format::Pcm { rate: 24_000 },
        }
    }
}

/// `audio.input.turn_detection`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum TurnDetection {
    /// Energy VAD with its knobs.
    ServerVad {
        threshold: f64,
        prefix_padding_ms: u32,
        silence_duration_ms: u32,
        create_response: bool,
        interrupt_response: bool,
    },
    /// Model-based end of turn.
    SemanticVad {
        create_response: bool,
        interrupt_response: bool,
    },
}

impl From<&TurnDetectionConfig> for TurnDetection {
    fn from(t: &TurnDetectionConfig) -> Self {
        match t.kind {
            TurnDetectionType::ServerVad => TurnDetection::ServerVad {
                threshold: t.threshold,
                prefix_padding_ms: t.prefix_padding_ms,
                silence_duration_ms: t.silence_duration_ms,
                create_response: t.create_response,
                interrupt_response: t.interrupt_response,
            },
            TurnDetectionType::SemanticVad => TurnDetection::SemanticVad {
                create_response: t.create_response,
                interrupt_response: t.interrupt_response,
            },
        }
    }
}

/// `audio.input.transcription`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Transcription<'a> {
    pub model: &'a str,
}

/// `session.audio.input`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AudioInput<'a> {
    pub format: Format,
    pub turn_detection: TurnDetection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Transcription<'a>>,
}

/// `session.audio.output`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AudioOutput<'a> {
    pub format: Format,
    pub voice: &'a str,
}

/// `session.audio`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Audio<'a> {
    pub input: AudioInput<'a>,
    pub output: AudioOutput<'a>,
}

/// The `session` object of `session.update` (GA: `type: "realtime"`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct SessionConfig<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub output_modalities: [&'static str; 1],
    /// Absent = keep the server's default instructions (an empty string would
    /// clear them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<&'a str>,
    pub audio: Audio<'a>,
}

/// Client events voxd sends (except `input_audio_buffer.append`, see
/// [`append_message`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub(super) enum ClientEvent<'a> {
    /// Configure the session (sent once, right after `session.created`).
    #[serde(rename = "session.update")]
    SessionUpdate {
        event_id: &'static str,
        session: SessionConfig<'a>,
    },
    /// Start a response now (the greeting).
    #[serde(rename = "response.create")]
    ResponseCreate { response: ResponseParams<'a> },
    /// Stop the running response (local barge-in).
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(skip_serializing_if = "Option::is_none")]
        response_id: Option<&'a str>,
    },
    /// Add a message to the conversation (history replay, DTMF).
    #[serde(rename = "conversation.item.create")]
    ItemCreate { item: MessageItem<'a> },
    /// Cut an assistant item's audio to what the caller heard.
    #[serde(rename = "conversation.item.truncate")]
    ItemTruncate {
        item_id: &'a str,
        content_index: u32,
        audio_end_ms: u32,
    },
}

/// `response` of `response.create`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ResponseParams<'a> {
    pub instructions: &'a str,
}

/// A `message` conversation item with one text part.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MessageItem<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub content: [TextPart<'a>; 1],
}

/// One text content part (`input_text` for the user, `output_text` for the
/// assistant in GA).
#[derive(Debug, Clone, Serialize)]
pub(super) struct TextPart<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

impl<'a> MessageItem<'a> {
    /// A user message (`input_text`).
    pub fn user(text: &'a str) -> Self {
        MessageItem {
            kind: "message",
            role: "user",
            content: [TextPart {
                kind: "input_text",
                text,
            }],
        }
    }

    /// An assistant message (`output_text`).
    pub fn assistant(text: &'a str) -> Self {
        MessageItem {
            kind: "message",
            role: "assistant",
            content: [TextPart {
                kind: "output_text",
                text,
            }],
        }
    }
}

impl ClientEvent<'_> {
    /// The event as a JSON text message body.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs into a String cannot fail (no maps with
        // non-string keys, no failing Serialize impls); an empty object would only
        // make the server answer with an error event.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

const APPEND_PREFIX: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
const APPEND_SUFFIX: &str = r#""}"#;

/// `{"type":"input_audio_buffer.append","audio":"<base64 of audio>"}` built in one
/// allocation of the exact size (base64 needs no JSON escaping). Called by the
/// session for every batch of caller audio (and by `benches/provider.rs`).
pub fn append_message(audio: &[u8]) -> String {
    let b64_len = audio.len().div_ceil(3) * 4;
    let mut s = String::with_capacity(APPEND_PREFIX.len() + b64_len + APPEND_SUFFIX.len());
    s.push_str(APPEND_PREFIX);
    B64.encode_string(audio, &mut s);
    s.push_str(APPEND_SUFFIX);
    s
}

/// Batches caller audio into `input_audio_buffer.append` messages of exactly
/// `append_ms` of audio each, through one buffer of that size that is reused for
/// the whole session (it never grows past it). A chunk that completes a batch is
/// split at the batch boundary; whole batches inside a large chunk are encoded
/// straight from the chunk, so with `append_ms: 20` and 20 ms frames every frame
/// is encoded without a copy.
#[derive(Debug)]
pub(super) struct AppendBatcher {
    buf: Vec<u8>,
    batch_bytes: usize,
}

impl AppendBatcher {
    /// A batcher for `append_ms` (at least 1) of audio at `bytes_per_ms`.
    pub fn new(append_ms: u32, bytes_per_ms: usize) -> Self {
        let batch_bytes = (append_ms.max(1) as usize * bytes_per_ms).max(1);
        AppendBatcher {
            buf: Vec::with_capacity(batch_bytes),
            batch_bytes,
        }
    }

    /// Bytes in one append message.
    #[cfg(test)]
    pub fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// Bytes waiting for the next batch.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Add `chunk`; pushes every completed append message onto `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let take = (self.batch_bytes - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() < self.batch_bytes {
                return;
            }
            out.push(append_message(&self.buf));
            self.buf.clear();
        }
        while chunk.len() >= self.batch_bytes {
            let (batch, rest) = chunk.split_at(self.batch_bytes);
            out.push(append_message(batch));
            chunk = rest;
        }
        self.buf.extend_from_slice(chunk);
    }
}

/// A JSON string, borrowed from the message when it has no escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// An optional string field that borrows like a plain `Cow<str>` field (serde
/// copies a `Cow` inside an `Option` otherwise).
fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Str<'de>>::deserialize(d)?.map(|s| s.0))
}

/// The `response` object of `response.created` / `response.done` (only what voxd
/// reads; the output items are skipped).
#[derive(Debug, Deserialize)]
pub struct ResponseRef<'a> {
    /// `response.id`.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub id: Option<Cow<'a, str>>,
}

/// The `error` object of an `error` event.
#[derive(Debug, Deserialize)]
pub struct ErrorBody<'a> {
    /// `error.type` (`invalid_request_error`, `server_error`, ...).
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_str")]
    pub kind: Option<Cow<'a, str>>,
    /// `error.code`.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub code: Option<Cow<'a, str>>,
    /// `error.message` (may quote what the client sent; scrub before logging).
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub message: Option<Cow<'a, str>>,
    /// The client event that caused it, when the server knows.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub event_id: Option<Cow<'a, str>>,
}

/// One entry of `rate_limits.updated`.
#[derive(Debug, Deserialize)]
pub struct RateLimit<'a> {
    /// `requests` or `tokens`.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub name: Option<Cow<'a, str>>,
    /// The limit.
    #[serde(default)]
    pub limit: Option<f64>,
    /// What is left of it.
    #[serde(default)]
    pub remaining: Option<f64>,
}

/// Any server event, flattened: `kind` plus the fields of the events voxd handles
/// (absent fields are `None`; unknown fields are skipped). Strings borrow from the
/// message unless JSON escapes force a copy.
#[derive(Debug, Deserialize)]
pub struct ServerEvent<'a> {
    /// The event type (`response.output_audio.delta`, ...).
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Base64 audio (`response.output_audio.delta`) or text (transcript deltas).
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub delta: Option<Cow<'a, str>>,
    /// The conversation item the event is about.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub item_id: Option<Cow<'a, str>>,
    /// The response the event is about.
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub response_id: Option<Cow<'a, str>>,
    /// Whole transcript (`*.done` / `*.completed`).
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub transcript: Option<Cow<'a, str>>,
    /// The body of an `error` event.
    #[serde(default, borrow)]
    pub error: Option<ErrorBody<'a>>,
    /// The response of `response.created` / `response.done`.
    #[serde(default, borrow)]
    pub response: Option<ResponseRef<'a>>,
    /// The entries of `rate_limits.updated`.
    #[serde(default, borrow)]
    pub rate_limits: Option<Vec<RateLimit<'a>>>,
}

/// Only the `type` of an event: the fallback parse when [`ServerEvent`] does not fit
/// (an unknown event with a same-named field of another type is still ignored).
#[derive(Debug, Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// Server event types voxd acts on; a message of one of these types that does not
/// parse is a protocol error.
pub const HANDLED: &[&str] = &[
    "session.created",
    "response.created",
    "response.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "input_audio_buffer.speech_started",
    "error",
    "rate_limits.updated",
];

/// GA server events voxd knows and deliberately ignores (not counted as unknown).
pub const IGNORED: &[&str] = &[
    "session.updated",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "conversation.created",
    "conversation.item.created",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.retrieved",
    "conversation.item.truncated",
    "conversation.item.deleted",
    "conversation.item.input_audio_transcription.segment",
    "conversation.item.input_audio_transcription.failed",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
];

/// Decoded length check helper: base64 `text` decoded into `out` (cleared first).
pub(super) fn decode_b64(text: &str, out: &mut Vec<u8>) -> Result<(), base64::DecodeError> {
    out.clear();
    B64.decode_vec(text, out)
}

/// Longest provider-supplied text (error message, close reason, event type,
/// parser detail) kept in an error or a log line.
pub(super) const MAX_DETAIL_CHARS: usize = 300;

/// `s` cut to [`MAX_DETAIL_CHARS`] characters (an ellipsis marks a cut).
pub(super) fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One server text message as the session sees it; see [`parse_server_event`].
// Built once per message and matched at once on the stack: boxing the event
// would cost an allocation for every audio delta.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed<'a> {
    /// An event with the fields voxd reads (its type may still be one voxd
    /// ignores: the session looks at `kind`).
    Event(ServerEvent<'a>),
    /// An event of a type voxd does not act on whose fields do not fit
    /// [`ServerEvent`] (a same-named field of another JSON type): ignored like
    /// any other unhandled type.
    Unhandled(Cow<'a, str>),
}

/// A server message the session cannot use: a protocol error that ends the
/// session (the provider is at fault). Texts are clipped to
/// [`MAX_DETAIL_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not a JSON object with a string `type`.
    #[error("malformed event: {detail}")]
    Malformed {
        /// The JSON parser's words.
        detail: String,
    },
    /// An event of a type voxd acts on whose fields have the wrong JSON types.
    #[error("bad `{kind}` event: {detail}")]
    BadEvent {
        /// The event type.
        kind: String,
        /// The JSON parser's words.
        detail: String,
    },
    /// `response.output_audio.delta` without its audio or its item.
    #[error("response.output_audio.delta without `delta` or `item_id`")]
    AudioDeltaIncomplete,
    /// `response.output_audio.delta` whose audio is not base64.
    #[error("response.output_audio.delta: `delta` is not base64")]
    AudioDeltaNotBase64,
}

/// Parses one server text message, the first step of every message the session
/// receives (before and after `session.created`). `Ok(Parsed::Event)` for any
/// JSON object with a string `type` whose known fields have the expected JSON
/// types; `Ok(Parsed::Unhandled)` when they do not but the type is not one voxd
/// acts on ([`HANDLED`]); otherwise an [`EventError`]. Never panics; strings
/// borrow from `text` where JSON allows.
pub fn parse_server_event(text: &str) -> Result<Parsed<'_>, EventError> {
    // serde's derived structs also read a JSON array, field by field: `[""]`
    // would be an event of type "" (found by the openai_event fuzz target).
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(EventError::Malformed {
            detail: "not a JSON object".to_string(),
        });
    }
    match serde_json::from_str::<ServerEvent<'_>>(text) {
        Ok(ev) => Ok(Parsed::Event(ev)),
        Err(e) => match serde_json::from_str::<TypeOnly<'_>>(text) {
            Ok(t) if !HANDLED.contains(&&*t.kind) => Ok(Parsed::Unhandled(t.kind)),
            Ok(t) => Err(EventError::BadEvent {
                kind: clip(&t.kind),
                detail: clip(&e.to_string()),
            }),
            Err(_) => Err(EventError::Malformed {
                detail: clip(&e.to_string()),
            }),
        },
    }
}

impl ServerEvent<'_> {
    /// The audio of a `response.output_audio.delta`, decoded into `out` (cleared
    /// first), and the item it belongs to. Called by the session for each audio
    /// delta; errors when `delta` or `item_id` is missing or `delta` is not
    /// base64.
    pub fn decode_audio(&self, out: &mut Vec<u8>) -> Result<&str, EventError> {
        let (Some(delta), Some(item_id)) = (self.delta.as_deref(), self.item_id.as_deref()) else {
            return Err(EventError::AudioDeltaIncomplete);
        };
        decode_b64(delta, out).map_err(|_| EventError::AudioDeltaNotBase64)?;
        Ok(item_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn append_message_is_exact_json() {
        for len in [0usize, 1, 2, 3, 159, 160, 161, 960] {
            let audio: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let m = append_message(&audio);
            assert_eq!(m.len(), m.capacity(), "one exact allocation for {len}");
            let v = parse(&m);
            assert_eq!(v["type"], "input_audio_buffer.append");
            let got = B64.decode(v["audio"].as_str().unwrap()).unwrap();
            assert_eq!(got, audio);
        }
    }

    #[test]
    fn batcher_cuts_exact_batches_and_stays_bounded() {
        // 60 ms of PCMU = 480 bytes per message; feed 20 ms frames and odd chunks.
        let mut b = AppendBatcher::new(60, 8);
        assert_eq!(b.batch_bytes(), 480);
        let audio: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let mut fed = 0;
        for size in [160, 160, 160, 160, 70, 1300, 1, 2000, 989].iter().cycle() {
            if fed >= audio.len() {
                break;
            }
            let end = (fed + size).min(audio.len());
            b.push(&audio[fed..end], &mut out);
            fed = end;
            assert!(b.pending() < 480);
            assert!(b.buf.capacity() <= 480, "the batch buffer never grows");
        }
        let mut joined = Vec::new();
        for m in &out {
            let v = parse(m);
            let a = B64.decode(v["audio"].as_str().unwrap()).unwrap();
            assert_eq!(a.len(), 480);
            joined.extend(a);
        }
        assert_eq!(out.len(), 5000 / 480);
        assert_eq!(&joined[..], &audio[..joined.len()]);
        assert_eq!(b.pending(), 5000 % 480);
    }

    #[test]
    fn session_update_has_the_ga_shape() {
        let ev = ClientEvent::SessionUpdate {
            event_id: SESSION_UPDATE_EVENT_ID,
            session: SessionConfig {
                kind: "realtime",
                model: Some("gpt-realtime"),
                output_modalities: ["audio"],
                instructions: Some("be brief"),
                audio: Audio {
                    input: AudioInput {
                        format: Format::Pcm { rate: 24_000 },
                        turn_detection: TurnDetection::SemanticVad {
                            create_response: true,
                            interrupt_response: false,
                        },
                        transcription: None,
                    },
                    output: AudioOutput {
                        format: Format::Pcma,
                        voice: "marin",
                    },
                },
            },
        };
        assert_eq!(
            parse(&ev.to_json()),
            json!({
                "type": "session.update",
                "event_id": SESSION_UPDATE_EVENT_ID,
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "output_modalities": ["audio"],
                    "instructions": "be brief",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "semantic_vad", "create_response": true, "interrupt_response": false}
                        },
                        "output": {"format": {"type": "audio/pcma"}, "voice": "marin"}
                    }
                }
            })
        );
    }

    #[test]
    fn other_client_events() {
        let t = ClientEvent::ItemTruncate {
            item_id: "item_1",
            content_index: 0,
            audio_end_ms: 640,
        };
        assert_eq!(
            parse(&t.to_json()),
            json!({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 640})
        );
        let c = ClientEvent::ResponseCancel { response_id: None };
        assert_eq!(parse(&c.to_json()), json!({"type": "response.cancel"}));
        let i = ClientEvent::ItemCreate {
            item: MessageItem::assistant("hi \"there\""),
        };
        assert_eq!(
            parse(&i.to_json()),
            json!({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi \"there\""}]}})
        );
    }

    #[test]
    fn server_events_borrow_and_skip_unknown_fields() {
        let m = r#"{"type":"response.output_audio.delta","event_id":"e","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":"AAEC"}"#;
        let e: ServerEvent = serde_json::from_str(m).unwrap();
        assert_eq!(e.kind, "response.output_audio.delta");
        assert!(matches!(e.delta, Some(Cow::Borrowed("AAEC"))));
        assert_eq!(e.item_id.as_deref(), Some("i1"));
        let m = r#"{"type":"error","error":{"type":"invalid_request_error","code":null,"message":"a \"b\"","param":null,"event_id":"x"}}"#;
        let e: ServerEvent = serde_json::from_str(m).unwrap();
        let err = e.error.unwrap();
        assert_eq!(err.code, None);
        assert_eq!(err.message.as_deref(), Some("a \"b\""));
        let m = r#"{"type":"rate_limits.updated","rate_limits":[{"name":"requests","limit":1000,"remaining":999,"reset_seconds":0.06},{"name":"tokens","limit":20000.0,"remaining":18000,"reset_seconds":1.2}]}"#;
        let e: ServerEvent = serde_json::from_str(m).unwrap();
        assert_eq!(e.rate_limits.unwrap().len(), 2);
        let m = r#"{"type":"response.done","response":{"id":"r1","status":"cancelled","output":[{"x":[1,2,{"y":null}]}]}}"#;
        let e: ServerEvent = serde_json::from_str(m).unwrap();
        assert!(matches!(e.response.unwrap().id, Some(Cow::Borrowed("r1"))));
        let m = r#"{"type":"x","transcript":"a\nb","item_id":null}"#;
        let e: ServerEvent = serde_json::from_str(m).unwrap();
        assert_eq!(e.transcript.as_deref(), Some("a\nb"));
        assert!(e.item_id.is_none());
    }

    /// The seed corpus of the `openai_event` fuzz target: real server messages.
    const SEEDS: &[&str] = &[
        include_str!("../../../fuzz/corpus/openai_event/seed-session-created"),
        include_str!("../../../fuzz/corpus/openai_event/seed-audio-delta"),
        include_str!("../../../fuzz/corpus/openai_event/seed-audio-done"),
        include_str!("../../../fuzz/corpus/openai_event/seed-transcript-delta"),
        include_str!("../../../fuzz/corpus/openai_event/seed-input-transcription"),
        include_str!("../../../fuzz/corpus/openai_event/seed-speech-started"),
        include_str!("../../../fuzz/corpus/openai_event/seed-speech-stopped"),
        include_str!("../../../fuzz/corpus/openai_event/seed-response-done"),
        include_str!("../../../fuzz/corpus/openai_event/seed-error"),
        include_str!("../../../fuzz/corpus/openai_event/seed-rate-limits"),
    ];

    /// Field names of [`ServerEvent`] (and a few the server sends that voxd skips).
    const FIELDS: &[&str] = &[
        "delta",
        "item_id",
        "response_id",
        "transcript",
        "error",
        "response",
        "rate_limits",
        "event_id",
        "output_index",
    ];

    /// What every parse must satisfy, whatever the input: returns the event, if any.
    fn check(text: &str) -> Option<ServerEvent<'_>> {
        let parsed = parse_server_event(text);
        if crate::provider::testkit::inputs::not_an_object(text) {
            assert!(parsed.is_err(), "non-object accepted: {text:?}");
        }
        let oracle = crate::provider::testkit::inputs::type_of(text);
        match parsed {
            Ok(Parsed::Event(ev)) => {
                if let Some(t) = &oracle {
                    assert_eq!(*t, ev.kind);
                }
                let mut out = Vec::new();
                if let Ok(item) = ev.decode_audio(&mut out) {
                    assert_eq!(Some(item), ev.item_id.as_deref());
                    assert!(out.len() <= text.len());
                }
                Some(ev)
            }
            Ok(Parsed::Unhandled(kind)) => {
                assert!(!HANDLED.contains(&&*kind), "{kind}");
                if let Some(t) = &oracle {
                    assert_eq!(*t, kind);
                }
                None
            }
            Err(EventError::BadEvent { kind, detail }) => {
                assert!(HANDLED.contains(&kind.as_str()), "{kind}");
                assert!(detail.chars().count() <= MAX_DETAIL_CHARS + 1);
                None
            }
            Err(e) => {
                assert!(e.to_string().chars().count() <= MAX_DETAIL_CHARS + 40);
                None
            }
        }
    }

    #[test]
    fn seeds_parse_to_events_of_their_type() {
        for seed in SEEDS {
            let Some(ev) = check(seed) else {
                panic!("seed does not parse: {seed}");
            };
            assert!(HANDLED.contains(&&*ev.kind) || IGNORED.contains(&&*ev.kind));
        }
        let Ok(Parsed::Event(ev)) = parse_server_event(SEEDS[1]) else {
            panic!("audio delta");
        };
        let mut out = Vec::new();
        assert_eq!(ev.decode_audio(&mut out), Ok("item_C2"));
        assert_eq!(out.len(), 160, "20 ms of PCMU");
    }

    #[test]
    fn errors_and_unhandled_types() {
        // The fuzz target's first crash: an array read as a struct, field by field.
        for text in [
            include_str!("../../../fuzz/corpus/openai_event/seed-crash-top-level-array"),
            r#" ["response.output_audio.delta", "AAEC", "i"]"#,
        ] {
            assert!(
                matches!(parse_server_event(text), Err(EventError::Malformed { .. })),
                "{text}"
            );
        }
        assert!(matches!(
            parse_server_event("{not json"),
            Err(EventError::Malformed { .. })
        ));
        assert!(matches!(
            parse_server_event(r#"{"no_type":1}"#),
            Err(EventError::Malformed { .. })
        ));
        let e = parse_server_event(r#"{"type":"response.done","response":7}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("bad `response.done` event:"),
            "{e}"
        );
        // An unhandled type whose `delta` is not a string is ignored, not fatal.
        assert!(matches!(
            parse_server_event(r#"{"type":"response.function_call_arguments.delta","delta":{}}"#),
            Ok(Parsed::Unhandled(k)) if k == "response.function_call_arguments.delta"
        ));
        let delta = |d: &str| {
            format!(r#"{{"type":"response.output_audio.delta","item_id":"i","delta":"{d}"}}"#)
        };
        let text = delta("%%%");
        let Ok(Parsed::Event(ev)) = parse_server_event(&text) else {
            panic!("parses");
        };
        let mut out = Vec::new();
        assert_eq!(
            ev.decode_audio(&mut out),
            Err(EventError::AudioDeltaNotBase64)
        );
        let Ok(Parsed::Event(ev)) = parse_server_event(r#"{"type":"response.output_audio.delta"}"#)
        else {
            panic!("parses");
        };
        assert_eq!(
            ev.decode_audio(&mut out),
            Err(EventError::AudioDeltaIncomplete)
        );
        // A huge unknown type name is clipped in the error of a handled type only.
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
        assert!(matches!(parse_server_event(&long), Ok(Parsed::Event(_))));
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
            fn fields_of_any_json_type_never_panic(text in typed_message(HANDLED, FIELDS)) {
                check(&text);
            }

            #[test]
            fn audio_deltas_round_trip(
                audio in proptest::collection::vec(any::<u8>(), 0..2048),
                item in "[a-zA-Z0-9_]{1,24}",
            ) {
                let text = format!(
                    r#"{{"type":"response.output_audio.delta","response_id":"r","item_id":"{item}","delta":"{}"}}"#,
                    B64.encode(&audio)
                );
                let Some(ev) = check(&text) else {
                    panic!("a valid delta parses");
                };
                let mut out = vec![1, 2, 3];
                prop_assert_eq!(ev.decode_audio(&mut out), Ok(item.as_str()));
                prop_assert_eq!(out, audio);
            }
        }
    }
}
