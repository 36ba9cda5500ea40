//! ARI event parser (and the Asterisk version parser) under arbitrary frames.
//!
//! Invariants: `voxd::ari::parse_event` returns `Ok` or an `AriError`, never panics,
//! hangs or blows the stack; input over the size limit is refused as too large; an
//! unknown type name is kept to 64 characters; every known event carries its
//! channel. `AsteriskVersion::parse` never panics and only a known version enables a
//! feature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxd::ari::{parse_event, AriError, AriEvent, AsteriskVersion, MAX_EVENT_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse_event(data) {
        Ok(AriEvent::Unknown(kind)) => assert!(kind.chars().count() <= 64),
        Ok(ev) => {
            assert!(ev.channel().is_some());
            assert!(!ev.type_name().is_empty());
        }
        Err(AriError::EventTooLarge { len, max }) => {
            assert_eq!(len, data.len());
            assert!(len > max && max == MAX_EVENT_BYTES);
        }
        Err(e) => assert_eq!(e.as_label(), "bad_event"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let v = AsteriskVersion::parse(text);
        if v.supports_slin16_audiosocket_kinds() || v.supports_audiosocket_dtmf() {
            assert!(v.is_known());
        }
    }
});
