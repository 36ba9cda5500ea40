//! Media bindings: which ARI call a media session (an AudioSocket UUID or an RTP
//! source address) belongs to, shared by the ARI call flow and the shards'
//! dispatchers on the control runtime.
//!
//! Owns: the table of media sessions voxd has originated and not seen yet
//! ([`Bindings::expect`]), the RTP sessions that arrived before the ARI response
//! named their address ("parked", resolved by a later `expect`), and the events
//! the dispatchers send back to the call flow ([`MediaEvent`]).
//!
//! Must not: be touched by shards (control runtime only; a short mutex, never held
//! across an await), or decide policy: the dispatcher decides what an unknown
//! session means (refuse, or accept for a dialplan-only install).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::bridge::{CallKey, EndReason};

/// How a media session is recognised when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKey {
    /// AudioSocket: the UUID of its `0x01` frame (voxd chose it at originate).
    Uuid([u8; 16]),
    /// ExternalMedia RTP: Asterisk's address (`UNICASTRTP_LOCAL_ADDRESS:PORT`).
    Rtp(SocketAddr),
}

/// What the call flow said about a media session it originated.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The caller's ARI channel id (the call's name in the flow).
    pub caller: String,
    /// `AI_PROVIDER` (or `provider=` arg), if the dialplan chose one.
    pub provider: Option<String>,
    /// `AI_AGENT` (or `agent=` arg), if the dialplan chose one.
    pub agent: Option<String>,
    /// Where the dispatcher reports this session's life.
    pub events: mpsc::Sender<MediaEvent>,
}

/// Dispatcher -> call flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The media session is up on a shard as `call` and its agent started.
    Up {
        /// Caller channel id.
        caller: String,
        /// The shard's call.
        call: CallKey,
    },
    /// The media session ended (Asterisk closed it, the agent hung up, ...).
    Down {
        /// Caller channel id.
        caller: String,
        /// The shard's call.
        call: CallKey,
        /// Why it ended.
        reason: EndReason,
    },
    /// The agent asked for something only ARI can do.
    Action {
        /// Caller channel id.
        caller: String,
        /// What.
        action: AgentAction,
    },
}

/// Call-control actions an agent can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Play a sound to the caller (`sound:...`, `recording:...`).
    Play {
        /// ARI media URI.
        media: String,
    },
    /// Send the caller back to the dialplan (a human agent, a queue).
    Transfer {
        /// Dialplan context; `None`: the configured transfer context.
        context: Option<String>,
        /// Extension.
        exten: String,
    },
    /// The provider failed: play `media` to the caller, then hang up when it has
    /// played (`provider_failure.on_provider_failure: announce_hangup`).
    AnnounceHangup {
        /// ARI media URI of the apology prompt.
        media: String,
    },
}

/// The dispatcher's answer for an arriving media session.
#[derive(Debug)]
pub enum Claim {
    /// voxd originated it: here is its call.
    Bound(Binding),
    /// An RTP source nobody expects yet; parked until [`Bindings::expect`] names it
    /// (the ARI response may trail the first packet) or the dispatcher gives up.
    Parked,
    /// Not originated by voxd.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<MediaKey, Binding>,
    parked: HashMap<MediaKey, CallKey>,
}

/// The shared table; see the module docs.
#[derive(Debug, Default)]
pub struct Bindings {
    inner: Mutex<Inner>,
}

