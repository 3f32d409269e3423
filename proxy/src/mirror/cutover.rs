//! The cutover hold: a request waits until its key's copies toward the side it is routed to
//! (accepted while the other side was authoritative) are delivered, so that they land first.
//!
//! While a side is not authoritative nothing is sent to it but copies, in per-key order. When
//! it becomes authoritative (`shadow -> live`, or a rollback), copies accepted before the
//! change may still be on their way to it. They are delivered, not kept (`worker.rs`), and a
//! request to one of their keys waits for them: a write under its key's lock, so nothing of
//! that key reaches the side between the copies and the write; a read so that a client reads
//! its own acknowledged writes. Then the settlements of copies toward the side are persisted
//! (`settlements.rs`), so that a crash cannot deliver one again over the request's write. A key
//! with nothing waiting goes straight through: the check is two atomic loads while no copy
//! waits or was settled toward the side. A key whose copies are kept in the control store
//! (delivery failed) is refused until they are replayed (into this side: nothing newer of the
//! key can be there, `replay.rs`), and so is one whose state the store cannot tell in time:
//! never a guess. With the fleet's shared journal the copies of a key are delivered by
//! whichever instance holds its partition: while the cutover window is open (`window.rs`) a
//! request waits until the stream holds no copy of its key toward the side, asking the server
//! every [`STREAM_POLL`]; settling deletes a copy from the stream, so none left means every
//! one was delivered or kept in the store. A kept copy's key was marked parked for the fleet
//! before the copy left the stream (`fleet_parking.rs`): the request then asks the server for
//! the key's marker, and, in the window or after it, is refused like on a single instance
//! while the store keeps a copy of the key.

use std::time::Duration;

use tandem_control::Side;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::parking::ParkedKey;
use super::Delivery;
use crate::telemetry::{CutoverHeld, CutoverKeysPending, CutoverWindowOpen};

/// How often the count of keys waiting toward the authoritative side is published.
const KEYS_PENDING_EVERY: Duration = Duration::from_secs(1);

/// How often a request held on a shared journal asks whether its key's copies are gone, and
/// how often the cutover window is looked at.
const STREAM_POLL: Duration = Duration::from_millis(100);

/// Why a request to a key cannot be served by the side it is routed to now. The request
/// reached neither side.
#[derive(Debug, thiserror::Error)]
pub enum CutoverRefusal {
    /// Its key's copies were still on their way after the cutover timeout.
    #[error(
        "copies of earlier writes to this key were still on their way to the {side} side after \
         {}; the request reached neither side; retry",
        humantime::format_duration(*.timeout)
    )]
    TimedOut {
        /// The side the request is routed to.
        side: Side,
        /// `cutover_timeout`.
        timeout: Duration,
    },
    /// Its key's copies toward that side are kept in the control store.
    #[error(
        "copies of earlier writes to this key are kept in the control store: the {side} side \
         cannot serve it until they are replayed (see `tandem mirror failures`); the request \
         reached neither side"
    )]
    Kept {
        /// The side the request is routed to.
        side: Side,
    },
    /// The control store could not say whether its key's copies are kept.
    #[error(
        "cannot tell whether copies of earlier writes to this key are kept in the control \
         store ({error}); the request reached neither side; retry"
    )]
    StoreUnreachable {
        /// Why.
        error: String,
    },
    /// The journal could not persist that copies of the key were delivered to that side, so
    /// a crash could deliver them again, over this request's write; or a shared journal could
    /// not say whether they were.
    #[error(
        "cannot persist or tell that copies of earlier writes to this key were delivered \
         ({error}); the request reached neither side; retry"
    )]
    JournalFailed {
        /// Why.
        error: String,
    },
}

impl CutoverRefusal {
    /// The outcome label of the refusal in metrics and answers.
    #[must_use]
    pub fn outcome(&self) -> &'static str {
        match self {
            CutoverRefusal::TimedOut { .. } => "timed_out",
            CutoverRefusal::Kept { .. } => "kept",
            CutoverRefusal::StoreUnreachable { .. } => "store_unreachable",
            CutoverRefusal::JournalFailed { .. } => "journal_failed",
        }
    }
}

