//! The control runtime's side of one shard: starts a provider session per call and
//! moves events between the shard's bridge and the sessions.
//!
//! Owns: the `ControlEnd` of one shard's bridge (a single owner, as rtrb requires),
//! the per-call session handles, and the agent-audio flow control: agent audio goes
//! to the shard only while less than `credit_ms` of it is unplayed there (the shard
//! returns credit with `Played`); the rest waits here, in order, so nothing is lost
//! and the shard's playout never overflows.
//!
//! With ARI on ([`AriMode`]), a media session starts its agent only when the call
//! flow originated it ([`super::bind`]): the binding names the provider, and the
//! session's life is reported back to the flow. Unknown AudioSocket UUIDs are
//! refused (unless `audiosocket.accept_unoriginated`); an RTP source nobody expects
//! yet is parked for [`PARK_MS`] in case the ARI response trails its first packet.
//!
//! Must not: touch media sockets, block the runtime (every channel is bounded and
//! used with `try_send`), or lose a control message: when the shard's ring is full,
//! hang-ups and speech-started wait in order and agent audio resumes on the next
//! loop turn (counted in `shard_ring_full`).

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::bind::{AgentAction, Binding, Bindings, Claim, MediaEvent, MediaKey};
use super::bridge::{
    AudioChunk, BridgeError, CallInfo, CallKey, ControlEnd, EndReason, ToControl, ToShard,
    Transport, CHUNK_BYTES,
};
use crate::call::Codec;
use crate::config::{OnProviderFailure, ProviderFailureConfig};
use crate::media::slab::FrameSlab;
use crate::provider::{
    AgentEvent, CallerEvent, Fault, Provider, ProviderError, Registry, Role, SessionEnd, SessionIo,
    SessionMeta, EVENTS_CAPACITY, OUT_CAPACITY,
};

/// Counters of the control side (shared with whoever reports them).
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Calls with a session that ended (`sessions_started - sessions_ended` calls
    /// are up).
    pub sessions_ended: AtomicU64,
    /// Sessions that could not start (provider error).
    pub sessions_failed: AtomicU64,
    /// Caller audio chunks dropped because a session was not keeping up.
    pub caller_audio_dropped: AtomicU64,
    /// Media sessions refused because voxd did not originate them (ARI on).
    pub media_refused: AtomicU64,
    /// Messages to a shard that waited because its ring was full (retried in order,
    /// never dropped).
    pub shard_ring_full: AtomicU64,
    /// Provider sessions that ended with an error mid-call.
    pub provider_failures: AtomicU64,
    /// Fast reconnects after a provider failure (`provider_failure.reconnect`).
    pub provider_reconnects: AtomicU64,
    /// Calls handed to the `on_provider_failure` policy.
    pub failure_policy_applied: AtomicU64,
    /// Barge-ins (local and provider-driven) passed to sessions.
    pub barge_ins: AtomicU64,
    /// Calls ended, by [`EndReason`] (index of `EndReason::ALL`).
    pub ends_by_reason: [AtomicU64; 8],
    /// Call durations (of calls with a session), ms per [`DURATION_BUCKETS_MS`].
    pub call_duration: Mutex<crate::call::MsHistogram<9>>,
    /// Provider errors by (provider, kind): fatal ones that ended a session and
    /// non-fatal ones the provider reported.
    pub provider_errors: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// The calls up now, for `GET /sessions` (updated at call start and end only).
    pub sessions: Mutex<HashMap<CallKey, SessionInfo>>,
    /// "Caller frame received -> bytes written to the provider", one stage per
    /// shard (index = shard), recorded by the provider sessions. Empty: not
    /// measured (tests that build stats by hand).
    pub caller_to_provider: Vec<Arc<crate::ops::latency::Stage>>,
}

/// One call as `GET /sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Provider serving it.
    pub provider: &'static str,
    /// `AI_AGENT`, if any.
    pub agent: Option<String>,
    /// `AudioSocket` or `Rtp`.
    pub transport: &'static str,
    /// The ARI caller channel, when ARI controls the call.
    pub caller_channel: Option<String>,
    /// Asterisk's address for the call.
    pub remote: std::net::SocketAddr,
    /// When it started.
    pub started: Instant,
}

/// Upper bounds (ms) of the call duration buckets.
pub const DURATION_BUCKETS_MS: [u64; 8] = [
    5_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000,
];

