//! The capture: reads the authoritative side's committed transactions from its slot and
//! applies them to the other side, whole, in commit order, several per target transaction,
//! exactly once ([`Target`]). It survives anything by starting over: every failure (either
//! side unreachable, a refused change, a table whose shape differs) ends the session, and the
//! next one resumes from the other side's recorded progress while the slot keeps everything
//! after it. A second tandem pointed at the same slot waits as a standby (the slot admits one
//! reader) and takes over when the first one goes.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tandem_control::Side;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::WalError;
use super::lsn::Lsn;
use super::parallel::{apply_in_parallel, Applying};
use super::positions::slot_confirmed;
use super::read_ahead::{read_ahead, Budget, Handled, ReadItem};
use super::replication::postgres_now;
use super::route::{worker_origin, Recorded};
use super::set::Fallback;
use super::stream::{CaptureSettings, ReplicationStream};
use super::target::{Applied, Target};
use super::transaction::{Captured, Change, Transaction};

/// The prefix of the replication origins tandem applies with: a transaction the capture
/// reads that carries one was applied by tandem itself (before a switch of the authoritative
/// side) and is not carried back.
pub const ORIGIN_PREFIX: &str = "tandem_";

/// What the capture reads and where it applies it.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The authoritative side's slot and publication (`start` is ignored: the capture starts
    /// from the other side's progress).
    pub source: CaptureSettings,
    /// The side applied to.
    pub target_side: Side,
    /// Its `postgres://` URL (a superuser, or granted `session_replication_role` and the
    /// replication origin functions).
    pub target_url: String,
    /// The most source transactions applied in one target transaction.
    pub batch_transactions: usize,
    /// How many units of changes (one per change, or per
    /// [`UNIT_BYTES`](super::transaction::UNIT_BYTES) of its values when more) a batch
    /// gathers before it is applied in one target transaction (the transaction that reaches
    /// it is the last, so a batch holds up to about twice as many), and the most held of one
    /// source transaction: a bigger one is read and applied in parts of at most this many,
    /// in one target transaction of its own committed with its last part. The read-ahead
    /// holds twice as many.
    pub batch_changes: usize,
    /// How many sessions apply transactions whose rows no other one in flight changes, at
    /// once (`route.rs`), beside the session that applies every other transaction in order;
    /// 1 applies everything in that one session.
    pub apply_sessions: usize,
    /// How long to wait before starting over after a failure.
    pub retry: Duration,
}

impl CaptureConfig {
    /// The replication origin the capture records its progress in on the target.
    #[must_use]
    pub fn origin(&self) -> String {
        format!("{ORIGIN_PREFIX}{}", self.source.slot)
    }
}

/// Where the capture stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CaptureState {
    /// Connecting (at start, or starting over).
    #[default]
    Starting,
    /// Reading and applying.
    Streaming,
    /// Another tandem reads the slot; this one takes over when it goes.
    Standby,
    /// A table differs between the sides: nothing is applied until it matches (checked again
    /// on every retry).
    Paused {
        /// The table and what differs.
        reason: String,
    },
    /// A failure; starting over after the retry interval.
    Retrying {
        /// What failed.
        reason: String,
    },
    /// Stopped (shutdown).
    Stopped,
}

/// The capture's state and progress, published on a [`watch`] channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStatus {
    /// Where it stands.
    pub state: CaptureState,
    /// The end of the last transaction applied (the other side's recorded progress).
    pub applied: Lsn,
    /// Transactions applied since start.
    pub transactions: u64,
    /// Its sessions' failures one after the other, with nothing applied in between.
    pub failures: Failures,
    /// Why it is paused (a table differs between the sides): set when a session finds it so,
    /// kept through the retries until the other side's position moves again.
    pub paused: Option<String>,
    /// Transactions (and messages) read from the stream and not yet applied: the read-ahead,
    /// at most twice a batch.
    pub read_ahead: u64,
    /// Updates and deletes that found no row on the other side, since start.
    pub absent_rows: u64,
    /// Parts of source transactions too large to hold whole applied since start (the
    /// transaction of the other side they are in commits with the last part).
    pub parts: u64,
    /// Statements of the set path (a table's rows bound as arrays) run since start.
    pub set_statements: u64,
    /// Statements of the row path (one row change each) run since start.
    pub row_statements: u64,
    /// The tables whose changes took the row path in a batch since start, with the last
    /// reason why (`set.rs`).
    pub row_path: BTreeMap<String, Fallback>,
}

