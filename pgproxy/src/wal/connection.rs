//! A replication connection (`replication=database`): logged in with tandem's own server
//! login, framed with its [`PgCodec`], able to run SQL and replication commands as simple
//! queries. Reading and writing are cancel-safe: what was read stays in the read buffer, what
//! is queued stays queued until written.

use std::time::Duration;

use bytes::BytesMut;
use tandem_control::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::error::WalError;
use super::linger::{Hurry, Linger};
use super::lsn::Lsn;
use crate::backend::{connect, ServerAddress};
use crate::error::PgProxyError;
use crate::messages::{query, Backend};
use crate::protocol::{error_fields, put_message, Message, PgCodec};
use crate::stream::ServerStream;
use crate::text_query::data_row;

/// The read buffer's size.
const READ_BUFFER: usize = 64 * 1024;

/// The rows of a query, as text.
pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// What a simple query of several statements did ([`Connection::batch`]).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The command tag of every statement that completed, in order.
    pub(crate) tags: Vec<String>,
    /// The rows of every statement, together.
    pub(crate) rows: Rows,
    /// The first error (SQLSTATE and message); the statements after it did not run.
    pub(crate) error: Option<(String, String)>,
    /// The transaction status after it (`I`, `T` or `E`).
    pub(crate) status: u8,
}

/// A logged-in replication connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Which side it reaches.
    pub(crate) side: Side,
    stream: ServerStream,
    codec: PgCodec,
    read: BytesMut,
    outgoing: BytesMut,
    /// Reads wait for half a buffer before taking what has arrived.
    linger: Option<Linger>,
}

impl Connection {
    /// Connects to the server at `url` in logical replication mode (names and text values in
    /// UTF-8).
    pub(crate) async fn open(side: Side, url: &str) -> Result<Connection, WalError> {
        Connection::open_as(side, url, true).await
    }

    /// Connects to the server at `url` as an ordinary session (to apply captured changes),
    /// in UTF-8.
    pub(crate) async fn open_sql(side: Side, url: &str) -> Result<Connection, WalError> {
        Connection::open_as(side, url, false).await
    }

    async fn open_as(side: Side, url: &str, replication: bool) -> Result<Connection, WalError> {
        let server = ServerAddress::parse(side, url).map_err(WalError::Connect)?;
        let mut parameters = vec![
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("application_name".to_owned(), "tandem capture".to_owned()),
        ];
        if replication {
            parameters.push(("replication".to_owned(), "database".to_owned()));
        }
        // The login reports a refusal as the server's text and SQLSTATE; 42501 naming
        // replication is the walsender's "must be superuser or replication role".
        let backend = connect(&server, &parameters)
            .await
            .map_err(|err| match err {
                PgProxyError::Server { reason, .. }
                    if reason.contains("(SQLSTATE 42501)") && reason.contains("replication") =>
                {
                    WalError::NoReplicationPrivilege {
                        side,
                        user: server.user.clone(),
                    }
                }
                other => WalError::Connect(other),
            })?;
        Ok(Connection {
            side,
            stream: backend.stream,
            codec: PgCodec::default(),
            read: BytesMut::with_capacity(READ_BUFFER),
            outgoing: BytesMut::new(),
            linger: None,
        })
    }

    /// Makes every read wait up to `wait` for half a read buffer of data, unless hurried,
    /// before it takes what has arrived ([`Linger`]); on a kernel where that cannot work,
    /// reads go on as before.
    pub(crate) fn lingering(mut self, wait: Duration, hurry: Hurry) -> Connection {
        self.linger = Linger::new(self.side, wait, hurry);
        self
    }

    /// The replication stream has received the log up to `position`: a stream hurried
    /// through a position ([`Hurry`]) lingers again once it has received it.
    pub(crate) fn received(&mut self, position: Lsn) {
        if let Some(linger) = &mut self.linger {
            linger.received(position);
        }
    }

    /// Reads what the server sent into the buffer; the bytes read (0 at its end).
    async fn fill(&mut self) -> Result<usize, WalError> {
        Ok(match &mut self.linger {
            Some(linger) => linger.fill(&mut self.stream, &mut self.read).await?,
            None => self.stream.read_buf(&mut self.read).await?,
        })
    }

    /// The server's next message.
    pub(crate) async fn read(&mut self) -> Result<Message, WalError> {
        loop {
            let framed = self
                .codec
                .decode(&mut self.read)
                .map_err(|err| WalError::Protocol {
                    side: self.side,
                    reason: err.to_string(),
                })?;
            if let Some(message) = framed {
                return Ok(message);
            }
            if self.fill().await? == 0 {
                return Err(WalError::Ended { side: self.side });
            }
        }
    }

