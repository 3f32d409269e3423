//! The `tandem pg-proxy --config` file: a strict TOML file with the proxy's settings (flags and
//! `TANDEM_PG_*` variables override them) and the `[classify]` overrides of read/write rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_control::settings::SettingsFile;

use crate::classify::{Classifier, ClassifyConfig};
use crate::error::ConfigError;
use crate::wal_mirror::CaptureMode;

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    old: Option<String>,
    new: Option<String>,
    control_db: Option<String>,
    admin_listen: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    pool_max_idle: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pool_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stats_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stage_grace: Option<Duration>,
    users_file: Option<PathBuf>,
    #[serde(default)]
    databases: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    login_timeout: Option<Duration>,
    max_client_connections: Option<usize>,
    session_threads: Option<usize>,
    max_server_connections: Option<usize>,
    max_mirror_backlog: Option<u64>,
    compare_reads: Option<f64>,
    capture: Option<CaptureMode>,
    capture_slot: Option<String>,
    capture_publication: Option<String>,
    #[serde(default)]
    capture_tables: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    switch_timeout: Option<Duration>,
    max_retained_wal: Option<u64>,
    apply_sessions: Option<usize>,
    #[serde(default)]
    classify: ClassifyConfig,
}

/// A validated config file: the settings it gives (each one unset when the file leaves it
/// out) and the classifier its `[classify]` section makes.
#[derive(Debug, Clone, Default)]
pub struct PgProxyConfig {
    /// Where clients connect.
    pub listen: Option<SocketAddr>,
    /// The old side's `postgres://` URL.
    pub old: Option<String>,
    /// The new side's `postgres://` URL.
    pub new: Option<String>,
    /// The control store.
    pub control_db: Option<String>,
    /// Where `/healthz` and `/metrics` are served.
    pub admin_listen: Option<SocketAddr>,
    /// How long open sessions may go on after SIGTERM.
    pub shutdown_timeout: Option<Duration>,
    /// The most idle server connections kept per side and set of startup parameters.
    pub pool_max_idle: Option<usize>,
    /// How long an idle server connection is kept.
    pub pool_idle_timeout: Option<Duration>,
    /// How often the counts are flushed to the control store.
    pub stats_interval: Option<Duration>,
    /// How long an open transaction may go on once the other side became authoritative.
    pub stage_grace: Option<Duration>,
    /// A file of `NAME:PASSWORD` lines: the users clients log in as.
    pub users_file: Option<PathBuf>,
    /// Databases served besides the URLs' own.
    pub databases: Vec<String>,
    /// How long a client may take to log in.
    pub login_timeout: Option<Duration>,
    /// The most client connections at once.
    pub max_client_connections: Option<usize>,
    /// How many threads serve sessions.
    pub session_threads: Option<usize>,
    /// The most transactions owed to the other side before transaction ends wait.
    pub max_mirror_backlog: Option<u64>,
    /// The most server connections per side and database.
    pub max_server_connections: Option<usize>,
    /// The fraction of read-only transactions compared on the other side.
    pub compare_reads: Option<f64>,
    /// How writes reach the other side.
    pub capture: Option<CaptureMode>,
    /// The stem of the capture's slot names.
    pub capture_slot: Option<String>,
    /// The capture's publication.
    pub capture_publication: Option<String>,
    /// The tables a publication tandem creates holds (empty: all tables).
    pub capture_tables: Vec<String>,
    /// How long logins wait for a switch of authoritative side.
    pub switch_timeout: Option<Duration>,
    /// Retained write-ahead log (bytes) past which an alert is raised.
    pub max_retained_wal: Option<u64>,
    /// Sessions applying captured transactions at once.
    pub apply_sessions: Option<usize>,
    /// The built-in read/write rules with the file's overrides.
    pub classifier: Classifier,
}

impl PgProxyConfig {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or parsed (an unknown key included), or a value is
    /// refused; the error names the key.
    pub fn load(path: &Path) -> Result<PgProxyConfig, ConfigError> {
        PgProxyConfig::from_file(&SettingsFile::read(path)?)
    }

    /// Validates a file already read.
    ///
    /// # Errors
    /// As [`PgProxyConfig::load`].
    pub fn from_file(file: &SettingsFile) -> Result<PgProxyConfig, ConfigError> {
        let file: FileConfig = file.deserialize()?;
        Ok(PgProxyConfig {
            classifier: file.classify.classifier()?,
            listen: file.listen,
            old: file.old,
            new: file.new,
            control_db: file.control_db,
            admin_listen: file.admin_listen,
            shutdown_timeout: file.shutdown_timeout,
            pool_max_idle: file.pool_max_idle,
            pool_idle_timeout: file.pool_idle_timeout,
            stats_interval: file.stats_interval,
            stage_grace: file.stage_grace,
            users_file: file.users_file,
            databases: file.databases,
            login_timeout: file.login_timeout,
            max_client_connections: file.max_client_connections,
            session_threads: file.session_threads,
            max_mirror_backlog: file.max_mirror_backlog,
            max_server_connections: file.max_server_connections,
            compare_reads: file.compare_reads,
            capture: file.capture,
            capture_slot: file.capture_slot,
            capture_publication: file.capture_publication,
            capture_tables: file.capture_tables,
            switch_timeout: file.switch_timeout,
            max_retained_wal: file.max_retained_wal,
            apply_sessions: file.apply_sessions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PgProxyConfig, ConfigError> {
        PgProxyConfig::from_file(&SettingsFile::parse(Path::new("pg.toml"), text.to_owned())?)
    }

    #[test]
    fn settings_and_overrides_are_read() {
        let config = parse(
            "listen = \"127.0.0.1:7432\"\nshutdown_timeout = \"5s\"\ncapture = \"wal\"\n\
             compare_reads = 0.25\n\
             [[classify.statements]]\npattern = '^INSERT INTO audit_log'\nclass = \"read\"\n\
             [classify.functions]\nbump = \"write\"\n",
        )
        .unwrap();
        assert_eq!(
            config.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7432)))
        );
        assert_eq!(config.shutdown_timeout, Some(Duration::from_secs(5)));
        assert_eq!(config.capture, Some(CaptureMode::Wal));
        assert_eq!(config.compare_reads, Some(0.25));
        assert_eq!(config.old, None);
        assert!(config.classifier.is_write("SELECT bump(1)"));
        assert!(!config
            .classifier
            .is_write("insert into audit_log values (1)"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (text, named) in [
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("[classify]\nstatement = []", "statement"),
            (
                "[[classify.statements]]\npattern = 'x'\nclass = 'read'\nwhy = 'y'",
                "why",
            ),
        ] {
            let err = parse(text).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ConfigError::Settings(_)), "{message}");
            assert!(
                message.contains(named) && !message.contains('\n'),
                "{message}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = PgProxyConfig::load(Path::new("/nonexistent/pg.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pg.toml"), "{err}");
    }
}
