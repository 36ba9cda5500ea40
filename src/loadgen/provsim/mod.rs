//! (in progress) Protocol-faithful provider simulator servers.

pub mod common;
pub mod deepgram;
pub mod local;
pub mod openai;
