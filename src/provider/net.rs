//! WebSocket connections to network providers (OpenAI Realtime, Deepgram Voice
//! Agent, the local STT/LLM/TTS server): URL checks, the opening handshake with an
//! auth header, TLS with rustls and the webpki roots for `wss://`, plain TCP for
//! `ws://` (loopback simulators, a LAN server), message size limits, and a connect
//! timeout.
//!
//! Owns: [`connect`] and the [`WsStream`] type every provider client uses, and the
//! mapping of handshake failures to [`ProviderError`] (401/403 say "check the API
//! key", never the key itself).
//!
//! Must not: log or put into an error any header value (the API key travels in
//! one), follow redirects, or speak a provider's protocol: that belongs to the
//! provider's own module.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ProviderError;

/// A provider's WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message (and frame) voxd accepts from a provider: 4 MiB. OpenAI's
/// largest audio delta is a few hundred KiB of base64; anything bigger is a broken
/// or hostile peer and ends the session with a protocol error.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Default time allowed for TCP + TLS + WebSocket handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bounds (ms) of the connect-time buckets ([`connect_times`]).
pub const CONNECT_BUCKETS_MS: [u64; 7] = [50, 100, 250, 500, 1000, 2500, 5000];

/// Providers whose connects are timed, in [`connect_times`] order.
pub const TIMED_PROVIDERS: [&str; 3] = ["openai_realtime", "deepgram", "local"];

/// Successful connects per provider and bucket, and the sum of their times (µs):
/// process-wide (not per call; read by `/metrics`).
static CONNECT_COUNTS: [[AtomicU64; 8]; 3] = [const { [const { AtomicU64::new(0) }; 8] }; 3];
static CONNECT_SUM_US: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// A provider's connect times so far: count per [`CONNECT_BUCKETS_MS`] bucket (plus
/// one above) and the sum in seconds. `None` for a name not in
/// [`TIMED_PROVIDERS`].
pub fn connect_times(name: &str) -> Option<([u64; 8], f64)> {
    let i = TIMED_PROVIDERS.iter().position(|p| *p == name)?;
    let counts = std::array::from_fn(|b| CONNECT_COUNTS[i][b].load(Ordering::Relaxed));
    let sum = CONNECT_SUM_US[i].load(Ordering::Relaxed) as f64 / 1e6;
    Some((counts, sum))
}

fn record_connect(name: &str, took: Duration) {
    let Some(i) = TIMED_PROVIDERS.iter().position(|p| *p == name) else {
        return;
    };
    let ms = took.as_millis() as u64;
    let b = CONNECT_BUCKETS_MS
        .iter()
        .position(|&x| ms <= x)
        .unwrap_or(CONNECT_BUCKETS_MS.len());
    CONNECT_COUNTS[i][b].fetch_add(1, Ordering::Relaxed);
    CONNECT_SUM_US[i].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
}

/// The rustls client configuration for `wss://` providers (webpki roots, ring),
/// built once per process.
fn tls() -> Result<Arc<ClientConfig>, ProviderError> {
    static TLS: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| crate::ari::tls::client_config_with_ca_pem(None).map_err(|e| e.to_string()))
        .clone()
        .map_err(|message| ProviderError::Internal {
            name: "tls".into(),
            message,
        })
}

/// Whether `url` is a `ws://` or `wss://` URL with a host; the error names the
/// provider's config key. Called when the registry is built so a bad
/// `base_url` stops start-up instead of failing every call.
pub fn check_url(name: &str, url: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| ProviderError::Config {
        name: name.to_string(),
        message: format!("providers.{name}.base_url `{url}`: {why}"),
    };
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| bad("must start with ws:// or wss://"))?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains('@') {
        return Err(bad(
            "must not carry credentials (keys come from the environment)",
        ));
    }
    Ok(())
}

