//! Environment handling: `${VAR}` expansion in YAML strings and environment overrides.
//!
//! This module owns the two ways the environment reaches the configuration: expanding
//! `${VAR}`, `${VAR:-default}` and `${VAR:=default}` inside string values (as the
//! reference engine's file uses them), and the fixed list of override variables applied
//! after the YAML ([`ENV_OVERRIDES`]), including the only source of secrets. It reads
//! the environment only through the lookup function it is given (never
//! `std::env` directly) and must never put a secret value into an issue message.

use serde_json::{Number, Value};

use super::errors::ConfigIssue;
use super::schema::{Config, Secret};
use super::validate::is_valid_host;

/// The environment lookup used by the loader: `Some(value)` when the variable is set.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Every environment variable voxd reads, with the key it sets.
/// An empty value counts as unset.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ASTERISK_HOST", "asterisk.host"),
    ("ASTERISK_ARI_USERNAME", "asterisk.username (secret)"),
    ("ASTERISK_ARI_PASSWORD", "asterisk.password (secret)"),
    ("AUDIOSOCKET_HOST", "audiosocket.host"),
    ("AUDIOSOCKET_PORT", "audiosocket.port"),
    ("EXTERNAL_MEDIA_RTP_HOST", "external_media.rtp_host"),
    ("EXTERNAL_MEDIA_RTP_PORT", "external_media.rtp_port"),
    ("HEALTH_BIND_HOST", "health.host"),
    ("HEALTH_BIND_PORT", "health.port"),
    (
        "OPENAI_API_KEY",
        "providers.openai_realtime.api_key (secret)",
    ),
    ("DEEPGRAM_API_KEY", "providers.deepgram.api_key (secret)"),
    ("LOCAL_AI_AUTH_TOKEN", "providers.local.auth_token (secret)"),
];