impl ControlStats {
    /// Stats for `shards` shards (one latency stage each).
    pub fn with_shards(shards: usize) -> ControlStats {
        ControlStats {
            caller_to_provider: (0..shards).map(|_| Arc::default()).collect(),
            ..ControlStats::default()
        }
    }

    fn provider_error(&self, provider: &'static str, kind: &'static str) {
        let mut m = self
            .provider_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry((provider, kind)).or_insert(0) += 1;
    }
}

/// Per-dispatcher settings from the configuration that only a restart changes.
#[derive(Debug, Clone, Default)]
pub struct DispatchSettings {
    /// `logging.pii`.
    pub pii: bool,
    /// `logging.audit_path`, opened.
    pub audit: Option<crate::ops::audit::AuditLog>,
}

/// What a reload (SIGHUP, `POST /reload`) can change for calls that start from now
/// on: the providers (and agents) and the failure policy. Read once per call
/// start, never per frame.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Providers for new calls.
    pub registry: Arc<Registry>,
    /// `provider_failure` for calls that fail from now on.
    pub policy: ProviderFailureConfig,
}

/// The dispatchers' shared [`LiveSettings`], swapped whole by a reload.
#[derive(Debug, Clone)]
pub struct LiveHandle(Arc<std::sync::RwLock<Arc<LiveSettings>>>);

impl LiveHandle {
    /// A handle on `settings`.
    pub fn new(settings: LiveSettings) -> LiveHandle {
        LiveHandle(Arc::new(std::sync::RwLock::new(Arc::new(settings))))
    }

    /// The settings now.
    pub fn get(&self) -> Arc<LiveSettings> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the settings (calls already up keep their provider session).
    pub fn replace(&self, settings: LiveSettings) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }
}

/// A peer address in a log line: shown only with `logging.pii: true`.
struct Redacted(std::net::SocketAddr, bool);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 {
            write!(f, "{}", self.0)
        } else {
            f.write_str("[redacted]")
        }
    }
}

/// Transcript kept per call for a reconnecting session, at most (bytes of text;
/// the oldest lines go first).
const HISTORY_BYTES: usize = 16 * 1024;

/// What a session's forwarding task tells the dispatcher.
#[derive(Debug)]
enum SessionMsg {
    /// An agent event of the session.
    Event(AgentEvent),
    /// The session (of the given attempt) returned.
    Ended {
        /// [`SessionMeta::attempt`] of the session that ended.
        attempt: u32,
        /// How it ended.
        end: SessionEnd,
    },
}

/// How long an RTP session nobody expects waits for the ARI response that names
/// its source before it is refused.
pub const PARK_MS: u64 = 2_000;

/// ARI mode of the dispatchers.
#[derive(Debug, Clone)]
pub struct AriMode {
    /// The media sessions the call flow originated.
    pub bindings: Arc<Bindings>,
    /// Accept AudioSocket sessions voxd did not originate (dialplan `AudioSocket()`
    /// beside ARI calls), with the default provider.
    pub accept_unoriginated: bool,
}

/// Commands to a shard's dispatcher from elsewhere on the control runtime (another
/// dispatcher, the ARI call flow). Rare (call control, not audio), so the ~1 KiB
/// `Shard` variant is not boxed: it is a hang-up in practice.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ControlCmd {
    /// Pass a message to the shard.
    Shard(ToShard),
    /// A parked RTP session turned out to be this binding's: start its agent.
    Bind {
        /// The shard's call.
        call: CallKey,
        /// The session's key (to re-register the binding if the parked call
        /// ended meanwhile).
        key: MediaKey,
        /// Its binding.
        binding: Binding,
    },
    /// Media settings for calls that start from now on (reload).
    Template(crate::call::CallConfig),
    /// DTMF from ARI (`ChannelDtmfReceived`) for the call's agent.
    Dtmf {
        /// The call.
        call: CallKey,
        /// The digit.
        digit: char,
    },
}

enum Pending {
    Audio(Bytes),
    Done,
}

/// What the dispatchers of all shards share: which call holds each AudioSocket
/// UUID (a reconnect with the same UUID may land on another shard), and a way to
/// reach another shard's dispatcher. Control-runtime only; shards never lock.
#[derive(Debug, Default)]
pub struct Peers {
    uuids: Mutex<HashMap<[u8; 16], CallKey>>,
    cmds: Vec<mpsc::Sender<ControlCmd>>,
}

