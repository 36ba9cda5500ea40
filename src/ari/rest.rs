//! The ARI REST client: the calls voxd makes on channels and bridges.
//!
//! Owns: [`AriRest`] (one reqwest client per process, base URL from the
//! `asterisk:` block, basic auth, connect and request timeouts, TLS from
//! [`super::tls`]), the request shapes (path segments and query parameters, all
//! URL-encoded), the typed responses ([`Channel`], [`Bridge`], [`Playback`],
//! [`AsteriskInfo`]) and the mapping of every failure to an [`AriError`] that says
//! who is at fault. Must not: log or print the credentials (the auth header is marked
//! sensitive and `Debug` masks it), retry on its own (the caller knows whether a
//! retry is safe), read unbounded bodies (capped at [`MAX_BODY_BYTES`]), or keep any
//! per-call state.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{truncate_message, AriError};
use super::events::Channel;
use super::version::AsteriskVersion;
use crate::config::{AriScheme, AsteriskConfig};

/// Largest response body read from Asterisk (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default TCP (and TLS) connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of [`AriRest`]; [`RestOptions::default`] gives 2 s connect, 5 s request
/// and the TLS configuration built from the `asterisk:` block.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of a whole request (connect, send, response body).
    pub request_timeout: Duration,
    /// TLS configuration to use for `https`; `None` builds one with
    /// [`super::tls::client_config`]. Pass the same one to the events task.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
        }
    }
}

/// `GET /ari/asterisk/info`: what voxd needs to know about the Asterisk it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsteriskInfo {
    /// The version (`system.version`), parsed; unknown when absent.
    pub version: AsteriskVersion,
    /// `system.entity_id` (the Asterisk instance's id), when sent.
    pub entity_id: Option<String>,
}

/// An ARI bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bridge {
    /// Bridge id.
    pub id: String,
    /// Bridging technology (`simple_bridge`, `softmix`, ...).
    #[serde(default)]
    pub technology: String,
    /// `mixing`, `holding`, ...
    #[serde(default)]
    pub bridge_type: String,
    /// Name given at creation.
    #[serde(default)]
    pub name: String,
    /// Ids of the channels in the bridge.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// An ARI playback (the answer to [`AriRest::play`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Playback {
    /// Playback id.
    pub id: String,
    /// The media URI being played (`sound:hello-world`).
    #[serde(default)]
    pub media_uri: String,
    /// `queued`, `playing`, `done`, ...
    #[serde(default)]
    pub state: String,
    /// What it plays to (`channel:<id>`).
    #[serde(default)]
    pub target_uri: String,
}

/// Why a channel is hung up (the `reason` of `DELETE /ari/channels/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HangupReason {
    /// Normal clearing (cause 16).
    #[default]
    Normal,
    /// User busy (17).
    Busy,
    /// Congestion (34).
    Congestion,
    /// No answer (19).
    NoAnswer,
    /// Timeout.
    Timeout,
    /// Call rejected (21).
    Rejected,
    /// Unallocated number (1).
    Unallocated,
    /// Normal, unspecified (31).
    NormalUnspecified,
    /// Interworking (127).
    Interworking,
    /// Temporary failure (41).
    Failure,
    /// Answered elsewhere (26).
    AnsweredElsewhere,
}

impl HangupReason {
    /// The `reason` value ARI expects.
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::Normal => "normal",
            HangupReason::Busy => "busy",
            HangupReason::Congestion => "congestion",
            HangupReason::NoAnswer => "no_answer",
            HangupReason::Timeout => "timeout",
            HangupReason::Rejected => "rejected",
            HangupReason::Unallocated => "unallocated",
            HangupReason::NormalUnspecified => "normal_unspecified",
            HangupReason::Interworking => "interworking",
            HangupReason::Failure => "failure",
            HangupReason::AnsweredElsewhere => "answered_elsewhere",
        }
    }
}

/// ExternalMedia `encapsulation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    /// RTP (with `transport: udp`).
    Rtp,
    /// AudioSocket (with `transport: tcp`).
    Audiosocket,
}

impl Encapsulation {
    /// The value ARI expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Encapsulation::Rtp => "rtp",
            Encapsulation::Audiosocket => "audiosocket",
        }
    }
}

/// ExternalMedia `transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP (RTP).
    Udp,
    /// TCP (AudioSocket).
    Tcp,
}

