//! The Asterisk REST Interface (ARI) client: REST calls, the events WebSocket, and
//! the types both carry.
//!
//! Owns: talking to Asterisk's ARI over HTTP(S) and WS(S) for the control runtime:
//! [`AriRest`] (answer, bridges, originate, ExternalMedia, hangup, ...),
//! [`run_events`] / [`EventsClient`] (the reconnecting events connection that feeds
//! typed [`AriEvent`]s to the engine and reports `connected` for readiness), the TLS
//! settings both share ([`tls`]), Asterisk version gates ([`AsteriskVersion`]), and
//! [`AriError`] with its [`Fault`]. Must not: touch media sockets or the shards (it
//! runs on the control runtime only), decide call flow (the engine reacts to events
//! and chooses which calls to make), retry REST calls on its own, panic on anything
//! Asterisk sends, or log credentials.
//!
//! Files: `events.rs` (event types and the parser), `rest.rs` (REST client),
//! `ws.rs` (events connection and backoff), `tls.rs` (rustls configuration),
//! `version.rs` (version parsing and feature gates), `error.rs` (errors).

#![forbid(unsafe_code)]

pub mod error;
pub mod events;
pub mod flow;
pub mod rest;
pub mod tls;
pub mod version;
pub mod ws;

pub use error::{AriError, Fault};
pub use events::{
    parse_event, stasis_arg, AriEvent, CallerId, Channel, ChannelDestroyed, ChannelDtmfReceived,
    ChannelHangupRequest, ChannelStateChange, Dialplan, StasisEnd, StasisStart, MAX_EVENT_BYTES,
};
pub use rest::{
    AriRest, AsteriskInfo, Bridge, Encapsulation, ExternalMedia, HangupReason, Playback,
    RestOptions, Transport,
};
pub use version::AsteriskVersion;
pub use ws::{events_url, run_events, Backoff, EventsClient, EventsOptions};