impl Bindings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The call flow originated a session that will arrive as `key`. Returns the
    /// shard call already parked under that key, if the media beat the response:
    /// the flow then binds it with [`super::control::ControlCmd::Bind`] (the binding
    /// is handed back with it).
    pub fn expect(&self, key: MediaKey, binding: Binding) -> Option<(CallKey, Binding)> {
        let mut g = self.lock();
        if let Some(call) = g.parked.remove(&key) {
            return Some((call, binding));
        }
        g.pending.insert(key, binding);
        None
    }

    /// A media session arrived on a shard as `call`. `may_park`: RTP sessions may
    /// wait for their binding; AudioSocket UUIDs are registered before originate,
    /// so an unknown one is never voxd's.
    pub fn claim(&self, key: MediaKey, call: CallKey, may_park: bool) -> Claim {
        let mut g = self.lock();
        if let Some(b) = g.pending.remove(&key) {
            return Claim::Bound(b);
        }
        if may_park {
            g.parked.insert(key, call);
            return Claim::Parked;
        }
        Claim::Unknown
    }

    /// The flow no longer expects `key` (the caller hung up before the media came).
    pub fn forget(&self, key: MediaKey) {
        self.lock().pending.remove(&key);
    }

    /// A parked session was given up (timeout or hang-up): forget it.
    pub fn unpark(&self, key: MediaKey, call: CallKey) {
        let mut g = self.lock();
        if g.parked.get(&key) == Some(&call) {
            g.parked.remove(&key);
        }
    }

    /// Sessions expected and not arrived yet (health, tests).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Sessions parked waiting for a binding.
    pub fn parked(&self) -> usize {
        self.lock().parked.len()
    }
}

/// An AudioSocket UUID in its text form (`8-4-4-4-12` lowercase hex), as ARI and the
/// dial string carry it.
pub fn uuid_to_string(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parse the text form back (hyphens optional, either case).
pub fn uuid_from_str(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let txt = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(txt, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(caller: &str) -> (Binding, mpsc::Receiver<MediaEvent>) {
        let (tx, rx) = mpsc::channel(4);
        (
            Binding {
                caller: caller.into(),
                provider: None,
                agent: None,
                events: tx,
            },
            rx,
        )
    }

    #[test]
    fn expected_uuid_is_bound_once() {
        let b = Bindings::default();
        let key = MediaKey::Uuid([1; 16]);
        let (bd, _rx) = binding("c1");
        assert!(b.expect(key, bd).is_none());
        assert_eq!(b.pending(), 1);
        match b.claim(key, CallKey::new(0, 1, 1), false) {
            Claim::Bound(x) => assert_eq!(x.caller, "c1"),
            other => panic!("{other:?}"),
        }
        // A second connection with the same UUID is not voxd's any more.
        assert!(matches!(
            b.claim(key, CallKey::new(0, 2, 1), false),
            Claim::Unknown
        ));
    }

    #[test]
    fn rtp_before_its_response_is_parked_then_bound() {
        let b = Bindings::default();
        let key = MediaKey::Rtp("127.0.0.1:4000".parse().unwrap());
        let call = CallKey::new(1, 3, 7);
        assert!(matches!(b.claim(key, call, true), Claim::Parked));
        assert_eq!(b.parked(), 1);
        let (bd, _rx) = binding("c2");
        let (got, bd) = b.expect(key, bd).expect("parked call handed back");
        assert_eq!(got, call);
        assert_eq!(bd.caller, "c2");
        assert_eq!((b.parked(), b.pending()), (0, 0));
    }

    #[test]
    fn forget_and_unpark() {
        let b = Bindings::default();
        let key = MediaKey::Uuid([2; 16]);
        let (bd, _rx) = binding("c3");
        b.expect(key, bd);
        b.forget(key);
        assert_eq!(b.pending(), 0);
        let rtp = MediaKey::Rtp("127.0.0.1:4001".parse().unwrap());
        let call = CallKey::new(0, 1, 1);
        b.claim(rtp, call, true);
        b.unpark(rtp, CallKey::new(0, 9, 9)); // not that call: kept
        assert_eq!(b.parked(), 1);
        b.unpark(rtp, call);
        assert_eq!(b.parked(), 0);
    }

    #[test]
    fn uuid_text_round_trip() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        let s = uuid_to_string(&u);
        assert_eq!(s, "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(uuid_from_str(&s), Some(u));
        assert_eq!(uuid_from_str(&s.to_uppercase().replace('-', "")), Some(u));
        assert_eq!(uuid_from_str("12"), None);
        assert_eq!(uuid_from_str("zz345678-9abc-def0-0123-456789abcdef"), None);
    }
}
