//! The ARI call flow: what voxd does with a caller that enters
//! `Stasis(<app_name>)`, the same contract as the reference engine's dialplan.
//!
//! For each caller: answer; read `AI_AGENT` / `AI_PROVIDER` (StasisStart args
//! `agent=..` / `provider=..` win); create a mixing bridge; register the media
//! session it is about to originate ([`crate::engine::bind`]); originate the media
//! leg with an id voxd chooses (`AudioSocket/<host:port>/<uuid>/c(<fmt>)`, or
//! `externalMedia` with AudioSocket or RTP encapsulation); when the leg's own
//! StasisStart arrives, put caller and leg in the bridge. The shard's dispatcher
//! starts the agent when the media session arrives and reports its end. Teardown
//! from any side (caller hangup, media loss, agent hangup, Asterisk restart seen on
//! reconnect) destroys the bridge and the leg and ends the shard call.
//!
//! Owns: the per-call ARI state (caller, leg, bridge, shard call), the events task,
//! and the REST calls of the flow (each in its own task, so a slow Asterisk delays
//! only its own call).
//!
//! Must not: touch media or shards directly (commands go through the dispatchers'
//! [`Peers`]), treat a media leg's StasisStart as a new caller (legs are known by
//! the id voxd gave them), or log credentials.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::events::{AriEvent, CallerId, Channel};
use super::rest::{AriRest, ExternalMedia, HangupReason};
use super::ws::{EventsClient, EventsOptions};
use super::AriError;
use crate::config::{AudioSocketFormat, AudioTransport, Config, MediaOriginate, RtpCodec};
use crate::engine::bind::{uuid_to_string, AgentAction, Binding, Bindings, MediaEvent, MediaKey};
use crate::engine::bridge::{CallKey, EndReason};
use crate::engine::control::{ControlCmd, Peers};
use crate::rng::SplitMix64;

/// Prefix of the media legs' channel ids (voxd chooses them at originate).
pub const LEG_PREFIX: &str = "voxd-leg-";

/// Channel variable set on a caller voxd refuses before it goes back to the
/// dialplan; its value is a [`RefuseReason`].
pub const REFUSED_VARIABLE: &str = "VOXD_REFUSED";

/// Why a caller was refused (the value of [`REFUSED_VARIABLE`] and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// `limits.max_calls` calls were up.
    MaxCalls,
    /// voxd is draining (SIGTERM).
    Draining,
}

impl RefuseReason {
    /// `max_calls` / `draining`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefuseReason::MaxCalls => "max_calls",
            RefuseReason::Draining => "draining",
        }
    }
}

/// Counters of the flow (tests, health).
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Callers that entered Stasis.
    pub callers: AtomicU64,
    /// Media legs originated.
    pub legs_originated: AtomicU64,
    /// Calls whose set-up failed (answer, bridge or originate refused).
    pub setup_failures: AtomicU64,
    /// Calls torn down (any reason).
    pub torn_down: AtomicU64,
    /// Media sessions that came up on a shard.
    pub media_up: AtomicU64,
    /// Callers sent back to the dialplan because voxd was draining.
    pub refused_draining: AtomicU64,
    /// Callers sent back to the dialplan because `limits.max_calls` calls were up.
    pub refused_max_calls: AtomicU64,
    /// ARI event frames that could not be parsed (skipped).
    pub bad_events: Arc<AtomicU64>,
    /// Times the events WebSocket came back after a loss.
    pub reconnects: AtomicU64,
    /// Asterisk's version from `GET /ari/asterisk/info` at the last connect.
    pub asterisk_version: std::sync::Mutex<Option<String>>,
}

/// What the flow needs from the configuration.
#[derive(Debug, Clone)]
struct FlowConfig {
    app: String,
    transport: AudioTransport,
    originate: MediaOriginate,
    /// `host:port` Asterisk dials for AudioSocket.
    audiosocket_target: String,
    /// `c(...)` / externalMedia format of AudioSocket legs.
    audiosocket_format: &'static str,
    /// `host:port` Asterisk sends RTP to.
    rtp_target: String,
    rtp_format: &'static str,
    transfer_context: Option<String>,
    /// `logging.pii`: log the caller's number and name in the clear.
    pii: bool,
    /// `limits.max_calls`: callers beyond it are refused.
    max_calls: usize,
}

