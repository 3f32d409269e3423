//! Settlements toward a side, made durable before that side serves a request.
//!
//! A copy settled in the local journal comes back after a crash until a checkpoint has
//! persisted its settlement (the journal is at least once). Toward a side that is not
//! authoritative that is harmless: the key's later copies come back with it and land after it.
//! Toward the side that became authoritative it is not: once the cutover hold lets a key
//! through, its writes go to that side directly, with no later copy behind the settled one to
//! set it right, and a copy delivered again after a crash would land an older write over them.
//! So before a request goes to a side, every settlement toward that side so far is persisted:
//! a forced checkpoint, shared by every request waiting meanwhile (one at a time, like a
//! group commit), and none at all while nothing was settled toward the side since the last
//! one, as outside a change of authoritative side.

use std::sync::atomic::{AtomicU64, Ordering};

use tandem_control::Side;
use tandem_journal::{JournalError, MirrorLog};

/// How far settlements toward each side are persisted.
#[derive(Debug, Default)]
pub(super) struct Settlements {
    /// Settlements so far, any side.
    count: AtomicU64,
    /// `count` just after the last settlement toward old.
    last_toward_old: AtomicU64,
    /// `count` just after the last settlement toward new.
    last_toward_new: AtomicU64,
    /// `count` read before the newest forced checkpoint took its snapshot: every settlement
    /// up to it is persisted.
    persisted: AtomicU64,
    /// One forced checkpoint at a time; those waiting for it find themselves covered by it.
    checkpointing: tokio::sync::Mutex<()>,
}

impl Settlements {
    /// Counts a settlement toward `side`. Call it after the journal settled the copy and
    /// before anyone waiting for the copy is told.
    pub(super) fn settled(&self, side: Side) {
        let now = self.count.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        self.last_toward(side).fetch_max(now, Ordering::SeqCst);
    }

    /// Makes every settlement toward `side` so far persisted, by a checkpoint of `journal`
    /// unless one taken since covers them; returns whether it had to wait for one.
    ///
    /// # Errors
    /// When the checkpoint fails: the settlements may come back after a crash.
    pub(super) async fn persist_toward(
        &self,
        side: Side,
        journal: &dyn MirrorLog,
    ) -> Result<bool, JournalError> {
        let needed = self.last_toward(side).load(Ordering::SeqCst);
        if self.persisted.load(Ordering::SeqCst) >= needed {
            return Ok(false);
        }
        let _one_at_a_time = self.checkpointing.lock().await;
        if self.persisted.load(Ordering::SeqCst) >= needed {
            return Ok(true);
        }
        // Every settlement counted by now is in the journal's state, which the checkpoint
        // snapshots after this read.
        let covered = self.count.load(Ordering::SeqCst);
        journal.checkpoint().await?;
        self.persisted.fetch_max(covered, Ordering::SeqCst);
        Ok(true)
    }

    fn last_toward(&self, side: Side) -> &AtomicU64 {
        match side {
            Side::Old => &self.last_toward_old,
            Side::New => &self.last_toward_new,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tandem_journal::{Journal, JournalSettings};

    use super::*;

    #[tokio::test]
    async fn a_settlement_toward_a_side_is_persisted_before_that_side_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let settings = JournalSettings::new(dir.path());
        let (journal, _) = Journal::open(settings.clone()).await.unwrap();
        let toward_new = journal.append(Bytes::from_static(b"a")).await.unwrap();
        let toward_old = journal.append(Bytes::from_static(b"b")).await.unwrap();
        let settlements = Settlements::default();
        journal.settle(toward_new);
        settlements.settled(Side::New);

        // Nothing settled toward old: clearing old takes no checkpoint.
        assert!(!settlements
            .persist_toward(Side::Old, &journal)
            .await
            .unwrap());
        assert!(settlements
            .persist_toward(Side::New, &journal)
            .await
            .unwrap());
        assert!(!settlements
            .persist_toward(Side::New, &journal)
            .await
            .unwrap());
        journal.close().await.unwrap();

        // A crash now: only the copy toward old comes back.
        let (_, back) = Journal::open(settings).await.unwrap();
        let seqs: Vec<u64> = back.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, [toward_old]);
    }
}
