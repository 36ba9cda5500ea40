//! Compatibility with the reference engine's `config/ai-agent.yaml`, and key strictness.
//!
//! This module owns the policy for keys voxd does not read: the explicit table of keys
//! the reference engine (Asterisk-AI-Voice-Agent) defines inside blocks voxd shares
//! with it (ignored with one warning per block), the secret keys that are accepted but
//! ignored (secrets come only from the environment), the renamed keys, and the walk
//! that turns every other unknown key into an error with its path. It works on the
//! untyped YAML tree before deserialization. It must not echo any value of a key it
//! drops (those values may be secrets), and it must not apply defaults or validate.

use serde_json::{Map, Value};

use super::errors::ConfigIssue;
use super::schema::Config;

/// Keys the reference engine defines inside blocks voxd also reads, and that voxd
/// does not use. Each is ignored with a warning naming it. Keys are listed per block
/// path as they appear in the reference `config/ai-agent.yaml`.
pub const REFERENCE_ONLY_KEYS: &[(&str, &[&str])] = &[
    ("external_media", &["direction", "format", "sample_rate"]),
    (
        "streaming",
        &[
            "chunk_size_ms",
            "connection_timeout_ms",
            "continuous_stream",
            "diag_enable_taps",
            "diag_out_dir",
            "diag_post_secs",
            "diag_pre_secs",
            "empty_backoff_ticks_max",
            "fallback_timeout_ms",
            "greeting_min_start_ms",
            "keepalive_interval_ms",
            "normalizer",
            "sample_rate",
        ],
    ),
    (
        "providers.openai_realtime",
        &[
            "capabilities",
            "continuous_input",
            "egress_pacer_enabled",
            "egress_pacer_warmup_ms",
            "input_encoding",
            "input_gain_max_db",
            "input_gain_target_rms",
            "input_sample_rate_hz",
            "max_response_output_tokens",
            "organization",
            "output_encoding",
            "output_sample_rate_hz",
            "provider_input_encoding",
            "provider_input_sample_rate_hz",
            "response_modalities",
            "target_encoding",
            "target_sample_rate_hz",
            "temperature",
            "type",
        ],
    ),
    (
        "providers.deepgram",
        &[
            "capabilities",
            "continuous_input",
            "input_encoding",
            "input_gain_max_db",
            "input_gain_target_rms",
            "input_sample_rate_hz",
            "output_encoding",
            "output_sample_rate_hz",
            "type",
        ],
    ),
    (
        "providers.local",
        &[
            "capabilities",
            "connect_timeout_sec",
            "continuous_input",
            "farewell_timeout_sec",
            "greeting",
            "instructions",
            "llm_model",
            "max_tokens",
            "response_timeout_sec",
            "stt_model",
            "temperature",
            "tts_voice",
            "type",
            "ws_url",
        ],
    ),
];

/// Secret keys that may appear in a YAML file (the reference engine's file has
/// `asterisk.username`/`password`): `(block path, key, environment variable)`.
/// Their values are dropped unread, with a warning naming the variable to use.
pub const SECRET_KEYS: &[(&str, &str, &str)] = &[
    ("asterisk", "username", "ASTERISK_ARI_USERNAME"),
    ("asterisk", "password", "ASTERISK_ARI_PASSWORD"),
    ("providers.openai_realtime", "api_key", "OPENAI_API_KEY"),
    ("providers.deepgram", "api_key", "DEEPGRAM_API_KEY"),
    ("providers.local", "auth_token", "LOCAL_AI_AUTH_TOKEN"),
    ("health", "api_token", "HEALTH_API_TOKEN"),
];

/// Reference-engine key names voxd reads under its own name:
/// `(block path, reference key, voxd key)`. The voxd name wins when both are given.
pub const RENAMED_KEYS: &[(&str, &str, &str)] = &[
    ("providers.deepgram", "model", "listen_model"),
    ("providers.deepgram", "tts_model", "speak_model"),
];

/// Whether `key` under `block` is a reference-engine key voxd ignores.
pub fn is_reference_only(block: &str, key: &str) -> bool {
    REFERENCE_ONLY_KEYS
        .iter()
        .any(|(b, keys)| *b == block && keys.contains(&key))
}

/// The mapping at dotted `path` under `root`, if it exists and is a mapping.
fn block_mut<'a>(
    root: &'a mut Map<String, Value>,
    path: &str,
) -> Option<&'a mut Map<String, Value>> {
    let mut cur = root;
    for part in path.split('.') {
        cur = cur.get_mut(part)?.as_object_mut()?;
    }
    Some(cur)
}

/// Removes secret keys from the tree, warning once for each (never with its value).
pub(crate) fn strip_secrets(root: &mut Map<String, Value>, warnings: &mut Vec<String>) {
    for (block, key, env) in SECRET_KEYS {
        if let Some(map) = block_mut(root, block) {
            if map.remove(*key).is_some() {
                warnings.push(format!(
                    "{block}.{key}: ignored; secrets are never read from the configuration \
                     file, set the environment variable {env} instead"
                ));
            }
        }
    }
}

