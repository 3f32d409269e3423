//! One client session: its startup (TLS refused, cancel requests forwarded), its login, and
//! the relay to the side that is authoritative when it starts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use metrics::{counter, gauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tandem_control::{ControlStore, Side, StageWatch};

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::{Answer, MAX_COMPARED_BYTES, MAX_COMPARED_ROWS};
use crate::backend::{Backend, ServerAddress};
use crate::classify::{fingerprint, is_ordered, Classifier};
use crate::error::PgProxyError;
use crate::mirror::{mirror_session, MirrorContext, MirrorQueue, Sequencer, Transaction};
use crate::pool::ServerPool;
use crate::protocol::Message;
use crate::protocol::{
    cancel_packet, error_body, error_fields, put_cstr, put_message, read_message, read_startup,
    write_message, Startup,
};
use crate::relay::relay_direct;
use crate::scram::{ScramError, ScramServer, MECHANISM};
use crate::stream::ServerStream;
use crate::telemetry::COUNTS;

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The old side's server.
    pub old: ServerAddress,
    /// The new side's server.
    pub new: ServerAddress,
    /// The stage in force.
    pub stage: StageWatch,
    /// Users clients log in as, with their passwords (empty: the old URL's user).
    pub users: HashMap<String, String>,
    /// Tells reads from writes.
    pub classifier: Classifier,
    /// Where failures and mismatches of mirrored transactions are recorded.
    pub store: ControlStore,
    /// The commit order mirrored transactions are applied in.
    pub sequencer: Arc<Sequencer>,
    /// The cancel keys tandem gave its clients, mapped to the server session they stand for.
    pub cancel_keys: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// Idle server connections of both sides.
    pub pool: Arc<ServerPool>,
    /// The sessions' mirror tasks, waited for at shutdown.
    pub mirrors: TaskTracker,
    /// Cancelled when the shutdown deadline has passed with transactions still to apply.
    pub stop_mirroring: CancellationToken,
}

/// Where a client's cancel request goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    address: String,
    process_id: i32,
    secret_key: i32,
}