impl Peers {
    /// Shared state for `n` shards, and each dispatcher's command receiver.
    pub fn new(n: usize) -> (Arc<Peers>, Vec<mpsc::Receiver<ControlCmd>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(1024)).unzip();
        (
            Arc::new(Peers {
                uuids: Mutex::new(HashMap::new()),
                cmds: txs,
            }),
            rxs,
        )
    }

    /// Record that `call` now holds `uuid`; returns the call it replaces, if any.
    fn claim(&self, uuid: [u8; 16], call: CallKey) -> Option<CallKey> {
        let mut map = self.uuids.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(uuid, call).filter(|&old| old != call)
    }

    /// Forget `uuid` if `call` still holds it.
    fn release(&self, uuid: [u8; 16], call: CallKey) {
        let mut map = self.uuids.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&uuid) == Some(&call) {
            map.remove(&uuid);
        }
    }

    /// Tell every shard the media settings for its next calls (reload).
    pub fn broadcast_template(&self, template: crate::call::CallConfig) {
        for tx in &self.cmds {
            if tx.try_send(ControlCmd::Template(template)).is_err() {
                tracing::warn!("dispatcher command queue full or closed; new media settings not delivered to one shard");
            }
        }
    }

    /// Ask the dispatcher of `call`'s shard to hang it up.
    pub fn hang_up(&self, call: CallKey, reason: EndReason) {
        self.command(call, ControlCmd::Shard(ToShard::Hangup { call, reason }));
    }

    /// Send a command to the dispatcher of `call`'s shard (dropped, with a log line,
    /// if its queue is full: the dispatcher is gone or badly behind).
    pub fn command(&self, call: CallKey, cmd: ControlCmd) {
        if let Some(tx) = self.cmds.get(usize::from(call.shard())) {
            if tx.try_send(cmd).is_err() {
                tracing::warn!(%call, "dispatcher command queue full or closed; command dropped");
            }
        }
    }
}

/// Bytes of caller audio copied per refill of a session's slab (6 frames of 16 kHz
/// slin; the session consumes each frame at once, so the slab is reused in place).
const CALLER_SLAB_BYTES: usize = 4096;

struct Session {
    events: mpsc::Sender<CallerEvent>,
    /// The provider serving the call (kept for a reconnect).
    provider: Arc<dyn Provider>,
    /// Facts for a new session of the same call.
    caller_codec: Codec,
    agent: Option<String>,
    /// 0, then 1 after the one fast reconnect.
    attempt: u32,
    /// Final transcript lines so far (bounded by [`HISTORY_BYTES`]).
    history: VecDeque<(Role, String)>,
    history_bytes: usize,
    /// The provider failed for good and the policy left the call open: no agent.
    agentless: bool,
    /// Agent utterances completed (for the call's log line).
    turns: u32,
    /// Caller frames become `Bytes` here without an allocation per frame.
    slab: FrameSlab,
    uuid: Option<[u8; 16]>,
    backlog: VecDeque<Pending>,
    /// Agent audio sent to the shard and not yet reported played, in bytes.
    inflight_bytes: usize,
    /// Bytes of provider audio per millisecond (8 for PCMU, 48 for 24 kHz slin).
    bytes_per_ms: usize,
    /// The ARI call this session belongs to (ARI mode).
    binding: Option<Binding>,
}

/// Everything one dispatcher owns.
struct Dispatcher {
    ctrl: ControlEnd,
    live: LiveHandle,
    credit_ms: u32,
    stats: Arc<ControlStats>,
    peers: Arc<Peers>,
    ari: Option<AriMode>,
    sessions: HashMap<CallKey, Session>,
    /// `logging.pii`: log peer addresses in the clear.
    pii: bool,
    /// Call lifecycle records.
    audit: Option<crate::ops::audit::AuditLog>,
    /// RTP sessions waiting for their binding: since when, and their facts.
    parked: HashMap<CallKey, (Instant, CallInfo)>,
    agent_tx: mpsc::Sender<(CallKey, SessionMsg)>,
    /// Control messages for the shard that found its ring full, in order.
    retry: VecDeque<ToShard>,
    /// Calls whose agent audio stopped on a full ring (pumped again next turn).
    stalled: Vec<CallKey>,
}

