//! One client session: its startup (TLS refused, cancel requests forwarded), its login, and
//! the relay to the side that is authoritative when it starts, which follows the stage until
//! the other side becomes authoritative.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use metrics::{counter, gauge};
use tandem_control::{ControlStore, Side, Stage, StageRecord, StageWatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, ServerAddress};
use crate::carry::Purpose;
use crate::classify::Classifier;
use crate::error::PgProxyError;
use crate::messages::bare;
use crate::mirror::{mirror_session, Carried, MirrorContext, MirrorQueue, Sequencer};
use crate::pool::ServerPool;
use crate::protocol::{
    cancel_packet, error_body, put_cstr, put_message, read_message, read_startup, write_message,
    Startup,
};
use crate::relay::{relay_direct, DirectEnd, StageFollow, STAGE_CHECK};
use crate::scram::{ScramError, ScramServer, MECHANISM};
use crate::stream::ServerStream;
use crate::telemetry::COUNTS;
use crate::tracker::{End, Finished, TransactionTracker};

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
    pub classifier: Arc<Classifier>,
    /// How long an open transaction may go on once the stage made the other side
    /// authoritative.
    pub stage_grace: std::time::Duration,
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
    let mut stages = shared.stage.subscribe();
    let stage = stages.borrow_and_update().stage;
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
    let session = Session {
        shared: &shared,
        parameters: &parameters,
        side,
    };
    let relayed = session.relay(&mut client, stream, stages).await;
    gauge!("tandem_pg_sessions_active").decrement(1.0);
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.remove(&key);
    }
    match relayed {
        Ok(Relayed::Reusable(stream)) => {
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
            Ok(())
        }
        Ok(Relayed::Closed) => Ok(()),
        Ok(Relayed::StageChanged(stage)) => {
            counter!("tandem_pg_sessions_ended_by_stage_total").increment(1);
            let message = format!(
                "terminating connection because tandem's stage changed to {stage}: the {} side \
                 serves sessions now; reconnect",
                stage.authoritative()
            );
            refuse(&mut client, "57P01", &message).await;
            let _ = client.shutdown().await;
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// How a session's relay ended.
#[derive(Debug)]
enum Relayed {
    /// The client left with the server connection idle: it can be pooled.
    Reusable(ServerStream),
    /// Either end left (the server connection is closed).
    Closed,
    /// The stage made the other side authoritative: the client is told to reconnect.
    StageChanged(Stage),
}

/// One client session after its login: which side serves it, and what it was started with.
struct Session<'a> {
    shared: &'a Shared,
    parameters: &'a [(String, String)],
    side: Side,
}

impl Session<'_> {
    /// Relays the session to its end: as a byte copy while the stage mirrors nothing, then
    /// (from the first request after the stage starts mirroring) message by message, with
    /// every transaction tracked.
    async fn relay(
        &self,
        client: &mut TcpStream,
        mut server: ServerStream,
        mut stages: watch::Receiver<StageRecord>,
    ) -> Result<Relayed, PgProxyError> {
        let mut leftover = Vec::new();
        if !stages.borrow_and_update().stage.mirrors_writes() {
            let follow = StageFollow {
                stages: &mut stages,
                side: self.side,
                grace: self.shared.stage_grace,
            };
            match relay_direct(client, &mut server, follow).await? {
                DirectEnd::Left { reusable: true } => return Ok(Relayed::Reusable(server)),
                DirectEnd::Left { reusable: false } => return Ok(Relayed::Closed),
                DirectEnd::SideChanged => {
                    close_server(server).await;
                    return Ok(Relayed::StageChanged(stages.borrow().stage));
                }
                DirectEnd::Mirror { leftover: bytes } => leftover = bytes,
            }
        }
        self.relay_tracked(client, server, leftover, stages).await
    }

    /// Relays message by message: every message goes to the authoritative server and its
    /// answers to the client, as they come; the tracker follows each transaction, and those
    /// the stage at their end says the other side must see (writes, session settings, and in
    /// `shadow`/`live` reads to compare) are queued for it, whole. At each transaction
    /// boundary the stage is re-read; when the other side becomes authoritative the session
    /// ends there (or once the grace for an open transaction has passed).
    async fn relay_tracked(
        &self,
        client: &mut TcpStream,
        server: ServerStream,
        leftover: Vec<u8>,
        mut stages: watch::Receiver<StageRecord>,
    ) -> Result<Relayed, PgProxyError> {
        let shared = self.shared;
        // Buffered both ways: a message is flushed when no further one is already waiting, so
        // pipelined messages cost one write, not one each.
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = tokio::io::split(server);
        let mut client_read = BufReader::new(leftover.chain(client_read));
        let mut client_write = BufWriter::new(client_write);
        let (mut server_read, mut server_write) =
            (BufReader::new(server_read), BufWriter::new(server_write));
        let tracker = Mutex::new(TransactionTracker::new(Arc::clone(&shared.classifier)));
        // Whether the client has left with every request answered: tandem then sends a Sync
        // of its own, whose ReadyForQuery ends the relay at a message boundary.
        let closing = AtomicBool::new(false);
        let mirror = Mutex::new(SessionMirror::new(self));
        let upstream = async {
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
                if message.tag == b'X' {
                    // A Terminate after unsynced extended messages must not be followed by a
                    // Sync (it would commit what the client abandoned).
                    if tracker
                        .lock()
                        .is_ok_and(|tracker| !tracker.awaits_answers())
                    {
                        closing.store(true, Ordering::SeqCst);
                        if let Ok(mut tracker) = tracker.lock() {
                            tracker.client(&bare(b'S'));
                        }
                        write_message(&mut server_write, b'S', &[]).await?;
                        server_write.flush().await?;
                        terminated = true;
                    }
                    break;
                }
                // Tracked before the server can answer it.
                if let Ok(mut tracker) = tracker.lock() {
                    tracker.client(&message);
                }
                write_message(&mut server_write, message.tag, &message.body).await?;
                if client_read.buffer().is_empty() {
                    server_write.flush().await?;
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
            let (mut idle, mut client_alive) = (false, true);
            while let Ok(message) = read_message(&mut server_read).await {
                if message.tag == b'Z' && closing.load(Ordering::SeqCst) {
                    idle = message.body.first() == Some(&b'I');
                    break;
                }
                // A client gone mid-answer (reset, killed) does not end the relay: what the
                // server still commits must reach the other side.
                if client_alive {
                    let mut sent =
                        write_message(&mut client_write, message.tag, &message.body).await;
                    if sent.is_ok() && server_read.buffer().is_empty() {
                        sent = client_write.flush().await.map_err(PgProxyError::from);
                    }
                    client_alive = sent.is_ok();
                }
                let finished = match tracker.lock() {
                    Ok(mut tracker) => {
                        if let Err(err) = tracker.server(&message) {
                            tracing::warn!(error = %err, "lost track of the session's transactions");
                        }
                        tracker.take_finished()
                    }
                    Err(_) => Vec::new(),
                };
                if message.tag == b'Z' {
                    COUNTS.served();
                }
                if let Ok(mut mirror) = mirror.lock() {
                    mirror.carry(finished);
                }
            }
            let _ = client_write.flush().await;
            Ok::<_, PgProxyError>((client_write, server_read, idle))
        };
        let mut upstream = std::pin::pin!(upstream);
        let mut downstream = std::pin::pin!(downstream);
        let mut side_changed: Option<tokio::time::Instant> = None;
        let mut watching = true;
        let mut tick = tokio::time::interval(STAGE_CHECK);
        let mut up_result = None;
        // Either end leaving ends the relay once the server has answered what it was sent; a
        // server that ended the session ends it for the client too.
        let down_result = loop {
            tokio::select! {
                up = &mut upstream, if up_result.is_none() => up_result = Some(up),
                down = &mut downstream => break Some(down),
                changed = stages.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                    } else if stages.borrow_and_update().stage.authoritative() != self.side {
                        side_changed.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
                _ = tick.tick(), if side_changed.is_some() => {}
            }
            if let Some(since) = side_changed.filter(|_| up_result.is_none()) {
                let quiet = tracker.lock().is_ok_and(|tracker| tracker.is_idle());
                if quiet || since.elapsed() >= shared.stage_grace {
                    break None;
                }
            }
        };
        if let Ok(mut tracker) = tracker.lock() {
            tracker.end_session();
            let finished = tracker.take_finished();
            drop(tracker);
            if let Ok(mut mirror) = mirror.lock() {
                mirror.carry(finished);
            }
        }
        let Some(down) = down_result else {
            return Ok(Relayed::StageChanged(stages.borrow().stage));
        };
        let (mut client_write, server_read, idle) = down?;
        let Some(up) = up_result else {
            // The server ended the session (its error went to the client).
            let _ = client_write.shutdown().await;
            return Ok(Relayed::Closed);
        };
        let (broken, server_write) = up?;
        if let Some(err) = broken {
            let body = error_body("FATAL", "08P01", &err.to_string());
            let _ = write_message(&mut client_write, b'E', &body).await;
            let _ = client_write.shutdown().await;
            return Err(err);
        }
        let _ = client_write.shutdown().await;
        let reusable = idle && server_read.buffer().is_empty() && server_write.buffer().is_empty();
        Ok(if reusable {
            Relayed::Reusable(server_read.into_inner().unsplit(server_write.into_inner()))
        } else {
            Relayed::Closed
        })
    }
}

/// The session's queue to its mirror task, opened with the first transaction the other side
/// must see.
struct SessionMirror<'a> {
    session: &'a Session<'a>,
    queue: Option<MirrorQueue>,
}

