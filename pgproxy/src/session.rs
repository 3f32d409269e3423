//! One client session: its startup (TLS refused, cancel requests forwarded), its login, and
//! the relay to the side that is authoritative when it starts, which follows the stage until
//! the other side becomes authoritative.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use metrics::{counter, gauge};
use tandem_control::{ControlStore, Side, Stage, StageRecord, StageWatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, ServerAddress};
use crate::carry::Purpose;
use crate::classify::Classifier;
use crate::error::PgProxyError;
use crate::front_door::{admit, cancel, refuse, Admitted};
use crate::messages::bare;
use crate::mirror::{mirror_session, Carried, MirrorContext, MirrorQueue, Sequencer};
use crate::moving::{move_session, Moved};
use crate::pool::{close_stream, ServerPool};
use crate::protocol::{error_body, put_cstr, put_message, write_message, PgCodec};
use crate::random::secure_bytes;
use crate::relay::{relay_direct, tracks, DirectEnd, StageFollow, CANCEL_WAIT, STAGE_CHECK};
use crate::reported::{self, ParameterChange};
use crate::sampling::ReadSample;
use crate::snapshot::{snapshot, SessionSnapshot};
use crate::stream::ServerStream;
use crate::telemetry::COUNTS;
use crate::tracker::{End, Finished, TransactionTracker};
use crate::wal_mirror::{Readiness, WalMirror};

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
    /// Databases served besides the URLs' own, by the same name on both sides.
    pub databases: Vec<String>,
    /// How long a client may take to log in.
    pub login_timeout: std::time::Duration,
    /// Tells reads from writes.
    pub classifier: Arc<Classifier>,
    /// How long an open transaction may go on once the stage made the other side
    /// authoritative.
    pub stage_grace: std::time::Duration,
    /// The fraction of read-only transactions compared on the other side.
    pub compare_reads: ReadSample,
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
    /// The write-ahead-log mirror (`--capture wal`): writes are carried by it, not by the
    /// sessions.
    pub wal: Option<Arc<WalMirror>>,
}

/// Where a client's cancel request goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server's `host:port`.
    pub address: String,
    /// The server session's process id.
    pub process_id: i32,
    /// Its secret key.
    pub secret_key: i32,
}

