//! The relay of `old-only` and `new-only` sessions: bytes are copied both ways in large chunks,
//! and only message boundaries are followed, to notice the client's Terminate, whether the
//! server connection ends idle and can be pooled, and when the session is between
//! transactions for a stage change to take effect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::counter;
use tandem_control::{Side, Stage, StageRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::PgProxyError;
use crate::front_door::cancel;
use crate::session::CancelTarget;
use crate::stream::ServerStream;
use crate::telemetry::COUNTS;
use crate::wal_mirror::{Readiness, WalMirror};

/// Chunk size of each direction.
const CHUNK: usize = 32 * 1024;

/// Follows message boundaries across chunks: `tag`, then a length that counts itself, then
/// the body.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; 5],
    filled: usize,
    body_left: usize,
    /// The next body byte is a ReadyForQuery's transaction status.
    status_next: bool,
    /// The last ReadyForQuery's transaction status (`I`, `T` or `E`).
    status: u8,
    /// A length was impossible: boundaries are no longer known.
    lost: bool,
}

impl FrameScanner {
    /// Walks `chunk`, calling `started(tag)` for each message whose header completes in it;
    /// stops when `started` returns `true`, returning where that message's tag is (`None`
    /// when it was in an earlier chunk).
    fn scan(&mut self, chunk: &[u8], mut started: impl FnMut(u8) -> bool) -> Option<Option<usize>> {
        let mut at = 0;
        while at < chunk.len() && !self.lost {
            if self.body_left > 0 {
                if self.status_next {
                    self.status = chunk[at];
                    self.status_next = false;
                }
                let take = self.body_left.min(chunk.len() - at);
                self.body_left -= take;
                at += take;
                continue;
            }
            let header_start = at.checked_sub(self.filled);
            let take = (5 - self.filled).min(chunk.len() - at);
            self.header[self.filled..self.filled + take].copy_from_slice(&chunk[at..at + take]);
            self.filled += take;
            at += take;
            if self.filled < 5 {
                break;
            }
            self.filled = 0;
            let tag = self.header[0];
            let length = i32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            let Some(body) = usize::try_from(length)
                .ok()
                .and_then(|length| length.checked_sub(4))
            else {
                self.lost = true;
                break;
            };
            self.body_left = body;
            self.status_next = tag == b'Z' && body > 0;
            if started(tag) {
                return Some(header_start);
            }
        }
        None
    }

    /// Whether the last message seen is complete.
    fn at_boundary(&self) -> bool {
        !self.lost && self.filled == 0 && self.body_left == 0
    }
}

/// How a direct relay ended.
#[derive(Debug)]
pub enum DirectEnd {
    /// Either end left; the server connection can be pooled when the client ended with a
    /// Terminate while the server was idle with every request answered.
    Left {
        /// Whether the connection can be pooled.
        reusable: bool,
    },
    /// The stage started mirroring: the session goes on in the mirroring relay, starting
    /// with these bytes the client sent (the start of its next request, not yet forwarded).
    Mirror {
        /// What the client sent, unforwarded.
        leftover: Vec<u8>,
    },
    /// A transaction was about to start while the capture of a stage that mirrors writes had
    /// not begun, and it did not within the switch timeout: the session is refused (its
    /// request was not forwarded).
    Refused {
        /// What the capture's start waits for.
        reason: String,
    },
    /// The stage made the other side authoritative: the session must leave this side (its
    /// server connection was idle, or the grace for its open transaction passed).
    SideChanged {
        /// Whether it stopped between transactions with every request answered (it may go on
        /// with the other side).
        idle: bool,
        /// What the client sent of its next request, unforwarded (it goes with the session).
        leftover: Vec<u8>,
    },
}

/// What a relay needs to follow the stage.
#[derive(Debug)]
pub struct StageFollow<'a> {
    /// Stage changes.
    pub stages: &'a mut watch::Receiver<StageRecord>,
    /// The side serving the session.
    pub side: Side,
    /// How long an open transaction may go on once the other side became authoritative.
    pub grace: Duration,
    /// The write-ahead-log mirror, when it carries writes (then only comparing reads needs
    /// the tracked relay, and a transaction starts only once the stage's capture has begun).
    pub wal: Option<&'a WalMirror>,
    /// The server session, cancelled when a request still runs as the grace ends.
    pub cancel: &'a CancelTarget,
}