/// Run the dispatcher of one shard until the shard's bridge closes.
/// `credit_ms` is how much agent audio may sit unplayed in the shard (keep it
/// below `streaming.jitter_buffer_ms`). `ari`: ARI mode (bindings), or `None`
/// for AudioSocket/RTP without ARI (every session gets the default provider).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctrl: ControlEnd,
    live: LiveHandle,
    credit_ms: u32,
    stats: Arc<ControlStats>,
    peers: Arc<Peers>,
    mut cmds: mpsc::Receiver<ControlCmd>,
    ari: Option<AriMode>,
    settings: DispatchSettings,
) {
    let (agent_tx, mut agent_rx) = mpsc::channel::<(CallKey, SessionMsg)>(1024);
    let mut d = Dispatcher {
        ctrl,
        live,
        credit_ms,
        stats,
        peers,
        ari,
        sessions: HashMap::new(),
        pii: settings.pii,
        audit: settings.audit,
        parked: HashMap::new(),
        agent_tx,
        retry: VecDeque::new(),
        stalled: Vec::new(),
    };
    let mut batch = Vec::with_capacity(256);
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = d.ctrl.recv_batch(&mut batch) => {
                match got {
                    Ok(_) => {}
                    Err(BridgeError::Closed(_)) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "bridge receive failed");
                        break;
                    }
                }
                for msg in batch.drain(..) {
                    d.on_shard_message(msg);
                }
            }
            Some(cmd) = cmds.recv() => d.on_command(cmd),
            Some((call, msg)) = agent_rx.recv() => {
                d.on_session_msg(call, msg);
                while let Ok((call, msg)) = agent_rx.try_recv() {
                    d.on_session_msg(call, msg);
                }
            }
            _ = sweep.tick(), if !d.parked.is_empty() || !d.retry.is_empty() || !d.stalled.is_empty() => d.sweep_parked(),
        }
        d.retry_full();
        d.ctrl.notify_shard();
    }
    for (_, s) in d.sessions.drain() {
        d.stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
        let _ = s.events.try_send(CallerEvent::Hangup);
    }
}

impl Dispatcher {
    fn hang_up(&mut self, call: CallKey, reason: EndReason) {
        self.push_control(ToShard::Hangup { call, reason });
    }

    /// A control message (hang-up, speech started) for the shard: never dropped;
    /// if the ring is full it waits, in order, for [`Dispatcher::retry_full`].
    fn push_control(&mut self, msg: ToShard) {
        if !self.retry.is_empty() {
            self.retry.push_back(msg);
            return;
        }
        if let Err(msg) = self.ctrl.push(msg) {
            self.stats.shard_ring_full.fetch_add(1, Ordering::Relaxed);
            self.retry.push_back(msg);
        }
    }

    /// Each loop turn: waiting control messages first, then calls whose audio
    /// stopped on a full ring.
    fn retry_full(&mut self) {
        while let Some(msg) = self.retry.pop_front() {
            if let Err(msg) = self.ctrl.push(msg) {
                self.retry.push_front(msg);
                return;
            }
        }
        if self.stalled.is_empty() {
            return;
        }
        let stalled = std::mem::take(&mut self.stalled);
        for call in stalled {
            if let Some(s) = self.sessions.get_mut(&call) {
                if pump(call, s, &mut self.ctrl, self.credit_ms) == Pumped::RingFull {
                    self.stalled.push(call);
                }
            }
        }
    }

    fn pump_call(&mut self, call: CallKey) {
        let Some(s) = self.sessions.get_mut(&call) else {
            return;
        };
        if pump(call, s, &mut self.ctrl, self.credit_ms) == Pumped::RingFull
            && !self.stalled.contains(&call)
        {
            self.stats.shard_ring_full.fetch_add(1, Ordering::Relaxed);
            self.stalled.push(call);
        }
    }

    fn on_command(&mut self, cmd: ControlCmd) {
        match cmd {
            ControlCmd::Shard(msg) => self.push_control(msg),
            ControlCmd::Bind { call, key, binding } => {
                if let Some((_, info)) = self.parked.remove(&call) {
                    self.start_session(call, info, Some(binding));
                } else if let Some(ari) = &self.ari {
                    // That call ended meanwhile: expect the session again (a
                    // later packet starts a new call, maybe parked already).
                    if let Some((later, binding)) = ari.bindings.expect(key, binding) {
                        self.peers.command(
                            later,
                            ControlCmd::Bind {
                                call: later,
                                key,
                                binding,
                            },
                        );
                    }
                }
            }
            ControlCmd::Template(t) => self.push_control(ToShard::Template(t)),
            ControlCmd::Dtmf { call, digit } => {
                if let Some(s) = self.sessions.get(&call) {
                    let _ = s.events.try_send(CallerEvent::Dtmf(digit));
                }
            }
        }
    }

