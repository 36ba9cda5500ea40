//! What a configuration reload (SIGHUP, `POST /reload`) may change while calls run,
//! and what needs a restart.
//!
//! Owns: [`diff`], which compares two validated configurations block by block and
//! sorts each change into "applied to new calls" (log level, barge-in, streaming,
//! providers, agents, failure policy, default provider) or "needs a restart"
//! (listeners, ports, shards, I/O backend, ARI connection, health endpoint,
//! limits, log format). Must not: apply anything itself (the caller does, after
//! the new configuration validated and its providers built), or print secrets
//! (blocks are compared in their masked form).

use serde_json::Value;

use crate::config::Config;

/// Top-level keys a reload applies to calls that start afterwards.
pub const LIVE_KEYS: [&str; 6] = [
    "barge_in",
    "streaming",
    "providers",
    "agents",
    "provider_failure",
    "default_provider",
];

/// The outcome of comparing the running configuration with the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys that take effect (for new calls).
    pub applied: Vec<String>,
    /// Changed keys that only a restart applies (reported, not applied).
    pub needs_restart: Vec<String>,
}

impl ReloadPlan {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.needs_restart.is_empty()
    }
}

fn blocks(c: &Config) -> serde_json::Map<String, Value> {
    match serde_json::to_value(c) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// Compare `old` (running) with `new` (the file now).
pub fn diff(old: &Config, new: &Config) -> ReloadPlan {
    let (a, b) = (blocks(old), blocks(new));
    let mut plan = ReloadPlan::default();
    for (key, va) in &a {
        let vb = b.get(key).unwrap_or(&Value::Null);
        if va == vb {
            continue;
        }
        if key == "logging" {
            // The level can change live; format, pii and the audit path cannot.
            let field = |v: &Value, f: &str| v.get(f).cloned().unwrap_or(Value::Null);
            if field(va, "level") != field(vb, "level") {
                plan.applied.push("logging.level".into());
            }
            for f in ["format", "pii", "audit_path"] {
                if field(va, f) != field(vb, f) {
                    plan.needs_restart.push(format!("logging.{f}"));
                }
            }
        } else if LIVE_KEYS.contains(&key.as_str()) {
            plan.applied.push(key.clone());
        } else {
            plan.needs_restart.push(key.clone());
        }
    }
    plan.applied.sort();
    plan.needs_restart.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        crate::config::parse_str(yaml).unwrap().config
    }

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = cfg("logging: {level: info}\n");
        assert!(diff(&old, &old).is_empty());
        let new = cfg("logging: {level: debug, format: json}\n\
             barge_in: {min_ms: 200}\n\
             providers: {sim: {think_ms: 50}}\n\
             audiosocket: {port: 9000}\n\
             engine: {shards: 3}\n");
        let p = diff(&old, &new);
        assert_eq!(p.applied, ["barge_in", "logging.level", "providers"]);
        assert_eq!(p.needs_restart, ["audiosocket", "engine", "logging.format"]);
    }
}
