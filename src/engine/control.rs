//! The control runtime's side of one shard: starts a provider session per call and
//! moves events between the shard's bridge and the sessions.
//!
//! Owns: the `ControlEnd` of one shard's bridge (a single owner, as rtrb requires),
//! the per-call session handles, and the agent-audio flow control: agent audio goes
//! to the shard only while less than `credit_ms` of it is unplayed there (the shard
//! returns credit with `Played`); the rest waits here, in order, so nothing is lost
//! and the shard's playout never overflows.
//!
//! Must not: touch media sockets, or block the runtime (every channel is bounded and
//! used with `try_send`, failures are counted).

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::bridge::{
    AudioChunk, BridgeError, CallKey, ControlEnd, EndReason, ToControl, ToShard, CHUNK_BYTES,
};
use crate::media::slab::FrameSlab;
use crate::provider::{
    AgentEvent, CallerEvent, Registry, SessionIo, SessionMeta, EVENTS_CAPACITY, OUT_CAPACITY,
};

/// Counters of the control side (shared with whoever reports them).
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Sessions that could not start (provider error).
    pub sessions_failed: AtomicU64,
    /// Caller audio chunks dropped because a session was not keeping up.
    pub caller_audio_dropped: AtomicU64,
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
    cmds: Vec<mpsc::Sender<ToShard>>,
}

impl Peers {
    /// Shared state for `n` shards, and each dispatcher's command receiver.
    pub fn new(n: usize) -> (Arc<Peers>, Vec<mpsc::Receiver<ToShard>>) {
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

    /// Ask the dispatcher of `call`'s shard to hang it up.
    fn hang_up(&self, call: CallKey, reason: EndReason) {
        if let Some(tx) = self.cmds.get(usize::from(call.shard())) {
            let _ = tx.try_send(ToShard::Hangup { call, reason });
        }
    }
}

/// Bytes of caller audio copied per refill of a session's slab (6 frames of 16 kHz
/// slin; the session consumes each frame at once, so the slab is reused in place).
const CALLER_SLAB_BYTES: usize = 4096;

struct Session {
    events: mpsc::Sender<CallerEvent>,
    /// Caller frames become `Bytes` here without an allocation per frame.
    slab: FrameSlab,
    uuid: Option<[u8; 16]>,
    backlog: VecDeque<Pending>,
    /// Agent audio sent to the shard and not yet reported played, in bytes.
    inflight_bytes: usize,
    /// Bytes of provider audio per millisecond (8 for PCMU, 48 for 24 kHz slin).
    bytes_per_ms: usize,
}

/// Run the dispatcher of one shard until the shard's bridge closes.
/// `credit_ms` is how much agent audio may sit unplayed in the shard (keep it
/// below `streaming.jitter_buffer_ms`).
pub async fn run(
    mut ctrl: ControlEnd,
    registry: Arc<Registry>,
    credit_ms: u32,
    stats: Arc<ControlStats>,
    peers: Arc<Peers>,
    mut cmds: mpsc::Receiver<ToShard>,
) {
    let (agent_tx, mut agent_rx) = mpsc::channel::<(CallKey, AgentEvent)>(1024);
    let mut sessions: HashMap<CallKey, Session> = HashMap::new();
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            got = ctrl.recv_batch(&mut batch) => {
                match got {
                    Ok(_) => {}
                    Err(BridgeError::Closed(_)) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "bridge receive failed");
                        break;
                    }
                }
                for msg in batch.drain(..) {
                    on_shard_message(msg, &mut ctrl, &registry, &mut sessions, &agent_tx, credit_ms, &stats, &peers);
                }
            }
            Some(cmd) = cmds.recv() => {
                // From another shard's dispatcher (a UUID moved away from here).
                let _ = ctrl.push(cmd);
            }
            Some((call, ev)) = agent_rx.recv() => {
                on_agent_event(call, ev, &mut ctrl, &mut sessions, credit_ms);
                while let Ok((call, ev)) = agent_rx.try_recv() {
                    on_agent_event(call, ev, &mut ctrl, &mut sessions, credit_ms);
                }
            }
        }
        ctrl.notify_shard();
    }
    for (_, s) in sessions.drain() {
        let _ = s.events.try_send(CallerEvent::Hangup);
    }
}

