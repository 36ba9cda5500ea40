//! AI providers: the `Provider` interface, its session events, its errors, the
//! registry built from the configuration, and the two in-process agents (`echo`,
//! `sim`).
//!
//! Owns: what a provider session consumes ([`CallerEvent`]) and produces
//! ([`AgentEvent`]), the audio formats a provider declares per call
//! ([`AudioFormats`]), how a session ends ([`SessionEnd`]), and which provider names
//! exist in this build ([`Registry`]). A session is one tokio task per call on the
//! control runtime, in-process agents included, so the glue code drives every
//! provider the same way: create the two bounded channels ([`SessionIo::pair`]),
//! call [`Provider::start`], push caller events, read agent events, await the
//! [`SessionEnd`].
//!
//! Must not: touch shards, media sockets, the playout or the per-call state machine
//! (the glue forwards events), block the runtime, or pretend that a provider exists:
//! a configured provider that this build lacks is a
//! [`ProviderError::NotImplemented`], never a silent fallback.

#![forbid(unsafe_code)]

pub mod deepgram;
pub mod echo;
pub mod link;
pub mod local;
pub mod net;
pub mod openai;
pub mod sim;
#[cfg(test)]
pub(crate) mod testkit;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::call::Codec;
use crate::config::Config;
use crate::ops::latency::Stage;

pub use echo::EchoProvider;
pub use sim::{SimAction, SimAgent, SimConfig, SimProvider, SimStats};

/// Capacity the glue should give the caller-events channel ([`SessionIo::events`]):
/// 64 events is 1.28 s of 20 ms caller frames, enough to ride out a slow provider
/// handshake without dropping audio.
pub const EVENTS_CAPACITY: usize = 64;

/// Capacity the glue should give the agent-events channel ([`SessionIo::out`]).
/// Agent audio arrives in bursts (100-200 ms chunks); 64 events hold several
/// seconds. A full channel makes the session wait (back-pressure), it never drops.
pub const OUT_CAPACITY: usize = 64;

/// The provider names voxd knows about; `sim` and `echo` are built in, the others
/// come with the network providers.
pub const KNOWN_PROVIDERS: [&str; 5] = ["sim", "echo", "openai_realtime", "deepgram", "local"];

/// Providers the configuration may name that this build does not implement yet
/// (none: every provider voxd knows is built).
pub const NOT_IMPLEMENTED: [&str; 0] = [];

/// What a session wants to receive from voxd and what it will send back, chosen per
/// call from the caller's codec by [`Provider::formats`]. voxd converts the caller's
/// audio to `input` and the agent's `output` to the caller's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormats {
    /// Codec of [`CallerEvent::Audio`] payloads the session receives.
    pub input: Codec,
    /// Codec of [`AgentEvent::Audio`] payloads the session sends.
    pub output: Codec,
}

/// An event from the call to the provider session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerEvent {
    /// Caller audio in the session's input codec, about 20 ms per chunk, with the
    /// time the shard received it (the start of the "caller frame -> provider
    /// write" latency a session records in [`SessionIo::latency`]).
    Audio(Bytes, Instant),
    /// The caller pressed a DTMF key (`0-9`, `*`, `#`, `A-D`).
    Dtmf(char),
    /// The agent was cut after the caller heard `played_ms` of the current
    /// utterance. Sent after every barge-in: one voxd's local detector raised, and
    /// one the provider raised itself (then after the session's
    /// [`AgentEvent::SpeechStarted`], once the playout is flushed). A network
    /// provider cancels the response if it still runs (local barge-in) and truncates
    /// the assistant item to `played_ms`; the sim drops the rest of its reply.
    BargeIn {
        /// Milliseconds of the interrupted utterance the caller heard.
        played_ms: u32,
    },
    /// The caller hung up: the session ends (closing its connection) and returns.
    Hangup,
}

/// Who spoke a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The caller.
    User,
    /// The AI agent.
    Agent,
}