impl Shared {
    fn server(&self, side: Side) -> &ServerAddress {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}

/// Serves one client connection to its end.
///
/// # Errors
/// When the client breaks the protocol (it is told, with SQLSTATE 08P01), cannot log in, or a
/// connection fails.
pub async fn serve(mut client: TcpStream, shared: Arc<Shared>) -> Result<(), PgProxyError> {
    client.set_nodelay(true)?;
    let parameters = loop {
        match read_startup(&mut client).await {
            Ok(Startup::Ssl | Startup::GssEnc) => client.write_all(b"N").await?,
            Ok(Startup::Cancel {
                process_id,
                secret_key,
            }) => return forward_cancel(&shared, process_id, secret_key).await,
            Ok(Startup::Session(parameters)) => break parameters,
            Err(err @ PgProxyError::Protocol(_)) => {
                refuse(&mut client, "08P01", &err.to_string()).await;
                return Err(err);
            }
            Err(err) => return Err(err),
        }
    };
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let user = parameter("user").unwrap_or_default().to_owned();
    // Configured users log in with their own passwords; without any, the old URL's user
    // with that URL's password (none when it has none).
    let password = if shared.users.is_empty() {
        if user != shared.old.user {
            let message = format!(
                "tandem accepts the user of the old side's URL ({}), not {user:?}",
                shared.old.user
            );
            refuse(&mut client, "28000", &message).await;
            return Err(PgProxyError::Protocol(message));
        }
        shared.old.password.clone()
    } else {
        match shared.users.get(&user) {
            Some(password) => Some(password.clone()),
            None => {
                let message = format!("no tandem user {user:?}");
                refuse(&mut client, "28000", &message).await;
                return Err(PgProxyError::Protocol(message));
            }
        }
    };
    if let Some(password) = &password {
        if let Err(reason) = authenticate(&mut client, password).await {
            let message = format!("password authentication failed for user {user:?}: {reason}");
            refuse(&mut client, "28P01", &message).await;
            return Err(PgProxyError::Protocol(message));
        }
    }
    let stage = shared.stage.current().stage;
    let side = stage.authoritative();
    let backend = match shared.pool.get(shared.server(side), &parameters).await {
        Ok(backend) => backend,
        Err(err) => {
            refuse(&mut client, "08006", &err.to_string()).await;
            return Err(err);
        }
    };
    // AuthenticationOk, the server's parameters, a cancel key and ReadyForQuery, in one write.
    let mut greeting = BytesMut::with_capacity(512);
    put_message(&mut greeting, b'R', &0i32.to_be_bytes())?;
    for (name, value) in &backend.parameters {
        let mut body = BytesMut::new();
        put_cstr(&mut body, name);
        put_cstr(&mut body, value);
        put_message(&mut greeting, b'S', &body)?;
    }
    let key = (fastrand::i32(1..), fastrand::i32(..));
    let mut body = BytesMut::with_capacity(8);
    body.put_i32(key.0);
    body.put_i32(key.1);
    put_message(&mut greeting, b'K', &body)?;
    put_message(&mut greeting, b'Z', b"I")?;
    client.write_all(&greeting).await?;
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.insert(
            key,
            CancelTarget {
                address: shared.server(side).address.clone(),
                process_id: backend.process_id,
                secret_key: backend.secret_key,
            },
        );
    }
    counter!("tandem_pg_sessions_total", "side" => side.as_str()).increment(1);
    gauge!("tandem_pg_sessions_active").increment(1.0);
    tracing::debug!(%side, user, "session relayed");
    let Backend {
        stream,
        parameters: reported,
        process_id,
        secret_key,
    } = backend;
    let relayed = if stage.mirrors_writes() {
        let (queue, transactions) = tokio::sync::mpsc::unbounded_channel();
        let context = MirrorContext {
            server: shared.server(side.other()).clone(),
            parameters: parameters.clone(),
            sequencer: Arc::clone(&shared.sequencer),
            store: shared.store.clone(),
            authoritative: side,
            pool: Arc::clone(&shared.pool),
            stop: shared.stop_mirroring.clone(),
        };
        shared.mirrors.spawn(mirror_session(context, transactions));
        relay_mirroring(
            client,
            stream,
            &queue,
            &shared.sequencer,
            stage.compares_reads(),
            &shared.classifier,
        )
        .await
    } else {
        let mut stream = stream;
        relay_direct(&mut client, &mut stream)
            .await
            .map(|idle| idle.then_some(stream))
    };
    gauge!("tandem_pg_sessions_active").decrement(1.0);
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.remove(&key);
    }
    if let Ok(Some(stream)) = relayed {
        let backend = Backend {
            stream,
            parameters: reported,
            process_id,
            secret_key,
        };
        shared
            .pool
            .put(shared.server(side), &parameters, backend)
            .await;
        return Ok(());
    }
    relayed.map(drop)
}

/// Client messages up to one ReadyForQuery (a `Query`, or extended messages up to `Sync`).
#[derive(Debug, Default)]
struct Batch {
    messages: Vec<Message>,
    prerequisites: Vec<(String, Message)>,
    write: bool,
    ordered: bool,
    fingerprint: Option<String>,
}

impl Batch {
    fn writes(&mut self, sql: &str, classifier: &Classifier) {
        self.ordered |= is_ordered(sql);
        if classifier.is_write(sql) {
            self.write = true;
            self.fingerprint.get_or_insert_with(|| fingerprint(sql));
        } else if !sql.trim().is_empty() {
            self.fingerprint.get_or_insert_with(|| fingerprint(sql));
        }
    }
}