impl FlowConfig {
    fn from(cfg: &Config, rtp_port: u16, as_port: u16) -> FlowConfig {
        let as_host = cfg
            .audiosocket
            .advertise_host
            .clone()
            .unwrap_or_else(|| cfg.audiosocket.host.clone());
        let rtp_host = cfg
            .external_media
            .advertise_host
            .clone()
            .unwrap_or_else(|| cfg.external_media.rtp_host.clone());
        FlowConfig {
            app: cfg.asterisk.app_name.clone(),
            transport: cfg.audio_transport,
            originate: cfg.asterisk.media_originate,
            audiosocket_target: format!("{as_host}:{as_port}"),
            audiosocket_format: audiosocket_format_name(cfg.audiosocket.format),
            rtp_target: format!("{rtp_host}:{rtp_port}"),
            rtp_format: match cfg.external_media.codec {
                RtpCodec::Ulaw => "ulaw",
                RtpCodec::Alaw => "alaw",
            },
            transfer_context: cfg.asterisk.transfer_context.clone(),
            pii: cfg.logging.pii,
            max_calls: cfg.limits.max_calls as usize,
        }
    }
}

/// The `c(...)` name of an AudioSocket format.
pub fn audiosocket_format_name(f: AudioSocketFormat) -> &'static str {
    match f {
        AudioSocketFormat::Slin => "slin",
        AudioSocketFormat::Slin12 => "slin12",
        AudioSocketFormat::Slin16 => "slin16",
        AudioSocketFormat::Slin24 => "slin24",
        AudioSocketFormat::Slin32 => "slin32",
        AudioSocketFormat::Slin48 => "slin48",
        AudioSocketFormat::Ulaw => "ulaw",
    }
}

/// A running call flow.
#[derive(Debug)]
pub struct AriFlow {
    /// `true` while the events WebSocket is connected.
    pub connected: watch::Receiver<bool>,
    /// Counters.
    pub stats: Arc<FlowStats>,
    draining: Arc<AtomicBool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
    events_task: JoinHandle<()>,
}

impl AriFlow {
    /// Start the events connection and the flow on the current tokio runtime.
    /// `as_port` / `rtp_port`: the engine's real ports (what Asterisk must dial).
    /// Errors only for configuration that cannot work (bad TLS / CA file, URL).
    pub fn start(
        cfg: &Config,
        bindings: Arc<Bindings>,
        peers: Arc<Peers>,
        as_port: u16,
        rtp_port: u16,
    ) -> Result<AriFlow, AriError> {
        let rest = AriRest::new(&cfg.asterisk)?;
        let stats = Arc::new(FlowStats::default());
        let events = EventsClient::new(
            &cfg.asterisk,
            EventsOptions {
                bad_events: stats.bad_events.clone(),
                ..EventsOptions::default()
            },
        )?;
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let (conn_tx, conn_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ev_stop_tx, ev_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let events_task = tokio::spawn(async move {
            let _ = events
                .run(ev_tx, conn_tx, async {
                    let _ = ev_stop_rx.await;
                })
                .await;
        });
        let (media_tx, media_rx) = mpsc::channel(4096);
        let (int_tx, int_rx) = mpsc::channel(4096);
        let draining = Arc::new(AtomicBool::new(false));
        let flow = Flow {
            cfg: FlowConfig::from(cfg, rtp_port, as_port),
            rest,
            bindings,
            peers,
            stats: stats.clone(),
            calls: HashMap::new(),
            legs: HashMap::new(),
            media_tx,
            int_tx,
            rng: SplitMix64(seed()),
            announcing: HashMap::new(),
            draining: draining.clone(),
        };
        let connected = conn_rx.clone();
        let task = tokio::spawn(flow.run(ev_rx, media_rx, int_rx, conn_rx, stop_rx, ev_stop_tx));
        Ok(AriFlow {
            connected,
            stats,
            draining,
            shutdown: Some(stop_tx),
            task,
            events_task,
        })
    }

    /// Stop taking new callers (SIGTERM): a caller entering Stasis from now on is
    /// sent back to the dialplan at its next priority (`continue`), where the
    /// dialplan can try another voxd host; calls already up go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stop: tear down every call's ARI side (bridge, leg, and the caller, whose
    /// agent is going away), close the events connection, and wait for both tasks.
    /// A set-up still in flight at that moment may leave its leg and bridge behind
    /// (Asterisk removes them when the leg's media connection closes).
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
        let _ = self.events_task.await;
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// A caller id (name and number) in a log line: shown only with
/// `logging.pii: true`, `[redacted]` otherwise.
struct CallerIdShown<'a>(&'a CallerId, bool);

impl std::fmt::Display for CallerIdShown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let CallerIdShown(id, pii) = self;
        match (pii, id.name.is_empty(), id.number.is_empty()) {
            (false, _, _) => f.write_str("[redacted]"),
            (true, true, true) => f.write_str("unknown"),
            (true, true, false) => f.write_str(&id.number),
            (true, false, true) => write!(f, "\"{}\"", id.name),
            (true, false, false) => write!(f, "\"{}\" <{}>", id.name, id.number),
        }
    }
}

