//! The fleet's cutover window: how long after a change of stage copies toward the side that
//! became authoritative, accepted through any instance before the change, may still be in the
//! shared journal, so that the cutover hold asks the stream about a request's key only then.
//!
//! A copy is in the stream before its write is answered, and an instance appends copies toward
//! a side only while it has not applied the change that makes that side authoritative (or has
//! a write begun before it in flight). So once every instance had time to apply the change and
//! finish such writes (the grace, counted from when this instance saw the change) and every
//! copy the stream held at the end of the grace is settled, no copy toward the side is left or
//! can come: the window closes and requests to the side go straight through (checked only
//! against the fleet's parked keys, read once more before it closes). It is open at start,
//! since a change may have happened just before.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tandem_control::Side;
use tandem_journal::MirrorLog;
use tokio::time::Instant;

/// Whether requests to the authoritative side must be checked against the shared journal.
#[derive(Debug)]
pub(super) struct CutoverWindow {
    /// How long a change of authoritative side may take to reach every instance, plus the
    /// longest write begun before it there.
    grace: Duration,
    state: Mutex<WindowState>,
}

#[derive(Debug, Clone, Copy)]
struct WindowState {
    /// The stage change the window last looked at (its record's id; `None` before the first
    /// look).
    stage: Option<i64>,
    /// The side authoritative since that change.
    side: Option<Side>,
    /// When this instance saw the side become authoritative.
    since: Instant,
    /// Where the stream ended once the grace had passed.
    horizon: Option<u64>,
    open: bool,
}

impl CutoverWindow {
    /// An open window, about no change yet.
    pub(super) fn new(grace: Duration) -> Self {
        Self {
            grace,
            state: Mutex::new(WindowState {
                stage: None,
                side: None,
                since: Instant::now(),
                horizon: None,
                open: true,
            }),
        }
    }

    /// Whether a request must wait for its key's copies in the stream, with `stage` the id of
    /// the stage change this instance applied last: while the window is open, and when the
    /// window has not looked at that change yet.
    pub(super) fn covers(&self, stage: i64) -> bool {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.open || state.stage != Some(stage)
    }

    /// One look at the window with `stage` the id of the stage change this instance applied
    /// last and `side` authoritative since: a change of authoritative side opens it (so does
    /// any change but the next one after the last looked at, which could hide two changes);
    /// once the grace has passed, where the stream ends is taken, and once every copy up to
    /// there is settled, and the fleet's parked keys are read from then on (`parked_read`:
    /// the markers of copies kept rather than delivered, all stored before their copies were
    /// settled), the window closes. A journal that cannot answer leaves it as it is.
    pub(super) async fn follow<F>(
        &self,
        stage: i64,
        side: Side,
        journal: &dyn MirrorLog,
        parked_read: impl FnOnce() -> F,
    ) where
        F: Future<Output = bool>,
    {
        let seen = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.stage != Some(stage) {
                let next = state
                    .stage
                    .is_some_and(|seen| seen.checked_add(1) == Some(stage));
                if next && state.side == Some(side) {
                    state.stage = Some(stage);
                } else {
                    *state = WindowState {
                        stage: Some(stage),
                        side: Some(side),
                        since: Instant::now(),
                        horizon: None,
                        open: true,
                    };
                }
            }
            *state
        };
        if !seen.open || seen.since.elapsed() < self.grace {
            return;
        }
        let horizon = match seen.horizon {
            Some(horizon) => horizon,
            None => {
                let Ok(Some(horizon)) = journal.mark().await else {
                    return;
                };
                self.update(seen, |state| state.horizon = Some(horizon));
                horizon
            }
        };
        let settled = match journal.first_unsettled().await {
            Ok(None) => true,
            Ok(Some(first)) => first > horizon,
            Err(_) => false,
        };
        if settled && parked_read().await {
            self.update(seen, |state| state.open = false);
        }
    }

    /// Whether the window is open.
    pub(super) fn is_open(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    /// Applies `change` unless the authoritative side changed since `seen` was looked at.
    fn update(&self, seen: WindowState, change: impl FnOnce(&mut WindowState)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.side == seen.side && state.since == seen.since {
            change(&mut state);
        }
    }
}
