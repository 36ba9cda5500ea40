//! Validation rules: ranges, formats and cross-key constraints of a loaded [`Config`].
//!
//! This module owns every rule a syntactically correct configuration must also meet,
//! and reports all violations at once, each with its key path and the allowed range.
//! It must not modify the configuration, read the environment or files, or print
//! secret values (it only asks whether a secret is set).

use std::net::IpAddr;

use super::errors::ConfigIssue;
use super::schema::{AudioTransport, Config, OnProviderFailure, ProviderName};

/// Largest valid value of a port.
const PORT_RANGE: &str = "1..=65535";

/// Whether `s` is an IP address or an RFC 1123 host name.
pub fn is_valid_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    // A name made of digits and dots only is a malformed IPv4 address, not a name.
    if name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Whether `s` is an IP address or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
pub fn is_valid_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((addr, prefix)) => {
            let Ok(addr) = addr.parse::<IpAddr>() else {
                return false;
            };
            let Ok(prefix) = prefix.parse::<u8>() else {
                return false;
            };
            prefix <= if addr.is_ipv4() { 32 } else { 128 }
        }
    }
}

/// Whether `s` is a `ws://` or `wss://` URL with a host.
pub fn is_ws_url(s: &str) -> bool {
    let rest = s.strip_prefix("wss://").or_else(|| s.strip_prefix("ws://"));
    match rest {
        Some(rest) => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            !authority.is_empty() && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

#[derive(Default)]
struct Checker {
    issues: Vec<ConfigIssue>,
}

impl Checker {
    fn push(&mut self, path: &str, message: String) {
        self.issues.push(ConfigIssue::new(path, message));
    }

    fn range(&mut self, path: &str, value: u64, lo: u64, hi: u64) {
        if value < lo || value > hi {
            self.push(
                path,
                format!("{value} is out of range; allowed {lo}..={hi}"),
            );
        }
    }

    fn port(&mut self, path: &str, port: u16) {
        if port == 0 {
            self.push(
                path,
                format!("0 is not a usable port; allowed {PORT_RANGE}"),
            );
        }
    }

    fn host(&mut self, path: &str, host: &str) {
        if !is_valid_host(host) {
            self.push(
                path,
                format!("`{host}` is not an IP address or host name; allowed e.g. 127.0.0.1, ::1, pbx.example.com"),
            );
        }
    }

    fn opt_host(&mut self, path: &str, host: Option<&str>) {
        if let Some(h) = host {
            self.host(path, h);
        }
    }

    fn ws_url(&mut self, path: &str, url: &str) {
        if !is_ws_url(url) {
            self.push(
                path,
                format!("`{url}` is not a WebSocket URL; allowed ws://host[:port]/path or wss://host[:port]/path"),
            );
        }
    }

    fn non_empty(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(path, "must not be empty".to_string());
        }
    }

    fn peers(&mut self, path: &str, peers: &[String]) {
        if peers.is_empty() {
            self.push(
                path,
                "empty list refuses every peer; allowed: IP addresses or CIDR blocks (use 0.0.0.0/0 and ::/0 to allow any)".to_string(),
            );
        }
        for (i, p) in peers.iter().enumerate() {
            if !is_valid_ip_or_cidr(p.trim()) {
                self.push(
                    &format!("{path}[{i}]"),
                    format!("`{p}` is not an IP address or CIDR block; allowed e.g. 10.0.0.5, 10.0.0.0/8, ::1"),
                );
            }
        }
    }
}

/// Checks every rule; returns all violations (empty when the configuration is valid).
pub(crate) fn validate(cfg: &Config) -> Vec<ConfigIssue> {
    let mut c = Checker::default();

    // asterisk
    let a = &cfg.asterisk;
    c.host("asterisk.host", &a.host);
    c.port("asterisk.port", a.port);
    if a.app_name.is_empty()
        || !a
            .app_name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.push(
            "asterisk.app_name",
            format!(
                "`{}` is not a valid Stasis application name; allowed: non-empty, letters, digits, '-', '_', '.'",
                a.app_name
            ),
        );
    }
    if let Some(ca) = &a.ca_file {
        c.non_empty("asterisk.ca_file", ca);
    }
    if a.enabled == Some(true) && (!a.username.is_set() || !a.password.is_set()) {
        c.push(
            "asterisk.enabled",
            "ARI is enabled but ASTERISK_ARI_USERNAME / ASTERISK_ARI_PASSWORD are not both set in the environment".to_string(),
        );
    }
    if let Some(ctx) = &a.transfer_context {
        c.non_empty("asterisk.transfer_context", ctx);
    }

    // audiosocket
    let s = &cfg.audiosocket;
    c.host("audiosocket.host", &s.host);
    c.port("audiosocket.port", s.port);
    c.opt_host("audiosocket.advertise_host", s.advertise_host.as_deref());
    c.range(
        "audiosocket.max_frame_bytes",
        s.max_frame_bytes.into(),
        1,
        65535,
    );
    c.range(
        "audiosocket.read_timeout_ms",
        s.read_timeout_ms.into(),
        1,
        3_600_000,
    );
    c.peers("audiosocket.allowed_remote_hosts", &s.allowed_remote_hosts);

    // external_media
    let e = &cfg.external_media;
    c.host("external_media.rtp_host", &e.rtp_host);
    c.port("external_media.rtp_port", e.rtp_port);
    if let Some(range) = &e.port_range {
        match e
            .port_range_bounds()
            .filter(|&(lo, hi)| lo != 0 && lo <= hi)
        {
            None => c.push(
                "external_media.port_range",
                format!("`{range}` is not a port range; allowed \"A:B\" with 1 <= A <= B <= 65535"),
            ),
            Some((lo, hi)) if !(lo..=hi).contains(&e.rtp_port) => c.push(
                "external_media.port_range",
                format!(
                    "`{range}` does not contain rtp_port ({}); allowed ranges with A <= {} <= B",
                    e.rtp_port, e.rtp_port
                ),
            ),
            Some(_) => {}
        }
    }
    c.peers(
        "external_media.allowed_remote_hosts",
        &e.allowed_remote_hosts,
    );
    c.opt_host("external_media.advertise_host", e.advertise_host.as_deref());
    c.range(
        "external_media.idle_timeout_ms",
        e.idle_timeout_ms.into(),
        1,
        3_600_000,
    );
    c.range(
        "external_media.jitter_depth_ms",
        e.jitter_depth_ms.into(),
        0,
        1000,
    );
    c.range(
        "external_media.max_packets_per_second",
        e.max_packets_per_second.into(),
        50,
        100_000,
    );

    // streaming
    let st = &cfg.streaming;
    c.range(
        "streaming.jitter_buffer_ms",
        st.jitter_buffer_ms.into(),
        20,
        10_000,
    );
    if st.min_start_ms > st.jitter_buffer_ms {
        c.push(
            "streaming.min_start_ms",
            format!(
                "{} is above jitter_buffer_ms ({}); allowed 0..={}",
                st.min_start_ms, st.jitter_buffer_ms, st.jitter_buffer_ms
            ),
        );
    }
    if st.low_watermark_ms > st.min_start_ms {
        c.push(
            "streaming.low_watermark_ms",
            format!(
                "{} is above min_start_ms ({}); allowed 0..={}",
                st.low_watermark_ms, st.min_start_ms, st.min_start_ms
            ),
        );
    }
    c.range(
        "streaming.provider_grace_ms",
        st.provider_grace_ms.into(),
        0,
        10_000,
    );

    // barge_in
    let b = &cfg.barge_in;
    c.range("barge_in.min_ms", b.min_ms.into(), 0, 10_000);
    c.range(
        "barge_in.energy_threshold",
        b.energy_threshold.into(),
        1,
        32_767,
    );
    c.range("barge_in.cooldown_ms", b.cooldown_ms.into(), 0, 60_000);
    c.range(
        "barge_in.initial_protection_ms",
        b.initial_protection_ms.into(),
        0,
        60_000,
    );
    c.range(
        "barge_in.post_tts_end_protection_ms",
        b.post_tts_end_protection_ms.into(),
        0,
        60_000,
    );

    // health
    c.host("health.host", &cfg.health.host);
    c.port("health.port", cfg.health.port);
    if cfg.audio_transport == AudioTransport::Audiosocket
        && cfg.health.port == s.port
        && hosts_overlap(&cfg.health.host, &s.host)
    {
        c.push(
            "health.port",
            format!(
                "{} is also audiosocket.port on an overlapping address; allowed any other port",
                cfg.health.port
            ),
        );
    }

    // providers
    let p = &cfg.providers;
    if !p.is_enabled(cfg.default_provider) {
        let enabled: Vec<&str> = ProviderName::ALL
            .iter()
            .filter(|n| p.is_enabled(**n))
            .map(|n| n.as_str())
            .collect();
        c.push(
            "default_provider",
            format!(
                "`{}` is not enabled (set providers.{}.enabled: true); allowed: an enabled provider ({})",
                cfg.default_provider.as_str(),
                cfg.default_provider.as_str(),
                if enabled.is_empty() { "none enabled".to_string() } else { enabled.join(", ") }
            ),
        );
    }
    c.range("providers.sim.think_ms", p.sim.think_ms.into(), 0, 60_000);
    c.range("providers.sim.reply_ms", p.sim.reply_ms.into(), 20, 600_000);

    let o = &p.openai_realtime;
    c.ws_url("providers.openai_realtime.base_url", &o.base_url);
    c.non_empty("providers.openai_realtime.model", &o.model);
    c.non_empty("providers.openai_realtime.voice", &o.voice);
    let t = &o.turn_detection;
    if !(t.threshold.is_finite() && (0.0..=1.0).contains(&t.threshold)) {
        c.push(
            "providers.openai_realtime.turn_detection.threshold",
            format!("{} is out of range; allowed 0.0..=1.0", t.threshold),
        );
    }
    c.range(
        "providers.openai_realtime.turn_detection.prefix_padding_ms",
        t.prefix_padding_ms.into(),
        0,
        10_000,
    );
    c.range(
        "providers.openai_realtime.turn_detection.silence_duration_ms",
        t.silence_duration_ms.into(),
        0,
        10_000,
    );
    if o.enabled && !o.api_key.is_set() {
        c.push(
            "providers.openai_realtime.api_key",
            "provider is enabled but no API key is set; set the environment variable OPENAI_API_KEY".to_string(),
        );
    }

    let d = &p.deepgram;
    c.ws_url("providers.deepgram.base_url", &d.base_url);
    c.non_empty("providers.deepgram.listen_model", &d.listen_model);
    c.non_empty("providers.deepgram.think_provider", &d.think_provider);
    c.non_empty("providers.deepgram.think_model", &d.think_model);
    c.non_empty("providers.deepgram.speak_model", &d.speak_model);
    if d.enabled && !d.api_key.is_set() {
        c.push(
            "providers.deepgram.api_key",
            "provider is enabled but no API key is set; set the environment variable DEEPGRAM_API_KEY".to_string(),
        );
    }

    let l = &p.local;
    c.ws_url("providers.local.base_url", &l.base_url);
    c.range("providers.local.chunk_ms", l.chunk_ms.into(), 10, 10_000);
    c.range(
        "providers.openai_realtime.append_ms",
        o.append_ms.into(),
        20,
        1000,
    );
    if o.append_ms % 20 != 0 {
        c.push(
            "providers.openai_realtime.append_ms",
            format!(
                "{} is not a multiple of 20; allowed 20, 40, .., 1000",
                o.append_ms
            ),
        );
    }
    for (key, v) in [
        (
            "providers.openai_realtime.connect_timeout_ms",
            o.connect_timeout_ms,
        ),
        (
            "providers.deepgram.connect_timeout_ms",
            d.connect_timeout_ms,
        ),
        ("providers.local.connect_timeout_ms", l.connect_timeout_ms),
    ] {
        c.range(key, v.into(), 100, 60_000);
    }
    for (key, v) in [
        (
            "providers.openai_realtime.read_timeout_ms",
            o.read_timeout_ms,
        ),
        ("providers.deepgram.read_timeout_ms", d.read_timeout_ms),
        ("providers.local.read_timeout_ms", l.read_timeout_ms),
    ] {
        c.range(key, v.into(), 300, 600_000);
    }
    c.range(
        "providers.deepgram.keepalive_ms",
        d.keepalive_ms.into(),
        1000,
        60_000,
    );

    // agents
    for (name, a) in &cfg.agents {
        if name.trim().is_empty() {
            c.push("agents", "an agent has an empty name".to_string());
        }
        if let Some(pn) = a.provider {
            if !p.is_enabled(pn) {
                c.push(
                    &format!("agents.{name}.provider"),
                    format!(
                        "`{}` is not enabled (set providers.{}.enabled: true)",
                        pn.as_str(),
                        pn.as_str()
                    ),
                );
            }
        }
    }

    // provider failure policy
    let f = &cfg.provider_failure;
    match f.on_provider_failure {
        OnProviderFailure::AnnounceHangup => c.non_empty("provider_failure.prompt", &f.prompt),
        OnProviderFailure::DialplanRedirect => {
            if f.context.is_none() && cfg.asterisk.transfer_context.is_none() {
                c.push(
                    "provider_failure.context",
                    "on_provider_failure: dialplan_redirect needs provider_failure.context or asterisk.transfer_context".to_string(),
                );
            }
            c.non_empty("provider_failure.extension", &f.extension);
        }
        OnProviderFailure::LeaveOpen => {}
    }

    // engine, limits, logging, shutdown
    c.range("engine.shards", cfg.engine.shards.into(), 0, 1024);
    c.range(
        "engine.control_threads",
        cfg.engine.control_threads.into(),
        0,
        256,
    );
    c.range("engine.tick_ms", cfg.engine.tick_ms.into(), 0, 10);
    c.range("limits.max_calls", cfg.limits.max_calls.into(), 1, 100_000);
    if let Some(path) = &cfg.logging.audit_path {
        c.non_empty("logging.audit_path", path);
    }
    c.range(
        "shutdown.drain_seconds",
        cfg.shutdown.drain_seconds.into(),
        0,
        3600,
    );

    c.issues
}

