//! Local STT/LLM/TTS server messages under arbitrary input.
//!
//! The input is a text message, optionally followed by a NUL byte and the binary
//! message after it (a NUL cannot occur in JSON text). Drives what the session
//! runs: `voxd::provider::local::messages::parse` on the text, then, as for a
//! binary message, the format named by the `tts_audio` (or `tts_response`) facts,
//! or the legacy mu-law 8 kHz without them, and the conversion of the audio to
//! slin16. Invariants: no panic; a text without a JSON object with a string `type`
//! is refused; converted audio is whole 16-bit samples. Non-UTF-8 text is skipped:
//! the WebSocket layer refuses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voxd::provider::local::convert::{OutputConverter, SourceFormat};
use voxd::provider::local::messages::{parse, ServerMsg, TtsMeta};

fuzz_target!(|data: &[u8]| {
    let (text, binary) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let typed = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string));
    let parsed = parse(text);
    if typed.is_none() {
        assert!(parsed.is_err());
    }
    let mut conv = OutputConverter::new();
    let meta = match parsed {
        Ok(ServerMsg::TtsAudio(meta)) => meta,
        Ok(ServerMsg::TtsResponse { audio, meta, .. }) => {
            if let Some(fmt) = SourceFormat::parse(&meta.encoding, meta.sample_rate_hz) {
                assert_eq!(conv.convert(fmt, audio).len() % 2, 0);
            }
            meta
        }
        _ => TtsMeta::default(),
    };
    if let Some(fmt) = SourceFormat::parse(&meta.encoding, meta.sample_rate_hz) {
        assert_eq!(conv.convert(fmt, binary.to_vec()).len() % 2, 0);
        conv.end_utterance();
    }
});
