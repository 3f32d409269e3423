//! Several apply sessions at once (`--apply-sessions N`, N > 1). The main session's task
//! hands each transaction read to the worker its rows hash to, or applies it itself, in
//! order with everything else, when it is serial (`route.rs`): it waits until every worker
//! finished what it was given, applies it (with the serial ones read after it, as one batch)
//! and only then hands out more. Each worker applies what it is given in order, several
//! transactions per target transaction, recording its progress in its own replication origin
//! in the same transaction; the main session records its own (the position a switch waits
//! for: a switch's marker is a serial transaction). Confirmation to the slot, and the
//! capture's `applied`, go only as far as every transaction before is finished
//! ([`Finished`]). Everything runs in the capture's task: whatever ends the session ends
//! every worker, and the other side rolls back what they had not committed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::try_join_all;
use metrics::counter;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::capture::{
    apply_batch, apply_part, carried_by_tandem, check_shapes, CaptureConfig, CaptureStatus,
};
use super::error::WalError;
use super::lsn::Lsn;
use super::read_ahead::{Handled, ReadItem};
use super::route::{route, Keys, Recorded, Route};
use super::target::Target;
use super::transaction::{Captured, Transaction};

/// How often, at most, the main session records how far everything is applied.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// What the apply works from and reports to.
pub(super) struct Applying<'a> {
    /// The capture's settings.
    pub(super) config: &'a CaptureConfig,
    /// What the reader hands over, in order.
    pub(super) read: &'a mut mpsc::Receiver<ReadItem>,
    /// What is finished, for the reader to confirm.
    pub(super) handled: &'a watch::Sender<Handled>,
    /// The capture's status.
    pub(super) status: &'a watch::Sender<CaptureStatus>,
    /// Ends the apply.
    pub(super) shutdown: &'a CancellationToken,
}

/// Applies what the reader hands over with the `sessions` of the workers beside `main` until
/// shutdown or the reader stops; `recorded` is what every session recorded before.
///
/// # Errors
/// Any session's [`WalError`]: the capture starts over from what was recorded.
pub(super) async fn apply_in_parallel(
    to: Applying<'_>,
    main: &mut Target,
    sessions: Vec<Target>,
    recorded: Recorded,
) -> Result<(), WalError> {
    let config = to.config;
    let (finished, done) = mpsc::unbounded_channel();
    let mut queues = Vec::with_capacity(sessions.len());
    let mut workers = Vec::with_capacity(sessions.len());
    for target in sessions {
        let (queue, jobs) = mpsc::unbounded_channel();
        queues.push(queue);
        workers.push(work(
            config,
            target,
            jobs,
            finished.clone(),
            to.status,
            to.shutdown,
        ));
    }
    drop(finished);
    let coordinator = Coordinator {
        finished: Finished::after(recorded.main),
        recorded,
        to,
        main,
        queues,
        done,
        reported: 0,
        keys: Keys::default(),
        last_recorded: Instant::now(),
    };
    tokio::try_join!(coordinator.run(), try_join_all(workers))?;
    Ok(())
}

/// A transaction handed to a worker.
struct Job {
    /// Its place among the items read.
    seq: u64,
    transaction: Transaction,
    /// Its share of the read-ahead budget, held until it is applied.
    budget: OwnedSemaphorePermit,
}

/// One worker: applies its jobs in order, as many per target transaction as the batch
/// limits allow, and reports each batch committed.
async fn work(
    config: &CaptureConfig,
    mut target: Target,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    finished: mpsc::UnboundedSender<Vec<(u64, Lsn)>>,
    status: &watch::Sender<CaptureStatus>,
    shutdown: &CancellationToken,
) -> Result<(), WalError> {
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let mut units = first.transaction.units();
        let mut batch = vec![first];
        while batch.len() < config.batch_transactions && units < config.batch_changes {
            let Ok(job) = jobs.try_recv() else {
                break;
            };
            units += job.transaction.units();
            batch.push(job);
        }
        let (transactions, held): (Vec<Transaction>, Vec<(u64, OwnedSemaphorePermit)>) = batch
            .into_iter()
            .map(|job| (job.transaction, (job.seq, job.budget)))
            .unzip();
        apply_batch(&mut target, &transactions, status).await?;
        let ends = held
            .into_iter()
            .zip(&transactions)
            .map(|((seq, _budget), transaction)| (seq, transaction.commit.end_lsn))
            .collect();
        if finished.send(ends).is_err() {
            break;
        }
    }
    target.close().await
}

