//! Fault injection of the ARI emulator: refused originates, slow REST responses,
//! a caller hanging up at a chosen step of the client's set-up,
//! dropped events WebSockets, unknown event types, malformed JSON, and an "Asterisk
//! restart" (WebSockets dropped, every channel and bridge gone, media closed, the
//! HTTP port closed for a while, then back with a fresh start time).
//!
//! Owns: [`FaultConfig`] (faults armed at start), the runtime switches (atomics read
//! by the REST middleware and handlers) and the `AriEmulator` methods that trigger
//! faults.
//!
//! Must not: emit events for channels destroyed by a restart (a restarted Asterisk
//! has forgotten them; voxd must notice from the dropped WebSocket), or hold the
//! state lock across an await.

#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::state::WsOut;
use super::AriEmulator;

/// Faults armed from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Answer every originate (`POST /ari/channels`, `POST /ari/channels/{id}`,
    /// `POST /ari/channels/externalMedia`) with this status (500 or 400) instead of
    /// creating the channel.
    pub refuse_originate: Option<u16>,
    /// Delay every REST response (not the WebSocket upgrade) by this much.
    pub rest_delay: Duration,
    /// Send an event of unknown type (`EmulatorNoise`) before every real event.
    pub unknown_events: bool,
}

/// Runtime fault switches, read on every request.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Status to refuse originates with; 0 when off.
    refuse_status: AtomicU32,
    /// How many more originates to refuse (`u64::MAX`: all).
    refuse_remaining: AtomicU64,
    rest_delay_us: AtomicU64,
    /// Callers to hang up when a matching request arrives (armed by tests).
    hangup_triggers: Mutex<Vec<HangupTrigger>>,
}

/// "When a request `method` whose path ends in `path_ends_with` arrives, hang up
/// `caller` first": puts a caller's hang-up at an exact step of a client's call
/// set-up, with no timing involved.
#[derive(Debug, Clone)]
struct HangupTrigger {
    caller: String,
    method: String,
    path_ends_with: String,
}

impl Faults {
    pub(crate) fn new(cfg: &FaultConfig) -> Faults {
        let f = Faults::default();
        if let Some(s) = cfg.refuse_originate {
            f.refuse_status.store(u32::from(s), Ordering::Relaxed);
            f.refuse_remaining.store(u64::MAX, Ordering::Relaxed);
        }
        f.rest_delay_us
            .store(cfg.rest_delay.as_micros() as u64, Ordering::Relaxed);
        f
    }

    /// The status to refuse this originate with, if a refusal is armed (consumes one
    /// of a counted refusal).
    pub(crate) fn take_refusal(&self) -> Option<u16> {
        let status = self.refuse_status.load(Ordering::Relaxed);
        if status == 0 {
            return None;
        }
        let took = self
            .refuse_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            });
        match took {
            Ok(_) => Some(status as u16),
            Err(_) => None,
        }
    }

    /// The callers to hang up before answering this request (each trigger fires
    /// once).
    pub(crate) fn take_hangups(&self, method: &str, path: &str) -> Vec<String> {
        let mut t = self
            .hangup_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            return Vec::new();
        }
        let mut fired = Vec::new();
        t.retain(|h| {
            let hit = h.method.eq_ignore_ascii_case(method) && path.ends_with(&h.path_ends_with);
            if hit {
                fired.push(h.caller.clone());
            }
            !hit
        });
        fired
    }

    pub(crate) fn rest_delay(&self) -> Duration {
        Duration::from_micros(self.rest_delay_us.load(Ordering::Relaxed))
    }
}

impl AriEmulator {
    /// Refuses every originate and externalMedia request with `status` (500 answers
    /// `{"message":"Allocation failed"}`, anything else `{"message":"Invalid
    /// endpoint"}`) until called with `None`.
    pub fn set_refuse_originate(&self, status: Option<u16>) {
        let f = &self.inner.faults;
        f.refuse_remaining.store(u64::MAX, Ordering::Relaxed);
        f.refuse_status
            .store(status.map_or(0, u32::from), Ordering::Relaxed);
    }

