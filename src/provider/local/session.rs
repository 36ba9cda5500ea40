//! One `local-ai-server` session: the task that carries one call.
//!
//! Owns: the connection (`connect_timeout_ms`), the optional `auth` exchange
//! (caller audio is held until `auth_response` says `ok`, at most
//! [`HOLD_MAX_BYTES`], oldest dropped and counted), the per-call set-up (the
//! agent's prompt as a session-scoped `switch_model`; on a call's first session the
//! agent's greeting as a `tts_request`), the batching of caller audio into `audio`
//! messages of exactly `chunk_ms`, and one `tokio::select!` loop over the socket,
//! the caller events, the writer and a timer (auth deadline, write stall).
//!
//! Event mapping: `stt_result` -> [`AgentEvent::Transcript`] of the caller
//! (partial or final as flagged; one with `error` also ->
//! [`AgentEvent::Error`]); `llm_response` -> final agent transcript; `tts_audio`
//! metadata + the binary message after it -> [`AgentEvent::Audio`] in slin16
//! (converted from what the metadata says; a binary message without metadata is
//! taken as the server's legacy mu-law 8 kHz); the end of an utterance (a
//! single-blob reply, or the chunk with `is_final: true`) ->
//! [`AgentEvent::AudioDone`] + [`AgentEvent::ResponseDone`]; `tts_response` (the
//! greeting) -> agent transcript, audio, end of utterance. A text message that is
//! not JSON with a `type`, or more than [`MAX_PENDING_META`] `tts_audio` without
//! their audio, ends the session with [`ProviderError::Protocol`]; unknown types
//! are counted and ignored. The server sends no error messages of its own beyond
//! `auth_response` refusals, which end the session as connect failures.
//!
//! Barge-in: [`CallerEvent::BargeIn`] sends `barge_in` (the server cancels the
//! running reply) and ends the current reply at once ([`AgentEvent::ResponseDone`]);
//! reply audio is dropped until the matching `barge_in_ack`, or, from a server too
//! old to answer, until the next final caller transcript (the reply after it is a
//! new one).
//!
//! Reconnects: the server keeps its conversation per connection and has no way to
//! load a history, so a reconnecting session (`meta.attempt > 0`) starts a fresh
//! conversation (with the agent's prompt, without the greeting).
//!
//! Back-pressure as in the Deepgram session: caller events are pulled only while
//! the writer is idle, and writes that make no progress for
//! [`LocalConfig::write_stall`] end the session with a timeout.
//!
//! Must not: log the auth token, send audio before a required `auth_response`, or
//! block the runtime. No keepalive is sent: the protocol has none (the server pings
//! every 60 s and tungstenite answers).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::convert::{OutputConverter, SourceFormat};
use super::messages::{self, ServerMsg, TtsMeta};
use super::{LocalConfig, LocalStats, NAME};
use crate::provider::link::{
    clip, incoming, ws_error, HoldBuffer, Incoming, Liveness, Writer, MAX_QUEUED,
};
use crate::provider::net::{self, WsStream};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, ProviderError, Role, SessionEnd, SessionIo, SessionMeta,
};

/// Most caller audio held before `auth_response`: 1 s of slin16.
pub const HOLD_MAX_BYTES: usize = 32_000;

/// Most `tts_audio` metadata messages waiting for their binary audio.
pub const MAX_PENDING_META: usize = 16;

/// How long a session waits for its close frame to be written at the end.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Longest server text put into logs and errors.
const MAX_TEXT: usize = 300;

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