/// What the coordinator does next.
enum Step {
    /// Takes the next item: this one, read meanwhile, or else the reader's next.
    Take(Option<ReadItem>),
    /// Stops: shutdown, or the workers ended.
    Stop,
}

/// The main session's side: routes, applies the serial transactions, keeps [`Finished`].
struct Coordinator<'a, 'b> {
    to: Applying<'a>,
    main: &'b mut Target,
    recorded: Recorded,
    queues: Vec<mpsc::UnboundedSender<Job>>,
    done: mpsc::UnboundedReceiver<Vec<(u64, Lsn)>>,
    finished: Finished,
    /// The items reported finished so far.
    reported: u64,
    /// The key each table was routed by so far.
    keys: Keys,
    /// When the main session last recorded how far everything is applied.
    last_recorded: Instant,
}

impl Coordinator<'_, '_> {
    async fn run(mut self) -> Result<(), WalError> {
        let mut next: Option<ReadItem> = None;
        loop {
            self.report();
            self.record_progress(false).await?;
            let item = match next.take() {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    () = self.to.shutdown.cancelled() => return Ok(()),
                    ends = self.done.recv() => {
                        match ends {
                            Some(ends) => self.finished.finish_all(&ends),
                            None => return Ok(()),
                        }
                        continue;
                    }
                    () = tokio::time::sleep(RECORD_EVERY), if self.unrecorded() => {
                        self.record_progress(true).await?;
                        continue;
                    }
                    item = self.to.read.recv() => match item {
                        Some(item) => item,
                        // The reader stopped (shutdown).
                        None => return Ok(()),
                    },
                },
            };
            match self.take(item).await? {
                Step::Take(item) => next = item,
                Step::Stop => return Ok(()),
            }
        }
    }

    /// Hands `item` out, or applies it.
    async fn take(&mut self, item: ReadItem) -> Result<Step, WalError> {
        let ReadItem { captured, budget } = item;
        let seq = self.finished.hand();
        match captured {
            Captured::Message(_) => self.finished.finish(seq, None),
            Captured::Part(part) => return self.part(seq, &part, false).await,
            Captured::LastPart(part) => return self.part(seq, &part, true).await,
            Captured::Transaction(transaction) => {
                // One with no change (the source's empty transactions) has nothing to apply.
                if self.recorded.has(&transaction)
                    || carried_by_tandem(&transaction)
                    || transaction.changes.is_empty()
                {
                    self.finished.finish(seq, Some(transaction.commit.end_lsn));
                    return Ok(Step::Take(None));
                }
                match self.route(&transaction).await? {
                    Route::Worker(index) => {
                        counter!("tandem_capture_routed_total", "route" => "worker").increment(1);
                        let job = Job {
                            seq,
                            transaction,
                            budget,
                        };
                        if self.queues[index].send(job).is_err() {
                            return Ok(Step::Stop);
                        }
                    }
                    Route::Serial => return self.serial(seq, transaction, budget).await,
                }
            }
        }
        Ok(Step::Take(None))
    }

    /// Where `transaction` goes, once the other side's shape of its tables is checked: serial
    /// when a table's key is not the one its transactions were routed by so far (a replica
    /// identity changed between transactions: a row's earlier changes went by the old key).
    async fn route(&mut self, transaction: &Transaction) -> Result<Route, WalError> {
        check_shapes(self.main, std::slice::from_ref(transaction)).await?;
        if self.keys.rekeyed(transaction) {
            return Ok(Route::Serial);
        }
        let main = &*self.main;
        Ok(route(transaction, self.queues.len(), &|name: &str| {
            main.shape(name)
        }))
    }

    /// Whether everything applied reaches past what the main session recorded, and the main
    /// session is free to record it (not inside the transaction a large source transaction's
    /// parts are applied in: it commits with their last part).
    fn unrecorded(&self) -> bool {
        self.finished.handled().seen > self.recorded.main && !self.main.applying_parts()
    }

    /// Records in the main session's origin how far everything is applied, at most every
    /// [`RECORD_EVERY`] (`now`: at once): a restart then finds little past it, and the
    /// workers' origins of a former number of sessions are dropped once it passes them.
    async fn record_progress(&mut self, now: bool) -> Result<(), WalError> {
        if !self.unrecorded() || (!now && self.last_recorded.elapsed() < RECORD_EVERY) {
            return Ok(());
        }
        let seen = self.finished.handled().seen;
        self.main.record_progress(seen).await?;
        self.recorded.main = seen;
        self.last_recorded = Instant::now();
        Ok(())
    }

    /// Applies the serial `transaction` (item `seq`) with the serial ones read right after
    /// it, once everything before it is finished.
    async fn serial(
        &mut self,
        seq: u64,
        transaction: Transaction,
        budget: OwnedSemaphorePermit,
    ) -> Result<Step, WalError> {
        let config = self.to.config;
        let mut units = transaction.units();
        let mut batch = vec![transaction];
        let mut seqs = vec![seq];
        let mut budgets = vec![budget];
        let mut next = None;
        while batch.len() < config.batch_transactions && units < config.batch_changes {
            let Ok(ReadItem { captured, budget }) = self.to.read.try_recv() else {
                break;
            };
            match captured {
                Captured::Message(_) => {
                    let seq = self.finished.hand();
                    self.finished.finish(seq, None);
                }
                Captured::Transaction(transaction)
                    if self.recorded.has(&transaction) || carried_by_tandem(&transaction) =>
                {
                    let seq = self.finished.hand();
                    self.finished.finish(seq, Some(transaction.commit.end_lsn));
                }
                Captured::Transaction(transaction)
                    if self.route(&transaction).await? == Route::Serial =>
                {
                    seqs.push(self.finished.hand());
                    units += transaction.units();
                    batch.push(transaction);
                    budgets.push(budget);
                }
                captured => {
                    next = Some(ReadItem { captured, budget });
                    break;
                }
            }
        }
        if !self.wait_before(seq).await {
            return Ok(Step::Stop);
        }
        counter!("tandem_capture_routed_total", "route" => "serial").increment(batch.len() as u64);
        apply_batch(self.main, &batch, self.to.status).await?;
        for (seq, transaction) in seqs.into_iter().zip(&batch) {
            self.finished.finish(seq, Some(transaction.commit.end_lsn));
        }
        if let Some(last) = batch.last() {
            self.recorded.main = last.commit.end_lsn;
        }
        drop(budgets);
        Ok(Step::Take(next))
    }

    /// Applies `part` (item `seq`) of a transaction too large to hold whole, once everything
    /// before it is finished.
    async fn part(&mut self, seq: u64, part: &Transaction, last: bool) -> Result<Step, WalError> {
        if !self.wait_before(seq).await {
            return Ok(Step::Stop);
        }
        let applied = self.recorded.main;
        if let Some(end) = apply_part(self.main, part, last, applied, self.to.status).await? {
            self.recorded.main = end;
        }
        self.finished
            .finish(seq, last.then_some(part.commit.end_lsn));
        Ok(Step::Take(None))
    }

    /// Waits until every item before `seq` is finished; `false` when the workers ended
    /// first (shutdown).
    async fn wait_before(&mut self, seq: u64) -> bool {
        while !self.finished.all_before(seq) {
            self.report();
            match self.done.recv().await {
                Some(ends) => self.finished.finish_all(&ends),
                None => return false,
            }
        }
        true
    }

    /// Tells the reader and the status what is finished, when more is.
    fn report(&mut self) {
        let handled = self.finished.handled();
        let newly = handled.items.saturating_sub(self.reported);
        if newly == 0 {
            return;
        }
        self.reported = handled.items;
        self.to.status.send_modify(|now| {
            now.advance(handled.seen);
            now.read_ahead = now.read_ahead.saturating_sub(newly);
        });
        self.to.handled.send_replace(handled);
    }
}