/// Whether two bind hosts can collide (same host, or either is a wildcard).
fn hosts_overlap(a: &str, b: &str) -> bool {
    let wildcard = |h: &str| {
        h.parse::<IpAddr>()
            .map(|ip| ip.is_unspecified())
            .unwrap_or(false)
    };
    a == b || wildcard(a) || wildcard(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Secret;

    fn paths(cfg: &Config) -> Vec<String> {
        validate(cfg).into_iter().map(|i| i.path).collect()
    }

    fn only_issue(cfg: &Config) -> ConfigIssue {
        let issues = validate(cfg);
        assert_eq!(
            issues.len(),
            1,
            "expected exactly one issue, got {issues:?}"
        );
        issues.into_iter().next().unwrap()
    }

    #[test]
    fn defaults_validate_clean() {
        assert_eq!(validate(&Config::default()), Vec::new());
    }

    #[test]
    fn host_and_cidr_syntax() {
        for ok in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "pbx",
            "pbx.example.com",
            "a-b.c.",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "bad host",
            "-a.com",
            "a..b",
            "300.1.1.1",
            "under_score.com",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
        for ok in ["10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "0.0.0.0/0"] {
            assert!(is_valid_ip_or_cidr(ok), "{ok}");
        }
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "host.example",
            "10.0.0.0/x",
            "",
        ] {
            assert!(!is_valid_ip_or_cidr(bad), "{bad}");
        }
        assert!(is_ws_url("wss://api.openai.com/v1/realtime"));
        assert!(is_ws_url("ws://127.0.0.1:8765"));
        assert!(!is_ws_url("https://api.openai.com"));
        assert!(!is_ws_url("ws://"));
    }

    #[test]
    fn streaming_rules_name_the_other_key() {
        let mut cfg = Config::default();
        cfg.streaming.min_start_ms = 5000;
        let issue = only_issue(&cfg);
        assert_eq!(
            issue.to_string(),
            "streaming.min_start_ms: 5000 is above jitter_buffer_ms (950); allowed 0..=950"
        );

        let mut cfg = Config::default();
        cfg.streaming.low_watermark_ms = 200;
        let issue = only_issue(&cfg);
        assert_eq!(issue.path, "streaming.low_watermark_ms");
        assert!(issue.message.contains("min_start_ms (120)"), "{issue}");

        let mut cfg = Config::default();
        cfg.streaming.jitter_buffer_ms = 10;
        cfg.streaming.min_start_ms = 10;
        cfg.streaming.low_watermark_ms = 0;
        let issue = only_issue(&cfg);
        assert_eq!(issue.path, "streaming.jitter_buffer_ms");
        assert!(issue.message.contains("20..=10000"), "{issue}");
    }

    #[test]
    fn each_rule_reports_its_path() {
        type Edit = fn(&mut Config);
        let cases: &[(&str, Edit)] = &[
            ("asterisk.host", |c| c.asterisk.host = "not a host".into()),
            ("asterisk.port", |c| c.asterisk.port = 0),
            ("asterisk.app_name", |c| {
                c.asterisk.app_name = "my app".into()
            }),
            ("audiosocket.port", |c| c.audiosocket.port = 0),
            ("audiosocket.max_frame_bytes", |c| {
                c.audiosocket.max_frame_bytes = 70000
            }),
            ("audiosocket.allowed_remote_hosts[1]", |c| {
                c.audiosocket.allowed_remote_hosts[1] = "nope".into()
            }),
            ("audiosocket.allowed_remote_hosts", |c| {
                c.audiosocket.allowed_remote_hosts.clear()
            }),
            ("audiosocket.advertise_host", |c| {
                c.audiosocket.advertise_host = Some("a b".into())
            }),
            ("external_media.port_range", |c| {
                c.external_media.port_range = Some("18099:18080".into())
            }),
            ("external_media.port_range", |c| {
                c.external_media.port_range = Some("20000:20010".into())
            }),
            ("external_media.port_range", |c| {
                c.external_media.port_range = Some("18080".into())
            }),
            ("providers.deepgram.read_timeout_ms", |c| {
                c.providers.deepgram.read_timeout_ms = 299
            }),
            ("external_media.max_packets_per_second", |c| {
                c.external_media.max_packets_per_second = 49
            }),
            ("audiosocket.read_timeout_ms", |c| {
                c.audiosocket.read_timeout_ms = 0
            }),
            ("barge_in.energy_threshold", |c| {
                c.barge_in.energy_threshold = 0
            }),
            ("barge_in.energy_threshold", |c| {
                c.barge_in.energy_threshold = 40000
            }),
            ("health.host", |c| c.health.host = "".into()),
            ("health.port", |c| c.health.port = 8090),
            ("default_provider", |c| {
                c.default_provider = ProviderName::Local
            }),
            ("providers.openai_realtime.base_url", |c| {
                c.providers.openai_realtime.base_url = "https://api.openai.com".into()
            }),
            ("providers.openai_realtime.turn_detection.threshold", |c| {
                c.providers.openai_realtime.turn_detection.threshold = 1.5
            }),
            ("providers.openai_realtime.api_key", |c| {
                c.providers.openai_realtime.enabled = true
            }),
            ("providers.deepgram.api_key", |c| {
                c.providers.deepgram.enabled = true
            }),
            ("providers.local.base_url", |c| {
                c.providers.local.base_url = "http://x".into()
            }),
            ("limits.max_calls", |c| c.limits.max_calls = 0),
            ("limits.max_calls", |c| c.limits.max_calls = 100_001),
            ("engine.shards", |c| c.engine.shards = 5000),
            ("engine.control_threads", |c| c.engine.control_threads = 300),
            ("engine.tick_ms", |c| c.engine.tick_ms = 11),
            ("shutdown.drain_seconds", |c| {
                c.shutdown.drain_seconds = 4000
            }),
        ];
        for (path, edit) in cases {
            let mut cfg = Config::default();
            edit(&mut cfg);
            let issue = only_issue(&cfg);
            assert_eq!(issue.path, *path, "{issue}");
            assert!(
                issue.message.contains("allowed")
                    || issue.message.contains("set the environment variable"),
                "message must say what is allowed: {issue}"
            );
        }
    }

    #[test]
    fn enabled_provider_with_key_is_clean() {
        let mut cfg = Config::default();
        cfg.providers.openai_realtime.enabled = true;
        cfg.providers.openai_realtime.api_key = Secret::new("sk-x");
        cfg.default_provider = ProviderName::OpenaiRealtime;
        assert_eq!(paths(&cfg), Vec::<String>::new());
    }

    #[test]
    fn all_problems_reported_at_once() {
        let mut cfg = Config::default();
        cfg.health.port = 0;
        cfg.limits.max_calls = 0;
        cfg.streaming.min_start_ms = 2000;
        assert_eq!(
            paths(&cfg),
            ["streaming.min_start_ms", "health.port", "limits.max_calls"]
        );
    }
}
