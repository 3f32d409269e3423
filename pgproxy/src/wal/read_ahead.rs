//! The replication stream read ahead of the apply: while one batch is applied on the other
//! side, the next transactions are received and decoded (and the walsender goes on decoding
//! instead of waiting on a full socket), up to a bounded number of row changes held in
//! memory. The slot is still confirmed only up to what the apply says it finished: the
//! [`Ledger`] decides every confirmation.

use std::sync::Arc;
use std::time::Duration;

use metrics::{gauge, histogram};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::capture::CaptureStatus;
use super::error::WalError;
use super::lsn::Lsn;
use super::replication::postgres_now;
use super::stream::ReplicationStream;
use super::transaction::{Captured, UNIT_BYTES};

/// How long the stream may yield nothing before the position the server reached is
/// confirmed (when everything handed to the apply was applied).
const IDLE_CONFIRM: Duration = Duration::from_secs(5);

/// What the apply finished: how many items it took off the channel, and the end of the last
/// transaction among them that it applied or passed over (the position the slot may be
/// confirmed up to).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handled {
    /// Items taken and finished, since the session began.
    pub(super) items: u64,
    /// The end of the last transaction finished.
    pub(super) seen: Lsn,
}

/// One item of the stream, with the share of the read-ahead budget it holds until the apply
/// drops it (once the item is applied).
#[derive(Debug)]
pub(super) struct ReadItem {
    /// The transaction or message.
    pub(super) captured: Captured,
    /// Its share of the budget.
    pub(super) budget: OwnedSemaphorePermit,
}

/// Which position the reader may confirm to the slot: the reader counts the items it handed
/// to the apply, the apply reports what it finished. Pure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Ledger {
    handed: u64,
    handled: Handled,
    confirmed: Lsn,
}

impl Ledger {
    /// A ledger of a session whose other side has everything up to `applied`.
    pub(super) fn after(applied: Lsn) -> Ledger {
        Ledger {
            handed: 0,
            handled: Handled {
                items: 0,
                seen: applied,
            },
            confirmed: Lsn(0),
        }
    }

    /// One more item handed to the apply.
    pub(super) fn hand(&mut self) {
        self.handed += 1;
    }

    /// The apply finished what `handled` says (reports never go backwards; a stale one is
    /// ignored).
    pub(super) fn finish(&mut self, handled: Handled) {
        if handled.items >= self.handled.items {
            self.handled.items = handled.items.min(self.handed);
            self.handled.seen = self.handled.seen.max(handled.seen);
        }
    }

    /// The position to confirm now, if it is past the last one confirmed: what the apply
    /// finished; or, when everything handed over is finished and the stream is between
    /// transactions at `idle` (its received position), that position, since nothing before
    /// it is owed to the other side.
    pub(super) fn to_confirm(&self, idle: Option<Lsn>) -> Option<Lsn> {
        let all_finished = self.handled.items == self.handed;
        let position = match idle {
            Some(idle) if all_finished => idle.max(self.handled.seen),
            _ => self.handled.seen,
        };
        (position > self.confirmed).then_some(position)
    }

    /// `position` was confirmed.
    pub(super) fn confirmed(&mut self, position: Lsn) {
        self.confirmed = self.confirmed.max(position);
    }
}

/// The budget of row changes read ahead: a transaction holds the units of its changes (one
/// per change, or per [`UNIT_BYTES`] of its values when more; at least one, at most the whole
/// budget: a bigger transaction is read alone), so that wide rows are bounded by their size.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    units: Arc<Semaphore>,
    total: u32,
}

