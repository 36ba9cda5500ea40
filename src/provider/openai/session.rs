//! The session loop of one `openai_realtime` call: connect, wait for
//! `session.created`, configure the session, then move caller audio to the model
//! and the model's events to the call until hang-up or a fatal error.
//!
//! Owns: the connection's life (one WebSocket per session, closed with a normal
//! close frame on hang-up), the opening sequence (`session.update`, history replay
//! on a reconnect, the greeting on a first attempt, caller audio that arrived during
//! set-up), the mapping of server events to [`AgentEvent`]s, the fatal/non-fatal
//! split of `error` events, and back-pressure: the loop polls the socket and the
//! caller events in one `select!` and stops taking caller events while its last
//! write has not been flushed, so a provider that does not read cannot grow voxd's
//! memory (the glue drops and counts old audio instead).
//!
//! Time limits: `connect_timeout_ms` bounds the TCP + TLS + WebSocket handshake,
//! and the same amount again the wait for `session.created` (then
//! [`ProviderError::Timeout`]). A hang-up during either ends the session at once.
//!
//! DTMF: each key becomes a user text item `DTMF <key>` in the conversation
//! (`conversation.item.create`, no `response.create`): the model sees the keys at
//! its next turn, and a typed number does not start one reply per digit.
//!
//! Must not: log or return the API key or the `Authorization` header (server error
//! messages are scrubbed of anything that looks like a key), retry or reconnect
//! (the glue's policy), or block the runtime.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::events::{
    clip, parse_server_event, AppendBatcher, Audio, AudioInput, AudioOutput, ClientEvent, Format,
    MessageItem, Parsed, ResponseParams, ServerEvent, SessionConfig, Transcription, TurnDetection,
    HANDLED, IGNORED, SESSION_UPDATE_EVENT_ID,
};
use super::turn::Turn;
use super::{bytes_per_ms, codec_of, OpenAiStats, Settings, NAME};
use crate::media::slab::FrameSlab;
use crate::ops::latency::Stage;
use crate::provider::link::Liveness;
use crate::provider::net::{self, WsStream};
use crate::provider::{
    AgentEvent, CallerEvent, EndReason, ProviderError, Role, SessionEnd, SessionIo, SessionMeta,
};

/// Caller audio chunks kept while the session is being set up (1 s of 20 ms
/// frames); older chunks are dropped first. They are sent right after
/// `session.update`, so the caller's first words are not lost.
pub(super) const HANDSHAKE_AUDIO_CHUNKS: usize = 50;

/// Most recent transcript lines replayed on a reconnect.
pub(super) const HISTORY_MAX_LINES: usize = 64;

/// Caller audio chunks between two additions of the byte counters to the shared
/// stats (about one second).
const STATS_EVERY_CHUNKS: u32 = 50;

/// Time allowed for our close frame to go out on hang-up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of agent audio per output slab refill (seconds of G.711).
const OUT_SLAB_BYTES: usize = 32 * 1024;

fn protocol(message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol {
        name: NAME.to_string(),
        message: message.into(),
    }
}

fn connect_err(message: impl Into<String>) -> ProviderError {
    ProviderError::Connect {
        name: NAME.to_string(),
        message: message.into(),
    }
}

