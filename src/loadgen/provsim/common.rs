//! Machinery shared by the three provider simulators: the accept loop, the HTTP
//! handshake (path, query and headers captured; a wrong or missing key refused
//! with 401 before the upgrade), the per-connection [`Conn`] (reading with timers,
//! sending, closing, fault injection), the counters behind
//! [`SimStatsSnapshot`](super::SimStatsSnapshot), and id generation.
//!
//! Owns: every socket of a simulator and its lifetime (a connection task ends when
//! the client goes, on a fatal protocol error, or at [`serve`]'s shutdown; tasks
//! still running 2 s after shutdown are aborted), and the bounds that keep a
//! misbehaving client from growing the simulator's memory (16 MiB per incoming
//! message, at most 64 message-type keys, 256 violation lines, 1024 openings; a
//! client that does not read blocks its own session only, never a queue).
//!
//! Must not: speak a protocol (message shapes live in `openai`, `deepgram`,
//! `local`), log or record a header value (keys travel in them), or panic on any
//! input.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{deepgram, local, openai};
use super::{Fault, ProviderSimConfig, SimProtocol, SimStatsSnapshot};
use crate::rng::SplitMix64;

/// Largest message a client may send (OpenAI allows 15 MiB of base64 per append).
pub(crate) const MAX_IN_MESSAGE: usize = 16 << 20;
/// Size of the [`Fault::Oversize`] message.
pub(crate) const OVERSIZE_BYTES: usize = 8 << 20;
/// Time a client has to complete the HTTP upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time sessions get to finish after shutdown before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Distinct message-type keys counted before the rest go under `<other>`.
const MAX_TYPES: usize = 64;
/// Violation lines kept.
const MAX_VIOLATIONS: usize = 256;
/// Connections whose opening messages are recorded.
const MAX_OPENINGS: usize = 1024;
/// Messages recorded per opening.
const OPENING_LEN: usize = 8;
/// Longest message type recorded (longer ones are cut).
const MAX_TYPE_LEN: usize = 64;
/// Longest violation line kept (bytes; longer ones are cut).
const MAX_VIOLATION_LEN: usize = 512;

/// `s` cut to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The counters (see [`SimStatsSnapshot`] for their meaning).
#[derive(Debug, Default)]
struct Stats {
    connections: u64,
    active: u64,
    auth_failures: u64,
    messages_in: BTreeMap<String, u64>,
    audio_bytes_in: u64,
    audio_bytes_out: u64,
    turns: u64,
    barge_ins: u64,
    truncates: u64,
    violations: Vec<String>,
    violations_dropped: u64,
    openings: Vec<Vec<String>>,
    faults_injected: u64,
}

/// State shared by a simulator's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration (its `fault` is the initial one; see [`Shared::fault`]).
    pub cfg: ProviderSimConfig,
    /// The bound address.
    pub addr: SocketAddr,
    fault: Mutex<Option<Fault>>,
    stats: Mutex<Stats>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(cfg: ProviderSimConfig, addr: SocketAddr) -> Self {
        Shared {
            fault: Mutex::new(cfg.fault),
            cfg,
            addr,
            stats: Mutex::new(Stats::default()),
            next_conn: AtomicU64::new(0),
        }
    }

    /// The fault for sessions opened now.
    pub(crate) fn fault(&self) -> Option<Fault> {
        *lock(&self.fault)
    }

    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.fault) = fault;
    }

    pub(crate) fn snapshot(&self) -> SimStatsSnapshot {
        let s = lock(&self.stats);
        let mut violations = s.violations.clone();
        if s.violations_dropped > 0 {
            violations.push(format!(
                "... and {} more violations not recorded",
                s.violations_dropped
            ));
        }
        SimStatsSnapshot {
            connections: s.connections,
            active: s.active,
            auth_failures: s.auth_failures,
            messages_in: s.messages_in.clone(),
            audio_bytes_in: s.audio_bytes_in,
            audio_bytes_out: s.audio_bytes_out,
            turns: s.turns,
            barge_ins: s.barge_ins,
            truncates: s.truncates,
            violations,
            openings: s.openings.clone(),
            faults_injected: s.faults_injected,
        }
    }

    fn violation(&self, conn: u64, what: &str) {
        let what = clip(what, MAX_VIOLATION_LEN);
        tracing::debug!(conn, what, "provider sim: client protocol violation");
        let mut s = lock(&self.stats);
        if s.violations.len() < MAX_VIOLATIONS {
            s.violations.push(format!("conn {conn}: {what}"));
        } else {
            s.violations_dropped += 1;
        }
    }

    fn add(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }
}

