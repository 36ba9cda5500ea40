//! OpenAI Realtime server events under arbitrary text messages.
//!
//! Drives `voxd::provider::openai::parse_server_event`, the parse every server
//! text message goes through in the session, and `ServerEvent::decode_audio`, the
//! decode of every `response.output_audio.delta`. Invariants: no panic; a text
//! that cannot be a JSON object is refused; an event ignored for its field types
//! is of a type voxd does not act on, and a refused one of a type it does; decoded
//! audio is never longer than the message and belongs to the event's item.
//! Non-UTF-8 input is skipped: the WebSocket layer refuses it before the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxd::provider::openai::{parse_server_event, EventError, Parsed, HANDLED};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_server_event(text);
    if !text.trim_start().starts_with('{') {
        assert!(parsed.is_err());
    }
    match parsed {
        Ok(Parsed::Event(ev)) => {
            let mut out = Vec::new();
            if let Ok(item) = ev.decode_audio(&mut out) {
                assert_eq!(Some(item), ev.item_id.as_deref());
                assert!(out.len() <= text.len());
            }
        }
        Ok(Parsed::Unhandled(kind)) => assert!(!HANDLED.contains(&&*kind)),
        Err(EventError::BadEvent { kind, .. }) => assert!(HANDLED.contains(&kind.as_str())),
        Err(_) => {}
    }
});