impl Transport {
    /// The value ARI expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The parameters of `POST /ari/channels/externalMedia`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalMedia<'a> {
    /// Id voxd chooses for the new channel (tells its `StasisStart` apart).
    pub channel_id: &'a str,
    /// Stasis application that receives the channel.
    pub app: &'a str,
    /// Where Asterisk sends the media: `host:port` of voxd.
    pub external_host: &'a str,
    /// Media format (`ulaw`, `alaw`, `slin16`, ...).
    pub format: &'a str,
    /// RTP or AudioSocket.
    pub encapsulation: Encapsulation,
    /// UDP or TCP.
    pub transport: Transport,
    /// Encapsulation data: the AudioSocket UUID for `audiosocket`.
    pub data: Option<&'a str>,
}

impl<'a> ExternalMedia<'a> {
    /// RTP over UDP to `external_host` (the usual ExternalMedia leg).
    pub fn rtp(channel_id: &'a str, app: &'a str, external_host: &'a str, format: &'a str) -> Self {
        Self {
            channel_id,
            app,
            external_host,
            format,
            encapsulation: Encapsulation::Rtp,
            transport: Transport::Udp,
            data: None,
        }
    }

    /// AudioSocket over TCP to `external_host`; the `uuid` arrives in the 0x01 frame.
    pub fn audiosocket(
        channel_id: &'a str,
        app: &'a str,
        external_host: &'a str,
        format: &'a str,
        uuid: &'a str,
    ) -> Self {
        Self {
            channel_id,
            app,
            external_host,
            format,
            encapsulation: Encapsulation::Audiosocket,
            transport: Transport::Tcp,
            data: Some(uuid),
        }
    }
}

/// The ARI REST client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct AriRest {
    client: reqwest::Client,
    base: Url,
    auth: Option<HeaderValue>,
}

impl fmt::Debug for AriRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AriRest")
            .field("base", &self.base.as_str())
            .field(
                "auth",
                &if self.auth.is_some() {
                    "***"
                } else {
                    "(unset)"
                },
            )
            .finish()
    }
}

/// The `host[:port]` part of an ARI URL (IPv6 literals get brackets).
pub(crate) fn authority(cfg: &AsteriskConfig) -> String {
    let host = cfg.host.trim();
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", cfg.port)
    } else {
        format!("{host}:{}", cfg.port)
    }
}

/// The `Basic ...` header value for the configured credentials, marked sensitive;
/// `None` when neither user nor password is set.
pub(crate) fn basic_auth_header(cfg: &AsteriskConfig) -> Result<Option<HeaderValue>, AriError> {
    if !cfg.username.is_set() && !cfg.password.is_set() {
        return Ok(None);
    }
    let user = cfg.username.expose().unwrap_or("");
    let pass = cfg.password.expose().unwrap_or("");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut value =
        HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| AriError::Config {
            detail: "ARI credentials cannot form an HTTP header".to_string(),
        })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Whether a rustls error hides anywhere in `e`'s chain, including inside
/// `io::Error` payloads and boxed causes (which `source()` alone skips).
pub(crate) fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    fn check(e: &(dyn std::error::Error + 'static), depth: usize) -> bool {
        if depth > 16 {
            return false;
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if check(inner, depth + 1) {
                    return true;
                }
            }
        }
        e.source().is_some_and(|s| check(s, depth + 1))
    }
    check(e, 0)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    truncate_message(&text)
}

fn transport_error(op: &'static str, e: reqwest::Error) -> AriError {
    if e.is_timeout() {
        AriError::Timeout { op }
    } else if is_tls_error(&e) {
        AriError::Tls {
            op,
            detail: error_chain(&e),
        }
    } else if e.is_builder() {
        AriError::Config {
            detail: error_chain(&e),
        }
    } else {
        AriError::AsteriskUnreachable {
            op,
            detail: error_chain(&e),
        }
    }
}

/// Maps a non-success status and its body to the matching [`AriError`].
pub(crate) fn status_error(op: &'static str, status: u16, body: &[u8]) -> AriError {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => truncate_message(&b.message),
        Err(_) => truncate_message(String::from_utf8_lossy(body).trim()),
    };
    match status {
        401 | 403 => AriError::Auth { op, status },
        404 => AriError::NotFound { op, message },
        409 => AriError::Conflict { op, message },
        422 => AriError::Unprocessable { op, message },
        _ => AriError::Status {
            op,
            status,
            message,
        },
    }
}

