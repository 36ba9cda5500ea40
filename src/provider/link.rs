//! The socket plumbing a network provider session loop needs around one
//! WebSocket: a write side that never blocks the loop ([`Writer`]), a bounded
//! hold buffer for caller audio that arrives before the provider may receive it
//! ([`HoldBuffer`]), and the mapping of WebSocket errors to [`ProviderError`]
//! ([`ws_error`]) and of what arrives ([`incoming`]). Used by the `deepgram` and
//! `local` sessions.
//!
//! Owns: the queue of messages accepted for sending but not yet handed to the
//! socket, and the rule that makes back-pressure work in a single `select!` loop:
//! a session pulls the next caller event only while [`Writer::idle`] (everything
//! written and flushed), so a provider that stops reading stops the session from
//! taking caller audio (the glue's bounded channel then drops), instead of growing
//! memory here.
//!
//! Must not: speak any provider's protocol, block on a write (writes progress only
//! when the loop polls [`Writer::drive`] or [`Writer::kick`]), or put a header
//! value into an error.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::ops::latency::Stage;
use crate::provider::net::WsStream;
use crate::provider::ProviderError;

/// Most messages a [`Writer`] queues before [`Writer::push`] refuses. A session
/// adds caller audio only while the writer is idle, so the queue holds one audio
/// message plus a few control messages; only a peer that keeps provoking replies
/// while not reading can reach this.
pub const MAX_QUEUED: usize = 256;

/// The write half of a provider socket with its small queue; see the module docs.
pub struct Writer {
    sink: SplitSink<WsStream, Message>,
    queue: VecDeque<Message>,
    unflushed: bool,
    /// "Caller frame -> provider write" stage this writer records into.
    latency: Option<Arc<Stage>>,
    /// Arrival of the oldest caller frame in what is queued or unflushed.
    since: Option<Instant>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &self.queue.len())
            .field("unflushed", &self.unflushed)
            .finish()
    }
}

/// [`Writer::push`] refused a message: the peer has not read [`MAX_QUEUED`]
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl Writer {
    /// Wraps the write half of a split provider socket.
    pub fn new(sink: SplitSink<WsStream, Message>) -> Self {
        Writer {
            sink,
            queue: VecDeque::new(),
            unflushed: false,
            latency: None,
            since: None,
        }
    }

    /// Records, per completed write, the time from the oldest caller frame it
    /// carried (see [`Writer::carries`]) into `latency`.
    pub fn with_latency(mut self, latency: Option<Arc<Stage>>) -> Self {
        self.latency = latency;
        self
    }

    /// What is pushed next carries caller audio the shard received at `at`: when
    /// it is written and flushed, the time since the oldest such frame is one
    /// "caller frame -> provider write" sample.
    pub fn carries(&mut self, at: Instant) {
        self.since.get_or_insert(at);
    }

    /// Queues `msg` for sending (written by the next [`Writer::kick`] or
    /// [`Writer::drive`]). Refuses when [`MAX_QUEUED`] messages wait.
    pub fn push(&mut self, msg: Message) -> Result<(), QueueFull> {
        if self.queue.len() >= MAX_QUEUED {
            return Err(QueueFull);
        }
        self.queue.push_back(msg);
        Ok(())
    }

    /// Everything pushed has been written and flushed: the session may take the
    /// next caller event.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    /// Something waits to be written or flushed: the loop must poll
    /// [`Writer::drive`].
    pub fn busy(&self) -> bool {
        !self.idle()
    }

    /// Asks for a flush (e.g. after the reader answered a ping, which the socket
    /// queues internally).
    pub fn mark_unflushed(&mut self) {
        self.unflushed = true;
    }

    /// Hands queued messages to the socket while it accepts them, then flushes.
    /// A message leaves the queue only when the socket took it, so dropping a
    /// pending poll loses nothing.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while !self.queue.is_empty() {
            ready!(self.sink.poll_ready_unpin(cx))?;
            if let Some(msg) = self.queue.pop_front() {
                self.unflushed = true;
                self.sink.start_send_unpin(msg)?;
            }
        }
        if self.unflushed {
            ready!(self.sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        if let (Some(at), Some(l)) = (self.since.take(), &self.latency) {
            l.record_since(at);
        }
        Poll::Ready(Ok(()))
    }

    /// Resolves once everything queued is written and flushed (a `select!`
    /// branch, enabled while [`Writer::busy`]; cancel-safe).
    pub async fn drive(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_drive(cx)).await
    }

    /// Writes as much as the socket takes right now and returns at once; what is
    /// left is finished by [`Writer::drive`] (the task is woken when the socket
    /// can take more).
    pub async fn kick(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| match self.poll_drive(cx) {
            Poll::Pending => Poll::Ready(Ok(())),
            done => done,
        })
        .await
    }

    /// Sends what is queued and a close frame, waiting at most `limit` (a peer
    /// that stopped reading must not hold the session). Errors are ignored: the
    /// session is over either way.
    pub async fn close(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            if self.drive().await.is_ok() {
                let _ = self.sink.close().await;
            }
        })
        .await;
    }
}