/// One caller's ARI state.
#[derive(Debug)]
struct FlowCall {
    leg: String,
    bridge: String,
    media: MediaKey,
    /// The shard call once the media session is up.
    call: Option<CallKey>,
    /// Set when the call ends; the set-up task checks it so that no media leg is
    /// originated (and no agent started) for a caller who already left.
    gone: Arc<AtomicBool>,
}

/// Results of the per-call REST tasks, back into the flow loop.
#[derive(Debug)]
enum Internal {
    /// Set-up failed: tear the call down (the caller is hung up).
    SetupFailed {
        caller: String,
        leg: String,
        bridge: String,
        why: String,
    },
    /// Bridge and leg exist; `media` is the session key the leg will present.
    SetupDone {
        caller: String,
        leg: String,
        bridge: String,
        media: MediaKey,
    },
    /// Reconciliation after a reconnect: the caller channel no longer exists.
    Gone { caller: String },
    /// A failure prompt could not be played, or its time is up: hang up.
    PromptDone { id: String },
}

/// Longest a failure prompt may play before voxd hangs up anyway.
const ANNOUNCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

struct Flow {
    cfg: FlowConfig,
    rest: AriRest,
    bindings: Arc<Bindings>,
    peers: Arc<Peers>,
    stats: Arc<FlowStats>,
    calls: HashMap<String, FlowCall>,
    /// Media leg id -> caller id.
    legs: HashMap<String, String>,
    media_tx: mpsc::Sender<MediaEvent>,
    int_tx: mpsc::Sender<Internal>,
    rng: SplitMix64,
    /// Apology prompts playing before a hang-up (`announce_hangup`): playback id ->
    /// caller, and the sender whose drop ends the prompt's safety-net timer task.
    announcing: HashMap<String, (String, tokio::sync::oneshot::Sender<()>)>,
    /// Set by [`AriFlow::drain`].
    draining: Arc<AtomicBool>,
}

