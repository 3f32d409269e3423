//! The replication stream: a logical replication connection reading a pgoutput slot, yielding
//! whole committed transactions in commit order, and confirming to the slot only what the
//! caller says it applied — the slot keeps everything else, across any crash of tandem.

use std::time::Duration;

use tandem_control::Side;
use tokio::time::Instant;

use super::connection::{quote_identifier, quote_literal, Connection};
use super::error::WalError;
use super::linger::Hurry;
use super::lsn::Lsn;
use super::pgoutput::PgOutput;
use super::replication::{postgres_now, status_update, ServerCopy};
use super::setup::{
    check_publication_name, check_slot_name, check_wal_level, ensure_publication, ensure_slot,
    PublishedTables,
};
use super::transaction::{Assembler, Captured};
use crate::messages::Backend;

/// How often the stream tells the server where it stands even when not asked (as libpq's
/// `wal_receiver_status_interval`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long a read of the stream waits for half a buffer of changes before it takes what has
/// arrived. The walsender sends every change as a message of its own; read as each arrives,
/// every one woke tandem (a wake-up and a read per change, and apply batches of whatever a
/// wake-up brought). Waiting this long adds at most this much to the apply delay and takes
/// a tenth of the capture's CPU per transaction, half its share of new's (docs/benchmarks.md).
const RECEIVE_LINGER: Duration = Duration::from_millis(10);

/// What to capture and where from.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// Which side is captured (named in errors).
    pub side: Side,
    /// Its `postgres://` URL (as tandem's `--old`/`--new`: TLS by `sslmode`, any login
    /// method); the user needs the `REPLICATION` attribute.
    pub url: String,
    /// The replication slot (created when missing): lower-case letters, digits, `_`.
    pub slot: String,
    /// The publication (created when missing, before the slot; one that exists is used as
    /// it is).
    pub publication: String,
    /// The tables of a publication tandem creates.
    pub tables: PublishedTables,
    /// Where to begin: transactions whose commit lies before it are skipped. `Lsn(0)` begins
    /// where the slot stands (after what was confirmed last); a later position skips what was
    /// applied but not yet confirmed to the slot.
    pub start: Lsn,
    /// Whether to ask for `pg_logical_emit_message()` messages (PostgreSQL 14 and later).
    pub messages: bool,
    /// Ends the stream's current linger when someone waits for what was just written.
    pub hurry: Hurry,
}

/// A stream of committed transactions from a logical replication slot.
///
/// [`ReplicationStream::next`] is cancel-safe: dropped before it returns (e.g. by a timeout),
/// it loses nothing, and the next call goes on where it stood.
#[derive(Debug)]
pub struct ReplicationStream {
    connection: Connection,
    slot: String,
    publication: String,
    assembler: Assembler,
    /// How far the server has sent (or the stream began).
    received: Lsn,
    /// What the caller confirmed.
    confirmed: Lsn,
    /// When the server was last told where the stream stands.
    last_status: Instant,
}