impl CaptureStatus {
    /// The other side has everything up to `to`: when that is further than before, the
    /// failures before no longer count and a pause is over.
    pub(super) fn advance(&mut self, to: Lsn) {
        if to > self.applied {
            self.failures.went_on();
            self.failures.publish();
            if self.paused.take().is_some() {
                gauge!("tandem_capture_paused").set(0.0);
            }
        }
        self.applied = self.applied.max(to);
    }

    /// Counts the statements of an applied batch or part by path.
    fn count(&mut self, done: &Applied) {
        self.set_statements += done.set_statements as u64;
        self.row_statements += done.statements.saturating_sub(done.set_statements) as u64;
        for (table, fallback) in &done.row_path {
            self.row_path.insert(table.clone(), *fallback);
        }
    }
}

/// The failures of the capture's sessions one after the other, nothing applied in between
/// and no session running for [`STEADY`]: a capture that keeps failing the same way (a column
/// whose type differs, a slot the server invalidated) is not starting over, it is stuck.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    /// How many.
    pub in_a_row: u32,
    /// When the first of them happened.
    pub since: Option<Instant>,
    /// When the last of them happened.
    pub last_at: Option<Instant>,
    /// The last one.
    pub last: Option<String>,
}

impl Failures {
    /// A session failed with `error` at `now`.
    pub fn failed(&mut self, error: String, now: Instant) {
        if self.in_a_row == 0 {
            self.since = Some(now);
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.last_at = Some(now);
        self.last = Some(error);
    }

    /// The capture went on (it applied something, or a session ran steadily): the failures
    /// before no longer count.
    pub fn went_on(&mut self) {
        self.in_a_row = 0;
        self.since = None;
    }

    /// Whether they are stuck at `now`: [`FAILING_AFTER`] failures or more, over
    /// [`FAILING_FOR`] at least (an outage of a few seconds, such as a restart of the other
    /// side, is not), the last of them within [`FAILING_FOR`] (an instance that was on
    /// standby since is not).
    #[must_use]
    pub fn stuck(&self, now: Instant) -> bool {
        let ago = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        self.in_a_row >= FAILING_AFTER
            && ago(self.since).is_some_and(|since| since >= FAILING_FOR)
            && ago(self.last_at).is_some_and(|last| last < FAILING_FOR)
    }

    /// Publishes how many (`tandem_capture_failures_in_a_row`).
    fn publish(&self) {
        gauge!("tandem_capture_failures_in_a_row").set(f64::from(self.in_a_row));
    }
}

/// Failures in a row after which, over [`FAILING_FOR`], the capture is stuck.
pub const FAILING_AFTER: u32 = 3;

/// How long failures in a row last before the capture is stuck.
pub const FAILING_FOR: Duration = Duration::from_secs(60);

/// Runs the capture until `shutdown`, publishing its status on `status`.
pub async fn run(
    config: CaptureConfig,
    status: watch::Sender<CaptureStatus>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("capture", slot = %config.source.slot, from = %config.source.side, to = %config.target_side);
    // Present from the start, so an alert on it sees a capture that was never paused.
    gauge!("tandem_capture_paused").set(0.0);
    gauge!("tandem_capture_failures_in_a_row").set(0.0);
    async {
        loop {
            let outcome = {
                let session = session(&config, &status, &shutdown);
                tokio::pin!(session);
                tokio::select! {
                    outcome = &mut session => outcome,
                    () = tokio::time::sleep(STEADY) => {
                        went_on(&status);
                        session.await
                    }
                }
            };
            gauge!("tandem_capture_read_ahead_units").set(0.0);
            let state = match outcome {
                Ok(()) => CaptureState::Stopped,
                // Another instance reads the slot: whether the capture is stuck is its to say
                // (the count goes on here, for when this one reads the slot again).
                Err(WalError::SlotActive { .. } | WalError::OriginBusy { .. }) => {
                    gauge!("tandem_capture_failures_in_a_row").set(0.0);
                    CaptureState::Standby
                }
                // Paused has an alert of its own: the failures before it no longer count.
                Err(err @ WalError::Shape { .. }) => {
                    tracing::error!(error = %err, "capture paused");
                    gauge!("tandem_capture_paused").set(1.0);
                    status.send_modify(|now| {
                        now.paused = Some(err.to_string());
                        now.failures.went_on();
                        now.failures.publish();
                    });
                    CaptureState::Paused {
                        reason: err.to_string(),
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "capture failed; starting over");
                    counter!("tandem_capture_failures_total", "reason" => failure_kind(&err))
                        .increment(1);
                    status.send_modify(|now| {
                        now.failures.failed(err.to_string(), Instant::now());
                        now.failures.publish();
                    });
                    CaptureState::Retrying {
                        reason: err.to_string(),
                    }
                }
            };
            let stopped = state == CaptureState::Stopped;
            status.send_modify(|now| now.state = state);
            if stopped {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    status.send_modify(|now| now.state = CaptureState::Stopped);
                    break;
                }
                () = tokio::time::sleep(config.retry) => {}
            }
        }
        // Stopped: nothing is failing or held any more.
        gauge!("tandem_capture_failures_in_a_row").set(0.0);
    }
    .instrument(span)
    .await;
}