impl Flow {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<AriEvent>,
        mut media: mpsc::Receiver<MediaEvent>,
        mut internal: mpsc::Receiver<Internal>,
        mut connected: watch::Receiver<bool>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
        events_stop: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut was_connected = false;
        let mut ever_connected = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(ev) = events.recv() => self.on_event(ev),
                Some(m) = media.recv() => self.on_media(m),
                Some(i) = internal.recv() => self.on_internal(i),
                changed = connected.changed() => {
                    if changed.is_err() {
                        // The events task ended (receiver gone): nothing more comes.
                        break;
                    }
                    let now = *connected.borrow_and_update();
                    if now && !was_connected {
                        if ever_connected {
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(calls = self.calls.len(), "ARI reconnected; checking which calls Asterisk still has");
                            self.reconcile();
                        } else {
                            tracing::info!(app = %self.cfg.app, "ARI connected");
                        }
                        self.learn_version();
                        ever_connected = true;
                    } else if !now && was_connected {
                        tracing::warn!(calls = self.calls.len(), "ARI connection lost; calls in progress keep their media, reconnecting");
                    }
                    was_connected = now;
                }
            }
        }
        let _ = events_stop.send(());
        let callers: Vec<String> = self.calls.keys().cloned().collect();
        let mut tasks = Vec::new();
        for c in callers {
            if let Some(t) = self.teardown(&c, true, "shutdown") {
                tasks.push(t);
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn on_event(&mut self, ev: AriEvent) {
        match ev {
            AriEvent::StasisStart(s) => {
                let id = s.channel.id.clone();
                if let Some(caller) = self.legs.get(&id).cloned() {
                    self.on_leg_stasis(&caller, &id);
                } else if id.starts_with(LEG_PREFIX) {
                    // A leg whose caller is gone (it left during set-up): never a
                    // new caller; hang it up.
                    tracing::info!(leg = %id, "media leg of a call that has ended; hanging it up");
                    let rest = self.rest.clone();
                    tokio::spawn(async move {
                        ignore_gone(rest.hangup(&id, HangupReason::Normal).await, "media leg");
                    });
                } else if self.draining.load(Ordering::Relaxed) && !self.calls.contains_key(&id) {
                    tracing::info!(caller = %id, "draining: caller sent back to the dialplan (VOXD_REFUSED=draining)");
                    self.stats.refused_draining.fetch_add(1, Ordering::Relaxed);
                    self.refuse(id, RefuseReason::Draining);
                } else if !self.calls.contains_key(&id) && self.calls.len() >= self.cfg.max_calls {
                    tracing::warn!(caller = %id, calls = self.calls.len(), max_calls = self.cfg.max_calls, "limits.max_calls reached: caller sent back to the dialplan (VOXD_REFUSED=max_calls)");
                    self.stats.refused_max_calls.fetch_add(1, Ordering::Relaxed);
                    self.refuse(id, RefuseReason::MaxCalls);
                } else if !self.calls.contains_key(&id) {
                    let agent = s.arg("agent").map(str::to_string);
                    let provider = s.arg("provider").map(str::to_string);
                    self.on_caller(s.channel, agent, provider);
                }
            }
            AriEvent::StasisEnd(e) => self.on_channel_gone(&e.channel.id, "stasis_end"),
            AriEvent::ChannelHangupRequest(e) => {
                self.on_channel_gone(&e.channel.id, "hangup_request")
            }
            AriEvent::ChannelDestroyed(e) => self.on_channel_gone(&e.channel.id, "destroyed"),
            AriEvent::ChannelDtmfReceived(e) => {
                let Some(c) = self.calls.get(&e.channel.id) else {
                    return;
                };
                let (Some(call), Some(digit)) = (c.call, e.digit.chars().next()) else {
                    return;
                };
                self.peers.command(call, ControlCmd::Dtmf { call, digit });
            }
            AriEvent::PlaybackFinished(p) => {
                if let Some((caller, _timer)) = self.announcing.remove(&p.playback.id) {
                    tracing::info!(caller = %caller, "failure prompt played; hanging up");
                    self.teardown(&caller, true, "provider_failed");
                }
            }
            AriEvent::ChannelStateChange(_) | AriEvent::Unknown(_) => {}
        }
    }

    /// Send a caller voxd will not take back to the dialplan at its next priority,
    /// with the channel variable `VOXD_REFUSED` set to the reason (`max_calls`,
    /// `draining`) so the dialplan can try another host or play a message. If
    /// Asterisk refuses the `continue`, the caller is hung up with cause 34
    /// (congestion) for `max_calls`, 16 (normal) for `draining`.
    fn refuse(&self, id: String, reason: RefuseReason) {
        let rest = self.rest.clone();
        tokio::spawn(async move {
            if let Err(e) = rest
                .set_variable(&id, REFUSED_VARIABLE, reason.as_str())
                .await
            {
                tracing::debug!(caller = %id, error = %e, "cannot set VOXD_REFUSED");
            }
            if let Err(e) = rest.continue_in_dialplan(&id, None, None, None).await {
                tracing::warn!(caller = %id, error = %e, "cannot send the caller back to the dialplan; hanging up");
                let cause = match reason {
                    RefuseReason::MaxCalls => HangupReason::Congestion,
                    RefuseReason::Draining => HangupReason::Normal,
                };
                ignore_gone(rest.hangup(&id, cause).await, "caller");
            }
        });
    }

    fn new_uuid(&mut self) -> [u8; 16] {
        let a = self.rng.next_u64().to_be_bytes();
        let b = self.rng.next_u64().to_be_bytes();
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&a);
        u[8..].copy_from_slice(&b);
        // RFC 4122 version 4, variant 1.
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    fn on_caller(&mut self, ch: Channel, agent: Option<String>, provider: Option<String>) {
        self.stats.callers.fetch_add(1, Ordering::Relaxed);
        let caller = ch.id.clone();
        let uuid = self.new_uuid();
        let tag = uuid_to_string(&uuid);
        let leg = format!("{LEG_PREFIX}{tag}");
        let bridge = format!("voxd-br-{tag}");
        // For RTP the key is only known from the externalMedia response; a
        // placeholder until then (a UUID key no AudioSocket will present).
        let media = MediaKey::Uuid(uuid);
        let gone = Arc::new(AtomicBool::new(false));
        self.legs.insert(leg.clone(), caller.clone());
        self.calls.insert(
            caller.clone(),
            FlowCall {
                leg: leg.clone(),
                bridge: bridge.clone(),
                media,
                call: None,
                gone: gone.clone(),
            },
        );
        tracing::info!(
            caller = %caller,
            from = %CallerIdShown(&ch.caller, self.cfg.pii),
            "caller entered Stasis"
        );
        let rest = self.rest.clone();
        let cfg = self.cfg.clone();
        let bindings = self.bindings.clone();
        let int_tx = self.int_tx.clone();
        let media_tx = self.media_tx.clone();
        let peers = self.peers.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let r = setup(
                &rest, &cfg, &bindings, &peers, &caller, &leg, &bridge, uuid, agent, provider,
                media_tx, &gone,
            )
            .await;
            let msg = match r {
                Ok(media) => {
                    stats.legs_originated.fetch_add(1, Ordering::Relaxed);
                    Internal::SetupDone {
                        caller,
                        leg,
                        bridge,
                        media,
                    }
                }
                Err(why) => Internal::SetupFailed {
                    caller,
                    leg,
                    bridge,
                    why,
                },
            };
            let _ = int_tx.send(msg).await;
        });
    }

    fn on_leg_stasis(&mut self, caller: &str, leg: &str) {
        let Some(c) = self.calls.get(caller) else {
            return;
        };
        let rest = self.rest.clone();
        let bridge = c.bridge.clone();
        let (caller, leg) = (caller.to_string(), leg.to_string());
        let int_tx = self.int_tx.clone();
        tokio::spawn(async move {
            // The bridge is created before the leg is originated, so it exists.
            if let Err(e) = rest.add_channels(&bridge, &[&caller, &leg]).await {
                let why = format!("cannot bridge caller and media leg: {e}");
                let _ = int_tx
                    .send(Internal::SetupFailed {
                        caller,
                        leg,
                        bridge,
                        why,
                    })
                    .await;
            }
        });
    }

    fn on_channel_gone(&mut self, id: &str, what: &str) {
        if self.calls.contains_key(id) {
            tracing::info!(caller = %id, event = what, "caller left");
            self.teardown(id, false, "caller_hangup");
        } else if let Some(caller) = self.legs.get(id).cloned() {
            tracing::info!(caller = %caller, leg = %id, event = what, "media leg lost");
            self.teardown(&caller, true, "media_leg_lost");
        }
    }

    fn on_media(&mut self, m: MediaEvent) {
        match m {
            MediaEvent::Up { caller, call } => {
                self.stats.media_up.fetch_add(1, Ordering::Relaxed);
                match self.calls.get_mut(&caller) {
                    Some(c) => c.call = Some(call),
                    // The caller left while the media came up: end the media.
                    None => self.peers.hang_up(call, EndReason::CallerHangup),
                }
            }
            MediaEvent::Down {
                caller,
                call,
                reason,
            } => {
                if let Some(c) = self.calls.get_mut(&caller) {
                    // `call: None`: the session never came up (unknown provider).
                    if c.call.is_none() || c.call == Some(call) {
                        c.call = None;
                        tracing::info!(caller = %caller, reason = reason.as_str(), "media session ended");
                        self.teardown(&caller, true, reason.as_str());
                    }
                }
            }
            MediaEvent::Action { caller, action } => self.on_action(&caller, action),
        }
    }

    fn on_action(&mut self, caller: &str, action: AgentAction) {
        if !self.calls.contains_key(caller) {
            return;
        }
        let rest = self.rest.clone();
        let caller = caller.to_string();
        match action {
            AgentAction::Play { media } => {
                let id = format!("voxd-pb-{:016x}", self.rng.next_u64());
                tokio::spawn(async move {
                    if let Err(e) = rest.play(&caller, &media, &id).await {
                        tracing::warn!(caller = %caller, error = %e, "prompt playback failed");
                    }
                });
            }
            AgentAction::AnnounceHangup { media } => {
                let id = format!("voxd-fail-{:016x}", self.rng.next_u64());
                let (timer_tx, timer_rx) = tokio::sync::oneshot::channel::<()>();
                self.announcing
                    .insert(id.clone(), (caller.clone(), timer_tx));
                let int_tx = self.int_tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = rest.play(&caller, &media, &id).await {
                        tracing::warn!(caller = %caller, error = %e, "failure prompt could not be played; hanging up");
                        let _ = int_tx.send(Internal::PromptDone { id }).await;
                        return;
                    }
                    // Hang up even if PlaybackFinished never comes (lost events).
                    // When the prompt finishes or the call ends first, the flow
                    // drops the sender and this task ends with the call.
                    tokio::select! {
                        _ = tokio::time::sleep(ANNOUNCE_LIMIT) => {
                            let _ = int_tx.send(Internal::PromptDone { id }).await;
                        }
                        _ = timer_rx => {}
                    }
                });
            }
            AgentAction::Transfer { context, exten } => {
                let context = context.or_else(|| self.cfg.transfer_context.clone());
                // The caller leaves Stasis: its StasisEnd tears the rest down, but
                // the shard call must not hang the caller up on its way out.
                if let Some(c) = self.calls.get_mut(&caller) {
                    if let Some(call) = c.call.take() {
                        self.peers.hang_up(call, EndReason::AgentHangup);
                    }
                }
                self.teardown(&caller, false, "transfer");
                tokio::spawn(async move {
                    if let Err(e) = rest
                        .continue_in_dialplan(&caller, context.as_deref(), Some(&exten), Some(1))
                        .await
                    {
                        tracing::warn!(caller = %caller, error = %e, "transfer failed; hanging up");
                        let _ = rest.hangup(&caller, HangupReason::Normal).await;
                    }
                });
            }
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::SetupDone {
                caller,
                leg,
                bridge,
                media,
            } => match self.calls.get_mut(&caller) {
                Some(c) => c.media = media,
                // The caller left during set-up: what set-up created must go too.
                None => {
                    self.bindings.forget(media);
                    self.remove_orphans(leg, bridge);
                }
            },
            Internal::SetupFailed {
                caller,
                leg,
                bridge,
                why,
            } => {
                if self.calls.contains_key(&caller) {
                    self.stats.setup_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(caller = %caller, reason = %why, "call set-up failed; hanging up the caller");
                    self.teardown(&caller, true, "setup_failed");
                } else {
                    self.remove_orphans(leg, bridge);
                }
            }
            Internal::PromptDone { id } => {
                if let Some((caller, _timer)) = self.announcing.remove(&id) {
                    self.teardown(&caller, true, "provider_failed");
                }
            }
            Internal::Gone { caller } => {
                if self.calls.contains_key(&caller) {
                    tracing::info!(caller = %caller, "caller no longer exists in Asterisk");
                    self.teardown(&caller, false, "asterisk_lost_call");
                }
            }
        }
    }

    /// Ask Asterisk its version (a restart may have upgraded it) and say what it
    /// means for AudioSocket: before 20.17 / 21.12 / 22.7 / 23.1 legs send kind 0x10
    /// whatever their rate; the engine mirrors the kind a connection uses, so both
    /// work, and the log says which to expect.
    fn learn_version(&self) {
        let rest = self.rest.clone();
        let stats = self.stats.clone();
        let format = self.cfg.audiosocket_format;
        tokio::spawn(async move {
            match rest.asterisk_info().await {
                Ok(info) => {
                    let kinds = info.version.supports_slin16_audiosocket_kinds();
                    let raw = info.version.raw.clone();
                    tracing::info!(
                        version = %raw,
                        slin16_audiosocket_kinds = kinds,
                        "Asterisk version"
                    );
                    if !kinds && format != "slin" && format != "ulaw" {
                        tracing::info!(
                            version = %raw,
                            format,
                            "this Asterisk sends AudioSocket audio as kind 0x10 at the leg's rate; voxd answers in kind 0x10"
                        );
                    }
                    *stats
                        .asterisk_version
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(raw);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the Asterisk version"),
            }
        });
    }

    /// A leg and bridge whose caller left while they were being created.
    fn remove_orphans(&mut self, leg: String, bridge: String) {
        let rest = self.rest.clone();
        tokio::spawn(async move {
            ignore_gone(rest.hangup(&leg, HangupReason::Normal).await, "media leg");
            ignore_gone(rest.destroy_bridge(&bridge).await, "bridge");
        });
    }

    /// After a reconnect: every call whose caller channel Asterisk no longer knows
    /// (a restart, or a hangup missed while disconnected) is torn down.
    fn reconcile(&mut self) {
        for caller in self.calls.keys().cloned() {
            let rest = self.rest.clone();
            let int_tx = self.int_tx.clone();
            tokio::spawn(async move {
                if let Err(AriError::NotFound { .. }) = rest.get_channel(&caller).await {
                    let _ = int_tx.send(Internal::Gone { caller }).await;
                }
            });
        }
    }

    /// End a call everywhere: the shard call, the binding, then (in a task) the
    /// leg, the bridge and, when `hang_up_caller`, the caller channel. Returns the
    /// REST task.
    fn teardown(
        &mut self,
        caller: &str,
        hang_up_caller: bool,
        why: &str,
    ) -> Option<JoinHandle<()>> {
        let c = self.calls.remove(caller)?;
        // A failure prompt still playing for this caller: its timer task ends.
        self.announcing.retain(|_, (who, _)| who != caller);
        // Before `forget`: set-up registers its binding first and checks `gone`
        // after, so one of the two always removes it.
        c.gone.store(true, Ordering::SeqCst);
        self.legs.remove(&c.leg);
        self.bindings.forget(c.media);
        if let Some(call) = c.call {
            self.peers.hang_up(call, EndReason::CallerHangup);
        }
        self.stats.torn_down.fetch_add(1, Ordering::Relaxed);
        tracing::info!(caller = %caller, reason = why, "call ended");
        let rest = self.rest.clone();
        let caller = caller.to_string();
        Some(tokio::spawn(async move {
            ignore_gone(rest.hangup(&c.leg, HangupReason::Normal).await, "media leg");
            ignore_gone(rest.destroy_bridge(&c.bridge).await, "bridge");
            if hang_up_caller {
                ignore_gone(rest.hangup(&caller, HangupReason::Normal).await, "caller");
            }
        }))
    }
}

