//! Which partitions this instance delivers: a lease per partition, one message on the
//! partition's subject of a lease stream whose messages expire after the lease. It is taken by
//! publishing when the subject is empty (expected last subject sequence 0: nobody holds it)
//! and renewed by publishing at the sequence this instance wrote (only while it still holds
//! it). An instance that dies stops renewing; its partitions expire and are taken by the
//! others.
//!
//! Partitions are shared fairly: every instance also renews a member message on the lease
//! stream, and takes free partitions only up to its share (the partitions divided by the
//! members, rounded up). One holding more than its share gives the extra up, but only once
//! nothing of it is in its workers' hands: it stops reading it, and lets the lease go when its
//! reader starts a new pass from the beginning, which happens only when no copy is in flight
//! ([`Leases::drained`]), so the next holder never overtakes a copy still being delivered.
//! (A plain stream rather than JetStream's key-value layer, whose client cannot read
//! the answers of the 2.9 servers this project runs on.)
//!
//! Fencing: a lease published at `t` (this instance's monotonic clock, before the publish)
//! expires on the server at the earliest `lease` after `t`; this instance delivers a
//! partition's copies only until `t` plus nine tenths of the lease ([`Leases::may_deliver`]),
//! the tenth a margin for the two clocks' rates. An instance paused past that (a stop, a long
//! pause of the machine) finds on waking that it may no longer deliver, before its renewal
//! runs and learns the partition is another's: it never delivers a copy the next holder may
//! have delivered, and newer copies after it, since.
//!
//! That fences when a copy is sent, not when the other side applies it: a partition taken from
//! a holder whose lease expired (rather than one it gave back drained) is read only once that
//! holder's last request can have ended (`holders.rs`); until then its lease is renewed but it
//! is not among those [`Leases::held`] returns (it is among [`Leases::waiting`]). A partition
//! given back or lost before its wait ended leaves the rest of the wait to the next holder: the
//! record written at the take owes it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::holders::Holders;

/// The partitions held, with the sequence of each one's lease message.
#[derive(Debug)]
pub(crate) struct Leases {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// The lease subjects' prefix: `<prefix>.<partition>`.
    prefix: String,
    instance: String,
    partitions: u32,
    /// How long a lease message lives on the server.
    lease: Duration,
    held: Mutex<BTreeMap<u32, u64>>,
    /// Partitions still leased but no longer read, given up once the reader has drained.
    releasing: Mutex<BTreeMap<u32, u64>>,
    /// Per partition leased, until when this instance may deliver its copies.
    valid_until: Mutex<BTreeMap<u32, Instant>>,
    /// Bumped at every change of [`Leases::held`].
    epoch: AtomicU64,
    /// Leases this instance held and could not renew (another instance may hold them now).
    lost: AtomicU64,
    /// Who delivered each partition last.
    holders: Holders,
    /// Per partition held (or being handed over), the revision of this instance's record in
    /// [`Leases::holders`].
    claims: Mutex<BTreeMap<u32, u64>>,
    /// Partitions held whose previous holder's last request may still be on its way, with
    /// when it can no longer be: not read (nor delivered) until then.
    not_before: Mutex<BTreeMap<u32, Instant>>,
}

