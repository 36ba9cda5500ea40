//! The `local` provider: a client of the reference engine's `local-ai-server`
//! (Asterisk AI Voice Agent), a self-hosted STT -> LLM -> TTS pipeline behind one
//! WebSocket (default `ws://127.0.0.1:8765`).
//!
//! Owns: the provider object built from `providers.local` and `agents:`
//! ([`LocalProvider::from_config`]), its counters ([`LocalStats`]), the protocol
//! messages ([`messages`]), the reply-audio conversion ([`convert`]) and one
//! session task per call ([`session`]). Caller audio goes up as slin16 (the
//! server's native input), batched to `chunk_ms` per message; reply audio comes
//! back as whatever the server synthesized (mu-law 8 kHz, or PCM16 16 kHz from
//! Piper/Kokoro, which voxd asks for) and leaves the session as slin16.
//!
//! Must not: log or return the auth token, send audio before the server accepted
//! the `auth` message (when a token is configured), grow any buffer without bound,
//! or decide call policy (the glue handles reconnects and failures).

#![forbid(unsafe_code)]

pub mod convert;
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
use crate::media::Rate;

/// The provider's configuration name.
pub const NAME: &str = "local";

/// The codec of local sessions, both ways: slin16.
pub const CODEC: Codec = Codec::Slin(Rate::Hz16000);

/// Bytes of slin16 per millisecond.
const SLIN16_BYTES_PER_MS: usize = 32;

/// What a session needs from the configuration (a copy taken when the provider
/// is built).
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Server endpoint.
    pub base_url: String,
    /// Optional token for the `auth` message (masked in `Debug`).
    pub auth_token: Secret,
    /// Caller audio per `audio` message, bytes of slin16 (`chunk_ms` x 32).
    pub chunk_bytes: usize,
    /// Limit for the connect, and again for the `auth_response`.
    pub connect_timeout: Duration,
    /// Read deadline of the socket (`read_timeout_ms`; see `link::Liveness`).
    pub read_timeout: Duration,
    /// `agents:` of the configuration (prompt and greeting per call).
    pub agents: BTreeMap<String, AgentConfig>,
    /// A session whose writes make no progress this long ends.
    pub write_stall: Duration,
}

impl LocalConfig {
    /// The session settings from `providers.local` and `agents:` (no checks).
    pub fn from_config(cfg: &Config) -> LocalConfig {
        let l = &cfg.providers.local;
        LocalConfig {
            base_url: l.base_url.clone(),
            auth_token: l.auth_token.clone(),
            chunk_bytes: l.chunk_ms as usize * SLIN16_BYTES_PER_MS,
            connect_timeout: Duration::from_millis(u64::from(l.connect_timeout_ms.max(1))),
            read_timeout: Duration::from_millis(u64::from(l.read_timeout_ms.max(1))),
            agents: cfg.agents.clone(),
            write_stall: super::deepgram::WRITE_STALL_LIMIT,
        }
    }
}

/// Counters of all sessions of one [`LocalProvider`] (relaxed atomics, read with
/// [`LocalStats::snapshot`]).
#[derive(Debug, Default)]
pub struct LocalStats {
    /// Sessions started.
    pub sessions: AtomicU64,
    /// Sessions that failed before audio could flow (connect refused or timed
    /// out, auth refused or unanswered).
    pub connect_failures: AtomicU64,
    /// Errors the server reported (`stt_result` with `error`, refused
    /// `switch_model`), non-fatal.
    pub errors: AtomicU64,
    /// Messages of types voxd does not know (ignored).
    pub unknown_messages: AtomicU64,
    /// `barge_in` messages sent.
    pub barge_ins: AtomicU64,
    /// `audio` messages sent.
    pub audio_messages_sent: AtomicU64,
    /// Caller audio bytes sent (slin16, before base64).
    pub audio_sent_bytes: AtomicU64,
    /// Reply audio bytes received (as the server encoded them).
    pub audio_received_bytes: AtomicU64,
    /// Reply audio bytes dropped after a barge-in.
    pub audio_dropped_bytes: AtomicU64,
    /// Reply audio in a format voxd cannot play (dropped, reported).
    pub audio_unplayable: AtomicU64,
    /// Caller audio bytes dropped from the hold buffer before `auth_response`.
    pub held_dropped_bytes: AtomicU64,
    /// Binary messages whose size differed from their `tts_audio.byte_length`.
    pub length_mismatches: AtomicU64,
}

