//! What can go wrong while reading the write-ahead log: a pgoutput message that does not
//! decode ([`DecodeError`]) and everything else the capture can meet ([`WalError`]), each
//! missing piece of the server's set-up with the one line that fixes it.

use tandem_control::Side;

use super::lsn::Lsn;
use crate::error::PgProxyError;

/// Why a pgoutput message (logical replication protocol version 1) does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is empty: it has no type byte.
    #[error("an empty pgoutput message")]
    Empty,
    /// The type byte is none of version 1's.
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownMessage(u8),
    /// The message ends inside a field.
    #[error("the pgoutput message ends inside its {0}")]
    Truncated(&'static str),
    /// A string field has no terminating NUL.
    #[error("the {0} of a pgoutput message is not terminated")]
    Unterminated(&'static str),
    /// A string field is not UTF-8 (the stream asks for `client_encoding` UTF8).
    #[error("the {0} of a pgoutput message is not UTF-8")]
    NotUtf8(&'static str),
    /// A count or length is negative.
    #[error("the {field} of a pgoutput message is negative ({value})")]
    Negative {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A byte that says which kind of thing follows has a value the protocol does not have.
    #[error("unexpected {field} {value:#04x} in a pgoutput message")]
    Unexpected {
        /// Which field (`column kind`, `tuple kind`, `replica identity`, …).
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// Bytes are left over after the message's last field.
    #[error("{0} bytes follow the end of a pgoutput message")]
    Trailing(usize),
}

/// What stops the capture of the write-ahead log: the server's set-up (each with the fix), the
/// server refusing something, or a broken stream.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The server could not be reached or refused the session.
    #[error(transparent)]
    Connect(PgProxyError),
    /// The user may not open replication connections.
    #[error(
        "the {side} side's user {user:?} may not read the write-ahead log: \
         run ALTER ROLE \"{user}\" REPLICATION; as a superuser"
    )]
    NoReplicationPrivilege {
        /// Which side.
        side: Side,
        /// The user.
        user: String,
    },
    /// The capture's publication does not exist and the side's user may not create it.
    #[error(
        "the {side} side's user {user:?} may not create the publication {publication:?} \
         ({why}): create it as a superuser ({sql}), or name the tables to capture with \
         --capture-table (a publication of tables takes CREATE on the database and owning \
         them)"
    )]
    PublicationRights {
        /// Which side.
        side: Side,
        /// The user.
        user: String,
        /// The publication.
        publication: String,
        /// What the user lacks.
        why: &'static str,
        /// The statement that creates it.
        sql: String,
    },
    /// The server does not keep what logical decoding needs in its write-ahead log.
    #[error(
        "the {side} side has wal_level = {actual}, logical decoding needs logical: \
         run ALTER SYSTEM SET wal_level = logical; and restart the server"
    )]
    WalLevel {
        /// Which side.
        side: Side,
        /// Its `wal_level`.
        actual: String,
    },
    /// Every replication slot the server may have is taken.
    #[error(
        "the {side} side has no free replication slot: find one no longer used (SELECT \
         slot_name, slot_type, database, active FROM pg_replication_slots;) and drop it by its \
         name (SELECT pg_drop_replication_slot('NAME');), or raise max_replication_slots and \
         restart the server"
    )]
    SlotsExhausted {
        /// Which side.
        side: Side,
    },
    /// The slot exists with another output plugin.
    #[error(
        "the {side} side's replication slot {slot:?} decodes with {plugin:?}, not pgoutput: \
         run SELECT pg_drop_replication_slot('{slot}'); if nothing else reads it, \
         or give tandem another slot name"
    )]
    SlotPlugin {
        /// Which side.
        side: Side,
        /// The slot.
        slot: String,
        /// Its plugin.
        plugin: String,
    },
    /// The slot exists in another database.
    #[error(
        "the {side} side's replication slot {slot:?} belongs to database {database:?}: \
         give tandem another slot name, or drop that one there"
    )]
    SlotInOtherDatabase {
        /// Which side.
        side: Side,
        /// The slot.
        slot: String,
        /// Its database.
        database: String,
    },
    /// Another connection reads the slot.
    #[error(
        "the {side} side's replication slot {slot:?} is read by another connection: \
         stop the other reader (SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = '{slot}';) or wait until it has gone"
    )]
    SlotActive {
        /// Which side.
        side: Side,
        /// The slot.
        slot: String,
    },
    /// The publication the stream reads no longer exists.
    #[error(
        "the {side} side has no publication {publication:?}: \
         run CREATE PUBLICATION \"{publication}\" FOR ALL TABLES; \
         (or FOR TABLE with the migrated tables) and restart the capture"
    )]
    PublicationMissing {
        /// Which side.
        side: Side,
        /// The publication.
        publication: String,
    },
    /// Published tables without a replica identity: PostgreSQL refuses their updates and
    /// deletes once they are published.
    #[error(
        "the {side} side has tables the capture cannot follow (no primary key): {}; give each \
         a primary key, or run {} (or leave them out with --capture-table)",
        tables.join(", "),
        tables
            .iter()
            .map(|table| format!("ALTER TABLE {table} REPLICA IDENTITY FULL;"))
            .collect::<Vec<_>>()
            .join(" ")
    )]
    NoIdentity {
        /// Which side.
        side: Side,
        /// The tables, quoted.
        tables: Vec<String>,
    },
    /// A slot or publication name tandem will not use.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `slot`, `publication` or `table`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A position to confirm lies past everything the server has sent: confirming it would
    /// let the slot discard changes nobody applied.
    #[error("cannot confirm {lsn}: the stream has received only up to {received}")]
    ConfirmAhead {
        /// The position asked for.
        lsn: Lsn,
        /// How far the server has sent.
        received: Lsn,
    },
    /// The server refused a command of the capture.
    #[error("the {side} side refused {command}: {message} (SQLSTATE {code})")]
    Server {
        /// Which side.
        side: Side,
        /// What tandem asked for (`CREATE PUBLICATION`, `START_REPLICATION`, the stream, …).
        command: &'static str,
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A pgoutput message did not decode.
    #[error("the {side} side sent an undecodable change: {source}")]
    Decode {
        /// Which side.
        side: Side,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The server broke the replication protocol (a message out of place).
    #[error("the {side} side broke the replication protocol: {reason}")]
    Protocol {
        /// Which side.
        side: Side,
        /// What was out of place.
        reason: String,
    },
    /// The server ended the stream.
    #[error("the {side} side ended the replication stream")]
    Ended {
        /// Which side.
        side: Side,
    },
    /// Another session applies with the same replication origin (another tandem capturing
    /// the same slot into this side).
    #[error(
        "the {side} side's replication origin {origin:?} is used by another session: \
         another tandem applies the same capture; stop it or wait until it has gone"
    )]
    OriginBusy {
        /// The side applied to.
        side: Side,
        /// The origin.
        origin: String,
    },
    /// The side applied to holds as many replication origins in use as it can: each apply
    /// session holds one, and a server holds at most `max_replication_slots` at once.
    #[error(
        "the {side} side has no room for the apply session of replication origin {origin}: a \
         server keeps at most max_replication_slots replication origins in use at once, and \
         each apply session holds one; raise max_replication_slots on the {side} side (it \
         takes a restart) or lower --apply-sessions"
    )]
    OriginsExhausted {
        /// The side applied to.
        side: Side,
        /// The origin.
        origin: String,
    },
    /// A captured table's shape differs from the side it is applied to: the mirror pauses
    /// until both sides have the same columns.
    #[error(
        "table {table} on the {side} side differs from the captured side: {difference}; \
         apply the same DDL on the {side} side (tandem goes on by itself once it matches)"
    )]
    Shape {
        /// The side applied to.
        side: Side,
        /// The table (`schema.name`).
        table: String,
        /// What differs.
        difference: String,
    },
    /// A captured change cannot be written for the side it is applied to.
    #[error("the change committed at {lsn} cannot be applied to the {side} side: {source}")]
    Render {
        /// The side applied to.
        side: Side,
        /// The end of the transaction's commit.
        lsn: Lsn,
        /// Why.
        #[source]
        source: super::render::RenderError,
    },
    /// The side applied to refused a captured change: nothing of the batch was applied.
    #[error(
        "the {side} side refused a captured change to {table} (transactions ending \
         {first}..{last}): {message} (SQLSTATE {code})"
    )]
    Apply {
        /// The side applied to.
        side: Side,
        /// The table of the refused statement (empty when not known).
        table: String,
        /// The end of the batch's first transaction.
        first: Lsn,
        /// The end of its last.
        last: Lsn,
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The apply stopped taking what the stream reads (it failed; its error is the one
    /// reported).
    #[error("the capture's apply stopped taking transactions")]
    ApplyEnded,
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A capture of an unreachable side was left unfinished: the side taking over cannot
    /// serve before it has applied everything the capture still holds.
    #[error(
        "a capture of the {side} side was left unfinished and that side cannot be reached \
         ({reason}); its sessions wait until it answers"
    )]
    Unfinished {
        /// The side whose capture is unfinished.
        side: Side,
        /// Why it cannot be reached.
        reason: String,
    },
    /// Another instance switched away from the side this one was about to serve (its slot is
    /// gone): this instance's stage is older than theirs.
    #[error("another tandem switched away from the {side} side under a newer stage")]
    Fenced {
        /// The side.
        side: Side,
    },
}