fn stopped_reading() -> SessionEnd {
    protocol(format!(
        "the server stopped reading ({MAX_QUEUED} messages queued)"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `auth` sent, waiting for `auth_response`.
    Auth,
    /// Audio flows.
    Live,
}

/// Runs one call's session to its end (the future of
/// [`LocalProvider::session`](super::LocalProvider)).
pub async fn run(
    cfg: Arc<LocalConfig>,
    stats: Arc<LocalStats>,
    meta: SessionMeta,
    mut io: SessionIo,
) -> SessionEnd {
    add(&stats.sessions, 1);
    tracing::debug!(
        call_id = meta.call_id,
        attempt = meta.attempt,
        "local session starting"
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
    let mut s = Session {
        call_id: meta.call_id.to_string(),
        batch: Vec::with_capacity(cfg.chunk_bytes),
        batch_since: None,
        deadline: Instant::now() + cfg.connect_timeout,
        live: Liveness::new(cfg.read_timeout),
        cfg,
        stats,
        meta,
        writer: Writer::new(sink).with_latency(io.latency.clone()),
        io,
        stream,
        held,
        phase: Phase::Auth,
        pending: VecDeque::new(),
        conv: OutputConverter::new(),
        in_reply: false,
        dropping: None,
        barge_seq: 0,
        warned_no_meta: false,
    };
    let mut end = s.open().await.err();
    if end.is_none() {
        end = Some(s.run_loop().await);
    }
    let end = end.unwrap_or_else(|| SessionEnd::new(EndReason::ChannelClosed));
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
            "local session failed"
        ),
        None => tracing::debug!(
            call_id = meta.call_id,
            reason = end.reason.as_str(),
            "local session ended"
        ),
    }
}

async fn connect(
    cfg: &LocalConfig,
    stats: &LocalStats,
    io: &mut SessionIo,
    held: &mut HoldBuffer,
) -> Result<WsStream, SessionEnd> {
    let fut = net::connect(NAME, &cfg.base_url, &[], cfg.connect_timeout);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r.map_err(SessionEnd::failed),
            ev = io.events.recv() => hold_event(ev, held, stats)?,
        }
    }
}

fn hold_event(ev: Option<CallerEvent>, held: &mut HoldBuffer, stats: &LocalStats) -> Step {
    match ev {
        None => Err(SessionEnd::new(EndReason::ChannelClosed)),
        Some(CallerEvent::Hangup) => Err(SessionEnd::new(EndReason::CallerHangup)),
        Some(CallerEvent::Audio(frame, _)) => {
            // Held until auth_response on purpose: not a write latency sample.
            add(&stats.held_dropped_bytes, held.push(frame));
            Ok(())
        }
        Some(CallerEvent::Dtmf(_)) | Some(CallerEvent::BargeIn { .. }) => Ok(()),
    }
}

struct Session {
    cfg: Arc<LocalConfig>,
    stats: Arc<LocalStats>,
    meta: SessionMeta,
    /// `meta.call_id` as the protocol's string.
    call_id: String,
    io: SessionIo,
    stream: SplitStream<WsStream>,
    writer: Writer,
    held: HoldBuffer,
    phase: Phase,
    /// Read deadline of the socket (pings, `read_timeout_ms`).
    live: Liveness,
    /// End of the wait for `auth_response`.
    deadline: Instant,
    /// Caller audio not yet sent (less than one chunk once sent out).
    batch: Vec<u8>,
    /// Arrival of the oldest caller frame in `batch`.
    batch_since: Option<std::time::Instant>,
    /// `tts_audio` metadata waiting for its binary message.
    pending: VecDeque<TtsMeta>,
    conv: OutputConverter,
    /// Audio of the current reply has been passed on.
    in_reply: bool,
    /// The `request_id` of the `barge_in` whose ack ends the dropping of reply
    /// audio.
    dropping: Option<String>,
    barge_seq: u64,
    warned_no_meta: bool,
}

impl Session {
    /// Sends `auth` when a token is configured, else starts the call.
    async fn open(&mut self) -> Step {
        match self.cfg.auth_token.expose() {
            Some(token) => {
                let msg = messages::auth(token, &self.call_id);
                self.send(Message::Text(msg)).await
            }
            None => self.go_live().await,
        }
    }

