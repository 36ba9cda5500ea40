//! Typed, documented configuration: schema, YAML loader, environment overrides and
//! validation with key paths.
//!
//! This module owns turning a YAML file (voxd's own `config/voxd.yaml` or the
//! reference engine's `config/ai-agent.yaml`) plus the environment into a validated
//! [`Config`], and reporting every problem at once as [`ConfigIssue`]s with key paths.
//! The pipeline is: bounded YAML parse into an untyped tree, secret keys dropped
//! (secrets come only from the environment), reference-engine names mapped, unknown
//! keys classified (warning or error, see `compat`), `${VAR}` expanded, each block
//! deserialized on its own (every type error collected), environment overrides
//! applied, rules checked. It must never panic on any input (it is fuzzed), never log
//! or return a secret value, and never touch sockets; only [`load`] reads a file and
//! the process environment.

#![forbid(unsafe_code)]

mod compat;
mod env;
mod errors;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use compat::{REFERENCE_ONLY_KEYS, RENAMED_KEYS, SECRET_KEYS};
pub use env::ENV_OVERRIDES;
pub use errors::{ConfigError, ConfigIssue};
pub use schema::*;
pub use validate::{is_valid_host, is_valid_ip_or_cidr, is_ws_url};

/// Largest configuration text accepted (1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/voxd.yaml";

/// Environment variable naming the configuration file when no path is given.
pub const CONFIG_PATH_ENV: &str = "VOXD_CONFIG";

/// A successfully loaded configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration (defaults, then YAML, then environment).
    pub config: Config,
    /// Non-fatal notes: ignored blocks and keys, ignored secrets, renamed keys,
    /// questionable values. Never contain secret values.
    pub warnings: Vec<String>,
    /// The file read, or `None` for text input or built-in defaults.
    pub source: Option<PathBuf>,
}

/// Parses YAML text (no environment, no file): unknown-block warnings, strict blocks,
/// validation. `${VAR:-default}` references expand to their defaults.
///
/// Never panics; work is bounded (input size, nesting depth, node and alias counts).
pub fn parse_str(yaml: &str) -> Result<Loaded, ConfigError> {
    parse_str_with_env(yaml, &|_| None)
}

/// Like [`parse_str`], but `${VAR}` references and the environment overrides in
/// [`ENV_OVERRIDES`] are resolved with `env` (a lookup, so tests need not touch the
/// process environment), then the result is validated.
pub fn parse_str_with_env(
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let mut issues = Vec::new();

    let mut root = parse_tree(yaml).map_err(|issue| ConfigError::Invalid(vec![issue]))?;

    compat::strip_secrets(&mut root, &mut warnings);
    compat::apply_renames(&mut root, &mut warnings);
    let schema = compat::schema_tree();
    compat::strip_unknown_keys(&mut root, &schema, "", &mut warnings, &mut issues);

    for value in root.values_mut() {
        env::expand_tree(value, env);
    }
    strip_nulls(&mut root);

    let mut config = Config::default();
    let mut type_error_paths = Vec::new();
    {
        let mut de = BlockReader {
            root: &mut root,
            issues: &mut issues,
            type_error_paths: &mut type_error_paths,
        };
        config.asterisk = de.block("asterisk");
        config.audio_transport = de.block("audio_transport");
        config.audiosocket = de.block("audiosocket");
        config.external_media = de.block("external_media");
        config.streaming = de.block("streaming");
        config.barge_in = de.block("barge_in");
        config.health = de.block("health");
        config.default_provider = de.block("default_provider");
        config.providers = de.block("providers");
        config.agents = de.block("agents");
        config.provider_failure = de.block("provider_failure");
        config.engine = de.block("engine");
        config.limits = de.block("limits");
        config.logging = de.block("logging");
        config.shutdown = de.block("shutdown");
    }

    env::apply_overrides(&mut config, env, &mut issues);

    issues.extend(
        config
            .validate()
            .into_iter()
            .filter(|i| !type_error_paths.contains(&i.path)),
    );
    if !issues.is_empty() {
        return Err(ConfigError::Invalid(issues));
    }
    warnings.extend(compat::value_warnings(&config));
    Ok(Loaded {
        config,
        warnings,
        source: None,
    })
}

/// Reads `path` (or, when `None`: `$VOXD_CONFIG` if set, else `./config/voxd.yaml` if
/// it exists, else built-in defaults), applies the process environment, validates.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    let chosen: Option<PathBuf> = match path {
        Some(p) => Some(p.to_path_buf()),
        None => match std::env::var_os(CONFIG_PATH_ENV).filter(|v| !v.is_empty()) {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                default.is_file().then_some(default)
            }
        },
    };
    match chosen {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Io {
                path: p.clone(),
                source,
            })?;
            let mut loaded = parse_str_with_env(&text, &env)?;
            loaded.source = Some(p);
            Ok(loaded)
        }
        None => {
            let mut loaded = parse_str_with_env("", &env)?;
            loaded.warnings.insert(
                0,
                format!(
                    "no configuration file given, ${CONFIG_PATH_ENV} unset and ./{DEFAULT_CONFIG_PATH} \
                     not found; using built-in defaults"
                ),
            );
            Ok(loaded)
        }
    }
}

