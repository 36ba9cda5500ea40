//! Protocol-faithful simulators of the AI providers voxd talks to: real WebSocket
//! servers on loopback that speak OpenAI Realtime (GA), Deepgram Voice Agent (v1) and
//! the reference engine's `local-ai-server` protocol, check everything the client
//! sends, and answer like the real services (server VAD events, think time, bursty
//! reply audio, barge-in), with injectable faults.
//!
//! Owns: the public face ([`ProviderSim`], [`ProviderSimConfig`], [`Fault`],
//! [`SimStatsSnapshot`]) used by tests, by `voxd loadgen --provider ...` and by
//! operators for capacity planning. The parts are `common` (accept loop, per
//! connection plumbing, stats, fault injection), `brain` (the sans-IO agent: the
//! sim provider's [`SimAgent`](crate::provider::sim::SimAgent) plus an utterance VAD),
//! and one module per protocol (`openai`, `deepgram`, `local`).
//!
//! Must not: share code or state with voxd's own provider clients (the simulators
//! are written from the published protocols, independently, so that they catch the
//! clients' mistakes), keep unbounded queues or buffers per connection, log or
//! echo a credential, or panic on anything a client sends. Every protocol error a
//! client makes is recorded in [`SimStatsSnapshot::violations`] and answered with
//! the protocol's own error message.

#![forbid(unsafe_code)]

mod brain;
mod common;
mod deepgram;
mod local;
mod openai;
mod openai_session;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use common::Shared;

/// Which provider protocol a [`ProviderSim`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimProtocol {
    /// OpenAI Realtime, GA interface (`/v1/realtime?model=...`, `Bearer` key).
    OpenAi,
    /// Deepgram Voice Agent v1 (`/v1/agent/converse`, `Token` key).
    Deepgram,
    /// The reference engine's `local-ai-server` (any path, optional `auth` message).
    Local,
}

impl SimProtocol {
    /// `openai`, `deepgram` or `local` (logs, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            SimProtocol::OpenAi => "openai",
            SimProtocol::Deepgram => "deepgram",
            SimProtocol::Local => "local",
        }
    }
}

impl std::str::FromStr for SimProtocol {
    type Err = String;

    /// `openai` (or `openai_realtime`), `deepgram`, `local`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" | "openai_realtime" => Ok(SimProtocol::OpenAi),
            "deepgram" => Ok(SimProtocol::Deepgram),
            "local" => Ok(SimProtocol::Local),
            other => Err(format!(
                "unknown simulated provider `{other}` (openai, deepgram, local)"
            )),
        }
    }
}

/// A fault the simulator injects into every session opened while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Drop the TCP connection in the middle of the first reply, without a close
    /// frame.
    CloseMidResponse,
    /// Stop sending anything (events, audio, pongs of our own), keep the socket open
    /// and keep reading what the client sends.
    Stall,
    /// Send one text frame that is not JSON, then go on.
    MalformedJson,
    /// Send one 8 MiB text message (valid JSON of the protocol's shape), then go on.
    Oversize,
    /// Send the protocol's error event. `fatal`: the kind a real service closes the
    /// connection after (OpenAI `session_expired`, Deepgram `Error`, local `error`),
    /// and close; otherwise a non-fatal error (OpenAI `server_error`, Deepgram
    /// `Warning`) and go on.
    ErrorEvent {
        /// Close the session after the error.
        fatal: bool,
    },
    /// Stop reading the socket, so the client's writes back up.
    SlowRead,
    /// Start a text message that never completes: the header of a 1 MiB frame
    /// and a few bytes of it, then nothing more (the socket stays open and is
    /// still read). Timed like the reply faults.
    EndlessMessage,
}

impl Fault {
    /// Whether the fault is timed from the connection's start (`Stall`,
    /// `SlowRead`) rather than from the start of the first reply.
    pub fn from_connect(self) -> bool {
        matches!(self, Fault::Stall | Fault::SlowRead)
    }
}

