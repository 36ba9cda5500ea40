//! The emulated Asterisk's state: channels, bridges, playbacks, the event
//! subscribers (one per events WebSocket) and the counters, plus the JSON shapes of
//! channels, bridges and events exactly as Asterisk 20-23's ARI writes them.
//!
//! Owns: channel life (Ring/Down -> Up -> destroyed), Stasis membership (pending for
//! originated legs until they answer, in, left), bridge membership and the
//! caller-to-leg audio tie it implies, the order of the events each state change
//! emits, and their delivery to the subscribers of the channel's application through
//! bounded queues (a subscriber whose queue is full is disconnected, as Asterisk
//! drops a WebSocket it cannot write to).
//!
//! Must not: await, do I/O or take other locks (it lives under the emulator's one
//! mutex; media drivers are told what changed through watch channels only).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::media::{CallerFeed, CallerSignal, LegShared, MediaCounters};
use super::EmuCounters;

/// Formats a time like Asterisk's ARI: `2026-11-22T10:00:00.000+0000` (UTC).
pub fn ari_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+0000",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Asterisk's text for a hangup cause code (`ast_cause2str`), for the causes the
/// emulator produces.
pub fn cause_text(cause: u32) -> &'static str {
    match cause {
        0 => "Unknown",
        1 => "Unallocated (unassigned) number",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        26 => "Answered elsewhere",
        28 => "Invalid number format (addressed incomplete)",
        31 => "Normal, unspecified",
        34 => "Circuit/channel congestion",
        38 => "Network out of order",
        58 => "Bearer capability not available",
        127 => "Interworking, unspecified",
        _ => "Unknown",
    }
}

/// The cause code of an ARI hangup `reason`, as `DELETE /channels/{id}` maps it.
pub fn reason_cause(reason: &str) -> Option<u32> {
    Some(match reason {
        "normal" => 16,
        "busy" => 17,
        "congestion" => 34,
        "no_answer" => 19,
        "timeout" => 18,
        "rejected" => 21,
        "unallocated" => 1,
        "normal_unspecified" => 31,
        "number_incomplete" => 28,
        "codec_mismatch" => 58,
        "interworking" => 127,
        "failure" => 38,
        "answered_elsewhere" => 26,
        _ => return None,
    })
}

/// Channel state as ARI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChanState {
    Down,
    Ring,
    Up,
}

impl ChanState {
    fn as_str(self) -> &'static str {
        match self {
            ChanState::Down => "Down",
            ChanState::Ring => "Ring",
            ChanState::Up => "Up",
        }
    }
}

/// Where a channel stands with its Stasis application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Originated into the app (subscribed: events flow) but not answered yet: no
    /// StasisStart, bridge operations answer 422.
    Pending,
    /// Between StasisStart and StasisEnd.
    In,
}

/// What a channel is for the emulator.
pub(crate) enum Role {
    /// An emulated caller ([`super::AriEmulator::place_call`]).
    Caller { signal: CallerSignal },
    /// A media leg voxd created (AudioSocket or UnicastRTP).
    Leg { link: Arc<LegShared> },
    /// Any other originated channel (no media).
    Plain,
}

/// One live channel.
pub(crate) struct Channel {
    pub id: String,
    pub name: String,
    pub state: ChanState,
    pub protocol_id: String,
    pub caller: (String, String),
    pub connected: (String, String),
    pub dialplan: (String, String, i64, String, String),
    pub creationtime: String,
    pub language: String,
    pub vars: BTreeMap<String, String>,
    /// Variables always shown in `channelvars` (externalMedia's UNICASTRTP_*).
    pub shown_vars: Vec<String>,
    pub app: String,
    pub phase: Phase,
    pub args: Vec<String>,
    pub bridge: Option<String>,
    pub role: Role,
}

/// One live bridge.
pub(crate) struct Bridge {
    pub id: String,
    pub name: String,
    pub bridge_type: String,
    pub creationtime: String,
    /// Members in join order.
    pub channels: Vec<String>,
}

/// One playback in progress.
pub(crate) struct Playback {
    pub json: Value,
    pub app: String,
}