    /// Refuse RTP sessions that waited longer than [`PARK_MS`] for a binding.
    fn sweep_parked(&mut self) {
        let now = Instant::now();
        let late: Vec<(CallKey, CallInfo)> = self
            .parked
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= Duration::from_millis(PARK_MS))
            .map(|(&k, (_, info))| (k, *info))
            .collect();
        for (call, info) in late {
            self.parked.remove(&call);
            if let Some(ari) = &self.ari {
                ari.bindings.unpark(MediaKey::Rtp(info.remote), call);
            }
            tracing::warn!(%call, "RTP from a source no ARI call expects; refused");
            self.stats.media_refused.fetch_add(1, Ordering::Relaxed);
            self.hang_up(call, EndReason::Refused);
        }
    }

    fn on_shard_message(&mut self, msg: ToControl) {
        match msg {
            ToControl::CallStarted { call, info } => self.on_call_started(call, info),
            ToControl::CallerAudio { call, chunk, at } => {
                if let Some(s) = self.sessions.get_mut(&call).filter(|s| !s.agentless) {
                    let frame = s.slab.copy(chunk.as_slice());
                    if s.events.try_send(CallerEvent::Audio(frame, at)).is_err() {
                        self.stats
                            .caller_audio_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ToControl::Dtmf { call, digit } => {
                if let Some(s) = self.sessions.get(&call) {
                    let _ = s.events.try_send(CallerEvent::Dtmf(digit));
                }
            }
            ToControl::BargeIn {
                call,
                played_ms,
                from_provider,
            } => {
                if let Some(s) = self.sessions.get_mut(&call) {
                    s.backlog.clear();
                    s.inflight_bytes = 0;
                    self.stats.barge_ins.fetch_add(1, Ordering::Relaxed);
                    // After a provider-driven barge-in too: the provider truncates
                    // its item to what the caller heard.
                    let _ = from_provider;
                    let _ = s.events.try_send(CallerEvent::BargeIn { played_ms });
                }
            }
            ToControl::Played { call, ms } => {
                if let Some(s) = self.sessions.get_mut(&call) {
                    s.inflight_bytes = s
                        .inflight_bytes
                        .saturating_sub(ms as usize * s.bytes_per_ms);
                    self.pump_call(call);
                }
            }
            ToControl::CallEnded {
                call,
                reason,
                summary,
            } => {
                if let Some((_, info)) = self.parked.remove(&call) {
                    if let Some(ari) = &self.ari {
                        ari.bindings.unpark(MediaKey::Rtp(info.remote), call);
                    }
                }
                if let Some(i) = EndReason::ALL.iter().position(|r| *r == reason) {
                    self.stats.ends_by_reason[i].fetch_add(1, Ordering::Relaxed);
                }
                if let Some(s) = self.sessions.remove(&call) {
                    if let Ok(mut m) = self.stats.sessions.lock() {
                        m.remove(&call);
                    }
                    self.stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .call_duration
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(&DURATION_BUCKETS_MS, summary.duration_ms);
                    if let Some(a) = &self.audit {
                        a.record(
                            "call_ended",
                            serde_json::json!({
                                "call": call.to_string(),
                                "provider": s.provider.name(),
                                "agent": s.agent,
                                "caller_channel": s.binding.as_ref().map(|b| b.caller.clone()),
                                "reason": reason.as_str(),
                                "duration_ms": summary.duration_ms,
                                "turns": s.turns,
                                "provider_reconnected": s.attempt > 0,
                            }),
                        );
                    }
                    tracing::info!(
                        %call,
                        provider = s.provider.name(),
                        agent = s.agent.as_deref().unwrap_or("-"),
                        reason = reason.as_str(),
                        duration_ms = summary.duration_ms,
                        turns = s.turns,
                        barge_ins = summary.barge_ins,
                        underflows = summary.underflow_events,
                        rtp_received = summary.rtp_received,
                        rtp_lost = summary.rtp_lost,
                        late_ticks = summary.late_ticks,
                        provider_reconnected = s.attempt > 0,
                        "call ended"
                    );
                    let _ = s.events.try_send(CallerEvent::Hangup);
                    if let Some(uuid) = s.uuid {
                        self.peers.release(uuid, call);
                    }
                    if let Some(b) = s.binding {
                        let _ = b.events.try_send(MediaEvent::Down {
                            caller: b.caller.clone(),
                            call,
                            reason,
                        });
                    }
                }
                tracing::debug!(%call, reason = reason.as_str(), "media session ended");
            }
        }
    }

    fn on_call_started(&mut self, call: CallKey, info: CallInfo) {
        let Some(ari) = &self.ari else {
            self.start_session(call, info, None);
            return;
        };
        let (key, may_park) = match (info.uuid, info.transport) {
            (Some(u), _) => (MediaKey::Uuid(u), false),
            (None, Transport::Rtp) => (MediaKey::Rtp(info.remote), true),
            (None, _) => {
                self.hang_up(call, EndReason::ProtocolError);
                return;
            }
        };
        match ari.bindings.claim(key, call, may_park) {
            Claim::Bound(b) => self.start_session(call, info, Some(b)),
            Claim::Parked => {
                self.parked.insert(call, (Instant::now(), info));
            }
            Claim::Unknown if ari.accept_unoriginated && info.uuid.is_some() => {
                self.start_session(call, info, None);
            }
            Claim::Unknown => {
                tracing::warn!(%call, transport = ?info.transport, "media session voxd did not originate (unknown AudioSocket UUID); refused");
                self.stats.media_refused.fetch_add(1, Ordering::Relaxed);
                self.hang_up(call, EndReason::Refused);
            }
        }
    }

    fn start_session(&mut self, call: CallKey, info: CallInfo, binding: Option<Binding>) {
        let requested = binding.as_ref().and_then(|b| b.provider.as_deref());
        let agent = binding.as_ref().and_then(|b| b.agent.clone());
        let provider = match self
            .live
            .get()
            .registry
            .resolve_for(requested, agent.as_deref())
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%call, error = %e, "no provider for the call; hanging up");
                self.stats.sessions_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(b) = &binding {
                    let _ = b.events.try_send(MediaEvent::Down {
                        caller: b.caller.clone(),
                        call,
                        reason: EndReason::AgentHangup,
                    });
                }
                self.hang_up(call, EndReason::AgentHangup);
                return;
            }
        };
        // The provider is chosen per call: tell the shard its codecs first (before
        // any agent audio) when they differ from the shard's default.
        let formats = provider.formats(info.caller_codec);
        if formats.input != info.provider_codec || formats.output != info.provider_codec {
            self.push_control(ToShard::ProviderCodecs {
                call,
                input: formats.input,
                output: formats.output,
            });
        }
        let meta = SessionMeta {
            call_id: call.as_u64(),
            caller_codec: info.caller_codec,
            agent: agent.clone(),
            started_at_ms: 0,
            attempt: 0,
            history: Vec::new(),
        };
        let events = spawn_session(call, &provider, meta, self.agent_tx.clone(), self.latency());
        self.stats.sessions_started.fetch_add(1, Ordering::Relaxed);
        let r = formats.output.rate();
        let bytes_per_ms = r.samples_per_ms() * formats.output.bytes_per_sample();
        if let Some(uuid) = info.uuid {
            if let Some(old) = self.peers.claim(uuid, call) {
                tracing::info!(%call, %old, "same AudioSocket UUID reconnected: replacing the old call");
                self.peers.hang_up(old, EndReason::Replaced);
            }
        }
        if let Some(b) = &binding {
            let _ = b.events.try_send(MediaEvent::Up {
                caller: b.caller.clone(),
                call,
            });
        }
        if let Ok(mut m) = self.stats.sessions.lock() {
            m.insert(
                call,
                SessionInfo {
                    provider: provider.name(),
                    agent: agent.clone(),
                    transport: match info.transport {
                        Transport::AudioSocket => "audiosocket",
                        Transport::Rtp => "rtp",
                    },
                    caller_channel: binding.as_ref().map(|b| b.caller.clone()),
                    remote: info.remote,
                    started: Instant::now(),
                },
            );
        }
        if let Some(a) = &self.audit {
            a.record(
                "call_started",
                serde_json::json!({
                    "call": call.to_string(),
                    "provider": provider.name(),
                    "agent": agent,
                    "caller_channel": binding.as_ref().map(|b| b.caller.clone()),
                    "transport": match info.transport {
                        Transport::AudioSocket => "audiosocket",
                        Transport::Rtp => "rtp",
                    },
                }),
            );
        }
        tracing::info!(
            %call,
            transport = ?info.transport,
            provider = provider.name(),
            agent = agent.as_deref().unwrap_or("-"),
            caller_codec = ?info.caller_codec,
            remote = %Redacted(info.remote, self.pii),
            "call started"
        );
        self.sessions.insert(
            call,
            Session {
                events,
                provider,
                caller_codec: info.caller_codec,
                agent,
                attempt: 0,
                history: VecDeque::new(),
                history_bytes: 0,
                agentless: false,
                turns: 0,
                slab: FrameSlab::new(CALLER_SLAB_BYTES),
                uuid: info.uuid,
                backlog: VecDeque::new(),
                inflight_bytes: 0,
                bytes_per_ms,
                binding,
            },
        );
    }

    /// This shard's "caller frame -> provider write" stage, if measured.
    fn latency(&self) -> Option<Arc<crate::ops::latency::Stage>> {
        self.stats
            .caller_to_provider
            .get(usize::from(self.ctrl.shard()))
            .cloned()
    }

    fn on_session_msg(&mut self, call: CallKey, msg: SessionMsg) {
        match msg {
            SessionMsg::Event(ev) => self.on_agent_event(call, ev),
            SessionMsg::Ended { attempt, end } => self.on_session_end(call, attempt, end),
        }
    }

    /// A session returned. After a caller hang-up the call is gone and this is
    /// ignored; a clean end by the agent ends the call; a failure gets one fast
    /// reconnect (provider faults, `provider_failure.reconnect`), then the policy.
    fn on_session_end(&mut self, call: CallKey, attempt: u32, end: SessionEnd) {
        let reconnect = self.live.get().policy.reconnect;
        let latency = self.latency();
        let Some(s) = self.sessions.get_mut(&call) else {
            return;
        };
        if s.attempt != attempt || s.agentless {
            return;
        }
        let Some(error) = end.error else {
            tracing::info!(%call, reason = end.reason.as_str(), "provider session ended; ending the call");
            self.hang_up(call, EndReason::AgentHangup);
            return;
        };
        self.stats.provider_failures.fetch_add(1, Ordering::Relaxed);
        self.stats.provider_error(s.provider.name(), error.label());
        tracing::warn!(
            %call,
            provider = s.provider.name(),
            attempt,
            fault = error.fault().as_str(),
            kind = error.label(),
            error = %error,
            "provider session failed"
        );
        if reconnect && attempt == 0 && error.fault() == Fault::Provider {
            self.stats
                .provider_reconnects
                .fetch_add(1, Ordering::Relaxed);
            let meta = SessionMeta {
                call_id: call.as_u64(),
                caller_codec: s.caller_codec,
                agent: s.agent.clone(),
                started_at_ms: 0,
                attempt: 1,
                history: s.history.iter().cloned().collect(),
            };
            s.attempt = 1;
            s.events = spawn_session(call, &s.provider, meta, self.agent_tx.clone(), latency);
            tracing::info!(%call, provider = s.provider.name(), "reconnecting the provider once");
            return;
        }
        self.apply_failure_policy(call);
    }

    /// `provider_failure.on_provider_failure` for a call whose provider is gone.
    fn apply_failure_policy(&mut self, call: CallKey) {
        let Some(s) = self.sessions.get_mut(&call) else {
            return;
        };
        s.agentless = true;
        self.stats
            .failure_policy_applied
            .fetch_add(1, Ordering::Relaxed);
        let live = self.live.get();
        let policy = live.policy.on_provider_failure;
        let action = match policy {
            OnProviderFailure::AnnounceHangup => Some(AgentAction::AnnounceHangup {
                media: live.policy.prompt.clone(),
            }),
            OnProviderFailure::DialplanRedirect => Some(AgentAction::Transfer {
                context: live.policy.context.clone(),
                exten: live.policy.extension.clone(),
            }),
            OnProviderFailure::LeaveOpen => None,
        };
        let Some(action) = action else {
            tracing::warn!(%call, "provider failed; leaving the call open without an agent (on_provider_failure: leave_open)");
            return;
        };
        match &s.binding {
            Some(b) => {
                tracing::warn!(%call, ?policy, "provider failed; applying on_provider_failure");
                let _ = b.events.try_send(MediaEvent::Action {
                    caller: b.caller.clone(),
                    action,
                });
            }
            None => {
                tracing::warn!(%call, ?policy, "provider failed and the call has no ARI control (no prompt, no redirect possible); hanging up");
                self.hang_up(call, EndReason::ProviderFailed);
            }
        }
    }

    fn on_agent_event(&mut self, call: CallKey, ev: AgentEvent) {
        let Some(s) = self.sessions.get_mut(&call) else {
            return;
        };
        match ev {
            AgentEvent::Audio(bytes) => {
                s.backlog.push_back(Pending::Audio(bytes));
                self.pump_call(call);
            }
            AgentEvent::AudioDone => {
                s.turns += 1;
                s.backlog.push_back(Pending::Done);
                self.pump_call(call);
            }
            AgentEvent::SpeechStarted => {
                s.backlog.clear();
                s.inflight_bytes = 0;
                let at_ms = super::io::monotonic_ms();
                self.push_control(ToShard::SpeechStarted { call, at_ms });
            }
            AgentEvent::Hangup { reason } => {
                tracing::info!(%call, %reason, "agent ended the call");
                self.push_control(ToShard::Hangup {
                    call,
                    reason: EndReason::AgentHangup,
                });
            }
            AgentEvent::Play { media } => match &s.binding {
                Some(b) => {
                    let _ = b.events.try_send(MediaEvent::Action {
                        caller: b.caller.clone(),
                        action: AgentAction::Play { media },
                    });
                }
                None => {
                    tracing::warn!(%call, "agent asked to play a prompt, but the call has no ARI control; ignored")
                }
            },
            AgentEvent::Transfer { context, exten } => match &s.binding {
                Some(b) => {
                    let _ = b.events.try_send(MediaEvent::Action {
                        caller: b.caller.clone(),
                        action: AgentAction::Transfer { context, exten },
                    });
                }
                None => {
                    tracing::warn!(%call, "agent asked for a transfer, but the call has no ARI control; ignored")
                }
            },
            AgentEvent::Error { error } => {
                self.stats.provider_error(s.provider.name(), error.label());
                tracing::warn!(%call, error = %error, "provider error");
            }
            AgentEvent::Transcript {
                role,
                text,
                is_final: true,
            } => {
                s.history_bytes += text.len();
                s.history.push_back((role, text));
                while s.history_bytes > HISTORY_BYTES {
                    match s.history.pop_front() {
                        Some((_, t)) => s.history_bytes -= t.len(),
                        None => break,
                    }
                }
            }
            AgentEvent::Transcript { .. } | AgentEvent::ResponseDone => {}
        }
    }
}