impl ReplicationStream {
    /// Connects, makes sure `wal_level` is logical and the publication and slot exist
    /// (creating them when missing), and starts streaming from the slot.
    ///
    /// # Errors
    /// A [`WalError`]: the set-up problems with their fix (no replication privilege,
    /// `wal_level`, no free slot, a slot of another plugin or database, a slot another
    /// connection reads), or the server refusing.
    pub async fn open(settings: &CaptureSettings) -> Result<ReplicationStream, WalError> {
        check_slot_name(&settings.slot)?;
        check_publication_name(&settings.publication)?;
        let mut connection = Connection::open(settings.side, &settings.url).await?;
        check_wal_level(&mut connection).await?;
        // Values travel as text: in forms every server reads back exactly, whatever this
        // database's own settings (which would otherwise win over the login's).
        connection
            .query(
                "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3",
                "the capture's settings",
            )
            .await?;
        ensure_publication(&mut connection, &settings.publication, &settings.tables).await?;
        let slot_position = ensure_slot(&mut connection, &settings.slot).await?;
        let mut options = format!(
            "proto_version '1', publication_names {}",
            quote_literal(&quote_identifier(&settings.publication))
        );
        if settings.messages {
            options.push_str(", messages 'true'");
        }
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({options})",
            settings.slot, settings.start
        );
        let message = crate::messages::query(&command);
        connection.queue(message.tag, &message.body)?;
        connection.flush().await?;
        loop {
            let answer = connection.read().await?;
            match Backend::decode(&answer) {
                Backend::CopyOut if answer.tag == b'W' => break,
                Backend::Error { code, message } => {
                    return Err(refusal(
                        settings.side,
                        &settings.slot,
                        &settings.publication,
                        "START_REPLICATION",
                        code,
                        message,
                    ))
                }
                Backend::Other if matches!(answer.tag, b'N' | b'S') => {}
                _ => {
                    return Err(WalError::Protocol {
                        side: settings.side,
                        reason: format!(
                            "a {:?} message answering START_REPLICATION",
                            char::from(answer.tag)
                        ),
                    })
                }
            }
        }
        Ok(ReplicationStream {
            connection: connection.lingering(RECEIVE_LINGER, settings.hurry.clone()),
            slot: settings.slot.clone(),
            publication: settings.publication.clone(),
            assembler: Assembler::new(),
            received: slot_position.max(settings.start),
            confirmed: Lsn(0),
            last_status: Instant::now(),
        })
    }

    /// Yields a transaction whose changes pass `units` in parts (see
    /// [`Assembler::holding_at_most`]) instead of holding it whole. Call it before reading.
    #[must_use]
    pub fn holding_at_most(mut self, units: usize) -> ReplicationStream {
        self.assembler = std::mem::take(&mut self.assembler).holding_at_most(units);
        self
    }

    /// The next committed transaction (Begin to Commit, with the shape of every table it
    /// changed), in commit order; or a message written outside any transaction. Answers the
    /// server's keepalives meanwhile: call it often enough (within `wal_sender_timeout`, 60 s
    /// by default) or the server ends the stream.
    ///
    /// # Errors
    /// [`WalError::PublicationMissing`] when the publication was dropped, another
    /// [`WalError`] when the server ends the stream or sends what does not decode.
    pub async fn next(&mut self) -> Result<Captured, WalError> {
        let side = self.connection.side;
        loop {
            if self.last_status.elapsed() >= STATUS_INTERVAL {
                self.queue_status()?;
            }
            self.connection.flush().await?;
            let deadline = self.last_status + STATUS_INTERVAL;
            let Ok(message) = tokio::time::timeout_at(deadline, self.connection.read()).await
            else {
                continue;
            };
            let message = message?;
            match message.tag {
                b'd' => {
                    let copy = ServerCopy::parse(message.body)
                        .map_err(|reason| WalError::Protocol { side, reason })?;
                    match copy {
                        ServerCopy::XLogData { start, end, data } => {
                            self.received = self.received.max(start).max(end);
                            self.connection.received(self.received);
                            let decoded = PgOutput::decode(data)
                                .map_err(|source| WalError::Decode { side, source })?;
                            let captured = self
                                .assembler
                                .push(decoded)
                                .map_err(|reason| WalError::Protocol { side, reason })?;
                            if let Some(captured) = captured {
                                return Ok(captured);
                            }
                        }
                        ServerCopy::Keepalive { end, reply } => {
                            self.received = self.received.max(end);
                            self.connection.received(self.received);
                            if reply {
                                self.queue_status()?;
                            }
                        }
                    }
                }
                b'E' => {
                    let (code, text) = crate::protocol::error_fields(&message.body);
                    return Err(refusal(
                        side,
                        &self.slot,
                        &self.publication,
                        "the replication stream",
                        code,
                        text,
                    ));
                }
                b'c' => return Err(WalError::Ended { side }),
                b'N' | b'S' | b'A' => {}
                other => {
                    return Err(WalError::Protocol {
                        side,
                        reason: format!("a {:?} message in the stream", char::from(other)),
                    })
                }
            }
        }
    }

    /// Confirms to the slot that everything up to `lsn` is applied (pass a transaction's
    /// [`Commit::end_lsn`](super::pgoutput::Commit::end_lsn)): the server may discard it, and
    /// a stream opened later from the slot begins after it. Never goes backwards.
    ///
    /// # Errors
    /// [`WalError::ConfirmAhead`] for a position past what the server sent (confirming it
    /// could lose changes nobody applied); an I/O error.
    pub async fn confirm(&mut self, lsn: Lsn) -> Result<(), WalError> {
        if lsn > self.received {
            return Err(WalError::ConfirmAhead {
                lsn,
                received: self.received,
            });
        }
        self.confirmed = self.confirmed.max(lsn);
        self.queue_status()?;
        self.connection.flush().await
    }

    /// How far the server has sent, when no transaction is half received: once the caller
    /// applied every transaction [`ReplicationStream::next`] yielded, confirming it lets the
    /// server free the log of everything this slot does not publish (other databases, other
    /// tables), which an idle capture would otherwise keep without end.
    #[must_use]
    pub fn idle_position(&self) -> Option<Lsn> {
        self.assembler
            .is_between_transactions()
            .then_some(self.received)
            .filter(|received| *received > self.confirmed)
    }

    /// What the caller confirmed last on this stream (`Lsn(0)` before any confirmation).
    #[must_use]
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Ends the stream cleanly: the server stops sending, the slot is free for the next reader
    /// when this returns. (Dropping the stream also frees it, moments after.)
    ///
    /// # Errors
    /// A [`WalError`] when the server does not end the stream as the protocol says.
    pub async fn close(mut self) -> Result<(), WalError> {
        let side = self.connection.side;
        self.queue_status()?;
        self.connection.queue(b'c', &[])?;
        self.connection.flush().await?;
        loop {
            let message = self.connection.read().await?;
            match message.tag {
                b'Z' => break,
                b'E' => {
                    let (code, message) = crate::protocol::error_fields(&message.body);
                    return Err(WalError::Server {
                        side,
                        command: "the end of the replication stream",
                        code,
                        message,
                    });
                }
                _ => {}
            }
        }
        self.connection.terminate().await
    }

    /// Queues a Standby Status Update: received up to `received`, applied up to `confirmed`.
    fn queue_status(&mut self) -> Result<(), WalError> {
        let update = status_update(self.received, self.confirmed, postgres_now());
        self.last_status = Instant::now();
        self.connection.queue(b'd', &update)
    }
}

/// The error for the server refusing the stream: the set-up problems typed, anything else as
/// the server said it.
fn refusal(
    side: Side,
    slot: &str,
    publication: &str,
    command: &'static str,
    code: String,
    message: String,
) -> WalError {
    match code.as_str() {
        "55006" => WalError::SlotActive {
            side,
            slot: slot.to_owned(),
        },
        "42704" if message.starts_with("publication") => WalError::PublicationMissing {
            side,
            publication: publication.to_owned(),
        },
        _ => WalError::Server {
            side,
            command,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_set_up_problem() {
        let refused = |code: &str, message: &str| {
            refusal(
                Side::Old,
                "s",
                "p",
                "START_REPLICATION",
                code.to_owned(),
                message.to_owned(),
            )
        };
        assert!(matches!(
            refused("55006", "replication slot \"s\" is active for PID 7"),
            WalError::SlotActive { .. }
        ));
        let missing = refused("42704", "publication \"p\" does not exist");
        assert!(matches!(missing, WalError::PublicationMissing { .. }));
        assert!(missing.to_string().contains("CREATE PUBLICATION \"p\""));
        assert!(matches!(
            refused("42704", "replication slot \"s\" does not exist"),
            WalError::Server { .. }
        ));
    }
}
