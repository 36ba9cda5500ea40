//! An Asterisk ARI emulator for the AI-agent call flow: an HTTP + WebSocket server
//! on loopback that answers voxd's ARI requests like Asterisk 20-23 does, emits the
//! same events, places emulated callers into Stasis, and really connects the media
//! legs voxd originates (AudioSocket over TCP, ExternalMedia RTP over UDP).
//!
//! Owns: the server's lifecycle ([`AriEmulator::start`], [`AriEmulator::stop`], the
//! restart fault), its configuration ([`EmuConfig`]), the test-facing controls
//! (place, hang up and DTMF callers, answer legs by hand), and what tests read back:
//! the request log ([`RequestRecord`]), the counters ([`EmuCounters`]) and the media
//! totals per caller ([`MediaStats`]). The parts live in [`state`] (channels,
//! bridges, JSON shapes, events), `rest` (routes), `events` (the WebSocket),
//! [`media`] (legs and the pluggable [`MediaDriver`]) and [`faults`].
//!
//! Must not: be used against a real Asterisk (it is one), share state with voxd other
//! than through sockets, keep unbounded queues (event queues are bounded; the
//! request log keeps the newest `request_log_capacity` records), or panic on a bad
//! request.
//!
//! Call flow it supports (what voxd does against Asterisk):
//! `place_call` -> StasisStart(args) -> `GET variable AI_AGENT` -> `answer` ->
//! `POST bridges` -> originate `AudioSocket/host:port/<uuid>/c(slin16)` (or
//! `externalMedia`) -> the leg's StasisStart -> `addChannel` -> media flows -> a
//! hangup on either side -> `DELETE` the leg and the bridge.

#![forbid(unsafe_code)]

mod events;
pub mod faults;
pub mod media;
mod rest;
pub mod state;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::FaultConfig;
pub use media::{
    CallerFeed, CallerSignal, LegClose, LegFormat, LegLink, LegTransport, MediaCounters,
    MediaDriver, MediaLeg, MediaStats, TokioMediaDriver,
};

use state::{ari_timestamp, ChanState, Channel, Phase, Role, State};

/// The reference engine's Stasis application name.
pub const DEFAULT_APP: &str = "asterisk-ai-voice-agent";

/// Configuration of an [`AriEmulator`]. `Default` gives a loopback emulator of
/// Asterisk 22.7.0 with user/password `asterisk`/`asterisk`.
#[derive(Clone)]
pub struct EmuConfig {
    /// Address to listen on (`127.0.0.1:0`: any free port).
    pub bind: SocketAddr,
    /// ARI user name.
    pub username: String,
    /// ARI password.
    pub password: String,
    /// The Stasis application callers enter by default.
    pub app: String,
    /// `system.version` of `GET /ari/asterisk/info`.
    pub asterisk_version: String,
    /// `asterisk_id` of every event (Asterisk's entity id, a MAC address).
    pub asterisk_id: String,
    /// Channel variables shown in every channel's `channelvars` (ari.conf
    /// `channelvars`); empty shows none.
    pub channelvars: Vec<String>,
    /// Dialplan context of emulated callers.
    pub context: String,
    /// Dialplan extension of emulated callers.
    pub exten: String,
    /// IP address media legs bind their UDP sockets to.
    pub media_ip: IpAddr,
    /// Originated legs are answered (ChannelStateChange Up, StasisStart) this long
    /// after the originate succeeded. Zero answers at once, which races the HTTP
    /// response as on a real Asterisk.
    pub answer_delay: Duration,
    /// Answer originated legs by themselves; when false, tests answer them with
    /// [`AriEmulator::answer_leg`] (to hold a leg before its StasisStart).
    pub auto_answer: bool,
    /// How long a `play` lasts before PlaybackFinished.
    pub playback_duration: Duration,
    /// How long an originate waits for its leg's media to come up (Asterisk's
    /// AudioSocket connect timeout is 2 s).
    pub connect_timeout: Duration,
    /// The signal of callers whose [`CallSpec::signal`] is `None`.
    pub default_signal: CallerSignal,
    /// Hang up the legs bridged with a caller when the caller hangs up. Real
    /// Asterisk does not (voxd must delete its legs), so this is off by default.
    pub hangup_legs_with_caller: bool,
    /// Bound of each WebSocket's event queue; a client that falls this far behind
    /// is disconnected.
    pub event_queue: usize,
    /// Request log records kept (oldest dropped first).
    pub request_log_capacity: usize,
    /// Plays the media side of legs; `None` uses [`TokioMediaDriver`].
    pub driver: Option<Arc<dyn MediaDriver>>,
    /// Faults armed from the start.
    pub faults: FaultConfig,
}

