//! Starting and stopping the engine: sockets, shard threads, their dispatchers.
//!
//! Owns: turning the configuration into shards (how many, pinned where, which
//! backend, which sockets), spawning each shard's thread and its dispatcher task on
//! the control runtime, and the orderly stop (shards end their calls, then exit).
//!
//! Must not: run media itself (the shards do), or read configuration files.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;

use super::allow::AllowList;
use super::bridge;
use super::control::{self, ControlStats, Peers};
use super::io::{self, BackendChoice, BackendKind};
use super::lifecycle::Lifecycle;
use super::shard::{Shard, ShardSpec, ShardStats};
use crate::call::{CallConfig, Codec};
use crate::config::{AudioSocketFormat, Config, IoBackend, RtpCodec};
use crate::media::playout::PlayoutConfig;
use crate::media::vad::VadConfig;
use crate::media::Rate;
use crate::provider::Registry;

/// Ring capacity per direction per shard (messages) for a shard that may carry
/// `calls`: four messages per call (a 20 ms frame each way plus playout credit,
/// with room for a burst), a power of two from 1,024 to 8,192. A slot is ~1 KiB
/// and the kernel maps it on first use, so an oversized ring costs resident memory
/// once the ring has wrapped: 8,192 slots are 16 MiB per shard for both directions.
fn bridge_capacity(calls: usize) -> usize {
    calls
        .saturating_mul(4)
        .next_power_of_two()
        .clamp(1024, 8192)
}
/// Agent audio allowed unplayed in a shard, as a share of the playout capacity.
const CREDIT_SHARE: f64 = 0.8;

/// Why the engine could not start (configuration or environment faults).
#[derive(Debug, Error)]
pub enum EngineError {
    /// A listen address does not resolve.
    #[error("cannot resolve {what} address `{addr}`")]
    Resolve {
        /// Which listener.
        what: &'static str,
        /// The address as configured.
        addr: String,
    },
    /// Binding a socket failed (port in use, no permission, ...).
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process already listens there. Checked before the shards' sockets
    /// are bound, because SO_REUSEPORT would otherwise let a second voxd (of the same
    /// user) silently share the port and take half of the calls.
    #[error("{what} {addr} is already in use by another process (a second voxd? stop it or choose another port)")]
    InUse {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The I/O backend could not be opened.
    #[error("I/O backend: {0}")]
    Backend(std::io::Error),
    /// A bridge or thread could not be created.
    #[error("engine start-up: {0}")]
    Setup(std::io::Error),
    /// An allowlist entry does not parse (the config loader should have caught it).
    #[error("allowed_remote_hosts entry `{0}` is not an IP or CIDR")]
    Allow(String),
    /// The default provider cannot be used.
    #[error("provider: {0}")]
    Provider(#[from] crate::provider::ProviderError),
}

/// A running engine.
pub struct Engine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<ShardStats>>>,
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
    /// Where AudioSocket listens (the real port when 0 was configured).
    pub audiosocket_addr: SocketAddr,
    /// Where RTP listens.
    pub rtp_addr: SocketAddr,
    /// The I/O backend in use.
    pub backend: BackendKind,
    /// Why io_uring was not used, when `auto` fell back.
    pub backend_note: Option<String>,
    /// Number of shards.
    pub shards: usize,
    /// Control-side counters.
    pub control_stats: Arc<ControlStats>,
    /// Reaches each shard's dispatcher (hang up a call, DTMF, bind a session).
    pub peers: Arc<Peers>,
    /// Draining flag and shard heartbeats.
    pub lifecycle: Arc<Lifecycle>,
    /// Each shard's published counters (for `/metrics` and `/health`).
    pub published: Arc<super::published::Published>,
    /// Providers and failure policy for new calls (a reload swaps them).
    pub live: control::LiveHandle,
    /// The audit log's counters, when `logging.audit_path` is set.
    pub audit: Option<Arc<crate::ops::audit::AuditStats>>,
}

fn resolve(what: &'static str, host: &str, port: u16) -> Result<SocketAddr, EngineError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| EngineError::Resolve {
            what,
            addr: format!("{host}:{port}"),
        })
}

/// The call codec of AudioSocket connections for `audiosocket.format`.
pub fn audiosocket_codec(f: AudioSocketFormat) -> Codec {
    match f {
        AudioSocketFormat::Ulaw => Codec::Pcmu,
        other => Codec::Slin(Rate::from_hz(other.sample_rate_hz()).unwrap_or(Rate::Hz8000)),
    }
}

/// The call codec of RTP calls for `external_media.codec`.
pub fn rtp_codec(c: RtpCodec) -> Codec {
    match c {
        RtpCodec::Ulaw => Codec::Pcmu,
        RtpCodec::Alaw => Codec::Pcma,
    }
}

