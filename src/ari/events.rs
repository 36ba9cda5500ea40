//! Typed ARI events from the events WebSocket, and the one parser for them.
//!
//! Owns: [`AriEvent`] and the payload types voxd acts on ([`StasisStart`],
//! [`StasisEnd`], [`ChannelHangupRequest`], [`ChannelDestroyed`],
//! [`ChannelDtmfReceived`], [`ChannelStateChange`]), the [`Channel`] object shared with
//! the REST responses, [`parse_event`] and the `key=value` reading of Stasis
//! arguments. Must not: panic on any input (it is fuzzed), accept frames larger than
//! [`MAX_EVENT_BYTES`], treat an event type it does not know as an error (it becomes
//! [`AriEvent::Unknown`]), refuse unknown fields or missing optional fields (Asterisk
//! adds fields between versions), or do any I/O.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use super::error::{truncate_message, AriError};

/// Largest event frame [`parse_event`] accepts (1 MiB). Real events are a few KiB.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Channel variable Asterisk sets on an ExternalMedia channel: the local (Asterisk
/// side) RTP address.
pub const VAR_UNICASTRTP_LOCAL_ADDRESS: &str = "UNICASTRTP_LOCAL_ADDRESS";
/// Channel variable Asterisk sets on an ExternalMedia channel: the local RTP port.
pub const VAR_UNICASTRTP_LOCAL_PORT: &str = "UNICASTRTP_LOCAL_PORT";

/// Caller or connected-line identity of a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallerId {
    /// Display name (may be empty).
    pub name: String,
    /// Number (may be empty).
    pub number: String,
}

/// Where a channel is in the dialplan (context, extension, priority).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dialplan {
    /// Dialplan context.
    pub context: String,
    /// Extension.
    pub exten: String,
    /// Priority.
    pub priority: i64,
    /// The application running (`Stasis` while voxd owns the channel), if sent.
    pub app_name: Option<String>,
    /// That application's arguments, if sent.
    pub app_data: Option<String>,
}

/// An ARI channel, as carried by events and returned by REST calls.
///
/// Only `id` is required; every other field defaults when absent, and fields voxd
/// does not know are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique channel id (Asterisk's uniqueid, or the `channelId` voxd chose).
    pub id: String,
    /// Channel name, for example `PJSIP/100-00000001` or `AudioSocket/...`.
    #[serde(default)]
    pub name: String,
    /// Channel state as Asterisk spells it (`Up`, `Ring`, `Ringing`, `Down`, ...).
    #[serde(default)]
    pub state: String,
    /// Caller id.
    #[serde(default)]
    pub caller: CallerId,
    /// Connected line.
    #[serde(default)]
    pub connected: CallerId,
    /// Account code.
    #[serde(default)]
    pub accountcode: String,
    /// Dialplan location, when sent.
    #[serde(default)]
    pub dialplan: Option<Dialplan>,
    /// Creation time (ISO 8601 text as Asterisk sends it).
    #[serde(default)]
    pub creationtime: Option<String>,
    /// Channel language.
    #[serde(default)]
    pub language: Option<String>,
    /// Channel variables Asterisk includes (those named in `ari.conf`'s
    /// `channelvars`, or set on ExternalMedia channels). Non-string values are kept
    /// as their JSON text; `null` becomes the empty string.
    #[serde(default, deserialize_with = "de_vars")]
    pub channelvars: Option<HashMap<String, String>>,
}

impl Channel {
    /// Whether Asterisk reports the channel answered (`state == "Up"`).
    pub fn is_up(&self) -> bool {
        self.state == "Up"
    }

