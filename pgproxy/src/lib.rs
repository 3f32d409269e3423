//! tandem's PostgreSQL wire-protocol proxy: clients connect to tandem as to PostgreSQL, each
//! session is served by the side that is authoritative in the current stage, and in the
//! mirroring stages every write transaction is applied whole on the other side, in commit
//! order. Server connections are pooled per side (session mode) and may use TLS.

mod answer;
mod backend;
mod baseline;
mod carry;
mod classify;
mod config;
mod error;
mod event_loops;
mod front_door;
mod in_doubt;
mod messages;
mod mirror;
mod moving;
mod pool;
mod protocol;
mod random;
mod relay;
mod replay;
mod reported;
mod sampling;
mod scram;
mod server;
mod session;
mod snapshot;
mod statement;
mod stream;
mod telemetry;
mod text_query;
mod tls;
mod tracker;
pub mod wal;
mod wal_mirror;

pub use classify::Classifier;
pub use config::PgProxyConfig;
pub use error::{ConfigError, PgProxyError};
pub use replay::{replay_transactions, Blocker, PgReplayReport, Skip};
pub use sampling::ReadSample;
pub use server::{run, PgBoundAddrs, PgProxySettings, PoolSettings};
pub use wal_mirror::{CaptureMode, MirrorStatus, WalMirror, WalMirrorSettings};
