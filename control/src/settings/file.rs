//! A TOML configuration file read once: its typed form (strict: an unknown key is refused by
//! name and line) and every key it sets, for the origins of the layers.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::SettingsError;
use super::origin::Origin;
use super::shown::shown_value;

/// A configuration file's text and keys.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    path: PathBuf,
    text: String,
    table: toml::Table,
}

impl SettingsFile {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// When it cannot be read or is not TOML (the line is named, the text never shown).
    pub fn read(path: &Path) -> Result<SettingsFile, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|err| SettingsError::Unreadable {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        SettingsFile::parse(path, text)
    }

    /// Parses `text`, read from `path`.
    ///
    /// # Errors
    /// As [`SettingsFile::read`].
    pub fn parse(path: &Path, text: String) -> Result<SettingsFile, SettingsError> {
        match text.parse::<toml::Table>() {
            Ok(table) => Ok(SettingsFile {
                path: path.to_owned(),
                text,
                table,
            }),
            Err(err) => Err(SettingsError::Unreadable {
                path: path.to_owned(),
                reason: format!(
                    "{} (line {})",
                    one_line(err.message()),
                    line_number(&text, err.span())
                ),
            }),
        }
    }

    /// The file as the command's typed form; its keys are checked by that type
    /// (`deny_unknown_fields`).
    ///
    /// # Errors
    /// An unknown key, or a value of the wrong type, named with its key and line.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        toml::from_str(&self.text).map_err(|err| {
            let line = line_number(&self.text, err.span());
            let message = one_line(err.message());
            if let Some(unknown) = unknown_field(&message) {
                let key = match section_at(&self.text, line) {
                    Some(section) => format!("{section}.{unknown}"),
                    None => unknown.to_owned(),
                };
                return SettingsError::UnknownKey {
                    path: self.path.clone(),
                    key,
                    line,
                };
            }
            match key_at(&self.text, line) {
                Some(key) => {
                    let entry = self.entries().into_iter().find(|entry| entry.0 == key);
                    // The parser may quote the value (`invalid type: string "…"`): shown as
                    // the value is, so a secret never reaches the message.
                    let reason = match &entry {
                        Some((_, raw, shown)) if !raw.is_empty() => message.replace(raw, shown),
                        _ => message,
                    };
                    SettingsError::Invalid {
                        value: entry.map(|(_, _, shown)| shown),
                        origin: Origin::File {
                            path: self.path.clone(),
                            key: key.clone(),
                        },
                        key,
                        reason,
                    }
                }
                None => SettingsError::Unreadable {
                    path: self.path.clone(),
                    reason: format!("{message} (line {line})"),
                },
            }
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key the file sets, as a path from its top (`alerts.mismatch_rate`,
    /// `routes[0].path`), with its value as it may be shown.
    #[must_use]
    pub fn values(&self) -> Vec<(String, String)> {
        self.entries()
            .into_iter()
            .map(|(key, _, shown)| (key, shown))
            .collect()
    }

    /// Every key with its value as written and as it may be shown.
    fn entries(&self) -> Vec<(String, String, String)> {
        let mut entries = Vec::new();
        flatten("", &self.table, &mut entries);
        entries
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String, String)>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for (index, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        flatten(&format!("{key}[{index}]"), inner, out);
                    }
                }
            }
            other => {
                let raw = plain(other);
                let shown = shown_value(&key, &raw);
                out.push((key, raw, shown));
            }
        }
    }
}

/// A value as a person writes it on a command line: strings without quotes, lists
/// comma-separated.
fn plain(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn line_number(text: &str, span: Option<Range<usize>>) -> usize {
    span.map_or(1, |span| {
        text[..span.start.min(text.len())].matches('\n').count() + 1
    })
}

/// The name in serde's "unknown field `NAME`, expected …".
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
}

/// The section (`alerts`, `routes[1]`) the 1-based `line` is in, if any.
fn section_at(text: &str, line: usize) -> Option<String> {
    let mut section = None;
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for header in text.lines().take(line).map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split_once("]]")) {
            let name = name.0.trim().to_owned();
            let index = match arrays.iter_mut().find(|(seen, _)| *seen == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    arrays.push((name.clone(), 1));
                    0
                }
            };
            section = Some(format!("{name}[{index}]"));
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split_once(']')) {
            section = Some(name.0.trim().to_owned());
        }
    }
    section
}

/// The key written on the 1-based `line` (`key = …`), under its section.
fn key_at(text: &str, line: usize) -> Option<String> {
    let written = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = written.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    Some(match section_at(text, line) {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        size: Option<u32>,
        #[serde(default)]
        #[allow(dead_code)]
        rules: Vec<BTreeMap<String, String>>,
        #[serde(default)]
        #[allow(dead_code)]
        alerts: Option<Alerts>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Alerts {
        #[allow(dead_code)]
        rate: Option<f64>,
    }

    fn file(text: &str) -> SettingsFile {
        SettingsFile::parse(Path::new("x.toml"), text.to_owned()).unwrap()
    }

    #[test]
    fn an_unknown_key_is_named_with_its_section_and_line() {
        let err = file("size = 1\n[alerts]\nrate = 0.1\nrat = 2\n")
            .deserialize::<Sample>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown key `alerts.rat` in x.toml (line 4)"
        );
        let err = file("sise = 1\n").deserialize::<Sample>().unwrap_err();
        assert_eq!(err.to_string(), "unknown key `sise` in x.toml (line 1)");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_file() {
        let err = file("size = \"big\"\n")
            .deserialize::<Sample>()
            .unwrap_err();
        assert_eq!(err.key(), Some("size"));
        let line = err.to_string();
        assert!(line.starts_with("size = big (from x.toml) "), "{line}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Limits {
        #[allow(dead_code)]
        max_in_flight: Option<u32>,
    }

    #[test]
    fn a_secret_in_a_value_of_the_wrong_type_is_not_shown() {
        let err = file("max_in_flight = \"postgres://app:hunter2@db/x\"\n")
            .deserialize::<Limits>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(err.key(), Some("max_in_flight"));
    }

    #[test]
    fn values_are_flattened_and_secrets_hidden() {
        let values = file(
            "token = \"t\"\nurl = \"postgres://a:pw@h/d\"\n[[rules]]\nx = \"1\"\n[[rules]]\nx = \"2\"\n",
        )
        .values();
        assert!(values.contains(&("token".to_owned(), "<redacted>".to_owned())));
        assert!(values.contains(&("url".to_owned(), "postgres://a:***@h/d".to_owned())));
        assert!(values.contains(&("rules[1].x".to_owned(), "2".to_owned())));
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused_without_its_text() {
        let err = SettingsFile::parse(
            Path::new("x.toml"),
            "old = \"postgres://a:pw@h\nx".to_owned(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}
