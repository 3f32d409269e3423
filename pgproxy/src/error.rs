//! Errors of the PostgreSQL proxy.

use tandem_control::{ControlError, Side};

/// What can stop the PostgreSQL proxy or one of its sessions.
#[derive(Debug, thiserror::Error)]
pub enum PgProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server URL is unusable (the URL shown has no password).
    #[error("invalid {side} URL {url}: {reason}")]
    InvalidUrl {
        /// Which side.
        side: Side,
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The control store failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A transaction was about to start before the capture of the stage in force had begun
    /// (the client is told 57P03: nothing it sent was forwarded).
    #[error("{0}")]
    CaptureNotBegun(String),
    /// A client or server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A server refused the session or could not be reached.
    #[error("{side} server: {reason}")]
    Server {
        /// Which side.
        side: Side,
        /// Why.
        reason: String,
    },
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The write-ahead-log capture cannot run (its set-up, with the fix).
    #[error(
        "{0} (a server without logical decoding can be mirrored with --capture statements, \
         which re-runs each session's statements on the other side, with the limits the \
         README lists)"
    )]
    Wal(Box<crate::wal::WalError>),
    /// A server has as many connections from tandem for a database as it may have.
    #[error("too many connections to the {side} side's database {database:?} (tandem's max_server_connections is {limit})")]
    TooManyConnections {
        /// Which side.
        side: Side,
        /// The database.
        database: String,
        /// The limit.
        limit: usize,
    },
    /// `tandem pg-replay --skip` named no kept PostgreSQL transaction awaiting replay.
    #[error("no kept PostgreSQL transaction #{0} awaits replay (see tandem mirror failures)")]
    NothingToSkip(i64),
}

/// Why a `tandem pg-proxy --config` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed (an unknown key included).
    #[error(transparent)]
    Settings(#[from] tandem_control::settings::SettingsError),
    /// A key holds a value tandem refuses.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// The key, as a path from the top of the file (`classify.statements[0].pattern`).
        key: String,
        /// Why, on one line.
        reason: String,
    },
}