/// What the events task of one WebSocket is told to do.
#[derive(Debug)]
pub(crate) enum WsOut {
    /// Send this text frame.
    Text(String),
    /// Send a close frame with this code and reason, then end.
    Close(u16, String),
    /// End without a close frame (the TCP connection just closes).
    Abort,
}

/// One events WebSocket.
pub(crate) struct Subscriber {
    pub id: u64,
    pub apps: Vec<String>,
    pub tx: mpsc::Sender<WsOut>,
}

/// Everything under the emulator's lock.
pub(crate) struct State {
    pub asterisk_id: String,
    pub channelvars: Vec<String>,
    pub channels: HashMap<String, Channel>,
    pub bridges: HashMap<String, Bridge>,
    pub playbacks: HashMap<String, Playback>,
    pub subscribers: Vec<Subscriber>,
    /// Media counters of every leg, by leg id and by every caller it was bridged
    /// with. Kept after the channels die so tests can read them.
    pub stats: HashMap<String, Vec<Arc<MediaCounters>>>,
    pub counters: EmuCounters,
    pub id_base: u64,
    pub seq: u64,
    pub next_sub: u64,
    /// Emit an unknown `EmulatorNoise` event before every real event (fault).
    pub noise: bool,
    pub startup_time: String,
}

impl State {
    pub(crate) fn new(asterisk_id: String, channelvars: Vec<String>, noise: bool) -> State {
        let now = SystemTime::now();
        State {
            asterisk_id,
            channelvars,
            channels: HashMap::new(),
            bridges: HashMap::new(),
            playbacks: HashMap::new(),
            subscribers: Vec::new(),
            stats: HashMap::new(),
            counters: EmuCounters::default(),
            id_base: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            seq: 0,
            next_sub: 1,
            noise,
            startup_time: ari_timestamp(now),
        }
    }

    /// A fresh Asterisk-style unique id (`<epoch seconds>.<n>`) and the sequence
    /// number used in channel names.
    pub(crate) fn next_id(&mut self) -> (String, u64) {
        self.seq += 1;
        (format!("{}.{}", self.id_base, self.seq), self.seq)
    }

    /// True if a WebSocket is subscribed to `app`.
    pub(crate) fn app_registered(&self, app: &str) -> bool {
        self.subscribers
            .iter()
            .any(|s| s.apps.iter().any(|a| a == app) && !s.tx.is_closed())
    }

    /// The JSON of a channel as ARI shows it.
    pub(crate) fn channel_json(&self, ch: &Channel) -> Value {
        let (context, exten, priority, app_name, app_data) = &ch.dialplan;
        let mut v = json!({
            "id": ch.id,
            "name": ch.name,
            "state": ch.state.as_str(),
            "protocol_id": ch.protocol_id,
            "caller": {"name": ch.caller.0, "number": ch.caller.1},
            "connected": {"name": ch.connected.0, "number": ch.connected.1},
            "accountcode": "",
            "dialplan": {
                "context": context,
                "exten": exten,
                "priority": priority,
                "app_name": app_name,
                "app_data": app_data,
            },
            "creationtime": ch.creationtime,
            "language": ch.language,
        });
        if !self.channelvars.is_empty() || !ch.shown_vars.is_empty() {
            let mut vars = Map::new();
            for name in self.channelvars.iter().chain(ch.shown_vars.iter()) {
                let val = ch.vars.get(name).cloned().unwrap_or_default();
                vars.insert(name.clone(), Value::String(val));
            }
            v["channelvars"] = Value::Object(vars);
        }
        v
    }

    /// The JSON of a bridge as ARI shows it.
    pub(crate) fn bridge_json(&self, b: &Bridge) -> Value {
        json!({
            "id": b.id,
            "technology": "simple_bridge",
            "bridge_type": b.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": b.name,
            "channels": b.channels,
            "creationtime": b.creationtime,
            "video_mode": "none",
        })
    }

    /// Sends `event` (an object with at least `type`) to every subscriber of `app`,
    /// adding `timestamp`, `asterisk_id` and `application`. Counts it as dropped
    /// when nobody listens.
    pub(crate) fn emit(&mut self, app: &str, event: Value) {
        if self.noise {
            let noise = json!({"type": "EmulatorNoise", "detail": "unknown event type (fault)"});
            self.emit_one(app, noise);
        }
        self.emit_one(app, event);
    }

