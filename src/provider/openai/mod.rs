//! The OpenAI Realtime (GA) provider, `openai_realtime`: one WebSocket session per
//! call that streams the caller's audio to the model and the model's audio back.
//!
//! Owns: the provider's settings resolved from `providers.openai_realtime` and the
//! `agents` map ([`OpenAiProvider::from_config`]), the audio formats it asks for
//! (`input_format` / `output_format`: PCMU both ways by default, so a telephone call
//! is never resampled), the per-process counters ([`OpenAiStats`]), and through its
//! submodules the wire shapes (`events`), the turn and barge-in bookkeeping (`turn`)
//! and the session loop (`session`). The parser of server events
//! ([`parse_server_event`]) is public so that the fuzz target and property tests
//! drive exactly what the session runs.
//!
//! Must not: log, print or put into an error the API key or the `Authorization`
//! header; send the retired beta header `OpenAI-Beta: realtime=v1` or beta-shaped
//! events; send the key over plain `ws://` to anything but this host; decide the
//! reconnect policy (the glue does, from the [`SessionEnd`](super::SessionEnd)).

#![forbid(unsafe_code)]

mod events;
mod session;
mod turn;

#[cfg(test)]
mod tests;

pub use events::{
    append_message, parse_server_event, ErrorBody, EventError, Parsed, RateLimit, ResponseRef,
    ServerEvent, HANDLED, IGNORED,
};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{net, AudioFormats, Provider, ProviderError, SessionFuture, SessionIo, SessionMeta};
use crate::call::Codec;
use crate::config::{AgentConfig, Config, RealtimeAudioFormat, Secret, TurnDetectionConfig};
use crate::media::Rate;

/// The provider's configuration name.
pub const NAME: &str = "openai_realtime";

/// The codec voxd speaks for an OpenAI audio format.
pub fn codec_of(format: RealtimeAudioFormat) -> Codec {
    match format {
        RealtimeAudioFormat::Pcmu => Codec::Pcmu,
        RealtimeAudioFormat::Pcma => Codec::Pcma,
        RealtimeAudioFormat::Pcm24k => Codec::Slin(Rate::Hz24000),
    }
}

/// Bytes per millisecond of a codec (8 for G.711, 48 for 24 kHz PCM).
fn bytes_per_ms(codec: Codec) -> usize {
    codec.rate().samples_per_ms() * codec.bytes_per_sample()
}

/// Everything a session needs, fixed when the provider is built.
#[derive(Debug, Clone)]
struct Settings {
    /// `base_url` with `model=` appended.
    url: String,
    model: String,
    voice: String,
    instructions: String,
    greeting: Option<String>,
    input: RealtimeAudioFormat,
    output: RealtimeAudioFormat,
    turn_detection: TurnDetectionConfig,
    append_ms: u32,
    connect_timeout: Duration,
    /// Read deadline of the socket (`read_timeout_ms`; see `link::Liveness`).
    read_timeout: Duration,
    /// Only ever read to build the `Authorization` header.
    api_key: Secret,
    agents: BTreeMap<String, AgentConfig>,
    input_transcription: Option<String>,
}

/// Counters and gauges of all `openai_realtime` sessions of this process, for the
/// metrics endpoint. Sessions add their audio byte counts in batches (about once a
/// second and at the end), not per frame.
#[derive(Debug, Default)]
pub struct OpenAiStats {
    /// Sessions started.
    pub sessions: AtomicU64,
    /// Sessions that never became usable: connect refused or timed out, no
    /// `session.created`, or an error before it.
    pub connect_failures: AtomicU64,
    /// Sessions ended by a fatal error after set-up (fatal error event, protocol
    /// error, connection lost).
    pub errors_fatal: AtomicU64,
    /// Non-fatal error events (passed on as `AgentEvent::Error`; the session goes
    /// on).
    pub errors_retryable: AtomicU64,
    /// Server events of a type voxd does not know (ignored).
    pub unknown_events: AtomicU64,
    /// Provider barge-ins: `speech_started` while agent audio played.
    pub barge_ins_provider: AtomicU64,
    /// Local barge-ins: `BargeIn` from voxd without a `speech_started` before it.
    pub barge_ins_local: AtomicU64,
    /// `response.cancel` messages sent.
    pub cancels_sent: AtomicU64,
    /// `conversation.item.truncate` messages sent.
    pub truncates_sent: AtomicU64,
    /// Caller audio bytes sent (input codec, before base64).
    pub audio_bytes_in: AtomicU64,
    /// Agent audio bytes received and passed on (output codec, after base64).
    pub audio_bytes_out: AtomicU64,
    /// Agent audio bytes dropped because their item or response was cut.
    pub audio_bytes_dropped: AtomicU64,
    /// Caller audio chunks dropped while the session was still being set up (more
    /// than 50 chunks, 1 s of 20 ms frames, waiting).
    pub handshake_audio_dropped: AtomicU64,
    /// Last `rate_limits.updated` value: requests remaining.
    pub rate_requests_remaining: AtomicU64,
    /// Last `rate_limits.updated` value: requests limit.
    pub rate_requests_limit: AtomicU64,
    /// Last `rate_limits.updated` value: tokens remaining.
    pub rate_tokens_remaining: AtomicU64,
    /// Last `rate_limits.updated` value: tokens limit.
    pub rate_tokens_limit: AtomicU64,
}

