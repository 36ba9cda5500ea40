//! Deepgram Voice Agent server messages under arbitrary text messages.
//!
//! Drives `voxd::provider::deepgram::messages::parse`, the parse every server
//! text message goes through in the session (binary messages are audio, passed
//! on as they are). Invariants: no panic; a message is accepted exactly when it is
//! a JSON object with a string `type`; an unknown or ignored type is reported by
//! its own name. Non-UTF-8 input is skipped: the WebSocket layer refuses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voxd::provider::deepgram::messages::{parse, ServerMsg};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let typed = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string));
    match (parse(text), typed) {
        (Ok(ServerMsg::Unknown(k) | ServerMsg::Ignored(k)), Some(t)) => assert_eq!(k, t),
        (Ok(_), Some(_)) | (Err(_), None) => {}
        (r, t) => panic!("parse {r:?} disagrees with the type {t:?}"),
    }
});
