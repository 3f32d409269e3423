//! Mirroring a session's transactions to the other side: each session has a connection to
//! the other side, and the transactions the tracker saw end are carried there whole, one at a
//! time across all sessions, in the order the authoritative side ended them. The other side
//! failing never touches the client: failures and differing outcomes are recorded, and what
//! the other side did not apply is kept for `tandem pg-replay`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{counter, gauge, histogram};
use tandem_control::{
    ControlStore, FailureStatus, NewMirrorFailure, NewResponseMismatch, Side, Timestamp,
    SQL_ORDERING_KEY,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, ServerAddress};
use crate::baseline::Setting;
use crate::carry::{Plan, PreparedStatements, Purpose, Verdict};
use crate::in_doubt::{self, Resolution};
use crate::pool::ServerPool;
use crate::reported;
use crate::telemetry::COUNTS;
use crate::tracker::{End, Finished, SessionState};
use crate::wal_mirror::WalMirror;

/// Hands out the commit order and lets each transaction wait for its turn; and whether
/// transactions are parked because an earlier one awaits replay.
#[derive(Debug)]
pub struct Sequencer {
    next: AtomicU64,
    applied: watch::Sender<u64>,
    parked: AtomicBool,
    /// Transactions handed out and not yet settled, by the side they go to (old, new).
    owed: [AtomicU64; 2],
    /// The most transactions handed out and not yet settled before transaction ends wait.
    max_backlog: u64,
}

impl Sequencer {
    /// A sequencer holding at most `max_backlog` transactions (see
    /// [`Sequencer::within_backlog`]); `parked` when the store already holds transactions
    /// awaiting replay.
    #[must_use]
    pub fn new(max_backlog: u64, parked: bool) -> Sequencer {
        Sequencer {
            next: AtomicU64::new(0),
            applied: watch::channel(0).0,
            parked: AtomicBool::new(parked),
            owed: [AtomicU64::new(0), AtomicU64::new(0)],
            max_backlog,
        }
    }

    /// Returns once fewer than the maximum backlog of transactions are handed out and not
    /// settled: a session calls it before telling its client a transaction ended, so that a
    /// slow other side slows the clients down instead of growing tandem's memory without
    /// bound. Returns whether it had to wait.
    pub async fn within_backlog(&self) -> bool {
        if self.owed_total() < self.max_backlog {
            return false;
        }
        let started = std::time::Instant::now();
        let mut applied = self.applied.subscribe();
        let _ = applied
            .wait_for(|_| self.owed_total() < self.max_backlog)
            .await;
        histogram!("tandem_pg_mirror_backpressure_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        true
    }

    /// The next place in the commit order, for a transaction going to `target`.
    pub fn ticket(&self, target: Side) -> u64 {
        self.owed[usize::from(target == Side::New)].fetch_add(1, Ordering::SeqCst);
        let ticket = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        publish_queue_depth(self.owed_total());
        ticket
    }

    /// Transactions handed out and not yet settled, to either side. (Equal to the tickets
    /// above the highest settled while they settle in order; reads carried out of order only
    /// to compare, under WAL capture, keep it exact.)
    fn owed_total(&self) -> u64 {
        self.owed
            .iter()
            .map(|owed| owed.load(Ordering::SeqCst))
            .sum()
    }

    async fn wait_for_turn(&self, ticket: u64) {
        let mut applied = self.applied.subscribe();
        let _ = applied.wait_for(|applied| *applied + 1 >= ticket).await;
    }

    /// Waits up to `within` until no transaction is still going to `side` (so a session
    /// served by it sees every write acknowledged before); the number still owed otherwise.
    pub async fn settled_for(&self, side: Side, within: std::time::Duration) -> Result<(), u64> {
        let owed = &self.owed[usize::from(side == Side::New)];
        let mut applied = self.applied.subscribe();
        let settled = tokio::time::timeout(within, async {
            applied
                .wait_for(|_| owed.load(Ordering::SeqCst) == 0)
                .await
                .is_ok()
        })
        .await;
        match (settled, owed.load(Ordering::SeqCst)) {
            (Ok(true), _) | (_, 0) => Ok(()),
            (_, left) => Err(left),
        }
    }

    fn done(&self, ticket: u64, target: Side) {
        let owed = &self.owed[usize::from(target == Side::New)];
        let _ = owed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        });
        // Waiters are woken at every settlement (the backlog fell), not only when the highest
        // settled ticket moved.
        self.applied
            .send_modify(|applied| *applied = (*applied).max(ticket));
        publish_queue_depth(self.owed_total());
    }
}