impl AriRest {
    /// A client for the ARI described by `cfg`, with [`RestOptions::default`].
    ///
    /// Called once at start-up. No request is made; [`AriError::Config`] when the
    /// host cannot form a URL or the TLS settings cannot be built.
    pub fn new(cfg: &AsteriskConfig) -> Result<Self, AriError> {
        Self::with_options(cfg, RestOptions::default())
    }

    /// A client with explicit timeouts and, optionally, a prebuilt TLS configuration.
    pub fn with_options(cfg: &AsteriskConfig, opts: RestOptions) -> Result<Self, AriError> {
        let scheme = match cfg.scheme {
            AriScheme::Http => "http",
            AriScheme::Https => "https",
        };
        let base = Url::parse(&format!("{scheme}://{}/ari/", authority(cfg))).map_err(|e| {
            AriError::Config {
                detail: format!("asterisk.host {:?} does not form a URL: {e}", cfg.host),
            }
        })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .no_proxy()
            .user_agent(concat!("voxd/", env!("CARGO_PKG_VERSION")));
        if cfg.scheme == AriScheme::Https {
            let tls = match opts.tls {
                Some(tls) => tls,
                None => super::tls::client_config(cfg)?,
            };
            builder = builder.use_preconfigured_tls((*tls).clone());
        }
        let client = builder.build().map_err(|e| AriError::Internal {
            detail: format!("HTTP client: {}", error_chain(&e)),
        })?;
        Ok(Self {
            client,
            base,
            auth: basic_auth_header(cfg)?,
        })
    }

