//! One Deepgram Voice Agent session: the task that carries one call.
//!
//! Owns: the connection (`Authorization: Token <key>`, `connect_timeout_ms`), the
//! opening sequence (wait for `Welcome`, send `Settings`, wait for
//! `SettingsApplied`, each within `connect_timeout_ms`), the caller audio held
//! until `SettingsApplied` (at most [`HOLD_MAX_BYTES`], oldest dropped and
//! counted), and then one `tokio::select!` loop over the socket, the caller events,
//! the writer and a timer (handshake deadline, then `KeepAlive` after
//! `keepalive_ms` without audio to Deepgram).
//!
//! Event mapping: binary frames both ways (mu-law 8 kHz); `ConversationText` ->
//! final [`AgentEvent::Transcript`]; `UserStartedSpeaking` ->
//! [`AgentEvent::SpeechStarted`] only while agent audio is playing or queued at the
//! caller (estimated from the audio passed on: each chunk extends the playing time
//! by its duration, plus [`PLAYOUT_SLACK`] for the playout's start buffer);
//! `AgentAudioDone` -> [`AgentEvent::AudioDone`] + [`AgentEvent::ResponseDone`]
//! (only `ResponseDone` for a reply cut by a barge-in); `Warning` -> log + count;
//! `Error` -> the session ends with [`ProviderError::Remote`]; a text message that
//! is not JSON with a `type` -> [`ProviderError::Protocol`]; unknown types are
//! counted and ignored. `FunctionCallRequest`: voxd declares no functions, so each
//! client-side call is answered at once with a `FunctionCallResponse` whose content
//! is an error, letting the agent go on (server-side calls are Deepgram's own
//! business and ignored). DTMF is not sent (the v1 API has no DTMF input).
//!
//! Barge-in: Deepgram stops its own reply when its VAD hears the caller, so
//! [`CallerEvent::BargeIn`] sends nothing; the session only stops passing on the
//! rest of the current reply's audio until the next agent turn starts
//! (`AgentStartedSpeaking` or `AgentThinking`, or the caller's own
//! `ConversationText`, which ends the interrupting turn).
//!
//! Reconnects: the glue starts a new session with `attempt = 1` and the transcript
//! so far; [`super::messages::settings`] passes it as `agent.context.messages` and
//! drops the greeting.
//!
//! Back-pressure: caller events are pulled only while the writer is idle
//! ([`Writer::idle`]); a provider that stops reading makes the session stop taking
//! caller audio (the glue's bounded channel drops it), and the socket's own write
//! buffer is bounded (`provider::net`). A write that makes no progress for
//! [`DgConfig::write_stall`] ends the session with [`ProviderError::Timeout`] (a
//! session that cannot write cannot see the caller's hang-up either, so it must
//! not wait forever). Agent events wait for room in the bounded `io.out` channel.
//!
//! Must not: log the API key, send audio before `SettingsApplied`, or block the
//! runtime.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::messages::{self, ServerMsg};
use super::{DeepgramStats, DgConfig, NAME};
use crate::provider::link::{
    clip, incoming, ws_error, HoldBuffer, Incoming, Liveness, Writer, MAX_QUEUED,
};
use crate::provider::net::{self, WsStream};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, ProviderError, Role, SessionEnd, SessionIo, SessionMeta,
};

/// Most caller audio held before `SettingsApplied`: 1 s of mu-law 8 kHz.
pub const HOLD_MAX_BYTES: usize = 8000;

/// Added to the estimated end of the agent audio passed on when deciding whether
/// `UserStartedSpeaking` interrupts it: covers the playout's start buffer and
/// pacing jitter at the caller side.
pub const PLAYOUT_SLACK: Duration = Duration::from_millis(500);

/// How long a session waits for its close frame to be written at the end.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Longest provider text (error descriptions, codes) put into logs and errors.
const MAX_TEXT: usize = 500;

