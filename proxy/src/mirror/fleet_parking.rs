//! The fleet's parked keys, followed from the shared journal: a key whose copy any instance
//! kept in the control store is parked here too, so that this instance's cutover hold refuses
//! it (`kept`) exactly as the instance that kept the copy does, until the store keeps none of
//! its copies (a replay) and some instance releases it.
//!
//! The worker that keeps a copy publishes the key's marker before the copy leaves the stream
//! (`Delivery::persist`); every instance reads the markers and releases in order every
//! [`FOLLOW_EVERY`] into its [`super::KeyParking`], and the refill reads them again at the
//! start of each pass, after taking its partitions, feeding nothing until it could (a
//! partition taken over a few ms after its former holder published a marker). While the cutover window is open the hold
//! also asks the server for the key's marker itself (`cutover.rs`): a copy gone from the
//! stream had its marker published first, whatever this instance has read yet; and the window
//! closes only after a read that began once every copy it waited for was settled (so every
//! marker of a copy kept toward the authoritative side is read by then, `window.rs`). When the
//! markers cannot be read, this instance cannot know of keys parked since its last read: it
//! says so (`tandem_fleet_parking_unknown` 1, a warning) and keeps what it knew.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tandem_control::Side;
use tandem_journal::MirrorLog;
use tokio_util::sync::CancellationToken;

use super::{parse_journal_key, Delivery};
use crate::telemetry::{FleetParkFailed, FleetParkingKnown, ParkedKeys};

/// How often the fleet's markers and releases are read.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Changes read at most per request to the server.
const CHANGES_PER_READ: usize = 1000;

/// Where this instance's reading of the fleet's markers is.
#[derive(Debug, Default)]
pub(super) struct FleetParking {
    /// The position of the last change read; one reader at a time.
    after: tokio::sync::Mutex<u64>,
    /// Whether the last read succeeded (`None` before the first).
    known: std::sync::Mutex<Option<bool>>,
}

impl FleetParking {
    /// Reads every change stored so far into `delivery.parking`; whether it could (said once
    /// per change of answer: `tandem_fleet_parking_unknown`, a log line).
    pub(super) async fn catch_up(&self, delivery: &Delivery) -> bool {
        let mut after = self.after.lock().await;
        let read = loop {
            match delivery
                .journal
                .park_changes(*after, CHANGES_PER_READ)
                .await
            {
                Ok(changes) => {
                    let complete = changes.len() < CHANGES_PER_READ;
                    for change in changes {
                        *after = (*after).max(change.seq);
                        let Some((side, key)) = parse_journal_key(&change.key) else {
                            continue;
                        };
                        if change.parked {
                            delivery.parking.park_at(side, key, change.seq);
                        } else {
                            delivery.parking.unparked_at(side, key, change.seq);
                        }
                    }
                    if complete {
                        break Ok(());
                    }
                }
                Err(err) => break Err(err.to_string()),
            }
        };
        drop(after);
        ParkedKeys(delivery.parking.len()).emit();
        let known = read.is_ok();
        let mut said = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if *said != Some(known) {
            *said = Some(known);
            FleetParkingKnown {
                known,
                error: read.as_ref().err().map(String::as_str),
            }
            .emit();
        }
        known
    }
}

/// Reads the fleet's parked keys into `delivery.parking`, from the beginning and then as they
/// change, every [`FOLLOW_EVERY`] until `closed`.
pub(super) async fn follow(delivery: Arc<Delivery>, closed: CancellationToken) {
    loop {
        delivery.fleet_parking.catch_up(&delivery).await;
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// Releases `key`'s marker `revision` toward `side` in the shared journal, in the background:
/// a marker left there (the server out of reach) keeps the key refused by the instances that
/// read it, until one of them finds the store clear and releases it.
pub(super) fn release(journal: Arc<dyn MirrorLog>, side: Side, key: &str, revision: u64) {
    let ordering_key = key.to_owned();
    tokio::spawn(async move {
        let journal_key = super::journal_key(side, &ordering_key);
        if let Err(err) = journal.unpark(&journal_key, revision).await {
            FleetParkFailed {
                op: "release",
                ordering_key: &ordering_key,
                error: &err.to_string(),
            }
            .emit();
        }
    });
}