/// A plain copy of [`LocalStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStatsSnapshot {
    /// See [`LocalStats::sessions`].
    pub sessions: u64,
    /// See [`LocalStats::connect_failures`].
    pub connect_failures: u64,
    /// See [`LocalStats::errors`].
    pub errors: u64,
    /// See [`LocalStats::unknown_messages`].
    pub unknown_messages: u64,
    /// See [`LocalStats::barge_ins`].
    pub barge_ins: u64,
    /// See [`LocalStats::audio_messages_sent`].
    pub audio_messages_sent: u64,
    /// See [`LocalStats::audio_sent_bytes`].
    pub audio_sent_bytes: u64,
    /// See [`LocalStats::audio_received_bytes`].
    pub audio_received_bytes: u64,
    /// See [`LocalStats::audio_dropped_bytes`].
    pub audio_dropped_bytes: u64,
    /// See [`LocalStats::audio_unplayable`].
    pub audio_unplayable: u64,
    /// See [`LocalStats::held_dropped_bytes`].
    pub held_dropped_bytes: u64,
    /// See [`LocalStats::length_mismatches`].
    pub length_mismatches: u64,
}

impl LocalStats {
    /// The counters now (each read on its own).
    pub fn snapshot(&self) -> LocalStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LocalStatsSnapshot {
            sessions: r(&self.sessions),
            connect_failures: r(&self.connect_failures),
            errors: r(&self.errors),
            unknown_messages: r(&self.unknown_messages),
            barge_ins: r(&self.barge_ins),
            audio_messages_sent: r(&self.audio_messages_sent),
            audio_sent_bytes: r(&self.audio_sent_bytes),
            audio_received_bytes: r(&self.audio_received_bytes),
            audio_dropped_bytes: r(&self.audio_dropped_bytes),
            audio_unplayable: r(&self.audio_unplayable),
            held_dropped_bytes: r(&self.held_dropped_bytes),
            length_mismatches: r(&self.length_mismatches),
        }
    }
}

/// The local STT/LLM/TTS server provider.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    cfg: Arc<LocalConfig>,
    stats: Arc<LocalStats>,
}

impl LocalProvider {
    /// Builds the provider from `providers.local` and `agents:`; called when the
    /// registry is built.
    ///
    /// Errors ([`ProviderError::Config`]): a `base_url` that is not a
    /// `ws://`/`wss://` URL with a host, or `chunk_ms` below 10. A token sent over
    /// plain `ws://` to another host is allowed (the server usually sits on the
    /// LAN or in the same compose network) but logged as a warning.
    pub fn from_config(cfg: &Config) -> Result<LocalProvider, ProviderError> {
        let l = LocalConfig::from_config(cfg);
        super::net::check_url(NAME, &l.base_url)?;
        if cfg.providers.local.chunk_ms < 10 {
            return Err(ProviderError::Config {
                name: NAME.into(),
                message: format!(
                    "providers.local.chunk_ms {} is below 10",
                    cfg.providers.local.chunk_ms
                ),
            });
        }
        if l.auth_token.expose().is_some()
            && l.base_url.starts_with("ws://")
            && !super::net::is_loopback_url(&l.base_url)
        {
            tracing::warn!(
                base_url = %l.base_url,
                "providers.local: the auth token goes over plain ws:// to another host; \
                 prefer wss:// or a private network"
            );
        }
        Ok(LocalProvider {
            cfg: Arc::new(l),
            stats: Arc::new(LocalStats::default()),
        })
    }

    /// The counters of this provider's sessions (shared).
    pub fn stats(&self) -> Arc<LocalStats> {
        Arc::clone(&self.stats)
    }

    /// The settings sessions use.
    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// slin16 both ways: the server's native input; its output is converted to
    /// slin16 in the session (see [`convert`]).
    fn formats(&self, _caller: Codec) -> AudioFormats {
        AudioFormats {
            input: CODEC,
            output: CODEC,
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