/// How a handler tells the loop to go on (`Ok`) or end the session.
type Step = Result<(), SessionEnd>;

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn protocol(message: impl Into<String>) -> SessionEnd {
    SessionEnd::failed(ProviderError::Protocol {
        name: NAME.into(),
        message: message.into(),
    })
}

/// Where the opening sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected, waiting for `Welcome`.
    Welcome,
    /// `Settings` sent, waiting for `SettingsApplied`.
    Applied,
    /// Audio flows.
    Live,
}

/// Runs one call's session to its end (the future of
/// [`DeepgramProvider::session`](super::DeepgramProvider)).
pub async fn run(
    cfg: Arc<DgConfig>,
    stats: Arc<DeepgramStats>,
    meta: SessionMeta,
    mut io: SessionIo,
) -> SessionEnd {
    add(&stats.sessions, 1);
    tracing::debug!(
        call_id = meta.call_id,
        attempt = meta.attempt,
        "deepgram session starting"
    );
    let mut held = HoldBuffer::new(HOLD_MAX_BYTES);
    let ws = match connect(&cfg, &stats, &mut io, &mut held).await {
        Ok(ws) => ws,
        Err(end) => {
            if end.reason == EndReason::Error {
                add(&stats.connect_failures, 1);
            }
            log_end(&meta, &end);
            return end;
        }
    };
    let (sink, stream) = ws.split();
    let now = Instant::now();
    let cfg_read_timeout = cfg.read_timeout;
    let mut s = Session {
        deadline: now + cfg.connect_timeout,
        cfg,
        stats,
        meta,
        writer: Writer::new(sink).with_latency(io.latency.clone()),
        io,
        stream,
        held,
        phase: Phase::Welcome,
        live: Liveness::new(cfg_read_timeout),
        last_sent: now,
        playing_until: None,
        dropping: false,
        provider_barge_in: false,
    };
    let end = s.run_loop().await;
    if end.reason == EndReason::Error && s.phase != Phase::Live {
        add(&s.stats.connect_failures, 1);
    }
    log_end(&s.meta, &end);
    s.writer.close(CLOSE_LIMIT).await;
    end
}

fn log_end(meta: &SessionMeta, end: &SessionEnd) {
    match &end.error {
        Some(e) => tracing::warn!(
            call_id = meta.call_id,
            error = %e,
            fault = e.fault().as_str(),
            "deepgram session failed"
        ),
        None => tracing::debug!(
            call_id = meta.call_id,
            reason = end.reason.as_str(),
            "deepgram session ended"
        ),
    }
}

/// Opens the socket while still taking caller events (audio is held, a hang-up
/// ends the attempt).
async fn connect(
    cfg: &DgConfig,
    stats: &DeepgramStats,
    io: &mut SessionIo,
    held: &mut HoldBuffer,
) -> Result<WsStream, SessionEnd> {
    let key = cfg.api_key.expose().unwrap_or_default();
    let headers = [("Authorization", format!("Token {key}"))];
    let fut = net::connect(NAME, &cfg.base_url, &headers, cfg.connect_timeout);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r.map_err(SessionEnd::failed),
            ev = io.events.recv() => hold_event(ev, held, stats)?,
        }
    }
}

/// A caller event before audio may flow: audio is held, a hang-up or a closed
/// channel ends the session, the rest has nothing to act on yet.
fn hold_event(ev: Option<CallerEvent>, held: &mut HoldBuffer, stats: &DeepgramStats) -> Step {
    match ev {
        None => Err(SessionEnd::new(EndReason::ChannelClosed)),
        Some(CallerEvent::Hangup) => Err(SessionEnd::new(EndReason::CallerHangup)),
        Some(CallerEvent::Audio(frame, _)) => {
            // Held until SettingsApplied on purpose: not a write latency sample.
            add(&stats.held_dropped_bytes, held.push(frame));
            Ok(())
        }
        Some(CallerEvent::Dtmf(_)) | Some(CallerEvent::BargeIn { .. }) => Ok(()),
    }
}

