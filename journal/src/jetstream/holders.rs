//! Who delivered each partition last, and whether it let go cleanly: one message per partition
//! on `<stream>_holders` (no age: it outlives the lease), written by an instance when it takes
//! the partition's lease (its name and the wait it owes the next holder) and marked released
//! when it gives the lease back with no copy in flight.
//!
//! The lease fences when a copy is sent, not when the other side applies it: a holder's request
//! may still be on its way (the other side stalled, or the holder cut off from the server but
//! not from the side) when its lease expires, and a request that lands after the next holder
//! delivered newer copies of its key leaves the side stale. A holder sends no request once its
//! lease may have lapsed on the server (`lease.rs`), so its last request began before the next
//! holder took the lease, and ends (answered or timed out) within its timeout. So a partition
//! taken from a holder that did not release it is read only the wait that holder owed after it
//! was taken; one released, or never leased (a new lease stream), is read at once.
//!
//! The wait owed is the longer of the holder's own longest request and the wait it inherited
//! (the previous holder's last request may outlast it: a holder that lets the partition go, or
//! loses it, before its own wait ends passes the rest on). Both are counted from the take, and
//! the next holder counts from its own take, later: never shorter than owed. A record without
//! it (written by hand), or no record for a partition of a lease stream that was used before
//! (a rolling upgrade from a build that wrote none, the holders stream deleted), leaves the
//! previous holder's requests unknown: the wait is this instance's own longest request.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::Failure;

/// The header of a holder's record with the wait it owes the next holder, in milliseconds
/// (the name it had when it held only the holder's longest delivery request).
const TIMEOUT_HEADER: &str = "Tandem-Request-Timeout";

/// The header of a record marking the partition released.
const RELEASED_HEADER: &str = "Tandem-Released";

/// The last holders of the partitions.
#[derive(Debug)]
pub(crate) struct Holders {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// The subjects' prefix: `<prefix>.<partition>`.
    prefix: String,
    instance: String,
    /// This instance's longest delivery request.
    request_timeout: Duration,
    /// Whether the lease stream was used before this instance opened it: a partition with
    /// no record may then have had a holder that wrote none.
    leased_before: bool,
}

/// A partition's last holder as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Previous {
    /// The record's sequence (0: none).
    pub(crate) revision: u64,
    /// How long after taking the partition its copies may be delivered: the wait the last
    /// holder owed when it did not release it, else zero.
    pub(crate) wait: Duration,
}

impl Holders {
    /// Creates (or finds) the stream `name` with subjects `<prefix>.*`; `leased_before`: the
    /// lease stream held messages when this instance opened it.
    pub(crate) async fn open(
        jetstream: jetstream::Context,
        (name, prefix): (String, String),
        replicas: usize,
        (instance, request_timeout): (String, Duration),
        leased_before: bool,
    ) -> Result<Holders, Failure> {
        let stream = super::side::open(
            &jetstream,
            stream::Config {
                name,
                subjects: vec![format!("{prefix}.*")],
                max_messages_per_subject: 1,
                num_replicas: replicas.max(1),
                storage: stream::StorageType::File,
                ..Default::default()
            },
            "open the partition holders stream",
        )
        .await?;
        Ok(Holders {
            jetstream,
            stream,
            prefix,
            instance,
            request_timeout,
            leased_before,
        })
    }

    /// `partition`'s last holder as recorded.
    pub(crate) async fn previous(&self, partition: u32) -> Result<Previous, Failure> {
        let last = self
            .stream
            .get_last_raw_message_by_subject(&self.subject(partition))
            .await;
        match last {
            Ok(message) => {
                let wait = if message.headers.get(RELEASED_HEADER).is_some() {
                    Duration::ZERO
                } else {
                    // Without the wait owed, the holder's requests are unknown.
                    message
                        .headers
                        .get(TIMEOUT_HEADER)
                        .and_then(|millis| millis.as_str().parse().ok())
                        .map_or(self.request_timeout, Duration::from_millis)
                };
                Ok(Previous {
                    revision: message.sequence,
                    wait,
                })
            }
            Err(err) if super::parked::no_last_message(&err) => Ok(Previous {
                revision: 0,
                // Leased before by a holder that wrote no record, perhaps.
                wait: if self.leased_before {
                    self.request_timeout
                } else {
                    Duration::ZERO
                },
            }),
            Err(err) => Err(("read a partition's last holder", err.to_string())),
        }
    }

    /// Records this instance as `partition`'s holder, over the record `previous` read (refused
    /// when another was written since), owing the next holder the longer of its own longest
    /// request and the wait `previous` passes on; the new record's revision.
    pub(crate) async fn claim(&self, partition: u32, previous: Previous) -> Result<u64, Failure> {
        let owed = self.request_timeout.max(previous.wait);
        let millis = u64::try_from(owed.as_millis()).unwrap_or(u64::MAX);
        let record = PublishMessage::build()
            .payload(Bytes::from(self.instance.clone()))
            .header(TIMEOUT_HEADER, millis.to_string().as_str())
            .expected_last_subject_sequence(previous.revision);
        self.publish(partition, record).await
    }

    /// Marks `partition` released by this instance, whose record is `revision`: taken by
    /// another since, it is left alone.
    pub(crate) async fn release(&self, partition: u32, revision: u64) -> Result<u64, Failure> {
        let record = PublishMessage::build()
            .payload(Bytes::from(self.instance.clone()))
            .header(RELEASED_HEADER, "released")
            .expected_last_subject_sequence(revision);
        self.publish(partition, record).await
    }

    async fn publish(&self, partition: u32, record: PublishMessage) -> Result<u64, Failure> {
        let ack = self
            .jetstream
            .send_publish(self.subject(partition), record)
            .await
            .map_err(|err| ("record a partition's holder", err.to_string()))?;
        let ack = tokio::time::timeout(super::ACK_TIMEOUT, ack)
            .await
            .map_err(|_| {
                (
                    "record a partition's holder",
                    "no acknowledgement in time".to_owned(),
                )
            })?
            .map_err(|err| ("record a partition's holder", err.to_string()))?;
        Ok(ack.sequence)
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.prefix)
    }
}