    /// Queues a message for the next [`Connection::flush`].
    pub(crate) fn queue(&mut self, tag: u8, body: &[u8]) -> Result<(), WalError> {
        put_message(&mut self.outgoing, tag, body).map_err(|err| WalError::Protocol {
            side: self.side,
            reason: err.to_string(),
        })
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), WalError> {
        while !self.outgoing.is_empty() {
            self.stream.write_buf(&mut self.outgoing).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Runs `sql` (SQL or a replication command) as a simple query; its rows as text.
    /// `command` names it in errors.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        command: &'static str,
    ) -> Result<Rows, WalError> {
        let message = query(sql);
        self.queue(message.tag, &message.body)?;
        self.flush().await?;
        let (mut rows, mut refused) = (Vec::new(), None);
        loop {
            let answer = self.read().await?;
            match Backend::decode(&answer) {
                Backend::DataRow => rows.push(data_row(&answer.body)),
                Backend::Error { .. } => {
                    refused.get_or_insert_with(|| error_fields(&answer.body));
                }
                Backend::Ready { .. } => break,
                _ => {}
            }
        }
        match refused {
            Some((code, message)) => Err(WalError::Server {
                side: self.side,
                command,
                code,
                message,
            }),
            None => Ok(rows),
        }
    }

    /// Runs `sql` (several statements) as one simple query: every statement's command tag
    /// and rows, the first error, and the transaction status after it.
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<Batch, WalError> {
        let message = query(sql);
        self.queue(message.tag, &message.body)?;
        self.read_rounds(1).await
    }

    /// Sends `wire` (framed messages) and reads the answers until `rounds` ReadyForQuery
    /// arrived: every completed statement's command tag and rows, the first error, and the
    /// transaction status after the last round. Answers are read while the messages are
    /// written, so a pipeline longer than the sockets' buffers cannot stall both ends.
    pub(crate) async fn pipeline(&mut self, wire: &[u8], rounds: usize) -> Result<Batch, WalError> {
        // Its answers are read beside the writing, not through a linger.
        debug_assert!(
            self.linger.is_none(),
            "a pipeline on a lingering connection"
        );
        self.flush().await?;
        let side = self.side;
        let Connection {
            stream,
            codec,
            read,
            ..
        } = self;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let send = async {
            writer.write_all(wire).await?;
            writer.flush().await?;
            Ok::<(), WalError>(())
        };
        let receive = async {
            let mut outcome = Batch::default();
            let mut rounds = rounds;
            while rounds > 0 {
                let answer = loop {
                    let framed = codec.decode(read).map_err(|err| WalError::Protocol {
                        side,
                        reason: err.to_string(),
                    })?;
                    if let Some(message) = framed {
                        break message;
                    }
                    if reader.read_buf(read).await? == 0 {
                        return Err(WalError::Ended { side });
                    }
                };
                if record(&mut outcome, &answer) {
                    rounds -= 1;
                }
            }
            Ok(outcome)
        };
        let ((), outcome) = tokio::try_join!(send, receive)?;
        Ok(outcome)
    }

    async fn read_rounds(&mut self, mut rounds: usize) -> Result<Batch, WalError> {
        self.flush().await?;
        let mut outcome = Batch::default();
        while rounds > 0 {
            let answer = self.read().await?;
            if record(&mut outcome, &answer) {
                rounds -= 1;
            }
        }
        Ok(outcome)
    }

    /// Ends the session (Terminate), leaving nothing half-written.
    pub(crate) async fn terminate(mut self) -> Result<(), WalError> {
        self.queue(b'X', &[])?;
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Adds one answer of a pipeline to `outcome`; whether it was a ReadyForQuery.
fn record(outcome: &mut Batch, answer: &Message) -> bool {
    match Backend::decode(answer) {
        Backend::DataRow => outcome.rows.push(data_row(&answer.body)),
        Backend::CommandComplete { tag } => outcome.tags.push(tag),
        Backend::Error { .. } => {
            outcome
                .error
                .get_or_insert_with(|| error_fields(&answer.body));
        }
        Backend::Ready { status } => {
            outcome.status = status;
            return true;
        }
        _ => {}
    }
    false
}

/// `name` as an SQL identifier, in double quotes.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_quoted() {
        assert_eq!(quote_identifier("my \"pub\""), "\"my \"\"pub\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(&quote_identifier("a'b")), "'\"a''b\"'");
    }
}