/// Start one provider session of `call` and the task that forwards its agent
/// events to the dispatcher, then reports how it ended. Returns the sender of
/// caller events into the session.
fn spawn_session(
    call: CallKey,
    provider: &Arc<dyn Provider>,
    meta: SessionMeta,
    tx: mpsc::Sender<(CallKey, SessionMsg)>,
    latency: Option<Arc<crate::ops::latency::Stage>>,
) -> mpsc::Sender<CallerEvent> {
    let (mut io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
    io.latency = latency;
    let attempt = meta.attempt;
    let handle = provider.start(meta, io);
    tokio::spawn(async move {
        while let Some(ev) = peer.out.recv().await {
            if tx.send((call, SessionMsg::Event(ev))).await.is_err() {
                return;
            }
        }
        let end = match handle.await {
            Ok(end) => end,
            Err(e) => SessionEnd::failed(ProviderError::Internal {
                name: "session".into(),
                message: format!("the session task did not finish: {e}"),
            }),
        };
        let _ = tx.send((call, SessionMsg::Ended { attempt, end })).await;
    });
    peer.events
}

/// Why [`pump`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// Backlog empty or credit used up: the next `Played` or agent event pumps again.
    Waiting,
    /// The shard's ring is full: pump again next loop turn.
    RingFull,
}

/// Send backlog to the shard while credit lasts and the ring has room.
fn pump(call: CallKey, s: &mut Session, ctrl: &mut ControlEnd, credit_ms: u32) -> Pumped {
    let credit = credit_ms as usize * s.bytes_per_ms;
    while let Some(front) = s.backlog.front_mut() {
        match front {
            Pending::Done => {
                if ctrl.push(ToShard::AgentAudioDone { call }).is_err() {
                    return Pumped::RingFull;
                }
                s.backlog.pop_front();
            }
            Pending::Audio(bytes) => {
                if s.inflight_bytes >= credit {
                    return Pumped::Waiting;
                }
                let room = credit - s.inflight_bytes;
                let n = bytes.len().min(CHUNK_BYTES).min(room.max(1));
                let Some(chunk) = AudioChunk::from_slice(&bytes[..n]) else {
                    return Pumped::Waiting;
                };
                if ctrl.push(ToShard::AgentAudio { call, chunk }).is_err() {
                    return Pumped::RingFull;
                }
                s.inflight_bytes += n;
                let _ = bytes.split_to(n);
                if bytes.is_empty() {
                    s.backlog.pop_front();
                }
            }
        }
    }
    Pumped::Waiting
}