impl Leases {
    pub(crate) fn new(
        jetstream: jetstream::Context,
        stream: stream::Stream,
        prefix: String,
        instance: String,
        partitions: u32,
        lease: Duration,
        holders: Holders,
    ) -> Self {
        Self {
            jetstream,
            stream,
            prefix,
            instance,
            partitions,
            lease,
            held: Mutex::new(BTreeMap::new()),
            releasing: Mutex::new(BTreeMap::new()),
            valid_until: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            holders,
            claims: Mutex::new(BTreeMap::new()),
            not_before: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether this instance may deliver a copy of `partition` now: it holds the partition's
    /// lease (reading it, or handing it over) and the lease cannot have expired on the server.
    pub(crate) fn may_deliver(&self, partition: u32) -> bool {
        self.promote();
        !lock(&self.not_before).contains_key(&partition) && self.valid(partition, Instant::now())
    }

    fn valid(&self, partition: u32, now: Instant) -> bool {
        lock(&self.valid_until)
            .get(&partition)
            .is_some_and(|until| now < *until)
    }

    /// Partitions whose previous holder's last request has ended by now join those read: the
    /// epoch changes, and the reader starts a new pass.
    fn promote(&self) {
        let now = Instant::now();
        let mut waiting = lock(&self.not_before);
        let before = waiting.len();
        waiting.retain(|_, until| now < *until);
        if waiting.len() != before {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                "delivering a partition taken over, its previous holder's requests over"
            );
        }
    }

    /// Leases held and lost since the start.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }

    /// The partitions held now and read: not those whose previous holder's last request may
    /// still be on its way.
    pub(crate) fn held(&self) -> Vec<u32> {
        self.promote();
        let waiting: Vec<u32> = lock(&self.not_before).keys().copied().collect();
        self.lock()
            .keys()
            .copied()
            .filter(|partition| !waiting.contains(partition))
            .collect()
    }

    /// The partitions held now whose previous holder's last request may still be on its way:
    /// leased, not read yet.
    pub(crate) fn waiting(&self) -> Vec<u32> {
        self.promote();
        lock(&self.not_before).keys().copied().collect()
    }

    /// Changes at every gain (once it is read) or loss of a partition.
    pub(crate) fn epoch(&self) -> u64 {
        self.promote();
        self.epoch.load(Ordering::SeqCst)
    }

    /// Renews the leases held and takes the free ones; a lease that cannot be renewed is
    /// given up (another instance may hold it by now).
    pub(crate) async fn renew(&self) {
        let share = self.partitions.div_ceil(self.members().await.max(1));
        let releasing: Vec<(u32, u64)> = self.releasing().clone().into_iter().collect();
        for (partition, revision) in releasing {
            let sent = Instant::now();
            match self.publish(partition, revision).await {
                Some(renewed) => {
                    let still = match self.releasing().get_mut(&partition) {
                        Some(revision) => {
                            *revision = renewed;
                            true
                        }
                        None => false,
                    };
                    if still {
                        self.validate(partition, sent);
                    } else if let Err(err) = self.stream.delete_message(renewed).await {
                        // Given back meanwhile (`drained`), whose deletion missed this
                        // renewal: kept, it would hold the partition with nobody reading it.
                        tracing::warn!(partition, error = %err, "cannot give a partition lease back; it expires");
                    }
                }
                None => {
                    // Expired or taken: its copies in flight are no longer this instance's.
                    self.releasing().remove(&partition);
                    self.invalidate(partition);
                    self.lost.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(partition, "lost the lease of a partition being handed over");
                }
            }
        }
        for partition in 0..self.partitions {
            let revision = self.lock().get(&partition).copied();
            let taken = self.lock().len() + self.releasing().len();
            if revision.is_none()
                && (taken >= usize::try_from(share).unwrap_or(usize::MAX)
                    || self.releasing().contains_key(&partition))
            {
                continue;
            }
            let sent = Instant::now();
            let outcome = match (
                revision,
                self.publish(partition, revision.unwrap_or(0)).await,
            ) {
                (None, Some(taken)) => self.claim(partition, taken).await,
                (_, outcome) => outcome,
            };
            let mut held = self.lock();
            match (revision, outcome) {
                (_, Some(revision)) => {
                    self.validate(partition, sent);
                    if held.insert(partition, revision).is_none() {
                        self.epoch.fetch_add(1, Ordering::SeqCst);
                        tracing::info!(partition, "delivering a partition of the shared journal");
                    }
                }
                (Some(_), None) => {
                    held.remove(&partition);
                    self.invalidate(partition);
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                    self.lost.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(
                        partition,
                        "lost the lease of a partition of the shared journal"
                    );
                }
                (None, None) => {}
            }
        }
        self.shed_extra(share);
    }

    /// Records this instance as the holder of `partition`, whose lease it took as `lease`,
    /// and holds its copies back while the previous holder's last request may be on its way;
    /// `None` (the lease given back) when the record cannot be read or written: taken without
    /// it, the next holder would not know to wait for this instance's requests.
    async fn claim(&self, partition: u32, lease: u64) -> Option<u64> {
        let claimed = async {
            let previous = self.holders.previous(partition).await?;
            let revision = self.holders.claim(partition, previous).await?;
            Ok::<_, super::Failure>((previous.wait, revision))
        }
        .await;
        match claimed {
            Ok((wait, revision)) => {
                lock(&self.claims).insert(partition, revision);
                if !wait.is_zero() {
                    // Its last request began before its lease lapsed, before this take.
                    lock(&self.not_before).insert(partition, Instant::now() + wait);
                    tracing::warn!(
                        partition,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "a partition taken over from a holder whose lease expired: its copies \
                         wait until that holder's last request can have ended"
                    );
                }
                Some(lease)
            }
            Err((what, reason)) => {
                tracing::warn!(
                    partition,
                    what,
                    reason,
                    "cannot record this instance as a partition's holder; its lease is given back"
                );
                if let Err(err) = self.stream.delete_message(lease).await {
                    tracing::warn!(partition, error = %err, "cannot give a partition lease back; it expires");
                }
                None
            }
        }
    }

    /// Gives `partition`'s lease message `lease` back, with no request of this instance on
    /// its way: the record says it was released, so the next holder reads it at once (unless
    /// this instance never read it: the previous holder's requests may still be on their way).
    async fn give_back(&self, partition: u32, lease: u64) {
        self.promote();
        let claim = lock(&self.claims).remove(&partition);
        let waiting = lock(&self.not_before).remove(&partition).is_some();
        if let (Some(claim), false) = (claim, waiting) {
            if let Err((what, reason)) = self.holders.release(partition, claim).await {
                tracing::debug!(partition, what, reason, "cannot mark a partition released; its next holder waits for this instance's requests");
            }
        }
        if let Err(err) = self.stream.delete_message(lease).await {
            tracing::warn!(partition, error = %err, "cannot give a partition lease back; it expires");
        }
    }

    /// Gives up, once drained, the partitions held beyond this instance's share.
    fn shed_extra(&self, share: u32) {
        let mut held = self.lock();
        let share = usize::try_from(share).unwrap_or(usize::MAX);
        let mut releasing = self.releasing();
        // Only the partitions beyond the share (those being handed over are held no more).
        while held.len() > share {
            if let Some((partition, revision)) = held.pop_last() {
                releasing.insert(partition, revision);
                self.epoch.fetch_add(1, Ordering::SeqCst);
                tracing::info!(partition, "handing a partition of the shared journal over once its copies in flight are delivered");
            }
        }
    }

    /// A lease of `partition` published at `sent` was accepted: its copies may be delivered
    /// until nine tenths of the lease after `sent`.
    fn validate(&self, partition: u32, sent: Instant) {
        lock(&self.valid_until).insert(partition, sent + self.lease.mul_f64(0.9));
    }

    /// `partition` is no longer this instance's to deliver (its requests may still be on
    /// their way: its record is left as it is, for the next holder to wait).
    fn invalidate(&self, partition: u32) {
        lock(&self.valid_until).remove(&partition);
        lock(&self.not_before).remove(&partition);
        lock(&self.claims).remove(&partition);
    }

    /// The reader holds no copy in flight: the partitions being given up go now.
    pub(crate) async fn drained(&self) {
        let releasing = std::mem::take(&mut *self.releasing());
        let now = Instant::now();
        for (partition, revision) in releasing {
            if !self.valid(partition, now) {
                // It expired before it was handed over (this instance stalled): another
                // instance may hold it already.
                self.lost.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(partition, "lost the lease of a partition being handed over");
            }
            lock(&self.valid_until).remove(&partition);
            self.give_back(partition, revision).await;
        }
    }

    /// Publishes this instance's lease of `partition` at the expected last sequence
    /// `revision` (0: nobody holds it); the new sequence, or `None` when refused.
    async fn publish(&self, partition: u32, revision: u64) -> Option<u64> {
        let lease = PublishMessage::build()
            .payload(Bytes::from(self.instance.clone()))
            .expected_last_subject_sequence(revision);
        match self
            .jetstream
            .send_publish(format!("{}.{partition}", self.prefix), lease)
            .await
        {
            Ok(ack) => ack.await.ok().map(|ack| ack.sequence),
            Err(_) => None,
        }
    }

    /// The instance holding `partition`'s lease now, as the lease stream says (`None`: free,
    /// or the stream cannot be read).
    pub(crate) async fn holder(&self, partition: u32) -> Option<String> {
        let lease = self
            .stream
            .get_last_raw_message_by_subject(&format!("{}.{partition}", self.prefix))
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&lease.payload).into_owned())
    }

    /// Renews this instance's member message and counts the members alive (at least 1).
    async fn members(&self) -> u32 {
        let token = format!("{:016x}", super::subject::fnv1a(self.instance.as_bytes()));
        let member = PublishMessage::build().payload(Bytes::from(self.instance.clone()));
        if let Ok(ack) = self
            .jetstream
            .send_publish(format!("{}.members.{token}", self.prefix), member)
            .await
        {
            let _ = ack.await;
        }
        let Ok(mut subjects) = self
            .stream
            .info_with_subjects(format!("{}.members.*", self.prefix))
            .await
        else {
            return 1;
        };
        let mut count = 0u32;
        while let Some(Ok(_)) = subjects.next().await {
            count = count.saturating_add(1);
        }
        count.max(1)
    }

    fn releasing(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.releasing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives every lease held back, so that others take the partitions without waiting for
    /// them to expire.
    pub(crate) async fn release(&self) {
        let mut held: Vec<(u32, u64)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        held.extend(std::mem::take(&mut *self.releasing()));
        lock(&self.valid_until).clear();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for (partition, revision) in held {
            // Only this instance's lease message (and record): one taken by another since is
            // left alone.
            self.give_back(partition, revision).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often leases are renewed: a third of the lease, so one late renewal does not lose it.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}