impl Role {
    /// `user` or `agent` (log field and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Agent => "agent",
        }
    }
}

/// An event from the provider session to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Agent audio in the session's output codec, any chunk size (often delivered
    /// faster than real time: the call's playout paces it).
    Audio(Bytes),
    /// The current utterance's audio is complete.
    AudioDone,
    /// Provider-side VAD heard the caller start talking over the agent: barge-in
    /// (flush the playout, then the glue sends [`CallerEvent::BargeIn`] back).
    SpeechStarted,
    /// A transcript line of either side.
    Transcript {
        /// Who spoke.
        role: Role,
        /// The text (partial or final).
        text: String,
        /// `false` for a partial that later lines replace.
        is_final: bool,
    },
    /// The provider finished (or cancelled) the current response.
    ResponseDone,
    /// A non-fatal error the provider reported; the session goes on. Fatal errors
    /// end the session and come back in [`SessionEnd::error`].
    Error {
        /// What went wrong.
        error: ProviderError,
    },
    /// The agent wants a prompt played to the caller (ARI `play`; calls without
    /// ARI control log and ignore it).
    Play {
        /// ARI media URI, e.g. `sound:hello-world`.
        media: String,
    },
    /// The agent hands the caller back to the dialplan (ARI `continue`), e.g. to a
    /// human queue; `context: None` uses the configured transfer context.
    Transfer {
        /// Dialplan context.
        context: Option<String>,
        /// Extension.
        exten: String,
    },
    /// The agent ends the call (e.g. a hang-up tool call); the session then returns.
    Hangup {
        /// Why, for the logs.
        reason: String,
    },
}

/// Facts about the call handed to [`Provider::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    /// voxd's call id (logs; the sim derives its seed from it).
    pub call_id: u64,
    /// Codec on the caller side of the call.
    pub caller_codec: Codec,
    /// Agent chosen by the dialplan (`AI_AGENT`), if any.
    pub agent: Option<String>,
    /// When the call started, ms on voxd's monotonic clock.
    pub started_at_ms: u64,
    /// 0 for the call's first session; 1 for the one fast reconnect after a
    /// mid-call provider failure (then skip the greeting).
    pub attempt: u32,
    /// Final transcript lines of the call so far, oldest first (empty on the first
    /// attempt): a reconnecting session replays them where the protocol allows
    /// (OpenAI `conversation.item.create`), so the conversation goes on.
    pub history: Vec<(Role, String)>,
}

/// The two channels of one session, session side. Created by the glue with
/// [`SessionIo::pair`] (capacities [`EVENTS_CAPACITY`] and [`OUT_CAPACITY`]).
#[derive(Debug)]
pub struct SessionIo {
    /// Caller events into the session. `None` from `recv` (the glue dropped its
    /// sender) ends the session like a hang-up.
    pub events: mpsc::Receiver<CallerEvent>,
    /// Agent events out of the session. A failed send (the glue dropped its
    /// receiver) ends the session.
    pub out: mpsc::Sender<AgentEvent>,
    /// Where the session records, per write to the provider's socket, the time
    /// from its oldest caller frame's arrival ([`CallerEvent::Audio`]) to the
    /// write's completion (set by the engine, one [`Stage`] per shard; `None` in
    /// tests).
    pub latency: Option<Arc<Stage>>,
}

/// The two channels of one session, call side (kept by the glue).
#[derive(Debug)]
pub struct SessionPeer {
    /// Send caller events to the session.
    pub events: mpsc::Sender<CallerEvent>,
    /// Receive agent events from the session.
    pub out: mpsc::Receiver<AgentEvent>,
}

impl SessionIo {
    /// Records one write to the provider's socket that carried caller audio the
    /// shard received at `since` (the oldest such frame in the write).
    pub fn record_write(&self, since: Instant) {
        if let Some(l) = &self.latency {
            l.record_since(since);
        }
    }