/// Transactions handed to the other side and not yet settled there, in the flushed counts and
/// `tandem_mirror_queue_depth`.
fn publish_queue_depth(waiting: u64) {
    let depth = usize::try_from(waiting).unwrap_or(usize::MAX);
    COUNTS.set_queue_depth(depth);
    #[allow(clippy::cast_precision_loss)]
    gauge!("tandem_mirror_queue_depth").set(depth as f64);
}

/// Why a transaction was not applied when the shutdown deadline passed.
const SHUTDOWN: &str = "connection: tandem shut down before the other side applied it";

/// Where a session's transactions go.
pub type MirrorQueue = mpsc::UnboundedSender<Carried>;

/// What a session's mirror task works with.
#[derive(Debug)]
pub struct MirrorContext {
    /// The other side.
    pub server: ServerAddress,
    /// The client's startup parameters, passed on.
    pub parameters: Vec<(String, String)>,
    /// The reported parameters the client was told (at login, and anew when its session
    /// moved), which its statements were written with: a connection to the other side takes
    /// them on before the session's own settings (its `SET`s since, in its state).
    pub told: Vec<(String, String)>,
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
    /// The write-ahead-log mirror (`--capture wal`), which carries the session's writes.
    pub wal: Option<Arc<WalMirror>>,
    /// Write transactions the session committed (counted under `--capture wal`, whose capture
    /// carries them): one committed after a read, applied there before the read's copy ran,
    /// explains a difference.
    pub session_writes: Arc<AtomicU64>,
}

/// A transaction to carry to the other side, with its place in the commit order.
#[derive(Debug)]
pub struct Carried {
    /// Its place in the commit order.
    pub ticket: u64,
    /// Whether it waits for every transaction ticketed before it (across sessions): all but
    /// those carried while the write-ahead-log capture carries the writes (reads to compare,
    /// session settings), which have nothing of other sessions' to wait for (a session's own
    /// transactions still go in order, one queue per session).
    pub in_order: bool,
    /// Why it goes there.
    pub purpose: Purpose,
    /// Whether the session committed writes the capture carries since its last transaction
    /// carried here: it runs only once they are applied (else a read of what the session just
    /// wrote would race the capture and differ).
    pub after_writes: bool,
    /// The session's write transactions committed when it ended (see
    /// [`MirrorContext::session_writes`]).
    pub writes_before: u64,
    /// What the authoritative side did.
    pub transaction: Finished,
}

/// A session's connection to the other side, with what it has been told.
#[derive(Debug)]
struct MirrorConnection {
    backend: Backend,
    prepared: PreparedStatements,
    /// The session settings it has (`None`: unknown, after a plan that did not finish).
    state: Option<Arc<SessionState>>,
    /// The settings that gave it the reported parameters the client was told, made again
    /// after a `DISCARD ALL`.
    baseline: Vec<Setting>,
}