fn ignore_gone(r: Result<(), AriError>, what: &str) {
    match r {
        Ok(()) | Err(AriError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the {what}"),
    }
}

/// Answer, choose the agent, bridge, register the media session, originate.
#[allow(clippy::too_many_arguments)]
async fn setup(
    rest: &AriRest,
    cfg: &FlowConfig,
    bindings: &Bindings,
    peers: &Peers,
    caller: &str,
    leg: &str,
    bridge: &str,
    uuid: [u8; 16],
    agent_arg: Option<String>,
    provider_arg: Option<String>,
    media_tx: mpsc::Sender<MediaEvent>,
    gone: &AtomicBool,
) -> Result<MediaKey, String> {
    let left = || gone.load(Ordering::SeqCst);
    const LEFT: &str = "the caller left during set-up";
    rest.answer(caller)
        .await
        .map_err(|e| format!("answer: {e}"))?;
    let agent = match agent_arg {
        Some(a) => Some(a),
        None => rest
            .get_variable(caller, "AI_AGENT")
            .await
            .map_err(|e| format!("read AI_AGENT: {e}"))?,
    };
    let provider = match provider_arg {
        Some(p) => Some(p),
        None => rest
            .get_variable(caller, "AI_PROVIDER")
            .await
            .map_err(|e| format!("read AI_PROVIDER: {e}"))?,
    };
    if left() {
        return Err(LEFT.into());
    }
    rest.create_bridge(bridge, "mixing")
        .await
        .map_err(|e| format!("create bridge: {e}"))?;
    let binding = Binding {
        caller: caller.to_string(),
        provider,
        agent,
        events: media_tx,
    };
    let tag = uuid_to_string(&uuid);
    match cfg.transport {
        AudioTransport::Audiosocket => {
            bindings.expect(MediaKey::Uuid(uuid), binding);
            if left() {
                bindings.forget(MediaKey::Uuid(uuid));
                return Err(LEFT.into());
            }
            let r = match cfg.originate {
                MediaOriginate::Channel => {
                    let endpoint = format!(
                        "AudioSocket/{}/{tag}/c({})",
                        cfg.audiosocket_target, cfg.audiosocket_format
                    );
                    rest.originate(leg, &endpoint, &cfg.app, Some(cfg.audiosocket_format))
                        .await
                }
                MediaOriginate::ExternalMedia => {
                    rest.external_media(&ExternalMedia::audiosocket(
                        leg,
                        &cfg.app,
                        &cfg.audiosocket_target,
                        cfg.audiosocket_format,
                        &tag,
                    ))
                    .await
                }
            };
            if let Err(e) = r {
                bindings.forget(MediaKey::Uuid(uuid));
                return Err(format!("originate AudioSocket media leg: {e}"));
            }
            if left() {
                bindings.forget(MediaKey::Uuid(uuid));
                return Err(LEFT.into());
            }
            Ok(MediaKey::Uuid(uuid))
        }
        AudioTransport::Externalmedia => {
            let ch = rest
                .external_media(&ExternalMedia::rtp(
                    leg,
                    &cfg.app,
                    &cfg.rtp_target,
                    cfg.rtp_format,
                ))
                .await
                .map_err(|e| format!("originate ExternalMedia RTP leg: {e}"))?;
            let Some(remote) = ch.unicast_rtp_local() else {
                return Err("the ExternalMedia response has no UNICASTRTP_LOCAL_ADDRESS/PORT: cannot tell this call's RTP apart".into());
            };
            if left() {
                return Err(LEFT.into());
            }
            bind_rtp(bindings, peers, remote, binding);
            if left() {
                bindings.forget(MediaKey::Rtp(remote));
                return Err(LEFT.into());
            }
            Ok(MediaKey::Rtp(remote))
        }
    }
}

/// Register an RTP source; if its first packet already arrived (parked), bind it.
fn bind_rtp(bindings: &Bindings, peers: &Peers, remote: SocketAddr, binding: Binding) {
    if let Some((call, binding)) = bindings.expect(MediaKey::Rtp(remote), binding) {
        peers.command(
            call,
            ControlCmd::Bind {
                call,
                key: MediaKey::Rtp(remote),
                binding,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_id_is_shown_only_with_pii() {
        let id = CallerId {
            name: "Ann Lee".into(),
            number: "+15551230000".into(),
        };
        assert_eq!(CallerIdShown(&id, false).to_string(), "[redacted]");
        assert_eq!(
            CallerIdShown(&id, true).to_string(),
            "\"Ann Lee\" <+15551230000>"
        );
        let number_only = CallerId {
            name: String::new(),
            number: "100".into(),
        };
        assert_eq!(CallerIdShown(&number_only, true).to_string(), "100");
        assert_eq!(
            CallerIdShown(&CallerId::default(), true).to_string(),
            "unknown"
        );
    }
}