/// Which items handed out are finished, in the order they were read: only a run of finished
/// items from the first may be confirmed. Pure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Finished {
    /// Items handed out.
    handed: u64,
    /// Items finished, every one before the first not finished.
    through: u64,
    /// Items finished after one that is not, with their transaction's end.
    waiting: BTreeMap<u64, Option<Lsn>>,
    /// The end of the last transaction among the `through` items.
    seen: Lsn,
}

impl Finished {
    /// Nothing handed out yet; the other side has everything up to `applied`.
    pub(super) fn after(applied: Lsn) -> Finished {
        Finished {
            seen: applied,
            ..Finished::default()
        }
    }

    /// The next item's place.
    pub(super) fn hand(&mut self) -> u64 {
        self.handed += 1;
        self.handed - 1
    }

    /// Item `seq` is finished; `end`, its transaction's end (none for a message, or a part
    /// before the last).
    pub(super) fn finish(&mut self, seq: u64, end: Option<Lsn>) {
        if seq < self.through || seq >= self.handed {
            return;
        }
        self.waiting.insert(seq, end);
        while let Some(end) = self.waiting.remove(&self.through) {
            if let Some(end) = end {
                self.seen = self.seen.max(end);
            }
            self.through += 1;
        }
    }

    fn finish_all(&mut self, ends: &[(u64, Lsn)]) {
        for (seq, end) in ends {
            self.finish(*seq, Some(*end));
        }
    }