/// A plain copy of [`OpenAiStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenAiStatsSnapshot {
    /// See [`OpenAiStats::sessions`].
    pub sessions: u64,
    /// See [`OpenAiStats::connect_failures`].
    pub connect_failures: u64,
    /// See [`OpenAiStats::errors_fatal`].
    pub errors_fatal: u64,
    /// See [`OpenAiStats::errors_retryable`].
    pub errors_retryable: u64,
    /// See [`OpenAiStats::unknown_events`].
    pub unknown_events: u64,
    /// See [`OpenAiStats::barge_ins_provider`].
    pub barge_ins_provider: u64,
    /// See [`OpenAiStats::barge_ins_local`].
    pub barge_ins_local: u64,
    /// See [`OpenAiStats::cancels_sent`].
    pub cancels_sent: u64,
    /// See [`OpenAiStats::truncates_sent`].
    pub truncates_sent: u64,
    /// See [`OpenAiStats::audio_bytes_in`].
    pub audio_bytes_in: u64,
    /// See [`OpenAiStats::audio_bytes_out`].
    pub audio_bytes_out: u64,
    /// See [`OpenAiStats::audio_bytes_dropped`].
    pub audio_bytes_dropped: u64,
    /// See [`OpenAiStats::handshake_audio_dropped`].
    pub handshake_audio_dropped: u64,
    /// See [`OpenAiStats::rate_requests_remaining`].
    pub rate_requests_remaining: u64,
    /// See [`OpenAiStats::rate_requests_limit`].
    pub rate_requests_limit: u64,
    /// See [`OpenAiStats::rate_tokens_remaining`].
    pub rate_tokens_remaining: u64,
    /// See [`OpenAiStats::rate_tokens_limit`].
    pub rate_tokens_limit: u64,
}

impl OpenAiStats {
    /// All values now (relaxed loads; each value is exact, the set is not atomic).
    pub fn snapshot(&self) -> OpenAiStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpenAiStatsSnapshot {
            sessions: l(&self.sessions),
            connect_failures: l(&self.connect_failures),
            errors_fatal: l(&self.errors_fatal),
            errors_retryable: l(&self.errors_retryable),
            unknown_events: l(&self.unknown_events),
            barge_ins_provider: l(&self.barge_ins_provider),
            barge_ins_local: l(&self.barge_ins_local),
            cancels_sent: l(&self.cancels_sent),
            truncates_sent: l(&self.truncates_sent),
            audio_bytes_in: l(&self.audio_bytes_in),
            audio_bytes_out: l(&self.audio_bytes_out),
            audio_bytes_dropped: l(&self.audio_bytes_dropped),
            handshake_audio_dropped: l(&self.handshake_audio_dropped),
            rate_requests_remaining: l(&self.rate_requests_remaining),
            rate_requests_limit: l(&self.rate_requests_limit),
            rate_tokens_remaining: l(&self.rate_tokens_remaining),
            rate_tokens_limit: l(&self.rate_tokens_limit),
        }
    }
}

/// The OpenAI Realtime provider (cheap to clone: settings and stats are shared).
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    settings: Arc<Settings>,
    stats: Arc<OpenAiStats>,
}

fn config_error(message: String) -> ProviderError {
    ProviderError::Config {
        name: NAME.to_string(),
        message,
    }
}