impl fmt::Debug for EmuConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmuConfig")
            .field("bind", &self.bind)
            .field("username", &self.username)
            .field("app", &self.app)
            .field("asterisk_version", &self.asterisk_version)
            .field("channelvars", &self.channelvars)
            .field("answer_delay", &self.answer_delay)
            .field("auto_answer", &self.auto_answer)
            .field("custom_driver", &self.driver.is_some())
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            username: "asterisk".into(),
            password: "asterisk".into(),
            app: DEFAULT_APP.into(),
            asterisk_version: "22.7.0".into(),
            asterisk_id: "02:42:ac:11:00:02".into(),
            channelvars: Vec::new(),
            context: "from-ai-agent".into(),
            exten: "s".into(),
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            answer_delay: Duration::ZERO,
            auto_answer: true,
            playback_duration: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            default_signal: CallerSignal::default(),
            hangup_legs_with_caller: false,
            event_queue: 4096,
            request_log_capacity: 100_000,
            driver: None,
            faults: FaultConfig::default(),
        }
    }
}

/// An emulated inbound call for [`AriEmulator::place_call`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSpec {
    /// Caller id number (also the PJSIP endpoint in the channel name).
    pub caller_number: String,
    /// Caller id name.
    pub caller_name: String,
    /// Channel variable `AI_AGENT` (unset when `None`).
    pub agent: Option<String>,
    /// Channel variable `AI_PROVIDER` (unset when `None`).
    pub provider: Option<String>,
    /// Stasis arguments (StasisStart `args`).
    pub args: Vec<String>,
    /// More channel variables.
    pub vars: Vec<(String, String)>,
    /// Stasis application; `None` uses [`EmuConfig::app`].
    pub app: Option<String>,
    /// Channel id; `None` generates an Asterisk-style `<epoch>.<n>`.
    pub channel_id: Option<String>,
    /// What the caller says into bridged legs; `None` uses
    /// [`EmuConfig::default_signal`].
    pub signal: Option<CallerSignal>,
}

/// Why a test-side control was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    /// No events WebSocket is subscribed to the app: real Asterisk's `Stasis()`
    /// fails and the call never reaches voxd.
    #[error("Stasis application '{0}' is not registered (no events WebSocket)")]
    AppNotRegistered(String),
    /// No such channel.
    #[error("no channel '{0}'")]
    NoSuchChannel(String),
    /// The channel id is taken.
    #[error("channel id '{0}' already exists")]
    DuplicateChannel(String),
    /// The channel is not (or not yet) in Stasis.
    #[error("channel '{0}' is not in Stasis")]
    NotInStasis(String),
    /// The channel is not waiting to be answered.
    #[error("channel '{0}' is not a leg waiting for its answer")]
    NotPending(String),
    /// Not a DTMF digit (`0-9 * # A-D`).
    #[error("'{0}' is not a DTMF digit")]
    BadDigit(char),
    /// The emulator is stopped or restarting.
    #[error("the emulator is down")]
    Down,
}

/// One REST request as the emulator saw it (the WebSocket upgrade included, status
/// 101).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/ari/channels/1763805600.3/answer`.
    pub path: String,
    /// Query parameters (`api_key` shown as `***`).
    pub query: BTreeMap<String, String>,
    /// Response status.
    pub status: u16,
    /// Wall-clock arrival time.
    pub at: SystemTime,
    /// Arrival since the emulator started.
    pub since_start: Duration,
    /// Time to the response (including any delay fault).
    pub elapsed: Duration,
}

