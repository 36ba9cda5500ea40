//! The ARI client's error type and who is at fault for each error.
//!
//! Owns: [`AriError`] (every way a REST request, the events WebSocket or an event
//! parse can fail), its [`Fault`] classification (Asterisk peer, configuration,
//! network, internal bug) and a bounded metric label. Must not: carry secrets (no
//! credentials, no auth headers, no full request URLs with user info), carry unbounded
//! text from the network (Asterisk's error messages are cut to
//! [`MAX_MESSAGE_CHARS`]), or decide what to do about an error (the caller retries,
//! waits for an event or ends the call).

#![forbid(unsafe_code)]

/// Longest text kept from an Asterisk error body or a parser message.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// Who caused an [`AriError`]; maps to the `fault` label of error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Asterisk refused or answered badly (channel gone, wrong state, bad JSON).
    Asterisk,
    /// voxd's configuration (credentials, TLS settings, host name) is wrong.
    Config,
    /// Asterisk could not be reached or did not answer in time; retrying may help.
    Network,
    /// voxd sent something it should not have (a bug).
    Internal,
}

impl Fault {
    /// The metric label of this fault: `asterisk`, `config`, `network` or `internal`.
    pub fn as_label(self) -> &'static str {
        match self {
            Fault::Asterisk => "asterisk",
            Fault::Config => "config",
            Fault::Network => "network",
            Fault::Internal => "internal",
        }
    }
}

/// Why an ARI request, the events connection or an event parse failed.
///
/// `op` fields name the operation (`answer`, `addChannel`, ...), never a URL with
/// credentials. `message` fields hold Asterisk's own text, cut to
/// [`MAX_MESSAGE_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AriError {
    /// Asterisk could not be reached (connection refused or reset, DNS failure).
    #[error("ARI {op}: Asterisk unreachable: {detail}")]
    AsteriskUnreachable {
        /// Operation that failed.
        op: &'static str,
        /// What the transport said.
        detail: String,
    },
    /// No answer within the configured timeout.
    #[error("ARI {op}: timed out")]
    Timeout {
        /// Operation that timed out.
        op: &'static str,
    },
    /// 404: the channel, bridge or playback does not exist (any more).
    #[error("ARI {op}: not found (404): {message}")]
    NotFound {
        /// Operation that failed.
        op: &'static str,
        /// Asterisk's message.
        message: String,
    },
    /// 409: the object is in the wrong state (for example a bridge not in Stasis).
    #[error("ARI {op}: conflict (409): {message}")]
    Conflict {
        /// Operation that failed.
        op: &'static str,
        /// Asterisk's message.
        message: String,
    },
    /// 422: a referenced object is not ready, for example a channel added to a
    /// bridge before its `StasisStart` arrived: wait for the event and retry.
    #[error("ARI {op}: unprocessable (422): {message}")]
    Unprocessable {
        /// Operation that failed.
        op: &'static str,
        /// Asterisk's message.
        message: String,
    },
    /// 401/403: the ARI user name or password is wrong (`ari.conf`).
    #[error("ARI {op}: authentication refused ({status}); check ASTERISK_ARI_USERNAME / ASTERISK_ARI_PASSWORD and ari.conf")]
    Auth {
        /// Operation that failed.
        op: &'static str,
        /// 401 or 403.
        status: u16,
    },
    /// Any other non-success HTTP status (400, 5xx, ...).
    #[error("ARI {op}: HTTP {status}: {message}")]
    Status {
        /// Operation that failed.
        op: &'static str,
        /// The status code.
        status: u16,
        /// Asterisk's message.
        message: String,
    },
    /// Asterisk answered with a body voxd cannot read (bad JSON, missing field,
    /// too large) or the WebSocket handshake went wrong.
    #[error("ARI {op}: protocol error: {detail}")]
    Protocol {
        /// Operation that failed.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An event frame larger than [`crate::ari::events::MAX_EVENT_BYTES`].
    #[error("ARI event of {len} bytes exceeds the {max}-byte limit")]
    EventTooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An event frame that is not valid JSON or lacks a field its type needs.
    #[error("bad ARI event: {detail}")]
    BadEvent {
        /// What was wrong (serde's message with line and column).
        detail: String,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch, ...).
    #[error("ARI {op}: TLS error: {detail}; check asterisk.ca_file / asterisk.ssl_verify")]
    Tls {
        /// Operation that failed.
        op: &'static str,
        /// What rustls said.
        detail: String,
    },
    /// The configuration cannot produce a working client (bad host, unreadable
    /// `ca_file`, ...). Retrying does not help.
    #[error("ARI configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// A voxd bug (for example an HTTP client that cannot be built).
    #[error("ARI internal error: {detail}")]
    Internal {
        /// What went wrong.
        detail: String,
    },
}