/// Relays a session in a mirroring stage: every message goes to the authoritative server
/// and its answers to the client, as they come; each transaction the server reports
/// committed that wrote is queued, whole, for the other side. Returns the server connection
/// when the client ended with a Terminate and the server is idle (so it can be pooled).
async fn relay_mirroring(
    client: TcpStream,
    server: ServerStream,
    queue: &MirrorQueue,
    sequencer: &Sequencer,
    compare_reads: bool,
    classifier: &Classifier,
) -> Result<Option<ServerStream>, PgProxyError> {
    // Buffered both ways: a message is flushed when no further one is already waiting, so
    // pipelined messages cost one write, not one each.
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = tokio::io::split(server);
    // Requests that each get one ReadyForQuery (Query, Sync, FunctionCall), the answers seen,
    // and whether the client has left with every request answered: tandem then sends a Sync
    // of its own, whose ReadyForQuery ends the relay at a message boundary.
    let (asked, answered, closing) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let (mut client_read, mut client_write) =
        (BufReader::new(client_read), BufWriter::new(client_write));
    let (mut server_read, mut server_write) =
        (BufReader::new(server_read), BufWriter::new(server_write));
    let batches: Mutex<VecDeque<Batch>> = Mutex::new(VecDeque::new());
    let upstream = async {
        let mut prepared: HashMap<String, (Message, String, bool, bool)> = HashMap::new();
        let mut batch = Batch::default();
        let (mut broken, mut terminated) = (None, false);
        loop {
            let message = match read_message(&mut client_read).await {
                Ok(message) => message,
                Err(err @ PgProxyError::Protocol(_)) => {
                    broken = Some(err);
                    break;
                }
                Err(_) => break,
            };
            // A Terminate after unsynced extended messages must not be followed by a Sync
            // (it would commit what the client abandoned).
            if message.tag == b'X'
                && batch.messages.is_empty()
                && asked.load(Ordering::SeqCst) == answered.load(Ordering::SeqCst)
            {
                closing.store(true, Ordering::SeqCst);
                write_message(&mut server_write, b'S', &[]).await?;
                server_write.flush().await?;
                terminated = true;
                break;
            }
            write_message(&mut server_write, message.tag, &message.body).await?;
            if client_read.buffer().is_empty() {
                server_write.flush().await?;
            }
            // The Sync after an extended-protocol COPY's data ends that COPY's batch: the server
            // ignored the one sent into copy-in mode and answers this one.
            let ends_copy = message.tag == b'S'
                && batch.messages.is_empty()
                && batches.lock().ok().is_some_and(|queued| {
                    queued.back().is_some_and(|last| {
                        last.messages.iter().any(|m| m.tag == b'S')
                            && last
                                .messages
                                .last()
                                .is_some_and(|m| matches!(m.tag, b'd' | b'c' | b'f'))
                    })
                });
            if matches!(message.tag, b'Q' | b'S' | b'F') && !ends_copy {
                asked.fetch_add(1, Ordering::SeqCst);
            }
            let fields = cstrs(&message.body);
            match message.tag {
                b'X' => break,
                b'Q' => {
                    batch.writes(fields.first().map_or("", String::as_str), classifier);
                    batch.messages.push(message);
                    push(&batches, std::mem::take(&mut batch));
                }
                b'S' if ends_copy => {
                    if let Some(last) = batches.lock().ok().as_mut().and_then(|q| q.back_mut()) {
                        last.messages.push(message);
                    }
                }
                b'S' => {
                    batch.messages.push(message);
                    push(&batches, std::mem::take(&mut batch));
                }
                // A fast-path function call: its function is named by OID, which differs
                // between clusters; it is mirrored as a write and fails there if it must.
                b'F' => {
                    batch.write = true;
                    batch
                        .fingerprint
                        .get_or_insert_with(|| "FunctionCall".to_owned());
                    batch.messages.push(message);
                    push(&batches, std::mem::take(&mut batch));
                }
                b'P' => {
                    let (name, sql) = (
                        fields.first().cloned().unwrap_or_default(),
                        fields.get(1).cloned().unwrap_or_default(),
                    );
                    batch.writes(&sql, classifier);
                    if !name.is_empty() {
                        let statement = (
                            message.clone(),
                            fingerprint(&sql),
                            classifier.is_write(&sql),
                            is_ordered(&sql),
                        );
                        prepared.insert(name, statement);
                    }
                    batch.messages.push(message);
                }
                b'B' => {
                    let statement = fields.get(1).cloned().unwrap_or_default();
                    if let Some((parse, print, write, ordered)) = prepared.get(&statement) {
                        batch.write |= *write;
                        batch.ordered |= *ordered;
                        batch.fingerprint.get_or_insert_with(|| print.clone());
                        let parsed_here = batch
                            .messages
                            .iter()
                            .any(|m| m.tag == b'P' && cstrs(&m.body).first() == Some(&statement));
                        if !parsed_here {
                            batch.prerequisites.push((statement, parse.clone()));
                        }
                    }
                    batch.messages.push(message);
                }
                // COPY data follows the Query that started the COPY.
                b'd' | b'c' | b'f' => match batches
                    .lock()
                    .ok()
                    .as_mut()
                    .and_then(|queued| queued.back_mut())
                {
                    Some(last) => last.messages.push(message),
                    None => batch.messages.push(message),
                },
                _ => batch.messages.push(message),
            }
        }
        if broken.is_some() {
            // End the server's session cleanly: the client gets the protocol error below.
            write_message(&mut server_write, b'X', &[]).await?;
        }
        if !terminated {
            server_write.shutdown().await?;
        }
        Ok::<_, PgProxyError>((broken, server_write))
    };
    let downstream = async {
        let mut transaction = Transaction::default();
        let (mut write, mut rolled_back, mut error) = (false, false, None);
        let (mut read, mut read_bytes, mut too_big) = (Answer::default(), 0usize, false);
        let (mut idle, mut client_alive) = (false, true);
        while let Ok(message) = read_message(&mut server_read).await {
            if message.tag == b'Z' && closing.load(Ordering::SeqCst) {
                idle = message.body.first() == Some(&b'I');
                break;
            }
            // A client gone mid-answer (reset, killed) does not end the relay: what the server
            // still commits must reach the other side.
            if client_alive {
                let mut sent = write_message(&mut client_write, message.tag, &message.body).await;
                if sent.is_ok() && server_read.buffer().is_empty() {
                    sent = client_write.flush().await.map_err(PgProxyError::from);
                }
                client_alive = sent.is_ok();
            }
            match message.tag {
                // Rows are kept for reads (compared in shadow and live) and for writes (their
                // RETURNING values are compared with the other side's).
                b'T' => read.describe(&message.body),
                b'D' if !too_big => {
                    read_bytes += message.body.len();
                    too_big =
                        read.rows.len() >= MAX_COMPARED_ROWS || read_bytes > MAX_COMPARED_BYTES;
                    read.rows.push(message.body.freeze());
                }
                b'C' => {
                    let tag = cstrs(&message.body).into_iter().next().unwrap_or_default();
                    rolled_back |= tag.starts_with("ROLLBACK");
                    transaction.tags.push(tag);
                }
                b'E' => {
                    let (code, text) = error_fields(&message.body);
                    error.get_or_insert(format!("{code}: {text}"));
                }
                b'Z' => {
                    if let Some(batch) = batches
                        .lock()
                        .ok()
                        .and_then(|mut queued| queued.pop_front())
                    {
                        // Records name a transaction by its first write (its first
                        // statement until it writes).
                        let first_write = batch.write && !write;
                        write |= batch.write;
                        read.ordered |= batch.ordered;
                        if first_write || transaction.fingerprint.is_empty() {
                            if let Some(print) = batch.fingerprint {
                                transaction.fingerprint = print;
                            }
                        }
                        transaction.messages.extend(batch.messages);
                        transaction.prerequisites.extend(batch.prerequisites);
                    }
                    if message.body.first() == Some(&b'I') {
                        let mut done = std::mem::take(&mut transaction);
                        done.finished_at = Some(std::time::Instant::now());
                        if rolled_back || error.is_some() {
                            done.rolled_back = Some(error.take());
                        }
                        let answer = std::mem::take(&mut read);
                        if write {
                            if !too_big {
                                done.returned = Some(answer);
                            }
                            let _ = queue.send((sequencer.ticket(), done));
                        } else if compare_reads
                            && !too_big
                            && done.rolled_back.is_none()
                            && !done.messages.is_empty()
                        {
                            done.reads = Some(answer);
                            let _ = queue.send((sequencer.ticket(), done));
                        }
                        (write, rolled_back, error) = (false, false, None);
                        (read_bytes, too_big) = (0, false);
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    COUNTS.served();
                }
                _ => {}
            }
        }
        Ok::<_, PgProxyError>((client_write, server_read, idle))
    };
    let (up, down) = tokio::join!(upstream, downstream);
    let (mut client_write, server_read, idle) = down?;
    let (broken, server_write) = up?;
    if let Some(err) = broken {
        let body = error_body("FATAL", "08P01", &err.to_string());
        let _ = write_message(&mut client_write, b'E', &body).await;
        let _ = client_write.shutdown().await;
        return Err(err);
    }
    let _ = client_write.shutdown().await;
    let reusable = idle && server_read.buffer().is_empty() && server_write.buffer().is_empty();
    Ok(reusable.then(|| server_read.into_inner().unsplit(server_write.into_inner())))
}

fn push(batches: &Mutex<VecDeque<Batch>>, batch: Batch) {
    if let Ok(mut queued) = batches.lock() {
        queued.push_back(batch);
    }
}

/// The NUL-terminated strings at the start of a message body.
fn cstrs(body: &[u8]) -> Vec<String> {
    body.split(|byte| *byte == 0)
        .take(2)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect()
}

/// Checks the client's password with SCRAM-SHA-256 (AuthenticationSASL, SASLContinue,
/// SASLFinal); the password itself never crosses the wire.
async fn authenticate(client: &mut TcpStream, password: &str) -> Result<(), PgProxyError> {
    let mut offer = BytesMut::new();
    offer.put_i32(10);
    put_cstr(&mut offer, MECHANISM);
    offer.put_u8(0);
    write_message(client, b'R', &offer).await?;
    let initial = read_message(client).await?;
    let mut body = &initial.body[..];
    let mechanism_end = body
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(body.len());
    if initial.tag != b'p' || &body[..mechanism_end] != MECHANISM.as_bytes() {
        return Err(PgProxyError::Protocol(format!("expected {MECHANISM}")));
    }
    body = body.get(mechanism_end + 1 + 4..).unwrap_or_default();
    let mut server = ScramServer::new(password);
    let scram = |err: ScramError| PgProxyError::Protocol(err.0);
    let server_first = server
        .first(&String::from_utf8_lossy(body))
        .map_err(scram)?;
    let mut next = BytesMut::new();
    next.put_i32(11);
    next.put_slice(server_first.as_bytes());
    write_message(client, b'R', &next).await?;
    let response = read_message(client).await?;
    if response.tag != b'p' {
        return Err(PgProxyError::Protocol("expected a SASLResponse".to_owned()));
    }
    let server_final = server
        .last(&String::from_utf8_lossy(&response.body))
        .map_err(scram)?;
    let mut last = BytesMut::new();
    last.put_i32(12);
    last.put_slice(server_final.as_bytes());
    write_message(client, b'R', &last).await?;
    Ok(())
}

/// Sends a client's cancel request on to the server session it stands for.
async fn forward_cancel(
    shared: &Shared,
    process_id: i32,
    secret_key: i32,
) -> Result<(), PgProxyError> {
    let target = shared
        .cancel_keys
        .lock()
        .ok()
        .and_then(|keys| keys.get(&(process_id, secret_key)).cloned());
    let Some(target) = target else {
        // As the server does: an unknown key is ignored without a word.
        return Ok(());
    };
    let mut server = TcpStream::connect(&target.address).await?;
    server
        .write_all(&cancel_packet(target.process_id, target.secret_key))
        .await?;
    counter!("tandem_pg_cancels_total").increment(1);
    Ok(())
}

/// Tells the client why its session ends (best effort: it may be gone).
async fn refuse(client: &mut TcpStream, code: &str, message: &str) {
    let _ = write_message(client, b'E', &error_body("FATAL", code, message)).await;
    let _ = client.flush().await;
}