/// Applies one session's transactions on the other side until the session ends, on a
/// connection from the pool that goes back to it unless it broke (or was abandoned). A
/// connection that broke is replaced before the next transaction, and brought to the
/// session's settings first. After the shutdown deadline, a transaction still being applied
/// is abandoned and it and the ones queued are kept for replay (at least once: the abandoned
/// one may have been applied).
pub async fn mirror_session(context: MirrorContext, mut queue: mpsc::UnboundedReceiver<Carried>) {
    let mut connection: Option<MirrorConnection> = None;
    // The settings the last connection took on the client's parameters with: a transaction
    // kept for replay makes them first (after those that set every parameter shaping what
    // statements mean, see `record_failure`).
    let mut baseline: Vec<Setting> = Vec::new();
    while let Some(carried) = queue.recv().await {
        let Carried {
            ticket,
            in_order,
            purpose,
            after_writes,
            writes_before,
            transaction,
        } = carried;
        if in_order {
            context.sequencer.wait_for_turn(ticket).await;
        }
        // Under the capture, the session wrote again since the transaction ended: the capture
        // may apply that before the copy runs there, so a difference would prove nothing.
        let overtaken = || {
            context.wal.is_some() && context.session_writes.load(Ordering::SeqCst) != writes_before
        };
        if let (true, Some(wal)) = (after_writes && !overtaken(), &context.wal) {
            tokio::select! {
                applied = wal.applied_before_now(context.authoritative) => if let Err(why) = applied {
                    tracing::debug!(reason = %why, "a transaction carried after the session's writes runs before they were applied");
                },
                () = context.stop.cancelled() => {}
            }
        }
        if purpose == Purpose::Compare && overtaken() {
            // Not run: it could not be judged.
            counter!("tandem_pg_compared_reads_total", "outcome" => "overtaken").increment(1);
            context.sequencer.done(ticket, context.server.side);
            continue;
        }
        let applies = purpose == Purpose::Apply;
        // Transactions after one that awaits replay are kept behind it, in commit order.
        if context.sequencer.parked.load(Ordering::SeqCst) {
            let pending = context
                .store
                .has_pending_failure(context.server.side, SQL_ORDERING_KEY)
                .await
                .unwrap_or(true);
            if pending {
                if applies && transaction.writes() {
                    COUNTS.mirrored();
                    record_failure(
                        &context,
                        &transaction,
                        &baseline,
                        "held behind a transaction awaiting replay",
                    )
                    .await;
                }
                context.sequencer.done(ticket, context.server.side);
                continue;
            }
            context.sequencer.parked.store(false, Ordering::SeqCst);
        }
        let started = std::time::Instant::now();
        let outcome = carry(&context, &mut connection, &transaction, purpose).await;
        if let Some(open) = &connection {
            baseline.clone_from(&open.baseline);
        }
        settle(
            &context,
            &Settling {
                transaction: &transaction,
                baseline: &baseline,
                purpose,
                started,
                overtaken: overtaken(),
            },
            outcome,
        )
        .await;
        context.sequencer.done(ticket, context.server.side);
    }
    // Not at shutdown: the pool is closed then. A connection whose settings are the
    // session's own is reset by the pool.
    if let Some(open) = connection.filter(|_| !context.stop.is_cancelled()) {
        context
            .pool
            .put(&context.server, &context.parameters, open.backend)
            .await;
    }
}

/// What became of one transaction on the other side.
enum CarryOutcome {
    /// It ran there; the verdict says how it compares.
    Ran(Verdict),
    /// The connection failed (or none could be opened, or the shutdown deadline passed):
    /// what happened there is unknown.
    Broken(String),
    /// The shutdown deadline passed while it ran.
    Abandoned,
}