/// Waits until no copy of `key` toward `side` is undelivered, for at most `timeout`, then
/// makes sure none is kept in the control store and every settlement toward `side` is
/// persisted.
pub(super) async fn clear(
    delivery: &Delivery,
    side: Side,
    key: &str,
    timeout: Duration,
) -> Result<(), CutoverRefusal> {
    if delivery.journal.shared() {
        return clear_in_stream(delivery, side, key, timeout).await;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut held = false;
    // Woken once, when the key's last copy toward `side` settles (then checked again).
    while let Some(settled) = delivery.pending.watch(side, key) {
        held = true;
        if tokio::time::timeout_at(deadline, settled).await.is_err() {
            return Err(refused(CutoverRefusal::TimedOut { side, timeout }, started));
        }
    }
    held |= unparked(delivery, side, key, started).await?;
    // A copy of the key delivered to `side` must not come back after a crash and land over
    // this request's write (`settlements.rs`).
    let persisted = tokio::time::timeout_at(
        deadline,
        delivery
            .settlements
            .persist_toward(side, delivery.journal.as_ref()),
    )
    .await;
    match persisted {
        Ok(Ok(waited)) => held |= waited,
        Ok(Err(err)) => {
            let error = err.to_string();
            return Err(refused(CutoverRefusal::JournalFailed { error }, started));
        }
        Err(_) => return Err(refused(CutoverRefusal::TimedOut { side, timeout }, started)),
    }
    released(held, started);
    Ok(())
}

/// Refuses a request to `key` while copies of it toward `side` are kept in the control store
/// (`Kept`), or when the store cannot tell (`StoreUnreachable`); whether it was parked and
/// is released now.
async fn unparked(
    delivery: &Delivery,
    side: Side,
    key: &str,
    started: Instant,
) -> Result<bool, CutoverRefusal> {
    match delivery.check_parked(side, key).await {
        ParkedKey::Free => Ok(false),
        // Replayed meanwhile: the key is free again.
        ParkedKey::Released => Ok(true),
        ParkedKey::Kept => Err(refused(CutoverRefusal::Kept { side }, started)),
        ParkedKey::Unknown(error) => {
            Err(refused(CutoverRefusal::StoreUnreachable { error }, started))
        }
    }
}

/// Counts a request the hold let through after it waited.
fn released(held: bool, started: Instant) {
    if held {
        CutoverHeld {
            outcome: "released",
            waited: started.elapsed(),
        }
        .emit();
    }
}

/// The hold on a shared journal: while the cutover window is open, waits (at most
/// `timeout`) until the stream holds no copy of `key` toward `side`, then reads the key's
/// parked marker from the server; in the window or not, refuses the key while the store keeps
/// a copy of it (the fleet's parked keys, `fleet_parking.rs`). The partition's holder
/// delivers those copies to `side` (`worker.rs`) and deletes each once delivered or kept in
/// the store (its key's marker published before); a deleted copy never comes back, so there
/// is nothing to persist here.
async fn clear_in_stream(
    delivery: &Delivery,
    side: Side,
    key: &str,
    timeout: Duration,
) -> Result<(), CutoverRefusal> {
    let started = Instant::now();
    if !delivery.window.covers(delivery.stage.current().id) {
        let held = unparked(delivery, side, key, started).await?;
        released(held, started);
        return Ok(());
    }
    let deadline = started + timeout;
    let journal_key = super::journal_key(side, key);
    let mut held = false;
    loop {
        match tokio::time::timeout_at(deadline, delivery.journal.holds(&journal_key)).await {
            Ok(Ok(false)) => break,
            Ok(Ok(true)) => held = true,
            Ok(Err(err)) => {
                let error = err.to_string();
                return Err(refused(CutoverRefusal::JournalFailed { error }, started));
            }
            Err(_) => return Err(refused(CutoverRefusal::TimedOut { side, timeout }, started)),
        }
        if Instant::now() + STREAM_POLL >= deadline {
            return Err(refused(CutoverRefusal::TimedOut { side, timeout }, started));
        }
        tokio::time::sleep(STREAM_POLL).await;
    }
    // A copy kept rather than delivered left the stream after its key's marker was published,
    // which this instance may not have read yet.
    match tokio::time::timeout_at(deadline, delivery.journal.parked(&journal_key)).await {
        Ok(Ok(Some(revision))) => delivery.parking.park_at(side, key, revision),
        Ok(Ok(None)) => {}
        Ok(Err(err)) => {
            let error = err.to_string();
            return Err(refused(CutoverRefusal::JournalFailed { error }, started));
        }
        Err(_) => return Err(refused(CutoverRefusal::TimedOut { side, timeout }, started)),
    }
    held |= unparked(delivery, side, key, started).await?;
    released(held, started);
    Ok(())
}

/// Follows the cutover window of a shared journal (`window.rs`) every [`STREAM_POLL`], until
/// `closed`.
pub(super) async fn follow_window(delivery: std::sync::Arc<Delivery>, closed: CancellationToken) {
    loop {
        let stage = delivery.stage.current();
        delivery
            .window
            .follow(
                stage.id,
                stage.stage.authoritative(),
                delivery.journal.as_ref(),
                || delivery.fleet_parking.catch_up(&delivery),
            )
            .await;
        CutoverWindowOpen(delivery.window.is_open()).emit();
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(STREAM_POLL) => {}
        }
    }
}

/// Counts a refusal and hands it back.
fn refused(refusal: CutoverRefusal, started: Instant) -> CutoverRefusal {
    CutoverHeld {
        outcome: refusal.outcome(),
        waited: started.elapsed(),
    }
    .emit();
    refusal
}

/// Publishes how many keys have copies waiting toward the authoritative side (the keys a
/// request would be held on) every [`KEYS_PENDING_EVERY`], until `closed`.
pub(super) async fn publish_keys_pending(
    delivery: std::sync::Arc<Delivery>,
    closed: CancellationToken,
) {
    CutoverHeld::zero();
    loop {
        let side = delivery.stage.current().stage.authoritative();
        CutoverKeysPending(delivery.pending.keys_toward(side)).emit();
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(KEYS_PENDING_EVERY) => {}
        }
    }
}
