//! `tandem pg-replay`: sends the kept PostgreSQL transactions to the side they were meant
//! for, in the order the authoritative side committed them, stopping at the first that fails
//! again (the rest stay pending behind it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::stream::ServerStream;
use serde::Serialize;
use tandem_control::{ControlStore, CopyKind, Side};
use tokio::io::AsyncWriteExt;

use crate::backend::{connect, ServerAddress};
use crate::error::PgProxyError;
use crate::mirror::cstr;
use crate::protocol::{
    decode_parameters, error_fields, put_message, read_message, ready_rounds, Message, PgCodec,
};

/// How long one kept transaction may take to apply.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a replay's claim on a transaction holds before another replay may take it over.
const LEASE: Duration = Duration::from_secs(300);

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PgReplayReport {
    /// Transactions applied and marked replayed.
    pub replayed: usize,
    /// Transactions that failed again (they stay pending).
    pub failed: usize,
    /// Transactions not sent (behind a failed one, or meant for the side now authoritative).
    pub held: usize,
    /// One line per transaction not applied.
    pub problems: Vec<String>,
    /// The transaction skipped before this replay, when one was.
    pub skipped: Option<i64>,
    /// The transaction that failed again and holds the rest behind it.
    pub blocked_by: Option<Blocker>,
}

/// A kept transaction that failed again, holding every later one behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// Its id (for `--skip`).
    pub id: i64,
    /// The side it was meant for.
    pub target: Side,
    /// A literal-free fingerprint of its first write.
    pub fingerprint: String,
    /// Why it failed.
    pub reason: String,
}

/// A kept transaction to skip before replaying, with who skips it and why (audited).
#[derive(Debug, Clone)]
pub struct Skip {
    /// Its id.
    pub id: i64,
    /// Why.
    pub reason: String,
    /// Who.
    pub by: String,
}

impl PgReplayReport {
    /// Whether every pending transaction was applied.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.held == 0
    }
}

/// Replays every pending transaction, in commit order, after skipping `skip` (audited, and
/// alerted so the comparator and repair settle what it left).
///
/// # Errors
/// When a URL is unusable, `skip` names no kept transaction awaiting replay, or the control
/// store cannot be read or written.
pub async fn replay_transactions(
    store: &ControlStore,
    old: &str,
    new: &str,
    skip: Option<&Skip>,
) -> Result<PgReplayReport, PgProxyError> {
    let servers = [
        ServerAddress::parse(Side::Old, old)?,
        ServerAddress::parse(Side::New, new)?,
    ];
    let mut report = PgReplayReport::default();
    if let Some(skip) = skip {
        let kept = store.mirror_failure(skip.id).await?;
        if kept.is_none_or(|failure| failure.method != "SQL")
            || store
                .skip_mirror_failure(skip.id, &skip.by, &skip.reason)
                .await?
                .is_none()
        {
            return Err(PgProxyError::NothingToSkip(skip.id));
        }
        report.skipped = Some(skip.id);
    }
    let authoritative = store.current_stage().await?.stage.authoritative();
    let candidates = store.replay_candidates(LEASE, CopyKind::Sql).await?;
    // A session per side and set of startup parameters the kept transactions came with.
    let mut sessions: HashMap<(Side, Vec<u8>), (ServerStream, HashSet<String>)> = HashMap::new();
    let mut stopped = false;
    for failure in candidates {
        if stopped || failure.target == authoritative {
            report.held += 1;
            report.problems.push(format!(
                "#{} held: {}",
                failure.id,
                if stopped {
                    "behind a transaction that failed again"
                } else {
                    "its side is authoritative now"
                }
            ));
            stopped = true;
            continue;
        }
        if !store.claim_mirror_failure(failure.id, LEASE).await? {
            report.held += 1;
            report
                .problems
                .push(format!("#{} held: another replay has it", failure.id));
            stopped = true;
            continue;
        }
        let Some(body) = failure.body.as_deref() else {
            store
                .record_replay_failure(failure.id, "its messages were not kept")
                .await?;
            report.failed += 1;
            report.blocked_by.get_or_insert(Blocker {
                id: failure.id,
                target: failure.target,
                fingerprint: failure.uri.clone(),
                reason: "its messages were not kept".to_owned(),
            });
            stopped = true;
            continue;
        };
        let server = &servers[usize::from(failure.target == Side::New)];
        let session = match sessions.entry((failure.target, failure.headers.clone())) {
            std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::hash_map::Entry::Vacant(entry) => {
                connect(server, &decode_parameters(&failure.headers))
                    .await
                    .map(|backend| entry.insert((backend.stream, HashSet::new())))
            }
        };
        let applied = match session {
            Ok((stream, prepared)) => apply(stream, prepared, body).await,
            Err(err) => Err(err.to_string()),
        };
        match applied {
            Ok(()) => {
                store.mark_mirror_failure_replayed(failure.id).await?;
                report.replayed += 1;
            }
            Err(reason) => {
                store.record_replay_failure(failure.id, &reason).await?;
                report.failed += 1;
                report
                    .problems
                    .push(format!("#{} failed again: {reason}", failure.id));
                report.blocked_by.get_or_insert(Blocker {
                    id: failure.id,
                    target: failure.target,
                    fingerprint: failure.uri.clone(),
                    reason: reason.clone(),
                });
                sessions.remove(&(failure.target, failure.headers.clone()));
                stopped = true;
            }
        }
    }
    Ok(report)
}