    /// Refuses only the next `count` originates with `status`, then accepts again.
    pub fn refuse_next_originates(&self, status: u16, count: u64) {
        let f = &self.inner.faults;
        f.refuse_remaining.store(count, Ordering::Relaxed);
        f.refuse_status.store(u32::from(status), Ordering::Relaxed);
    }

    /// Hangs `caller` up (as [`AriEmulator::hangup_caller`]) the moment the next
    /// request with `method` and a path ending in `path_ends_with` arrives, before
    /// that request is answered: a caller leaving at an exact step of the client's
    /// set-up. Fires once.
    pub fn hang_up_caller_on(&self, caller: &str, method: &str, path_ends_with: &str) {
        self.inner
            .faults
            .hangup_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(HangupTrigger {
                caller: caller.to_string(),
                method: method.to_string(),
                path_ends_with: path_ends_with.to_string(),
            });
    }

    /// Delays every REST response from now on by `delay` (zero turns it off).
    pub fn set_rest_delay(&self, delay: Duration) {
        self.inner
            .faults
            .rest_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Turns the unknown-event noise (an `EmulatorNoise` event before every real
    /// event) on or off.
    pub fn set_unknown_event_noise(&self, on: bool) {
        self.inner.lock().noise = on;
    }

    /// Closes every events WebSocket now with a close frame (code 1001, "going
    /// away"); queued events are dropped. Channels stay (as in Asterisk, they remain
    /// in Stasis; their events are lost until the client reconnects). Returns how
    /// many sockets were closed.
    pub fn drop_websockets(&self) -> usize {
        self.close_websockets(true)
    }

    /// Like [`AriEmulator::drop_websockets`] but without a close frame: the TCP
    /// connection just ends, as when Asterisk crashes or a network path dies.
    pub fn abort_websockets(&self) -> usize {
        self.close_websockets(false)
    }

    fn close_websockets(&self, graceful: bool) -> usize {
        let mut st = self.inner.lock();
        let subs = std::mem::take(&mut st.subscribers);
        for s in &subs {
            let msg = if graceful {
                WsOut::Close(1001, "Asterisk going away".into())
            } else {
                WsOut::Abort
            };
            // A full queue cannot take the close; dropping the sender below ends the
            // task after it drains.
            let _ = s.tx.try_send(msg);
        }
        st.counters.ws_dropped += subs.len() as u64;
        subs.len()
    }

    /// Sends a well-formed event of an unknown `event_type` (with `type`,
    /// `timestamp`, `asterisk_id`, `application`) to the subscribers of `app`.
    /// Returns how many WebSockets got it.
    pub fn send_unknown_event(&self, app: &str, event_type: &str) -> usize {
        let mut st = self.inner.lock();
        let ev = serde_json::json!({
            "type": event_type,
            "timestamp": super::state::ari_timestamp(std::time::SystemTime::now()),
            "asterisk_id": st.asterisk_id,
            "application": app,
            "detail": {"emulator": "unknown event type (fault)"},
        });
        st.send_text_to(Some(app), &ev.to_string())
    }

    /// Sends a text frame that is not valid JSON to the subscribers of `app`.
    /// Returns how many WebSockets got it.
    pub fn send_malformed_json(&self, app: &str) -> usize {
        self.send_raw_text(app, "{\"type\": \"StasisStart\", \"channel\": {\"id\": ")
    }

    /// Sends any text frame to the subscribers of `app`. Returns how many got it.
    pub fn send_raw_text(&self, app: &str, text: &str) -> usize {
        self.inner.lock().send_text_to(Some(app), text)
    }

    /// "Restarts Asterisk": closes every events WebSocket, forgets every channel and
    /// bridge without events, closes their media, closes the HTTP port for
    /// `down_for` (connections are refused; requests still arriving on old
    /// keep-alive connections get 503), then listens again on the same address.
    /// Returns once the emulator is back.
    pub async fn restart(&self, down_for: Duration) -> io::Result<()> {
        self.inner.set_down(true);
        self.drop_websockets();
        {
            let mut st = self.inner.lock();
            st.counters.restarts += 1;
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
        tokio::time::sleep(down_for).await;
        self.serve_again().await?;
        {
            let mut st = self.inner.lock();
            st.startup_time = super::state::ari_timestamp(std::time::SystemTime::now());
        }
        self.inner.set_down(false);
        Ok(())
    }
}
