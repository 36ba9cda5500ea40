//! One shard: a pinned thread's event loop that owns its media sockets, its calls
//! and their 20 ms pacing.
//!
//! Owns: the shard's AudioSocket listener and connections, its RTP socket and the
//! per-source RTP sessions, a slab of calls (`call::Call` plus transport state), the
//! timer wheel that paces them, and the shard end of the bridge to the control
//! runtime. Reads the clock once per loop turn.
//!
//! Must not: lock, block (every socket is non-blocking, the only wait is
//! `Backend::wait`), or talk to providers (that is the control runtime's job, across
//! the bridge). A protocol error ends only its own connection or call.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use super::allow::AllowList;
use super::asconn::{AsConn, AsEvent};
use super::bridge::{
    AudioChunk, CallInfo, CallKey, CallSummary, EndReason, ShardEnd, ToControl, ToShard, Transport,
    CHUNK_BYTES,
};
use super::io::{monotonic_ms, AnyBackend, Backend, Events, Interest};
use super::io::{recv_batch, send_batch, UdpBatch};
use super::timer::TimerWheel;
use crate::call::{Call, CallConfig, Codec, Input, Output};
use crate::media::rtp::{self, RtpSender, SeqExtender};

const TOKEN_WAKE: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_UDP: u64 = 2;
/// Tokens of AudioSocket connections: `TOKEN_AS_BASE + index` in `Shard::conns`.
/// A connection keeps its token (one poll registration) from accept to close,
/// through the UUID that makes it a call: registering it anew at that moment, while
/// the first poll of a socket that already holds data may still be in flight, can
/// leave that poll armed after the close under io_uring (no FIN is ever sent).
const TOKEN_AS_BASE: u64 = 16;
/// How often connections waiting for their UUID are checked against the read
/// deadline (ms).
const PENDING_SWEEP_MS: u64 = 50;
/// Outbound bytes a stalled AudioSocket peer may leave unread before its call ends.
const MAX_TX_BACKLOG: usize = 64 * 1024;
/// Report played agent audio to the control side every this many ms.
const PLAYED_REPORT_MS: u32 = 100;
/// The AudioSocket hangup frame (kind 0x00, no payload): sent before voxd closes a
/// connection it refuses or whose read deadline passed, so Asterisk hangs up
/// cleanly instead of seeing a bare close.
const AS_HANGUP: [u8; 3] = [0x00, 0x00, 0x00];
/// At most one log line per this many ms for each kind of repeated bad input (the
/// lines say how many were not logged).
const BAD_INPUT_LOG_MS: u64 = 1000;

