//! Test support shared by tandem's integration tests: uniquely named databases on the
//! machine's PostgreSQL and MariaDB servers (dropped afterwards), and child processes that
//! announce their listening address on stdout; loopback ports reserved for one test; JetStream streams of their own; reading
//! `tandem compare` reports; and `tandem backfill`'s command line.

mod apart;
mod backfill;
mod databases;
mod forwarder;
mod nats;
mod process;
mod report;
mod reserved_port;

pub use apart::run_apart;
pub use backfill::Backfill;
pub use databases::{unique_name, MariaDb, PostgresDb, PostgresRole};
pub use forwarder::Forwarder;
pub use nats::{nats_server, NatsCluster, OwnNats, ScratchStream, NATS};
pub use process::{workspace_binary, ChildProcess};
pub use report::{divergences, table};
pub use reserved_port::ReservedPort;