    fn emit_one(&mut self, app: &str, mut event: Value) {
        if let Value::Object(m) = &mut event {
            m.insert(
                "timestamp".into(),
                Value::String(ari_timestamp(SystemTime::now())),
            );
            m.insert(
                "asterisk_id".into(),
                Value::String(self.asterisk_id.clone()),
            );
            m.insert("application".into(), Value::String(app.to_string()));
        }
        let text = event.to_string();
        self.send_text(app, &text);
    }

    /// Sends raw text to every subscriber of `app` (or of any app when `app` is
    /// `None`); returns how many got it. Full or closed queues drop the subscriber.
    pub(crate) fn send_text_to(&mut self, app: Option<&str>, text: &str) -> usize {
        let mut sent = 0;
        let mut dead = Vec::new();
        for s in &self.subscribers {
            if let Some(app) = app {
                if !s.apps.iter().any(|a| a == app) {
                    continue;
                }
            }
            match s.tx.try_send(WsOut::Text(text.to_string())) {
                Ok(()) => sent += 1,
                Err(_) => dead.push(s.id),
            }
        }
        if !dead.is_empty() {
            self.counters.ws_overflows += dead.len() as u64;
            self.subscribers.retain(|s| !dead.contains(&s.id));
        }
        sent
    }

    fn send_text(&mut self, app: &str, text: &str) {
        let sent = self.send_text_to(Some(app), text);
        if sent == 0 {
            self.counters.events_dropped += 1;
        } else {
            self.counters.events_sent += 1;
        }
    }

