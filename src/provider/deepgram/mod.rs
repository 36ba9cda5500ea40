//! The `deepgram` provider: a client of Deepgram's Voice Agent API v1
//! (`wss://agent.deepgram.com/v1/agent/converse`), which runs listen (STT), think
//! (LLM) and speak (TTS) on Deepgram's side over one WebSocket.
//!
//! Owns: the provider object built from `providers.deepgram` and `agents:`
//! ([`DeepgramProvider::from_config`]), its counters ([`DeepgramStats`]), the v1
//! messages ([`messages`]), one session task per call ([`session`]) and the socket
//! plumbing shared with the `local` client ([`link`]). Audio is G.711 mu-law 8 kHz
//! both ways (`Codec::Pcmu`), so a PCMU caller costs no conversion at all.
//!
//! Must not: log or return the API key (it travels only in the `Authorization:
//! Token` header built in [`session`]), send audio before `SettingsApplied`, grow
//! any buffer without bound, or decide call policy (reconnects and failure
//! handling belong to the glue; a session reports a fatal error in its
//! [`SessionEnd`](crate::provider::SessionEnd) and returns).

#![forbid(unsafe_code)]

pub mod messages;
pub mod session;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{AudioFormats, Provider, ProviderError, SessionFuture, SessionIo, SessionMeta};
use crate::call::Codec;
use crate::config::{AgentConfig, Config, Secret};

/// The provider's configuration name.
pub const NAME: &str = "deepgram";

/// What a session needs from the configuration (a copy taken when the provider
/// is built; a reload builds a new provider).
#[derive(Debug, Clone)]
pub struct DgConfig {
    /// Voice Agent endpoint.
    pub base_url: String,
    /// API key (masked in `Debug`).
    pub api_key: Secret,
    /// `agent.listen.provider.model`.
    pub listen_model: String,
    /// `agent.think.provider.type`.
    pub think_provider: String,
    /// `agent.think.provider.model`.
    pub think_model: String,
    /// `agent.speak.provider.model` (an agent's `voice` overrides it).
    pub speak_model: String,
    /// `agent.think.prompt` (an agent's `prompt` overrides it).
    pub instructions: String,
    /// `agent.greeting` (an agent's `greeting` overrides it).
    pub greeting: Option<String>,
    /// `KeepAlive` after this long without audio to Deepgram.
    pub keepalive: Duration,
    /// Limit for the connect, and again for each of `Welcome` and
    /// `SettingsApplied`.
    pub connect_timeout: Duration,
    /// Read deadline of the socket (`read_timeout_ms`; see `link::Liveness`).
    pub read_timeout: Duration,
    /// `agents:` of the configuration.
    pub agents: BTreeMap<String, AgentConfig>,
    /// A live session whose writes make no progress this long ends
    /// ([`WRITE_STALL_LIMIT`]).
    pub write_stall: Duration,
}

/// How long a session tolerates a provider that does not read what it writes
/// before ending with a timeout: 10 s (a provider that keeps the connection open
/// but stops reading is dead for the call).
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(10);

impl DgConfig {
    /// The session settings from `providers.deepgram` and `agents:` (no checks;
    /// [`DeepgramProvider::from_config`] checks).
    pub fn from_config(cfg: &Config) -> DgConfig {
        let d = &cfg.providers.deepgram;
        DgConfig {
            base_url: d.base_url.clone(),
            api_key: d.api_key.clone(),
            listen_model: d.listen_model.clone(),
            think_provider: d.think_provider.clone(),
            think_model: d.think_model.clone(),
            speak_model: d.speak_model.clone(),
            instructions: d.instructions.clone(),
            greeting: d.greeting.clone(),
            keepalive: Duration::from_millis(u64::from(d.keepalive_ms.max(1))),
            connect_timeout: Duration::from_millis(u64::from(d.connect_timeout_ms.max(1))),
            read_timeout: Duration::from_millis(u64::from(d.read_timeout_ms.max(1))),
            agents: cfg.agents.clone(),
            write_stall: WRITE_STALL_LIMIT,
        }
    }
}