    /// A channel variable from `channelvars`, if Asterisk sent it.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.channelvars.as_ref()?.get(name).map(String::as_str)
    }

    /// The Asterisk-side RTP address of an ExternalMedia channel, from
    /// `UNICASTRTP_LOCAL_ADDRESS` / `UNICASTRTP_LOCAL_PORT`. `None` when either is
    /// missing or unparsable (then reply to the learned source of the first packet).
    pub fn unicast_rtp_local(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self
            .var(VAR_UNICASTRTP_LOCAL_ADDRESS)?
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let port: u16 = self.var(VAR_UNICASTRTP_LOCAL_PORT)?.trim().parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

fn de_vars<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HashMap<String, String>>, D::Error> {
    let raw: Option<HashMap<String, serde_json::Value>> = Option::deserialize(d)?;
    Ok(raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()
    }))
}

/// `StasisStart`: a channel entered voxd's Stasis application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StasisStart {
    /// Arguments from the dialplan, `Stasis(app,arg1,arg2)`; voxd reads
    /// `key=value` pairs with [`StasisStart::arg`].
    #[serde(default)]
    pub args: Vec<String>,
    /// The channel.
    pub channel: Channel,
    /// The channel this one replaces (after a masquerade), if any.
    #[serde(default)]
    pub replace_channel: Option<Box<Channel>>,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl StasisStart {
    /// The value of the first argument `key=value` whose key matches `key`
    /// (ASCII case-insensitive, surrounding blanks ignored), for example
    /// `arg("agent")` on `["agent=sales", "provider=openai"]` gives `Some("sales")`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        stasis_arg(&self.args, key)
    }
}

/// The value of the first `key=value` item in `args` whose key matches `key`
/// (ASCII case-insensitive, blanks around key and value trimmed). Items without `=`
/// never match.
pub fn stasis_arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| {
        let (k, v) = a.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key.trim()).then(|| v.trim())
    })
}

/// `StasisEnd`: a channel left voxd's application (hung up or redirected).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StasisEnd {
    /// The channel.
    pub channel: Channel,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// `ChannelHangupRequest`: someone asked for the channel to hang up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelHangupRequest {
    /// The channel.
    pub channel: Channel,
    /// Q.850 cause code, when given.
    #[serde(default)]
    pub cause: Option<i64>,
    /// Whether this was a soft hangup request.
    #[serde(default)]
    pub soft: Option<bool>,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// `ChannelDestroyed`: the channel is gone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelDestroyed {
    /// The channel.
    pub channel: Channel,
    /// Q.850 cause code (0 when absent).
    #[serde(default)]
    pub cause: i64,
    /// Cause text, for example `Normal Clearing`.
    #[serde(default)]
    pub cause_txt: String,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// `ChannelDtmfReceived`: the caller pressed a key (the end of the tone).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelDtmfReceived {
    /// The channel.
    pub channel: Channel,
    /// The digit: `0`-`9`, `A`-`D`, `*`, `#`.
    #[serde(default)]
    pub digit: String,
    /// How long the key was held, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// `ChannelStateChange`: the channel's state changed (for example to `Up`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelStateChange {
    /// The channel, with its new state.
    pub channel: Channel,
    /// Application name.
    #[serde(default)]
    pub application: String,
    /// Event time as Asterisk sent it.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// `PlaybackFinished`: a `play` ended (played out, stopped, or failed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlaybackFinished {
    /// The playback.
    pub playback: Playback,
}

/// A playback as ARI describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Playback {
    /// The id voxd chose (`playbackId`) or Asterisk's.
    pub id: String,
    /// `channel:<id>` of the channel it played to.
    #[serde(default)]
    pub target_uri: String,
    /// `done`, `failed`, ...
    #[serde(default)]
    pub state: String,
}

/// One ARI event, as produced by [`parse_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AriEvent {
    /// See [`StasisStart`].
    StasisStart(StasisStart),
    /// See [`StasisEnd`].
    StasisEnd(StasisEnd),
    /// See [`ChannelHangupRequest`].
    ChannelHangupRequest(ChannelHangupRequest),
    /// See [`ChannelDestroyed`].
    ChannelDestroyed(ChannelDestroyed),
    /// See [`ChannelDtmfReceived`].
    ChannelDtmfReceived(ChannelDtmfReceived),
    /// See [`ChannelStateChange`].
    ChannelStateChange(ChannelStateChange),
    /// See [`PlaybackFinished`].
    PlaybackFinished(PlaybackFinished),
    /// Any other event type (its `type` string, cut to 64 characters); voxd ignores
    /// these.
    Unknown(String),
}