/// Whether sessions need the tracked relay in `stage`: to carry their statements to the
/// other side, or (with the write-ahead-log capture carrying the writes) to compare reads.
#[must_use]
pub fn tracks(stage: Stage, wal: bool) -> bool {
    if wal {
        stage.compares_reads()
    } else {
        stage.mirrors_writes()
    }
}

/// Relays until either end leaves or the stage asks for more than a byte copy; see
/// [`DirectEnd`].
///
/// # Errors
/// When a connection fails.
pub async fn relay_direct(
    client: &mut TcpStream,
    server: &mut ServerStream,
    follow: StageFollow<'_>,
) -> Result<DirectEnd, PgProxyError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    // Requests that each get one ReadyForQuery (Query, Sync, FunctionCall) and the answers seen.
    let (asked, answered) = (AtomicU64::new(0), AtomicU64::new(0));
    // Extended messages since the last Sync: the connection is then in an implicit
    // transaction the client abandoned, and is not reused.
    let unsynced = AtomicBool::new(false);
    // The stage started mirroring: the next request goes to the mirroring relay.
    let switch = AtomicBool::new(false);
    // The other side became authoritative: the next request that starts with every answer
    // delivered is held, and goes with the session to that side (a client that sends its next
    // request at once would otherwise never be seen idle between two); from the start when
    // the stage named the other side before the relay began.
    let left_before = follow.stages.borrow().stage.authoritative() != follow.side;
    let leaving = AtomicBool::new(left_before);
    let answers = std::sync::Mutex::new(FrameScanner::default());
    // Answers read from the server and not yet written to the client.
    let delivering = AtomicBool::new(false);
    // A request read and held, unsent, while its transaction waits to start (see upstream).
    let held = std::sync::Mutex::new(Vec::new());
    // Bytes of a request the client has only begun to send (already passed to the server).
    let partial = AtomicBool::new(false);
    // Every request answered, outside a transaction (the last answer may still be on its way
    // to the client).
    let answered_all = || {
        asked.load(Ordering::SeqCst) == answered.load(Ordering::SeqCst)
            && !unsynced.load(Ordering::SeqCst)
            && !partial.load(Ordering::SeqCst)
            && answers.lock().is_ok_and(|answers| {
                answers.at_boundary() && answers.status != b'T' && answers.status != b'E'
            })
    };
    let idle = || answered_all() && !delivering.load(Ordering::SeqCst);
    // The stage as it is now (read when a transaction starts, whatever the select below has
    // seen of it yet).
    let (current, wal, side) = (follow.stages.clone(), follow.wal, follow.side);
    let upstream = async {
        let mut requests = FrameScanner::default();
        let mut chunk = vec![0u8; CHUNK];
        let mut last_tag = 0u8;
        loop {
            let read = client_read.read(&mut chunk).await?;
            if read == 0 {
                return Ok::<DirectEnd, PgProxyError>(DirectEnd::Left { reusable: false });
            }
            // A transaction starts here: under a stage that mirrors writes, only once its
            // capture has begun (its slot consistent), so that it is captured. The request is
            // held while it waits: a stage naming the other side meanwhile may end the relay
            // (below), and the request then goes with the session there.
            if let Some(mirror) = wal {
                if requests.at_boundary() && answered_all() && !leaving.load(Ordering::SeqCst) {
                    hold(&held, &chunk[..read]);
                    let ready = mirror.ready_for(side, &current).await;
                    take(&held);
                    match ready {
                        Ok(Readiness::Ready) => {}
                        Ok(Readiness::Moved) => leaving.store(true, Ordering::SeqCst),
                        Err(reason) => return Ok(DirectEnd::Refused { reason }),
                    }
                }
            }
            // Leaving comes first: a session whose side the stage no longer names moves, even
            // when the stage mirrors writes now.
            if leaving.load(Ordering::SeqCst) && requests.at_boundary() && answered_all() {
                // The client sent this after reading the last answer: its delivery is ending.
                hold(&held, &chunk[..read]);
                while delivering.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                return Ok(DirectEnd::SideChanged {
                    idle: true,
                    leftover: take(&held),
                });
            }
            if switch.load(Ordering::SeqCst) && requests.at_boundary() && idle() {
                return Ok(DirectEnd::Mirror {
                    leftover: chunk[..read].to_vec(),
                });
            }
            let terminate = requests.scan(&chunk[..read], |tag| {
                match tag {
                    b'Q' | b'S' | b'F' => {
                        asked.fetch_add(1, Ordering::SeqCst);
                        unsynced.store(false, Ordering::SeqCst);
                    }
                    // COPY data right after a Sync (libpq's extended-protocol COPY): the server
                    // ignored that Sync in copy-in mode and answers only the one after the data.
                    b'd' | b'c' | b'f' if last_tag == b'S' => {
                        asked.fetch_sub(1, Ordering::SeqCst);
                    }
                    // COPY data belongs to the Query (or Sync) that started the COPY.
                    b'X' | b'd' | b'c' | b'f' => {}
                    _ => unsynced.store(true, Ordering::SeqCst),
                }
                last_tag = tag;
                tag == b'X'
            });
            match terminate {
                // The server never sees the Terminate: the connection may serve another client.
                Some(Some(offset)) => {
                    server_write.write_all(&chunk[..offset]).await?;
                    server_write.flush().await?;
                    return Ok(DirectEnd::Left {
                        reusable: !unsynced.load(Ordering::SeqCst),
                    });
                }
                // Part of it was already sent: the server gets the rest and ends.
                Some(None) => {
                    server_write.write_all(&chunk[..read]).await?;
                    server_write.flush().await?;
                    return Ok(DirectEnd::Left { reusable: false });
                }
                // Over TLS, written bytes may wait inside the session until flushed.
                None => {
                    partial.store(!requests.at_boundary(), Ordering::SeqCst);
                    server_write.write_all(&chunk[..read]).await?;
                    server_write.flush().await?;
                }
            }
        }
    };
    let downstream = async {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let read = server_read.read(&mut chunk).await?;
            if read == 0 {
                return Ok::<(), PgProxyError>(());
            }
            // Until these bytes reached the client the relay is not idle: it never stops (to
            // move or end the session) with an answer half delivered.
            delivering.store(true, Ordering::SeqCst);
            if let Ok(mut answers) = answers.lock() {
                answers.scan(&chunk[..read], |tag| {
                    if tag == b'Z' {
                        answered.fetch_add(1, Ordering::SeqCst);
                        COUNTS.served();
                    }
                    false
                });
            }
            client_write.write_all(&chunk[..read]).await?;
            delivering.store(false, Ordering::SeqCst);
        }
    };
    let mut upstream = std::pin::pin!(upstream);
    let mut downstream = std::pin::pin!(downstream);
    let mut side_changed = left_before.then(tokio::time::Instant::now);
    let mut watching = true;
    let mut tick = tokio::time::interval(STAGE_CHECK);
    let mut cancelled: Option<tokio::time::Instant> = None;
    let ended = loop {
        tokio::select! {
            up = &mut upstream => break up?,
            down = &mut downstream => {
                down?;
                break DirectEnd::Left { reusable: false };
            }
            changed = follow.stages.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let stage = follow.stages.borrow_and_update().stage;
                if stage.authoritative() != follow.side {
                    side_changed.get_or_insert_with(tokio::time::Instant::now);
                    leaving.store(true, Ordering::SeqCst);
                } else if tracks(stage, follow.wal.is_some()) {
                    switch.store(true, Ordering::SeqCst);
                }
            }
            _ = tick.tick(), if side_changed.is_some() => {}
        }
        if let Some(since) = side_changed {
            if idle() {
                break DirectEnd::SideChanged {
                    idle: true,
                    leftover: held
                        .lock()
                        .map(|mut held| std::mem::take(&mut *held))
                        .unwrap_or_default(),
                };
            }
            let answering = asked.load(Ordering::SeqCst) != answered.load(Ordering::SeqCst)
                || delivering.load(Ordering::SeqCst);
            if since.elapsed() >= follow.grace {
                if !answering {
                    break DirectEnd::SideChanged {
                        idle: false,
                        leftover: Vec::new(),
                    };
                }
                // A request still running would go on (an autocommit statement commits) after
                // the session ended and the switch moved on: it is cancelled and its answer
                // awaited, so that whatever it committed did so before the session ended.
                if cancelled.is_none() {
                    cancelled = Some(tokio::time::Instant::now());
                    if let Err(err) = cancel(follow.cancel).await {
                        tracing::warn!(error = %err, "cannot cancel a request at a stage change");
                    }
                }
                if cancelled.is_some_and(|at| at.elapsed() >= CANCEL_WAIT) {
                    tracing::error!(
                        "a request still unanswered after its cancel at a stage change; what it \
                         does on the side before is not carried"
                    );
                    counter!("tandem_pg_transactions_in_doubt_total").increment(1);
                    break DirectEnd::SideChanged {
                        idle: false,
                        leftover: Vec::new(),
                    };
                }
            }
        }
    };
    let ended = match ended {
        DirectEnd::Left { reusable } => DirectEnd::Left {
            reusable: reusable
                && asked.load(Ordering::SeqCst) == answered.load(Ordering::SeqCst)
                && answers
                    .lock()
                    .is_ok_and(|answers| answers.at_boundary() && answers.status == b'I'),
        },
        other => other,
    };
    Ok(ended)
}