/// Sends a kept transaction's messages on a session reset with `DISCARD ALL` (a kept
/// transaction brings its own session settings and prepared statements) and reads the
/// answers to the end. It applied when its last statement ended as the authoritative side's
/// did (`COMMIT`, `PREPARE TRANSACTION`; a rollback, whatever its statements did, once it
/// ran), or, for one statement alone, when it did not fail.
async fn apply(
    stream: &mut ServerStream,
    prepared: &mut HashSet<String>,
    body: &[u8],
) -> Result<(), String> {
    let io = |err: PgProxyError| format!("connection: {err}");
    let messages = frames(body)?;
    let ending = messages
        .iter()
        .rev()
        .find(|message| matches!(message.tag, b'Q' | b'S'))
        .filter(|message| message.tag == b'Q')
        .map(|message| cstr(&message.body).trim().to_ascii_uppercase());
    let expected_end = match ending.as_deref() {
        Some("COMMIT") => Some("COMMIT"),
        Some("ROLLBACK") => Some(""),
        Some(sql) if sql.starts_with("PREPARE TRANSACTION") => Some("PREPARE TRANSACTION"),
        _ => None,
    };
    let begins = messages.iter().any(|message| {
        message.tag == b'Q' && {
            let sql = cstr(&message.body).trim_start().to_ascii_uppercase();
            sql.starts_with("BEGIN") || sql.starts_with("START TRANSACTION")
        }
    });
    // A kept transaction of this version opens a block; older records are single rounds.
    let expected_end = expected_end.filter(|_| begins);
    let mut expected = ready_rounds(messages.iter().map(|message| message.tag)) + 1;
    let wrapped = messages
        .iter()
        .filter(|message| {
            message.tag == b'Q' && cstr(&message.body) == "SAVEPOINT tandem_failed_statement"
        })
        .count();
    prepared.clear();
    let mut wire = bytes::BytesMut::new();
    put_message(&mut wire, b'Q', b"DISCARD ALL\0").map_err(io)?;
    for message in messages {
        if message.tag == b'P' {
            let name = cstr(&message.body);
            if !name.is_empty() && !prepared.insert(name.clone()) {
                let mut close = vec![b'S'];
                close.extend_from_slice(name.as_bytes());
                close.push(0);
                put_message(&mut wire, b'C', &close).map_err(io)?;
            }
        }
        put_message(&mut wire, message.tag, &message.body).map_err(io)?;
    }
    // Written while the answers are read: a large transaction cannot stall on full buffers.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send = async {
        writer.write_all(&wire).await?;
        // Over TLS, written bytes may wait inside the session until flushed.
        writer.flush().await
    };
    let receive = async {
        let (mut error, mut last_tag, mut errors) = (None, String::new(), 0usize);
        while expected > 0 {
            let answer = read_message(&mut reader).await.map_err(io)?;
            match answer.tag {
                b'E' => {
                    let (code, text) = error_fields(&answer.body);
                    error.get_or_insert(format!("{code}: {text}"));
                    errors += 1;
                }
                b'C' => last_tag = cstr(&answer.body),
                b'Z' => expected -= 1,
                _ => {}
            }
        }
        Ok::<_, String>((error, last_tag, errors))
    };
    let (sent, received) =
        tokio::time::timeout(REPLAY_TIMEOUT, async { tokio::join!(send, receive) })
            .await
            .map_err(|_| format!("connection: no answer within {REPLAY_TIMEOUT:?}"))?;
    sent.map_err(|err| io(err.into()))?;
    let (error, last_tag, errors) = received?;
    // Only statements that failed on the authoritative side (each run inside its own
    // savepoint) may fail here; any other error means it did not run as it ran there.
    if errors > wrapped {
        return Err(error.unwrap_or_default());
    }
    match expected_end {
        Some("") => Ok(()),
        Some(tag) if last_tag == tag => Ok(()),
        Some(tag) => Err(error.unwrap_or_else(|| format!("it ended with {last_tag}, not {tag}"))),
        None => error.map_or(Ok(()), Err),
    }
}

/// The messages of a kept transaction (tag, length, body, back to back).
fn frames(body: &[u8]) -> Result<Vec<Message>, String> {
    use tokio_util::codec::Decoder;
    let mut buffer = bytes::BytesMut::from(body);
    let mut codec = PgCodec::default();
    let mut messages = Vec::new();
    while let Some(message) = codec.decode(&mut buffer).map_err(|err| err.to_string())? {
        messages.push(message);
    }
    if buffer.is_empty() {
        Ok(messages)
    } else {
        Err("the kept messages are truncated".to_owned())
    }
}