/// The capture went on: its failures before no longer count.
fn went_on(status: &watch::Sender<CaptureStatus>) {
    status.send_modify(|now| {
        now.failures.went_on();
        now.failures.publish();
    });
}

/// How long a capture session runs before the failures before it no longer count as in a row.
const STEADY: Duration = Duration::from_secs(60);

/// A low-cardinality name for a failure (the metric's label).
fn failure_kind(err: &WalError) -> &'static str {
    match err {
        WalError::Apply { .. } | WalError::Render { .. } => "refused",
        WalError::Io(_) | WalError::Ended { .. } | WalError::Connect(_) => "connection",
        WalError::OriginBusy { .. } => "origin_busy",
        WalError::OriginsExhausted { .. } => "origins_exhausted",
        _ => "other",
    }
}

/// One session: both connections, from the other side's progress to a failure or shutdown.
/// The stream is read ahead ([`read_ahead`]) while the apply ([`apply_batches`]) works
/// through what was read, in order; both run in this task, so whatever ends the session
/// (a failure, the task aborted) ends both.
async fn session(
    config: &CaptureConfig,
    status: &watch::Sender<CaptureStatus>,
    shutdown: &CancellationToken,
) -> Result<(), WalError> {
    let mut target = Target::open(config.target_side, &config.target_url, &config.origin()).await?;
    // Every origin of the capture held (its own) or free (any other) before one is read.
    let workers = open_workers(config).await?;
    let held: Vec<String> = (0..workers.len())
        .map(|index| worker_origin(&config.origin(), workers.len(), index))
        .collect();
    target.wait_for_holders(&held).await?;
    let mut recorded = target.recorded().await?;
    target
        .drop_stale_origins(&mut recorded, workers.len())
        .await;
    // Nothing before the slot's confirmed position comes again: the apply starts past it,
    // and never confirms below it (read before the stream starts, which reads the slot's
    // position again, never lower).
    let source = &config.source;
    let confirmed = slot_confirmed(source.side, &source.url, &source.slot)
        .await?
        .unwrap_or_default();
    let mut settings = config.source.clone();
    settings.start = recorded.main;
    let stream = ReplicationStream::open(&settings)
        .await?
        .holding_at_most(config.batch_changes);
    recorded.main = recorded.main.max(confirmed);
    let applied = recorded.main;
    status.send_modify(|now| {
        now.state = CaptureState::Streaming;
        now.applied = applied;
        now.read_ahead = 0;
    });
    tracing::info!(from = %applied, "capture streaming");
    // Up to two batches read ahead: one gathered while the other is applied.
    let budget = Budget::new(config.batch_changes.saturating_mul(2));
    let (items, mut read) = mpsc::channel(config.batch_transactions.max(1).saturating_mul(2));
    let (handled, handled_watch) = watch::channel(Handled {
        items: 0,
        seen: applied,
    });
    let reader = read_ahead(
        stream,
        items,
        budget,
        handled_watch,
        applied,
        status,
        shutdown.clone(),
    );
    let apply = async {
        if !workers.is_empty() {
            let to = Applying {
                config,
                read: &mut read,
                handled: &handled,
                status,
                shutdown,
            };
            apply_in_parallel(to, &mut target, workers, recorded).await
        } else {
            apply_batches(
                config,
                &mut target,
                &mut read,
                &handled,
                recorded,
                status,
                shutdown,
            )
            .await
        }
    };
    tokio::try_join!(reader, apply)?;
    target.close().await
}