    /// Audio may flow: set up the call, then send the held audio.
    async fn go_live(&mut self) -> Step {
        self.phase = Phase::Live;
        let agent = self
            .meta
            .agent
            .as_deref()
            .and_then(|a| self.cfg.agents.get(a.trim()));
        let prompt = agent
            .and_then(|a| a.prompt.as_deref())
            .filter(|p| !p.trim().is_empty());
        if let Some(p) = prompt {
            let id = format!("prompt-{}", self.call_id);
            let msg = messages::system_prompt(p, &self.call_id, &id);
            self.writer
                .push(Message::Text(msg))
                .map_err(|_| stopped_reading())?;
        }
        let greeting = agent
            .and_then(|a| a.greeting.as_deref())
            .filter(|g| !g.trim().is_empty() && self.meta.attempt == 0);
        if let Some(g) = greeting {
            let id = format!("greeting-{}", self.call_id);
            let msg = messages::tts_request(g, &self.call_id, &id);
            self.writer
                .push(Message::Text(msg))
                .map_err(|_| stopped_reading())?;
        }
        let mut held = std::mem::replace(&mut self.held, HoldBuffer::new(0));
        for frame in held.drain() {
            self.batch.extend_from_slice(&frame);
        }
        self.queue_full_chunks()?;
        self.kick().await
    }

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
            let timer_at = if live {
                busy_since.map(|t| t + self.cfg.write_stall)
            } else {
                Some(self.deadline)
            };
            let far = Instant::now() + Duration::from_secs(3600);
            let live_at = self.live.next_at();
            let step = tokio::select! {
                msg = self.stream.next() => self.on_socket(msg).await,
                () = sleep_until(live_at) => self.on_live().await,
                r = self.writer.drive(), if self.writer.busy() => {
                    r.map_err(|e| SessionEnd::failed(ws_error(NAME, &e)))
                }
                ev = self.io.events.recv(), if take_events => self.on_caller(ev).await,
                () = sleep_until(timer_at.unwrap_or(far)), if timer_at.is_some() => {
                    Err(SessionEnd::failed(ProviderError::Timeout {
                        name: NAME.into(),
                        what: if live {
                            format!(
                                "the server to read (writes stalled for {} ms)",
                                self.cfg.write_stall.as_millis()
                            )
                        } else {
                            format!("auth_response ({} ms)", self.cfg.connect_timeout.as_millis())
                        },
                    }))
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send(&mut self, msg: Message) -> Step {
        self.writer.push(msg).map_err(|_| stopped_reading())?;
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

    /// Queues one `audio` message per whole chunk in the batch.
    fn queue_full_chunks(&mut self) -> Step {
        let chunk = self.cfg.chunk_bytes.max(2);
        let mut start = 0;
        while self.batch.len() - start >= chunk {
            let msg = messages::audio(&self.batch[start..start + chunk], &self.call_id);
            self.writer
                .push(Message::Text(msg))
                .map_err(|_| stopped_reading())?;
            add(&self.stats.audio_messages_sent, 1);
            add(&self.stats.audio_sent_bytes, chunk);
            start += chunk;
        }
        self.batch.drain(..start);
        Ok(())
    }

    async fn on_caller(&mut self, ev: Option<CallerEvent>) -> Step {
        if self.phase != Phase::Live {
            return hold_event(ev, &mut self.held, &self.stats);
        }
        match ev {
            None => Err(SessionEnd::new(EndReason::ChannelClosed)),
            Some(CallerEvent::Hangup) => Err(SessionEnd::new(EndReason::CallerHangup)),
            Some(CallerEvent::Audio(frame, at)) => {
                self.batch_since.get_or_insert(at);
                self.batch.extend_from_slice(&frame);
                let before = self.batch.len();
                self.queue_full_chunks()?;
                if self.batch.len() < before {
                    // Chunks went to the writer: they carry the oldest frame.
                    if let Some(since) = self.batch_since.take() {
                        self.writer.carries(since);
                    }
                    if !self.batch.is_empty() {
                        self.batch_since = Some(at);
                    }
                }
                self.kick().await
            }
            Some(CallerEvent::Dtmf(digit)) => {
                tracing::trace!(call_id = self.meta.call_id, %digit, "local: DTMF not sent");
                Ok(())
            }
            Some(CallerEvent::BargeIn { played_ms }) => {
                self.barge_seq += 1;
                let id = format!("barge-{}-{}", self.call_id, self.barge_seq);
                add(&self.stats.barge_ins, 1);
                tracing::debug!(
                    call_id = self.meta.call_id,
                    played_ms,
                    "local: barge-in, cancelling the reply"
                );
                let msg = messages::barge_in(&self.call_id, &id);
                self.dropping = Some(id);
                self.send(Message::Text(msg)).await?;
                self.conv.end_utterance();
                if std::mem::take(&mut self.in_reply) {
                    self.emit(AgentEvent::ResponseDone).await?;
                }
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
            Incoming::Binary(audio) => self.on_binary(audio).await,
            Incoming::Nothing => Ok(()),
        }
    }

    async fn on_binary(&mut self, audio: Vec<u8>) -> Step {
        let meta = match self.pending.pop_front() {
            Some(m) => m,
            None => {
                if !std::mem::replace(&mut self.warned_no_meta, true) {
                    tracing::debug!(
                        call_id = self.meta.call_id,
                        "local: audio without tts_audio metadata, taken as mu-law 8 kHz"
                    );
                }
                TtsMeta::default()
            }
        };
        if meta.byte_length.is_some_and(|n| n != audio.len() as u64) {
            add(&self.stats.length_mismatches, 1);
        }
        let last = meta.is_final != Some(false);
        self.play(audio, &meta).await?;
        if last {
            self.end_of_reply().await?;
        }
        Ok(())
    }

    /// Passes reply audio on as slin16 (unless a barge-in cut the reply).
    async fn play(&mut self, audio: Vec<u8>, meta: &TtsMeta) -> Step {
        if audio.is_empty() {
            return Ok(());
        }
        if self.dropping.is_some() {
            add(&self.stats.audio_dropped_bytes, audio.len());
            return Ok(());
        }
        add(&self.stats.audio_received_bytes, audio.len());
        // No metadata (encoding "" and rate 0) parses as the legacy mu-law 8 kHz.
        let Some(fmt) = SourceFormat::parse(&meta.encoding, meta.sample_rate_hz) else {
            add(&self.stats.audio_unplayable, 1);
            let message = format!(
                "reply audio in a format voxd cannot play: `{}` at {} Hz (dropped)",
                clip(&meta.encoding, 32),
                meta.sample_rate_hz
            );
            return self
                .emit(AgentEvent::Error {
                    error: ProviderError::Protocol {
                        name: NAME.into(),
                        message,
                    },
                })
                .await;
        };
        let pcm = self.conv.convert(fmt, audio);
        if pcm.is_empty() {
            return Ok(());
        }
        self.in_reply = true;
        self.emit(AgentEvent::Audio(pcm)).await
    }

    /// The utterance is complete: `AudioDone` + `ResponseDone` if any of it played.
    async fn end_of_reply(&mut self) -> Step {
        self.conv.end_utterance();
        if std::mem::take(&mut self.in_reply) {
            self.emit(AgentEvent::AudioDone).await?;
            self.emit(AgentEvent::ResponseDone).await?;
        }
        Ok(())
    }

    fn refused(&self, message: &str) -> SessionEnd {
        let hint = if self.cfg.auth_token.expose().is_none() {
            " (the server wants a token: set LOCAL_AI_AUTH_TOKEN)"
        } else {
            ""
        };
        SessionEnd::failed(ProviderError::Connect {
            name: NAME.into(),
            message: format!(
                "the server refused the session: {}{hint}",
                clip(message, MAX_TEXT)
            ),
        })
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let msg = messages::parse(text).map_err(|e| protocol(e.to_string()))?;
        match msg {
            ServerMsg::AuthResponse { ok, message } => {
                if !ok {
                    if self.phase == Phase::Live {
                        // Counted here: the end-of-session rule only counts
                        // failures before Live.
                        add(&self.stats.connect_failures, 1);
                    }
                    return Err(self.refused(&message));
                }
                if self.phase == Phase::Auth {
                    self.go_live().await?;
                }
                Ok(())
            }
            ServerMsg::SttResult {
                text,
                is_final,
                error,
            } => {
                if let Some(code) = error {
                    add(&self.stats.errors, 1);
                    self.emit(AgentEvent::Error {
                        error: ProviderError::Remote {
                            name: NAME.into(),
                            code: clip(&code, 64).to_string(),
                            message: "the server's speech-to-text failed".into(),
                        },
                    })
                    .await?;
                }
                if is_final && self.dropping.is_some() {
                    // A server that never acks barge_in: the caller's new turn is
                    // complete, what follows is the reply to it.
                    self.dropping = None;
                }
                if text.trim().is_empty() {
                    return Ok(());
                }
                self.emit(AgentEvent::Transcript {
                    role: Role::User,
                    text,
                    is_final,
                })
                .await
            }
            ServerMsg::LlmResponse { text } => {
                if text.trim().is_empty() {
                    return Ok(());
                }
                self.emit(AgentEvent::Transcript {
                    role: Role::Agent,
                    text,
                    is_final: true,
                })
                .await
            }
            ServerMsg::TtsAudio(meta) => {
                if meta.byte_length == Some(0) {
                    // No binary follows; a zero-length last chunk ends the utterance.
                    if meta.is_final == Some(true) {
                        self.end_of_reply().await?;
                    }
                    return Ok(());
                }
                if self.pending.len() >= MAX_PENDING_META {
                    return Err(protocol(format!(
                        "{MAX_PENDING_META} tts_audio messages without their audio"
                    )));
                }
                self.pending.push_back(meta);
                Ok(())
            }
            ServerMsg::TtsResponse { text, audio, meta } => {
                if self.dropping.is_some() {
                    add(&self.stats.audio_dropped_bytes, audio.len());
                    return Ok(());
                }
                if !text.trim().is_empty() {
                    self.emit(AgentEvent::Transcript {
                        role: Role::Agent,
                        text,
                        is_final: true,
                    })
                    .await?;
                }
                self.play(audio, &meta).await?;
                self.end_of_reply().await
            }
            ServerMsg::BargeInAck { request_id } => {
                let matches = match (&request_id, &self.dropping) {
                    (Some(got), Some(want)) => got == want,
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if matches {
                    self.dropping = None;
                }
                Ok(())
            }
            ServerMsg::SwitchResponse { status, message } => {
                match status.as_str() {
                    "success" => {
                        tracing::debug!(call_id = self.meta.call_id, "local: agent prompt applied")
                    }
                    "no_change" => tracing::warn!(
                        call_id = self.meta.call_id,
                        "local: the server did not apply the agent prompt (no session-scoped \
                         prompts in this server version)"
                    ),
                    _ => {
                        add(&self.stats.errors, 1);
                        tracing::warn!(
                            call_id = self.meta.call_id,
                            status = clip(&status, 32),
                            message = clip(&message, MAX_TEXT),
                            "local: the server refused the agent prompt"
                        );
                    }
                }
                Ok(())
            }
            ServerMsg::Ignored(kind) => {
                tracing::trace!(
                    call_id = self.meta.call_id,
                    kind = kind.as_str(),
                    "local message ignored"
                );
                Ok(())
            }
            ServerMsg::Unknown(kind) => {
                add(&self.stats.unknown_messages, 1);
                tracing::debug!(
                    call_id = self.meta.call_id,
                    kind = clip(&kind, 64),
                    "local message of unknown type ignored"
                );
                Ok(())
            }
        }
    }
}
