//! Error and issue types of the configuration loader.
//!
//! This module owns [`ConfigIssue`] (one problem, with the key path it concerns) and
//! [`ConfigError`] (what `load`/`parse_str` return). It must not build messages that
//! contain secret values: callers pass only key names, ranges and non-secret values.

use std::path::PathBuf;

/// One configuration problem, tied to the key it concerns.
///
/// `path` is a dotted key path (`streaming.min_start_ms`,
/// `audiosocket.allowed_remote_hosts[1]`), `env NAME` for an environment override,
/// or `yaml` for a document that could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where the problem is.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigIssue {
    /// Builds an issue.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded. Always the operator's fault (config).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file that was tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration was read but has problems; every one is listed.
    #[error("{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The issues, when the error is [`ConfigError::Invalid`]; empty otherwise.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn format_issues(issues: &[ConfigIssue]) -> String {
    let lines: Vec<String> = issues.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
