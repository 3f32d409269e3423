//! Which partitions this instance delivers: a lease per partition, one message on the
//! partition's subject of a lease stream whose messages expire after the lease. It is taken by
//! publishing when the subject is empty (expected last subject sequence 0: nobody holds it)
//! and renewed by publishing at the sequence this instance wrote (only while it still holds
//! it). An instance that dies stops renewing; its partitions expire and are taken by the
//! others. (A plain stream rather than JetStream's key-value layer, whose client cannot read
//! the answers of the 2.9 servers this project runs on.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

/// The partitions held, with the sequence of each one's lease message.
#[derive(Debug)]
pub(crate) struct Leases {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// The lease subjects' prefix: `<prefix>.<partition>`.
    prefix: String,
    instance: String,
    partitions: u32,
    held: Mutex<BTreeMap<u32, u64>>,
    /// Bumped at every change of [`Leases::held`].
    epoch: AtomicU64,
}

impl Leases {
    pub(crate) fn new(
        jetstream: jetstream::Context,
        stream: stream::Stream,
        prefix: String,
        instance: String,
        partitions: u32,
    ) -> Self {
        Self {
            jetstream,
            stream,
            prefix,
            instance,
            partitions,
            held: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// The partitions held now.
    pub(crate) fn held(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    /// Changes at every gain or loss of a partition.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Renews the leases held and takes the free ones; a lease that cannot be renewed is
    /// given up (another instance may hold it by now).
    pub(crate) async fn renew(&self) {
        for partition in 0..self.partitions {
            let revision = self.lock().get(&partition).copied();
            let lease = PublishMessage::build()
                .payload(Bytes::from(self.instance.clone()))
                .expected_last_subject_sequence(revision.unwrap_or(0));
            let outcome = match self
                .jetstream
                .send_publish(format!("{}.{partition}", self.prefix), lease)
                .await
            {
                Ok(ack) => ack.await.ok().map(|ack| ack.sequence),
                Err(_) => None,
            };
            let mut held = self.lock();
            match (revision, outcome) {
                (_, Some(revision)) => {
                    if held.insert(partition, revision).is_none() {
                        self.epoch.fetch_add(1, Ordering::SeqCst);
                        tracing::info!(partition, "delivering a partition of the shared journal");
                    }
                }
                (Some(_), None) => {
                    held.remove(&partition);
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(
                        partition,
                        "lost the lease of a partition of the shared journal"
                    );
                }
                (None, None) => {}
            }
        }
    }

    /// Gives every lease held back, so that others take the partitions without waiting for
    /// them to expire.
    pub(crate) async fn release(&self) {
        let held: Vec<(u32, u64)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for (partition, revision) in held {
            // Only this instance's lease message: one taken by another since is left alone.
            if let Err(err) = self.stream.delete_message(revision).await {
                tracing::warn!(partition, error = %err, "cannot give a partition lease back; it expires");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How often leases are renewed: a third of the lease, so one late renewal does not lose it.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}