/// Whether `url` points at this host (`localhost`, `127.x`, `[::1]`): plain `ws://`
/// is fine there; a provider that sends an API key over `ws://` elsewhere refuses.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Opens the provider's WebSocket at `url` with `headers` (e.g.
/// `("Authorization", "Bearer …")`), Nagle off, messages capped at
/// [`MAX_MESSAGE_BYTES`], all within `timeout`.
///
/// Errors: [`ProviderError::Timeout`] (`what: "connect"`), [`ProviderError::Connect`]
/// with the HTTP status for a refused upgrade (401/403 add "check the API key"), or
/// the transport error; [`ProviderError::Config`] for a URL or header that cannot be
/// used. No error text contains a header value.
pub async fn connect(
    name: &str,
    url: &str,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<WsStream, ProviderError> {
    check_url(name, url)?;
    let mut req = url
        .into_client_request()
        .map_err(|e| ProviderError::Config {
            name: name.to_string(),
            message: format!("providers.{name}.base_url `{url}`: {e}"),
        })?;
    for (k, v) in headers {
        let value = HeaderValue::from_str(v).map_err(|_| ProviderError::Config {
            name: name.to_string(),
            message: format!("the {k} header value has characters HTTP does not allow"),
        })?;
        req.headers_mut().insert(*k, value);
    }
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(tls()?))
    } else {
        Some(Connector::Plain)
    };
    let ws_cfg = WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE_BYTES),
        max_frame_size: Some(MAX_MESSAGE_BYTES),
        // Writes wait (back-pressure) once 128 KiB are queued; the hard cap only
        // bounds memory if a caller ignores that.
        write_buffer_size: 128 * 1024,
        max_write_buffer_size: 2 * MAX_MESSAGE_BYTES,
        ..WebSocketConfig::default()
    };
    let fut = tokio_tungstenite::connect_async_tls_with_config(req, Some(ws_cfg), true, connector);
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ProviderError::Timeout {
            name: name.to_string(),
            what: format!("connect ({} ms)", timeout.as_millis()),
        }),
        Ok(Ok((ws, _resp))) => {
            record_connect(name, started.elapsed());
            Ok(ws)
        }
        Ok(Err(e)) => Err(ProviderError::Connect {
            name: name.to_string(),
            message: describe(&e),
        }),
    }
}

/// A handshake error in words, without any header of the request.
fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let s = resp.status();
            let hint = match s.as_u16() {
                401 | 403 => " (check the API key in the environment)",
                404 => " (check base_url and model)",
                429 => " (rate limited)",
                _ => "",
            };
            format!("HTTP {s} on the WebSocket upgrade{hint}")
        }
        Error::Io(io) => format!("{io}"),
        Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("openai_realtime", "wss://api.openai.com/v1/realtime").is_ok());
        assert!(check_url("local", "ws://127.0.0.1:8765").is_ok());
        let e = check_url("deepgram", "https://agent.deepgram.com").unwrap_err();
        assert!(e.to_string().contains("providers.deepgram.base_url"), "{e}");
        assert!(check_url("local", "ws://").is_err());
        assert!(check_url("local", "ws://user:pw@host/").is_err());
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("ws://127.0.0.1:9000/v1"));
        assert!(is_loopback_url("ws://localhost:9000"));
        assert!(is_loopback_url("ws://[::1]:9000/x"));
        assert!(!is_loopback_url("ws://10.0.0.5:8765"));
        assert!(!is_loopback_url("wss://api.openai.com/v1/realtime"));
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error_and_timeout_is_a_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("ws://127.0.0.1:{port}/");
        let e = connect(
            "local",
            &url,
            &[("Authorization", "Bearer sk-secret".into())],
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ProviderError::Connect { .. }), "{e:?}");
        assert!(!e.to_string().contains("sk-secret"));

        // A listener that never answers the upgrade.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", l.local_addr().unwrap());
        let e = connect("local", &url, &[], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
        drop(l);
    }
}