    /// Emits a channel event of `kind` with extra fields for channel `id` (no-op if
    /// the channel is gone).
    pub(crate) fn emit_channel(&mut self, id: &str, kind: &str, extra: Value) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        let mut ev = Map::new();
        ev.insert("type".into(), Value::String(kind.to_string()));
        if let Value::Object(extra) = extra {
            ev.extend(extra);
        }
        ev.insert("channel".into(), self.channel_json(ch));
        let app = ch.app.clone();
        self.emit(&app, Value::Object(ev));
    }

    /// Sets a channel Up and emits ChannelStateChange if it changed.
    pub(crate) fn set_up(&mut self, id: &str) {
        let changed = match self.channels.get_mut(id) {
            Some(ch) if ch.state != ChanState::Up => {
                ch.state = ChanState::Up;
                true
            }
            _ => false,
        };
        if changed {
            self.emit_channel(id, "ChannelStateChange", json!({}));
        }
    }

    /// Puts a pending channel into Stasis: StasisStart with its args.
    pub(crate) fn start_stasis(&mut self, id: &str) {
        let args = match self.channels.get_mut(id) {
            Some(ch) if ch.phase == Phase::Pending => {
                ch.phase = Phase::In;
                ch.dialplan.3 = "Stasis".into();
                let mut data = ch.app.clone();
                for a in &ch.args {
                    data.push(',');
                    data.push_str(a);
                }
                ch.dialplan.4 = data;
                ch.args.clone()
            }
            _ => return,
        };
        self.counters.stasis_starts += 1;
        self.emit_channel(id, "StasisStart", json!({ "args": args }));
    }

    /// Hangs a channel up with its events: ChannelHangupRequest (when `request`),
    /// ChannelLeftBridge, StasisEnd (if in Stasis), ChannelDestroyed; stops its
    /// media. Returns false if there was no such channel.
    pub(crate) fn hangup(&mut self, id: &str, cause: u32, request: Option<bool>) -> bool {
        if !self.channels.contains_key(id) {
            return false;
        }
        if let Some(soft) = request {
            let mut extra = json!({ "cause": cause });
            if soft {
                extra["soft"] = Value::Bool(true);
            }
            self.emit_channel(id, "ChannelHangupRequest", extra);
        }
        self.leave_bridge(id);
        if self.channels.get(id).map(|c| c.phase) == Some(Phase::In) {
            self.emit_channel(id, "StasisEnd", json!({}));
        }
        self.emit_channel(
            id,
            "ChannelDestroyed",
            json!({"cause": cause, "cause_txt": cause_text(cause)}),
        );
        self.remove_quietly(id);
        true
    }

    /// The channel leaves Stasis (continue/redirect): StasisEnd, then it runs on in
    /// the dialplan, which the emulator ends at once without further events.
    pub(crate) fn leave_stasis(&mut self, id: &str) {
        self.leave_bridge(id);
        self.emit_channel(id, "StasisEnd", json!({}));
        self.remove_quietly(id);
    }

    /// Removes a channel without events (Asterisk restart, emulator stop, channel
    /// gone into the dialplan), stopping its media.
    pub(crate) fn remove_quietly(&mut self, id: &str) {
        if let Some(b) = self.channels.get(id).and_then(|c| c.bridge.clone()) {
            if let Some(br) = self.bridges.get_mut(&b) {
                br.channels.retain(|c| c != id);
            }
            self.refresh_feeds(&b);
        }
        if let Some(ch) = self.channels.remove(id) {
            if let Role::Leg { link } = &ch.role {
                link.stop();
                link.set_feed(None);
            }
            self.counters.channels_destroyed += 1;
        }
    }

    /// Takes a channel out of its bridge, emitting ChannelLeftBridge.
    pub(crate) fn leave_bridge(&mut self, id: &str) {
        let Some(bid) = self.channels.get_mut(id).and_then(|c| c.bridge.take()) else {
            return;
        };
        let bridge_json = match self.bridges.get_mut(&bid) {
            Some(b) => {
                b.channels.retain(|c| c != id);
                let b = &self.bridges[&bid];
                Some(self.bridge_json(b))
            }
            None => None,
        };
        if let Some(bj) = bridge_json {
            self.emit_channel(id, "ChannelLeftBridge", json!({ "bridge": bj }));
        }
        self.refresh_feeds(&bid);
        self.refresh_leg_alone(id);
    }

    /// Puts a channel into a bridge (leaving any other), emitting
    /// ChannelEnteredBridge.
    pub(crate) fn join_bridge(&mut self, bid: &str, id: &str) {
        if self.channels.get(id).and_then(|c| c.bridge.as_deref()) == Some(bid) {
            return;
        }
        self.leave_bridge(id);
        let Some(b) = self.bridges.get_mut(bid) else {
            return;
        };
        b.channels.push(id.to_string());
        if let Some(ch) = self.channels.get_mut(id) {
            ch.bridge = Some(bid.to_string());
        }
        let bj = self.bridge_json(&self.bridges[bid]);
        self.emit_channel(id, "ChannelEnteredBridge", json!({ "bridge": bj }));
        self.refresh_feeds(bid);
    }

    /// Deletes a bridge: its members leave it first.
    pub(crate) fn destroy_bridge(&mut self, bid: &str) -> bool {
        let Some(members) = self.bridges.get(bid).map(|b| b.channels.clone()) else {
            return false;
        };
        for m in members {
            self.leave_bridge(&m);
        }
        self.bridges.remove(bid);
        self.counters.bridges_destroyed += 1;
        true
    }

    fn refresh_leg_alone(&mut self, id: &str) {
        if let Some(Channel {
            role: Role::Leg { link },
            ..
        }) = self.channels.get(id)
        {
            link.set_feed(None);
        }
    }

    /// Re-ties media in a bridge: every leg hears the first caller in the bridge (or
    /// silence), and its counters are filed under that caller.
    pub(crate) fn refresh_feeds(&mut self, bid: &str) {
        let Some(b) = self.bridges.get(bid) else {
            return;
        };
        let caller = b.channels.iter().find_map(|c| match self.channels.get(c) {
            Some(Channel {
                role: Role::Caller { signal },
                id,
                ..
            }) => Some(Arc::new(CallerFeed {
                caller_id: id.clone(),
                signal: signal.clone(),
            })),
            _ => None,
        });
        let mut filed = Vec::new();
        for c in &b.channels {
            if let Some(Channel {
                role: Role::Leg { link },
                ..
            }) = self.channels.get(c)
            {
                link.set_feed(caller.clone());
                if let Some(f) = &caller {
                    filed.push((f.caller_id.clone(), link.counters.clone()));
                }
            }
        }
        for (caller_id, counters) in filed {
            let list = self.stats.entry(caller_id).or_default();
            if !list.iter().any(|c| Arc::ptr_eq(c, &counters)) {
                list.push(counters);
            }
        }
    }
}
