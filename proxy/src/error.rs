//! Errors of the proxy, each saying which side (or the configuration) it came from.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use tandem_control::{ControlError, Side};

/// A configuration that cannot be used; names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read, or holds a key or value of the wrong kind.
    #[error(transparent)]
    Settings(#[from] tandem_control::settings::SettingsError),
    /// A key holds a value tandem refuses.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// The key, as written in the file.
        key: Cow<'static, str>,
        /// Why.
        reason: String,
    },
    /// A required key is set nowhere.
    #[error("missing `{key}`: set it in the config file, with --{flag} or with TANDEM_{env}")]
    Missing {
        /// The key.
        key: &'static str,
        /// The flag that sets it.
        flag: String,
        /// The environment variable suffix that sets it.
        env: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: Cow::Borrowed(key),
            reason,
        }
    }

    pub(crate) fn invalid_owned(key: String, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: Cow::Owned(key),
            reason,
        }
    }

    pub(crate) fn missing(key: &'static str) -> ConfigError {
        ConfigError::Missing {
            key,
            flag: key.replace('_', "-"),
            env: key.to_ascii_uppercase(),
        }
    }

    /// The key the error is about, when it is about one key.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Settings(err) => err.key(),
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Missing { key, .. } => Some(key),
        }
    }
}

/// A request to one side that did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or the connection broke before a response arrived.
    #[error("{side} side unreachable: {reason}")]
    Unreachable {
        /// Which side.
        side: Side,
        /// The transport error, without credentials.
        reason: String,
    },
    /// The side's TLS certificate (or handshake) was refused.
    #[error(
        "{side} side refused over TLS: {reason} (its certificate must be signed by a root of \
         upstream_ca_file or the system's store, for the host in its URL)"
    )]
    Untrusted {
        /// Which side.
        side: Side,
        /// rustls' reason.
        reason: String,
    },
    /// No response within the side's timeout.
    #[error("{side} side did not answer within {timeout:?}")]
    Timeout {
        /// Which side.
        side: Side,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The response body broke off.
    #[error("{side} side response body failed: {reason}")]
    Body {
        /// Which side.
        side: Side,
        /// The error.
        reason: String,
    },
}

impl UpstreamError {
    /// Which side failed.
    #[must_use]
    pub fn side(&self) -> Side {
        match self {
            UpstreamError::Unreachable { side, .. }
            | UpstreamError::Untrusted { side, .. }
            | UpstreamError::Timeout { side, .. }
            | UpstreamError::Body { side, .. } => *side,
        }
    }

    /// A low-cardinality label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Untrusted { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Body { .. } => "body",
        }
    }
}

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The control store failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    /// The mirror journal could not be opened (or is damaged). Its text is in this one's,
    /// not a source of it: a chain of sources printed after would say it twice.
    #[error("mirror journal: {0}")]
    Journal(tandem_journal::JournalError),
}

impl From<tandem_journal::JournalError> for ProxyError {
    fn from(err: tandem_journal::JournalError) -> Self {
        ProxyError::Journal(err)
    }
}