/// Rate limit of one kind of warning: the first event logs, later ones within
/// [`BAD_INPUT_LOG_MS`] are only counted and reported with the next line.
#[derive(Debug, Default, Clone, Copy)]
struct LogLimit {
    next_ms: u64,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(events not logged since the last line)` when this event may log.
    fn allow(&mut self, now: u64) -> Option<u64> {
        if now >= self.next_ms {
            self.next_ms = now + BAD_INPUT_LOG_MS;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Per-call RTP token bucket: `rate` packets per second, at most one second's worth
/// banked. Tokens are kept in thousandths so a 1 ms refill is exact; no allocation.
#[derive(Debug, Clone, Copy)]
struct RtpBucket {
    milli: u64,
    at_ms: u64,
    /// Packets dropped by this bucket so far (logged once per call).
    dropped: u64,
}

impl RtpBucket {
    fn new(rate: u32, now: u64) -> Self {
        RtpBucket {
            milli: u64::from(rate) * 1000,
            at_ms: now,
            dropped: 0,
        }
    }

    /// Take one packet's token; `false` when the source is over `rate`.
    fn take(&mut self, rate: u32, now: u64) -> bool {
        let rate = u64::from(rate);
        let elapsed = now.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now);
        self.milli = (self.milli + elapsed * rate).min(rate * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Everything a shard is built with.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// Shard index (also in every `CallKey`).
    pub index: u16,
    /// Calls this shard may hold at once.
    pub max_calls: usize,
    /// Codec of AudioSocket connections (`audiosocket.format`).
    pub audiosocket_codec: Codec,
    /// Largest AudioSocket payload accepted.
    pub max_frame_bytes: usize,
    /// AudioSocket peers allowed to connect.
    pub audiosocket_allow: AllowList,
    /// Read deadline: an AudioSocket connection that delivers no complete frame for
    /// this long (nothing at all, a UUID then nothing, a partial frame that stalls)
    /// is closed (`audiosocket.read_timeout_ms`).
    pub audiosocket_read_timeout_ms: u64,
    /// Codec of RTP calls (`external_media.codec`).
    pub rtp_codec: Codec,
    /// RTP sources allowed.
    pub rtp_allow: AllowList,
    /// An RTP call ends after this long without packets.
    pub rtp_idle_timeout_ms: u64,
    /// Per-call RTP rate cap, packets per second (burst: one second's worth;
    /// `external_media.max_packets_per_second`).
    pub rtp_max_pps: u32,
    /// Codec the provider uses (both directions) for AudioSocket calls.
    pub audiosocket_provider_codec: Codec,
    /// Codec the provider uses (both directions) for RTP calls.
    pub rtp_provider_codec: Codec,
    /// Playout, barge-in and jitter settings for new calls (codecs are filled in).
    pub call_template: CallConfig,
    /// Loop pacing while the shard has calls (`engine.tick_ms`; 0 = wake per event).
    pub tick_ms: u32,
}

/// Counters of one shard (read by the engine's owner after the loop ends, and
/// later exported per shard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Calls started.
    pub calls_started: u64,
    /// Calls ended.
    pub calls_ended: u64,
    /// Connections or sources refused (allowlist, max_calls, draining, too many
    /// AudioSocket connections waiting for their UUID).
    pub refused: u64,
    /// Calls ended by a protocol error.
    pub protocol_errors: u64,
    /// RTP packets dropped (bad parse, wrong payload type, not allowed).
    pub rtp_dropped: u64,
    /// Frames sent to callers.
    pub frames_out: u64,
    /// Bridge messages dropped because the ring was full.
    pub bridge_dropped: u64,
    /// Agent audio bytes the playout could not take.
    pub agent_audio_dropped: u64,
    /// Barge-in to silence on the wire, of the calls that ended.
    pub barge_in_reaction: crate::call::ReactionHistogram,
    /// Turn response (caller's last loud frame to the answer), of the calls that
    /// ended.
    pub turn_response: crate::call::TurnHistogram,
    /// Provider audio received to its first frame on the wire, of the calls that
    /// ended.
    pub first_frame: crate::call::ReactionHistogram,
    /// RTP datagrams received (any source, before checks).
    pub rtp_in: u64,
    /// RTP datagrams the kernel accepted for sending.
    pub rtp_out: u64,
    /// RTP packets lost / late / reordered, of the calls that ended.
    pub rtp_lost: u64,
    /// See `rtp_lost`.
    pub rtp_late: u64,
    /// See `rtp_lost`.
    pub rtp_reordered: u64,
    /// AudioSocket bytes read.
    pub as_rx_bytes: u64,
    /// AudioSocket bytes written.
    pub as_tx_bytes: u64,
    /// Underflow events, of the calls that ended.
    pub underflows: u64,
    /// Frames sent to callers (audio and silence), of the calls that ended.
    pub frames_to_caller: u64,
    /// AudioSocket connections closed by the read deadline (no complete frame for
    /// `audiosocket.read_timeout_ms`).
    pub read_timeouts: u64,
    /// RTP packets over a call's rate cap, dropped (also in `rtp_dropped`).
    pub rtp_rate_limited: u64,
    /// AudioSocket frames of a kind voxd ignores (unknown kinds, peer error frames).
    pub as_ignored_frames: u64,
}

enum Media {
    AudioSocket {
        stream: TcpStream,
        conn: AsConn,
        tx: BytesMut,
        started: bool,
        writable_armed: bool,
        last_rx_ms: u64,
        /// Index in `Shard::conns` (the poll token is `TOKEN_AS_BASE + conn_index`).
        conn_index: u32,
        /// Frames of a kind voxd ignores, on this connection (the first is logged).
        ignored_frames: u64,
    },
    Rtp {
        peer: SocketAddr,
        sender: RtpSender,
        seq: SeqExtender,
        last_rx_ms: u64,
        bucket: RtpBucket,
    },
}

struct Slot {
    generation: u16,
    live: Option<Live>,
}

/// An AudioSocket connection that has not sent its UUID yet. It holds no call
/// slot and no `Call` (only the socket and its frame decoder, a few KiB), so
/// connections that never say who they are cost little and cannot take the slots
/// of real calls; the read deadline closes them.
struct Pending {
    stream: TcpStream,
    conn: AsConn,
    accepted_ms: u64,
}

/// One entry of the shard's AudioSocket connection table.
enum ConnEntry {
    Free,
    /// Waiting for its UUID.
    Waiting(Pending),
    /// Promoted to the call in this slot (the socket lives in its `Media`).
    Call(u32),
}

struct Live {
    call: Call,
    media: Media,
    played_frames_reported: u64,
    started_ms: u64,
}

/// A shard's state and loop. Build with `new`, run with `run` on its own thread.
pub struct Shard {
    spec: ShardSpec,
    /// Draining flag and heartbeat (set by [`Shard::run`]).
    life: Option<Arc<super::lifecycle::Lifecycle>>,
    /// Time spent waiting for events since the last publish, ns.
    waited_ns: u64,
    /// When the current loop turn's wait returned: the arrival time stamped on
    /// caller audio for the control side (one clock read per turn).
    turn_at: std::time::Instant,
    /// Latency samples of this shard's calls (hdrhistogram).
    latency: super::published::ShardLatency,
    /// Jitter samples of live RTP calls, every publish so far.
    jitter_samples: super::published::JitterHistogram,
    /// Playout depth samples of live calls, every publish so far.
    depth_samples: super::published::JitterHistogram,
    backend: AnyBackend,
    events: Events,
    timer: TimerWheel,
    bridge: ShardEnd,
    listener: Option<TcpListener>,
    udp: Option<UdpSocket>,
    udp_rx: UdpBatch,
    udp_tx: UdpBatch,
    /// The loop runs on its tick (it has calls and `tick_ms > 0`).
    paced: bool,
    /// The UDP socket may hold datagrams (an event came, or the last batch was full).
    udp_pending: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_uuid: HashMap<[u8; 16], u32>,
    by_peer: HashMap<SocketAddr, u32>,
    expired: Vec<u32>,
    read_buf: Box<[u8]>,
    /// Payload type of RTP calls (0 PCMU, 8 PCMA).
    rtp_pt: u8,
    /// Scratch for one outbound RTP packet.
    rtp_out: Box<[u8]>,
    stats: ShardStats,
    /// Log rate limits (one line a second per shard and kind): read deadline
    /// closures, RTP rate cap, bad RTP, AudioSocket protocol errors, refusals,
    /// ignored frames.
    log_read_timeout: LogLimit,
    log_rtp_cap: LogLimit,
    log_rtp_bad: LogLimit,
    log_protocol: LogLimit,
    log_refused: LogLimit,
    log_ignored: LogLimit,
    /// AudioSocket connections (a slab with room for as many calls plus as many
    /// connections waiting for their UUID; the index is the poll token).
    conns: Vec<ConnEntry>,
    conns_free: Vec<u32>,
    /// Entries of `conns` that are `Waiting`.
    waiting: usize,
    next_pending_sweep: u64,
}

impl Shard {
    /// A shard over already-bound sockets (one `SO_REUSEPORT` listener and/or UDP
    /// socket per shard) and its bridge end.
    pub fn new(
        spec: ShardSpec,
        backend: AnyBackend,
        listener: Option<TcpListener>,
        udp: Option<UdpSocket>,
        bridge: ShardEnd,
    ) -> io::Result<Shard> {
        let mut backend = backend;
        backend.register(bridge.wake_fd(), TOKEN_WAKE, Interest::READABLE)?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            backend.register(l.as_raw_fd(), TOKEN_LISTENER, Interest::READABLE)?;
        }
        if let Some(u) = &udp {
            u.set_nonblocking(true)?;
            backend.register(u.as_raw_fd(), TOKEN_UDP, Interest::READABLE)?;
        }
        let n = spec.max_calls.max(1);
        Ok(Shard {
            timer: TimerWheel::new(monotonic_ms(), n),
            slots: (0..n)
                .map(|_| Slot {
                    generation: 0,
                    live: None,
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
            by_uuid: HashMap::with_capacity(n),
            by_peer: HashMap::with_capacity(n),
            expired: Vec::with_capacity(n),
            events: Events::with_capacity(1024),
            life: None,
            waited_ns: 0,
            turn_at: std::time::Instant::now(),
            latency: super::published::ShardLatency::default(),
            jitter_samples: Default::default(),
            depth_samples: Default::default(),
            udp_rx: UdpBatch::new(64),
            paced: false,
            udp_pending: false,
            udp_tx: UdpBatch::new(64),
            read_buf: vec![0; 64 * 1024].into_boxed_slice(),
            rtp_pt: match spec.rtp_codec {
                Codec::Pcma => rtp::PT_PCMA,
                _ => rtp::PT_PCMU,
            },
            rtp_out: vec![0; rtp::HEADER_LEN + 1500].into_boxed_slice(),
            spec,
            backend,
            bridge,
            listener,
            udp,
            stats: ShardStats::default(),
            log_read_timeout: LogLimit::default(),
            log_rtp_cap: LogLimit::default(),
            log_rtp_bad: LogLimit::default(),
            log_protocol: LogLimit::default(),
            log_refused: LogLimit::default(),
            log_ignored: LogLimit::default(),
            conns: (0..2 * n).map(|_| ConnEntry::Free).collect(),
            conns_free: (0..2 * n as u32).rev().collect(),
            waiting: 0,
            next_pending_sweep: 0,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            bridge_dropped: self.bridge.dropped(),
            ..self.stats
        }
    }

    /// Counters of ended and live calls, for [`super::published::Published`].
    fn snapshot(&mut self, busy_ratio: f64) -> super::published::ShardSnapshot {
        let mut stats = self.stats();
        let mut audiosocket = 0u64;
        let mut active = 0u64;
        for slot in &self.slots {
            let Some(live) = &slot.live else { continue };
            active += 1;
            let cs = live.call.stats();
            stats.barge_in_reaction.merge(&cs.barge_in_reaction);
            stats.turn_response.merge(&cs.turn_response);
            stats.first_frame.merge(&cs.first_frame);
            self.depth_samples.record(
                &super::published::DEPTH_BUCKETS_MS,
                u64::from(live.call.playout_depth_ms()),
            );
            stats.rtp_lost += cs.jitter.lost;
            stats.rtp_late += cs.jitter.late;
            stats.rtp_reordered += cs.jitter.reordered;
            stats.underflows += cs.playout.underflow_events;
            stats.frames_to_caller += cs.frames_to_caller;
            match live.media {
                Media::AudioSocket { .. } => audiosocket += 1,
                Media::Rtp { .. } => {
                    let j = live.call.rtp_jitter_ms();
                    self.jitter_samples
                        .record(&super::published::JITTER_BUCKETS_MS, j.round() as u64);
                }
            }
        }
        let audiosocket = audiosocket + self.waiting as u64;
        super::published::ShardSnapshot {
            stats,
            active_calls: active,
            audiosocket_connections: audiosocket,
            busy_ratio,
            rtp_jitter: self.jitter_samples,
            playout_depth: self.depth_samples,
        }
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Run until `stop` is set; then end every call (`Shutdown`) and return.
    pub fn run(
        &mut self,
        stop: &Arc<AtomicBool>,
        life: &Arc<super::lifecycle::Lifecycle>,
        published: &Arc<super::published::Published>,
    ) -> io::Result<ShardStats> {
        self.life = Some(life.clone());
        let mut last_publish = monotonic_ms();
        let mut window = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = monotonic_ms();
            life.beat(usize::from(self.spec.index), now);
            if now >= last_publish + super::published::PUBLISH_MS {
                last_publish = now;
                let wall = window.elapsed().as_nanos().max(1) as f64;
                window = std::time::Instant::now();
                let busy = 1.0 - (self.waited_ns as f64 / wall).min(1.0);
                self.waited_ns = 0;
                published.publish(usize::from(self.spec.index), &self.snapshot(busy));
                published.publish_latency(usize::from(self.spec.index), &self.latency);
            }
            let paced = self.spec.tick_ms > 0 && self.active_calls() > 0;
            if paced != self.paced {
                self.paced = paced;
                self.bridge.set_paced(paced);
                if !paced {
                    // Back to waking per event: leave nothing queued unseen.
                    self.udp_pending = true;
                    self.read_udp(now);
                    self.bridge.notify_control();
                }
            }
            if paced {
                self.waited_ns += super::io::sleep_to_next_tick(u64::from(self.spec.tick_ms));
                self.turn(Some(0))?;
            } else {
                let timeout = match self.timer.next_deadline() {
                    Some(d) => d.saturating_sub(now).min(10) as u32,
                    None => 10,
                };
                self.turn(Some(timeout))?;
            }
        }
        for slot in 0..self.slots.len() as u32 {
            self.end_call(slot, EndReason::Shutdown);
        }
        for p in 0..self.conns.len() as u32 {
            self.close_pending(p);
        }
        self.flush_udp();
        self.bridge.notify_control();
        published.publish(usize::from(self.spec.index), &self.snapshot(0.0));
        published.publish_latency(usize::from(self.spec.index), &self.latency);
        Ok(self.stats())
    }

    /// One loop turn: wait up to `timeout_ms`, then handle sockets, the bridge and
    /// due timers. Public for tests that drive a shard step by step.
    pub fn turn(&mut self, timeout_ms: Option<u32>) -> io::Result<()> {
        let mut events = std::mem::replace(&mut self.events, Events::placeholder());
        let before = std::time::Instant::now();
        let waited = self.backend.wait(timeout_ms, &mut events);
        let woke = std::time::Instant::now();
        self.waited_ns += woke.duration_since(before).as_nanos() as u64;
        self.turn_at = woke;
        let now = monotonic_ms();
        if let Err(e) = waited {
            self.events = events;
            return Err(e);
        }
        for ev in events.iter() {
            match ev.token {
                TOKEN_WAKE => {
                    self.bridge.drain_wake();
                }
                TOKEN_LISTENER => self.accept_all(now),
                TOKEN_UDP => self.udp_pending = true,
                t => {
                    let p = t.wrapping_sub(TOKEN_AS_BASE) as u32;
                    match self.conns.get(p as usize) {
                        Some(ConnEntry::Waiting(_)) if ev.readable || ev.hup || ev.error => {
                            self.read_pending(p, now);
                        }
                        Some(&ConnEntry::Call(slot)) => {
                            if ev.writable {
                                self.flush_tcp(slot);
                            }
                            if ev.readable || ev.hup || ev.error {
                                self.read_tcp(slot, now, ev.hup || ev.error);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.events = events;
        self.read_udp(now);
        self.drain_bridge(now);
        self.expire_timers(now);
        if now >= self.next_pending_sweep {
            self.next_pending_sweep = now + PENDING_SWEEP_MS;
            self.sweep_pending(now);
        }
        self.flush_udp();
        self.bridge.notify_control();
        Ok(())
    }

    fn key(&self, slot: u32) -> CallKey {
        CallKey::new(self.spec.index, slot, self.slots[slot as usize].generation)
    }

    fn new_call(&mut self, caller: Codec, media: Media, now: u64) -> Option<u32> {
        if self.life.as_ref().is_some_and(|l| l.is_draining()) {
            return None;
        }
        let slot = self.free.pop()?;
        let provider = match media {
            Media::AudioSocket { .. } => self.spec.audiosocket_provider_codec,
            Media::Rtp { .. } => self.spec.rtp_provider_codec,
        };
        let cfg = CallConfig {
            caller,
            provider,
            provider_out: provider,
            ..self.spec.call_template
        };
        self.slots[slot as usize].live = Some(Live {
            call: Call::new(cfg, now),
            media,
            played_frames_reported: 0,
            started_ms: now,
        });
        self.stats.calls_started += 1;
        Some(slot)
    }

    fn started(&mut self, slot: u32, uuid: Option<[u8; 16]>, remote: SocketAddr) {
        let Some(live) = self.slots[slot as usize].live.as_ref() else {
            return;
        };
        let cfg = *live.call.config();
        let transport = match live.media {
            Media::AudioSocket { .. } => Transport::AudioSocket,
            Media::Rtp { .. } => Transport::Rtp,
        };
        let info = CallInfo {
            transport,
            caller_codec: cfg.caller,
            provider_codec: cfg.provider,
            uuid,
            remote,
        };
        let call = self.key(slot);
        self.bridge.push(ToControl::CallStarted { call, info });
    }

    /// End a call: tell the control side, forget its addresses, free the slot.
    fn end_call(&mut self, slot: u32, reason: EndReason) {
        let s = &mut self.slots[slot as usize];
        let Some(live) = s.live.take() else { return };
        let call = CallKey::new(self.spec.index, slot, s.generation);
        s.generation = s.generation.wrapping_add(1);
        match live.media {
            Media::AudioSocket {
                stream,
                conn,
                tx,
                conn_index,
                ..
            } => {
                self.conns[conn_index as usize] = ConnEntry::Free;
                self.conns_free.push(conn_index);
                if reason == EndReason::IdleTimeout && tx.is_empty() {
                    // Tell Asterisk before the close (never mid-frame: tx is empty).
                    let _ = (&stream).write(&AS_HANGUP);
                }
                let _ = self.backend.deregister(stream.as_raw_fd());
                if let Some(u) = conn.uuid() {
                    if self.by_uuid.get(&u) == Some(&slot) {
                        self.by_uuid.remove(&u);
                    }
                }
                drop(stream);
            }
            Media::Rtp { peer, .. } => {
                self.by_peer.remove(&peer);
            }
        }
        let cs = live.call.stats();
        self.stats.barge_in_reaction.merge(&cs.barge_in_reaction);
        self.stats.turn_response.merge(&cs.turn_response);
        self.stats.first_frame.merge(&cs.first_frame);
        self.stats.rtp_lost += cs.jitter.lost;
        self.stats.rtp_late += cs.jitter.late;
        self.stats.rtp_reordered += cs.jitter.reordered;
        self.stats.underflows += cs.playout.underflow_events;
        self.stats.frames_to_caller += cs.frames_to_caller;
        let summary = CallSummary {
            duration_ms: monotonic_ms().saturating_sub(live.started_ms),
            frames_to_caller: cs.frames_to_caller,
            underflow_events: cs.playout.underflow_events,
            rtp_received: cs.jitter.received,
            rtp_lost: cs.jitter.lost,
            barge_ins: cs.local_barge_ins + cs.provider_barge_ins,
            late_ticks: cs.late_ticks,
        };
        self.timer.cancel(slot);
        self.free.push(slot);
        self.stats.calls_ended += 1;
        if reason == EndReason::ProtocolError {
            self.stats.protocol_errors += 1;
        }
        self.bridge.push(ToControl::CallEnded {
            call,
            reason,
            summary,
        });
    }

    // ---- AudioSocket ------------------------------------------------------------

    fn accept_all(&mut self, now: u64) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.accepted(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    tracing::warn!(shard = self.spec.index, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn accepted(&mut self, stream: TcpStream, peer: SocketAddr, now: u64) {
        if !self.spec.audiosocket_allow.allows(peer.ip()) {
            self.stats.refused += 1;
            if let Some(more) = self.log_refused.allow(now) {
                tracing::warn!(shard = self.spec.index, not_logged = more, "AudioSocket connection from a source not in audiosocket.allowed_remote_hosts refused (counted in voxd_refused_calls_total)");
            }
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let draining = self.life.as_ref().is_some_and(|l| l.is_draining());
        if self.free.is_empty() || draining {
            self.stats.refused += 1;
            // A hangup frame first (3 bytes into a fresh socket: never blocks), so
            // Asterisk ends the channel cleanly; then the close.
            let _ = (&stream).write(&AS_HANGUP);
            self.log_refusal(
                now,
                if draining {
                    "draining"
                } else {
                    "max_calls (limits.max_calls)"
                },
            );
            return;
        }
        let Some(p) = self.conns_free.pop() else {
            // As many connections may wait for their UUID as the shard has call slots.
            self.stats.refused += 1;
            let _ = (&stream).write(&AS_HANGUP);
            self.log_refusal(
                now,
                "too many connections waiting for their UUID (as many as free call slots plus max_calls)",
            );
            return;
        };
        let fd = stream.as_raw_fd();
        if self
            .backend
            .register(fd, TOKEN_AS_BASE + u64::from(p), Interest::READABLE)
            .is_err()
        {
            self.conns_free.push(p);
            return;
        }
        self.conns[p as usize] = ConnEntry::Waiting(Pending {
            stream,
            conn: AsConn::new(self.spec.audiosocket_codec, self.spec.max_frame_bytes),
            accepted_ms: now,
        });
        self.waiting += 1;
        // The connection may already hold bytes (edge-triggered: read now).
        self.read_pending(p, now);
    }

    /// Reads a connection that waits for its UUID: one buffer at a time, decoding
    /// after each read, so a connection holds at most one read's worth of bytes
    /// before it is a call. The UUID frame turns it into a call (which then reads
    /// the rest of the socket); a protocol error or EOF closes it.
    fn read_pending(&mut self, p: u32, now: u64) {
        loop {
            let ConnEntry::Waiting(pc) = &mut self.conns[p as usize] else {
                return;
            };
            let eof = match pc.stream.read(&mut self.read_buf) {
                Ok(0) => true,
                Ok(n) => {
                    self.stats.as_rx_bytes += n as u64;
                    pc.conn.rx().extend_from_slice(&self.read_buf[..n]);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => true,
            };
            match pc.conn.poll_event() {
                Ok(None) if eof => {
                    self.close_pending(p);
                    return;
                }
                Ok(None) => {}
                Ok(Some(AsEvent::Uuid(uuid))) => {
                    if let Some(slot) = self.promote(p, uuid, now) {
                        // The call reads what the socket still holds (edge-triggered).
                        self.read_tcp(slot, now, true);
                    }
                    return;
                }
                // Not reached: `AsConn` refuses any other first frame.
                Ok(Some(_)) => {
                    self.close_pending(p);
                    return;
                }
                Err(e) => {
                    self.stats.protocol_errors += 1;
                    self.log_protocol_error(now, &e);
                    self.close_pending(p);
                    return;
                }
            }
        }
    }

    /// A protocol error's warning (the connection is closed by the caller), at most
    /// one line a second per shard; the line says how many were not logged.
    fn log_protocol_error(&mut self, now: u64, e: &super::asconn::AsConnError) {
        if let Some(more) = self.log_protocol.allow(now) {
            tracing::warn!(
                shard = self.spec.index,
                error = %e,
                kind = e.label(),
                not_logged = more,
                "AudioSocket protocol error; closing that connection (counted in voxd_protocol_errors_total)"
            );
        }
    }

    /// A refused AudioSocket connection's warning, at most one line a second per
    /// shard.
    fn log_refusal(&mut self, now: u64, reason: &'static str) {
        if let Some(more) = self.log_refused.allow(now) {
            tracing::warn!(
                shard = self.spec.index,
                reason,
                max_calls = self.slots.len(),
                waiting = self.waiting,
                not_logged = more,
                "AudioSocket connection refused (counted in voxd_refused_calls_total); hangup frame sent"
            );
        }
    }

    /// The UUID arrived: the connection becomes a call (or is refused with a
    /// hangup frame when the shard is at `max_calls` or draining). Returns the
    /// call's slot while the call is still up after the frames that came with the
    /// UUID.
    fn promote(&mut self, p: u32, uuid: [u8; 16], now: u64) -> Option<u32> {
        if !matches!(self.conns[p as usize], ConnEntry::Waiting(_)) {
            return None;
        }
        let ConnEntry::Waiting(Pending { stream, conn, .. }) =
            std::mem::replace(&mut self.conns[p as usize], ConnEntry::Free)
        else {
            return None;
        };
        self.waiting -= 1;
        let fd = stream.as_raw_fd();
        let draining = self.life.as_ref().is_some_and(|l| l.is_draining());
        if self.free.is_empty() || draining {
            self.conns_free.push(p);
            self.stats.refused += 1;
            let _ = self.backend.deregister(fd);
            let _ = (&stream).write(&AS_HANGUP);
            self.log_refusal(
                now,
                if draining {
                    "draining"
                } else {
                    "max_calls (limits.max_calls)"
                },
            );
            return None;
        }
        let media = Media::AudioSocket {
            stream,
            conn,
            tx: BytesMut::with_capacity(4096),
            started: false,
            writable_armed: false,
            last_rx_ms: now,
            conn_index: p,
            ignored_frames: 0,
        };
        let Some(slot) = self.new_call(self.spec.audiosocket_codec, media, now) else {
            // Not reached (checked above). The socket went with the media: cancel
            // its poll so the close completes (see `engine::io`).
            let _ = self.backend.deregister(fd);
            self.conns_free.push(p);
            return None;
        };
        // The socket keeps its registration (token `TOKEN_AS_BASE + p`): its events
        // now reach the call.
        self.conns[p as usize] = ConnEntry::Call(slot);
        self.on_uuid(slot, uuid);
        // Frames that came with the UUID.
        self.handle_as_events(slot, now);
        let s = &self.slots[slot as usize];
        match s.live.as_ref().map(|l| &l.media) {
            Some(Media::AudioSocket { conn_index, .. }) if *conn_index == p => Some(slot),
            _ => None,
        }
    }

    /// Close a connection that never sent its UUID.
    fn close_pending(&mut self, p: u32) {
        if !matches!(self.conns[p as usize], ConnEntry::Waiting(_)) {
            return;
        }
        if let ConnEntry::Waiting(pc) =
            std::mem::replace(&mut self.conns[p as usize], ConnEntry::Free)
        {
            let _ = self.backend.deregister(pc.stream.as_raw_fd());
            self.conns_free.push(p);
            self.waiting -= 1;
        }
    }

    /// The read deadline of connections waiting for their UUID: past it, a hangup
    /// frame, the close, the counter, and a rate-limited log line.
    fn sweep_pending(&mut self, now: u64) {
        if self.waiting == 0 {
            return;
        }
        let limit = self.spec.audiosocket_read_timeout_ms;
        for p in 0..self.conns.len() as u32 {
            let ConnEntry::Waiting(pc) = &mut self.conns[p as usize] else {
                continue;
            };
            let silent_ms = now.saturating_sub(pc.accepted_ms);
            if silent_ms <= limit {
                continue;
            }
            let partial = pc.conn.rx().len();
            let _ = (&pc.stream).write(&AS_HANGUP);
            self.stats.read_timeouts += 1;
            if let Some(more) = self.log_read_timeout.allow(now) {
                let state = if partial == 0 {
                    "nothing received, not even the UUID"
                } else {
                    "a partial first frame, then nothing"
                };
                tracing::warn!(
                    shard = self.spec.index,
                    state,
                    partial_bytes = partial,
                    silent_ms,
                    read_timeout_ms = limit,
                    not_logged = more,
                    "AudioSocket read deadline passed (audiosocket.read_timeout_ms); closing that connection"
                );
            }
            self.close_pending(p);
        }
    }

    /// Reads what the connection holds. `to_end`: read until `WouldBlock` or EOF
    /// (the peer may have closed); otherwise a short read ends it.
    fn read_tcp(&mut self, slot: u32, now: u64, to_end: bool) {
        let mut eof = false;
        {
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                return;
            };
            let Media::AudioSocket { stream, conn, .. } = &mut live.media else {
                return;
            };
            loop {
                match stream.read(&mut self.read_buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        // The read deadline counts complete frames only (see
                        // `handle_as_events`): a trickle of bytes does not hold it off.
                        self.stats.as_rx_bytes += n as u64;
                        conn.rx().extend_from_slice(&self.read_buf[..n]);
                        if !to_end && n < self.read_buf.len() {
                            // A short read emptied the socket; new bytes bring a new
                            // event (see `engine::io`'s readiness contract).
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        self.handle_as_events(slot, now);
        if eof && self.slots[slot as usize].live.is_some() {
            self.end_call(slot, EndReason::CallerHangup);
        }
    }

    fn handle_as_events(&mut self, slot: u32, now: u64) {
        loop {
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                return;
            };
            let Media::AudioSocket {
                conn,
                last_rx_ms,
                ignored_frames,
                ..
            } = &mut live.media
            else {
                return;
            };
            let ev = match conn.poll_event() {
                Ok(Some(ev)) => {
                    *last_rx_ms = now;
                    ev
                }
                Ok(None) => return,
                Err(e) => {
                    self.log_protocol_error(now, &e);
                    self.end_call(slot, EndReason::ProtocolError);
                    return;
                }
            };
            match ev {
                AsEvent::Uuid(uuid) => self.on_uuid(slot, uuid),
                AsEvent::Audio(payload) => {
                    if let Err(e) = live.call.handle_input(Input::CallerAudio {
                        at_ms: now,
                        payload: &payload,
                    }) {
                        tracing::warn!(shard = self.spec.index, error = %e, "bad caller audio; closing that connection");
                        self.end_call(slot, EndReason::ProtocolError);
                        return;
                    }
                    self.flush_outputs(slot);
                }
                AsEvent::Dtmf(digit) => {
                    let call = self.key(slot);
                    self.bridge.push(ToControl::Dtmf { call, digit });
                }
                AsEvent::Hangup => {
                    self.end_call(slot, EndReason::CallerHangup);
                    return;
                }
                AsEvent::Unknown(_) | AsEvent::PeerError(_) => {
                    self.stats.as_ignored_frames += 1;
                    *ignored_frames += 1;
                    if *ignored_frames == 1 {
                        let what = match ev {
                            AsEvent::Unknown(k) => format!("unknown kind 0x{k:02x}"),
                            _ => "error kind 0xff".to_string(),
                        };
                        if let Some(more) = self.log_ignored.allow(now) {
                            let call = self.key(slot);
                            tracing::warn!(
                                shard = self.spec.index,
                                %call,
                                frame = %what,
                                not_logged = more,
                                "AudioSocket frame ignored (first on this call; counted in voxd_audiosocket_ignored_frames_total)"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A call's UUID arrived: mark it started, take over an older connection with
    /// the same UUID, tell the control side, and arm the pacing timer.
    fn on_uuid(&mut self, slot: u32, uuid: [u8; 16]) {
        let Some(Live {
            media: Media::AudioSocket {
                stream, started, ..
            },
            ..
        }) = self.slots[slot as usize].live.as_mut()
        else {
            return;
        };
        *started = true;
        let remote = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Some(old) = self.by_uuid.insert(uuid, slot) {
            if old != slot {
                self.end_call(old, EndReason::Replaced);
                self.by_uuid.insert(uuid, slot);
            }
        }
        self.started(slot, Some(uuid), remote);
        self.flush_outputs(slot);
    }

    fn flush_tcp(&mut self, slot: u32) {
        let mut stalled = false;
        {
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                return;
            };
            let Media::AudioSocket {
                stream,
                tx,
                writable_armed,
                conn_index,
                ..
            } = &mut live.media
            else {
                return;
            };
            while !tx.is_empty() {
                match stream.write(tx) {
                    Ok(0) => {
                        stalled = true;
                        break;
                    }
                    Ok(n) => {
                        self.stats.as_tx_bytes += n as u64;
                        let _ = tx.split_to(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        stalled = true;
                        break;
                    }
                }
            }
            let want_write = !tx.is_empty();
            if want_write != *writable_armed {
                let interest = if want_write {
                    Interest::BOTH
                } else {
                    Interest::READABLE
                };
                let _ = self.backend.reregister(
                    stream.as_raw_fd(),
                    TOKEN_AS_BASE + u64::from(*conn_index),
                    interest,
                );
                *writable_armed = want_write;
            }
            if tx.len() > MAX_TX_BACKLOG {
                stalled = true;
            }
        }
        if stalled {
            tracing::warn!(
                shard = self.spec.index,
                "AudioSocket peer stopped reading; ending its call"
            );
            self.end_call(slot, EndReason::ProtocolError);
        }
    }

    // ---- RTP ----------------------------------------------------------------------

    /// Reads datagrams while the socket may hold some: until a batch comes back
    /// short (`recvmmsg` stopped at `EAGAIN`: the queue was empty), so a tick with a
    /// few packets costs one call, not two.
    fn read_udp(&mut self, now: u64) {
        while self.udp_pending {
            let Some(sock) = &self.udp else {
                self.udp_pending = false;
                return;
            };
            let n = match recv_batch(sock, &mut self.udp_rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(shard = self.spec.index, error = %e, "RTP receive failed");
                    0
                }
            };
            self.udp_pending = n == self.udp_rx.capacity();
            self.stats.rtp_in += n as u64;
            for i in 0..n {
                let (_, from) = self.udp_rx.get(i);
                self.rtp_packet(i, from, now);
            }
        }
    }

    /// One received datagram (`udp_rx` slot `i`): parsed once; only a packet the call
    /// can use (right payload type, audio present) counts, and only such a packet
    /// from an allowed new source starts a call (and a provider session).
    fn rtp_packet(&mut self, i: usize, from: SocketAddr, now: u64) {
        let known = self.by_peer.get(&from).copied();
        if known.is_none() && !self.spec.rtp_allow.allows(from.ip()) {
            self.stats.rtp_dropped += 1;
            self.stats.refused += 1;
            self.log_rtp_drop(now, "source not in external_media.allowed_remote_hosts");
            return;
        }
        if let Some(slot) = known {
            if !self.rtp_within_cap(slot, now) {
                return;
            }
        }
        let (data, _) = self.udp_rx.get(i);
        let (sequence, payload) = match rtp::parse(data) {
            Ok(p) if p.header.payload_type == self.rtp_pt && !p.payload.is_empty() => {
                let start = p.payload.as_ptr() as usize - data.as_ptr() as usize;
                (p.header.sequence, start..start + p.payload.len())
            }
            r => {
                self.stats.rtp_dropped += 1;
                let why = match r {
                    Err(_) => "not valid RTP (truncated, wrong version, bad padding or lengths)",
                    Ok(p) if p.payload.is_empty() => "no audio payload",
                    Ok(_) => "wrong payload type",
                };
                self.log_rtp_drop(now, why);
                return;
            }
        };
        let slot = match known {
            Some(s) => s,
            None => {
                let seed = (now as u32) ^ u32::from(from.port()).rotate_left(16) ^ 0x5EED_F00D;
                let media = Media::Rtp {
                    peer: from,
                    sender: RtpSender::new(
                        seed,
                        seed as u16,
                        seed.rotate_left(7),
                        self.rtp_pt,
                        160,
                    ),
                    seq: SeqExtender::new(),
                    last_rx_ms: now,
                    bucket: RtpBucket::new(self.spec.rtp_max_pps, now),
                };
                let Some(slot) = self.new_call(self.spec.rtp_codec, media, now) else {
                    self.stats.refused += 1;
                    self.stats.rtp_dropped += 1;
                    return;
                };
                self.by_peer.insert(from, slot);
                self.started(slot, None, from);
                slot
            }
        };
        let Some(live) = self.slots[slot as usize].live.as_mut() else {
            return;
        };
        let Media::Rtp {
            seq, last_rx_ms, ..
        } = &mut live.media
        else {
            return;
        };
        *last_rx_ms = now;
        let ext = seq.extend(sequence);
        let payload = &self.udp_rx.get(i).0[payload];
        let _ = live.call.handle_input(Input::CallerRtp {
            at_ms: now,
            seq: ext,
            payload,
        });
        self.flush_outputs(slot);
    }

    /// A dropped RTP packet's warning, at most one a second per shard.
    fn log_rtp_drop(&mut self, now: u64, why: &'static str) {
        if let Some(more) = self.log_rtp_bad.allow(now) {
            tracing::warn!(
                shard = self.spec.index,
                reason = why,
                not_logged = more,
                "RTP packet dropped (counted in voxd_rtp_dropped_packets_total)"
            );
        }
    }

    /// The per-call rate cap (before the packet is parsed): `false` when the packet
    /// is over `external_media.max_packets_per_second` and was dropped (counted;
    /// one rate-limited log line).
    fn rtp_within_cap(&mut self, slot: u32, now: u64) -> bool {
        let rate = self.spec.rtp_max_pps;
        let Some(Live {
            media: Media::Rtp { bucket, .. },
            ..
        }) = self.slots[slot as usize].live.as_mut()
        else {
            return true;
        };
        if bucket.take(rate, now) {
            return true;
        }
        let first_for_call = bucket.dropped == 1;
        self.stats.rtp_dropped += 1;
        self.stats.rtp_rate_limited += 1;
        if first_for_call {
            if let Some(more) = self.log_rtp_cap.allow(now) {
                let call = self.key(slot);
                tracing::warn!(
                    shard = self.spec.index,
                    %call,
                    max_packets_per_second = rate,
                    not_logged = more,
                    "RTP source over its rate cap (external_media.max_packets_per_second); excess packets dropped"
                );
            }
        }
        false
    }

    fn flush_udp(&mut self) {
        if self.udp_tx.is_empty() {
            return;
        }
        if let Some(sock) = &self.udp {
            match send_batch(sock, &mut self.udp_tx) {
                Ok(o) if o.would_block => {
                    // Late audio is useless: drop what the kernel would not take.
                    self.stats.rtp_out += o.sent as u64;
                    self.udp_tx.clear();
                }
                Ok(o) => self.stats.rtp_out += o.sent as u64,
                Err(e) => {
                    tracing::warn!(shard = self.spec.index, error = %e, "RTP send failed");
                    self.udp_tx.clear();
                }
            }
        } else {
            self.udp_tx.clear();
        }
    }

    // ---- bridge, timers, outputs ------------------------------------------------

    fn drain_bridge(&mut self, now: u64) {
        while let Some(msg) = self.bridge.pop() {
            let (call, input) = match &msg {
                ToShard::AgentAudio { call, chunk } => (
                    *call,
                    Some(Input::ProviderAudio {
                        payload: chunk.as_slice(),
                    }),
                ),
                ToShard::AgentAudioDone { call } => (*call, Some(Input::ProviderAudioDone)),
                ToShard::SpeechStarted { call, at_ms } => (
                    *call,
                    Some(Input::ProviderSpeechStarted {
                        at_ms: (*at_ms).min(now),
                    }),
                ),
                ToShard::Template(t) => {
                    let keep = self.spec.call_template;
                    self.spec.call_template = crate::call::CallConfig {
                        caller: keep.caller,
                        provider: keep.provider,
                        provider_out: keep.provider_out,
                        ..*t
                    };
                    continue;
                }
                ToShard::ProviderCodecs {
                    call,
                    input,
                    output,
                } => {
                    if self.is_current(*call) {
                        if let Some(live) = self.slots[call.slot() as usize].live.as_mut() {
                            live.call.set_provider_codecs(*input, *output);
                        }
                    }
                    (*call, None)
                }
                ToShard::Hangup { call, reason } => {
                    if self.is_current(*call) {
                        self.end_call(call.slot(), *reason);
                    }
                    (*call, None)
                }
            };
            let Some(input) = input else { continue };
            if !self.is_current(call) {
                continue; // a message for a call that already ended
            }
            let slot = call.slot();
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                continue;
            };
            let given = match input {
                Input::ProviderAudio { payload } => {
                    live.call.provider_audio_arrived(now);
                    payload.len()
                }
                _ => 0,
            };
            if let Ok(taken) = live.call.handle_input(input) {
                if taken < given {
                    self.stats.agent_audio_dropped += (given - taken) as u64;
                }
            }
            self.flush_outputs(slot);
        }
    }

    fn is_current(&self, call: CallKey) -> bool {
        call.shard() == self.spec.index
            && (call.slot() as usize) < self.slots.len()
            && self.slots[call.slot() as usize].generation == call.generation()
            && self.slots[call.slot() as usize].live.is_some()
    }

    fn expire_timers(&mut self, now: u64) {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.timer.expire(now, &mut expired);
        for &slot in &expired {
            let idle = match self.slots[slot as usize]
                .live
                .as_mut()
                .map(|l| &mut l.media)
            {
                Some(Media::Rtp { last_rx_ms, .. }) => {
                    now.saturating_sub(*last_rx_ms) > self.spec.rtp_idle_timeout_ms
                }
                Some(Media::AudioSocket {
                    last_rx_ms, conn, ..
                }) => {
                    let late = now.saturating_sub(*last_rx_ms);
                    let over = late > self.spec.audiosocket_read_timeout_ms;
                    if over {
                        self.stats.read_timeouts += 1;
                        if let Some(more) = self.log_read_timeout.allow(now) {
                            let partial = conn.rx().len();
                            // (Before the UUID a connection is pending: `sweep_pending`.)
                            let state = if partial == 0 {
                                "no frame since the last one"
                            } else {
                                "a partial frame, then nothing"
                            };
                            tracing::warn!(
                                shard = self.spec.index,
                                call = %self.key(slot),
                                state,
                                partial_bytes = partial,
                                silent_ms = late,
                                read_timeout_ms = self.spec.audiosocket_read_timeout_ms,
                                not_logged = more,
                                "AudioSocket read deadline passed (audiosocket.read_timeout_ms); closing that connection"
                            );
                        }
                    }
                    over
                }
                None => continue,
            };
            if idle {
                self.end_call(slot, EndReason::IdleTimeout);
                continue;
            }
            if let Some(live) = self.slots[slot as usize].live.as_mut() {
                let _ = live.call.handle_input(Input::Tick { at_ms: now });
                self.latency.record(live.call.take_latency_samples());
            }
            self.flush_outputs(slot);
        }
        self.expired = expired;
    }

    /// Do what the call asks: send frames, forward to the provider, re-arm the timer.
    fn flush_outputs(&mut self, slot: u32) {
        let key = self.key(slot);
        let mut tcp_dirty = false;
        let mut end: Option<EndReason> = None;
        {
            let Some(live) = self.slots[slot as usize].live.as_mut() else {
                return;
            };
            // AudioSocket calls send nothing before the UUID arrived.
            let as_started = match &live.media {
                Media::AudioSocket { started, .. } => *started,
                Media::Rtp { .. } => true,
            };
            while let Some(out) = live.call.poll_output() {
                match out {
                    Output::SendToCaller { payload, marker } => {
                        if !as_started {
                            continue;
                        }
                        self.stats.frames_out += 1;
                        match &mut live.media {
                            Media::AudioSocket { conn, tx, .. } => {
                                if conn.encode_audio(payload, tx).is_err() {
                                    end = Some(EndReason::ProtocolError);
                                }
                                tcp_dirty = true;
                            }
                            Media::Rtp { peer, sender, .. } => {
                                let h = sender.next_header(marker);
                                let pkt = &mut self.rtp_out;
                                if let Ok(n) = rtp::build(&h, payload, pkt) {
                                    if !self.udp_tx.push(&pkt[..n], *peer) {
                                        if let Some(sock) = &self.udp {
                                            let _ = send_batch(sock, &mut self.udp_tx);
                                        }
                                        self.udp_tx.clear();
                                        self.udp_tx.push(&pkt[..n], *peer);
                                    }
                                }
                            }
                        }
                    }
                    Output::SendToProvider(bytes) => {
                        for part in bytes.chunks(CHUNK_BYTES) {
                            if let Some(chunk) = AudioChunk::from_slice(part) {
                                self.bridge.push(ToControl::CallerAudio {
                                    call: key,
                                    chunk,
                                    at: self.turn_at,
                                });
                            }
                        }
                    }
                    Output::BargeIn { played_ms, source } => {
                        self.bridge.push(ToControl::BargeIn {
                            call: key,
                            played_ms,
                            from_provider: source == crate::call::BargeInSource::Provider,
                        });
                    }
                    Output::WakeAt(t) => self.timer.schedule(slot, t),
                }
            }
            // Return playout credit to the control side.
            let played = live.call.stats().playout.frames_played;
            let unreported_ms =
                (played - live.played_frames_reported) as u32 * crate::media::FRAME_MS;
            if unreported_ms >= PLAYED_REPORT_MS
                || (unreported_ms > 0 && !live.call.agent_speaking())
            {
                live.played_frames_reported = played;
                self.bridge.push(ToControl::Played {
                    call: key,
                    ms: unreported_ms,
                });
            }
        }
        if tcp_dirty {
            self.flush_tcp(slot);
        }
        if let Some(reason) = end {
            self.end_call(slot, reason);
        }
    }
}
