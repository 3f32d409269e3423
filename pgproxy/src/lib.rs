//! tandem's PostgreSQL wire-protocol proxy: clients connect to tandem as to PostgreSQL, and
//! each session is served by the side that is authoritative in the current stage.
//!
//! This first part relays whole sessions to the authoritative side (so `old-only` and
//! `new-only` work for any client and protocol feature); mirroring writes to the other side
//! transaction by transaction builds on the message framing here.

mod backend;
mod classify;
mod error;
mod mirror;
mod protocol;
mod replay;
mod scram;
mod server;
mod session;

pub use error::PgProxyError;
pub use replay::{replay_transactions, PgReplayReport};
pub use server::{run, PgBoundAddrs, PgProxySettings};