/// Counters of all sessions of one [`DeepgramProvider`] (relaxed atomics, read
/// with [`DeepgramStats::snapshot`]; touched a few times per second per call,
/// never per audio sample).
#[derive(Debug, Default)]
pub struct DeepgramStats {
    /// Sessions started.
    pub sessions: AtomicU64,
    /// Sessions that failed before audio could flow (connect refused or timed
    /// out, no `Welcome`, no `SettingsApplied`).
    pub connect_failures: AtomicU64,
    /// `Error` messages received (each ended its session).
    pub errors: AtomicU64,
    /// `Warning` messages received.
    pub warnings: AtomicU64,
    /// Messages of types voxd does not know (ignored).
    pub unknown_messages: AtomicU64,
    /// `KeepAlive` messages sent.
    pub keepalives_sent: AtomicU64,
    /// Barge-ins: Deepgram heard the caller over agent audio, or voxd's own
    /// detector cut the agent (each counted once).
    pub barge_ins: AtomicU64,
    /// Caller audio bytes sent to Deepgram (mu-law).
    pub audio_sent_bytes: AtomicU64,
    /// Agent audio bytes received from Deepgram and passed on (mu-law).
    pub audio_received_bytes: AtomicU64,
    /// Agent audio bytes dropped after a barge-in (the rest of a cut reply).
    pub audio_dropped_bytes: AtomicU64,
    /// Caller audio bytes dropped from the hold buffer before `SettingsApplied`
    /// (more than 1 s arrived during the handshake).
    pub held_dropped_bytes: AtomicU64,
    /// `AgentThinking` messages.
    pub agent_thinking: AtomicU64,
    /// `AgentStartedSpeaking` messages (agent turns).
    pub agent_turns: AtomicU64,
    /// Sum of `AgentStartedSpeaking.total_latency`, ms (mean = sum / turns).
    pub total_latency_ms_sum: AtomicU64,
    /// Sum of `AgentStartedSpeaking.ttt_latency` (think), ms.
    pub think_latency_ms_sum: AtomicU64,
    /// Sum of `AgentStartedSpeaking.tts_latency`, ms.
    pub tts_latency_ms_sum: AtomicU64,
    /// Client-side function calls answered with an error result.
    pub function_calls_refused: AtomicU64,
}

/// A plain copy of [`DeepgramStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeepgramStatsSnapshot {
    /// See [`DeepgramStats::sessions`].
    pub sessions: u64,
    /// See [`DeepgramStats::connect_failures`].
    pub connect_failures: u64,
    /// See [`DeepgramStats::errors`].
    pub errors: u64,
    /// See [`DeepgramStats::warnings`].
    pub warnings: u64,
    /// See [`DeepgramStats::unknown_messages`].
    pub unknown_messages: u64,
    /// See [`DeepgramStats::keepalives_sent`].
    pub keepalives_sent: u64,
    /// See [`DeepgramStats::barge_ins`].
    pub barge_ins: u64,
    /// See [`DeepgramStats::audio_sent_bytes`].
    pub audio_sent_bytes: u64,
    /// See [`DeepgramStats::audio_received_bytes`].
    pub audio_received_bytes: u64,
    /// See [`DeepgramStats::audio_dropped_bytes`].
    pub audio_dropped_bytes: u64,
    /// See [`DeepgramStats::held_dropped_bytes`].
    pub held_dropped_bytes: u64,
    /// See [`DeepgramStats::agent_thinking`].
    pub agent_thinking: u64,
    /// See [`DeepgramStats::agent_turns`].
    pub agent_turns: u64,
    /// See [`DeepgramStats::total_latency_ms_sum`].
    pub total_latency_ms_sum: u64,
    /// See [`DeepgramStats::think_latency_ms_sum`].
    pub think_latency_ms_sum: u64,
    /// See [`DeepgramStats::tts_latency_ms_sum`].
    pub tts_latency_ms_sum: u64,
    /// See [`DeepgramStats::function_calls_refused`].
    pub function_calls_refused: u64,
}