#[allow(clippy::too_many_arguments)]
fn on_shard_message(
    msg: ToControl,
    ctrl: &mut ControlEnd,
    registry: &Arc<Registry>,
    sessions: &mut HashMap<CallKey, Session>,
    agent_tx: &mpsc::Sender<(CallKey, AgentEvent)>,
    credit_ms: u32,
    stats: &ControlStats,
    peers: &Peers,
) {
    match msg {
        ToControl::CallStarted { call, info } => {
            let provider = match registry.default_provider() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(%call, error = %e, "no provider for the call; hanging up");
                    stats.sessions_failed.fetch_add(1, Ordering::Relaxed);
                    let _ = ctrl.push(ToShard::Hangup {
                        call,
                        reason: EndReason::AgentHangup,
                    });
                    return;
                }
            };
            let (io, mut peer) = SessionIo::pair(EVENTS_CAPACITY, OUT_CAPACITY);
            let meta = SessionMeta {
                call_id: call.as_u64(),
                caller_codec: info.caller_codec,
                agent: None,
                started_at_ms: 0,
            };
            provider.start(meta, io);
            stats.sessions_started.fetch_add(1, Ordering::Relaxed);
            let tx = agent_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = peer.out.recv().await {
                    if tx.send((call, ev)).await.is_err() {
                        break;
                    }
                }
            });
            let r = info.provider_codec.rate();
            let bytes_per_ms = r.samples_per_ms() * info.provider_codec.bytes_per_sample();
            if let Some(uuid) = info.uuid {
                if let Some(old) = peers.claim(uuid, call) {
                    tracing::info!(%call, %old, "same AudioSocket UUID reconnected: replacing the old call");
                    peers.hang_up(old, EndReason::Replaced);
                }
            }
            sessions.insert(
                call,
                Session {
                    events: peer.events,
                    slab: FrameSlab::new(CALLER_SLAB_BYTES),
                    uuid: info.uuid,
                    backlog: VecDeque::new(),
                    inflight_bytes: 0,
                    bytes_per_ms,
                },
            );
            tracing::debug!(%call, transport = ?info.transport, provider = provider.name(), "call started");
        }
        ToControl::CallerAudio { call, chunk } => {
            if let Some(s) = sessions.get_mut(&call) {
                let frame = s.slab.copy(chunk.as_slice());
                if s.events.try_send(CallerEvent::Audio(frame)).is_err() {
                    stats.caller_audio_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        ToControl::Dtmf { call, digit } => {
            if let Some(s) = sessions.get(&call) {
                let _ = s.events.try_send(CallerEvent::Dtmf(digit));
            }
        }
        ToControl::BargeIn {
            call,
            played_ms,
            from_provider,
        } => {
            if let Some(s) = sessions.get_mut(&call) {
                s.backlog.clear();
                s.inflight_bytes = 0;
                if !from_provider {
                    let _ = s.events.try_send(CallerEvent::BargeIn { played_ms });
                }
            }
        }
        ToControl::Played { call, ms } => {
            if let Some(s) = sessions.get_mut(&call) {
                s.inflight_bytes = s
                    .inflight_bytes
                    .saturating_sub(ms as usize * s.bytes_per_ms);
                pump(call, s, ctrl, credit_ms);
            }
        }
        ToControl::CallEnded { call, reason } => {
            if let Some(s) = sessions.remove(&call) {
                let _ = s.events.try_send(CallerEvent::Hangup);
                if let Some(uuid) = s.uuid {
                    peers.release(uuid, call);
                }
            }
            tracing::debug!(%call, reason = reason.as_str(), "call ended");
        }
    }
}

fn on_agent_event(
    call: CallKey,
    ev: AgentEvent,
    ctrl: &mut ControlEnd,
    sessions: &mut HashMap<CallKey, Session>,
    credit_ms: u32,
) {
    let Some(s) = sessions.get_mut(&call) else {
        return;
    };
    match ev {
        AgentEvent::Audio(bytes) => {
            s.backlog.push_back(Pending::Audio(bytes));
            pump(call, s, ctrl, credit_ms);
        }
        AgentEvent::AudioDone => {
            s.backlog.push_back(Pending::Done);
            pump(call, s, ctrl, credit_ms);
        }
        AgentEvent::SpeechStarted => {
            s.backlog.clear();
            s.inflight_bytes = 0;
            let _ = ctrl.push(ToShard::SpeechStarted { call });
        }
        AgentEvent::Hangup { reason } => {
            tracing::info!(%call, %reason, "agent ended the call");
            let _ = ctrl.push(ToShard::Hangup {
                call,
                reason: EndReason::AgentHangup,
            });
        }
        AgentEvent::Error { error } => {
            tracing::warn!(%call, error = %error, "provider error");
        }
        AgentEvent::Transcript { .. } | AgentEvent::ResponseDone => {}
    }
}

/// Send backlog to the shard while credit lasts and the ring has room.
fn pump(call: CallKey, s: &mut Session, ctrl: &mut ControlEnd, credit_ms: u32) {
    let credit = credit_ms as usize * s.bytes_per_ms;
    while let Some(front) = s.backlog.front_mut() {
        match front {
            Pending::Done => {
                if ctrl.push(ToShard::AgentAudioDone { call }).is_err() {
                    return;
                }
                s.backlog.pop_front();
            }
            Pending::Audio(bytes) => {
                if s.inflight_bytes >= credit {
                    return;
                }
                let room = credit - s.inflight_bytes;
                let n = bytes.len().min(CHUNK_BYTES).min(room.max(1));
                let Some(chunk) = AudioChunk::from_slice(&bytes[..n]) else {
                    return;
                };
                if ctrl.push(ToShard::AgentAudio { call, chunk }).is_err() {
                    return;
                }
                s.inflight_bytes += n;
                let _ = bytes.split_to(n);
                if bytes.is_empty() {
                    s.backlog.pop_front();
                }
            }
        }
    }
}
