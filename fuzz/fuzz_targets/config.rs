//! Configuration loader under arbitrary UTF-8 text: `voxd::config::parse_str` must
//! return `Ok` or a `ConfigError`, never panic, hang or blow the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = voxd::config::parse_str(s);
    }
});