/// Serves one client connection to its end; `admitted` is false when the proxy already has
/// as many clients as it takes (the client is told so, with SQLSTATE 53300).
///
/// # Errors
/// When the client breaks the protocol (it is told, with SQLSTATE 08P01), cannot log in, or a
/// connection fails.
pub async fn serve(
    mut client: TcpStream,
    shared: Arc<Shared>,
    admitted: bool,
) -> Result<(), PgProxyError> {
    client.set_nodelay(true)?;
    let login = tokio::time::timeout(shared.login_timeout, admit(&mut client, &shared, admitted))
        .await
        .map_err(|_| PgProxyError::Protocol(format!("no login within {:?}", shared.login_timeout)));
    let Admitted {
        parameters,
        user,
        servers,
    } = match login {
        Ok(Ok(Some(admitted))) => admitted,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(err)) => return Err(err),
        Err(err) => {
            refuse(&mut client, "08006", &err.to_string()).await;
            return Err(err);
        }
    };
    let server = |side: Side| &servers[usize::from(side == Side::New)];
    let mut stages = shared.stage.subscribe();
    let side = stages.borrow_and_update().stage.authoritative();
    let backend = side_backend(&mut client, &shared, server(side), &parameters, side).await?;
    // AuthenticationOk, the server's parameters, a cancel key and ReadyForQuery, in one write.
    let mut greeting = BytesMut::with_capacity(512);
    put_message(&mut greeting, b'R', &0i32.to_be_bytes())?;
    for (name, value) in &backend.parameters {
        let mut body = BytesMut::new();
        put_cstr(&mut body, name);
        put_cstr(&mut body, value);
        put_message(&mut greeting, b'S', &body)?;
    }
    // An unguessable cancel key: with it, anyone may cancel this session's queries.
    let key = match secure_bytes::<8>() {
        Ok(bytes) => {
            let [a, b, c, d, e, f, g, h] = bytes;
            (
                i32::from_be_bytes([a & 0x7f, b, c, d]).max(1),
                i32::from_be_bytes([e, f, g, h]),
            )
        }
        Err(err) => {
            let message = format!("no secure random bytes for a cancel key: {err}");
            refuse(&mut client, "58000", &message).await;
            return Err(PgProxyError::Protocol(message));
        }
    };
    let mut body = BytesMut::with_capacity(8);
    body.put_i32(key.0);
    body.put_i32(key.1);
    put_message(&mut greeting, b'K', &body)?;
    put_message(&mut greeting, b'Z', b"I")?;
    client.write_all(&greeting).await?;
    // What the client was told of the reported parameters (TimeZone, DateStyle, …): its
    // statements mean what they mean with these, so its mirror connections take them on.
    let mut told = backend.parameters.clone();
    // With the write-ahead-log capture, a switch of authoritative side holds a session's
    // first request (not its login: a client that connects synchronously is not stalled)
    // until the side taking over has applied everything the other one committed. A stage
    // that names the other side meanwhile takes the session there before its first request.
    let (mut side, mut backend) = (side, backend);
    // The side that greeted the client, and the parameters it was told, once it goes on
    // with another.
    let mut greeted: Option<(Side, Vec<(String, String)>)> = None;
    let open = match &shared.wal {
        Some(wal) => loop {
            match wal.open_session(side, &stages).await {
                Ok(Some(open)) => break Some(open),
                Ok(None) => {
                    greeted.get_or_insert_with(|| (side, backend.parameters.clone()));
                    let to = stages.borrow_and_update().stage.authoritative();
                    let moved =
                        match side_backend(&mut client, &shared, server(to), &parameters, to).await
                        {
                            Ok(moved) => moved,
                            Err(err) => {
                                crate::pool::close(backend).await;
                                return Err(err);
                            }
                        };
                    shared.pool.put(server(side), &parameters, backend).await;
                    (side, backend) = (to, moved);
                }
                Err(waiting) => {
                    let message = format!(
                        "tandem is switching the authoritative side to {side}: {waiting}; \
                         connect again shortly"
                    );
                    counter!("tandem_pg_logins_refused_total", "reason" => "57P03").increment(1);
                    refuse(&mut client, "57P03", &message).await;
                    crate::pool::close(backend).await;
                    return Err(PgProxyError::Protocol(message));
                }
            }
        },
        None => None,
    };
    // Served by another side than the one that greeted it: the parameters it was told are
    // kept there, or told anew, as for a session that moves.
    if let Some((from, greeting)) = greeted.filter(|(from, _)| *from != side) {
        let names = reported::names(&greeting);
        let kept = reported::keep(
            &mut backend.stream,
            &names,
            &reported::told_at_login(&greeting),
        )
        .await;
        let outcome = match kept {
            Ok(kept) => {
                reported::tell(&mut told, &kept.changes);
                tell_changes(&mut client, &kept.changes, from, side).await
            }
            Err(err) => {
                refuse(&mut client, "08006", &err.to_string()).await;
                Err(err)
            }
        };
        if let Err(err) = outcome {
            crate::pool::close(backend).await;
            return Err(err);
        }
    }
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.insert(
            key,
            CancelTarget {
                address: server(side).address.clone(),
                process_id: backend.process_id,
                secret_key: backend.secret_key,
            },
        );
    }
    counter!("tandem_pg_sessions_total", "side" => side.as_str()).increment(1);
    gauge!("tandem_pg_sessions_active").increment(1.0);
    tracing::debug!(%side, user, "session relayed");
    let mut open = open;
    let mut next: Option<(Vec<u8>, SessionSnapshot)> = None;
    let relayed = loop {
        let Backend {
            stream,
            parameters: reported,
            process_id,
            secret_key,
            slot,
            event_loop,
        } = backend;
        let session = Session {
            shared: &shared,
            parameters: &parameters,
            told: &told,
            servers: &servers,
            side,
            cancel: CancelTarget {
                address: server(side).address.clone(),
                process_id,
                secret_key,
            },
        };
        let relayed = match next.take() {
            Some((leftover, seed)) => {
                session
                    .relay_tracked(&mut client, stream, leftover, &mut stages, Some(seed))
                    .await
            }
            None => session.relay(&mut client, stream, &mut stages).await,
        };
        let (stage, moving) = match relayed {
            Ok(Relayed::StageChanged { stage, moving }) => (stage, moving),
            Ok(Relayed::Reusable(stream)) => {
                let backend = Backend {
                    stream,
                    parameters: reported,
                    process_id,
                    secret_key,
                    slot,
                    event_loop,
                };
                shared.pool.put(server(side), &parameters, backend).await;
                break Ok(None);
            }
            other => break other.map(|_| None),
        };
        // Between transactions, a session holding nothing that cannot move goes on with
        // the side the stage names: its settings and prepared statements brought over, the
        // bytes of its next request kept. Others are told to reconnect.
        let Some(Moving {
            server: stream,
            leftover,
        }) = moving
        else {
            break Ok(Some(stage));
        };
        drop(open.take());
        let to = stage.authoritative();
        match move_session(&shared, &servers, &parameters, &reported, to, stream).await {
            Ok(Moved {
                side: to,
                backend: moved,
                snapshot,
                open: opened,
                changes,
            }) => {
                counter!("tandem_pg_sessions_moved_total", "to" => to.as_str()).increment(1);
                tracing::debug!(from = %side, %to, "session moved at a stage change");
                // Told before anything else reaches the client: whichever relay goes on with
                // the session, its next answer comes after these.
                if let Err(err) = tell_changes(&mut client, &changes, side, to).await {
                    crate::pool::close(moved).await;
                    break Err(err);
                }
                reported::tell(&mut told, &changes);
                drop(slot);
                open = opened;
                if let Ok(mut keys) = shared.cancel_keys.lock() {
                    keys.insert(
                        key,
                        CancelTarget {
                            address: server(to).address.clone(),
                            process_id: moved.process_id,
                            secret_key: moved.secret_key,
                        },
                    );
                }
                (side, backend) = (to, moved);
                next = Some((leftover, snapshot));
            }
            Err(why) => {
                tracing::info!(from = %side, %to, reason = %why, "a session could not move at a stage change; ending it");
                break Ok(Some(stage));
            }
        }
    };
    drop(open);
    gauge!("tandem_pg_sessions_active").decrement(1.0);
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.remove(&key);
    }
    match relayed {
        Ok(None) => Ok(()),
        Ok(Some(stage)) => {
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

/// A server connection of `side` for a session starting there, once the transactions
/// acknowledged on the side before are applied to it (at a change of authoritative side they
/// may still be on their way: the session waits for them, for the stage grace at most, or is
/// told to come back); the client is told why when there is none.
async fn side_backend(
    client: &mut TcpStream,
    shared: &Shared,
    address: &ServerAddress,
    parameters: &[(String, String)],
    side: Side,
) -> Result<Backend, PgProxyError> {
    if let Err(owed) = shared.sequencer.settled_for(side, shared.stage_grace).await {
        let message = format!(
            "tandem is still applying {owed} acknowledged transactions to the {side} side, \
             which serves sessions now; connect again shortly"
        );
        counter!("tandem_pg_logins_refused_total", "reason" => "57P03").increment(1);
        refuse(client, "57P03", &message).await;
        return Err(PgProxyError::Protocol(message));
    }
    match shared.pool.get(address, parameters).await {
        Ok(backend) => Ok(backend),
        Err(err) => {
            let code = match err {
                PgProxyError::TooManyConnections { .. } => "53300",
                _ => "08006",
            };
            refuse(client, code, &err.to_string()).await;
            Err(err)
        }
    }
}

/// Tells the client of a session that went from `from` to `to` the reported parameters
/// whose value differs there (ParameterStatus, which the protocol allows at any time), each
/// logged and counted.
async fn tell_changes(
    client: &mut TcpStream,
    changes: &[ParameterChange],
    from: Side,
    to: Side,
) -> Result<(), PgProxyError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut wire = BytesMut::new();
    for change in changes {
        change.record(from, to);
        change.put_status(&mut wire)?;
    }
    client.write_all(&wire).await?;
    client.flush().await?;
    Ok(())
}

/// What a session refused because the capture of its stage has not begun is told.
fn uncaptured_message(side: Side, reason: &str) -> String {
    format!(
        "tandem has not yet begun capturing the {side} side's writes for the stage in force \
         ({reason}); no transaction starts uncaptured; connect again shortly"
    )
}

/// Ends a byte-relayed session whose next transaction could not start captured (SQLSTATE
/// 57P03: its request was not forwarded).
async fn refuse_uncaptured(client: &mut TcpStream, side: Side, reason: &str) {
    counter!("tandem_pg_sessions_ended_by_stage_total").increment(1);
    refuse(client, "57P03", &uncaptured_message(side, reason)).await;
    let _ = client.shutdown().await;
}

/// How a session's relay ended.
#[derive(Debug)]
enum Relayed {
    /// The client left with the server connection idle: it can be pooled.
    Reusable(ServerStream),
    /// Either end left (the server connection is closed).
    Closed,
    /// The stage made the other side authoritative.
    StageChanged {
        /// The stage now.
        stage: Stage,
        /// The session stopped between transactions: it may go on with the other side.
        moving: Option<Moving>,
    },
}

/// A session stopped between transactions at a stage change.
#[derive(Debug)]
struct Moving {
    /// Its server connection on the side before (idle).
    server: ServerStream,
    /// What the client sent of its next request, not yet forwarded.
    leftover: Vec<u8>,
}

/// One client session after its login: which side serves it, and what it was started with.
struct Session<'a> {
    shared: &'a Shared,
    parameters: &'a [(String, String)],
    /// The reported parameters its client was told.
    told: &'a [(String, String)],
    /// Both sides' servers, with the database the client asked for.
    servers: &'a [ServerAddress; 2],
    side: Side,
    /// Its server session, for a cancel request when the stage grace runs out.
    cancel: CancelTarget,
}