/// Holds `bytes` in `held` (read from the client, not sent).
fn hold(held: &std::sync::Mutex<Vec<u8>>, bytes: &[u8]) {
    if let Ok(mut held) = held.lock() {
        held.clear();
        held.extend_from_slice(bytes);
    }
}

/// The bytes `held` holds, leaving it empty.
fn take(held: &std::sync::Mutex<Vec<u8>>) -> Vec<u8> {
    held.lock()
        .map(|mut held| std::mem::take(&mut *held))
        .unwrap_or_default()
}

/// How often a session waiting to end for a stage change checks whether it can.
pub const STAGE_CHECK: Duration = Duration::from_millis(50);

/// How long a request cancelled at the end of the stage grace may take to answer.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![tag];
        frame.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn boundaries_and_status_are_followed_across_any_split() {
        let mut wire = frame(b'C', b"SELECT 1\0");
        wire.extend(frame(b'Z', b"T"));
        wire.extend(frame(b'D', &[0, 1, 0, 0, 0, 1, b'x']));
        wire.extend(frame(b'Z', b"I"));
        let terminate_at = wire.len();
        wire.extend(frame(b'X', b""));
        for split in 0..=wire.len() {
            let mut scanner = FrameScanner::default();
            let (mut tags, mut found) = (Vec::new(), None);
            for (base, part) in [(0, &wire[..split]), (split, &wire[split..])] {
                if let Some(offset) = scanner.scan(part, |tag| {
                    tags.push(tag);
                    tag == b'X'
                }) {
                    found = Some(offset.map(|offset| base + offset));
                }
            }
            assert_eq!(tags, b"CZDZX", "split at {split}");
            assert_eq!(scanner.status, b'I', "split at {split}");
            assert!(scanner.at_boundary(), "split at {split}");
            let expected = if split > terminate_at && split < wire.len() {
                None
            } else {
                Some(terminate_at)
            };
            assert_eq!(found, Some(expected), "split at {split}");
        }
    }

    #[test]
    fn an_impossible_length_loses_the_boundaries() {
        let mut scanner = FrameScanner::default();
        scanner.scan(&[b'Q', 0, 0, 0, 2, b'x'], |_| false);
        assert!(!scanner.at_boundary());
    }
}
