//! (in progress) The local-ai-server simulator.

#![forbid(unsafe_code)]

use super::common::{Conn, Handshake, Verdict};

/// Not served yet.
pub(crate) fn handshake(_hs: &Handshake) -> Verdict {
    Verdict::Refuse {
        status: 501,
        body: "{}".into(),
        auth_failure: false,
        violation: None,
    }
}

/// Not served yet.
pub(crate) async fn run(_conn: Conn) {}