impl Session<'_> {
    /// Relays the session to its end: as a byte copy while the stage mirrors nothing, then
    /// (from the first request after the stage starts mirroring) message by message, with
    /// every transaction tracked.
    async fn relay(
        &self,
        client: &mut TcpStream,
        mut server: ServerStream,
        stages: &mut watch::Receiver<StageRecord>,
    ) -> Result<Relayed, PgProxyError> {
        let (mut leftover, mut seed) = (Vec::new(), None);
        let wal = self.shared.wal.as_deref();
        if !tracks(stages.borrow_and_update().stage, wal.is_some()) {
            let follow = StageFollow {
                stages: &mut *stages,
                side: self.side,
                grace: self.shared.stage_grace,
                wal,
                cancel: &self.cancel,
            };
            match relay_direct(client, &mut server, follow).await? {
                DirectEnd::Left { reusable: true } => return Ok(Relayed::Reusable(server)),
                DirectEnd::Left { reusable: false } => return Ok(Relayed::Closed),
                DirectEnd::Refused { reason } => {
                    close_stream(server).await;
                    refuse_uncaptured(client, self.side, &reason).await;
                    return Ok(Relayed::Closed);
                }
                DirectEnd::SideChanged { idle, leftover } => {
                    let stage = stages.borrow().stage;
                    if idle {
                        let moving = Some(Moving { server, leftover });
                        return Ok(Relayed::StageChanged { stage, moving });
                    }
                    close_stream(server).await;
                    return Ok(Relayed::StageChanged {
                        stage,
                        moving: None,
                    });
                }
                DirectEnd::Mirror { leftover: bytes } => leftover = bytes,
            }
            // What it set up untracked is read from its server (idle, nothing in flight).
            match snapshot(&mut server).await {
                Ok(found) => seed = Some(found),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read an untracked session's settings; ending it");
                    close_stream(server).await;
                    return Err(err);
                }
            }
        }
        self.relay_tracked(client, server, leftover, stages, seed)
            .await
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
        stages: &mut watch::Receiver<StageRecord>,
        seed: Option<SessionSnapshot>,
    ) -> Result<Relayed, PgProxyError> {
        let shared = self.shared;
        // Buffered both ways: a message is flushed when no further one is already waiting, so
        // pipelined messages cost one write, not one each.
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = tokio::io::split(server);
        let mut client_read = FramedRead::new(leftover.chain(client_read), PgCodec::default());
        let mut client_write = BufWriter::new(client_write);
        let (mut server_read, mut server_write) = (
            FramedRead::new(server_read, PgCodec::default()),
            BufWriter::new(server_write),
        );
        let classifier = Arc::clone(&shared.classifier);
        let tracker = Mutex::new(match seed {
            Some(seed) => TransactionTracker::resumed(classifier, seed),
            None => TransactionTracker::new(classifier),
        });
        // Whether the client has left with every request answered: tandem then sends a Sync
        // of its own, whose ReadyForQuery ends the relay at a message boundary.
        let closing = AtomicBool::new(false);
        // A server message read and not yet passed on to the client.
        let delivering = AtomicBool::new(false);
        // The other side became authoritative: the next request that starts with the session
        // idle is held here, unsent, and goes with the session to that side (a client that
        // sends its next transaction at once would otherwise never be seen idle); from the
        // start when the stage named the other side before the relay began.
        let left_before = stages.borrow().stage.authoritative() != self.side;
        let leaving = AtomicBool::new(left_before);
        // Told by a request that found, waiting to start its transaction, that the stage
        // names the other side (a change the select below may have taken in already).
        let moved = tokio::sync::Notify::new();
        let held: Mutex<Option<crate::protocol::Message>> = Mutex::new(None);
        let mirror = Mutex::new(SessionMirror::new(self));
        // The stage as it is now (read when a transaction starts, whatever the select below
        // has seen of it yet).
        let current = stages.clone();
        // The relay's two directions borrow the connections' halves, which are whole again
        // once the relay ended.
        let (up_result, down_result) = {
            let upstream = async {
                let (mut broken, mut terminated) = (None, false);
                loop {
                    let message = match client_read.next().await {
                        Some(Ok(message)) => message,
                        Some(Err(err @ PgProxyError::Protocol(_))) => {
                            broken = Some(err);
                            break;
                        }
                        Some(Err(_)) | None => break,
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
                    // Every request answered (the last answer may still be on its way to the
                    // client, which the relay waits for before it ends).
                    if leaving.load(Ordering::SeqCst)
                        && tracker.lock().is_ok_and(|tracker| tracker.is_idle())
                    {
                        if let Ok(mut held) = held.lock() {
                            *held = Some(message.clone());
                        }
                        // The relay ends (the session moves) at its next check.
                        std::future::pending::<()>().await;
                    }
                    // A transaction starts here: under a stage that mirrors writes, only once
                    // its capture has begun (its slot consistent), so that it is captured.
                    if let Some(wal) = &shared.wal {
                        if tracker.lock().is_ok_and(|tracker| tracker.is_idle()) {
                            // Held while it waits: a stage naming the other side meanwhile
                            // ends the relay, and the request goes with the session there.
                            if let Ok(mut held) = held.lock() {
                                *held = Some(message.clone());
                            }
                            match wal.ready_for(self.side, &current).await {
                                Ok(Readiness::Ready) => {
                                    if let Ok(mut held) = held.lock() {
                                        *held = None;
                                    }
                                }
                                Ok(Readiness::Moved) => {
                                    leaving.store(true, Ordering::SeqCst);
                                    moved.notify_one();
                                    // The relay ends (the session moves) at its next check.
                                    std::future::pending::<()>().await;
                                }
                                Err(reason) => {
                                    counter!("tandem_pg_sessions_ended_by_stage_total")
                                        .increment(1);
                                    broken = Some(PgProxyError::CaptureNotBegun(
                                        uncaptured_message(self.side, &reason),
                                    ));
                                    break;
                                }
                            }
                        }
                    }
                    // Tracked before the server can answer it.
                    if let Ok(mut tracker) = tracker.lock() {
                        tracker.client(&message);
                    }
                    write_message(&mut server_write, message.tag, &message.body).await?;
                    if client_read.read_buffer().is_empty() {
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
                Ok::<_, PgProxyError>(broken)
            };
            let downstream = async {
                let (mut idle, mut client_alive) = (false, true);
                while let Some(Ok(message)) = server_read.next().await {
                    // Until its answer reached the client, the relay is not quiet: it never stops
                    // (to move or end the session) with an answer half delivered.
                    delivering.store(true, Ordering::SeqCst);
                    if message.tag == b'Z' && closing.load(Ordering::SeqCst) {
                        idle = message.body.first() == Some(&b'I');
                        break;
                    }
                    let (finished, lost) = match tracker.lock() {
                        Ok(mut tracker) => {
                            let lost = tracker.server(&message).err();
                            (tracker.take_finished(), lost)
                        }
                        Err(_) => (Vec::new(), None),
                    };
                    if let Some(err) = lost {
                        // What this session does next could not be carried exactly: it ends,
                        // loudly, rather than go on unmirrored.
                        tracing::error!(error = %err, "lost track of a session's transactions; ending it");
                        counter!("tandem_pg_sessions_lost_track_total").increment(1);
                        let body = error_body(
                        "FATAL",
                        "08P01",
                        "tandem lost track of this session's transactions and ends it; reconnect",
                    );
                        let _ = write_message(&mut client_write, b'E', &body).await;
                        let _ = client_write.flush().await;
                        if let Ok(mut mirror) = mirror.lock() {
                            mirror.carry(finished);
                        }
                        break;
                    }
                    // Tracked and queued before the client hears it: a slow client does not delay
                    // its transaction's place in the commit order.
                    if let Ok(mut mirror) = mirror.lock() {
                        mirror.carry(finished);
                    }
                    // Past the mirror backlog, a transaction's end is told once the other side
                    // caught up enough (memory stays bounded; the client waits instead).
                    if message.tag == b'Z' && shared.sequencer.within_backlog().await {
                        tracing::debug!("a transaction end waited for the mirror backlog");
                    }
                    // A client gone mid-answer (reset, killed) does not end the relay: what the
                    // server still commits must reach the other side.
                    if client_alive {
                        let mut sent =
                            write_message(&mut client_write, message.tag, &message.body).await;
                        if sent.is_ok() && server_read.read_buffer().is_empty() {
                            sent = client_write.flush().await.map_err(PgProxyError::from);
                        }
                        client_alive = sent.is_ok();
                    }
                    if message.tag == b'Z' {
                        COUNTS.served();
                    }
                    delivering.store(false, Ordering::SeqCst);
                }
                let _ = client_write.flush().await;
                Ok::<_, PgProxyError>(idle)
            };
            let mut upstream = std::pin::pin!(upstream);
            let mut downstream = std::pin::pin!(downstream);
            let mut side_changed = left_before.then(tokio::time::Instant::now);
            let mut watching = true;
            let mut tick = tokio::time::interval(STAGE_CHECK);
            let mut up_result = None;
            let mut cancelled: Option<tokio::time::Instant> = None;
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
                            leaving.store(true, Ordering::SeqCst);
                        }
                    }
                    () = moved.notified() => {
                        side_changed.get_or_insert_with(tokio::time::Instant::now);
                    }
                    _ = tick.tick(), if side_changed.is_some() => {}
                }
                if let Some(since) = side_changed.filter(|_| up_result.is_none()) {
                    let delivered = !delivering.load(Ordering::SeqCst);
                    let (quiet, answering) = tracker.lock().map_or((false, false), |tracker| {
                        (
                            tracker.is_idle() && delivered,
                            tracker.awaits_answers() || !delivered,
                        )
                    });
                    let overdue = since.elapsed() >= shared.stage_grace;
                    if quiet || (overdue && !answering) {
                        break None;
                    }
                    if overdue && cancelled.is_none() {
                        // A request still running when the grace ends is cancelled, and its answer
                        // read, so that what it did (committed or not) is known and carried.
                        cancelled = Some(tokio::time::Instant::now());
                        if let Err(err) = cancel(&self.cancel).await {
                            tracing::warn!(error = %err, "cannot cancel a request at a stage change");
                        }
                    }
                    if cancelled.is_some_and(|at| at.elapsed() >= CANCEL_WAIT) {
                        // Its outcome stays unknown: said loudly, found by the comparator.
                        tracing::error!(
                            "a request still unanswered after its cancel at a stage change; its \
                         transaction's outcome is unknown and is not carried as committed"
                        );
                        counter!("tandem_pg_transactions_in_doubt_total").increment(1);
                        break None;
                    }
                }
            };
            (up_result, down_result)
        };
        let quiet = tracker.lock().is_ok_and(|tracker| tracker.is_idle())
            && !delivering.load(Ordering::SeqCst);
        if let Ok(mut tracker) = tracker.lock() {
            tracker.end_session();
            let finished = tracker.take_finished();
            drop(tracker);
            if let Ok(mut mirror) = mirror.lock() {
                mirror.carry(finished);
            }
        }
        let Some(down) = down_result else {
            let stage = stages.borrow().stage;
            let _ = client_write.flush().await;
            let moving = (quiet
                && server_read.read_buffer().is_empty()
                && server_write.buffer().is_empty())
            .then(|| {
                // What the client sent of its next request: the request held, the codec's
                // buffer, then what it has not read yet of the bytes it started with.
                let mut leftover = BytesMut::new();
                if let Some(message) = held.lock().ok().and_then(|mut held| held.take()) {
                    if let Err(err) = put_message(&mut leftover, message.tag, &message.body) {
                        tracing::warn!(error = %err, "cannot keep a held request");
                    }
                }
                let mut leftover = leftover.to_vec();
                leftover.extend_from_slice(client_read.read_buffer());
                leftover.extend_from_slice(client_read.get_ref().get_ref().0);
                Moving {
                    server: server_read.into_inner().unsplit(server_write.into_inner()),
                    leftover,
                }
            });
            return Ok(Relayed::StageChanged { stage, moving });
        };
        let idle = down?;
        let Some(up) = up_result else {
            // The server ended the session (its error went to the client).
            let _ = client_write.shutdown().await;
            return Ok(Relayed::Closed);
        };
        let broken = up?;
        if let Some(err) = broken {
            let code = match err {
                PgProxyError::CaptureNotBegun(_) => "57P03",
                _ => "08P01",
            };
            let body = error_body("FATAL", code, &err.to_string());
            let _ = write_message(&mut client_write, b'E', &body).await;
            let _ = client_write.shutdown().await;
            return Err(err);
        }
        let _ = client_write.shutdown().await;
        let reusable =
            idle && server_read.read_buffer().is_empty() && server_write.buffer().is_empty();
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
    /// The session committed writes the capture carries since its last transaction queued.
    wrote: bool,
    /// The write transactions it committed (under `--capture wal`).
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl<'a> SessionMirror<'a> {
    fn new(session: &'a Session<'a>) -> SessionMirror<'a> {
        SessionMirror {
            session,
            queue: None,
            wrote: false,
            writes: Arc::default(),
        }
    }

    /// Queues the transactions the stage in force says the other side must see.
    fn carry(&mut self, finished: Vec<Finished>) {
        if finished.is_empty() {
            return;
        }
        let shared = self.session.shared;
        let stage = shared.stage.current().stage;
        let wal = shared.wal.is_some();
        for transaction in finished {
            let purpose = if !stage.mirrors_writes() {
                continue;
            } else if wal && transaction.writes() {
                // The capture carries its rows.
                if transaction.end != End::RolledBack {
                    self.wrote = true;
                    self.writes.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            } else if transaction.writes() || transaction.changes_session() {
                Purpose::Apply
            } else if stage.compares_reads()
                && transaction.end == End::Committed
                && transaction.answers_complete
                && transaction.failure().is_none()
                && shared.compare_reads.takes()
            {
                Purpose::Compare
            } else {
                continue;
            };
            let queue = self.queue.get_or_insert_with(|| {
                let (queue, transactions) = tokio::sync::mpsc::unbounded_channel();
                let context = MirrorContext {
                    server: self.session.servers
                        [usize::from(self.session.side.other() == Side::New)]
                    .clone(),
                    parameters: self.session.parameters.to_vec(),
                    told: self.session.told.to_vec(),
                    sequencer: Arc::clone(&shared.sequencer),
                    store: shared.store.clone(),
                    authoritative: self.session.side,
                    pool: Arc::clone(&shared.pool),
                    stop: shared.stop_mirroring.clone(),
                    wal: shared.wal.clone(),
                    session_writes: Arc::clone(&self.writes),
                };
                shared.mirrors.spawn(mirror_session(context, transactions));
                queue
            });
            let _ = queue.send(Carried {
                ticket: shared.sequencer.ticket(self.session.side.other()),
                // Under the capture no write is carried here: a session's settings and reads
                // concern it alone, so they wait for no other session's.
                in_order: !wal,
                purpose,
                after_writes: std::mem::take(&mut self.wrote),
                writes_before: self.writes.load(Ordering::SeqCst),
                transaction,
            });
        }
    }
}