impl AriError {
    /// Who is at fault. 404/409/422, bad bodies and 5xx are Asterisk's; 401/403,
    /// TLS trust failures and configuration problems are the operator's; unreachable
    /// and timeouts are the network's; other 4xx mean voxd sent a bad request.
    pub fn fault(&self) -> Fault {
        match self {
            AriError::AsteriskUnreachable { .. } | AriError::Timeout { .. } => Fault::Network,
            AriError::NotFound { .. }
            | AriError::Conflict { .. }
            | AriError::Unprocessable { .. }
            | AriError::Protocol { .. }
            | AriError::EventTooLarge { .. }
            | AriError::BadEvent { .. } => Fault::Asterisk,
            AriError::Status { status, .. } if *status >= 500 => Fault::Asterisk,
            AriError::Status { .. } | AriError::Internal { .. } => Fault::Internal,
            AriError::Auth { .. } | AriError::Tls { .. } | AriError::Config { .. } => Fault::Config,
        }
    }

    /// Whether the same request may succeed later without any change: unreachable,
    /// timeout, 503 and other 5xx. (422 may also succeed later, but only after the
    /// awaited event; the caller decides that.)
    pub fn is_retryable(&self) -> bool {
        match self {
            AriError::AsteriskUnreachable { .. } | AriError::Timeout { .. } => true,
            AriError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A bounded metric label for the kind of error (one of a fixed set of 13).
    pub fn as_label(&self) -> &'static str {
        match self {
            AriError::AsteriskUnreachable { .. } => "unreachable",
            AriError::Timeout { .. } => "timeout",
            AriError::NotFound { .. } => "not_found",
            AriError::Conflict { .. } => "conflict",
            AriError::Unprocessable { .. } => "unprocessable",
            AriError::Auth { .. } => "auth",
            AriError::Status { .. } => "http_status",
            AriError::Protocol { .. } => "protocol",
            AriError::EventTooLarge { .. } => "event_too_large",
            AriError::BadEvent { .. } => "bad_event",
            AriError::Tls { .. } => "tls",
            AriError::Config { .. } => "config",
            AriError::Internal { .. } => "internal",
        }
    }
}

/// Cuts `text` to at most [`MAX_MESSAGE_CHARS`] characters (on a char boundary).
pub(crate) fn truncate_message(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_labels() {
        let cases = [
            (
                AriError::AsteriskUnreachable {
                    op: "answer",
                    detail: "refused".into(),
                },
                Fault::Network,
                "unreachable",
                true,
            ),
            (
                AriError::Timeout { op: "answer" },
                Fault::Network,
                "timeout",
                true,
            ),
            (
                AriError::NotFound {
                    op: "answer",
                    message: String::new(),
                },
                Fault::Asterisk,
                "not_found",
                false,
            ),
            (
                AriError::Unprocessable {
                    op: "addChannel",
                    message: String::new(),
                },
                Fault::Asterisk,
                "unprocessable",
                false,
            ),
            (
                AriError::Auth {
                    op: "info",
                    status: 401,
                },
                Fault::Config,
                "auth",
                false,
            ),
            (
                AriError::Status {
                    op: "x",
                    status: 503,
                    message: String::new(),
                },
                Fault::Asterisk,
                "http_status",
                true,
            ),
            (
                AriError::Status {
                    op: "x",
                    status: 400,
                    message: String::new(),
                },
                Fault::Internal,
                "http_status",
                false,
            ),
            (
                AriError::Tls {
                    op: "x",
                    detail: String::new(),
                },
                Fault::Config,
                "tls",
                false,
            ),
        ];
        for (e, fault, label, retry) in cases {
            assert_eq!(e.fault(), fault, "{e}");
            assert_eq!(e.as_label(), label);
            assert_eq!(e.is_retryable(), retry, "{e}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(Fault::Config.as_label(), "config");
    }

    #[test]
    fn truncation_is_char_safe() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let t = truncate_message(&long);
        assert!(t.ends_with("..."));
        assert_eq!(t.chars().count(), MAX_MESSAGE_CHARS + 3);
        assert_eq!(truncate_message("short"), "short");
    }
}