impl Budget {
    /// A budget of `changes` row changes (at least one).
    pub(super) fn new(changes: usize) -> Budget {
        let total = u32::try_from(changes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Budget {
            units: Arc::new(Semaphore::new(
                usize::try_from(total).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            total,
        }
    }

    /// The units held now by what was read and not yet applied.
    fn held(&self) -> u32 {
        let available = u32::try_from(self.units.available_permits()).unwrap_or(u32::MAX);
        self.total.saturating_sub(available)
    }

    /// Publishes [`Budget::held`] (`tandem_capture_read_ahead_units`).
    fn publish(&self) {
        gauge!("tandem_capture_read_ahead_units").set(f64::from(self.held()));
    }

    /// The units `captured` holds.
    fn units(&self, captured: &Captured) -> u32 {
        let units = match captured {
            Captured::Transaction(transaction)
            | Captured::Part(transaction)
            | Captured::LastPart(transaction) => transaction.units(),
            Captured::Message(message) => message.content.len().div_ceil(UNIT_BYTES),
        };
        u32::try_from(units)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }
}

/// Reads `stream` until `shutdown` or a failure, handing every item to `items` within
/// `budget` (counted in `status`'s read-ahead), and confirming to the slot what the apply reports on `handled` (and, when idle
/// with everything applied, where the server has reached). Closes the stream on shutdown.
///
/// # Errors
/// A [`WalError`] from the stream; [`WalError::ApplyEnded`] when the apply stopped taking
/// items.
pub(super) async fn read_ahead(
    mut stream: ReplicationStream,
    items: mpsc::Sender<ReadItem>,
    budget: Budget,
    mut handled: watch::Receiver<Handled>,
    applied: Lsn,
    status: &watch::Sender<CaptureStatus>,
    shutdown: CancellationToken,
) -> Result<(), WalError> {
    let mut ledger = Ledger::after(applied);
    let mut idle_since = Instant::now();
    loop {
        let captured = tokio::select! {
            () = shutdown.cancelled() => return stream.close().await,
            changed = handled.changed() => {
                changed.map_err(|_| WalError::ApplyEnded)?;
                ledger.finish(*handled.borrow_and_update());
                budget.publish();
                confirm(&mut stream, &mut ledger, None).await?;
                continue;
            }
            // Nothing read for a while: once everything handed over is applied, the position
            // the server has reached is confirmed (the slot stops keeping unrelated log).
            () = tokio::time::sleep_until(idle_since + IDLE_CONFIRM) => {
                let idle = stream.idle_position();
                confirm(&mut stream, &mut ledger, idle).await?;
                idle_since = Instant::now();
                continue;
            }
            captured = stream.next() => captured?,
        };
        idle_since = Instant::now();
        if let Captured::Transaction(transaction) | Captured::LastPart(transaction) = &captured {
            let delay = postgres_now()
                .saturating_sub(transaction.commit.timestamp)
                .max(0);
            #[allow(clippy::cast_precision_loss)]
            histogram!("tandem_capture_receive_delay_seconds").record(delay as f64 / 1e6);
        }
        let units = budget.units(&captured);
        // The budget is spent: wait for the apply to finish a batch, confirming what it did.
        let permit = loop {
            tokio::select! {
                () = shutdown.cancelled() => return stream.close().await,
                permit = Arc::clone(&budget.units).acquire_many_owned(units) => {
                    break permit.map_err(|_| WalError::ApplyEnded)?;
                }
                changed = handled.changed() => {
                    changed.map_err(|_| WalError::ApplyEnded)?;
                    ledger.finish(*handled.borrow_and_update());
                    budget.publish();
                    confirm(&mut stream, &mut ledger, None).await?;
                }
            }
        };
        budget.publish();
        let item = ReadItem {
            captured,
            budget: permit,
        };
        // The channel is full while the apply works through two batches.
        tokio::select! {
            () = shutdown.cancelled() => return stream.close().await,
            sent = items.send(item) => sent.map_err(|_| WalError::ApplyEnded)?,
        }
        ledger.hand();
        status.send_modify(|now| now.read_ahead += 1);
    }
}

/// Confirms what the ledger allows.
async fn confirm(
    stream: &mut ReplicationStream,
    ledger: &mut Ledger,
    idle: Option<Lsn>,
) -> Result<(), WalError> {
    if let Some(position) = ledger.to_confirm(idle) {
        stream.confirm(position).await?;
        ledger.confirmed(position);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_budget_counts_wide_rows_by_their_size_up_to_the_whole_budget() {
        use super::super::pgoutput::{Column, Insert, Relation, ReplicaIdentity, Tuple};
        use super::super::transaction::{Change, Transaction};
        let relation = Arc::new(Relation {
            oid: 1,
            namespace: "public".into(),
            name: "a".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
        });
        let rows = |count: usize, bytes: usize| {
            Captured::Transaction(Transaction::of_one_table(
                Arc::clone(&relation),
                (0..count)
                    .map(|_| {
                        Change::Insert(Insert {
                            relation: 1,
                            new: Tuple(vec![Column::Text(bytes::Bytes::from(vec![b'x'; bytes]))]),
                        })
                    })
                    .collect(),
            ))
        };
        let budget = Budget::new(100);
        assert_eq!(budget.units(&rows(5, 10)), 5);
        assert_eq!(budget.units(&rows(2, 10 * UNIT_BYTES)), 20);
        assert_eq!(budget.units(&rows(1, 1 << 20)), 100);
        assert_eq!(budget.units(&rows(0, 0)), 1);
    }

    #[test]
    fn confirms_what_the_apply_finished_and_the_idle_position_only_when_all_is_finished() {
        let mut ledger = Ledger::after(Lsn(100));
        assert_eq!(ledger.to_confirm(None), Some(Lsn(100)));
        ledger.confirmed(Lsn(100));
        assert_eq!(ledger.to_confirm(None), None);
        ledger.hand();
        ledger.hand();
        // Idle with two items not applied: the server's position is not confirmed.
        assert_eq!(ledger.to_confirm(Some(Lsn(500))), None);
        ledger.finish(Handled {
            items: 1,
            seen: Lsn(200),
        });
        assert_eq!(ledger.to_confirm(Some(Lsn(500))), Some(Lsn(200)));
        ledger.confirmed(Lsn(200));
        ledger.finish(Handled {
            items: 2,
            seen: Lsn(300),
        });
        assert_eq!(ledger.to_confirm(Some(Lsn(500))), Some(Lsn(500)));
        // A stale report changes nothing.
        ledger.finish(Handled {
            items: 1,
            seen: Lsn(200),
        });
        assert_eq!(ledger.to_confirm(None), Some(Lsn(300)));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// The stream yields a transaction ending this far after the last.
        Read(u64),
        /// The apply finishes this many of the items waiting (its batch).
        Apply(usize),
        /// The reader looks at whether to confirm, the stream between transactions or not.
        Confirm { idle: bool },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1_u64..100).prop_map(Step::Read),
            (1_usize..5).prop_map(Step::Apply),
            any::<bool>().prop_map(|idle| Step::Confirm { idle }),
        ]
    }

    proptest! {
        /// Against a model of the capture: never is a position confirmed past the end of the
        /// last transaction applied, unless every transaction read was applied; confirmations
        /// never go backwards.
        #[test]
        fn never_confirms_past_what_was_applied(steps in proptest::collection::vec(step(), 1..200)) {
            let applied_at_start = Lsn(10);
            let mut ledger = Ledger::after(applied_at_start);
            let mut received = applied_at_start.0;
            let mut waiting: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
            let (mut finished, mut applied) = (0_u64, applied_at_start.0);
            let mut last_confirmed = 0;
            for step in steps {
                match step {
                    Step::Read(gap) => {
                        received += gap;
                        waiting.push_back(received);
                        ledger.hand();
                    }
                    Step::Apply(count) => {
                        for _ in 0..count.min(waiting.len()) {
                            applied = waiting.pop_front().unwrap_or(applied);
                            finished += 1;
                        }
                        ledger.finish(Handled { items: finished, seen: Lsn(applied) });
                    }
                    Step::Confirm { idle } => {
                        // Between transactions the server may have sent more (keepalives).
                        let idle = idle.then_some(Lsn(received + 7));
                        if let Some(position) = ledger.to_confirm(idle) {
                            prop_assert!(position.0 > last_confirmed);
                            if waiting.is_empty() {
                                prop_assert!(position.0 <= received + 7);
                            } else {
                                prop_assert!(position.0 <= applied, "confirmed {} with {} applied", position.0, applied);
                            }
                            ledger.confirmed(position);
                            last_confirmed = position.0;
                        }
                    }
                }
            }
        }
    }
}