/// Per-call media settings from the configuration.
pub fn call_template(cfg: &Config) -> CallConfig {
    let s = &cfg.streaming;
    let b = &cfg.barge_in;
    CallConfig {
        caller: Codec::Pcmu,
        provider: Codec::Pcmu,
        provider_out: Codec::Pcmu,
        playout: PlayoutConfig {
            jitter_buffer_ms: s.jitter_buffer_ms,
            min_start_ms: s.min_start_ms,
            low_watermark_ms: s.low_watermark_ms,
            provider_grace_ms: s.provider_grace_ms,
        },
        vad: VadConfig {
            enabled: b.enabled,
            min_ms: b.min_ms,
            energy_threshold: b.energy_threshold.min(u32::from(u16::MAX)) as u16,
            cooldown_ms: b.cooldown_ms,
            initial_protection_ms: b.initial_protection_ms,
            post_tts_end_protection_ms: b.post_tts_end_protection_ms,
        },
        jitter_depth_ms: cfg.external_media.jitter_depth_ms,
    }
}

/// How many shards: `engine.shards`, or one per CPU this process may run on.
pub fn shard_count(cfg: &Config) -> usize {
    if cfg.engine.shards > 0 {
        return cfg.engine.shards as usize;
    }
    core_affinity::get_core_ids()
        .map(|c| c.len())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Bind `n` SO_REUSEPORT copies of a listener; a configured port 0 becomes the port
/// the first bind got, so every shard shares it. `exclusive` first binds the address
/// once without SO_REUSEPORT and lets it go: that fails if any other socket holds
/// the port, so a second voxd refuses to start instead of sharing the calls.
fn bind_all<T>(
    what: &'static str,
    addr: SocketAddr,
    n: usize,
    exclusive: impl Fn(SocketAddr) -> std::io::Result<()>,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
    local: impl Fn(&T) -> std::io::Result<SocketAddr>,
) -> Result<(Vec<T>, SocketAddr), EngineError> {
    if addr.port() != 0 {
        match exclusive(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(EngineError::InUse { what, addr });
            }
            Err(source) => return Err(EngineError::Bind { what, addr, source }),
            Ok(()) => {}
        }
    }
    let first = bind(addr).map_err(|source| EngineError::Bind { what, addr, source })?;
    let real = local(&first).map_err(EngineError::Setup)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(real).map_err(|source| EngineError::Bind {
            what,
            addr: real,
            source,
        })?);
    }
    Ok((all, real))
}

impl Engine {
    /// Bind every socket, start the shards (pinned, one per core where possible) and
    /// their dispatchers on the current tokio runtime. Call from inside the runtime.
    pub fn start(cfg: &Config, registry: Arc<Registry>) -> Result<Engine, EngineError> {
        Engine::start_with(cfg, registry, None)
    }

