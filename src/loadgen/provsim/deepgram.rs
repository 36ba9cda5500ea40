//! (in progress) The Deepgram Voice Agent v1 simulator.

#![forbid(unsafe_code)]

use super::common::{Conn, Handshake, Verdict};

/// The agent endpoint's path.
pub(crate) const PATH: &str = "/v1/agent/converse";

/// Not served yet.
pub(crate) fn handshake(_hs: &Handshake, _key: Option<&str>) -> Verdict {
    Verdict::Refuse {
        status: 501,
        body: "{}".into(),
        auth_failure: false,
        violation: None,
    }
}

/// Not served yet.
pub(crate) async fn run(_conn: Conn) {}
