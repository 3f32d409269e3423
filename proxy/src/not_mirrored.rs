//! Writes that reached the authoritative side only (body over the limit, journal full under
//! `record`): each one's record is in the gap log before the client is answered, and a task
//! of its own ships it to the control store, so a crash or a store outage loses no gap.

use std::sync::Arc;
use std::time::Duration;

use tandem_control::{ControlStore, FailureStatus, NewMirrorFailure, Side, Timestamp};
use tandem_journal::{Gap, GapLog, JournalError, Reservation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{GapsUnshipped, MirrorLost, MirrorPersisted};

/// Records shipped per read of the gap log.
const BATCH: usize = 256;

/// How long the shipper waits before trying the store again (or checking for records a
/// missed wake-up left).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long one record may take the store before the shipper tries again later.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's not-mirrored records: the gap log and the wake-up of its shipper.
#[derive(Debug, Clone)]
pub struct NotMirrored {
    log: GapLog,
    written: Arc<Notify>,
}

impl NotMirrored {
    /// Opens the gap log of the journal in `journal_dir`; what a previous run left unshipped
    /// is shipped first.
    ///
    /// # Errors
    /// When the gap log cannot be opened.
    pub async fn open(journal_dir: &std::path::Path, fsync: bool) -> Result<Self, JournalError> {
        let log = GapLog::open(journal_dir, fsync).await?;
        GapsUnshipped(log.stats().unsettled).emit();
        Ok(Self {
            log,
            written: Arc::new(Notify::new()),
        })
    }

    /// Promises room for `gap`'s record; `None` when the gap log is full.
    #[must_use]
    pub fn reserve(&self, gap: &Gap) -> Option<Reservation> {
        self.log.reserve(gap)
    }

    /// Writes `gap`'s record (to the operating system: a crash cannot lose it from here on)
    /// and wakes the shipper.
    ///
    /// # Errors
    /// When the gap log cannot write it.
    pub async fn record(&self, gap: &Gap) -> Result<(), JournalError> {
        self.log.record(gap).await?;
        GapsUnshipped(self.log.stats().unsettled).emit();
        self.written.notify_one();
        Ok(())
    }

    /// Ships records to the store until `stop`, then once more, then checkpoints.
    pub async fn ship(self, store: ControlStore, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = self.written.notified() => false,
                () = tokio::time::sleep(RETRY_EVERY) => false,
            };
            let mut shipped = 0;
            loop {
                let batch = self.ship_batch(&store).await;
                shipped += batch.shipped;
                if !batch.whole {
                    break;
                }
            }
            if shipped > 0 {
                // Only what was shipped needs the checkpoint (and its fsyncs).
                if let Err(err) = self.log.checkpoint().await {
                    tracing::error!(error = %err, "cannot checkpoint the gap log");
                }
            }
            GapsUnshipped(self.log.stats().unsettled).emit();
            if stopping {
                return;
            }
        }
    }

    /// Ships one batch: how many records left the gap log, and whether the batch was whole
    /// and shipped (there may be more).
    async fn ship_batch(&self, store: &ControlStore) -> Batch {
        let mut batch = Batch {
            shipped: 0,
            whole: false,
        };
        let unshipped = match self.log.unshipped(BATCH).await {
            Ok(unshipped) => unshipped,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the gap log");
                return batch;
            }
        };
        let whole = unshipped.len() == BATCH;
        for record in unshipped {
            let gap = match record.gap {
                Ok(gap) => gap,
                Err(err) => {
                    tracing::error!(seq = record.seq, error = %err, "an unreadable gap record is dropped");
                    self.log.shipped(record.seq);
                    batch.shipped += 1;
                    continue;
                }
            };
            let failure = failure_of(&gap);
            match tokio::time::timeout(STORE_TIMEOUT, store.record_not_mirrored(&failure)).await {
                Ok(Ok(_)) => {
                    self.log.shipped(record.seq);
                    batch.shipped += 1;
                    MirrorPersisted {
                        request_id: &gap.request_id,
                        side: failure.target,
                        reason: reason_label(&gap.reason),
                        error: &gap.error,
                    }
                    .emit();
                }
                Ok(Err(err)) => {
                    unshipped_for_now(&gap, &err.to_string());
                    return batch;
                }
                Err(_) => {
                    unshipped_for_now(&gap, "the control store did not answer in time");
                    return batch;
                }
            }
        }
        batch.whole = whole;
        batch
    }

    /// Makes what was shipped durable and closes the gap log.
    pub async fn close(&self) {
        if let Err(err) = self.log.checkpoint().await {
            tracing::error!(error = %err, "cannot checkpoint the gap log at shutdown");
        }
        if let Err(err) = self.log.close().await {
            tracing::error!(error = %err, "cannot close the gap log");
        }
    }
}

/// What one batch of shipping did.
struct Batch {
    /// Records that left the gap log.
    shipped: usize,
    /// Whether the batch was full and all of it shipped (there may be more).
    whole: bool,
}

/// Says the store did not take `gap` yet (it stays in the gap log).
fn unshipped_for_now(gap: &Gap, error: &str) {
    tracing::warn!(
        request_id = gap.request_id,
        error,
        "the control store did not take a not-mirrored record yet; it stays in the gap log and is shipped later"
    );
}

/// `reason` as a metric label: one of the few reasons a write is not mirrored.
fn reason_label(reason: &str) -> &'static str {
    match reason {
        "journal_full" => "journal_full",
        "journal_unreachable" => "journal_unreachable",
        "journal_append_failed" => "journal_append_failed",
        "body_too_large" => "body_too_large",
        _ => "not_mirrored",
    }
}

/// The store's record of `gap`.
fn failure_of(gap: &Gap) -> NewMirrorFailure {
    NewMirrorFailure {
        request_id: gap.request_id.clone(),
        target: if gap.target == Side::Old.as_str() {
            Side::Old
        } else {
            Side::New
        },
        method: gap.method.clone(),
        uri: gap.uri.clone(),
        headers: gap.headers.clone(),
        body: None,
        ordering_key: gap.ordering_key.clone(),
        reason: gap.reason.clone(),
        last_error: gap.error.clone(),
        attempts: 0,
        status: FailureStatus::NotMirrored,
        accepted_at: Timestamp(gap.accepted_at_ms),
        accepted_seq: gap.accepted_seq,
        cutover_hold: false,
    }
}

/// Records a write that was not mirrored straight in the store, trying a few times: for a
/// record the gap log could not take (a disk error). One the store never took is said
/// loudly.
pub async fn record_in_store(store: ControlStore, gap: Gap) {
    let failure = failure_of(&gap);
    let mut last = String::new();
    for attempt in 0..STORE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY_EVERY).await;
        }
        match tokio::time::timeout(STORE_TIMEOUT, store.record_not_mirrored(&failure)).await {
            Ok(Ok(_)) => {
                return MirrorPersisted {
                    request_id: &gap.request_id,
                    side: failure.target,
                    reason: reason_label(&gap.reason),
                    error: &gap.error,
                }
                .emit()
            }
            Ok(Err(err)) => last = err.to_string(),
            Err(_) => "the control store did not answer in time".clone_into(&mut last),
        }
    }
    MirrorLost {
        journaled: false,
        request_id: &gap.request_id,
        error: &last,
    }
    .emit();
}

/// How often the store is tried for a record the gap log could not take.
const STORE_ATTEMPTS: u32 = 5;