impl Fault {
    /// The CLI name: `close_mid_response`, `stall`, `malformed_json`, `oversize`,
    /// `error`, `fatal_error`, `slow_read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::CloseMidResponse => "close_mid_response",
            Fault::Stall => "stall",
            Fault::MalformedJson => "malformed_json",
            Fault::Oversize => "oversize",
            Fault::ErrorEvent { fatal: false } => "error",
            Fault::ErrorEvent { fatal: true } => "fatal_error",
            Fault::SlowRead => "slow_read",
            Fault::EndlessMessage => "endless_message",
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// The names of [`Fault::as_str`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Fault::CloseMidResponse,
            Fault::Stall,
            Fault::MalformedJson,
            Fault::Oversize,
            Fault::ErrorEvent { fatal: false },
            Fault::ErrorEvent { fatal: true },
            Fault::SlowRead,
            Fault::EndlessMessage,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| {
            format!("unknown fault `{s}` (close_mid_response, stall, malformed_json, oversize, error, fatal_error, slow_read, endless_message)")
        })
    }
}

/// Configuration of a [`ProviderSim`]. `Default` is an OpenAI simulator on
/// `127.0.0.1:0` accepting any key; [`ProviderSimConfig::for_protocol`] sets
/// realistic chunk sizes per protocol. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSimConfig {
    /// The protocol spoken.
    pub protocol: SimProtocol,
    /// Address to listen on (`127.0.0.1:0` for tests: any free port).
    pub listen: SocketAddr,
    /// Expected credential (`Bearer` for OpenAI, `Token` for Deepgram, the
    /// `auth_token` of local's `auth` message); `None` accepts any.
    pub api_key: Option<String>,
    /// End of the caller's turn to the first reply audio (ms).
    pub think_ms: u32,
    /// Length of each reply (ms of audio).
    pub reply_ms: u32,
    /// Audio per delta (OpenAI) or binary message (Deepgram), ms. Realistic: OpenAI
    /// 100-200 ms, Deepgram 20-100 ms. The local server sends each reply as one
    /// binary message, like the reference, whatever this says.
    pub chunk_ms: u32,
    /// Time between chunks (ms): faster than real time, like the real services.
    pub burst_interval_ms: u32,
    /// Length of a greeting (ms): OpenAI `response.create` before any caller turn,
    /// Deepgram `agent.greeting`, local `tts_request`. 0 uses `reply_ms`.
    pub greeting_ms: u32,
    /// Fault injected in every session opened while set (see
    /// [`ProviderSim::set_fault`]).
    pub fault: Option<Fault>,
    /// When the fault fires: this long into the first reply, or after connect for
    /// `Stall` and `SlowRead` (ms).
    pub fault_after_ms: u32,
    /// Seed of the reply synthesizer and the ids (each connection mixes in its
    /// number, so connections differ but a run is repeatable).
    pub seed: u64,
    /// Deepgram closes a session that sent neither audio nor any message (e.g.
    /// `KeepAlive`) for this long (ms), with `Error CLIENT_MESSAGE_TIMEOUT`; the
    /// real service uses 10 s. 0 disables. Other protocols ignore it.
    pub idle_close_ms: u32,
}

impl std::fmt::Debug for ProviderSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSimConfig")
            .field("protocol", &self.protocol)
            .field("listen", &self.listen)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("think_ms", &self.think_ms)
            .field("reply_ms", &self.reply_ms)
            .field("chunk_ms", &self.chunk_ms)
            .field("burst_interval_ms", &self.burst_interval_ms)
            .field("greeting_ms", &self.greeting_ms)
            .field("fault", &self.fault)
            .field("fault_after_ms", &self.fault_after_ms)
            .field("seed", &self.seed)
            .field("idle_close_ms", &self.idle_close_ms)
            .finish()
    }
}

impl Default for ProviderSimConfig {
    fn default() -> Self {
        ProviderSimConfig::for_protocol(SimProtocol::OpenAi)
    }
}

impl ProviderSimConfig {
    /// Defaults for `protocol`: loopback, any key, 300 ms think, 1.5 s replies,
    /// 1.2 s greetings, chunks of 160 ms (OpenAI) or 80 ms (Deepgram) every 40 ms,
    /// no fault, Deepgram idle close after 10 s.
    pub fn for_protocol(protocol: SimProtocol) -> Self {
        ProviderSimConfig {
            protocol,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: None,
            think_ms: 300,
            reply_ms: 1500,
            chunk_ms: match protocol {
                SimProtocol::Deepgram => 80,
                _ => 160,
            },
            burst_interval_ms: 40,
            greeting_ms: 1200,
            fault: None,
            fault_after_ms: 200,
            seed: 0x5EED_5133,
            idle_close_ms: 10_000,
        }
    }
}