impl Config {
    /// Whether the ARI call flow runs: `asterisk.enabled`, or when unset, whether
    /// the ARI user name is set (it only comes from `ASTERISK_ARI_USERNAME`).
    pub fn ari_enabled(&self) -> bool {
        self.asterisk
            .enabled
            .unwrap_or_else(|| self.asterisk.username.is_set())
    }

    /// Checks every range, format and cross-key rule; returns all violations with
    /// their key paths (empty when valid). Called by the loader after overrides.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        validate::validate(self)
    }

    /// The effective configuration as YAML with every secret replaced by `***`
    /// (or `(unset)`). Safe to print and to read back (secrets are dropped on read).
    pub fn to_masked_yaml(&self) -> String {
        match serde_saphyr::to_string(self) {
            Ok(text) => text,
            Err(e) => format!("# cannot render configuration: {e}\n"),
        }
    }
}

/// Parse options: bounded work for untrusted input.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::Options {
        budget: Some(serde_saphyr::Budget {
            max_reader_input_bytes: Some(MAX_CONFIG_BYTES),
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 64,
            max_documents: 1,
            max_nodes: 100_000,
            max_total_scalar_bytes: MAX_CONFIG_BYTES,
            max_merge_keys: 1_000,
            ..serde_saphyr::Budget::default()
        }),
        alias_limits: serde_saphyr::options::AliasLimits {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        // Snippets would quote source lines, which may hold secrets.
        with_snippet: false,
        crop_radius: 0,
        ..serde_saphyr::Options::default()
    }
}

/// Parses the text into an untyped tree; an empty document is an empty mapping.
fn parse_tree(yaml: &str) -> Result<Map<String, Value>, ConfigIssue> {
    if yaml.len() > MAX_CONFIG_BYTES {
        return Err(ConfigIssue::new(
            "yaml",
            format!(
                "configuration is {} bytes; allowed at most {MAX_CONFIG_BYTES}",
                yaml.len()
            ),
        ));
    }
    if yaml
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        return Ok(Map::new());
    }
    let value: Value = serde_saphyr::from_str_with_options(yaml, yaml_options())
        .map_err(|e| ConfigIssue::new("yaml", format!("not valid YAML: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigIssue::new(
            "yaml",
            format!(
                "the document must be a mapping of blocks (asterisk:, audiosocket:, ...), found {}",
                kind(&other)
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Removes `key: null` (and `key: ~`, `key:`) entries so they mean "use the default".
fn strip_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
    for v in map.values_mut() {
        if let Value::Object(inner) = v {
            strip_nulls(inner);
        }
    }
}

/// Deserializes top-level blocks one by one, collecting every type error.
struct BlockReader<'a> {
    root: &'a mut Map<String, Value>,
    issues: &'a mut Vec<ConfigIssue>,
    type_error_paths: &'a mut Vec<String>,
}

impl BlockReader<'_> {
    /// Reads block `name`; on a type error, records it, drops the offending value
    /// (so it takes its default) and retries, so every bad key is reported.
    fn block<T: DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let Some(mut value) = self.root.remove(name) else {
            return T::default();
        };
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(v) => return v,
                Err(err) => {
                    let segments: Vec<serde_path_to_error::Segment> =
                        err.path().iter().cloned().collect();
                    let path = format_path(name, &segments);
                    let message = improve_message(&path, &err.inner().to_string());
                    self.issues.push(ConfigIssue::new(path.clone(), message));
                    self.type_error_paths.push(path);
                    if segments.is_empty() || !remove_at(&mut value, &segments) {
                        return T::default();
                    }
                }
            }
        }
        T::default()
    }
}

fn format_path(block: &str, segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = block.to_string();
    for seg in segments {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Removes the value at `segments` inside `value`; false when the path does not
/// resolve (then the caller gives up on the block).
fn remove_at(value: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Segment::Map { key }, Value::Object(m)) => match m.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Map { key }, Value::Object(m)) => m.remove(key).is_some(),
        // Dropping one list element would shift the rest; drop nothing and let the
        // caller fall back to the block default after reporting.
        _ => false,
    }
}

/// Adds the allowed range to serde's integer messages.
fn improve_message(path: &str, message: &str) -> String {
    let is_port = path.ends_with("port");
    if message.contains("expected u16") {
        let range = if is_port { "1..=65535" } else { "0..=65535" };
        format!("{message}; allowed {range}")
    } else if message.contains("expected u32") {
        format!("{message}; allowed 0..={}", u32::MAX)
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests;