/// The sessions of `config.apply_sessions` workers (none for 1). When the other side has no
/// room left for their origins (one of a former number of sessions, killed mid-way, may
/// still count), this session applies alone, saying so: once it has applied past them they
/// are dropped, and the next session has the room.
///
/// # Errors
/// A [`WalError`] of the other side.
async fn open_workers(config: &CaptureConfig) -> Result<Vec<Target>, WalError> {
    let count = config.apply_sessions;
    if count <= 1 {
        return Ok(Vec::new());
    }
    let mut workers = Vec::with_capacity(count);
    for index in 0..count {
        let origin = worker_origin(&config.origin(), count, index);
        match Target::open(config.target_side, &config.target_url, &origin).await {
            Ok(worker) => workers.push(worker),
            Err(err @ WalError::OriginsExhausted { .. }) => {
                tracing::warn!(error = %err, "applying in one session; the next capture session (once the side applied to or tandem restarts) asks for {count} again");
                counter!("tandem_capture_failures_total", "reason" => failure_kind(&err))
                    .increment(1);
                for worker in workers {
                    worker.close().await?;
                }
                return Ok(Vec::new());
            }
            Err(err) => return Err(err),
        }
    }
    Ok(workers)
}

/// Applies what the reader hands over, in order, several source transactions per target
/// transaction, and reports on `handled` what is finished (the reader confirms it to the
/// slot), until `shutdown` or the reader stops.
async fn apply_batches(
    config: &CaptureConfig,
    target: &mut Target,
    read: &mut mpsc::Receiver<ReadItem>,
    handled: &watch::Sender<Handled>,
    mut recorded: Recorded,
    status: &watch::Sender<CaptureStatus>,
    shutdown: &CancellationToken,
) -> Result<(), WalError> {
    let mut finished = 0_u64;
    // An item read while gathering a batch that is applied on its own after it.
    let mut next: Option<ReadItem> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                item = read.recv() => match item {
                    Some(item) => item,
                    // The reader stopped (shutdown).
                    None => return Ok(()),
                },
            },
        };
        let ReadItem { captured, budget } = first;
        // The end of the last transaction finished, and how many items were.
        let (seen, items) = if let Captured::Part(part) | Captured::LastPart(part) = &captured {
            let last = matches!(captured, Captured::LastPart(_));
            if let Some(end) = apply_part(target, part, last, recorded.main, status).await? {
                recorded.main = end;
                status.send_modify(|now| now.advance(end));
            }
            drop(budget);
            let seen = if last {
                part.commit.end_lsn
            } else {
                recorded.main
            };
            (seen.max(recorded.main), 1)
        } else {
            let mut gathered = Gathered::after(&recorded);
            let mut budgets = vec![budget];
            gathered.take(captured);
            while gathered.batch.len() < config.batch_transactions
                && gathered.units < config.batch_changes
            {
                match read.try_recv() {
                    Ok(item)
                        if matches!(item.captured, Captured::Part(_) | Captured::LastPart(_)) =>
                    {
                        next = Some(item);
                        break;
                    }
                    Ok(item) => {
                        budgets.push(item.budget);
                        gathered.take(item.captured);
                    }
                    Err(_) => break,
                }
            }
            let Gathered { batch, seen, .. } = gathered;
            apply_batch(target, &batch, status).await?;
            if let Some(last) = batch.last() {
                recorded.main = last.commit.end_lsn;
                status.send_modify(|now| now.advance(recorded.main));
            }
            (seen, budgets.len() as u64)
        };
        status.send_modify(|now| now.read_ahead = now.read_ahead.saturating_sub(items));
        finished += items;
        handled.send_replace(Handled {
            items: finished,
            seen,
        });
    }
}