    /// Both ends of a session's bounded channels with the given capacities
    /// (normally [`EVENTS_CAPACITY`], [`OUT_CAPACITY`]; each at least 1).
    pub fn pair(events_capacity: usize, out_capacity: usize) -> (SessionIo, SessionPeer) {
        let (ev_tx, ev_rx) = mpsc::channel(events_capacity.max(1));
        let (out_tx, out_rx) = mpsc::channel(out_capacity.max(1));
        (
            SessionIo {
                events: ev_rx,
                out: out_tx,
                latency: None,
            },
            SessionPeer {
                events: ev_tx,
                out: out_rx,
            },
        )
    }
}

/// Why a session ended (bounded set: usable as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The call sent [`CallerEvent::Hangup`].
    CallerHangup,
    /// The agent ended the call ([`AgentEvent::Hangup`] was sent).
    AgentHangup,
    /// The glue dropped one of the channels (call torn down).
    ChannelClosed,
    /// A fatal error; see [`SessionEnd::error`].
    Error,
}

impl EndReason {
    /// Metric label: `caller_hangup`, `agent_hangup`, `channel_closed`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller_hangup",
            EndReason::AgentHangup => "agent_hangup",
            EndReason::ChannelClosed => "channel_closed",
            EndReason::Error => "error",
        }
    }
}

/// What a session task returns when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// Why it ended.
    pub reason: EndReason,
    /// The fatal error, when `reason` is [`EndReason::Error`].
    pub error: Option<ProviderError>,
}

impl SessionEnd {
    /// A clean end for `reason`.
    pub fn new(reason: EndReason) -> Self {
        SessionEnd {
            reason,
            error: None,
        }
    }

    /// An end caused by a fatal error.
    pub fn failed(error: ProviderError) -> Self {
        SessionEnd {
            reason: EndReason::Error,
            error: Some(error),
        }
    }
}

/// Who is at fault for a [`ProviderError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The remote provider (refused, broke protocol, reported an error, timed out).
    Provider,
    /// voxd's configuration (unknown, disabled or unimplemented provider, bad knob).
    Config,
    /// A bug in voxd.
    Internal,
}

impl Fault {
    /// `provider`, `config` or `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Provider => "provider",
            Fault::Config => "config",
            Fault::Internal => "internal",
        }
    }
}

/// Errors of providers and their sessions, classified by [`Fault`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The configuration names a provider this build does not have yet.
    #[error("provider `{name}` is configured but not implemented yet in this build")]
    NotImplemented {
        /// Provider name as configured.
        name: String,
    },
    /// The name is not a provider voxd knows.
    #[error("unknown provider `{name}` (known: sim, echo, openai_realtime, deepgram, local)")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The provider exists but is disabled in the configuration.
    #[error("provider `{name}` is disabled (providers.{name}.enabled: false)")]
    Disabled {
        /// Provider name.
        name: String,
    },
    /// A provider setting is unusable.
    #[error("provider `{name}`: bad configuration: {message}")]
    Config {
        /// Provider name.
        name: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Could not reach or authenticate with the provider.
    #[error("provider `{name}`: connection failed: {message}")]
    Connect {
        /// Provider name.
        name: String,
        /// Transport or HTTP status detail.
        message: String,
    },
    /// The provider sent something that breaks its protocol.
    #[error("provider `{name}`: protocol error: {message}")]
    Protocol {
        /// Provider name.
        name: String,
        /// What was wrong.
        message: String,
    },
    /// The provider reported an error event.
    #[error("provider `{name}` reported error `{code}`: {message}")]
    Remote {
        /// Provider name.
        name: String,
        /// The provider's error code or type.
        code: String,
        /// The provider's message.
        message: String,
    },
    /// The provider did not answer in time.
    #[error("provider `{name}`: timed out waiting for {what}")]
    Timeout {
        /// Provider name.
        name: String,
        /// What was awaited (`session.created`, `SettingsApplied`, ...).
        what: String,
    },
    /// A bug in voxd's provider code.
    #[error("provider `{name}`: internal error: {message}")]
    Internal {
        /// Provider name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl ProviderError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            ProviderError::NotImplemented { .. }
            | ProviderError::Unknown { .. }
            | ProviderError::Disabled { .. }
            | ProviderError::Config { .. } => Fault::Config,
            ProviderError::Connect { .. }
            | ProviderError::Protocol { .. }
            | ProviderError::Remote { .. }
            | ProviderError::Timeout { .. } => Fault::Provider,
            ProviderError::Internal { .. } => Fault::Internal,
        }
    }

    /// Bounded metric label of the error kind.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::NotImplemented { .. } => "not_implemented",
            ProviderError::Unknown { .. } => "unknown",
            ProviderError::Disabled { .. } => "disabled",
            ProviderError::Config { .. } => "config",
            ProviderError::Connect { .. } => "connect",
            ProviderError::Protocol { .. } => "protocol",
            ProviderError::Remote { .. } => "remote",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Internal { .. } => "internal",
        }
    }
}