/// Runs `transaction` on the session's connection to the other side (opening one, and
/// bringing it to the session's settings, when needed).
async fn carry(
    context: &MirrorContext,
    connection: &mut Option<MirrorConnection>,
    transaction: &Finished,
    purpose: Purpose,
) -> CarryOutcome {
    if context.stop.is_cancelled() {
        return CarryOutcome::Abandoned;
    }
    // A connection the server closed (or wrote to) while it was idle has run nothing of this
    // transaction: another one is opened for it.
    if connection
        .as_ref()
        .is_some_and(|open| !open.backend.stream.is_quiet())
    {
        *connection = None;
    }
    if connection.is_none() {
        let opened = tokio::select! {
            opened = context.pool.get(&context.server, &context.parameters) => opened,
            () = context.stop.cancelled() => return CarryOutcome::Abandoned,
        };
        match opened {
            Ok(mut backend) => {
                let baseline = tokio::select! {
                    taken = take_on_told(context, &mut backend) => taken,
                    () = context.stop.cancelled() => return CarryOutcome::Abandoned,
                };
                let baseline = match baseline {
                    Ok(baseline) => baseline,
                    Err(err) => {
                        crate::pool::close(backend).await;
                        tracing::warn!(side = %context.server.side, error = %err, "cannot give the mirror session its client's parameters");
                        return CarryOutcome::Broken(format!(
                            "cannot give the session there its client's parameters: {err}"
                        ));
                    }
                };
                *connection = Some(MirrorConnection {
                    backend,
                    prepared: PreparedStatements::new(),
                    state: Some(Arc::new(SessionState::default())),
                    baseline,
                });
            }
            Err(err) => {
                tracing::warn!(side = %context.server.side, error = %err, "cannot open the mirror session");
                return CarryOutcome::Broken(format!("no session with the other side: {err}"));
            }
        }
    }
    let Some(open) = connection.as_mut() else {
        return CarryOutcome::Broken("no session with the other side".to_owned());
    };
    // A connection whose settings are not the ones the transaction began with is reset and
    // told them (a new one, or one that missed transactions).
    let mut reset = false;
    let state = match &open.state {
        Some(state) if **state == *transaction.state_before => None,
        Some(state) if state.statements.is_empty() => Some(&*transaction.state_before),
        _ => {
            reset = true;
            Some(&*transaction.state_before)
        }
    };
    if let Some(state) = state {
        // Settings first, on their own: the transaction runs only on a session that has them.
        if reset {
            open.prepared.clear();
        }
        let settings = Plan::settings(state, reset.then_some(open.baseline.as_slice()));
        let ran = tokio::select! {
            ran = settings.run(&mut open.backend.stream) => ran,
            () = context.stop.cancelled() => {
                *connection = None;
                return CarryOutcome::Abandoned;
            }
        };
        let failed = match ran {
            Ok(ran) => {
                settings
                    .judge(transaction, &ran, context.authoritative)
                    .unsettled
            }
            Err(interrupted) => Some(interrupted.error.to_string()),
        };
        if let Some(reason) = failed {
            *connection = None;
            return CarryOutcome::Broken(format!(
                "cannot bring the session there to its settings: {reason}"
            ));
        }
        open.state = Some(Arc::clone(&transaction.state_before));
    }
    let plan = Plan::build(transaction, purpose, &open.prepared, None, &open.baseline);
    open.state = None;
    let ran = tokio::select! {
        ran = plan.run(&mut open.backend.stream) => ran,
        () = context.stop.cancelled() => {
            *connection = None;
            return CarryOutcome::Abandoned;
        }
    };
    match ran {
        Ok(ran) => {
            plan.note_prepared(&mut open.prepared, &ran);
            let verdict = plan.judge(transaction, &ran, context.authoritative);
            // A client's `DISCARD ALL` or `RESET ALL` ran with the baseline after it (see
            // `Plan::build`): the connection keeps its temporary tables and its state.
            open.state = Some(
                if purpose == Purpose::Apply && verdict.unsettled.is_none() {
                    Arc::clone(&transaction.state_after)
                } else {
                    Arc::clone(&transaction.state_before)
                },
            );
            CarryOutcome::Ran(verdict)
        }
        Err(interrupted) => {
            // What a broken session would read next is unknown: it is never reused.
            let process_id = open.backend.process_id;
            *connection = None;
            let Some(xid) = interrupted.in_doubt else {
                return CarryOutcome::Broken(interrupted.error.to_string());
            };
            let resolution = tokio::select! {
                resolution = settle_in_doubt(context, xid, process_id) => resolution,
                () = context.stop.cancelled() => return CarryOutcome::Abandoned,
            };
            match resolution {
                Resolution::Committed => CarryOutcome::Ran(plan.judge(
                    transaction,
                    &interrupted.ran,
                    context.authoritative,
                )),
                Resolution::Aborted => CarryOutcome::Broken(format!(
                    "{} (it rolled back there)",
                    interrupted.error
                )),
                Resolution::Unknown(why) => CarryOutcome::Broken(format!(
                    "{}; whether it committed there is unknown ({why}): replaying it may apply it twice",
                    interrupted.error
                )),
            }
        }
    }
}