/// Counters of an emulator's life. `live_*` are computed when read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EmuCounters {
    /// Channels alive now.
    pub live_channels: u64,
    /// Bridges alive now.
    pub live_bridges: u64,
    /// Media legs alive now.
    pub live_legs: u64,
    /// Callers placed.
    pub calls_placed: u64,
    /// StasisStart events raised.
    pub stasis_starts: u64,
    /// Channels destroyed (any way).
    pub channels_destroyed: u64,
    /// Media legs created by `POST /ari/channels` (AudioSocket, UnicastRTP).
    pub originated_legs: u64,
    /// Media legs created by `externalMedia`.
    pub external_media_legs: u64,
    /// Originates of other endpoints (no media).
    pub plain_originates: u64,
    /// Originates into the dialplan (no app).
    pub dialplan_originates: u64,
    /// Originates that failed (media did not come up, bad dial string).
    pub originate_failures: u64,
    /// Originates refused by the fault.
    pub originates_refused: u64,
    /// Bridges created.
    pub bridges_created: u64,
    /// Bridges destroyed (DELETE, restart, stop).
    pub bridges_destroyed: u64,
    /// Channels hung up through `DELETE /ari/channels/{id}`.
    pub rest_hangups: u64,
    /// Legs hung up because voxd ended their media.
    pub legs_closed_by_peer: u64,
    /// Channels that left Stasis through `continue`.
    pub continued: u64,
    /// Channels that left Stasis through `redirect`.
    pub redirected: u64,
    /// Playbacks started.
    pub playbacks: u64,
    /// Events delivered to at least one WebSocket.
    pub events_sent: u64,
    /// Events nobody was subscribed to receive.
    pub events_dropped: u64,
    /// Events WebSockets accepted.
    pub ws_connections: u64,
    /// WebSockets closed by the drop/restart faults.
    pub ws_dropped: u64,
    /// WebSockets dropped because their queue was full.
    pub ws_overflows: u64,
    /// REST requests answered (all statuses, the upgrade included).
    pub rest_requests: u64,
    /// REST answers with status >= 400.
    pub rest_errors: u64,
    /// Restarts (fault).
    pub restarts: u64,
    /// Channels still alive when [`AriEmulator::stop`] ran.
    pub leaked_channels_at_stop: u64,
    /// Bridges still alive when [`AriEmulator::stop`] ran.
    pub leaked_bridges_at_stop: u64,
    /// Media legs still alive when [`AriEmulator::stop`] ran.
    pub leaked_legs_at_stop: u64,
}

/// What was still alive when the emulator stopped (voxd should have cleaned up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Ids of channels still alive (callers and legs).
    pub leaked_channels: Vec<String>,
    /// Ids of media legs still alive.
    pub leaked_legs: Vec<String>,
    /// Ids of bridges still alive.
    pub leaked_bridges: Vec<String>,
}

/// Shared by the server tasks, the media links and the [`AriEmulator`] handle.
pub(crate) struct Inner {
    pub(crate) cfg: EmuConfig,
    pub(crate) driver: Arc<dyn MediaDriver>,
    state: Mutex<State>,
    pub(crate) faults: faults::Faults,
    log: Mutex<VecDeque<RequestRecord>>,
    down: AtomicBool,
    auto_answer: AtomicBool,
    pub(crate) started: Instant,
}