/// The future of one session; it resolves when the session ends.
pub type SessionFuture = Pin<Box<dyn Future<Output = SessionEnd> + Send + 'static>>;

/// An AI provider: makes one session per call.
///
/// A network provider's [`Provider::session`] future connects, handshakes (sending
/// the formats of [`Provider::formats`]), then loops with `tokio::select!` over its
/// socket and `io.events`, until hang-up, a closed channel or a fatal error.
pub trait Provider: Send + Sync + 'static {
    /// The configuration name (`sim`, `echo`, `openai_realtime`, ...).
    fn name(&self) -> &'static str;

    /// The formats a session will use for a caller speaking `caller`; called by the
    /// glue before [`Provider::start`] to set up the call's conversions.
    fn formats(&self, caller: Codec) -> AudioFormats;

    /// The session of one call as a future (not yet running). Use this to run it on
    /// a chosen runtime or inside another task; [`Provider::start`] spawns it.
    fn session(&self, meta: SessionMeta, io: SessionIo) -> SessionFuture;

    /// Provider-wide gauges for `/metrics` (`(name, value)`, name a fixed label
    /// value such as `requests_remaining`); none by default.
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// Spawn the call's session on the current tokio runtime (the control runtime).
    /// Panics when called outside a tokio runtime.
    fn start(&self, meta: SessionMeta, io: SessionIo) -> tokio::task::JoinHandle<SessionEnd> {
        tokio::spawn(self.session(meta, io))
    }
}

/// The providers available in this build under the current configuration, keyed by
/// name, and the default one.
#[derive(Clone)]
pub struct Registry {
    providers: Vec<Arc<dyn Provider>>,
    default: String,
    /// `agents.<name>.provider`, for agents that name one.
    agent_providers: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("providers", &self.names().collect::<Vec<_>>())
            .field("default", &self.default)
            .finish()
    }
}

impl Registry {
    /// Build the registry at start-up (and on reload). `echo` is always there; `sim`
    /// when `providers.sim.enabled`. Fails with [`ProviderError::NotImplemented`]
    /// when a network provider (`openai_realtime`, `deepgram`, `local`) is enabled
    /// or is the `default_provider`, and with `Disabled`/`Unknown` when the default
    /// cannot be served.
    pub fn from_config(cfg: &Config) -> Result<Registry, ProviderError> {
        let p = &cfg.providers;
        let mut providers: Vec<Arc<dyn Provider>> = vec![Arc::new(EchoProvider)];
        if p.sim.enabled {
            providers.push(Arc::new(SimProvider::new(SimConfig::from_config(cfg))));
        }
        if p.openai_realtime.enabled {
            let o = openai::OpenAiProvider::from_config(cfg)?
                .with_input_transcription(p.openai_realtime.input_transcription_model.clone());
            providers.push(Arc::new(o));
        }
        if p.deepgram.enabled {
            providers.push(Arc::new(deepgram::DeepgramProvider::from_config(cfg)?));
        }
        if p.local.enabled {
            providers.push(Arc::new(local::LocalProvider::from_config(cfg)?));
        }
        let registry = Registry {
            providers,
            default: cfg.default_provider.as_str().to_string(),
            agent_providers: cfg
                .agents
                .iter()
                .filter_map(|(name, a)| a.provider.map(|p| (name.clone(), p.as_str().to_string())))
                .collect(),
        };
        registry.default_provider()?;
        Ok(registry)
    }