    /// Whether every item before `seq` is finished.
    pub(super) fn all_before(&self, seq: u64) -> bool {
        self.through >= seq
    }

    /// What the reader may confirm.
    pub(super) fn handled(&self) -> Handled {
        Handled {
            items: self.through,
            seen: self.seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_item_finished_early_waits_for_those_before_it() {
        let mut finished = Finished::after(Lsn(5));
        let first = finished.hand();
        let second = finished.hand();
        finished.finish(second, Some(Lsn(30)));
        assert_eq!(
            finished.handled(),
            Handled {
                items: 0,
                seen: Lsn(5)
            }
        );
        assert!(!finished.all_before(second));
        finished.finish(first, Some(Lsn(20)));
        assert_eq!(
            finished.handled(),
            Handled {
                items: 2,
                seen: Lsn(30)
            }
        );
        assert!(finished.all_before(second));
    }

    proptest! {
        /// In any order of finishing, what may be confirmed is exactly the run of finished
        /// items from the first, up to the end of the last transaction in it.
        #[test]
        fn confirms_only_a_run_finished_from_the_first(
            order in Just((0_u64..40).collect::<Vec<_>>()).prop_shuffle(),
            messages in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let mut finished = Finished::after(Lsn(1));
            for _ in 0..40 {
                finished.hand();
            }
            let end = |seq: u64| (!messages[usize::try_from(seq).unwrap_or(0)]).then_some(Lsn(10 + seq));
            let mut done = [false; 40];
            for seq in order {
                finished.finish(seq, end(seq));
                done[usize::try_from(seq).unwrap_or(0)] = true;
                let run = done.iter().take_while(|done| **done).count() as u64;
                let seen = (0..run).filter_map(end).fold(Lsn(1), Lsn::max);
                prop_assert_eq!(finished.handled(), Handled { items: run, seen });
            }
        }
    }
}