/// Applies `part` of a source transaction too large to hold whole (`last`: its last part,
/// which commits), unless the other side has it (its transaction ends at or before
/// `applied`) or tandem itself applied it. Returns the transaction's end once committed.
pub(super) async fn apply_part(
    target: &mut Target,
    part: &Transaction,
    last: bool,
    applied: Lsn,
    status: &watch::Sender<CaptureStatus>,
) -> Result<Option<Lsn>, WalError> {
    if part.begin.final_lsn < applied || carried_by_tandem(part) {
        return Ok(None);
    }
    check_shapes(target, std::slice::from_ref(part)).await?;
    let started = Instant::now();
    let span = tracing::debug_span!("apply_part", changes = part.changes.len(), last);
    let done = if last {
        target.apply_last_part(part).instrument(span).await?
    } else {
        target.apply_part(part).instrument(span).await?
    };
    histogram!("tandem_capture_apply_duration_seconds").record(started.elapsed().as_secs_f64());
    counter!("tandem_capture_transaction_parts_total").increment(1);
    record(std::slice::from_ref(part), &done, last);
    status.send_modify(|now| {
        now.parts += 1;
        now.transactions += done.transactions as u64;
        now.absent_rows += done.absent.len() as u64;
        now.count(&done);
    });
    Ok(last.then_some(part.commit.end_lsn))
}

/// Applies `batch` (whole transactions, in commit order) as one transaction of the other
/// side, counting it.
pub(super) async fn apply_batch(
    target: &mut Target,
    batch: &[Transaction],
    status: &watch::Sender<CaptureStatus>,
) -> Result<(), WalError> {
    check_shapes(target, batch).await?;
    if batch.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let done = target
        .apply(batch)
        .instrument(tracing::debug_span!("apply", transactions = batch.len()))
        .await?;
    histogram!("tandem_capture_apply_duration_seconds").record(started.elapsed().as_secs_f64());
    record(batch, &done, true);
    status.send_modify(|now| {
        now.transactions += done.transactions as u64;
        now.absent_rows += done.absent.len() as u64;
        now.count(&done);
    });
    Ok(())
}

/// Checks the shape of every table `transactions` change, as they changed it.
pub(super) async fn check_shapes(
    target: &mut Target,
    transactions: &[Transaction],
) -> Result<(), WalError> {
    for transaction in transactions {
        for relation in transaction.relations.values() {
            target.check(relation).await?;
        }
        for change in &transaction.changes {
            if let Change::Relation(relation) = change {
                target.check(relation).await?;
            }
        }
    }
    Ok(())
}

/// The transactions read for one target transaction.
struct Gathered<'a> {
    /// What the other side has already.
    recorded: &'a Recorded,
    /// The transactions to apply.
    batch: Vec<Transaction>,
    /// The units of their changes (see [`Transaction::units`]).
    units: usize,
    /// The end of the last transaction read (applied, or skipped as not to be carried).
    seen: Lsn,
}