    /// This registry with `provider` added (replacing one of the same name): for
    /// programs that embed voxd with their own agent, and for tests.
    pub fn with_provider(mut self, provider: Arc<dyn Provider>) -> Registry {
        self.providers.retain(|p| p.name() != provider.name());
        self.providers.push(provider);
        self
    }

    /// The provider called `name` (the `AI_PROVIDER` channel variable), or why it
    /// cannot serve a call.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        if let Some(p) = self.providers.iter().find(|p| p.name() == name) {
            return Ok(Arc::clone(p));
        }
        let name = name.to_string();
        Err(if NOT_IMPLEMENTED.contains(&name.as_str()) {
            ProviderError::NotImplemented { name }
        } else if KNOWN_PROVIDERS.contains(&name.as_str()) {
            // Known but not enabled in this configuration.
            ProviderError::Disabled { name }
        } else {
            ProviderError::Unknown { name }
        })
    }

    /// The configured `default_provider`.
    pub fn default_provider(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        self.get(&self.default)
    }

    /// The provider for a call: `requested` (from the dialplan) when given and
    /// non-empty, else the default.
    pub fn resolve(&self, requested: Option<&str>) -> Result<Arc<dyn Provider>, ProviderError> {
        match requested.map(str::trim) {
            Some(name) if !name.is_empty() => self.get(name),
            _ => self.default_provider(),
        }
    }

    /// The provider for a call that asked for `requested` (`AI_PROVIDER`) and
    /// `agent` (`AI_AGENT`): `requested` when given and non-empty, else the
    /// agent's configured provider, else the default. An agent name the
    /// configuration does not know gets the default (and the provider's own
    /// settings).
    pub fn resolve_for(
        &self,
        requested: Option<&str>,
        agent: Option<&str>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        match requested.map(str::trim) {
            Some(name) if !name.is_empty() => self.get(name),
            _ => match agent.and_then(|a| self.agent_providers.get(a.trim())) {
                Some(name) => self.get(name),
                None => self.default_provider(),
            },
        }
    }

    /// Every provider's [`Provider::gauges`], with its name.
    pub fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        self.providers
            .iter()
            .flat_map(|p| {
                let name = p.name();
                p.gauges().into_iter().map(move |(g, v)| (name, g, v))
            })
            .collect()
    }

    /// Names of the providers that can serve calls.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.providers.iter().map(|p| p.name())
    }
}