impl Inner {
    /// The state, even if a panicking thread poisoned the lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`AriEmulator::hangup_caller`].
    pub(crate) fn hangup_caller(&self, id: &str) -> Result<(), EmuError> {
        let mut st = self.lock();
        let legs: Vec<String> = if self.cfg.hangup_legs_with_caller {
            let bridge = st.channels.get(id).and_then(|c| c.bridge.clone());
            bridge
                .and_then(|b| st.bridges.get(&b).map(|b| b.channels.clone()))
                .unwrap_or_default()
                .into_iter()
                .filter(|c| {
                    matches!(
                        st.channels.get(c),
                        Some(Channel {
                            role: Role::Leg { .. },
                            ..
                        })
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        if !st.hangup(id, 16, Some(false)) {
            return Err(EmuError::NoSuchChannel(id.to_string()));
        }
        for leg in legs {
            st.hangup(&leg, 16, Some(false));
        }
        Ok(())
    }

    fn log(&self) -> MutexGuard<'_, VecDeque<RequestRecord>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, r: RequestRecord) {
        {
            let mut st = self.lock();
            st.counters.rest_requests += 1;
            if r.status >= 400 {
                st.counters.rest_errors += 1;
            }
        }
        let cap = self.cfg.request_log_capacity;
        if cap == 0 {
            return;
        }
        let mut log = self.log();
        while log.len() >= cap {
            log.pop_front();
        }
        log.push_back(r);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
    }

    pub(crate) fn auto_answer(&self) -> bool {
        self.auto_answer.load(Ordering::Relaxed)
    }

    /// A leg's media ended on voxd's side: hang the leg up with its events.
    pub(crate) fn media_closed(&self, id: &str, _why: &LegClose) {
        let mut st = self.lock();
        let is_leg = matches!(
            st.channels.get(id),
            Some(Channel {
                role: Role::Leg { .. },
                ..
            })
        );
        if is_leg && st.hangup(id, 16, Some(false)) {
            st.counters.legs_closed_by_peer += 1;
        }
    }
}

struct Server {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A running ARI emulator. Dropping it shuts the server and all media down (without
/// waiting); [`AriEmulator::stop`] does the same and reports leaks.
pub struct AriEmulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: tokio::sync::Mutex<Server>,
}

impl fmt::Debug for AriEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AriEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/ari/events", any(events::ws_handler))
        .fallback(rest::handle)
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            rest::gate,
        ))
        .with_state(inner)
}

fn spawn_server(listener: tokio::net::TcpListener, inner: Arc<Inner>) -> Server {
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(inner);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Server {
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl AriEmulator {
    /// Binds `cfg.bind` and serves ARI on the current tokio runtime. Returns once
    /// the port is listening.
    pub async fn start(cfg: EmuConfig) -> io::Result<AriEmulator> {
        let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
        let addr = listener.local_addr()?;
        let driver: Arc<dyn MediaDriver> = match &cfg.driver {
            Some(d) => d.clone(),
            None => Arc::new(TokioMediaDriver {
                connect_timeout: cfg.connect_timeout,
            }),
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(
                cfg.asterisk_id.clone(),
                cfg.channelvars.clone(),
                cfg.faults.unknown_events,
            )),
            faults: faults::Faults::new(&cfg.faults),
            log: Mutex::new(VecDeque::new()),
            down: AtomicBool::new(false),
            auto_answer: AtomicBool::new(cfg.auto_answer),
            started: Instant::now(),
            driver,
            cfg,
        });
        let server = spawn_server(listener, inner.clone());
        Ok(AriEmulator {
            inner,
            addr,
            server: tokio::sync::Mutex::new(server),
        })
    }

    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The REST base URL, `http://127.0.0.1:<port>/ari`.
    pub fn base_url(&self) -> String {
        format!("http://{}/ari", self.addr)
    }

    /// The events URL for `app` (`ws://127.0.0.1:<port>/ari/events?app=..&subscribeAll=false`),
    /// without credentials.
    pub fn events_url(&self, app: &str) -> String {
        format!(
            "ws://{}/ari/events?app={}&subscribeAll=false",
            self.addr, app
        )
    }

    /// The configuration the emulator runs with.
    pub fn config(&self) -> &EmuConfig {
        &self.inner.cfg
    }

    /// Stops the emulator: records what is still alive (the leak counters), closes
    /// every WebSocket and media leg, forgets all channels and bridges without
    /// events, and closes the port. Waits up to 2 s for the server to finish.
    pub async fn stop(&self) -> StopReport {
        self.inner.set_down(true);
        let report = {
            let mut st = self.inner.lock();
            let mut report = StopReport::default();
            for (id, ch) in &st.channels {
                report.leaked_channels.push(id.clone());
                if matches!(ch.role, Role::Leg { .. }) {
                    report.leaked_legs.push(id.clone());
                }
            }
            report.leaked_bridges = st.bridges.keys().cloned().collect();
            report.leaked_channels.sort();
            report.leaked_legs.sort();
            report.leaked_bridges.sort();
            st.counters.leaked_channels_at_stop = report.leaked_channels.len() as u64;
            st.counters.leaked_legs_at_stop = report.leaked_legs.len() as u64;
            st.counters.leaked_bridges_at_stop = report.leaked_bridges.len() as u64;
            report
        };
        self.drop_websockets();
        {
            let mut st = self.inner.lock();
            let ids: Vec<String> = st.channels.keys().cloned().collect();
            for id in ids {
                st.remove_quietly(&id);
            }
            let n = st.bridges.len() as u64;
            st.bridges.clear();
            st.counters.bridges_destroyed += n;
            st.playbacks.clear();
        }
        self.shutdown_server().await;
        report
    }

    /// Signals the HTTP server to stop accepting and waits (up to 2 s) for it.
    pub(crate) async fn shutdown_server(&self) {
        let mut server = self.server.lock().await;
        if let Some(tx) = server.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = server.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }

    /// Listens again on the same address (after a restart), retrying while the old
    /// listener is still being dropped.
    pub(crate) async fn serve_again(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline && e.kind() == io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *self.server.lock().await = spawn_server(listener, self.inner.clone());
        Ok(())
    }

    /// Places an emulated inbound call: a `PJSIP/<number>-<n>` channel in state Ring
    /// with `AI_AGENT`/`AI_PROVIDER` set, which enters Stasis at once (StasisStart
    /// with the spec's args). Returns its channel id. Fails if no WebSocket is
    /// subscribed to the app (as `Stasis()` would).
    pub fn place_call(&self, spec: CallSpec) -> Result<String, EmuError> {
        if self.inner.is_down() {
            return Err(EmuError::Down);
        }
        let cfg = &self.inner.cfg;
        let app = spec.app.clone().unwrap_or_else(|| cfg.app.clone());
        let mut st = self.inner.lock();
        if !st.app_registered(&app) {
            return Err(EmuError::AppNotRegistered(app));
        }
        let (gen_id, seq) = st.next_id();
        let id = spec.channel_id.clone().unwrap_or(gen_id);
        if st.channels.contains_key(&id) {
            return Err(EmuError::DuplicateChannel(id));
        }
        let mut vars = BTreeMap::new();
        if let Some(a) = &spec.agent {
            vars.insert("AI_AGENT".to_string(), a.clone());
        }
        if let Some(p) = &spec.provider {
            vars.insert("AI_PROVIDER".to_string(), p.clone());
        }
        for (k, v) in &spec.vars {
            vars.insert(k.clone(), v.clone());
        }
        let endpoint = if spec.caller_number.is_empty() {
            "anonymous"
        } else {
            spec.caller_number.as_str()
        };
        let mut rng = crate::rng::SplitMix64(st.id_base ^ seq.rotate_left(32));
        let (a, b) = (rng.next_u64(), rng.next_u64());
        let ch = Channel {
            id: id.clone(),
            name: format!("PJSIP/{endpoint}-{seq:08x}"),
            state: ChanState::Ring,
            protocol_id: format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xffff,
                b >> 48,
                b & 0xffff_ffff_ffff
            ),
            caller: (spec.caller_name.clone(), spec.caller_number.clone()),
            connected: (String::new(), String::new()),
            dialplan: (
                cfg.context.clone(),
                cfg.exten.clone(),
                2,
                "Stasis".into(),
                String::new(),
            ),
            creationtime: ari_timestamp(SystemTime::now()),
            language: "en".into(),
            vars,
            shown_vars: Vec::new(),
            app,
            phase: Phase::Pending,
            args: spec.args.clone(),
            bridge: None,
            role: Role::Caller {
                signal: spec
                    .signal
                    .clone()
                    .unwrap_or_else(|| cfg.default_signal.clone()),
            },
        };
        st.channels.insert(id.clone(), ch);
        st.counters.calls_placed += 1;
        st.start_stasis(&id);
        Ok(id)
    }

