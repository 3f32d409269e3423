//! A replication connection (`replication=database`): logged in with tandem's own server
//! login, framed with its [`PgCodec`], able to run SQL and replication commands as simple
//! queries. Reading and writing are cancel-safe: what was read stays in the read buffer, what
//! is queued stays queued until written.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use tandem_control::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::error::WalError;
use crate::backend::{connect, ServerAddress};
use crate::error::PgProxyError;
use crate::messages::{query, Backend};
use crate::protocol::{error_fields, put_message, Message, PgCodec};
use crate::stream::ServerStream;
use crate::text_query::data_row;

/// The read buffer's size.
const READ_BUFFER: usize = 64 * 1024;

/// The receive low-water mark of a lingering connection: half the read buffer.
const LINGER_LOW_WATER: i32 = 32 * 1024;

/// Whether lowering a socket's receive low-water mark wakes its reader when that much already
/// waits: Linux does so since 4.18 (`tcp_set_rcvlowat`). Elsewhere a read that waited out its
/// linger could wait on for data already there, so reads do not linger.
fn low_water_wakes() -> bool {
    static WAKES: OnceLock<bool> = OnceLock::new();
    *WAKES.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let wakes = kernel_at_least(&release, (4, 18));
        if !wakes {
            tracing::info!(
                kernel = release.trim(),
                "the replication stream is read as each change arrives (lingering needs Linux 4.18)"
            );
        }
        wakes
    })
}

/// Whether a Linux release string (`6.1.0-18-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(found_major)), Some(Ok(found_minor))) => {
            (found_major, found_minor) >= (major, minor)
        }
        _ => false,
    }
}

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
    /// Reads wait this long for a full buffer before taking what has arrived.
    linger: Option<Duration>,
    /// The receive low-water mark set now (bytes).
    low_water: i32,
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
            low_water: 1,
        })
    }

    /// Makes every read wait up to `linger` for half a read buffer of data before it takes
    /// what has arrived: the server's small messages (a replication stream sends every change
    /// as one) then wake the reader once per `linger` or per half buffer instead of once
    /// each. Where the kernel refuses the low-water mark, reads go on as before.
    pub(crate) fn lingering(mut self, linger: Duration) -> Connection {
        self.linger = low_water_wakes().then_some(linger);
        self
    }

    /// Reads what the server sent into the buffer; the bytes read (0 at its end).
    /// Cancel-safe: the low-water mark set is remembered and set again by the next call.
    async fn fill(&mut self) -> Result<usize, WalError> {
        let Some(linger) = self.linger else {
            return Ok(self.stream.read_buf(&mut self.read).await?);
        };
        if !self.set_low_water(LINGER_LOW_WATER) {
            return Ok(self.stream.read_buf(&mut self.read).await?);
        }
        if let Ok(read) = tokio::time::timeout(linger, self.stream.read_buf(&mut self.read)).await {
            return Ok(read?);
        }
        // Lowering the mark wakes the reader at once when anything is waiting.
        self.set_low_water(1);
        Ok(self.stream.read_buf(&mut self.read).await?)
    }

    /// Sets the socket's receive low-water mark; false (and no lingering from then on) when
    /// the kernel refuses it.
    fn set_low_water(&mut self, bytes: i32) -> bool {
        if self.low_water == bytes {
            return true;
        }
        match self.stream.set_receive_low_water(bytes) {
            Ok(()) => {
                self.low_water = bytes;
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, side = %self.side, "the socket's receive low-water mark cannot be set; reading every message as it arrives");
                self.linger = None;
                false
            }
        }
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

    use crate::stream::ServerStream;
    use tokio::net::{TcpListener, TcpStream};

    /// A lingering connection to a local socket, and the socket's other end.
    async fn lingering_pair(linger: Duration) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        let connection = Connection {
            side: Side::Old,
            stream: ServerStream::Plain(client.unwrap()),
            codec: PgCodec::default(),
            read: BytesMut::with_capacity(READ_BUFFER),
            outgoing: BytesMut::new(),
            linger: None,
            low_water: 1,
        }
        .lingering(linger);
        (connection, server.unwrap().0)
    }

    fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut wire = BytesMut::new();
        put_message(&mut wire, tag, body).unwrap();
        wire.to_vec()
    }

    /// An upper bound on a wait that must end, so that a failure is a failure, not a hang.
    const HANG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_lingering_read_takes_a_message_below_the_low_water_mark() {
        let (mut connection, mut server) = lingering_pair(Duration::from_millis(5)).await;
        for round in 0..3_u8 {
            server.write_all(&framed(b'd', &[round; 10])).await.unwrap();
            let message = tokio::time::timeout(HANG, connection.read())
                .await
                .expect("a small message is read once the linger is over")
                .unwrap();
            assert_eq!((message.tag, &message.body[..]), (b'd', &[round; 10][..]));
        }
    }

    #[tokio::test]
    async fn a_lingering_read_takes_a_burst_larger_than_its_buffer_message_by_message() {
        let (mut connection, mut server) = lingering_pair(Duration::from_secs(3600)).await;
        // Past the low-water mark: read without waiting out the hour's linger.
        let bodies: Vec<Vec<u8>> = (0..40_u8)
            .map(|i| vec![i; 3_000 + usize::from(i)])
            .collect();
        let wire: Vec<u8> = bodies.iter().flat_map(|body| framed(b'd', body)).collect();
        assert!(wire.len() > READ_BUFFER);
        let writer = tokio::spawn(async move {
            server.write_all(&wire).await.unwrap();
            server
        });
        for body in &bodies {
            let message = tokio::time::timeout(HANG, connection.read())
                .await
                .expect("a burst past the low-water mark is read at once")
                .unwrap();
            assert_eq!(&message.body[..], &body[..]);
        }
        drop(writer.await.unwrap());
        assert!(matches!(
            tokio::time::timeout(HANG, connection.read()).await,
            Ok(Err(WalError::Ended { .. }))
        ));
    }

    #[test]
    fn only_a_kernel_whose_low_water_mark_wakes_lingers() {
        for (release, wakes) in [
            ("6.1.0-18-amd64", true),
            ("4.18.0-553.el8_10.x86_64", true),
            ("5.4.0", true),
            ("4.17.19", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("10.0", true),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(kernel_at_least(release, (4, 18)), wakes, "{release}");
        }
        // This machine's tests run on such a kernel: the tests above linger.
        assert!(low_water_wakes());
    }

    #[test]
    fn names_and_texts_are_quoted() {
        assert_eq!(quote_identifier("my \"pub\""), "\"my \"\"pub\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(&quote_identifier("a'b")), "'\"a''b\"'");
    }
}