/// Gives a new connection to the other side the reported parameters the session's client
/// was told (as a session that moves is given them, [`reported::keep`]), and returns the
/// settings that did; a parameter it cannot take on is logged and counted.
///
/// # Errors
/// When the server fails to answer.
async fn take_on_told(
    context: &MirrorContext,
    backend: &mut Backend,
) -> Result<Vec<Setting>, crate::error::PgProxyError> {
    let names = reported::names(&context.told);
    let kept = reported::keep(
        &mut backend.stream,
        &names,
        &reported::told_at_login(&context.told),
    )
    .await?;
    // Only a value the client was told can make its statements mean something else there.
    for change in kept.changes.iter().filter(|change| change.told.is_some()) {
        change.record_on_mirror(context.authoritative, context.server.side);
    }
    Ok(kept.settings)
}

/// Asks the other side, on another connection, what became of transaction `xid`.
async fn settle_in_doubt(context: &MirrorContext, xid: u64, process_id: i32) -> Resolution {
    match context.pool.get(&context.server, &context.parameters).await {
        Ok(mut backend) => {
            let resolution = in_doubt::resolve(&mut backend, xid, process_id).await;
            if matches!(resolution, Resolution::Unknown(_)) {
                crate::pool::close(backend).await;
            } else {
                context
                    .pool
                    .put(&context.server, &context.parameters, backend)
                    .await;
            }
            resolution
        }
        Err(err) => Resolution::Unknown(format!("no session with the other side: {err}")),
    }
}

/// A transaction whose outcome on the other side is being recorded.
struct Settling<'a> {
    transaction: &'a Finished,
    /// The settings that gave the mirror connection the client's parameters.
    baseline: &'a [Setting],
    purpose: Purpose,
    started: std::time::Instant,
    /// The session wrote again (under the capture) before it ran there.
    overtaken: bool,
}