    /// [`Engine::start`] in ARI mode: media sessions start their agent only when the
    /// ARI call flow originated them (see [`control::AriMode`]).
    pub fn start_with(
        cfg: &Config,
        registry: Arc<Registry>,
        ari: Option<control::AriMode>,
    ) -> Result<Engine, EngineError> {
        if let Err(e) = io::disable_huge_pages() {
            tracing::debug!(error = %e, "transparent huge pages stay on (prctl refused)");
        }
        let n = shard_count(cfg);
        let as_addr = resolve("audiosocket", &cfg.audiosocket.host, cfg.audiosocket.port)?;
        let rtp_addr = resolve(
            "external_media RTP",
            &cfg.external_media.rtp_host,
            cfg.external_media.rtp_port,
        )?;
        let (listeners, as_real) = bind_all(
            "AudioSocket",
            as_addr,
            n,
            |a| TcpListener::bind(a).map(drop),
            |a| io::tcp_listener_reuseport(a, 1024),
            TcpListener::local_addr,
        )?;
        let (udps, rtp_real) = bind_all(
            "RTP",
            rtp_addr,
            n,
            |a| UdpSocket::bind(a).map(drop),
            io::udp_socket_reuseport,
            UdpSocket::local_addr,
        )?;

        let as_codec = audiosocket_codec(cfg.audiosocket.format);
        let rtp_c = rtp_codec(cfg.external_media.codec);
        let provider = registry.default_provider()?;
        let spec = ShardSpec {
            index: 0,
            max_calls: (cfg.limits.max_calls as usize).div_ceil(n).max(1),
            audiosocket_codec: as_codec,
            max_frame_bytes: cfg.audiosocket.max_frame_bytes as usize,
            audiosocket_read_timeout_ms: u64::from(cfg.audiosocket.read_timeout_ms),
            audiosocket_allow: AllowList::parse(&cfg.audiosocket.allowed_remote_hosts)
                .map_err(EngineError::Allow)?,
            rtp_codec: rtp_c,
            rtp_allow: AllowList::parse(&cfg.external_media.allowed_remote_hosts)
                .map_err(EngineError::Allow)?,
            rtp_idle_timeout_ms: u64::from(cfg.external_media.idle_timeout_ms),
            rtp_max_pps: cfg.external_media.max_packets_per_second,
            audiosocket_provider_codec: provider.formats(as_codec).input,
            rtp_provider_codec: provider.formats(rtp_c).input,
            call_template: call_template(cfg),
            tick_ms: cfg.engine.tick_ms,
        };
        let choice = match cfg.engine.io_backend {
            IoBackend::Auto => BackendChoice::Auto,
            IoBackend::IoUring => BackendChoice::IoUring,
            IoBackend::Epoll => BackendChoice::Epoll,
        };
        let credit_ms = (f64::from(cfg.streaming.jitter_buffer_ms) * CREDIT_SHARE) as u32;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let stop = Arc::new(AtomicBool::new(false));
        let lifecycle = Arc::new(Lifecycle::new(n, super::io::monotonic_ms()));
        let audit = match &cfg.logging.audit_path {
            None => None,
            Some(p) => Some(
                crate::ops::audit::AuditLog::open(std::path::Path::new(p)).map_err(|e| {
                    EngineError::Setup(std::io::Error::new(
                        e.kind(),
                        format!("logging.audit_path {p}: {e}"),
                    ))
                })?,
            ),
        };
        let live = control::LiveHandle::new(control::LiveSettings {
            registry: registry.clone(),
            policy: cfg.provider_failure.clone(),
        });
        let published = super::published::Published::new(n);
        let control_stats = Arc::new(ControlStats::with_shards(n));
        let mut threads = Vec::with_capacity(n);
        let mut dispatchers = Vec::with_capacity(n);
        let mut backend_kind = BackendKind::Epoll;
        let mut backend_note = None;
        let (peers, cmd_rxs) = Peers::new(n);
        let mut cmd_rxs = cmd_rxs.into_iter();
        for (i, (listener, udp)) in listeners.into_iter().zip(udps).enumerate() {
            let (backend, note) = io::open(choice).map_err(EngineError::Backend)?;
            backend_kind = super::io::Backend::kind(&backend);
            backend_note = backend_note.or(note);
            let (shard_end, control_end) = bridge::link(i as u16, bridge_capacity(spec.max_calls))
                .map_err(EngineError::Setup)?;
            let spec = ShardSpec {
                index: i as u16,
                ..spec.clone()
            };
            let mut shard = Shard::new(spec, backend, Some(listener), Some(udp), shard_end)
                .map_err(EngineError::Setup)?;
            let core = cores.get(i % cores.len().max(1)).copied();
            let stop_t = stop.clone();
            let life_t = lifecycle.clone();
            let pub_t = published.clone();
            let t = std::thread::Builder::new()
                .name(format!("voxd-shard-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    shard.run(&stop_t, &life_t, &pub_t)
                })
                .map_err(EngineError::Setup)?;
            threads.push(t);
            let Some(cmds) = cmd_rxs.next() else {
                return Err(EngineError::Setup(std::io::Error::other(
                    "command channel missing",
                )));
            };
            dispatchers.push(tokio::spawn(control::run(
                control_end,
                live.clone(),
                credit_ms,
                control_stats.clone(),
                peers.clone(),
                cmds,
                ari.clone(),
                control::DispatchSettings {
                    pii: cfg.logging.pii,
                    audit: audit.clone(),
                },
            )));
        }
        Ok(Engine {
            stop,
            threads,
            dispatchers,
            audiosocket_addr: as_real,
            rtp_addr: rtp_real,
            backend: backend_kind,
            backend_note,
            shards: n,
            control_stats,
            peers,
            lifecycle,
            published,
            live,
            audit: audit.map(|a| a.stats),
        })
    }

    /// Reload: new calls use these providers, failure policy and media settings
    /// (`barge_in`, `streaming`); calls already up keep theirs.
    pub fn reload(&self, cfg: &Config, registry: Arc<Registry>) {
        self.live.replace(control::LiveSettings {
            registry,
            policy: cfg.provider_failure.clone(),
        });
        self.peers.broadcast_template(call_template(cfg));
    }

    /// Calls with an agent session now (all shards).
    pub fn active_calls(&self) -> u64 {
        let c = &self.control_stats;
        c.sessions_started
            .load(Ordering::Relaxed)
            .saturating_sub(c.sessions_ended.load(Ordering::Relaxed))
    }

    /// Stop: every shard ends its calls (`Shutdown`) and exits; then the dispatchers
    /// finish. Returns the shards' counters.
    pub async fn stop(self) -> Vec<ShardStats> {
        self.stop.store(true, Ordering::Relaxed);
        let threads = self.threads;
        let stats = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .filter_map(|t| t.join().ok().and_then(|r| r.ok()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for d in self.dispatchers {
            let _ = d.await;
        }
        stats
    }
}

#[cfg(test)]
mod bridge_capacity_tests {
    use super::bridge_capacity;

    #[test]
    fn rings_scale_with_the_calls_a_shard_may_carry() {
        assert_eq!(bridge_capacity(0), 1024);
        assert_eq!(bridge_capacity(250), 1024, "16 shards, 4,000 calls");
        assert_eq!(bridge_capacity(500), 2048);
        assert_eq!(bridge_capacity(2000), 8192, "2 shards, 4,000 calls");
        assert_eq!(bridge_capacity(100_000), 8192);
    }
}
