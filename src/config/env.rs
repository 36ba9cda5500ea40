//! Environment handling: `${VAR}` expansion in YAML strings and environment overrides.
//!
//! This module owns the two ways the environment reaches the configuration: expanding
//! `${VAR}`, `${VAR:-default}` and `${VAR:=default}` inside string values (as the
//! reference engine's file uses them), and the fixed list of override variables applied
//! after the YAML ([`ENV_OVERRIDES`]), including the only source of secrets: each
//! secret variable `NAME`, or a file named by `NAME_FILE` that only its owner may
//! read or write (mode 0600 or 0400; anything else is refused with the mode in the
//! error). It reads the environment only through the lookup function it is given
//! (never `std::env` directly), reads no file but those `NAME_FILE` names, and must
//! never put a secret value into an issue message.

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
    ("HEALTH_API_TOKEN", "health.api_token (secret)"),
];

/// The secret variables and the key each sets. Each may be given instead as a file:
/// `NAME_FILE=/path` ([`SECRET_FILE_SUFFIX`]), mode 0600 or 0400.
pub const SECRET_ENV: &[(&str, &str)] = &[
    ("ASTERISK_ARI_USERNAME", "asterisk.username"),
    ("ASTERISK_ARI_PASSWORD", "asterisk.password"),
    ("OPENAI_API_KEY", "providers.openai_realtime.api_key"),
    ("DEEPGRAM_API_KEY", "providers.deepgram.api_key"),
    ("LOCAL_AI_AUTH_TOKEN", "providers.local.auth_token"),
    ("HEALTH_API_TOKEN", "health.api_token"),
];

/// Suffix of the variable that names a secret's file: `OPENAI_API_KEY_FILE`.
pub const SECRET_FILE_SUFFIX: &str = "_FILE";

/// Largest secret file read (a key or a password, never this large).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The secret `name` sets (key `key`): from the variable itself, or from the file
/// `NAME_FILE` names. Both set, or a file that is unreadable, empty, not a regular
/// file or open to group or others, is an issue at `env NAME_FILE` (naming the file
/// and its mode, never its content) and leaves the key unset.
fn secret_from(
    env: EnvLookup<'_>,
    name: &str,
    key: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Secret> {
    let file_var = format!("{name}{SECRET_FILE_SUFFIX}");
    let direct = lookup(env, name);
    let Some(path) = lookup(env, &file_var) else {
        return direct.map(|v| Secret::new(v.trim()));
    };
    let path = path.trim().to_string();
    if direct.is_some() {
        issues.push(ConfigIssue::new(
            format!("env {file_var}"),
            format!("{key}: both {name} and {file_var} are set; set only one"),
        ));
        return None;
    }
    match read_secret_file(std::path::Path::new(&path)) {
        Ok(v) => Some(Secret::new(v)),
        Err(why) => {
            issues.push(ConfigIssue::new(
                format!("env {file_var}"),
                format!("{key}: secret file `{path}` {why}"),
            ));
            None
        }
    }
}

/// Reads a secret file: a regular file of at most 64 KiB that group and others can
/// neither read nor write; its content with surrounding whitespace trimmed. The
/// error says what is wrong (for a mode, the mode and the fix), never the content.
pub(crate) fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    // Open first, then check the open file: what is checked is what is read.
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "has mode {mode:04o}: group or others may read or write it; a secret file              must be 0600 or 0400 (chmod 600 {})",
            path.display()
        ));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "is {} bytes; allowed at most {MAX_SECRET_FILE_BYTES}",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot be read as UTF-8 text: {}", e.kind()))?;
    let v = text.trim();
    if v.is_empty() {
        return Err("is empty".into());
    }
    Ok(v.to_string())
}

