//! Mirroring committed write transactions to the other side: each session has a connection
//! to the other side, and its transactions are applied there whole, one at a time across all
//! sessions, in the order the authoritative side reported them committed. The other side
//! failing never touches the client: failures and differing outcomes are recorded.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use metrics::{counter, histogram};
use tandem_control::{
    ControlStore, FailureStatus, NewMirrorFailure, NewResponseMismatch, Side, Timestamp,
    SQL_ORDERING_KEY,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::answer::{Answer, MAX_COMPARED_BYTES, MAX_COMPARED_ROWS};
use crate::backend::{Backend, ServerAddress};
use crate::classify::is_commit;
use crate::error::PgProxyError;
use crate::pool::ServerPool;
use crate::protocol::{error_fields, put_message, read_message, ready_rounds, Message};
use crate::stream::ServerStream;
use crate::telemetry::COUNTS;

/// Hands out the commit order and lets each transaction wait for its turn; and whether
/// transactions are parked because an earlier one awaits replay.
#[derive(Debug)]
pub struct Sequencer {
    next: AtomicU64,
    applied: watch::Sender<u64>,
    parked: AtomicBool,
}

impl Sequencer {
    /// A sequencer; `parked` when the store already holds transactions awaiting replay.
    #[must_use]
    pub fn new(parked: bool) -> Sequencer {
        Sequencer {
            next: AtomicU64::new(0),
            applied: watch::channel(0).0,
            parked: AtomicBool::new(parked),
        }
    }

    /// The next place in the commit order.
    pub fn ticket(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn wait_for_turn(&self, ticket: u64) {
        let mut applied = self.applied.subscribe();
        let _ = applied.wait_for(|applied| *applied + 1 >= ticket).await;
    }

    fn done(&self, ticket: u64) {
        self.applied.send_if_modified(|applied| {
            let advanced = ticket > *applied;
            *applied = (*applied).max(ticket);
            let waiting = self.next.load(Ordering::SeqCst).saturating_sub(*applied);
            COUNTS.set_queue_depth(usize::try_from(waiting).unwrap_or(usize::MAX));
            advanced
        });
    }
}

/// A transaction with a write, as the authoritative side saw it.
#[derive(Debug, Default)]
pub struct Transaction {
    /// `None` when the authoritative side committed it; otherwise it rolled back, with the
    /// error (SQLSTATE and message) that made it, if one did. The other side then runs it
    /// inside a transaction of its own and rolls back too, so that its sequences advance
    /// alike and an outcome only one side had is seen.
    pub rolled_back: Option<Option<String>>,
    /// For a read-only transaction in `shadow`/`live`: the authoritative side's answer, to
    /// compare with the other side's (nothing is written then).
    pub reads: Option<Answer>,
    /// For a write: the rows its statements returned on the authoritative side (`RETURNING`
    /// ids and defaults, `SELECT`s inside it), when not too many to hold; the other side's
    /// must be the same.
    pub returned: Option<Answer>,
    /// The client's messages, in order.
    pub messages: Vec<Message>,
    /// Named statements it uses that were prepared in an earlier transaction.
    pub prerequisites: Vec<(String, Message)>,
    /// The authoritative side's command tags (`INSERT 0 1`, …).
    pub tags: Vec<String>,
    /// A fingerprint of its first write, for records.
    pub fingerprint: String,
    /// When the authoritative side's ReadyForQuery ended it, for the mirror lag.
    pub finished_at: Option<std::time::Instant>,
}

/// Why a transaction was not applied when the shutdown deadline passed ("connection": the
/// session is not reused).
const SHUTDOWN: &str = "connection: tandem shut down before the other side applied it";

/// Where a session's transactions go.
pub type MirrorQueue = mpsc::UnboundedSender<(u64, Transaction)>;

/// What a session's mirror task works with.
#[derive(Debug)]
pub struct MirrorContext {
    /// The other side.
    pub server: ServerAddress,
    /// The client's startup parameters, passed on.
    pub parameters: Vec<(String, String)>,
    /// The commit order.
    pub sequencer: Arc<Sequencer>,
    /// Where failures and mismatches are recorded.
    pub store: ControlStore,
    /// The side the client is served by.
    pub authoritative: Side,
    /// Where its connection comes from and goes back to.
    pub pool: Arc<ServerPool>,
    /// Cancelled when the shutdown deadline has passed: what is left is kept for replay.
    pub stop: CancellationToken,
}

/// Applies one session's transactions on the other side until the session ends, on a
/// connection from the pool that goes back to it unless it broke (or was abandoned). After the shutdown
/// deadline, a transaction still being applied is abandoned and it and the ones queued are
/// kept for replay (at least once: the abandoned one may have been applied).
pub async fn mirror_session(
    context: MirrorContext,
    mut transactions: mpsc::UnboundedReceiver<(u64, Transaction)>,
) {
    let MirrorContext {
        server,
        parameters,
        sequencer,
        store,
        authoritative,
        pool,
        stop,
    } = context;
    let opened = tokio::select! {
        opened = pool.get(&server, &parameters) => opened,
        () = stop.cancelled() => Err(PgProxyError::Protocol(SHUTDOWN.to_owned())),
    };
    let mut connection: Option<Backend> = match opened {
        Ok(backend) => Some(backend),
        Err(err) => {
            tracing::warn!(side = %server.side, error = %err, "cannot open the mirror session");
            None
        }
    };
    let mut prepared = HashSet::new();
    while let Some((ticket, transaction)) = transactions.recv().await {
        sequencer.wait_for_turn(ticket).await;
        // Transactions after one that awaits replay are kept behind it, in commit order.
        if sequencer.parked.load(Ordering::SeqCst) {
            let pending = store
                .has_pending_failure(server.side, SQL_ORDERING_KEY)
                .await
                .unwrap_or(true);
            if pending {
                if transaction.reads.is_none() && transaction.rolled_back.is_none() {
                    COUNTS.mirrored();
                    record_failure(
                        &store,
                        &transaction,
                        server.side,
                        "held behind a transaction awaiting replay",
                    )
                    .await;
                }
                sequencer.done(ticket);
                continue;
            }
            sequencer.parked.store(false, Ordering::SeqCst);
        }
        let started = std::time::Instant::now();
        let outcome = match connection.as_mut() {
            _ if stop.is_cancelled() => Err(SHUTDOWN.to_owned()),
            Some(backend) => tokio::select! {
                applied = apply(&mut backend.stream, &transaction, &mut prepared) => applied,
                () = stop.cancelled() => Err(SHUTDOWN.to_owned()),
            },
            None => Err("connection: no session with the other side".to_owned()),
        };
        let broken = outcome
            .as_ref()
            .err()
            .filter(|reason| reason.starts_with("connection"));
        // A broken session (or one abandoned mid-answer) is never reused: what it would read
        // next is unknown. Later transactions of this session are kept for replay.
        if broken.is_some() {
            connection = None;
        }
        let abandoned = broken.is_some_and(|reason| reason == SHUTDOWN);
        if !abandoned {
            // The other side failed when it could not be reached, or rejected a write the
            // authoritative side committed; errors of reads and rollbacks are its answers.
            let committed_write = transaction.reads.is_none() && transaction.rolled_back.is_none();
            let failed = broken.is_some() || (committed_write && outcome.is_err());
            COUNTS.side_answered(server.side, started.elapsed(), failed);
        }
        if let Some(expected) = &transaction.reads {
            if !abandoned {
                let difference = match &outcome {
                    Ok((_, answer)) => expected.difference(answer, authoritative),
                    Err(reason) => Some(format!("only the other side failed: {reason}")),
                };
                let label = if difference.is_some() {
                    "different"
                } else {
                    "same"
                };
                counter!("tandem_pg_compared_reads_total", "outcome" => label).increment(1);
                COUNTS.compared();
                if let Some(diff) = difference {
                    record_mismatch(&store, &transaction, authoritative, diff).await;
                }
            }
            sequencer.done(ticket);
            continue;
        }
        if let Some(authoritative_error) = &transaction.rolled_back {
            // Rolled back on both sides: only an error one side alone had is worth a record.
            let other_error = outcome.as_ref().err().filter(|_| broken.is_none());
            if broken.is_none() {
                COUNTS.compared();
            }
            let mismatch = match (authoritative_error, other_error) {
                // Nothing was learnt from a session that broke.
                _ if broken.is_some() => None,
                (Some(error), None) => Some(format!("only the authoritative side failed: {error}")),
                (None, Some(error)) => Some(format!("only the other side failed: {error}")),
                (Some(a), Some(b)) if a != b => {
                    Some(format!("the sides failed differently: {a} / {b}"))
                }
                _ => None,
            };
            if let Some(diff) = mismatch {
                record_mismatch(&store, &transaction, authoritative, diff).await;
            }
            sequencer.done(ticket);
            continue;
        }
        COUNTS.mirrored();
        if outcome.is_ok() {
            COUNTS.compared();
        }
        match outcome {
            Ok((tags, answer)) => {
                if let Some(finished) = transaction.finished_at {
                    histogram!("tandem_pg_mirror_lag_seconds")
                        .record(finished.elapsed().as_secs_f64());
                }
                match applied_difference(&transaction, &tags, &answer, authoritative) {
                    None => {
                        counter!("tandem_pg_mirrored_transactions_total", "outcome" => "ok")
                            .increment(1);
                    }
                    Some(diff) => {
                        counter!("tandem_pg_mirrored_transactions_total", "outcome" => "mismatch")
                            .increment(1);
                        record_mismatch(&store, &transaction, authoritative, diff).await;
                    }
                }
            }
            Err(reason) => {
                counter!("tandem_pg_mirrored_transactions_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(side = %server.side, error = %reason, "a mirrored transaction failed");
                record_failure(&store, &transaction, server.side, &reason).await;
                sequencer.parked.store(true, Ordering::SeqCst);
            }
        }
        sequencer.done(ticket);
    }
    // Not at shutdown: the pool is closed then.
    if let Some(backend) = connection.filter(|_| !stop.is_cancelled()) {
        pool.put(&server, &parameters, backend).await;
    }
}

/// How a committed write applied on the other side differs from the authoritative side's:
/// other command tags (rows affected), or other rows returned (e.g. a serial id or a default
/// that came out differently there).
fn applied_difference(
    transaction: &Transaction,
    tags: &[String],
    answer: &Answer,
    authoritative: Side,
) -> Option<String> {
    if tags != transaction.tags {
        let (old, new) = match authoritative {
            Side::Old => (transaction.tags.join("; "), tags.join("; ")),
            Side::New => (tags.join("; "), transaction.tags.join("; ")),
        };
        return Some(format!("command tags differ: old {old:?}, new {new:?}"));
    }
    let returned = transaction.returned.as_ref()?;
    returned
        .difference(answer, authoritative)
        .map(|diff| format!("returned {diff}"))
}

/// Sends the transaction's messages (and the statements they need) while reading the answers
/// (so that large answers cannot stall the writes), until every round got its ReadyForQuery;
/// returns the command tags and the rows read, or the error the other side answered.
async fn apply(
    stream: &mut ServerStream,
    transaction: &Transaction,
    prepared: &mut HashSet<String>,
) -> Result<(Vec<String>, Answer), String> {
    let io = |err: crate::error::PgProxyError| format!("connection: {err}");
    let mut out = BytesMut::new();
    let mut expected = 0usize;
    let parsed_inside = parsed_names(&transaction.messages);
    let mut needed = false;
    for (name, parse) in &transaction.prerequisites {
        if !parsed_inside.contains(name) && prepared.insert(name.clone()) {
            put_message(&mut out, parse.tag, &parse.body).map_err(io)?;
            needed = true;
        }
    }
    // A failed Parse makes the server skip to the next Sync: one of their own keeps it from
    // swallowing the transaction.
    if needed {
        put_message(&mut out, b'S', &[]).map_err(io)?;
        expected += 1;
    }
    // Rolled-back transactions and compared reads change nothing there.
    let rolled_back = transaction.rolled_back.is_some() || transaction.reads.is_some();
    if rolled_back {
        put_message(&mut out, b'Q', b"BEGIN\0").map_err(io)?;
        expected += 1;
    }
    let rounds = ready_rounds(transaction.messages.iter().map(|message| message.tag));
    let syncs_into_copy = transaction
        .messages
        .iter()
        .filter(|message| matches!(message.tag, b'Q' | b'S' | b'F'))
        .count()
        - rounds;
    expected += rounds;
    for message in &transaction.messages {
        match (message.tag, message.body.first()) {
            (b'P', _) => {
                let name = cstr(&message.body);
                if !name.is_empty() {
                    prepared.insert(name);
                }
            }
            // Close of a statement: it is gone on this side too.
            (b'C', Some(b'S')) => {
                prepared.remove(&cstr(&message.body[1..]));
            }
            _ => {}
        }
        // The authoritative side turned its COMMIT into a rollback (an error came first);
        // this side must not commit what it may have accepted.
        match rolled_back.then(|| rolled_back_commit(message)).flatten() {
            Some(rollback) => put_message(&mut out, rollback.tag, &rollback.body),
            None => put_message(&mut out, message.tag, &message.body),
        }
        .map_err(io)?;
    }
    if rolled_back {
        put_message(&mut out, b'Q', b"ROLLBACK\0").map_err(io)?;
        expected += 1;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send = async {
        writer.write_all(&out).await?;
        // Over TLS, written bytes may wait inside the session until flushed.
        writer.flush().await
    };
    let receive = async {
        let (mut tags, mut error, mut read_bytes) = (Vec::new(), None, 0usize);
        let mut read = Answer::default();
        while expected > 0 {
            let answer = read_message(&mut reader).await.map_err(io)?;
            match answer.tag {
                b'T' => read.describe(&answer.body),
                b'D' if read.rows.len() < MAX_COMPARED_ROWS && read_bytes < MAX_COMPARED_BYTES => {
                    read_bytes += answer.body.len();
                    read.rows.push(answer.body.freeze());
                }
                b'C' => tags.push(cstr(&answer.body)),
                b'E' => {
                    let (code, text) = error_fields(&answer.body);
                    error.get_or_insert(format!("{code}: {text}"));
                }
                b'Z' => expected -= 1,
                _ => {}
            }
        }
        Ok::<_, String>((tags, error, read))
    };
    let (sent, received) = tokio::join!(send, receive);
    sent.map_err(|err| io(err.into()))?;
    let (mut tags, error, read) = received?;
    // BEGIN and ROLLBACK around a rolled-back transaction or a read are not its own tags.
    if rolled_back && tags.len() >= 2 {
        tags.remove(0);
        tags.pop();
    }
    match error {
        // A COPY that failed before copy-in answers the Syncs the others ignored: what comes
        // next on this session is unknown, so it is not reused.
        Some(error) if syncs_into_copy > 0 => Err(format!(
            "connection: {error} (during a COPY; the session is not reused)"
        )),
        Some(error) => Err(error),
        None => Ok((tags, read)),
    }
}

/// `message` as ROLLBACK when it commits (`COMMIT`, `END`, as a Query or a Parse).
fn rolled_back_commit(message: &Message) -> Option<Message> {
    match message.tag {
        b'Q' if is_commit(&cstr(&message.body)) => Some(Message {
            tag: b'Q',
            body: BytesMut::from(&b"ROLLBACK\0"[..]),
        }),
        b'P' => {
            let name_end = message.body.iter().position(|byte| *byte == 0)?;
            let sql = cstr(message.body.get(name_end + 1..)?);
            if !is_commit(&sql) {
                return None;
            }
            let rest = message.body.get(name_end + 1 + sql.len() + 1..)?;
            let mut body = BytesMut::from(&message.body[..=name_end]);
            body.extend_from_slice(b"ROLLBACK\0");
            body.extend_from_slice(rest);
            Some(Message { tag: b'P', body })
        }
        _ => None,
    }
}

/// The statement names `messages` prepare.
fn parsed_names(messages: &[Message]) -> HashSet<String> {
    messages
        .iter()
        .filter(|message| message.tag == b'P')
        .map(|message| cstr(&message.body))
        .collect()
}

pub(crate) fn cstr(body: &[u8]) -> String {
    let end = body
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

async fn record_mismatch(
    store: &ControlStore,
    transaction: &Transaction,
    authoritative: Side,
    diff: String,
) {
    COUNTS.mismatched();
    let mismatch = NewResponseMismatch {
        request_id: format!("pg-{}", Timestamp::now().millis()),
        method: "SQL".to_owned(),
        path: transaction.fingerprint.clone(),
        route: "pg".to_owned(),
        authoritative,
        status_old: 200,
        status_new: 200,
        diff,
    };
    if let Err(err) = store.insert_response_mismatch(&mismatch).await {
        tracing::error!(error = %err, "cannot record a mirrored transaction's mismatch");
    }
}

/// Keeps a transaction the other side did not apply, for `tandem pg-replay`: its messages
/// (after the statements it needs that were prepared earlier), pending, in commit order.
async fn record_failure(store: &ControlStore, transaction: &Transaction, side: Side, reason: &str) {
    COUNTS.mirror_failed();
    let parsed_inside = parsed_names(&transaction.messages);
    let needed = transaction
        .prerequisites
        .iter()
        .filter(|(name, _)| !parsed_inside.contains(name))
        .map(|(_, parse)| parse);
    // The statements it needs end with a Sync of their own, as when it was applied.
    let needed: Vec<&Message> = needed.collect();
    let sync = Message {
        tag: b'S',
        body: BytesMut::new(),
    };
    let separator = (!needed.is_empty()).then_some(&sync);
    let mut body = Vec::new();
    for message in needed
        .into_iter()
        .chain(separator)
        .chain(&transaction.messages)
    {
        body.push(message.tag);
        body.extend_from_slice(
            &u32::try_from(message.body.len() + 4)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        body.extend_from_slice(&message.body);
    }
    let failure = NewMirrorFailure {
        request_id: format!("pg-{}", Timestamp::now().millis()),
        target: side,
        method: "SQL".to_owned(),
        uri: transaction.fingerprint.clone(),
        headers: Vec::new(),
        body: Some(body),
        ordering_key: SQL_ORDERING_KEY.to_owned(),
        reason: "pg_transaction_failed".to_owned(),
        last_error: reason.to_owned(),
        attempts: 1,
        status: FailureStatus::Pending,
        accepted_at: Timestamp::now(),
        accepted_seq: 0,
    };
    if let Err(err) = store.insert_mirror_failure(&failure).await {
        tracing::error!(error = %err, "cannot record a failed mirrored transaction");
    }
}