/// Read deadline of a provider socket: voxd pings every third of
/// `read_timeout` and ends the session when nothing at all (no message, no pong)
/// has arrived for `read_timeout`. A provider that is alive but quiet (no caller
/// speech) answers the pings; a dead path, or a message that never completes (a
/// pong cannot arrive inside an unfinished frame), does not.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    timeout: Duration,
    last_rx: tokio::time::Instant,
    last_ping: tokio::time::Instant,
}

/// Default of the providers' `read_timeout_ms`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Liveness {
    /// A deadline of `timeout` from now.
    pub fn new(timeout: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Liveness {
            timeout: timeout.max(Duration::from_millis(3)),
            last_rx: now,
            last_ping: now,
        }
    }

    /// Something arrived from the provider (any message, pongs included).
    pub fn heard(&mut self) {
        self.last_rx = tokio::time::Instant::now();
    }

    /// When [`Liveness::due`] must be called next (a `sleep_until` branch).
    pub fn next_at(&self) -> tokio::time::Instant {
        (self.last_rx + self.timeout).min(self.last_ping + self.timeout / 3)
    }

    /// At [`Liveness::next_at`]: `Ok(true)` when a ping should go out now, or the
    /// timeout error of provider `name` when the deadline has passed.
    pub fn due(&mut self, name: &str) -> Result<bool, ProviderError> {
        let now = tokio::time::Instant::now();
        if now >= self.last_rx + self.timeout {
            return Err(ProviderError::Timeout {
                name: name.to_string(),
                what: format!(
                    "any data from the provider (read_timeout_ms: {} ms, pings unanswered)",
                    self.timeout.as_millis()
                ),
            });
        }
        if now >= self.last_ping + self.timeout / 3 {
            self.last_ping = now;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Caller audio kept until the provider may receive it (before Deepgram's
/// `SettingsApplied`, before the local server's `auth_response`), bounded in bytes:
/// when full, the oldest frames are dropped (and counted by the caller of
/// [`HoldBuffer::push`]), so the provider hears the most recent audio.
#[derive(Debug)]
pub struct HoldBuffer {
    frames: VecDeque<Bytes>,
    bytes: usize,
    cap: usize,
}

impl HoldBuffer {
    /// An empty buffer holding at most `cap_bytes`.
    pub fn new(cap_bytes: usize) -> Self {
        HoldBuffer {
            frames: VecDeque::new(),
            bytes: 0,
            cap: cap_bytes,
        }
    }

    /// Keeps `frame`, dropping the oldest frames to stay within the bound (a frame
    /// larger than the bound is dropped itself). Returns the bytes dropped.
    pub fn push(&mut self, frame: Bytes) -> usize {
        if frame.len() > self.cap {
            return frame.len();
        }
        let mut dropped = 0;
        while self.bytes + frame.len() > self.cap {
            match self.frames.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    dropped += old.len();
                }
                None => break,
            }
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        dropped
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes all held frames, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.bytes = 0;
        self.frames.drain(..)
    }
}

/// A WebSocket failure of provider `name` as a [`ProviderError`]: a lost
/// transport is [`ProviderError::Connect`], anything the peer did wrong (oversize
/// message, bad frame, bad UTF-8, not reading) is [`ProviderError::Protocol`].
pub fn ws_error(name: &str, e: &WsError) -> ProviderError {
    let protocol = |message: String| ProviderError::Protocol {
        name: name.to_string(),
        message,
    };
    match e {
        WsError::Io(io) => ProviderError::Connect {
            name: name.to_string(),
            message: format!("connection lost: {io}"),
        },
        WsError::ConnectionClosed | WsError::AlreadyClosed => ProviderError::Connect {
            name: name.to_string(),
            message: "connection closed".to_string(),
        },
        WsError::Capacity(c) => protocol(format!("message too large: {c}")),
        WsError::WriteBufferFull(_) => protocol("the provider stopped reading".to_string()),
        WsError::Utf8 => protocol("text message is not UTF-8".to_string()),
        WsError::Protocol(p) => protocol(p.to_string()),
        other => protocol(other.to_string()),
    }
}

/// What a received WebSocket message means to a session loop.
#[derive(Debug)]
pub enum Incoming {
    /// A text message for the protocol.
    Text(String),
    /// A binary message (audio).
    Binary(Vec<u8>),
    /// Nothing for the protocol (ping answered, pong, raw frame).
    Nothing,
}

/// Longest close reason quoted in an error.
const MAX_CLOSE_REASON: usize = 500;

/// Classify one read of the socket: data for the protocol, or the end of the
/// session as a [`ProviderError`] (closed with or without a close frame, broken).
/// A ping's pong is queued by the socket; `writer` is told to flush it.
pub fn incoming(
    name: &str,
    msg: Option<Result<Message, WsError>>,
    writer: &mut Writer,
) -> Result<Incoming, ProviderError> {
    let closed = |message: String| ProviderError::Connect {
        name: name.to_string(),
        message,
    };
    match msg {
        None => Err(closed("connection closed without a close frame".into())),
        Some(Err(e)) => Err(ws_error(name, &e)),
        Some(Ok(Message::Text(text))) => Ok(Incoming::Text(text)),
        Some(Ok(Message::Binary(data))) => Ok(Incoming::Binary(data)),
        Some(Ok(Message::Ping(_))) => {
            writer.mark_unflushed();
            Ok(Incoming::Nothing)
        }
        Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => Ok(Incoming::Nothing),
        Some(Ok(Message::Close(frame))) => {
            let detail = match &frame {
                Some(f) => format!(
                    " (code {}: {})",
                    u16::from(f.code),
                    clip(&f.reason, MAX_CLOSE_REASON)
                ),
                None => String::new(),
            };
            Err(closed(format!(
                "the provider closed the connection{detail}"
            )))
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary (provider text in logs
/// and errors stays bounded).
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_buffer_drops_oldest_and_counts() {
        let mut h = HoldBuffer::new(10);
        assert_eq!(h.push(Bytes::from_static(b"aaaa")), 0);
        assert_eq!(h.push(Bytes::from_static(b"bbbb")), 0);
        assert_eq!(h.push(Bytes::from_static(b"cccc")), 4, "oldest dropped");
        assert_eq!(h.bytes(), 8);
        assert_eq!(h.push(Bytes::from_static(b"too long, dropped")), 17);
        let got: Vec<Bytes> = h.drain().collect();
        assert_eq!(
            got,
            [Bytes::from_static(b"bbbb"), Bytes::from_static(b"cccc")]
        );
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }

    #[test]
    fn ws_errors_are_classified() {
        let e = ws_error(
            "deepgram",
            &WsError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        );
        assert!(matches!(e, ProviderError::Connect { .. }), "{e:?}");
        let e = ws_error("deepgram", &WsError::Utf8);
        assert!(matches!(e, ProviderError::Protocol { .. }), "{e:?}");
    }
}