/// Records what became of a transaction: counts, mismatches, and what is kept for replay.
async fn settle(context: &MirrorContext, settling: &Settling<'_>, outcome: CarryOutcome) {
    let Settling {
        transaction,
        baseline,
        purpose,
        started,
        overtaken,
    } = *settling;
    let side = context.server.side;
    let committed_write = purpose == Purpose::Apply
        && transaction.end != End::RolledBack
        && (transaction.writes() || transaction.changes_session());
    match outcome {
        CarryOutcome::Abandoned => {
            if purpose == Purpose::Apply && transaction.writes() {
                COUNTS.mirrored();
                record_failure(context, transaction, baseline, SHUTDOWN).await;
                context.sequencer.parked.store(true, Ordering::SeqCst);
            }
        }
        CarryOutcome::Broken(reason) => {
            COUNTS.side_answered(side, started.elapsed(), true);
            if purpose == Purpose::Apply && transaction.writes() {
                COUNTS.mirrored();
                counter!("tandem_pg_mirrored_transactions_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(%side, error = %reason, "a mirrored transaction could not be applied");
                // Rolled-back transactions are kept too: what they consumed from sequences
                // must be consumed there as well.
                record_failure(
                    context,
                    transaction,
                    baseline,
                    &format!("connection: {reason}"),
                )
                .await;
                context.sequencer.parked.store(true, Ordering::SeqCst);
            }
        }
        CarryOutcome::Ran(verdict) => {
            let failed = committed_write && verdict.unsettled.is_some();
            COUNTS.side_answered(side, started.elapsed(), failed);
            COUNTS.compared();
            if purpose == Purpose::Compare {
                let label = match (&verdict.mismatch, overtaken) {
                    (None, _) => "same",
                    (Some(_), false) => "different",
                    (Some(_), true) => "overtaken",
                };
                counter!("tandem_pg_compared_reads_total", "outcome" => label).increment(1);
            } else if transaction.writes() && transaction.end != End::RolledBack {
                COUNTS.mirrored();
                if let Some(finished) = Some(transaction.finished_at) {
                    histogram!("tandem_pg_mirror_lag_seconds")
                        .record(finished.elapsed().as_secs_f64());
                }
                let label = match (&verdict.unsettled, &verdict.mismatch) {
                    (Some(_), _) => "failed",
                    (None, Some(_)) => "mismatch",
                    (None, None) => "ok",
                };
                counter!("tandem_pg_mirrored_transactions_total", "outcome" => label).increment(1);
            }
            if let (true, Some(reason)) = (failed, &verdict.unsettled) {
                tracing::warn!(%side, error = %reason, "a mirrored transaction failed");
                record_failure(context, transaction, baseline, reason).await;
                context.sequencer.parked.store(true, Ordering::SeqCst);
            } else if let Some(diff) = verdict.mismatch.filter(|_| !overtaken) {
                record_mismatch(context, transaction, diff).await;
            }
        }
    }
}

async fn record_mismatch(context: &MirrorContext, transaction: &Finished, diff: String) {
    COUNTS.mismatched();
    let mismatch = NewResponseMismatch {
        request_id: format!("pg-{}", Timestamp::now().millis()),
        method: "SQL".to_owned(),
        path: transaction.fingerprint(),
        route: "pg".to_owned(),
        authoritative: context.authoritative,
        status_old: 200,
        status_new: 200,
        diff,
    };
    if let Err(err) = context.store.insert_response_mismatch(&mismatch).await {
        tracing::error!(error = %err, "cannot record a mirrored transaction's mismatch");
    }
}

/// Keeps a transaction the other side did not apply, for `tandem pg-replay`: the messages
/// that bring a fresh session to its client's parameters (every one shaping what statements
/// mean, whatever the connection at hand needed, since the replay may run on another server
/// with other defaults; then `baseline`, the others the mirror connection needed) and
/// settings and then run it as the mirror would have, pending, in commit order.
async fn record_failure(
    context: &MirrorContext,
    transaction: &Finished,
    baseline: &[Setting],
    reason: &str,
) {
    COUNTS.mirror_failed();
    let baseline: Vec<Setting> = reported::assumed_settings(&context.told)
        .into_iter()
        .chain(baseline.iter().cloned())
        .collect();
    let settings = SessionState {
        statements: baseline
            .iter()
            .map(Setting::statement)
            .chain(transaction.state_before.statements.iter().cloned())
            .collect(),
    };
    let plan = Plan::build(
        transaction,
        Purpose::Apply,
        &PreparedStatements::new(),
        Some(&settings),
        &baseline,
    );
    let failure = NewMirrorFailure {
        request_id: format!("pg-{}", Timestamp::now().millis()),
        target: context.server.side,
        method: "SQL".to_owned(),
        uri: transaction.fingerprint(),
        // The client's startup parameters (search_path, TimeZone in `options`, …): the
        // replay session logs in with them.
        headers: crate::protocol::encode_parameters(&context.parameters),
        body: Some(plan.wire.to_vec()),
        ordering_key: SQL_ORDERING_KEY.to_owned(),
        reason: "pg_transaction_failed".to_owned(),
        last_error: reason.to_owned(),
        attempts: 1,
        status: FailureStatus::Pending,
        accepted_at: Timestamp::now(),
        accepted_seq: 0,
        cutover_hold: false,
    };
    if let Err(err) = context.store.insert_mirror_failure(&failure).await {
        tracing::error!(error = %err, "cannot record a failed mirrored transaction");
    }
}

/// The text of a NUL-terminated string at the start of `body`.
pub(crate) fn cstr(body: &[u8]) -> String {
    let end = body
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_backlog_counts_what_is_owed_whatever_order_it_settles_in() {
        let sequencer = Arc::new(Sequencer::new(2, false));
        let first = sequencer.ticket(Side::New);
        let second = sequencer.ticket(Side::New);
        assert_eq!(sequencer.owed_total(), 2);
        // The later one (a read compared out of order) settles first: one is still owed, so
        // a session ending a transaction waits no longer.
        sequencer.done(second, Side::New);
        assert_eq!(sequencer.owed_total(), 1);
        assert!(!sequencer.within_backlog().await);
        let third = sequencer.ticket(Side::New);
        // Two owed again: the next session waits until one of them settles.
        let waiting = tokio::spawn({
            let sequencer = Arc::clone(&sequencer);
            async move { sequencer.within_backlog().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        sequencer.done(first, Side::New);
        assert!(waiting.await.expect("waiter"), "it had to wait");
        sequencer.done(third, Side::New);
        assert_eq!(sequencer.owed_total(), 0);
        assert_eq!(
            sequencer
                .settled_for(Side::New, std::time::Duration::ZERO)
                .await,
            Ok(())
        );
    }
}
