//! The fleet's parked keys, followed from the shared journal: a key whose copy any instance
//! kept in the control store is parked here too, so that this instance's cutover hold refuses
//! it (`kept`) exactly as the instance that kept the copy does, until the store keeps none of
//! its copies (a replay) and some instance releases it.
//!
//! The worker that keeps a copy publishes the key's marker before the copy leaves the stream
//! (`Delivery::persist`); every instance reads the markers and releases in order every
//! [`FOLLOW_EVERY`] into its [`super::KeyParking`]. While the cutover window is open the hold
//! also asks the server for the key's marker itself (`cutover.rs`): a copy gone from the
//! stream had its marker published first, whatever this instance has read yet. When the
//! markers cannot be read, this instance cannot know of keys parked since its last read: it
//! says so (`tandem_fleet_parking_unknown` 1, a warning) and keeps what it knew.

use std::sync::Arc;
use std::time::Duration;

use tandem_control::Side;
use tandem_journal::MirrorLog;
use tokio_util::sync::CancellationToken;

use super::{parse_journal_key, Delivery};
use crate::telemetry::{FleetParkFailed, FleetParkingKnown};

/// How often the fleet's markers and releases are read.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Changes read at most per request to the server.
const CHANGES_PER_READ: usize = 1000;

/// Reads the fleet's parked keys into `delivery.parking`, from the beginning and then as they
/// change, until `closed`.
pub(super) async fn follow(delivery: Arc<Delivery>, closed: CancellationToken) {
    let mut after = 0u64;
    let mut known = None;
    loop {
        let caught_up = match delivery.journal.park_changes(after, CHANGES_PER_READ).await {
            Ok(changes) => {
                let complete = changes.len() < CHANGES_PER_READ;
                for change in changes {
                    after = after.max(change.seq);
                    let Some((side, key)) = parse_journal_key(&change.key) else {
                        continue;
                    };
                    if change.parked {
                        delivery.parking.park_at(side, key, change.seq);
                    } else {
                        delivery.parking.unparked_at(side, key, change.seq);
                    }
                }
                if known != Some(true) {
                    FleetParkingKnown {
                        known: true,
                        error: None,
                    }
                    .emit();
                    known = Some(true);
                }
                complete
            }
            Err(err) => {
                if known != Some(false) {
                    FleetParkingKnown {
                        known: false,
                        error: Some(&err.to_string()),
                    }
                    .emit();
                    known = Some(false);
                }
                true
            }
        };
        crate::telemetry::ParkedKeys(delivery.parking.len()).emit();
        if caught_up {
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
        } else if closed.is_cancelled() {
            return;
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
