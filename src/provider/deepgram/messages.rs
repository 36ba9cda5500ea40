//! Deepgram Voice Agent v1 messages: the `Settings` voxd sends (built from the
//! provider configuration and the call's agent), the other client messages
//! (`KeepAlive`, `FunctionCallResponse`), and the parsing of server messages into
//! [`ServerMsg`].
//!
//! Owns: the JSON shapes of the v1 API (`wss://agent.deepgram.com/v1/agent/converse`):
//! `audio.input {encoding, sample_rate}`, `audio.output {encoding, sample_rate,
//! container}`, `agent.listen.provider`, `agent.think.provider` + `agent.think.prompt`,
//! `agent.speak.provider`, `agent.greeting`, and `agent.context.messages` (items
//! `{type: "History", role: "user"|"assistant", content}`) for a session that
//! resumes a call after a provider failure.
//!
//! Must not: do I/O, hold session state, or fail on unknown fields or message types
//! (a newer server adds them; unknown types come back as [`ServerMsg::Unknown`]).

#![forbid(unsafe_code)]

use serde_json::{json, Value};

use super::DgConfig;
use crate::provider::{Role, SessionMeta};

/// The `KeepAlive` message, sent when no audio went to Deepgram for
/// `keepalive_ms`.
pub const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;

/// Content of the `FunctionCallResponse` voxd sends for a client-side function
/// call: voxd declares no functions, so a request for one is a model slip, and an
/// error result lets the agent carry on instead of waiting for an answer.
pub const FUNCTION_UNAVAILABLE: &str =
    r#"{"error":"no client-side functions are available in this call"}"#;

/// The `Settings` message for one session.
///
/// The call's agent (`meta.agent`, a key of `agents:`) overrides the prompt
/// (`agent.think.prompt`), the greeting and the voice (the speak model); unset
/// agent fields fall back to `providers.deepgram`. The greeting is sent only on a
/// call's first session (`meta.attempt == 0`). A reconnecting session
/// (`meta.history` non-empty) passes the transcript so far as
/// `agent.context.messages`, so the agent resumes the conversation.
pub fn settings(cfg: &DgConfig, meta: &SessionMeta) -> Value {
    let agent = meta
        .agent
        .as_deref()
        .and_then(|name| cfg.agents.get(name.trim()));
    let prompt = agent
        .and_then(|a| a.prompt.as_deref())
        .unwrap_or(&cfg.instructions);
    let speak_model = agent
        .and_then(|a| a.voice.as_deref())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(&cfg.speak_model);
    let greeting = if meta.attempt == 0 {
        agent
            .and_then(|a| a.greeting.as_deref())
            .or(cfg.greeting.as_deref())
            .filter(|g| !g.trim().is_empty())
    } else {
        None
    };

    let mut think = json!({
        "provider": {"type": cfg.think_provider, "model": cfg.think_model},
    });
    if !prompt.trim().is_empty() {
        think["prompt"] = json!(prompt);
    }
    let mut agent_obj = json!({
        "listen": {"provider": {"type": "deepgram", "model": cfg.listen_model}},
        "think": think,
        "speak": {"provider": {"type": "deepgram", "model": speak_model}},
    });
    if let Some(g) = greeting {
        agent_obj["greeting"] = json!(g);
    }
    if !meta.history.is_empty() {
        let messages: Vec<Value> = meta
            .history
            .iter()
            .map(|(role, text)| {
                let role = match role {
                    Role::User => "user",
                    Role::Agent => "assistant",
                };
                json!({"type": "History", "role": role, "content": text})
            })
            .collect();
        agent_obj["context"] = json!({ "messages": messages });
    }
    json!({
        "type": "Settings",
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
        },
        "agent": agent_obj,
    })
}

/// The `FunctionCallResponse` for call `id` of function `name`.
pub fn function_call_response(id: &str, name: &str) -> String {
    json!({
        "type": "FunctionCallResponse",
        "id": id,
        "name": name,
        "content": FUNCTION_UNAVAILABLE,
    })
    .to_string()
}

