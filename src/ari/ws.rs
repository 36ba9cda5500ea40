//! The ARI events WebSocket: connect, forward typed events, stay connected.
//!
//! Owns: the events URL (`ws(s)://host:port/ari/events?app=<app>&subscribeAll=false`
//! with basic auth), [`EventsClient`] / [`run_events`] (the long-lived task that
//! connects, parses every frame with [`parse_event`], forwards the typed events on a
//! bounded channel, answers pings, sends its own pings to notice a dead peer, and
//! reconnects after any loss), the `connected` flag for readiness, and [`Backoff`]
//! (exponential backoff with full jitter, sans-IO: the caller passes the random
//! number). Must not: stop on a bad or unknown event (bad ones are logged and
//! skipped, unknown ones ignored), give up reconnecting while voxd runs, log the
//! credentials, or act on an event itself (the engine does that).

#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::error::{truncate_message, AriError};
use super::events::{parse_event, AriEvent, MAX_EVENT_BYTES};
use super::rest::{authority, basic_auth_header, status_error};
use crate::config::{AriScheme, AsteriskConfig};
use crate::rng::SplitMix64;

/// First reconnect delay ceiling (the delay is uniform in `[0, ceiling]`).
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Largest reconnect delay ceiling.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted longer than this resets the backoff.
pub const BACKOFF_STABLE_AFTER: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter (delay uniform in `[0, min(max, initial *
/// 2^attempt)]`), reset after a connection that stayed up long enough.
///
/// Sans-IO: it neither sleeps nor draws random numbers; [`Backoff::next_delay`] takes
/// the random value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 250 ms initial, 30 s cap, reset after 10 s up.
    fn default() -> Self {
        Self::new(BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_STABLE_AFTER)
    }
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`, reset by a connection that
    /// lasted more than `stable_after`.
    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            stable_after,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.checked_pow(self.attempt).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt, `random` mapped into `[0, ceiling]`
    /// (full jitter); advances the exponent. Called after every failed connect or
    /// lost connection.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = match ceiling.checked_add(1) {
            Some(span) => random % span,
            None => random,
        };
        Duration::from_nanos(nanos)
    }

    /// Records that a connection ended after being up for `lasted`; one that lasted
    /// more than `stable_after` resets the backoff to its initial ceiling.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted > self.stable_after {
            self.reset();
        }
    }

    /// Back to the initial ceiling.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Tunables of the events task; [`EventsOptions::default`] gives the documented
/// values.
#[derive(Debug, Clone)]
pub struct EventsOptions {
    /// Reconnect backoff (250 ms initial, 30 s cap, reset after 10 s up).
    pub backoff: Backoff,
    /// Timeout of one connect (TCP, TLS and WebSocket handshake): 5 s.
    pub connect_timeout: Duration,
    /// voxd pings Asterisk this often: 20 s.
    pub ping_interval: Duration,
    /// With no frame at all from Asterisk for this long (pongs count), the
    /// connection is taken as dead and replaced: 60 s.
    pub idle_timeout: Duration,
    /// TLS configuration for `wss`; `None` builds one with
    /// [`super::tls::client_config`]. Pass the REST client's to share it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Seed for the backoff jitter; `None` seeds from the clock and process id.
    pub jitter_seed: Option<u64>,
    /// Counts event frames that could not be parsed (malformed JSON, missing
    /// fields, oversize), each skipped with a warning. Share it to export it.
    pub bad_events: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for EventsOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            tls: None,
            jitter_seed: None,
            bad_events: Arc::default(),
        }
    }
}

/// The events URL for `cfg`:
/// `ws(s)://host:port/ari/events?app=<app_name>&subscribeAll=false` (app name
/// URL-encoded; no credentials in it).
pub fn events_url(cfg: &AsteriskConfig) -> Result<String, AriError> {
    let scheme = match cfg.scheme {
        AriScheme::Http => "ws",
        AriScheme::Https => "wss",
    };
    let mut url =
        Url::parse(&format!("{scheme}://{}/ari/events", authority(cfg))).map_err(|e| {
            AriError::Config {
                detail: format!("asterisk.host {:?} does not form a URL: {e}", cfg.host),
            }
        })?;
    url.query_pairs_mut()
        .append_pair("app", &cfg.app_name)
        .append_pair("subscribeAll", "false");
    Ok(url.into())
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one connection ended.
enum End {
    Shutdown,
    ReceiverGone,
    Lost(String),
}

/// The events connection, ready to run. Built once at start-up so configuration
/// errors surface before the task is spawned.
pub struct EventsClient {
    url: String,
    auth: Option<HeaderValue>,
    tls: Option<Arc<rustls::ClientConfig>>,
    opts: EventsOptions,
}

impl std::fmt::Debug for EventsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsClient")
            .field("url", &self.url)
            .field(
                "auth",
                &if self.auth.is_some() {
                    "***"
                } else {
                    "(unset)"
                },
            )
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl EventsClient {
    /// Prepares the events connection for `cfg`. [`AriError::Config`] when the URL,
    /// the credentials header or the TLS configuration cannot be built.
    pub fn new(cfg: &AsteriskConfig, mut opts: EventsOptions) -> Result<Self, AriError> {
        let url = events_url(cfg)?;
        let tls = match cfg.scheme {
            AriScheme::Http => None,
            AriScheme::Https => Some(match opts.tls.take() {
                Some(t) => t,
                None => super::tls::client_config(cfg)?,
            }),
        };
        Ok(Self {
            url,
            auth: basic_auth_header(cfg)?,
            tls,
            opts,
        })
    }

    /// The URL this client connects to (no credentials in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects once: TCP, TLS when `wss`, WebSocket handshake with basic auth.
    /// [`AriError::Auth`] on 401/403, [`AriError::Timeout`] after
    /// [`EventsOptions::connect_timeout`].
    pub async fn connect_once(
        &self,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, AriError> {
        const OP: &str = "events";
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| AriError::Config {
                detail: format!("events URL: {e}"),
            })?;
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let connector = self.tls.as_ref().map(|t| Connector::Rustls(t.clone()));
        // Frames a little over the event limit still arrive, so parse_event reports
        // them (and the connection survives); anything larger drops the connection.
        let ws_cfg = WebSocketConfig {
            max_message_size: Some(2 * MAX_EVENT_BYTES),
            max_frame_size: Some(2 * MAX_EVENT_BYTES),
            ..WebSocketConfig::default()
        };
        let fut =
            tokio_tungstenite::connect_async_tls_with_config(req, Some(ws_cfg), true, connector);
        match tokio::time::timeout(self.opts.connect_timeout, fut).await {
            Err(_) => Err(AriError::Timeout { op: OP }),
            Ok(Err(e)) => Err(ws_error(OP, e)),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }

    /// Runs until `shutdown` completes or the receiver of `tx` is dropped: connects,
    /// forwards every known event to `tx` (waiting when it is full), ignores
    /// unknown ones, logs and skips bad ones, and reconnects after any loss with
    /// [`Backoff`]. `connected` is `true` exactly while a connection is up (set
    /// `false` before returning). Returns `Ok(())`; connection failures are logged
    /// and retried, never returned.
    pub async fn run<F>(
        self,
        tx: mpsc::Sender<AriEvent>,
        connected: watch::Sender<bool>,
        shutdown: F,
    ) -> Result<(), AriError>
    where
        F: Future<Output = ()>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut rng = SplitMix64(self.opts.jitter_seed.unwrap_or_else(clock_seed));
        let mut backoff = self.opts.backoff.clone();
        connected.send_replace(false);
        loop {
            let attempt = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = self.connect_once() => r,
            };
            match attempt {
                Ok(ws) => {
                    tracing::info!(url = %self.url, "ARI events connected");
                    connected.send_replace(true);
                    let since = Instant::now();
                    let end = self.pump(ws, &tx, &mut shutdown).await;
                    connected.send_replace(false);
                    match end {
                        End::Shutdown => break,
                        End::ReceiverGone => {
                            tracing::debug!("ARI events receiver dropped; events task ends");
                            break;
                        }
                        End::Lost(reason) => {
                            tracing::warn!(%reason, "ARI events connection lost; reconnecting");
                        }
                    }
                    backoff.connection_ended(since.elapsed());
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        fault = e.fault().as_label(),
                        attempt = backoff.attempt() + 1,
                        "ARI events connect failed"
                    );
                }
            }
            let delay = backoff.next_delay(rng.next_u64());
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        connected.send_replace(false);
        Ok(())
    }

    async fn pump<F: Future<Output = ()>>(
        &self,
        ws: WsStream,
        tx: &mpsc::Sender<AriEvent>,
        shutdown: &mut Pin<&mut F>,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let period = self.opts.ping_interval.max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        loop {
            let msg = tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        sink.send(Message::Close(None)),
                    )
                    .await;
                    return End::Shutdown;
                }
                _ = ping.tick() => {
                    if last_rx.elapsed() >= self.opts.idle_timeout {
                        return End::Lost(format!(
                            "nothing received for {} s",
                            self.opts.idle_timeout.as_secs()
                        ));
                    }
                    if let Err(e) = sink.send(Message::Ping(Vec::new())).await {
                        return End::Lost(truncate_message(&e.to_string()));
                    }
                    continue;
                }
                msg = stream.next() => msg,
            };
            let msg = match msg {
                None => return End::Lost("closed".to_string()),
                Some(Err(e)) => return End::Lost(truncate_message(&e.to_string())),
                Some(Ok(m)) => m,
            };
            last_rx = Instant::now();
            let bytes: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                // tungstenite queues the pong for a ping itself and sends it on the
                // next read, which the loop does at once.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(frame) => {
                    let why = frame
                        .as_ref()
                        .map(|f| format!("closed by Asterisk ({}: {})", f.code, f.reason))
                        .unwrap_or_else(|| "closed by Asterisk".to_string());
                    return End::Lost(truncate_message(&why));
                }
            };
            match parse_event(bytes) {
                Ok(AriEvent::Unknown(kind)) => {
                    tracing::trace!(%kind, "ARI event ignored");
                }
                Ok(event) => {
                    tokio::select! {
                        biased;
                        _ = shutdown.as_mut() => return End::Shutdown,
                        r = tx.send(event) => if r.is_err() { return End::ReceiverGone },
                    }
                }
                Err(e) => {
                    self.opts
                        .bad_events
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "bad ARI event skipped (counted in voxd_ari_bad_events_total)");
                }
            }
        }
    }
}