/// The state of a connected session.
struct Session {
    cfg: Arc<DgConfig>,
    stats: Arc<DeepgramStats>,
    meta: SessionMeta,
    io: SessionIo,
    stream: SplitStream<WsStream>,
    writer: Writer,
    held: HoldBuffer,
    phase: Phase,
    /// Read deadline of the socket (pings, `read_timeout_ms`).
    live: Liveness,
    /// End of the current handshake step.
    deadline: Instant,
    /// When audio (or a `KeepAlive`) last went to Deepgram.
    last_sent: Instant,
    /// Estimated end of the agent audio passed on so far.
    playing_until: Option<Instant>,
    /// Dropping the rest of a reply cut by a barge-in.
    dropping: bool,
    /// A `SpeechStarted` was sent; the glue's `BargeIn` that follows is the same
    /// barge-in (not counted twice).
    provider_barge_in: bool,
}

impl Session {
    async fn run_loop(&mut self) -> SessionEnd {
        let mut busy_since: Option<Instant> = None;
        loop {
            let live = self.phase == Phase::Live;
            let take_events = !live || self.writer.idle();
            if self.writer.idle() {
                busy_since = None;
            } else if busy_since.is_none() {
                busy_since = Some(Instant::now());
            }
            let timer_at = match busy_since {
                _ if !live => self.deadline,
                Some(since) => since + self.cfg.write_stall,
                None => self.last_sent + self.cfg.keepalive,
            };
            let live_at = self.live.next_at();
            let step = tokio::select! {
                msg = self.stream.next() => self.on_socket(msg).await,
                () = sleep_until(live_at) => self.on_live().await,
                r = self.writer.drive(), if self.writer.busy() => {
                    r.map_err(|e| SessionEnd::failed(ws_error(NAME, &e)))
                }
                ev = self.io.events.recv(), if take_events => self.on_caller(ev).await,
                () = sleep_until(timer_at) => match busy_since {
                    Some(_) if live => Err(SessionEnd::failed(ProviderError::Timeout {
                        name: NAME.into(),
                        what: format!(
                            "the provider to read (writes stalled for {} ms)",
                            self.cfg.write_stall.as_millis()
                        ),
                    })),
                    _ => self.on_timer().await,
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Queues a message and writes what the socket takes now.
    async fn send(&mut self, msg: Message) -> Step {
        self.writer.push(msg).map_err(|_| {
            protocol(format!(
                "the provider stopped reading ({MAX_QUEUED} messages queued)"
            ))
        })?;
        self.kick().await
    }

    async fn kick(&mut self) -> Step {
        self.writer
            .kick()
            .await
            .map_err(|e| SessionEnd::failed(ws_error(NAME, &e)))
    }

    async fn emit(&mut self, ev: AgentEvent) -> Step {
        self.io
            .out
            .send(ev)
            .await
            .map_err(|_| SessionEnd::new(EndReason::ChannelClosed))
    }

    async fn on_timer(&mut self) -> Step {
        let what = match self.phase {
            Phase::Welcome => "Welcome",
            Phase::Applied => "SettingsApplied",
            Phase::Live => {
                add(&self.stats.keepalives_sent, 1);
                self.last_sent = Instant::now();
                return self.send(Message::Text(messages::KEEPALIVE.into())).await;
            }
        };
        Err(SessionEnd::failed(ProviderError::Timeout {
            name: NAME.into(),
            what: format!("{what} ({} ms)", self.cfg.connect_timeout.as_millis()),
        }))
    }

    async fn on_caller(&mut self, ev: Option<CallerEvent>) -> Step {
        if self.phase != Phase::Live {
            return hold_event(ev, &mut self.held, &self.stats);
        }
        match ev {
            None => Err(SessionEnd::new(EndReason::ChannelClosed)),
            Some(CallerEvent::Hangup) => Err(SessionEnd::new(EndReason::CallerHangup)),
            Some(CallerEvent::Audio(frame, at)) => {
                add(&self.stats.audio_sent_bytes, frame.len());
                self.last_sent = Instant::now();
                self.writer.carries(at);
                self.send(Message::Binary(frame.to_vec())).await
            }
            Some(CallerEvent::Dtmf(digit)) => {
                tracing::trace!(call_id = self.meta.call_id, %digit, "deepgram: DTMF not sent");
                Ok(())
            }
            Some(CallerEvent::BargeIn { played_ms }) => {
                if std::mem::take(&mut self.provider_barge_in) {
                    // The glue's echo of our own SpeechStarted: dropping started
                    // then, and a turn that began since must not be cut.
                    return Ok(());
                }
                add(&self.stats.barge_ins, 1);
                tracing::debug!(
                    call_id = self.meta.call_id,
                    played_ms,
                    "deepgram: barge-in, dropping the rest of the reply"
                );
                self.dropping = true;
                self.playing_until = None;
                Ok(())
            }
        }
    }

    /// The read deadline's timer: a ping, or the end of a provider that went
    /// silent (no message, no pong) for `read_timeout_ms`.
    async fn on_live(&mut self) -> Step {
        match self.live.due(NAME) {
            Ok(true) => self.send(Message::Ping(Vec::new())).await,
            Ok(false) => Ok(()),
            Err(e) => {
                tracing::warn!(call_id = self.meta.call_id, error = %e, "provider read deadline passed; ending the session");
                Err(SessionEnd::failed(e))
            }
        }
    }

    async fn on_socket(&mut self, msg: Option<Result<Message, WsError>>) -> Step {
        if matches!(msg, Some(Ok(_))) {
            self.live.heard();
        }
        match incoming(NAME, msg, &mut self.writer).map_err(SessionEnd::failed)? {
            Incoming::Text(text) => self.on_text(&text).await,
            Incoming::Binary(audio) => self.on_audio(audio).await,
            Incoming::Nothing => Ok(()),
        }
    }

    async fn on_audio(&mut self, audio: Vec<u8>) -> Step {
        if audio.is_empty() {
            return Ok(());
        }
        if self.dropping {
            add(&self.stats.audio_dropped_bytes, audio.len());
            return Ok(());
        }
        add(&self.stats.audio_received_bytes, audio.len());
        // Mu-law 8 kHz: one byte is 125 us of audio.
        let dur = Duration::from_micros(audio.len() as u64 * 125);
        let now = Instant::now();
        let from = self.playing_until.filter(|t| *t > now).unwrap_or(now);
        self.playing_until = Some(from + dur);
        self.emit(AgentEvent::Audio(Bytes::from(audio))).await
    }

    /// Whether agent audio passed on may still be playing or queued at the caller.
    fn playing(&self) -> bool {
        self.playing_until
            .is_some_and(|t| Instant::now() < t + PLAYOUT_SLACK)
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let msg = messages::parse(text).map_err(|e| protocol(e.to_string()))?;
        match msg {
            ServerMsg::Welcome => {
                if self.phase == Phase::Welcome {
                    let settings = messages::settings(&self.cfg, &self.meta).to_string();
                    self.phase = Phase::Applied;
                    self.deadline = Instant::now() + self.cfg.connect_timeout;
                    self.send(Message::Text(settings)).await?;
                }
                Ok(())
            }
            ServerMsg::SettingsApplied => {
                if self.phase == Phase::Applied {
                    self.phase = Phase::Live;
                    // The held audio goes out first, as one message (at most 1 s).
                    let mut audio = Vec::with_capacity(self.held.bytes());
                    for frame in self.held.drain() {
                        audio.extend_from_slice(&frame);
                    }
                    if !audio.is_empty() {
                        add(&self.stats.audio_sent_bytes, audio.len());
                        self.writer
                            .push(Message::Binary(audio))
                            .map_err(|_| protocol("the provider stopped reading"))?;
                    }
                    self.last_sent = Instant::now();
                    self.kick().await?;
                }
                Ok(())
            }
            ServerMsg::ConversationText { role, content } => {
                let role = match role.as_str() {
                    "user" => {
                        // The caller's turn is complete: Deepgram stopped the cut
                        // reply when the caller started, so later audio is new.
                        self.dropping = false;
                        Role::User
                    }
                    "assistant" | "agent" => Role::Agent,
                    other => {
                        tracing::debug!(
                            role = clip(other, 32),
                            "deepgram: ConversationText role ignored"
                        );
                        return Ok(());
                    }
                };
                self.emit(AgentEvent::Transcript {
                    role,
                    text: content,
                    is_final: true,
                })
                .await
            }
            ServerMsg::UserStartedSpeaking => {
                if self.playing() {
                    add(&self.stats.barge_ins, 1);
                    self.provider_barge_in = true;
                    self.dropping = true;
                    self.playing_until = None;
                    self.emit(AgentEvent::SpeechStarted).await?;
                }
                Ok(())
            }
            ServerMsg::AgentThinking => {
                add(&self.stats.agent_thinking, 1);
                self.dropping = false;
                Ok(())
            }
            ServerMsg::AgentStartedSpeaking {
                total_latency,
                tts_latency,
                ttt_latency,
            } => {
                add(&self.stats.agent_turns, 1);
                let ms = |s: Option<f64>| match s {
                    Some(s) if s.is_finite() && s > 0.0 => (s * 1000.0).round().min(1e9) as usize,
                    _ => 0,
                };
                add(&self.stats.total_latency_ms_sum, ms(total_latency));
                add(&self.stats.think_latency_ms_sum, ms(ttt_latency));
                add(&self.stats.tts_latency_ms_sum, ms(tts_latency));
                self.dropping = false;
                Ok(())
            }
            ServerMsg::AgentAudioDone => {
                if !self.dropping {
                    self.emit(AgentEvent::AudioDone).await?;
                }
                self.emit(AgentEvent::ResponseDone).await
            }
            ServerMsg::FunctionCallRequest { calls } => {
                for call in calls.iter().filter(|c| c.client_side) {
                    add(&self.stats.function_calls_refused, 1);
                    tracing::warn!(
                        call_id = self.meta.call_id,
                        function = clip(&call.name, 64),
                        "deepgram asked for a client-side function; answering with an error"
                    );
                    let reply = messages::function_call_response(&call.id, &call.name);
                    self.writer
                        .push(Message::Text(reply))
                        .map_err(|_| protocol("the provider stopped reading"))?;
                }
                self.kick().await
            }
            ServerMsg::Warning { code, description } => {
                add(&self.stats.warnings, 1);
                tracing::warn!(
                    call_id = self.meta.call_id,
                    code = clip(&code, 100),
                    description = clip(&description, MAX_TEXT),
                    "deepgram warning"
                );
                Ok(())
            }
            ServerMsg::Error { code, description } => {
                add(&self.stats.errors, 1);
                Err(SessionEnd::failed(ProviderError::Remote {
                    name: NAME.into(),
                    code: clip(&code, 100).to_string(),
                    message: clip(&description, MAX_TEXT).to_string(),
                }))
            }
            ServerMsg::Ignored(kind) => {
                tracing::trace!(
                    call_id = self.meta.call_id,
                    kind = kind.as_str(),
                    "deepgram message ignored"
                );
                Ok(())
            }
            ServerMsg::Unknown(kind) => {
                add(&self.stats.unknown_messages, 1);
                tracing::debug!(
                    call_id = self.meta.call_id,
                    kind = clip(&kind, 64),
                    "deepgram message of unknown type ignored"
                );
                Ok(())
            }
        }
    }
}