/// The HTTP upgrade request as the simulator saw it. `Debug` shows the path and
/// the names only (credentials travel in header and query values).
#[derive(Clone, Default)]
pub(crate) struct Handshake {
    /// Request path (`/v1/realtime`).
    pub path: String,
    /// Query pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header names (lower case) and values (lossy UTF-8). Never logged.
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("Handshake")
            .field("path", &self.path)
            .field("query", &names(&self.query))
            .field("headers", &names(&self.headers))
            .finish()
    }
}

impl Handshake {
    fn from_request(req: &Request) -> Self {
        let uri = req.uri();
        let query = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Handshake {
            path: uri.path().to_string(),
            query,
            headers,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `key`.
    pub(crate) fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
impl Handshake {
    /// A handshake with this path and headers (unit tests of the protocols).
    pub(crate) fn for_test(path: &str, headers: &[(&str, &str)]) -> Self {
        Handshake {
            path: path.to_string(),
            query: Vec::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A protocol's decision on an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Upgrade (answering with this `Sec-WebSocket-Protocol`, if any).
    Accept { subprotocol: Option<&'static str> },
    /// Answer with an HTTP error instead.
    Refuse {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
        /// A wrong or missing credential (counted in `auth_failures`).
        auth_failure: bool,
        /// A protocol error of the client (recorded).
        violation: Option<String>,
    },
}

/// What [`Conn::next`] returns.
#[derive(Debug)]
pub(crate) enum Input {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// The wake-up time passed.
    Wake,
    /// A fault is due: pass it to [`Conn::inject`].
    Fault(Fault),
    /// The client closed or the connection broke.
    Closed,
    /// The simulator is stopping.
    Shutdown,
}

/// The connection is gone (a send failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// What a session does after [`Conn::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Go on.
    Continue,
    /// End the session now (the connection was closed or is to be dropped).
    End,
}

/// How a protocol's faults look on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultStyle {
    /// The error event for `ErrorEvent { fatal }`.
    pub error: fn(fatal: bool) -> Value,
    /// Close code sent after a fatal error event.
    pub fatal_close: u16,
    /// `type` of the oversize message (and of the truncated malformed one).
    pub big_type: &'static str,
    /// Field of the oversize message that carries the padding.
    pub big_field: &'static str,
}

/// One accepted WebSocket session.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Connection number (1-based, in accept order).
    pub no: u64,
    /// The simulator's shared state.
    pub shared: Arc<Shared>,
    /// The upgrade request.
    pub hs: Handshake,
    ws: WebSocketStream<TcpStream>,
    epoch: Instant,
    fault: Option<Fault>,
    fault_at: Option<Instant>,
    fault_done: bool,
    stalled: bool,
    slow_read: bool,
    shutdown: watch::Receiver<bool>,
    opening_slot: Option<usize>,
    opening_len: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.add(|s| s.active = s.active.saturating_sub(1));
    }
}

impl Conn {
    fn new(
        no: u64,
        shared: Arc<Shared>,
        hs: Handshake,
        ws: WebSocketStream<TcpStream>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let fault = shared.fault();
        let epoch = Instant::now();
        let after = Duration::from_millis(u64::from(shared.cfg.fault_after_ms));
        let fault_at = fault.filter(|f| f.from_connect()).map(|_| epoch + after);
        let mut opening_slot = None;
        shared.add(|s| {
            s.active += 1;
            if s.openings.len() < MAX_OPENINGS {
                opening_slot = Some(s.openings.len());
                s.openings.push(Vec::new());
            }
        });
        Conn {
            no,
            shared,
            hs,
            ws,
            epoch,
            fault,
            fault_at,
            fault_done: false,
            stalled: false,
            slow_read: false,
            shutdown,
            opening_slot,
            opening_len: 0,
        }
    }

    /// The simulator's configuration.
    pub(crate) fn cfg(&self) -> &ProviderSimConfig {
        &self.shared.cfg
    }

    /// Whether a `Stall` fault is in effect (nothing is sent any more).
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Milliseconds since the connection was accepted (the brain's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of `ms` on the connection's clock.
    pub(crate) fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Record a client protocol error.
    pub(crate) fn violation(&self, what: impl Display) {
        self.shared.violation(self.no, &what.to_string());
    }

    /// Count a client message of type `ty` (and record it in the opening).
    pub(crate) fn note_in(&mut self, ty: &str) {
        let ty = clip(ty, MAX_TYPE_LEN);
        let slot = (self.opening_len < OPENING_LEN)
            .then_some(self.opening_slot)
            .flatten();
        self.opening_len += 1;
        self.shared.add(|s| {
            if let Some(n) = s.messages_in.get_mut(ty) {
                *n += 1;
            } else if s.messages_in.len() < MAX_TYPES {
                s.messages_in.insert(ty.to_string(), 1);
            } else {
                *s.messages_in.entry("<other>".to_string()).or_insert(0) += 1;
            }
            if let Some(o) = slot.and_then(|i| s.openings.get_mut(i)) {
                o.push(ty.to_string());
            }
        });
    }

    /// Count caller audio received (wire bytes).
    pub(crate) fn audio_in(&self, bytes: usize) {
        self.shared.add(|s| s.audio_bytes_in += bytes as u64);
    }

    /// Count a caller turn.
    pub(crate) fn turn(&self) {
        self.shared.add(|s| s.turns += 1);
    }

    /// Count a server-side barge-in.
    pub(crate) fn barge_in(&self) {
        self.shared.add(|s| s.barge_ins += 1);
    }

    /// Count an accepted truncation.
    pub(crate) fn truncate(&self) {
        self.shared.add(|s| s.truncates += 1);
    }

    /// Count a handshake-level auth failure seen inside the protocol (local).
    pub(crate) fn auth_failure(&self) {
        self.shared.add(|s| s.auth_failures += 1);
    }

    /// A reply started: arms a reply-timed fault (once per connection).
    pub(crate) fn reply_started(&mut self) {
        if let Some(f) = self.fault {
            if !f.from_connect() && self.fault_at.is_none() && !self.fault_done {
                let after = Duration::from_millis(u64::from(self.shared.cfg.fault_after_ms));
                self.fault_at = Some(Instant::now() + after);
            }
        }
    }

    /// The armed fault is due: `Stall` / `SlowRead` take effect here; the others are
    /// returned for the protocol to perform.
    fn inject_due_fault(&mut self) -> Option<Input> {
        self.fault_done = true;
        self.fault_at = None;
        let f = self.fault?;
        self.shared.add(|s| s.faults_injected += 1);
        tracing::debug!(conn = self.no, fault = ?f, "provider sim: injecting fault");
        match f {
            Fault::Stall => self.stalled = true,
            Fault::SlowRead => self.slow_read = true,
            f => return Some(Input::Fault(f)),
        }
        None
    }

    /// Wait for the next client message, the wake-up time (ms on the connection's
    /// clock), a due fault, or shutdown. `Stall` and `SlowRead` take effect here.
    pub(crate) async fn next(&mut self, wake_ms: Option<u64>) -> Input {
        let wake = wake_ms.map(|ms| self.at(ms));
        loop {
            let fault_at = self.fault_at.filter(|_| !self.fault_done);
            // A fault already due takes effect before anything else is read: a
            // timer whose deadline has passed may still need a driver turn to fire,
            // and a message waiting on the socket must not overtake it.
            if fault_at.is_some_and(|at| at <= Instant::now()) {
                if let Some(input) = self.inject_due_fault() {
                    return input;
                }
                continue;
            }
            tokio::select! {
                biased;
                r = self.shutdown.changed() => {
                    if r.is_err() || *self.shutdown.borrow() {
                        return Input::Shutdown;
                    }
                }
                () = sleep_until(fault_at.unwrap_or_else(Instant::now)), if fault_at.is_some() => {
                    if let Some(input) = self.inject_due_fault() {
                        return input;
                    }
                }
                () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    return Input::Wake;
                }
                m = self.ws.next(), if !self.slow_read => match m {
                    None | Some(Err(_)) => return Input::Closed,
                    Some(Ok(Message::Text(t))) => return Input::Text(t),
                    Some(Ok(Message::Binary(b))) => return Input::Binary(b),
                    Some(Ok(Message::Close(_))) => {
                        // Complete the close handshake (tungstenite queued the reply).
                        let _ = timeout(Duration::from_secs(1), self.ws.flush()).await;
                        return Input::Closed;
                    }
                    Some(Ok(_)) => {} // ping / pong / raw frame
                },
            }
        }
    }

    /// Send a JSON message (nothing while stalled).
    pub(crate) async fn send_json(&mut self, v: &Value) -> Result<(), Gone> {
        self.send(Message::Text(v.to_string())).await
    }

    /// Send agent audio as a binary message (nothing while stalled); counted.
    pub(crate) async fn send_audio(&mut self, bytes: Vec<u8>) -> Result<(), Gone> {
        if self.stalled {
            return Ok(());
        }
        let n = bytes.len() as u64;
        self.send(Message::Binary(bytes)).await?;
        self.shared.add(|s| s.audio_bytes_out += n);
        Ok(())
    }

    /// Count agent audio the protocol sent inside a JSON message.
    pub(crate) fn audio_out(&self, bytes: usize) {
        if !self.stalled {
            self.shared.add(|s| s.audio_bytes_out += bytes as u64);
        }
    }

    async fn send(&mut self, m: Message) -> Result<(), Gone> {
        if self.stalled {
            return Ok(());
        }
        self.ws.send(m).await.map_err(|_| Gone)
    }

    /// Send a close frame and give the client a moment to answer it; the session
    /// then ends.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if self.stalled {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        if timeout(Duration::from_secs(1), self.ws.close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let _ = timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Inject a due fault (from [`Input::Fault`]) in the protocol's `style`.
    pub(crate) async fn inject(&mut self, fault: Fault, style: &FaultStyle) -> Result<Flow, Gone> {
        match fault {
            Fault::CloseMidResponse => Ok(Flow::End), // dropped: no close frame
            Fault::Stall | Fault::SlowRead => Ok(Flow::Continue),
            Fault::EndlessMessage => {
                // Whatever tungstenite holds goes out first, then, beneath it, an
                // unmasked text frame header announcing 1 MiB and 16 bytes of it.
                // Nothing else is ever sent (pongs tungstenite queues while the
                // socket is still read would land inside that frame's payload).
                self.ws.flush().await.map_err(|_| Gone)?;
                let mut raw = vec![0x81u8, 127];
                raw.extend_from_slice(&(1u64 << 20).to_be_bytes());
                raw.extend_from_slice(b"{\"type\":\"respon");
                use tokio::io::AsyncWriteExt;
                self.ws.get_mut().write_all(&raw).await.map_err(|_| Gone)?;
                self.stalled = true;
                Ok(Flow::Continue)
            }
            Fault::MalformedJson => {
                let text = format!(
                    "{{\"type\":\"{}\",\"{}\":\"AAAA",
                    style.big_type, style.big_field
                );
                self.send(Message::Text(text)).await?;
                Ok(Flow::Continue)
            }
            Fault::Oversize => {
                let head = format!(
                    "{{\"type\":\"{}\",\"{}\":\"",
                    style.big_type, style.big_field
                );
                let pad = OVERSIZE_BYTES.saturating_sub(head.len() + 2);
                let mut text = String::with_capacity(OVERSIZE_BYTES);
                text.push_str(&head);
                text.extend(std::iter::repeat_n('A', pad));
                text.push_str("\"}");
                self.send(Message::Text(text)).await?;
                Ok(Flow::Continue)
            }
            Fault::ErrorEvent { fatal } => {
                self.send_json(&(style.error)(fatal)).await?;
                if fatal {
                    self.close(style.fatal_close, "error").await;
                    Ok(Flow::End)
                } else {
                    Ok(Flow::Continue)
                }
            }
        }
    }
}

/// Ids that look like the service's, repeatable per seed.
#[derive(Debug, Clone)]
pub(crate) struct Ids(SplitMix64);

impl Ids {
    pub(crate) fn new(seed: u64) -> Self {
        Ids(SplitMix64(seed))
    }

    /// `prefix` + 20 base-62 characters (`item_...`, `resp_...`).
    pub(crate) fn next(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut s = String::with_capacity(prefix.len() + 20);
        s.push_str(prefix);
        for _ in 0..20 {
            s.push(ALPHABET[(self.0.next_u64() % 62) as usize] as char);
        }
        s
    }

    /// A UUID-shaped id (`8-4-4-4-12` hex).
    pub(crate) fn uuid(&mut self) -> String {
        let a = self.0.next_u64();
        let b = self.0.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFF,
            0x8000 | ((b >> 48) & 0x3FFF),
            b & 0xFFFF_FFFF_FFFF
        )
    }
}

/// The accept loop of a simulator: one task per connection until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            r = listener.accept() => match r {
                Ok((tcp, _peer)) => {
                    conns.spawn(connection(tcp, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "provider sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            r = conns.join_next() => if r.is_none() { break },
            () = &mut grace => {
                conns.abort_all();
                while conns.join_next().await.is_some() {}
                break;
            }
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(MAX_IN_MESSAGE),
        max_frame_size: Some(MAX_IN_MESSAGE),
        ..WebSocketConfig::default()
    }
}

fn verdict_for(shared: &Shared, hs: &Handshake) -> Verdict {
    let key = shared.cfg.api_key.as_deref();
    match shared.cfg.protocol {
        SimProtocol::OpenAi => openai::handshake(hs, key),
        SimProtocol::Deepgram => deepgram::handshake(hs, key),
        SimProtocol::Local => local::handshake(hs),
    }
}

/// One connection: the HTTP upgrade, then the protocol's session.
async fn connection(tcp: TcpStream, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let no = shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    shared.add(|s| s.connections += 1);
    let mut hs = Handshake::default();
    let mut verdict = None;
    // The signature is tungstenite's handshake callback.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        hs = Handshake::from_request(req);
        let v = verdict_for(&shared, &hs);
        let out = match &v {
            Verdict::Accept { subprotocol } => {
                if let Some(p) = subprotocol {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(p));
                }
                Ok(resp)
            }
            Verdict::Refuse { status, body, .. } => {
                let mut r = ErrorResponse::new(Some(body.clone()));
                *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                Err(r)
            }
        };
        verdict = Some(v);
        out
    };
    let accepted = timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config())),
    )
    .await;
    if let Some(Verdict::Refuse {
        auth_failure,
        violation,
        status,
        ..
    }) = &verdict
    {
        if *auth_failure {
            shared.add(|s| s.auth_failures += 1);
        }
        if let Some(v) = violation {
            shared.violation(no, v);
        }
        tracing::debug!(conn = no, status, "provider sim: handshake refused");
        return;
    }
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(conn = no, error = %e, "provider sim: handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(conn = no, "provider sim: handshake timed out");
            return;
        }
    };
    let conn = Conn::new(no, shared.clone(), hs, ws, shutdown);
    match shared.cfg.protocol {
        SimProtocol::OpenAi => openai::run(conn).await,
        SimProtocol::Deepgram => deepgram::run(conn).await,
        SimProtocol::Local => local::run(conn).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("gpt-realtime"), "gpt-realtime");
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%e2%82%ac"), "\u{20ac}");
    }

    #[test]
    fn clipping_and_redaction() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
        let hs = Handshake::for_test("/v1/realtime", &[("Authorization", "Bearer sk-secret")]);
        let dbg = format!("{hs:?}");
        assert!(
            dbg.contains("authorization") && !dbg.contains("sk-secret"),
            "{dbg}"
        );
    }

    #[test]
    fn ids_are_repeatable_and_shaped() {
        let mut a = Ids::new(1);
        let mut b = Ids::new(1);
        let x = a.next("item_");
        assert_eq!(x, b.next("item_"));
        assert_eq!(x.len(), 25);
        assert!(x[5..].chars().all(|c| c.is_ascii_alphanumeric()));
        let u = a.uuid();
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }
}