/// Shorthand for [`Registry::from_config`].
pub fn from_config(cfg: &Config) -> Result<Registry, ProviderError> {
    Registry::from_config(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderName;
    use crate::media::Rate;

    #[test]
    fn default_config_has_sim_and_echo() {
        let reg = from_config(&Config::default()).unwrap();
        let mut names: Vec<_> = reg.names().collect();
        names.sort_unstable();
        assert_eq!(names, ["echo", "sim"]);
        assert_eq!(reg.default_provider().unwrap().name(), "sim");
        assert_eq!(reg.resolve(Some("echo")).unwrap().name(), "echo");
        assert_eq!(reg.resolve(Some(" ")).unwrap().name(), "sim");
        assert_eq!(reg.resolve(None).unwrap().name(), "sim");
    }

    #[test]
    fn network_providers_need_their_keys() {
        for (name, yaml) in [
            (
                "openai_realtime",
                "providers: {openai_realtime: {enabled: true}}",
            ),
            ("deepgram", "providers: {deepgram: {enabled: true}}"),
        ] {
            // Validation refuses a missing key before the registry is built...
            assert!(crate::config::parse_str(yaml).is_err(), "{name}");
            // ...and the registry refuses too, naming the provider.
            let mut cfg = Config::default();
            match name {
                "openai_realtime" => cfg.providers.openai_realtime.enabled = true,
                _ => cfg.providers.deepgram.enabled = true,
            }
            let err = from_config(&cfg).unwrap_err();
            assert_eq!(err.fault(), Fault::Config, "{name}: {err}");
        }
        let mut cfg = Config::default();
        cfg.providers.openai_realtime.enabled = true;
        cfg.providers.openai_realtime.api_key = crate::config::Secret::new("sk-test");
        cfg.providers.local.enabled = true;
        let reg = from_config(&cfg).unwrap();
        assert_eq!(
            reg.get("openai_realtime").unwrap().name(),
            "openai_realtime"
        );
        assert_eq!(reg.get("local").unwrap().name(), "local");
    }

    #[test]
    fn per_call_lookup_errors_are_classified() {
        let mut cfg = Config::default();
        cfg.providers.sim.enabled = false;
        cfg.default_provider = ProviderName::Echo;
        let reg = from_config(&cfg).unwrap();
        assert!(matches!(
            reg.get("sim"),
            Err(ProviderError::Disabled { .. })
        ));
        assert!(matches!(
            reg.get("openai_realtime"),
            Err(ProviderError::Disabled { .. })
        ));
        let e = reg.get("nope").err().unwrap();
        assert!(matches!(e, ProviderError::Unknown { .. }));
        assert_eq!(e.fault(), Fault::Config);

        cfg.default_provider = ProviderName::Sim;
        assert!(matches!(
            from_config(&cfg),
            Err(ProviderError::Disabled { .. })
        ));
    }

    #[test]
    fn agent_selects_its_provider_unless_the_dialplan_names_one() {
        let cfg = crate::config::parse_str(
            "agents: {support: {provider: echo}, sales: {prompt: hi}}\ndefault_provider: sim\n",
        )
        .unwrap()
        .config;
        let reg = from_config(&cfg).unwrap();
        let name = |p: Option<&str>, a: Option<&str>| reg.resolve_for(p, a).unwrap().name();
        assert_eq!(name(None, Some("support")), "echo");
        assert_eq!(
            name(Some("sim"), Some("support")),
            "sim",
            "AI_PROVIDER wins"
        );
        assert_eq!(name(Some(" "), Some("support")), "echo");
        assert_eq!(name(None, Some("sales")), "sim", "agent without provider");
        assert_eq!(name(None, Some("nobody")), "sim", "unknown agent: default");
        assert_eq!(name(None, None), "sim");
    }

    #[test]
    fn builtins_avoid_resampling() {
        let reg = from_config(&Config::default()).unwrap();
        for name in ["sim", "echo"] {
            let p = reg.get(name).unwrap();
            for c in [Codec::Pcmu, Codec::Pcma, Codec::Slin(Rate::Hz16000)] {
                let f = p.formats(c);
                assert_eq!((f.input, f.output), (c, c), "{name} {c:?}");
            }
        }
    }

    #[test]
    fn error_faults() {
        let e = ProviderError::Timeout {
            name: "x".into(),
            what: "session.created".into(),
        };
        assert_eq!(e.fault(), Fault::Provider);
        assert_eq!(e.fault().as_str(), "provider");
        let e = ProviderError::Internal {
            name: "x".into(),
            message: "m".into(),
        };
        assert_eq!(e.fault(), Fault::Internal);
    }
}
