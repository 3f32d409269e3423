//! Capture from the write-ahead log (issue 14): PostgreSQL's logical decoding through a
//! replication slot and the `pgoutput` plugin, the protocol PostgreSQL's own logical
//! replication uses. The slot records, in commit order, exactly which rows every committed
//! transaction changed, and keeps that record until its reader confirms it: the slot is the
//! journal.
//!
//! - [`PgOutput`] (`pgoutput.rs`): the typed messages of protocol version 1, decoded purely.
//! - [`Captured`], [`Transaction`] (`transaction.rs`): messages grouped as whole transactions
//!   with the shape of every table they change.
//! - [`ReplicationStream`] (`stream.rs`): the connection (`connection.rs`, tandem's own login
//!   and framing with `replication=database`), the set-up it checks and creates
//!   (`setup.rs`), the CopyBoth framing (`replication.rs`), and confirmation.
//! - [`render`] (`render.rs`): a transaction's changes as SQL for the other side, purely.
//! - [`Target`] (`target.rs`): the side changes are applied to, exactly once across crashes
//!   (the source position commits with the rows, in a replication origin), each batch's
//!   statements without the updates a later one of the same row covers (`coalesce.rs`), or,
//!   table by table where nothing can see the order of its rows, each row's net effect
//!   (`net.rs`) bound as arrays in a few statements (`set.rs`).
//! - [`run_capture`] (`capture.rs`): the loop reading one side and applying to the other,
//!   starting over from the recorded progress after any failure; the stream read ahead of
//!   the apply within a bounded budget, confirmed only up to what was applied
//!   (`read_ahead.rs`).
//! - [`SlotWaiters`] (`start.rs`): at the start of a capture, the transactions that committed
//!   while its slot was being made (history the slot does not carry), named.

mod capture;
mod coalesce;
mod connection;
mod error;
mod fence;
mod linger;
mod lsn;
mod net;
mod parallel;
mod pgoutput;
mod positions;
mod read_ahead;
mod render;
mod replication;
mod route;
mod set;
mod setup;
mod start;
mod stream;
mod target;
mod transaction;

pub use capture::{
    run as run_capture, CaptureConfig, CaptureState, CaptureStatus, Failures, ORIGIN_PREFIX,
};
pub use error::{DecodeError, WalError};
pub use fence::{Hold, SideLock};
pub use linger::Hurry;
pub use lsn::{Lsn, LsnParseError};
pub use pgoutput::{
    Begin, Column, Commit, Delete, Insert, Message, OldRow, Origin, PgOutput, Relation,
    RelationColumn, ReplicaIdentity, Truncate, Tuple, Type, Update,
};
pub use positions::{
    carry_sequences, check_capture, origin_exists, origin_progress, prepare_slot, slot_exists,
    slot_lag, slot_status, write_marker, SlotLag, SlotStatus, MARKER_PREFIX,
};
pub use render::{display_name, render, Expect, RenderError, Statement, TargetTable};
pub use set::{Fallback, SetShape};
pub use setup::{drop_publication, drop_slot, PublicationDropped, PublishedTables};
pub use start::{OpenTransaction, SlotWaiters};
pub use stream::{CaptureSettings, ReplicationStream};
pub use target::{Applied, Target};
pub use transaction::{Captured, Change, Transaction};
