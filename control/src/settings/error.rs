//! A configuration refused: always one line naming the key and where its value came from.

use std::path::PathBuf;

use super::origin::Origin;

/// Why a command's settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read, or is not TOML.
    #[error("config file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why, on one line (never the file's text, which may hold a secret).
        reason: String,
    },
    /// The file holds a key the command does not know.
    #[error("unknown key `{key}` in {} (line {line})", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key, as a path from the top of the file.
        key: String,
        /// Its line.
        line: usize,
    },
    /// A value the command refuses.
    #[error("{key}{} (from {origin}) {reason}", value.as_ref().map(|value| format!(" = {value}")).unwrap_or_default())]
    Invalid {
        /// The key, as written in the file (`routes[0].path`).
        key: String,
        /// The value as it may be shown (secrets redacted), when there is one.
        value: Option<String>,
        /// Where the value came from.
        origin: Origin,
        /// Why it is refused.
        reason: String,
    },
    /// A required key that nothing set.
    #[error("{key} is not set: set `{key}` in the config file{}", if ways.is_empty() { String::new() } else { format!(", {}", ways.join(" or ")) })]
    Missing {
        /// The key.
        key: String,
        /// The flag and variable that would set it.
        ways: Vec<String>,
    },
}

impl SettingsError {
    /// The key the error is about, when it is about one key.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            SettingsError::Unreadable { .. } => None,
            SettingsError::UnknownKey { key, .. }
            | SettingsError::Invalid { key, .. }
            | SettingsError::Missing { key, .. } => Some(key),
        }
    }
}
