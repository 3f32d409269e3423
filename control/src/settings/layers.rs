//! The layers of one command's settings: which value each key holds and where it came from
//! (defaults < file < `TANDEM_*` variables < flags), and how each key can be set.

use std::collections::BTreeMap;

use super::error::SettingsError;
use super::file::SettingsFile;
use super::origin::Origin;
use super::shown::shown_value;

/// A key's value (as it may be shown) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The value, secrets redacted.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// Where every set key's value came from, and the flag and variable of every key.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    settings: BTreeMap<String, Setting>,
    ways: BTreeMap<String, Vec<String>>,
}

impl Layers {
    /// The layers of a command that read `file` (if any), before its variables and flags.
    #[must_use]
    pub fn new(file: Option<&SettingsFile>) -> Layers {
        let mut layers = Layers::default();
        for (key, value) in file.map(SettingsFile::values).unwrap_or_default() {
            let origin = Origin::File {
                path: file.map(|file| file.path().to_owned()).unwrap_or_default(),
                key: key.clone(),
            };
            layers.settings.insert(key, Setting { value, origin });
        }
        layers
    }

    /// Records that `key` can be set by `flag` and by the variable `env`.
    pub fn know(&mut self, key: &str, flag: Option<String>, env: Option<String>) {
        let ways = flag
            .map(|flag| format!("with {flag}"))
            .into_iter()
            .chain(env.map(|env| format!("with {env}")))
            .collect();
        self.ways.insert(key.to_owned(), ways);
    }

    /// `key` was given `raw` by a variable or a flag: it wins over the file.
    pub fn give(&mut self, key: &str, origin: Origin, raw: &str) {
        let value = shown_value(key, raw);
        self.settings
            .insert(key.to_owned(), Setting { value, origin });
    }

    /// The value and origin of `key`, when anything set it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.get(key)
    }

    /// Where `key`'s value came from.
    #[must_use]
    pub fn origin(&self, key: &str) -> Origin {
        self.get(key)
            .map_or(Origin::Default, |setting| setting.origin.clone())
    }

    /// Every set key, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.settings
            .iter()
            .map(|(key, setting)| (key.as_str(), setting))
    }

    /// `key`'s value refused for `reason`, with the value and where it came from; a key set by
    /// a file section (`routes[0]`) takes the origin of the section's keys.
    #[must_use]
    pub fn refuse(&self, key: &str, reason: impl Into<String>) -> SettingsError {
        let (value, origin) = match self.get(key) {
            Some(setting) => (Some(setting.value.clone()), setting.origin.clone()),
            None => {
                let within = self.settings.iter().find(|(name, _)| {
                    name.strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
                });
                (
                    None,
                    within.map_or(Origin::Default, |(_, s)| s.origin.clone()),
                )
            }
        };
        SettingsError::Invalid {
            key: key.to_owned(),
            value,
            origin,
            reason: reason.into(),
        }
    }

    /// `key` is required and nothing set it; the error says how it can be.
    #[must_use]
    pub fn missing(&self, key: &str) -> SettingsError {
        SettingsError::Missing {
            key: key.to_owned(),
            ways: self.ways.get(key).cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_later_layer_wins_and_errors_name_its_origin() {
        let file = SettingsFile::parse(
            Path::new("pgproxy.toml"),
            "max_client_connections = 0\nthreads = 4\n".to_owned(),
        )
        .unwrap();
        let mut layers = Layers::new(Some(&file));
        assert_eq!(
            layers
                .refuse("max_client_connections", "must be at least 1")
                .to_string(),
            "max_client_connections = 0 (from pgproxy.toml) must be at least 1"
        );
        layers.give(
            "threads",
            Origin::Env("TANDEM_COMPARE_THREADS".to_owned()),
            "0",
        );
        assert_eq!(
            layers.refuse("threads", "must be at least 1").to_string(),
            "threads = 0 (from TANDEM_COMPARE_THREADS) must be at least 1"
        );
        layers.give("threads", Origin::Flag("--threads".to_owned()), "2");
        assert_eq!(
            layers.origin("threads"),
            Origin::Flag("--threads".to_owned())
        );
        assert_eq!(layers.origin("listen"), Origin::Default);
    }

    #[test]
    fn a_missing_key_says_how_to_set_it() {
        let mut layers = Layers::new(None);
        layers.know(
            "old",
            Some("--old".to_owned()),
            Some("TANDEM_PG_OLD".to_owned()),
        );
        assert_eq!(
            layers.missing("old").to_string(),
            "old is not set: set `old` in the config file, with --old or with TANDEM_PG_OLD"
        );
    }

    #[test]
    fn a_section_error_takes_the_origin_of_its_keys() {
        let file =
            SettingsFile::parse(Path::new("p.toml"), "[[routes]]\npath = \"x\"\n".to_owned())
                .unwrap();
        let err = Layers::new(Some(&file)).refuse("routes[0]", "bad");
        assert_eq!(err.to_string(), "routes[0] (from p.toml) bad");
    }
}