/// One function call of a `FunctionCallRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// Call id (echoed in the response).
    pub id: String,
    /// Function name.
    pub name: String,
    /// `true` when the client must run it and answer.
    pub client_side: bool,
}

/// A server text message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    /// The socket is open; send `Settings`.
    Welcome,
    /// `Settings` accepted; audio may flow.
    SettingsApplied,
    /// A line of the conversation (`role` is `user` or `assistant`).
    ConversationText {
        /// `user` or `assistant` as sent.
        role: String,
        /// The text.
        content: String,
    },
    /// Deepgram's VAD heard the caller start.
    UserStartedSpeaking,
    /// The agent is working on a reply.
    AgentThinking,
    /// The agent's reply audio starts; latencies in seconds when given.
    AgentStartedSpeaking {
        /// End of user speech to first audio.
        total_latency: Option<f64>,
        /// Text-to-speech part.
        tts_latency: Option<f64>,
        /// Think (LLM) part.
        ttt_latency: Option<f64>,
    },
    /// All audio of the reply has been sent.
    AgentAudioDone,
    /// The agent asks for function calls.
    FunctionCallRequest {
        /// The calls asked for.
        calls: Vec<FunctionCall>,
    },
    /// A non-fatal problem.
    Warning {
        /// Deepgram's code.
        code: String,
        /// What happened.
        description: String,
    },
    /// A fatal problem: the session ends.
    Error {
        /// Deepgram's code.
        code: String,
        /// What happened.
        description: String,
    },
    /// A known message voxd has nothing to do with (`PromptUpdated`, ...).
    Ignored(String),
    /// A message type voxd does not know (counted, ignored).
    Unknown(String),
}

/// Server messages voxd knows and ignores.
const IGNORED: [&str; 9] = [
    "PromptUpdated",
    "SpeakUpdated",
    "ThinkUpdated",
    "ListenUpdated",
    "InjectionRefused",
    "FunctionCallResponse",
    "FunctionCallCancelled",
    "History",
    "AgentAudioStart",
];

/// A server text message voxd cannot read: a protocol error of the provider
/// that ends the session. The text never quotes the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON (the parser's words: what it expected and where).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// JSON, but not an object with a string `type`.
    #[error("message without a string `type`")]
    NoType,
}