impl AriEvent {
    /// The event's `type` as Asterisk names it (`Unknown` gives its own name).
    pub fn type_name(&self) -> &str {
        match self {
            AriEvent::StasisStart(_) => "StasisStart",
            AriEvent::StasisEnd(_) => "StasisEnd",
            AriEvent::ChannelHangupRequest(_) => "ChannelHangupRequest",
            AriEvent::ChannelDestroyed(_) => "ChannelDestroyed",
            AriEvent::ChannelDtmfReceived(_) => "ChannelDtmfReceived",
            AriEvent::ChannelStateChange(_) => "ChannelStateChange",
            AriEvent::PlaybackFinished(_) => "PlaybackFinished",
            AriEvent::Unknown(t) => t,
        }
    }

    /// The channel the event is about (`None` for [`AriEvent::Unknown`]).
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            AriEvent::StasisStart(e) => Some(&e.channel),
            AriEvent::StasisEnd(e) => Some(&e.channel),
            AriEvent::ChannelHangupRequest(e) => Some(&e.channel),
            AriEvent::ChannelDestroyed(e) => Some(&e.channel),
            AriEvent::ChannelDtmfReceived(e) => Some(&e.channel),
            AriEvent::ChannelStateChange(e) => Some(&e.channel),
            AriEvent::PlaybackFinished(_) | AriEvent::Unknown(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

fn bad(e: serde_json::Error) -> AriError {
    AriError::BadEvent {
        detail: truncate_message(&e.to_string()),
    }
}

/// Parses one event frame (the text of one WebSocket message).
///
/// Called by the events task for every frame. Returns the typed event, or
/// [`AriEvent::Unknown`] for a `type` voxd does not handle; an error for a frame over
/// [`MAX_EVENT_BYTES`] ([`AriError::EventTooLarge`]), text that is not a JSON object
/// with a string `type`, or a known type missing a required field such as `channel`
/// ([`AriError::BadEvent`]). Never panics; nesting depth is bounded by serde_json's
/// recursion limit.
pub fn parse_event(bytes: &[u8]) -> Result<AriEvent, AriError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(AriError::EventTooLarge {
            len: bytes.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(bad)?;
    Ok(match env.kind.as_str() {
        "StasisStart" => AriEvent::StasisStart(serde_json::from_slice(bytes).map_err(bad)?),
        "StasisEnd" => AriEvent::StasisEnd(serde_json::from_slice(bytes).map_err(bad)?),
        "ChannelHangupRequest" => {
            AriEvent::ChannelHangupRequest(serde_json::from_slice(bytes).map_err(bad)?)
        }
        "ChannelDestroyed" => {
            AriEvent::ChannelDestroyed(serde_json::from_slice(bytes).map_err(bad)?)
        }
        "ChannelDtmfReceived" => {
            AriEvent::ChannelDtmfReceived(serde_json::from_slice(bytes).map_err(bad)?)
        }
        "ChannelStateChange" => {
            AriEvent::ChannelStateChange(serde_json::from_slice(bytes).map_err(bad)?)
        }
        "PlaybackFinished" => {
            AriEvent::PlaybackFinished(serde_json::from_slice(bytes).map_err(bad)?)
        }
        other => AriEvent::Unknown(other.chars().take(64).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STASIS_START: &str = r#"{
      "type": "StasisStart",
      "timestamp": "2025-01-02T10:00:00.000+0000",
      "args": ["agent=sales", " Provider = openai ", "plain"],
      "channel": {
        "id": "1735812000.42",
        "name": "PJSIP/100-0000002a",
        "state": "Ring",
        "protocol_id": "abc@host",
        "caller": {"name": "Alice", "number": "100"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "from-internal", "exten": "777", "priority": 3,
                     "app_name": "Stasis", "app_data": "asterisk-ai-voice-agent"},
        "creationtime": "2025-01-02T10:00:00.000+0000",
        "language": "en",
        "channelvars": {"AI_AGENT": "sales", "AI_PROVIDER": null, "N": 5},
        "future_field": {"nested": [1, 2, 3]}
      },
      "asterisk_id": "00:11:22:33:44:55",
      "application": "asterisk-ai-voice-agent"
    }"#;

    #[test]
    fn stasis_start_full() {
        let AriEvent::StasisStart(e) = parse_event(STASIS_START.as_bytes()).unwrap() else {
            panic!("not StasisStart");
        };
        assert_eq!(e.channel.id, "1735812000.42");
        assert_eq!(e.channel.caller.number, "100");
        assert_eq!(e.channel.dialplan.as_ref().unwrap().exten, "777");
        assert_eq!(e.channel.dialplan.as_ref().unwrap().priority, 3);
        assert_eq!(e.channel.var("AI_AGENT"), Some("sales"));
        assert_eq!(e.channel.var("AI_PROVIDER"), Some(""));
        assert_eq!(e.channel.var("N"), Some("5"));
        assert_eq!(e.arg("agent"), Some("sales"));
        assert_eq!(e.arg("PROVIDER"), Some("openai"));
        assert_eq!(e.arg("plain"), None);
        assert_eq!(e.arg("missing"), None);
        assert_eq!(e.application, "asterisk-ai-voice-agent");
        assert!(!e.channel.is_up());
    }

    #[test]
    fn minimal_events_and_defaults() {
        let ev = parse_event(br#"{"type":"StasisEnd","channel":{"id":"c1"}}"#).unwrap();
        assert_eq!(ev.type_name(), "StasisEnd");
        assert_eq!(ev.channel().unwrap().id, "c1");
        assert_eq!(ev.channel().unwrap().channelvars, None);

        let ev = parse_event(
            br#"{"type":"ChannelDestroyed","cause":16,"cause_txt":"Normal Clearing","channel":{"id":"c1","state":"Up"}}"#,
        )
        .unwrap();
        let AriEvent::ChannelDestroyed(d) = ev else {
            panic!()
        };
        assert_eq!((d.cause, d.cause_txt.as_str()), (16, "Normal Clearing"));
        assert!(d.channel.is_up());

        let ev = parse_event(
            br##"{"type":"ChannelDtmfReceived","digit":"#","duration_ms":120,"channel":{"id":"c1"}}"##,
        )
        .unwrap();
        let AriEvent::ChannelDtmfReceived(d) = ev else {
            panic!()
        };
        assert_eq!((d.digit.as_str(), d.duration_ms), ("#", 120));

        let ev =
            parse_event(br#"{"type":"ChannelHangupRequest","channel":{"id":"c1"},"soft":true}"#)
                .unwrap();
        let AriEvent::ChannelHangupRequest(h) = ev else {
            panic!()
        };
        assert_eq!((h.cause, h.soft), (None, Some(true)));

        let ev =
            parse_event(br#"{"type":"ChannelStateChange","channel":{"id":"c1","state":"Up"}}"#)
                .unwrap();
        assert!(matches!(ev, AriEvent::ChannelStateChange(ref s) if s.channel.is_up()));
    }

    #[test]
    fn unknown_types_are_not_errors() {
        let ev = parse_event(br#"{"type":"PlaybackContinuing","playback":{"id":"p"}}"#).unwrap();
        assert_eq!(ev, AriEvent::Unknown("PlaybackContinuing".into()));
        assert_eq!(ev.type_name(), "PlaybackContinuing");
        assert!(ev.channel().is_none());
        let ev =
            parse_event(br#"{"type":"PlaybackFinished","playback":{"id":"p","state":"done"}}"#)
                .unwrap();
        assert!(matches!(ev, AriEvent::PlaybackFinished(ref p) if p.playback.id == "p"));
        // An unknown type is not checked further, whatever else it carries.
        let ev = parse_event(br#"{"channel":7,"type":"X"}"#).unwrap();
        assert_eq!(ev, AriEvent::Unknown("X".into()));
        let long = format!(r#"{{"type":"{}"}}"#, "A".repeat(500));
        let AriEvent::Unknown(t) = parse_event(long.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(t.len(), 64);
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            br#"{"type":5}"#,
            br#"{"type":"StasisStart"}"#,
            br#"{"type":"StasisStart","channel":{"name":"no id"}}"#,
            br#"{"type":"StasisStart","channel":{"id":"c","caller":"x"}}"#,
            b"\xff\xfe",
        ] {
            let e = parse_event(bad).unwrap_err();
            assert!(matches!(e, AriError::BadEvent { .. }), "{e:?}");
            assert_eq!(e.as_label(), "bad_event");
        }
        let deep = "[".repeat(100_000);
        assert!(parse_event(deep.as_bytes()).is_err());
        let deep = format!(r#"{{"type":"StasisStart","x":{}"#, "{\"a\":".repeat(10_000));
        assert!(parse_event(deep.as_bytes()).is_err());
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            parse_event(&huge),
            Err(AriError::EventTooLarge { .. })
        ));
    }

    #[test]
    fn unicast_rtp_local_address() {
        let mut ch = Channel {
            id: "em".into(),
            ..Channel::default()
        };
        assert_eq!(ch.unicast_rtp_local(), None);
        ch.channelvars = Some(HashMap::from([
            (
                VAR_UNICASTRTP_LOCAL_ADDRESS.to_string(),
                "10.0.0.5".to_string(),
            ),
            (VAR_UNICASTRTP_LOCAL_PORT.to_string(), "14002".to_string()),
        ]));
        assert_eq!(
            ch.unicast_rtp_local(),
            Some("10.0.0.5:14002".parse().unwrap())
        );
        ch.channelvars.as_mut().unwrap().insert(
            VAR_UNICASTRTP_LOCAL_ADDRESS.to_string(),
            "[::1]".to_string(),
        );
        assert_eq!(ch.unicast_rtp_local(), Some("[::1]:14002".parse().unwrap()));
        ch.channelvars
            .as_mut()
            .unwrap()
            .insert(VAR_UNICASTRTP_LOCAL_PORT.to_string(), "99999".to_string());
        assert_eq!(ch.unicast_rtp_local(), None);
    }

    #[test]
    fn stasis_arg_helper() {
        let args: Vec<String> = vec!["a=1".into(), "b = x=y ".into(), "a=2".into()];
        assert_eq!(stasis_arg(&args, "a"), Some("1"));
        assert_eq!(stasis_arg(&args, "B"), Some("x=y"));
        assert_eq!(stasis_arg(&[], "a"), None);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse_event(&data);
            }

            #[test]
            fn never_panics_on_jsonish(
                kind in prop_oneof![
                    Just("StasisStart"), Just("StasisEnd"), Just("ChannelDestroyed"),
                    Just("ChannelDtmfReceived"), Just("ChannelHangupRequest"),
                    Just("ChannelStateChange"), Just("Other")],
                body in "[{}\\[\\]\":,a-z0-9 ]{0,200}",
            ) {
                let text = format!(r#"{{"type":"{kind}","channel":{body}"#);
                let _ = parse_event(text.as_bytes());
                let text = format!(r#"{{"type":"{kind}","channel":{{"id":"x","channelvars":{body}}}}}"#);
                let _ = parse_event(text.as_bytes());
            }

            #[test]
            fn valid_channels_round_trip(id in "[a-z0-9.]{1,20}", digit in "[0-9*#A-D]") {
                let text = format!(
                    r#"{{"type":"ChannelDtmfReceived","digit":"{digit}","duration_ms":80,"channel":{{"id":"{id}"}}}}"#
                );
                let ev = parse_event(text.as_bytes()).unwrap();
                prop_assert_eq!(ev.channel().unwrap().id.as_str(), id.as_str());
            }
        }
    }
}