impl Gathered<'_> {
    fn after(recorded: &Recorded) -> Gathered<'_> {
        Gathered {
            recorded,
            batch: Vec::new(),
            units: 0,
            seen: recorded.main,
        }
    }

    /// Takes what the stream yielded: a transaction the other side lacks joins the batch;
    /// one already applied (the slot was not confirmed before a crash), one tandem itself
    /// applied, and a message outside any transaction are passed over.
    fn take(&mut self, captured: Captured) {
        let Captured::Transaction(transaction) = captured else {
            return;
        };
        self.seen = self.seen.max(transaction.commit.end_lsn);
        if self.recorded.has(&transaction) || carried_by_tandem(&transaction) {
            return;
        }
        self.units += transaction.units();
        self.batch.push(transaction);
    }
}

/// Whether tandem itself applied `transaction` (it carries one of tandem's origins).
pub(super) fn carried_by_tandem(transaction: &Transaction) -> bool {
    transaction
        .origin
        .as_ref()
        .is_some_and(|origin| origin.name.starts_with(ORIGIN_PREFIX))
}

/// Counts an applied batch (or part of a transaction: `committed` when it was its last).
fn record(batch: &[Transaction], done: &Applied, committed: bool) {
    counter!("tandem_capture_transactions_total").increment(done.transactions as u64);
    counter!("tandem_capture_changes_total").increment(done.rows as u64);
    counter!("tandem_capture_statements_total", "path" => "set")
        .increment(done.set_statements as u64);
    counter!("tandem_capture_statements_total", "path" => "row")
        .increment(done.statements.saturating_sub(done.set_statements) as u64);
    for (_, fallback) in &done.row_path {
        counter!("tandem_capture_set_fallbacks_total", "reason" => fallback.label()).increment(1);
    }
    counter!("tandem_capture_changes_coalesced_total").increment(done.coalesced as u64);
    if !committed {
        return;
    }
    counter!("tandem_capture_batches_total").increment(1);
    // A batch applied: whatever paused the capture before has been put right.
    gauge!("tandem_capture_paused").set(0.0);
    #[allow(clippy::cast_precision_loss)]
    histogram!("tandem_capture_batch_transactions").record(batch.len() as f64);
    for (table, kind) in &done.absent {
        tracing::warn!(%table, change = ?kind, "a captured change found no row on the other side");
        counter!("tandem_capture_rows_absent_total").increment(1);
    }
    let now = postgres_now();
    for transaction in batch {
        let delay = now.saturating_sub(transaction.commit.timestamp).max(0);
        #[allow(clippy::cast_precision_loss)]
        histogram!("tandem_capture_apply_delay_seconds").record(delay as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_stuck_only_when_many_and_lasting_and_forgotten_once_it_goes_on() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut failures = Failures::default();
        assert!(!failures.stuck(at(0)));
        // Three quick failures (the other side restarting) are not stuck.
        for second in 0..3 {
            failures.failed(format!("refused {second}"), at(second));
        }
        assert_eq!(failures.in_a_row, 3);
        assert!(!failures.stuck(at(3)));
        // Still failing a minute after the first: stuck, with the last failure kept.
        assert!(failures.stuck(at(60)));
        assert_eq!(failures.last.as_deref(), Some("refused 2"));
        // Going on forgets them; the next streak counts from its own first failure.
        failures.went_on();
        assert!(!failures.stuck(at(120)));
        failures.failed("again".to_owned(), at(200));
        failures.failed("again".to_owned(), at(201));
        failures.failed("again".to_owned(), at(202));
        assert!(!failures.stuck(at(230)));
        assert!(failures.stuck(at(260)));
        // Failures that stopped a while ago (the instance went on standby) are not stuck.
        assert!(!failures.stuck(at(400)));
        // Two failures over a long time are not a streak of three.
        let mut two = Failures::default();
        two.failed("a".to_owned(), at(0));
        two.failed("b".to_owned(), at(500));
        assert!(!two.stuck(at(1000)));
    }
}