impl DeepgramStats {
    /// The counters now (each read on its own; not one atomic instant).
    pub fn snapshot(&self) -> DeepgramStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeepgramStatsSnapshot {
            sessions: r(&self.sessions),
            connect_failures: r(&self.connect_failures),
            errors: r(&self.errors),
            warnings: r(&self.warnings),
            unknown_messages: r(&self.unknown_messages),
            keepalives_sent: r(&self.keepalives_sent),
            barge_ins: r(&self.barge_ins),
            audio_sent_bytes: r(&self.audio_sent_bytes),
            audio_received_bytes: r(&self.audio_received_bytes),
            audio_dropped_bytes: r(&self.audio_dropped_bytes),
            held_dropped_bytes: r(&self.held_dropped_bytes),
            agent_thinking: r(&self.agent_thinking),
            agent_turns: r(&self.agent_turns),
            total_latency_ms_sum: r(&self.total_latency_ms_sum),
            think_latency_ms_sum: r(&self.think_latency_ms_sum),
            tts_latency_ms_sum: r(&self.tts_latency_ms_sum),
            function_calls_refused: r(&self.function_calls_refused),
        }
    }
}

/// The Deepgram Voice Agent provider (one per registry; sessions share its
/// configuration and counters).
#[derive(Debug, Clone)]
pub struct DeepgramProvider {
    cfg: Arc<DgConfig>,
    stats: Arc<DeepgramStats>,
}

impl DeepgramProvider {
    /// Builds the provider from `providers.deepgram` and `agents:`; called when the
    /// registry is built, so a bad setting stops start-up instead of every call.
    ///
    /// Errors ([`ProviderError::Config`]): no API key (env `DEEPGRAM_API_KEY`), a
    /// `base_url` that is not a `ws://`/`wss://` URL with a host, or plain `ws://`
    /// to a host that is not loopback (the key would cross the network in clear).
    pub fn from_config(cfg: &Config) -> Result<DeepgramProvider, ProviderError> {
        let dg = DgConfig::from_config(cfg);
        if dg.api_key.expose().is_none() {
            return Err(ProviderError::Config {
                name: NAME.into(),
                message: "providers.deepgram.api_key is not set (set the environment \
                          variable DEEPGRAM_API_KEY)"
                    .into(),
            });
        }
        super::net::check_url(NAME, &dg.base_url)?;
        if dg.base_url.starts_with("ws://") && !super::net::is_loopback_url(&dg.base_url) {
            return Err(ProviderError::Config {
                name: NAME.into(),
                message: format!(
                    "providers.deepgram.base_url `{}`: plain ws:// would send the API key \
                     in clear to a host that is not this one; use wss://",
                    dg.base_url
                ),
            });
        }
        Ok(DeepgramProvider {
            cfg: Arc::new(dg),
            stats: Arc::new(DeepgramStats::default()),
        })
    }

    /// The counters of this provider's sessions (shared; for metrics and tests).
    pub fn stats(&self) -> Arc<DeepgramStats> {
        Arc::clone(&self.stats)
    }

    /// The settings sessions use.
    pub fn config(&self) -> &DgConfig {
        &self.cfg
    }
}

impl Provider for DeepgramProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Mu-law 8 kHz both ways, whatever the caller speaks (Deepgram's telephony
    /// format; voxd converts a slin caller once on each side).
    fn formats(&self, _caller: Codec) -> AudioFormats {
        AudioFormats {
            input: Codec::Pcmu,
            output: Codec::Pcmu,
        }
    }

    fn session(&self, meta: SessionMeta, io: SessionIo) -> SessionFuture {
        Box::pin(session::run(
            Arc::clone(&self.cfg),
            Arc::clone(&self.stats),
            meta,
            io,
        ))
    }
}