fn lookup(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Applies [`ENV_OVERRIDES`] to `cfg`. A value that does not parse is reported as an
/// issue with path `env NAME` and leaves the key unchanged.
pub(crate) fn apply_overrides(cfg: &mut Config, env: EnvLookup<'_>, issues: &mut Vec<ConfigIssue>) {
    let secret = |name: &str| lookup(env, name).map(|v| Secret::new(v.trim()));
    if let Some(s) = secret("ASTERISK_ARI_USERNAME") {
        cfg.asterisk.username = s;
    }
    if let Some(s) = secret("ASTERISK_ARI_PASSWORD") {
        cfg.asterisk.password = s;
    }
    if let Some(s) = secret("OPENAI_API_KEY") {
        cfg.providers.openai_realtime.api_key = s;
    }
    if let Some(s) = secret("DEEPGRAM_API_KEY") {
        cfg.providers.deepgram.api_key = s;
    }
    if let Some(s) = secret("LOCAL_AI_AUTH_TOKEN") {
        cfg.providers.local.auth_token = s;
    }

    let mut host = |name: &str, slot: &mut String| {
        if let Some(v) = lookup(env, name) {
            let v = v.trim();
            if is_valid_host(v) {
                *slot = v.to_string();
            } else {
                issues.push(ConfigIssue::new(
                    format!("env {name}"),
                    format!("`{v}` is not an IP address or host name"),
                ));
            }
        }
    };
    host("ASTERISK_HOST", &mut cfg.asterisk.host);
    host("AUDIOSOCKET_HOST", &mut cfg.audiosocket.host);
    host("EXTERNAL_MEDIA_RTP_HOST", &mut cfg.external_media.rtp_host);
    host("HEALTH_BIND_HOST", &mut cfg.health.host);

    let mut port = |name: &str, slot: &mut u16| {
        if let Some(v) = lookup(env, name) {
            let v = v.trim();
            match v.parse::<u16>() {
                Ok(p) if p >= 1 => *slot = p,
                _ => issues.push(ConfigIssue::new(
                    format!("env {name}"),
                    format!("`{v}` is not a port; allowed 1..=65535"),
                )),
            }
        }
    };
    port("AUDIOSOCKET_PORT", &mut cfg.audiosocket.port);
    port("EXTERNAL_MEDIA_RTP_PORT", &mut cfg.external_media.rtp_port);
    port("HEALTH_BIND_PORT", &mut cfg.health.port);
}

/// Expands `${...}` references in every string of `value`, in place.
///
/// A string that contained a reference and expands to an integer, a finite float or
/// `true`/`false` becomes that type (`chunk_ms: ${LOCAL_WS_CHUNK_MS:=320}` is 320).
pub(crate) fn expand_tree(value: &mut Value, env: EnvLookup<'_>) {
    match value {
        Value::String(s) => {
            if let Some(expanded) = expand_str(s, env) {
                *value = typed(expanded);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| expand_tree(v, env)),
        Value::Object(map) => map.values_mut().for_each(|v| expand_tree(v, env)),
        _ => {}
    }
}

fn typed(s: String) -> Value {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = t.parse::<u64>() {
        return Value::Number(u.into());
    }
    if let Ok(f) = t.parse::<f64>() {
        if let Some(n) = Number::from_f64(f) {
            // Only plain decimal spellings; "inf"/"nan" were refused by from_f64.
            return Value::Number(n);
        }
    }
    match t {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s),
    }
}

/// Expands `${VAR}`, `${VAR:-default}`, `${VAR:=default}`, `${VAR-default}` and
/// `${VAR=default}` in `s`. Returns `None` when `s` holds no reference (so its type
/// is kept). With `:-`/`:=` the default applies when VAR is unset or empty, with
/// `-`/`=` only when unset; an unset VAR without default expands to "". Text that is
/// not a well-formed reference is kept as written.
pub(crate) fn expand_str(s: &str, env: EnvLookup<'_>) -> Option<String> {
    if !s.contains("${") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut expanded = false;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        match expand_one(inner, env) {
            Some(text) => {
                out.push_str(&text);
                expanded = true;
            }
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    expanded.then_some(out)
}

fn expand_one(inner: &str, env: EnvLookup<'_>) -> Option<String> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let name = &inner[..name_len];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let op = &inner[name_len..];
    let value = env(name);
    if op.is_empty() {
        return Some(value.unwrap_or_default());
    }
    let (use_default_if_empty, default) = if let Some(d) = op.strip_prefix(":-") {
        (true, d)
    } else if let Some(d) = op.strip_prefix(":=") {
        (true, d)
    } else if let Some(d) = op.strip_prefix('-') {
        (false, d)
    } else if let Some(d) = op.strip_prefix('=') {
        (false, d)
    } else {
        return None;
    };
    Some(match value {
        Some(v) if !(use_default_if_empty && v.is_empty()) => v,
        _ => default.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expands_all_reference_forms() {
        let env = env_of(&[("SET", "value"), ("EMPTY", "")]);
        let e = |s: &str| expand_str(s, &env);
        assert_eq!(e("plain"), None);
        assert_eq!(e("${SET}").as_deref(), Some("value"));
        assert_eq!(e("${UNSET}").as_deref(), Some(""));
        assert_eq!(e("${UNSET:-x}").as_deref(), Some("x"));
        assert_eq!(e("${SET:-x}").as_deref(), Some("value"));
        assert_eq!(e("${EMPTY:-x}").as_deref(), Some("x"));
        assert_eq!(e("${EMPTY-x}").as_deref(), Some(""));
        assert_eq!(e("${UNSET:=320}").as_deref(), Some("320"));
        assert_eq!(
            e("ws://${UNSET:-127.0.0.1}:${SET}/p").as_deref(),
            Some("ws://127.0.0.1:value/p")
        );
        assert_eq!(e("${UNSET:-Hi! I'm here}").as_deref(), Some("Hi! I'm here"));
        // Malformed references stay literal.
        assert_eq!(e("${"), None);
        assert_eq!(e("${1X} ${SET}").as_deref(), Some("${1X} value"));
        assert_eq!(e("${A B}"), None);
    }

    #[test]
    fn expanded_scalars_take_their_type() {
        let env = env_of(&[]);
        let mut v = serde_json::json!({
            "a": "${X:=320}", "b": "${X:=2.0}", "c": "${X:-true}", "d": "${X:-text}",
            "e": "320", "f": ["${X:-7}"]
        });
        expand_tree(&mut v, &env);
        assert_eq!(v["a"], serde_json::json!(320));
        assert_eq!(v["b"], serde_json::json!(2.0));
        assert_eq!(v["c"], serde_json::json!(true));
        assert_eq!(v["d"], serde_json::json!("text"));
        assert_eq!(
            v["e"],
            serde_json::json!("320"),
            "unexpanded strings keep their type"
        );
        assert_eq!(v["f"][0], serde_json::json!(7));
    }

    #[test]
    fn overrides_apply_and_bad_values_are_issues() {
        let env = env_of(&[
            ("HEALTH_BIND_HOST", "0.0.0.0"),
            ("HEALTH_BIND_PORT", "abc"),
            ("AUDIOSOCKET_PORT", "9000"),
            ("AUDIOSOCKET_HOST", "bad host!"),
            ("OPENAI_API_KEY", "sk-secret-value"),
            ("ASTERISK_ARI_PASSWORD", ""),
        ]);
        let mut cfg = Config::default();
        let mut issues = Vec::new();
        apply_overrides(&mut cfg, &env, &mut issues);
        assert_eq!(cfg.health.host, "0.0.0.0");
        assert_eq!(cfg.health.port, 15000);
        assert_eq!(cfg.audiosocket.port, 9000);
        assert_eq!(cfg.audiosocket.host, "127.0.0.1");
        assert_eq!(
            cfg.providers.openai_realtime.api_key.expose(),
            Some("sk-secret-value")
        );
        assert!(
            !cfg.asterisk.password.is_set(),
            "empty env value counts as unset"
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["env AUDIOSOCKET_HOST", "env HEALTH_BIND_PORT"]);
        assert!(issues[1].message.contains("1..=65535"));
    }
}