/// Moves reference-engine key names to voxd's names, warning for each.
pub(crate) fn apply_renames(root: &mut Map<String, Value>, warnings: &mut Vec<String>) {
    for (block, old, new) in RENAMED_KEYS {
        let Some(map) = block_mut(root, block) else {
            continue;
        };
        let Some(value) = map.remove(*old) else {
            continue;
        };
        if map.contains_key(*new) {
            warnings.push(format!(
                "{block}.{old}: ignored; {block}.{new} is also set and wins"
            ));
        } else {
            map.insert((*new).to_string(), value);
            warnings.push(format!(
                "{block}.{old}: read as {block}.{new} (reference-engine name); \
                 rename it to silence this warning"
            ));
        }
    }
}

/// The key tree of the schema: the defaults serialized to JSON (every field,
/// including `None` options, appears as a key).
pub(crate) fn schema_tree() -> Map<String, Value> {
    match serde_json::to_value(Config::default()) {
        Ok(Value::Object(map)) => map,
        // Config always serializes to a map; an empty tree would only make every
        // key unknown, never panic.
        _ => Map::new(),
    }
}

/// Walks `input` against `schema`, removing every key voxd does not read.
///
/// * unknown top-level keys: one warning each;
/// * unknown providers under `providers`: one warning each;
/// * reference-only keys (see [`REFERENCE_ONLY_KEYS`]): one warning per block;
/// * any other unknown key: an issue `path.key: unknown key; known keys: ...`.
pub(crate) fn strip_unknown_keys(
    input: &mut Map<String, Value>,
    schema: &Map<String, Value>,
    path: &str,
    warnings: &mut Vec<String>,
    issues: &mut Vec<ConfigIssue>,
) {
    let keys: Vec<String> = input.keys().cloned().collect();
    let mut reference_only = Vec::new();
    for key in keys {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match schema.get(&key) {
            // `agents` is keyed by the operator's agent names; serde checks each
            // agent's keys (deny_unknown_fields).
            Some(Value::Object(_)) if full == "agents" => {}
            Some(Value::Object(sub_schema)) => match input.get_mut(&key) {
                Some(Value::Object(sub_input)) => {
                    strip_unknown_keys(sub_input, sub_schema, &full, warnings, issues);
                }
                Some(Value::Null) | None => {}
                Some(other) => {
                    // serde would read a sequence into a struct by position; refuse.
                    let found = match other {
                        Value::Array(_) => "a sequence",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        _ => "a boolean",
                    };
                    issues.push(ConfigIssue::new(
                        full,
                        format!("expected a mapping of keys, found {found}"),
                    ));
                    input.remove(&key);
                }
            },
            Some(_) => {}
            None => {
                input.remove(&key);
                if path.is_empty() {
                    warnings.push(format!("{full}: top-level key not used by voxd; ignored"));
                } else if path == "providers" {
                    warnings.push(format!(
                        "{full}: provider not supported by voxd; ignored (supported: sim, \
                         openai_realtime, deepgram, local)"
                    ));
                } else if is_reference_only(path, &key) {
                    reference_only.push(key);
                } else {
                    let known: Vec<&str> = schema.keys().map(String::as_str).collect();
                    issues.push(ConfigIssue::new(
                        full,
                        format!("unknown key; known keys: {}", known.join(", ")),
                    ));
                }
            }
        }
    }
    if !reference_only.is_empty() {
        reference_only.sort();
        warnings.push(format!(
            "{path}: ignoring reference-engine keys voxd does not use: {}",
            reference_only.join(", ")
        ));
    }
}

/// Warnings about values that load but are probably not what the operator wants.
pub(crate) fn value_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let model = &cfg.providers.openai_realtime.model;
    if model.contains("preview") {
        out.push(format!(
            "providers.openai_realtime.model: `{model}` is a retired beta (preview) model; \
             voxd speaks the GA Realtime API, use e.g. gpt-realtime"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_only_blocks_of_the_schema() {
        let schema = schema_tree();
        for (block, keys) in REFERENCE_ONLY_KEYS {
            let mut cur = &schema;
            for part in block.split('.') {
                cur = cur[part].as_object().expect("block exists in schema");
            }
            for key in *keys {
                assert!(
                    !cur.contains_key(*key),
                    "{block}.{key} is listed as reference-only but voxd reads it"
                );
            }
        }
        for (block, key, _) in SECRET_KEYS {
            let mut cur = &schema;
            for part in block.split('.') {
                cur = cur[part].as_object().expect("block exists in schema");
            }
            assert!(cur.contains_key(*key), "{block}.{key} missing from schema");
        }
    }
}