/// Parses a server text message; the session calls it for every text message it
/// receives. Errors (for a [`crate::provider::ProviderError::Protocol`]) when it
/// is not a JSON object with a string `type`; never panics.
pub fn parse(text: &str) -> Result<ServerMsg, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ParseError::NoType)?;
    let text_of = |key: &str| -> String {
        match v.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    let num = |key: &str| v.get(key).and_then(Value::as_f64);
    Ok(match kind {
        "Welcome" => ServerMsg::Welcome,
        "SettingsApplied" => ServerMsg::SettingsApplied,
        "ConversationText" => ServerMsg::ConversationText {
            role: text_of("role"),
            content: text_of("content"),
        },
        "UserStartedSpeaking" => ServerMsg::UserStartedSpeaking,
        "AgentThinking" => ServerMsg::AgentThinking,
        "AgentStartedSpeaking" => ServerMsg::AgentStartedSpeaking {
            total_latency: num("total_latency"),
            tts_latency: num("tts_latency"),
            ttt_latency: num("ttt_latency"),
        },
        "AgentAudioDone" => ServerMsg::AgentAudioDone,
        "FunctionCallRequest" => {
            let calls = v
                .get("functions")
                .and_then(Value::as_array)
                .map(|fns| {
                    fns.iter()
                        .map(|f| FunctionCall {
                            id: f.get("id").and_then(Value::as_str).unwrap_or("").into(),
                            name: f.get("name").and_then(Value::as_str).unwrap_or("").into(),
                            client_side: f
                                .get("client_side")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        })
                        .collect()
                })
                .unwrap_or_default();
            ServerMsg::FunctionCallRequest { calls }
        }
        "Warning" | "Error" => {
            let mut description = text_of("description");
            if description.is_empty() {
                description = text_of("message");
            }
            let code = text_of("code");
            if kind == "Warning" {
                ServerMsg::Warning { code, description }
            } else {
                ServerMsg::Error { code, description }
            }
        }
        k if IGNORED.contains(&k) => ServerMsg::Ignored(k.to_string()),
        k => ServerMsg::Unknown(k.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Codec;
    use crate::config::{AgentConfig, Config};
    use crate::provider::deepgram::DgConfig;

    fn cfg() -> DgConfig {
        let mut c = Config::default();
        c.providers.deepgram.instructions = "Be brief.".into();
        c.providers.deepgram.greeting = Some("Hello from config".into());
        c.agents.insert(
            "sales".into(),
            AgentConfig {
                provider: None,
                prompt: Some("Sell things.".into()),
                greeting: Some("Hi, sales here".into()),
                voice: Some("aura-2-orion-en".into()),
            },
        );
        DgConfig::from_config(&c)
    }

    fn meta(agent: Option<&str>, attempt: u32, history: Vec<(Role, String)>) -> SessionMeta {
        SessionMeta {
            call_id: 7,
            caller_codec: Codec::Pcmu,
            agent: agent.map(str::to_string),
            started_at_ms: 0,
            attempt,
            history,
        }
    }

    #[test]
    fn settings_from_provider_config() {
        let s = settings(&cfg(), &meta(None, 0, vec![]));
        assert_eq!(
            s,
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
                        "prompt": "Be brief."
                    },
                    "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
                    "greeting": "Hello from config"
                }
            })
        );
    }

    #[test]
    fn agent_overrides_prompt_greeting_and_voice() {
        let s = settings(&cfg(), &meta(Some("sales"), 0, vec![]));
        assert_eq!(s["agent"]["think"]["prompt"], "Sell things.");
        assert_eq!(s["agent"]["greeting"], "Hi, sales here");
        assert_eq!(s["agent"]["speak"]["provider"]["model"], "aura-2-orion-en");
        // An unknown agent gets the provider's own settings.
        let s = settings(&cfg(), &meta(Some("nobody"), 0, vec![]));
        assert_eq!(s["agent"]["think"]["prompt"], "Be brief.");
    }

    #[test]
    fn reconnect_skips_greeting_and_carries_history() {
        let history = vec![
            (Role::Agent, "Hi, sales here".to_string()),
            (Role::User, "I want a boat".to_string()),
        ];
        let s = settings(&cfg(), &meta(Some("sales"), 1, history));
        assert!(s["agent"].get("greeting").is_none(), "{s}");
        assert_eq!(
            s["agent"]["context"],
            json!({"messages": [
                {"type": "History", "role": "assistant", "content": "Hi, sales here"},
                {"type": "History", "role": "user", "content": "I want a boat"}
            ]})
        );
        // First attempt without history: no context at all.
        let s = settings(&cfg(), &meta(None, 0, vec![]));
        assert!(s["agent"].get("context").is_none());
    }

    #[test]
    fn empty_prompt_is_omitted() {
        let mut c = cfg();
        c.instructions.clear();
        c.greeting = None;
        let s = settings(&c, &meta(None, 0, vec![]));
        assert!(s["agent"]["think"].get("prompt").is_none(), "{s}");
        assert!(s["agent"].get("greeting").is_none(), "{s}");
    }

    #[test]
    fn parses_server_messages() {
        assert_eq!(
            parse(r#"{"type":"Welcome","request_id":"x"}"#),
            Ok(ServerMsg::Welcome)
        );
        assert_eq!(
            parse(r#"{"type":"ConversationText","role":"user","content":"hi"}"#),
            Ok(ServerMsg::ConversationText {
                role: "user".into(),
                content: "hi".into()
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"AgentStartedSpeaking","total_latency":1.25,"tts_latency":0.25,"ttt_latency":1}"#
            ),
            Ok(ServerMsg::AgentStartedSpeaking {
                total_latency: Some(1.25),
                tts_latency: Some(0.25),
                ttt_latency: Some(1.0)
            })
        );
        assert_eq!(
            parse(r#"{"type":"Error","code":"UNPARSABLE_CLIENT_MESSAGE","description":"bad"}"#),
            Ok(ServerMsg::Error {
                code: "UNPARSABLE_CLIENT_MESSAGE".into(),
                description: "bad".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"Error","message":"old shape"}"#),
            Ok(ServerMsg::Error {
                code: String::new(),
                description: "old shape".into()
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"FunctionCallRequest","functions":[{"id":"f1","name":"x","arguments":"{}","client_side":true}]}"#
            ),
            Ok(ServerMsg::FunctionCallRequest {
                calls: vec![FunctionCall {
                    id: "f1".into(),
                    name: "x".into(),
                    client_side: true
                }]
            })
        );
        assert_eq!(
            parse(r#"{"type":"PromptUpdated"}"#),
            Ok(ServerMsg::Ignored("PromptUpdated".into()))
        );
        assert_eq!(
            parse(r#"{"type":"Brand-New","content":{"x":1}}"#),
            Ok(ServerMsg::Unknown("Brand-New".into()))
        );
        assert!(parse("{not json").is_err());
        assert!(parse(r#"{"no":"type"}"#).is_err());
        assert!(parse("[1,2]").is_err());
    }

    #[test]
    fn function_call_response_shape() {
        let v: Value = serde_json::from_str(&function_call_response("f1", "lookup")).unwrap();
        assert_eq!(v["type"], "FunctionCallResponse");
        assert_eq!(v["id"], "f1");
        assert_eq!(v["name"], "lookup");
        assert_eq!(v["content"], FUNCTION_UNAVAILABLE);
    }

    /// The seed corpus of the `deepgram_event` fuzz target: real server messages.
    const SEEDS: &[&str] = &[
        include_str!("../../../fuzz/corpus/deepgram_event/seed-welcome"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-settings-applied"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-conversation-text"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-user-started-speaking"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-agent-thinking"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-agent-started-speaking"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-agent-audio-done"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-function-call-request"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-warning"),
        include_str!("../../../fuzz/corpus/deepgram_event/seed-error"),
    ];

    /// Every server message type voxd reads.
    const KINDS: &[&str] = &[
        "Welcome",
        "SettingsApplied",
        "ConversationText",
        "UserStartedSpeaking",
        "AgentThinking",
        "AgentStartedSpeaking",
        "AgentAudioDone",
        "FunctionCallRequest",
        "Warning",
        "Error",
    ];

    /// The fields voxd reads from them.
    const FIELDS: &[&str] = &[
        "role",
        "content",
        "total_latency",
        "tts_latency",
        "ttt_latency",
        "functions",
        "code",
        "description",
        "message",
    ];

    /// What every parse must satisfy, whatever the input.
    fn check(text: &str) -> Option<ServerMsg> {
        let parsed = parse(text);
        let oracle = crate::provider::testkit::inputs::type_of(text);
        if crate::provider::testkit::inputs::not_an_object(text) || oracle.is_none() {
            assert!(parsed.is_err(), "accepted without a string type: {text:?}");
        }
        if let Some(t) = &oracle {
            // Deepgram reads any object with a string type; the type decides the variant.
            match parsed.as_ref() {
                Ok(ServerMsg::Unknown(k)) | Ok(ServerMsg::Ignored(k)) => assert_eq!(k, t),
                Ok(_) => assert!(KINDS.contains(&t.as_str()), "{t}"),
                Err(e) => panic!("refused a typed object ({e}): {text:?}"),
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
            fn conversation_text_round_trips(role in "[a-z]{0,12}", content in any::<String>()) {
                let text = serde_json::json!({"type": "ConversationText", "role": role, "content": content}).to_string();
                prop_assert_eq!(check(&text), Some(ServerMsg::ConversationText { role, content }));
            }

        }
    }
}