/// Counters and findings of a simulator, summed over its connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStatsSnapshot {
    /// TCP connections accepted (handshakes refused with 401/404 included); their
    /// 1-based accept order is the `N` of `conn N` in violations.
    pub connections: u64,
    /// WebSocket sessions open now.
    pub active: u64,
    /// Handshakes (or local `auth` messages) refused for a wrong or missing key.
    pub auth_failures: u64,
    /// Client messages by type (`binary` for binary audio frames, `<invalid>` for
    /// text that is not a JSON object with a `type`, `<other>` once 64 distinct
    /// types have been seen).
    pub messages_in: BTreeMap<String, u64>,
    /// Caller audio received, in wire-codec bytes (after base64 decoding).
    pub audio_bytes_in: u64,
    /// Agent audio sent, in wire-codec bytes (before base64 encoding).
    pub audio_bytes_out: u64,
    /// Caller utterances long enough to be a turn (committed by server VAD, a
    /// manual commit, or an STT final).
    pub turns: u64,
    /// Replies cut because the caller talked over them (server-side barge-in).
    pub barge_ins: u64,
    /// OpenAI `conversation.item.truncate` requests accepted.
    pub truncates: u64,
    /// Every protocol error a client made, as `conn N: what`; tests assert this is
    /// empty. At most 256 lines of at most 512 bytes are kept; a last line says how
    /// many more were seen.
    pub violations: Vec<String>,
    /// Per WebSocket session (the first 1024, in accept order), the types of the
    /// first 8 messages the client sent, e.g. `["session.update",
    /// "input_audio_buffer.append", ..]`.
    pub openings: Vec<Vec<String>>,
    /// Faults that fired.
    pub faults_injected: u64,
}

/// A running simulator: a WebSocket server on its own tokio tasks.
#[derive(Debug)]
pub struct ProviderSim {
    addr: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProviderSim {
    /// Bind `cfg.listen` and start serving `cfg.protocol` (on the current tokio
    /// runtime). Fails only when the address cannot be bound.
    pub async fn start(cfg: ProviderSimConfig) -> std::io::Result<ProviderSim> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let url = match cfg.protocol {
            SimProtocol::OpenAi => format!("ws://{addr}{}", openai::PATH),
            SimProtocol::Deepgram => format!("ws://{addr}{}", deepgram::PATH),
            SimProtocol::Local => format!("ws://{addr}"),
        };
        let shared = Arc::new(Shared::new(cfg, addr));
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(common::serve(listener, shared.clone(), rx));
        tracing::debug!(%addr, protocol = shared.cfg.protocol.as_str(), "provider simulator started");
        Ok(ProviderSim {
            addr,
            url,
            shared,
            shutdown,
            task,
        })
    }

    /// What a client's `base_url` should be: `ws://127.0.0.1:PORT/v1/realtime`
    /// (OpenAI; the client adds `?model=...`), `ws://127.0.0.1:PORT/v1/agent/converse`
    /// (Deepgram), `ws://127.0.0.1:PORT` (local).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStatsSnapshot {
        self.shared.snapshot()
    }

    /// The fault injected into sessions opened from now on (`None`: no fault).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.set_fault(fault);
    }

    /// Stop accepting, close every session (a close frame where the socket still
    /// takes one), wait for the tasks (sessions that do not finish within 2 s are
    /// aborted), and return the final counters.
    pub async fn stop(self) -> SimStatsSnapshot {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "provider simulator task failed");
        }
        self.shared.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [
            SimProtocol::OpenAi,
            SimProtocol::Deepgram,
            SimProtocol::Local,
        ] {
            assert_eq!(p.as_str().parse::<SimProtocol>(), Ok(p));
        }
        assert_eq!(
            "openai_realtime".parse::<SimProtocol>(),
            Ok(SimProtocol::OpenAi)
        );
        assert!("sim".parse::<SimProtocol>().is_err());
        for f in [
            Fault::CloseMidResponse,
            Fault::Stall,
            Fault::MalformedJson,
            Fault::Oversize,
            Fault::ErrorEvent { fatal: false },
            Fault::ErrorEvent { fatal: true },
            Fault::SlowRead,
            Fault::EndlessMessage,
        ] {
            assert_eq!(f.as_str().parse::<Fault>(), Ok(f));
        }
        assert!("boom".parse::<Fault>().is_err());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let cfg = ProviderSimConfig {
            api_key: Some("sk-very-secret".into()),
            ..ProviderSimConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("sk-very-secret") && dbg.contains("redacted"),
            "{dbg}"
        );
    }
}