    /// The caller hangs up (a SIP BYE): ChannelHangupRequest (cause 16),
    /// ChannelLeftBridge if bridged, StasisEnd, ChannelDestroyed (16, "Normal
    /// Clearing"). Legs bridged with it stay up (voxd must delete them) unless
    /// [`EmuConfig::hangup_legs_with_caller`] is set.
    pub fn hangup_caller(&self, id: &str) -> Result<(), EmuError> {
        self.inner.hangup_caller(id)
    }

    /// The caller presses a key: ChannelDtmfReceived {digit, duration_ms: 100}.
    pub fn send_dtmf(&self, id: &str, digit: char) -> Result<(), EmuError> {
        if !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') {
            return Err(EmuError::BadDigit(digit));
        }
        let mut st = self.inner.lock();
        match st.channels.get(id).map(|c| c.phase) {
            None => Err(EmuError::NoSuchChannel(id.to_string())),
            Some(Phase::Pending) => Err(EmuError::NotInStasis(id.to_string())),
            Some(Phase::In) => {
                st.emit_channel(
                    id,
                    "ChannelDtmfReceived",
                    json!({"digit": digit.to_string(), "duration_ms": 100}),
                );
                Ok(())
            }
        }
    }

    /// Answers an originated leg held by `auto_answer = false`: ChannelStateChange
    /// (Up), then its StasisStart.
    pub fn answer_leg(&self, id: &str) -> Result<(), EmuError> {
        let mut st = self.inner.lock();
        match st.channels.get(id).map(|c| c.phase) {
            None => Err(EmuError::NoSuchChannel(id.to_string())),
            Some(Phase::In) => Err(EmuError::NotPending(id.to_string())),
            Some(Phase::Pending) => {
                st.set_up(id);
                st.start_stasis(id);
                Ok(())
            }
        }
    }

    /// Switches automatic answering of originated legs on or off.
    pub fn set_auto_answer(&self, on: bool) {
        self.inner.auto_answer.store(on, Ordering::Relaxed);
    }

    /// A copy of the request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.log().iter().cloned().collect()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.inner.log().clear();
    }

    /// The counters, with the `live_*` ones computed now.
    pub fn counters(&self) -> EmuCounters {
        let st = self.inner.lock();
        let mut c = st.counters.clone();
        c.live_channels = st.channels.len() as u64;
        c.live_bridges = st.bridges.len() as u64;
        c.live_legs = st
            .channels
            .values()
            .filter(|ch| matches!(ch.role, Role::Leg { .. }))
            .count() as u64;
        c
    }

    /// Media totals of a channel: for a caller, summed over the legs that were ever
    /// bridged with it; for a leg, its own. `None` if the id never had media. Kept
    /// after the channels are gone.
    pub fn media_stats(&self, channel_id: &str) -> Option<MediaStats> {
        let st = self.inner.lock();
        let legs = st.stats.get(channel_id)?;
        let mut total = MediaStats::default();
        for c in legs {
            total.merge(&c.snapshot());
        }
        Some(total)
    }

    /// Ids of the live channels, sorted.
    pub fn channel_ids(&self) -> Vec<String> {
        let st = self.inner.lock();
        let mut ids: Vec<String> = st.channels.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A live channel's ARI JSON.
    pub fn channel_json(&self, id: &str) -> Option<Value> {
        let st = self.inner.lock();
        st.channels.get(id).map(|c| st.channel_json(c))
    }

    /// Ids of the live bridges, sorted.
    pub fn bridge_ids(&self) -> Vec<String> {
        let st = self.inner.lock();
        let mut ids: Vec<String> = st.bridges.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The members of a live bridge, in join order.
    pub fn bridge_members(&self, id: &str) -> Option<Vec<String>> {
        self.inner
            .lock()
            .bridges
            .get(id)
            .map(|b| b.channels.clone())
    }

    /// True if an events WebSocket is subscribed to `app`.
    pub fn is_app_registered(&self, app: &str) -> bool {
        self.inner.lock().app_registered(app)
    }

    /// Waits until an events WebSocket is subscribed to `app`; false after
    /// `timeout`.
    pub async fn wait_app_registered(&self, app: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_app_registered(app) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AriEmulator {
    fn drop(&mut self) {
        self.inner.set_down(true);
        if let Ok(mut server) = self.server.try_lock() {
            if let Some(tx) = server.shutdown.take() {
                let _ = tx.send(());
            }
        }
        let mut st = self.inner.lock();
        st.subscribers.clear();
        for ch in st.channels.values() {
            if let Role::Leg { link } = &ch.role {
                link.stop();
            }
        }
    }
}