/// A provider message with the key and anything key-like (`sk-…`) masked, clipped.
pub(super) fn scrub(message: &str, key: Option<&str>) -> String {
    let mut m = message.to_string();
    if let Some(k) = key.filter(|k| k.len() >= 4) {
        m = m.replace(k, "***");
    }
    let mut out = String::with_capacity(m.len());
    let mut rest = m.as_str();
    while let Some(i) = rest.find("sk-") {
        out.push_str(&rest[..i]);
        out.push_str("sk-***");
        let tail = &rest[i + 3..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ')'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    clip(&out)
}

/// A transport error of an established connection as a session end.
fn lost(e: &WsError) -> ProviderError {
    match e {
        WsError::Capacity(c) => protocol(format!("message over the size limit: {c}")),
        WsError::Protocol(p) => protocol(format!("WebSocket protocol: {p}")),
        WsError::Utf8 => protocol("text message is not UTF-8"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            connect_err("the connection was closed")
        }
        WsError::Io(io) => connect_err(format!("connection lost: {io}")),
        other => connect_err(format!("connection lost: {other}")),
    }
}

/// A close frame (or end of stream) from the server as a session end.
fn closed_by_server(frame: Option<&CloseFrame<'_>>, during: &str) -> ProviderError {
    match frame {
        None => connect_err(format!("the server closed the connection {during}")),
        Some(f) => {
            let detail = format!(
                "the server closed the connection {during} (close code {}{}{})",
                u16::from(f.code),
                if f.reason.is_empty() { "" } else { ": " },
                clip(&f.reason)
            );
            match f.code {
                CloseCode::Protocol
                | CloseCode::Unsupported
                | CloseCode::Invalid
                | CloseCode::Policy
                | CloseCode::Size => protocol(detail),
                _ => connect_err(detail),
            }
        }
    }
}

/// Whether an `error` event ends the session: authentication and permission
/// errors, an expired session, a bad key, no quota, or a failed `session.update`
/// (the session would run with the wrong audio formats).
fn is_fatal(kind: Option<&str>, code: Option<&str>, event_id: Option<&str>) -> bool {
    matches!(
        kind,
        Some("authentication_error" | "permission_error" | "invalid_api_key")
    ) || matches!(
        code,
        Some(
            "session_expired"
                | "invalid_api_key"
                | "insufficient_quota"
                | "authentication_error"
                | "permission_denied"
        )
    ) || event_id == Some(SESSION_UPDATE_EVENT_ID)
}

/// Error codes that are expected races, not errors: a `response.cancel` that
/// arrived after the response ended.
fn is_benign(code: Option<&str>) -> bool {
    matches!(code, Some("response_cancel_not_active"))
}

/// What the call asked for after agent overrides: `agents.<AI_AGENT>` replaces
/// the provider's instructions, greeting and voice (an empty agent greeting turns
/// the greeting off).
#[derive(Debug)]
struct Plan<'a> {
    instructions: Option<&'a str>,
    voice: &'a str,
    greeting: Option<&'a str>,
}

impl<'a> Plan<'a> {
    fn new(s: &'a Settings, agent: Option<&str>) -> Plan<'a> {
        let a = agent.and_then(|name| s.agents.get(name));
        if let (Some(name), None) = (agent, a) {
            tracing::debug!(agent = name, "unknown agent; provider defaults apply");
        }
        let instructions = a
            .and_then(|a| a.prompt.as_deref())
            .unwrap_or(&s.instructions);
        Plan {
            instructions: Some(instructions).filter(|i| !i.is_empty()),
            voice: a
                .and_then(|a| a.voice.as_deref())
                .filter(|v| !v.trim().is_empty())
                .unwrap_or(&s.voice),
            greeting: a
                .and_then(|a| a.greeting.as_deref())
                .or(s.greeting.as_deref())
                .filter(|g| !g.trim().is_empty()),
        }
    }
}

/// Byte counters added to the shared stats in batches.
#[derive(Debug, Default)]
struct Counts {
    audio_in: u64,
    audio_out: u64,
    dropped: u64,
    chunks: u32,
}

/// What woke the loop.
enum Wake {
    /// The socket gave a message, an error, or ended.
    Net(Option<Result<Message, WsError>>),
    /// The pending writes were flushed (or failed).
    Flushed(Result<(), WsError>),
    /// A caller event, or `None` when the glue dropped the channel.
    Caller(Option<CallerEvent>),
    /// The read deadline's timer (ping, or nothing heard for too long).
    Live,
}

/// Outcome of handling one input inside the loop.
type Step = Result<(), SessionEnd>;

/// The state of one running session.
struct Session<'a> {
    s: &'a Settings,
    stats: &'a OpenAiStats,
    call_id: u64,
    out: mpsc::Sender<AgentEvent>,
    turn: Turn,
    batcher: AppendBatcher,
    /// Append messages produced by one push (reused).
    appends: Vec<String>,
    /// Decoded agent audio of one delta (reused).
    scratch: Vec<u8>,
    slab: FrameSlab,
    epoch: Instant,
    counts: Counts,
    /// "Caller frame -> provider write" stage of this call's shard.
    latency: Option<Arc<Stage>>,
    /// Arrival of the oldest caller frame in the batch not yet appended.
    batch_since: Option<std::time::Instant>,
    /// Arrival of the oldest caller frame appended but not yet flushed.
    unflushed_since: Option<std::time::Instant>,
}

/// Run one session to its end (the future behind [`Provider::session`]).
///
/// [`Provider::session`]: crate::provider::Provider::session
pub(super) async fn run(
    settings: Arc<Settings>,
    stats: Arc<OpenAiStats>,
    meta: SessionMeta,
    io: SessionIo,
) -> SessionEnd {
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let s = &*settings;
    let SessionIo {
        mut events,
        out,
        latency,
    } = io;
    let mut early = VecDeque::new();
    let mut ws = match open(s, &stats, &mut events, &mut early).await {
        Ok(ws) => ws,
        Err(end) => {
            if end.error.is_some() {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            log_end(meta.call_id, &end);
            return end;
        }
    };
    tracing::debug!(
        call_id = meta.call_id,
        attempt = meta.attempt,
        "openai_realtime session created"
    );
    let input = codec_of(s.input);
    let output = codec_of(s.output);
    let mut session = Session {
        s,
        stats: &stats,
        call_id: meta.call_id,
        out,
        turn: Turn::new(bytes_per_ms(output), s.turn_detection.interrupt_response),
        batcher: AppendBatcher::new(s.append_ms, bytes_per_ms(input)),
        appends: Vec::new(),
        scratch: Vec::new(),
        slab: FrameSlab::new(OUT_SLAB_BYTES),
        epoch: Instant::now(),
        counts: Counts::default(),
        latency,
        batch_since: None,
        unflushed_since: None,
    };
    let end = match session.opening(&mut ws, &meta, early).await {
        Err(e) => SessionEnd::failed(lost(&e)),
        Ok(()) => session.run_loop(&mut ws, &mut events).await,
    };
    session.flush_counts();
    if end.error.is_some() {
        stats.errors_fatal.fetch_add(1, Ordering::Relaxed);
    }
    log_end(meta.call_id, &end);
    end
}

fn log_end(call_id: u64, end: &SessionEnd) {
    match &end.error {
        Some(e) => {
            tracing::debug!(call_id, reason = end.reason.as_str(), error = %e, "openai_realtime session ended")
        }
        None => tracing::debug!(
            call_id,
            reason = end.reason.as_str(),
            "openai_realtime session ended"
        ),
    }
}

/// A caller event that arrives before the session exists: audio is kept (bounded),
/// hang-up and a closed channel end the session, the rest has nothing to act on.
fn early_event(
    ev: Option<CallerEvent>,
    early: &mut VecDeque<Bytes>,
    stats: &OpenAiStats,
) -> Result<(), SessionEnd> {
    match ev {
        None => Err(SessionEnd::new(EndReason::ChannelClosed)),
        Some(CallerEvent::Hangup) => Err(SessionEnd::new(EndReason::CallerHangup)),
        Some(CallerEvent::Audio(chunk, _)) => {
            // Held during the handshake on purpose: not a write latency sample.
            if early.len() >= HANDSHAKE_AUDIO_CHUNKS {
                early.pop_front();
                stats
                    .handshake_audio_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            early.push_back(chunk);
            Ok(())
        }
        Some(CallerEvent::Dtmf(_)) | Some(CallerEvent::BargeIn { .. }) => Ok(()),
    }
}

/// Connect and wait for `session.created`, each within `connect_timeout`, while
/// keeping an ear on the caller (a hang-up ends the attempt at once).
async fn open(
    s: &Settings,
    stats: &OpenAiStats,
    events: &mut mpsc::Receiver<CallerEvent>,
    early: &mut VecDeque<Bytes>,
) -> Result<WsStream, SessionEnd> {
    let key = s.api_key.expose().unwrap_or_default();
    let headers = [("Authorization", format!("Bearer {key}"))];
    let mut ws = {
        let connect = net::connect(NAME, &s.url, &headers, s.connect_timeout);
        tokio::pin!(connect);
        loop {
            tokio::select! {
                r = &mut connect => break r.map_err(SessionEnd::failed)?,
                ev = events.recv() => early_event(ev, early, stats)?,
            }
        }
    };
    drop(headers);
    let deadline = Instant::now() + s.connect_timeout;
    loop {
        let step = tokio::select! {
            msg = ws.next() => before_created(msg, s, stats),
            ev = events.recv() => early_event(ev, early, stats).map(|()| false),
            () = tokio::time::sleep_until(deadline) => Err(SessionEnd::failed(ProviderError::Timeout {
                name: NAME.to_string(),
                what: format!("session.created ({} ms)", s.connect_timeout.as_millis()),
            })),
        };
        match step {
            Ok(true) => return Ok(ws),
            Ok(false) => {}
            Err(end) => {
                close(&mut ws).await;
                return Err(end);
            }
        }
    }
}

/// A message before `session.created`: `Ok(true)` when it is `session.created`;
/// an `error` event, a close, or anything malformed ends the attempt.
fn before_created(
    msg: Option<Result<Message, WsError>>,
    s: &Settings,
    stats: &OpenAiStats,
) -> Result<bool, SessionEnd> {
    let fail = |e| Err(SessionEnd::failed(e));
    let text = match msg {
        None => return fail(closed_by_server(None, "before session.created")),
        Some(Err(e)) => return fail(lost(&e)),
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Binary(_))) => {
            return fail(protocol("binary message where a JSON event was expected"))
        }
        Some(Ok(Message::Close(f))) => {
            return fail(closed_by_server(f.as_ref(), "before session.created"))
        }
        Some(Ok(_)) => return Ok(false),
    };
    let ev = match parse_server_event(&text) {
        Ok(Parsed::Event(ev)) => ev,
        Ok(Parsed::Unhandled(_)) => return Ok(false),
        Err(e) => return fail(protocol(e.to_string())),
    };
    match &*ev.kind {
        "session.created" => Ok(true),
        "error" => {
            let (code, message) = error_fields(&ev, s);
            fail(ProviderError::Remote {
                name: NAME.to_string(),
                code,
                message,
            })
        }
        k => {
            if !HANDLED.contains(&k) && !IGNORED.contains(&k) {
                stats.unknown_events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false)
        }
    }
}

/// `(code, message)` of an `error` event, scrubbed of key-like text.
fn error_fields(ev: &ServerEvent<'_>, s: &Settings) -> (String, String) {
    let key = s.api_key.expose();
    match &ev.error {
        Some(e) => (
            scrub(
                e.code.as_deref().or(e.kind.as_deref()).unwrap_or("unknown"),
                key,
            ),
            scrub(e.message.as_deref().unwrap_or(""), key),
        ),
        None => ("unknown".to_string(), String::new()),
    }
}

/// Best effort: send a normal close frame and flush it, for at most
/// [`CLOSE_TIMEOUT`].
async fn close(ws: &mut WsStream) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

async fn feed(ws: &mut WsStream, event: &ClientEvent<'_>) -> Result<(), WsError> {
    ws.feed(Message::Text(event.to_json())).await
}

impl Session<'_> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let st = self.stats;
        st.audio_bytes_in.fetch_add(c.audio_in, Ordering::Relaxed);
        st.audio_bytes_out.fetch_add(c.audio_out, Ordering::Relaxed);
        st.audio_bytes_dropped
            .fetch_add(c.dropped, Ordering::Relaxed);
    }

    /// Queue the opening: `session.update`, then on a reconnect the history, on a
    /// first attempt the greeting, then the caller audio kept during set-up.
    async fn opening(
        &mut self,
        ws: &mut WsStream,
        meta: &SessionMeta,
        early: VecDeque<Bytes>,
    ) -> Result<(), WsError> {
        let s = self.s;
        let plan = Plan::new(s, meta.agent.as_deref());
        let update = ClientEvent::SessionUpdate {
            event_id: SESSION_UPDATE_EVENT_ID,
            session: SessionConfig {
                kind: "realtime",
                model: Some(&s.model),
                output_modalities: ["audio"],
                instructions: plan.instructions,
                audio: Audio {
                    input: AudioInput {
                        format: Format::from(s.input),
                        turn_detection: TurnDetection::from(&s.turn_detection),
                        transcription: s
                            .input_transcription
                            .as_deref()
                            .map(|model| Transcription { model }),
                    },
                    output: AudioOutput {
                        format: Format::from(s.output),
                        voice: plan.voice,
                    },
                },
            },
        };
        feed(ws, &update).await?;
        let from = meta.history.len().saturating_sub(HISTORY_MAX_LINES);
        for (role, text) in &meta.history[from..] {
            if text.trim().is_empty() {
                continue;
            }
            let item = match role {
                Role::User => MessageItem::user(text),
                Role::Agent => MessageItem::assistant(text),
            };
            feed(ws, &ClientEvent::ItemCreate { item }).await?;
        }
        if meta.attempt == 0 && meta.history.is_empty() {
            if let Some(greeting) = plan.greeting {
                let instructions = format!(
                    "Greet the caller by saying exactly this, then wait for their answer: {greeting}"
                );
                let create = ClientEvent::ResponseCreate {
                    response: ResponseParams {
                        instructions: &instructions,
                    },
                };
                feed(ws, &create).await?;
            }
        }
        for chunk in early {
            self.push_audio(ws, &chunk, None).await?;
        }
        Ok(())
    }

    /// Batch caller audio; queue every completed append.
    async fn push_audio(
        &mut self,
        ws: &mut WsStream,
        chunk: &[u8],
        at: Option<std::time::Instant>,
    ) -> Result<bool, WsError> {
        // Audio held during the handshake has no arrival time: not a sample.
        if let Some(at) = at {
            self.batch_since.get_or_insert(at);
        }
        let since = self.batch_since;
        self.counts.audio_in += chunk.len() as u64;
        self.counts.chunks += 1;
        if self.counts.chunks >= STATS_EVERY_CHUNKS {
            self.flush_counts();
        }
        self.batcher.push(chunk, &mut self.appends);
        let sent = !self.appends.is_empty();
        if sent {
            self.batch_since = None;
            if self.unflushed_since.is_none() {
                self.unflushed_since = since;
            }
        }
        for m in self.appends.drain(..) {
            ws.feed(Message::Text(m)).await?;
        }
        Ok(sent)
    }

    /// The main loop; returns how the session ended (the socket is closed).
    async fn run_loop(
        &mut self,
        ws: &mut WsStream,
        events: &mut mpsc::Receiver<CallerEvent>,
    ) -> SessionEnd {
        // The opening is queued but not flushed yet.
        let mut need_flush = true;
        let mut live = Liveness::new(self.s.read_timeout);
        // One timer for the session's life: it fires at a deadline that may have
        // moved later since (something was heard), `due` then says so and the timer
        // is re-armed, instead of a timer registered and cancelled per wake-up.
        let live_timer = tokio::time::sleep_until(live.next_at());
        tokio::pin!(live_timer);
        loop {
            let wake = {
                let net = poll_fn(|cx| {
                    if need_flush {
                        if let Poll::Ready(r) = Pin::new(&mut *ws).poll_flush(cx) {
                            return Poll::Ready(Wake::Flushed(r));
                        }
                    }
                    Pin::new(&mut *ws).poll_next(cx).map(Wake::Net)
                });
                tokio::select! {
                    w = net => w,
                    ev = events.recv(), if !need_flush => Wake::Caller(ev),
                    () = &mut live_timer => Wake::Live,
                }
            };
            if matches!(wake, Wake::Net(Some(Ok(_)))) {
                live.heard();
            }
            let step = match wake {
                Wake::Flushed(Ok(())) => {
                    need_flush = false;
                    if let (Some(at), Some(l)) = (self.unflushed_since.take(), &self.latency) {
                        l.record_since(at);
                    }
                    Ok(())
                }
                Wake::Flushed(Err(e)) | Wake::Net(Some(Err(e))) => {
                    return SessionEnd::failed(lost(&e))
                }
                Wake::Net(None) => {
                    return SessionEnd::failed(closed_by_server(None, "mid-call"));
                }
                Wake::Net(Some(Ok(Message::Close(f)))) => {
                    return SessionEnd::failed(closed_by_server(f.as_ref(), "mid-call"));
                }
                Wake::Net(Some(Ok(msg))) => self.on_message(msg).await,
                Wake::Live => {
                    let due = live.due(NAME);
                    live_timer.as_mut().reset(live.next_at());
                    match due {
                        Ok(true) => match ws.feed(Message::Ping(Vec::new())).await {
                            Ok(()) => {
                                need_flush = true;
                                Ok(())
                            }
                            Err(e) => Err(SessionEnd::failed(lost(&e))),
                        },
                        Ok(false) => Ok(()),
                        Err(e) => {
                            tracing::warn!(call_id = self.call_id, error = %e, "provider read deadline passed; ending the session");
                            Err(SessionEnd::failed(e))
                        }
                    }
                }
                Wake::Caller(None) => Err(SessionEnd::new(EndReason::ChannelClosed)),
                Wake::Caller(Some(ev)) => match self.on_caller(ws, ev).await {
                    Ok(sent) => {
                        need_flush |= sent;
                        Ok(())
                    }
                    Err(end) => Err(end),
                },
            };
            if let Err(end) = step {
                close(ws).await;
                return end;
            }
        }
    }

    /// A caller event; `Ok(true)` if something was queued for the socket.
    async fn on_caller(&mut self, ws: &mut WsStream, ev: CallerEvent) -> Result<bool, SessionEnd> {
        let net = |e: WsError| SessionEnd::failed(lost(&e));
        match ev {
            CallerEvent::Audio(chunk, at) => {
                self.push_audio(ws, &chunk, Some(at)).await.map_err(net)
            }
            CallerEvent::BargeIn { played_ms } => {
                let act = self.turn.on_barge_in(played_ms);
                if act.local {
                    self.stats.barge_ins_local.fetch_add(1, Ordering::Relaxed);
                }
                let mut sent = false;
                if let Some(response_id) = &act.cancel {
                    let cancel = ClientEvent::ResponseCancel {
                        response_id: response_id.as_deref(),
                    };
                    feed(ws, &cancel).await.map_err(net)?;
                    self.stats.cancels_sent.fetch_add(1, Ordering::Relaxed);
                    sent = true;
                }
                if let Some((item_id, audio_end_ms)) = &act.truncate {
                    let truncate = ClientEvent::ItemTruncate {
                        item_id,
                        content_index: 0,
                        audio_end_ms: *audio_end_ms,
                    };
                    feed(ws, &truncate).await.map_err(net)?;
                    self.stats.truncates_sent.fetch_add(1, Ordering::Relaxed);
                    sent = true;
                }
                tracing::debug!(
                    call_id = self.call_id,
                    played_ms,
                    local = act.local,
                    "barge-in"
                );
                Ok(sent)
            }
            CallerEvent::Dtmf(digit) => {
                let text = format!("DTMF {digit}");
                let item = ClientEvent::ItemCreate {
                    item: MessageItem::user(&text),
                };
                feed(ws, &item).await.map_err(net)?;
                Ok(true)
            }
            CallerEvent::Hangup => Err(SessionEnd::new(EndReason::CallerHangup)),
        }
    }

    async fn emit(&self, ev: AgentEvent) -> Step {
        self.out
            .send(ev)
            .await
            .map_err(|_| SessionEnd::new(EndReason::ChannelClosed))
    }

    /// A message from the server (close frames are handled by the loop).
    async fn on_message(&mut self, msg: Message) -> Step {
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => Err(SessionEnd::failed(protocol(
                "binary message where a JSON event was expected",
            ))),
            _ => Ok(()),
        }
    }

    /// One server event.
    async fn on_text(&mut self, text: &str) -> Step {
        let ev = match parse_server_event(text) {
            Ok(Parsed::Event(ev)) => ev,
            Ok(Parsed::Unhandled(kind)) => {
                self.ignore(&kind);
                return Ok(());
            }
            Err(e) => return Err(SessionEnd::failed(protocol(e.to_string()))),
        };
        match &*ev.kind {
            "response.output_audio.delta" => self.on_audio_delta(&ev).await,
            "response.output_audio.done" => {
                if self
                    .turn
                    .on_audio_done(ev.response_id.as_deref(), ev.item_id.as_deref())
                {
                    self.emit(AgentEvent::AudioDone).await?;
                }
                Ok(())
            }
            "response.output_audio_transcript.delta" => {
                self.transcript(Role::Agent, ev.delta, false).await
            }
            "response.output_audio_transcript.done" => {
                self.transcript(Role::Agent, ev.transcript, true).await
            }
            "conversation.item.input_audio_transcription.delta" => {
                self.transcript(Role::User, ev.delta, false).await
            }
            "conversation.item.input_audio_transcription.completed" => {
                self.transcript(Role::User, ev.transcript, true).await
            }
            "input_audio_buffer.speech_started" => {
                let now = self.now_ms();
                if self.turn.on_speech_started(now) {
                    self.stats
                        .barge_ins_provider
                        .fetch_add(1, Ordering::Relaxed);
                    self.emit(AgentEvent::SpeechStarted).await?;
                }
                Ok(())
            }
            "response.created" => {
                let id = ev.response.as_ref().and_then(|r| r.id.as_deref());
                self.turn.on_response_created(id);
                Ok(())
            }
            "response.done" => {
                let id = ev.response.as_ref().and_then(|r| r.id.as_deref());
                self.turn.on_response_done(id);
                self.emit(AgentEvent::ResponseDone).await
            }
            "error" => self.on_error(&ev).await,
            "rate_limits.updated" => {
                self.on_rate_limits(&ev);
                Ok(())
            }
            "session.created" => Ok(()),
            k => {
                self.ignore(k);
                Ok(())
            }
        }
    }

    fn ignore(&self, kind: &str) {
        if !IGNORED.contains(&kind) {
            self.stats.unknown_events.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(call_id = self.call_id, kind = %clip(kind), "unknown openai_realtime event ignored");
        }
    }

    async fn on_audio_delta(&mut self, ev: &ServerEvent<'_>) -> Step {
        let item_id = ev
            .decode_audio(&mut self.scratch)
            .map_err(|e| SessionEnd::failed(protocol(e.to_string())))?;
        let len = self.scratch.len();
        if len == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        if !self
            .turn
            .on_audio(now, ev.response_id.as_deref(), item_id, len)
        {
            self.counts.dropped += len as u64;
            return Ok(());
        }
        self.counts.audio_out += len as u64;
        let audio = self.slab.copy(&self.scratch);
        self.emit(AgentEvent::Audio(audio)).await
    }

    async fn transcript(
        &self,
        role: Role,
        text: Option<std::borrow::Cow<'_, str>>,
        is_final: bool,
    ) -> Step {
        let text = text.map(|t| t.into_owned()).unwrap_or_default();
        if text.is_empty() && !is_final {
            return Ok(());
        }
        self.emit(AgentEvent::Transcript {
            role,
            text,
            is_final,
        })
        .await
    }

    async fn on_error(&self, ev: &ServerEvent<'_>) -> Step {
        let body = ev.error.as_ref();
        let kind = body.and_then(|b| b.kind.as_deref());
        let code = body.and_then(|b| b.code.as_deref());
        let event_id = body.and_then(|b| b.event_id.as_deref());
        if is_benign(code) {
            tracing::debug!(
                call_id = self.call_id,
                code,
                "openai_realtime: expected race, ignored"
            );
            return Ok(());
        }
        let (code, message) = error_fields(ev, self.s);
        let error = ProviderError::Remote {
            name: NAME.to_string(),
            code,
            message,
        };
        if is_fatal(kind, body.and_then(|b| b.code.as_deref()), event_id) {
            return Err(SessionEnd::failed(error));
        }
        self.stats.errors_retryable.fetch_add(1, Ordering::Relaxed);
        self.emit(AgentEvent::Error { error }).await
    }

    fn on_rate_limits(&self, ev: &ServerEvent<'_>) {
        let Some(limits) = &ev.rate_limits else {
            return;
        };
        let st = self.stats;
        for l in limits {
            let (remaining, limit) = match l.name.as_deref() {
                Some("requests") => (&st.rate_requests_remaining, &st.rate_requests_limit),
                Some("tokens") => (&st.rate_tokens_remaining, &st.rate_tokens_limit),
                _ => continue,
            };
            // `as` saturates (negative and NaN become 0): a gauge, never a panic.
            if let Some(v) = l.remaining {
                remaining.store(v as u64, Ordering::Relaxed);
            }
            if let Some(v) = l.limit {
                limit.store(v as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::super::events::MAX_DETAIL_CHARS;
    use super::*;

    #[test]
    fn scrub_masks_keys() {
        let m = scrub(
            "Incorrect API key provided: sk-proj-abc***wxyz. See https://x",
            Some("sk-proj-abcdefwxyz"),
        );
        assert_eq!(m, "Incorrect API key provided: sk-*** See https://x");
        assert_eq!(
            scrub("key k3y-SECRET here", Some("k3y-SECRET")),
            "key *** here"
        );
        let long = "x".repeat(1000);
        assert_eq!(scrub(&long, None).chars().count(), MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn fatal_classes() {
        assert!(is_fatal(
            Some("invalid_request_error"),
            Some("session_expired"),
            None
        ));
        assert!(is_fatal(Some("authentication_error"), None, None));
        assert!(is_fatal(None, Some("invalid_api_key"), None));
        assert!(is_fatal(
            Some("invalid_request_error"),
            None,
            Some(SESSION_UPDATE_EVENT_ID)
        ));
        assert!(!is_fatal(
            Some("invalid_request_error"),
            Some("invalid_value"),
            Some("x")
        ));
        assert!(!is_fatal(Some("server_error"), None, None));
        assert!(is_benign(Some("response_cancel_not_active")));
    }
}