impl<'a> SessionMirror<'a> {
    fn new(session: &'a Session<'a>) -> SessionMirror<'a> {
        SessionMirror {
            session,
            queue: None,
        }
    }

    /// Queues the transactions the stage in force says the other side must see.
    fn carry(&mut self, finished: Vec<Finished>) {
        if finished.is_empty() {
            return;
        }
        let shared = self.session.shared;
        let stage = shared.stage.current().stage;
        for transaction in finished {
            let purpose = if !stage.mirrors_writes() {
                continue;
            } else if transaction.writes() || transaction.changes_session() {
                Purpose::Apply
            } else if stage.compares_reads()
                && transaction.end == End::Committed
                && transaction.answers_complete
                && transaction.failure().is_none()
            {
                Purpose::Compare
            } else {
                continue;
            };
            let queue = self.queue.get_or_insert_with(|| {
                let (queue, transactions) = tokio::sync::mpsc::unbounded_channel();
                let context = MirrorContext {
                    server: shared.server(self.session.side.other()).clone(),
                    parameters: self.session.parameters.to_vec(),
                    sequencer: Arc::clone(&shared.sequencer),
                    store: shared.store.clone(),
                    authoritative: self.session.side,
                    pool: Arc::clone(&shared.pool),
                    stop: shared.stop_mirroring.clone(),
                };
                shared.mirrors.spawn(mirror_session(context, transactions));
                queue
            });
            let _ = queue.send(Carried {
                ticket: shared.sequencer.ticket(),
                purpose,
                transaction,
            });
        }
    }
}

/// Ends a server session tandem leaves (Terminate, for a second at most).
async fn close_server(mut server: ServerStream) {
    let goodbye = async {
        let _ = write_message(&mut server, b'X', &[]).await;
        let _ = server.shutdown().await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), goodbye).await;
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