/// Builds an [`EventsClient`] for `cfg` with [`EventsOptions::default`] and runs it
/// (see [`EventsClient::run`]). Spawn it once at start-up on the control runtime.
/// Returns [`AriError::Config`] at once when the configuration cannot work;
/// otherwise `Ok(())` after `shutdown` or when `tx`'s receiver is dropped.
pub async fn run_events<F>(
    cfg: AsteriskConfig,
    tx: mpsc::Sender<AriEvent>,
    connected: watch::Sender<bool>,
    shutdown: F,
) -> Result<(), AriError>
where
    F: Future<Output = ()>,
{
    let client = match EventsClient::new(&cfg, EventsOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            connected.send_replace(false);
            return Err(e);
        }
    };
    client.run(tx, connected, shutdown).await
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn io_is_tls(e: &std::io::Error) -> bool {
    super::rest::is_tls_error(e)
}

/// Maps a tungstenite connect error to an [`AriError`].
fn ws_error(op: &'static str, e: tungstenite::Error) -> AriError {
    use tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or(&[]);
            status_error(op, resp.status().as_u16(), body)
        }
        E::Io(io) if io_is_tls(&io) => AriError::Tls {
            op,
            detail: truncate_message(&io.to_string()),
        },
        E::Tls(t) => AriError::Tls {
            op,
            detail: truncate_message(&t.to_string()),
        },
        E::Url(u) => AriError::Config {
            detail: format!("events URL: {u}"),
        },
        E::Io(io) => AriError::AsteriskUnreachable {
            op,
            detail: truncate_message(&io.to_string()),
        },
        E::ConnectionClosed | E::AlreadyClosed => AriError::AsteriskUnreachable {
            op,
            detail: "connection closed during the handshake".to_string(),
        },
        other => AriError::Protocol {
            op,
            detail: truncate_message(&other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::default();
        assert_eq!(b.ceiling(), Duration::from_millis(250));
        // The maximum random value gives exactly the ceiling; 0 gives no wait.
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            ceilings.push(c.as_millis());
            let mut probe = b.clone();
            assert_eq!(probe.next_delay(0), Duration::ZERO);
            let mut probe = b.clone();
            let span = c.as_nanos() as u64 + 1;
            assert_eq!(probe.next_delay(span - 1), c);
            let d = b.next_delay(u64::MAX);
            assert!(d <= c);
        }
        assert_eq!(
            ceilings,
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]
        );
        assert_eq!(b.attempt(), 12);
    }

    #[test]
    fn backoff_resets_only_after_a_stable_connection() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(1);
        }
        b.connection_ended(Duration::from_secs(3));
        assert_eq!(b.ceiling(), Duration::from_secs(8));
        b.connection_ended(Duration::from_secs(10));
        assert_eq!(b.attempt(), 5, "exactly 10 s is not more than 10 s");
        b.connection_ended(Duration::from_millis(10_001));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(250));
    }

    #[test]
    fn backoff_survives_huge_attempt_counts() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX, Duration::ZERO);
        for _ in 0..100 {
            let _ = b.next_delay(u64::MAX);
        }
        assert!(b.ceiling() > Duration::from_secs(1));
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(12345), Duration::ZERO);
    }

    #[test]
    fn events_url_shape() {
        let cfg = AsteriskConfig {
            app_name: "my app&x".into(),
            ..AsteriskConfig::default()
        };
        assert_eq!(
            events_url(&cfg).unwrap(),
            "ws://127.0.0.1:8088/ari/events?app=my+app%26x&subscribeAll=false"
        );
        let cfg = AsteriskConfig {
            scheme: AriScheme::Https,
            host: "pbx.example".into(),
            port: 8089,
            ..AsteriskConfig::default()
        };
        assert_eq!(
            events_url(&cfg).unwrap(),
            "wss://pbx.example:8089/ari/events?app=asterisk-ai-voice-agent&subscribeAll=false"
        );
    }

    #[test]
    fn client_debug_hides_credentials() {
        let cfg = AsteriskConfig {
            username: Secret::new("u"),
            password: Secret::new("topsecret"),
            ..AsteriskConfig::default()
        };
        let c = EventsClient::new(&cfg, EventsOptions::default()).unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("topsecret") && text.contains("***"),
            "{text}"
        );
        assert!(c.url().starts_with("ws://"));
    }

    #[test]
    fn handshake_statuses_classify() {
        let resp = tungstenite::http::Response::builder()
            .status(401)
            .body(None)
            .unwrap();
        assert!(matches!(
            ws_error("events", tungstenite::Error::Http(resp)),
            AriError::Auth { status: 401, .. }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(ws_error("events", io.into()).as_label(), "unreachable");
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(ws_error("events", tls.into()).as_label(), "tls");
    }
}