/// `model` percent-encoded for a query string (model names are plain, but a
/// stray `&` or space must not change the URL).
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl OpenAiProvider {
    /// Build the provider from `providers.openai_realtime` and `agents`; called
    /// when the registry is built (start-up, reload). It does not look at
    /// `enabled`: whether to offer the provider is the registry's decision. Errors ([`ProviderError::Config`]): no API key (env
    /// `OPENAI_API_KEY`), a `base_url` that [`net::check_url`] refuses, a plain
    /// `ws://` URL to another host (the key would travel in clear), an empty model.
    pub fn from_config(cfg: &Config) -> Result<OpenAiProvider, ProviderError> {
        let o = &cfg.providers.openai_realtime;
        if !o.api_key.is_set() {
            return Err(config_error(format!(
                "providers.{NAME}.api_key is not set; set the environment variable OPENAI_API_KEY"
            )));
        }
        net::check_url(NAME, &o.base_url)?;
        if o.base_url.starts_with("ws://") && !net::is_loopback_url(&o.base_url) {
            return Err(config_error(format!(
                "providers.{NAME}.base_url `{}`: plain ws:// would send the API key in clear; use wss:// (ws:// is allowed to this host only)",
                o.base_url
            )));
        }
        let model = o.model.trim();
        if model.is_empty() {
            return Err(config_error(format!("providers.{NAME}.model is empty")));
        }
        let sep = if o.base_url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}model={}", o.base_url, encode_query_value(model));
        let settings = Settings {
            url,
            model: model.to_string(),
            voice: o.voice.clone(),
            instructions: o.instructions.clone(),
            greeting: o.greeting.clone().filter(|g| !g.trim().is_empty()),
            input: o.input_format,
            output: o.output_format,
            turn_detection: o.turn_detection.clone(),
            append_ms: o.append_ms.max(20),
            connect_timeout: Duration::from_millis(u64::from(o.connect_timeout_ms.max(1))),
            read_timeout: Duration::from_millis(u64::from(o.read_timeout_ms.max(1))),
            api_key: o.api_key.clone(),
            agents: cfg.agents.clone(),
            input_transcription: None,
        };
        Ok(OpenAiProvider {
            settings: Arc::new(settings),
            stats: Arc::new(OpenAiStats::default()),
        })
    }

    /// This provider with caller-side transcription turned on with `model` (e.g.
    /// `gpt-4o-mini-transcribe`), or off with `None` (the default): the server then
    /// sends `conversation.item.input_audio_transcription.*`, which become user
    /// [`Transcript`](super::AgentEvent::Transcript)s (and reconnect history).
    /// It is billed separately by OpenAI, hence off unless asked for.
    pub fn with_input_transcription(mut self, model: Option<String>) -> OpenAiProvider {
        Arc::make_mut(&mut self.settings).input_transcription =
            model.filter(|m| !m.trim().is_empty());
        self
    }

    /// The counters of all sessions of this provider (shared; export them).
    pub fn stats(&self) -> Arc<OpenAiStats> {
        Arc::clone(&self.stats)
    }

    /// The WebSocket URL sessions connect to (`base_url` plus `model=`; holds no
    /// secret).
    pub fn url(&self) -> &str {
        &self.settings.url
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The last `rate_limits.updated` of any session: requests and tokens,
    /// remaining and limit.
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        let s = self.stats().snapshot();
        vec![
            (
                "rate_limit_requests_remaining",
                s.rate_requests_remaining as f64,
            ),
            ("rate_limit_requests_limit", s.rate_requests_limit as f64),
            (
                "rate_limit_tokens_remaining",
                s.rate_tokens_remaining as f64,
            ),
            ("rate_limit_tokens_limit", s.rate_tokens_limit as f64),
        ]
    }

    /// The configured `input_format` / `output_format`, whatever the caller's codec
    /// (voxd converts; the default PCMU both ways needs no resampling on a
    /// telephone call).
    fn formats(&self, _caller: Codec) -> AudioFormats {
        AudioFormats {
            input: codec_of(self.settings.input),
            output: codec_of(self.settings.output),
        }
    }

    fn session(&self, meta: SessionMeta, io: SessionIo) -> SessionFuture {
        Box::pin(session::run(
            Arc::clone(&self.settings),
            Arc::clone(&self.stats),
            meta,
            io,
        ))
    }
}