    /// The base URL, `http(s)://host:port/ari/` (no credentials in it).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, segments: &[&str]) -> Result<Url, AriError> {
        // The url crate drops "." and ".." segments and keeps "" as "//": an id like
        // that would silently address another resource.
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(AriError::Internal {
                detail: format!("refusing ARI id {bad:?} (empty, \".\" or \"..\")"),
            });
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| AriError::Internal {
                detail: "ARI base URL cannot take a path".to_string(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one request and returns the body of a 2xx answer, or the mapped error.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<u8>, AriError> {
        let url = self.url(segments)?;
        let mut req = self.client.request(method, url);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let mut resp = req.send().await.map_err(|e| transport_error(op, e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(op, e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(AriError::Protocol {
                    op,
                    detail: format!("response body over {MAX_BODY_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(op, status.as_u16(), &body))
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, AriError> {
        let body = self.call(op, method, segments, query).await?;
        serde_json::from_slice(&body).map_err(|e| AriError::Protocol {
            op,
            detail: truncate_message(&e.to_string()),
        })
    }

    /// `GET /ari/asterisk/info?only=system`: Asterisk's version and entity id.
    /// Called at start-up and by readiness checks; a 401 here means bad credentials.
    pub async fn asterisk_info(&self) -> Result<AsteriskInfo, AriError> {
        #[derive(Deserialize, Default)]
        struct System {
            #[serde(default)]
            version: String,
            #[serde(default)]
            entity_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            system: Option<System>,
        }
        let info: Info = self
            .call_json(
                "asterisk_info",
                Method::GET,
                &["asterisk", "info"],
                &[("only", "system")],
            )
            .await?;
        let system = info.system.unwrap_or_default();
        Ok(AsteriskInfo {
            version: AsteriskVersion::parse(&system.version),
            entity_id: system.entity_id,
        })
    }

    /// `GET /ari/channels/{id}`: the channel as Asterisk sees it now.
    pub async fn get_channel(&self, channel_id: &str) -> Result<Channel, AriError> {
        self.call_json("get_channel", Method::GET, &["channels", channel_id], &[])
            .await
    }

    /// `POST /ari/channels/{id}/answer`. Called after `StasisStart` of a caller
    /// channel; [`AriError::NotFound`] when the caller already hung up.
    pub async fn answer(&self, channel_id: &str) -> Result<(), AriError> {
        self.call(
            "answer",
            Method::POST,
            &["channels", channel_id, "answer"],
            &[],
        )
        .await
        .map(drop)
    }

    /// `GET /ari/channels/{id}/variable?variable=NAME`: a channel (or dialplan
    /// function) value. `Ok(None)` when Asterisk answers 404 (variable unset; also
    /// given for an unknown channel by some versions) or the value is empty.
    pub async fn get_variable(
        &self,
        channel_id: &str,
        name: &str,
    ) -> Result<Option<String>, AriError> {
        #[derive(Deserialize)]
        struct Var {
            #[serde(default)]
            value: Option<String>,
        }
        match self
            .call_json::<Var>(
                "get_variable",
                Method::GET,
                &["channels", channel_id, "variable"],
                &[("variable", name)],
            )
            .await
        {
            Ok(v) => Ok(v.value.filter(|s| !s.is_empty())),
            Err(AriError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /ari/channels/{id}/variable?variable=<name>&value=<value>`: sets a
    /// channel variable.
    pub async fn set_variable(
        &self,
        channel_id: &str,
        name: &str,
        value: &str,
    ) -> Result<(), AriError> {
        self.call(
            "set_variable",
            Method::POST,
            &["channels", channel_id, "variable"],
            &[("variable", name), ("value", value)],
        )
        .await
        .map(drop)
    }

    /// `POST /ari/bridges?type=<bridge_type>&bridgeId=<id>`: creates a bridge
    /// (`bridge_type` is `mixing` for a call, or a comma list such as
    /// `mixing,proxy_media`).
    pub async fn create_bridge(
        &self,
        bridge_id: &str,
        bridge_type: &str,
    ) -> Result<Bridge, AriError> {
        self.call_json(
            "create_bridge",
            Method::POST,
            &["bridges"],
            &[("type", bridge_type), ("bridgeId", bridge_id)],
        )
        .await
    }

    /// `POST /ari/bridges/{id}/addChannel?channel=a,b`. [`AriError::Unprocessable`]
    /// when a channel has not entered Stasis yet (wait for its `StasisStart`).
    pub async fn add_channels(
        &self,
        bridge_id: &str,
        channel_ids: &[&str],
    ) -> Result<(), AriError> {
        let list = channel_ids.join(",");
        self.call(
            "add_channel",
            Method::POST,
            &["bridges", bridge_id, "addChannel"],
            &[("channel", &list)],
        )
        .await
        .map(drop)
    }

    /// `DELETE /ari/bridges/{id}`: destroys a bridge (its channels stay up).
    pub async fn destroy_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        self.call(
            "destroy_bridge",
            Method::DELETE,
            &["bridges", bridge_id],
            &[],
        )
        .await
        .map(drop)
    }

    /// `DELETE /ari/channels/{id}?reason=<reason>`: hangs a channel up.
    /// [`AriError::NotFound`] when it is already gone (usually fine to ignore).
    pub async fn hangup(&self, channel_id: &str, reason: HangupReason) -> Result<(), AriError> {
        self.call(
            "hangup",
            Method::DELETE,
            &["channels", channel_id],
            &[("reason", reason.as_str())],
        )
        .await
        .map(drop)
    }

    /// `POST /ari/channels?endpoint=..&app=..&channelId=..[&formats=..]`: originates
    /// a channel into Stasis, for example the media leg
    /// `AudioSocket/host:8090/<uuid>/c(slin16)`. `formats` (`ulaw`, `slin16`) keeps a
    /// Local channel from running at slin192. Returns the new channel; its
    /// `StasisStart` follows on the events socket.
    pub async fn originate(
        &self,
        channel_id: &str,
        endpoint: &str,
        app: &str,
        formats: Option<&str>,
    ) -> Result<Channel, AriError> {
        let mut query = vec![
            ("endpoint", endpoint),
            ("app", app),
            ("channelId", channel_id),
        ];
        if let Some(f) = formats {
            query.push(("formats", f));
        }
        self.call_json("originate", Method::POST, &["channels"], &query)
            .await
    }

    /// `POST /ari/channels/externalMedia?...`: creates an ExternalMedia channel.
    /// For RTP, the returned channel's [`Channel::unicast_rtp_local`] is Asterisk's
    /// RTP address (where voxd sends), when Asterisk reports it.
    pub async fn external_media(&self, req: &ExternalMedia<'_>) -> Result<Channel, AriError> {
        let mut query = vec![
            ("channelId", req.channel_id),
            ("app", req.app),
            ("external_host", req.external_host),
            ("format", req.format),
            ("encapsulation", req.encapsulation.as_str()),
            ("transport", req.transport.as_str()),
        ];
        if let Some(d) = req.data {
            query.push(("data", d));
        }
        self.call_json(
            "external_media",
            Method::POST,
            &["channels", "externalMedia"],
            &query,
        )
        .await
    }

    /// `POST /ari/channels/{id}/play?media=..&playbackId=..`: plays a sound
    /// (`sound:hello-world`, `recording:x`, `tone:ring`) to a channel.
    pub async fn play(
        &self,
        channel_id: &str,
        media: &str,
        playback_id: &str,
    ) -> Result<Playback, AriError> {
        self.call_json(
            "play",
            Method::POST,
            &["channels", channel_id, "play"],
            &[("media", media), ("playbackId", playback_id)],
        )
        .await
    }

    /// `POST /ari/channels/{id}/redirect?endpoint=..`: transfers the channel to
    /// another endpoint (`PJSIP/200`).
    pub async fn redirect(&self, channel_id: &str, endpoint: &str) -> Result<(), AriError> {
        self.call(
            "redirect",
            Method::POST,
            &["channels", channel_id, "redirect"],
            &[("endpoint", endpoint)],
        )
        .await
        .map(drop)
    }

    /// `POST /ari/channels/{id}/continue`: hands the channel back to the dialplan,
    /// at `context,exten,priority` where given (`None` keeps the current one).
    pub async fn continue_in_dialplan(
        &self,
        channel_id: &str,
        context: Option<&str>,
        exten: Option<&str>,
        priority: Option<u32>,
    ) -> Result<(), AriError> {
        let priority = priority.map(|p| p.to_string());
        let mut query = Vec::new();
        if let Some(c) = context {
            query.push(("context", c));
        }
        if let Some(e) = exten {
            query.push(("extension", e));
        }
        if let Some(p) = priority.as_deref() {
            query.push(("priority", p));
        }
        self.call(
            "continue",
            Method::POST,
            &["channels", channel_id, "continue"],
            &query,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg() -> AsteriskConfig {
        AsteriskConfig {
            username: Secret::new("asterisk"),
            password: Secret::new("s3cret-pw"),
            ..AsteriskConfig::default()
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let rest = AriRest::new(&cfg()).unwrap();
        let text = format!("{rest:?}");
        assert!(
            !text.contains("s3cret-pw") && !text.contains("asterisk:"),
            "{text}"
        );
        assert!(text.contains("***"));
        let token = base64::engine::general_purpose::STANDARD.encode("asterisk:s3cret-pw");
        assert!(!text.contains(&token));
        assert_eq!(rest.base_url(), "http://127.0.0.1:8088/ari/");
    }

    #[test]
    fn urls_encode_segments() {
        let rest = AriRest::new(&cfg()).unwrap();
        let u = rest.url(&["channels", "a/b c", "answer"]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8088/ari/channels/a%2Fb%20c/answer"
        );
        let u = rest.url(&["channels", "%2e%2e?#", "answer"]).unwrap();
        assert_eq!(u.path(), "/ari/channels/%252e%252e%3F%23/answer");
        for id in ["..", ".", ""] {
            let e = rest.url(&["channels", id, "answer"]).unwrap_err();
            assert_eq!(e.fault(), crate::ari::Fault::Internal, "{id:?}");
        }
    }

    #[test]
    fn ipv6_and_https_base() {
        let c = AsteriskConfig {
            host: "::1".into(),
            scheme: AriScheme::Https,
            ..cfg()
        };
        assert_eq!(
            AriRest::new(&c).unwrap().base_url(),
            "https://[::1]:8088/ari/"
        );
        let c = AsteriskConfig {
            host: "bad host/x".into(),
            ..cfg()
        };
        assert!(matches!(AriRest::new(&c), Err(AriError::Config { .. })));
    }

    #[test]
    fn statuses_map_to_errors() {
        let body = br#"{"message":"Channel not found"}"#;
        assert!(
            matches!(status_error("x", 404, body), AriError::NotFound { ref message, .. } if message == "Channel not found")
        );
        assert!(matches!(
            status_error("x", 409, b""),
            AriError::Conflict { .. }
        ));
        assert!(
            matches!(status_error("x", 422, b"not json"), AriError::Unprocessable { ref message, .. } if message == "not json")
        );
        assert!(matches!(
            status_error("x", 401, b""),
            AriError::Auth { status: 401, .. }
        ));
        assert!(matches!(
            status_error("x", 403, b""),
            AriError::Auth { status: 403, .. }
        ));
        assert!(matches!(
            status_error("x", 500, b""),
            AriError::Status { status: 500, .. }
        ));
    }

    #[test]
    fn no_credentials_no_header() {
        assert!(basic_auth_header(&AsteriskConfig::default())
            .unwrap()
            .is_none());
        let h = basic_auth_header(&cfg()).unwrap().unwrap();
        assert!(h.is_sensitive());
    }
}