fn lookup(env: EnvLookup<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Applies [`ENV_OVERRIDES`] to `cfg`. A value that does not parse is reported as an
/// issue with path `env NAME` and leaves the key unchanged.
pub(crate) fn apply_overrides(cfg: &mut Config, env: EnvLookup<'_>, issues: &mut Vec<ConfigIssue>) {
    for (name, key) in SECRET_ENV {
        let Some(s) = secret_from(env, name, key, issues) else {
            continue;
        };
        let slot = match *name {
            "ASTERISK_ARI_USERNAME" => &mut cfg.asterisk.username,
            "ASTERISK_ARI_PASSWORD" => &mut cfg.asterisk.password,
            "OPENAI_API_KEY" => &mut cfg.providers.openai_realtime.api_key,
            "DEEPGRAM_API_KEY" => &mut cfg.providers.deepgram.api_key,
            "LOCAL_AI_AUTH_TOKEN" => &mut cfg.providers.local.auth_token,
            _ => &mut cfg.health.api_token,
        };
        *slot = s;
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

    fn secret_file(name: &str, mode: u32, content: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("voxd-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn with_env(pairs: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn secrets_from_owner_only_files() {
        let key = secret_file("openai", 0o600, "sk-from-a-file-123\n");
        let pass = secret_file("ari", 0o400, "  ari-pass  ");
        let token = secret_file("token", 0o600, "admin-token");
        let env = with_env(vec![
            ("OPENAI_API_KEY_FILE".into(), key.display().to_string()),
            (
                "ASTERISK_ARI_PASSWORD_FILE".into(),
                pass.display().to_string(),
            ),
            ("HEALTH_API_TOKEN_FILE".into(), token.display().to_string()),
            ("DEEPGRAM_API_KEY".into(), "dg-direct".into()),
        ]);
        let mut cfg = Config::default();
        let mut issues = Vec::new();
        apply_overrides(&mut cfg, &env, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            cfg.providers.openai_realtime.api_key.expose(),
            Some("sk-from-a-file-123")
        );
        assert_eq!(cfg.asterisk.password.expose(), Some("ari-pass"));
        assert_eq!(cfg.health.api_token.expose(), Some("admin-token"));
        assert_eq!(cfg.providers.deepgram.api_key.expose(), Some("dg-direct"));
    }

    #[test]
    fn secret_files_open_to_others_or_ambiguous_are_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o777] {
            let p = secret_file("loose", mode, "sk-loose-secret");
            let env = with_env(vec![(
                "OPENAI_API_KEY_FILE".into(),
                p.display().to_string(),
            )]);
            let mut cfg = Config::default();
            let mut issues = Vec::new();
            apply_overrides(&mut cfg, &env, &mut issues);
            assert!(!cfg.providers.openai_realtime.api_key.is_set());
            assert_eq!(issues.len(), 1, "{mode:o}: {issues:?}");
            assert_eq!(issues[0].path, "env OPENAI_API_KEY_FILE");
            let m = &issues[0].message;
            assert!(m.contains("providers.openai_realtime.api_key"), "{m}");
            assert!(m.contains(&format!("mode {mode:04o}")), "{m}");
            assert!(m.contains("0600"), "{m}");
            assert!(!m.contains("sk-loose-secret"), "{m}");
        }
        let ok = secret_file("both", 0o600, "x");
        let empty = secret_file("empty", 0o600, " \n");
        let dir = std::env::temp_dir();
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (
                vec![
                    ("DEEPGRAM_API_KEY".into(), "dg".into()),
                    ("DEEPGRAM_API_KEY_FILE".into(), ok.display().to_string()),
                ],
                "set only one",
            ),
            (
                vec![(
                    "DEEPGRAM_API_KEY_FILE".into(),
                    "/nonexistent/voxd-key".into(),
                )],
                "cannot be read",
            ),
            (
                vec![("DEEPGRAM_API_KEY_FILE".into(), empty.display().to_string())],
                "is empty",
            ),
            (
                vec![("DEEPGRAM_API_KEY_FILE".into(), dir.display().to_string())],
                "not a regular file",
            ),
        ];
        for (pairs, want) in cases {
            let env = with_env(pairs);
            let mut cfg = Config::default();
            let mut issues = Vec::new();
            apply_overrides(&mut cfg, &env, &mut issues);
            assert!(!cfg.providers.deepgram.api_key.is_set());
            assert_eq!(issues.len(), 1, "{issues:?}");
            assert_eq!(issues[0].path, "env DEEPGRAM_API_KEY_FILE");
            assert!(issues[0].message.contains(want), "{:?}", issues[0]);
        }
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
