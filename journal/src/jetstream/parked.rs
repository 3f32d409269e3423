//! The fleet's parked keys: which keys have copies kept in the control store (delivery
//! failed, waiting for a replay), so that every instance refuses them at a cutover, not only
//! the one whose worker kept the copy.
//!
//! One message per key on a stream of its own (`<stream>_parked`, one message per subject,
//! the subject a digest of the key): a **marker** (the key) published before the copy kept is
//! settled, so that it is in the stream before the copy leaves the journal; a **release**
//! (the key, with a header) published once the store keeps no copy of the key any more, at
//! the marker's sequence (expected last subject sequence), so that it never hides a marker
//! published since. The last message of a key's subject is its state; each instance reads
//! the stream's messages in order ([`Parked::changes_after`]) to follow the fleet's, and a
//! request asks for one key's last message ([`Parked::lookup`]) when it must be sure. (A
//! plain stream rather than JetStream's key-value layer, whose client cannot read the
//! answers of the 2.9 servers this project runs on; see `lease.rs`.)

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::Failure;
use crate::log::ParkChange;

/// The header marking a release; a message without it is a marker.
const RELEASED_HEADER: &str = "Tandem-Parked";

/// The parked-keys stream of one shared journal.
#[derive(Debug)]
pub(crate) struct Parked {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// The stream on the connection of what requests wait for, for [`Parked::lookup`].
    lookups: stream::Stream,
    /// The subjects' prefix: `<prefix>.<key digest>`.
    prefix: String,
}

impl Parked {
    /// Creates (or finds) the stream `name` with subjects under `prefix`; a request's lookups
    /// go through `lookups`.
    pub(crate) async fn open(
        jetstream: jetstream::Context,
        lookups: &jetstream::Context,
        name: String,
        prefix: String,
        replicas: usize,
    ) -> Result<Parked, Failure> {
        let stream = super::side::open(
            &jetstream,
            stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.*")],
                max_messages_per_subject: 1,
                num_replicas: replicas.max(1),
                storage: stream::StorageType::File,
                ..Default::default()
            },
            "open the parked-keys stream",
        )
        .await?;
        let lookups = lookups
            .get_stream(&name)
            .await
            .map_err(|err| ("read the parked-keys stream", err.to_string()))?;
        Ok(Parked {
            jetstream,
            stream,
            lookups,
            prefix,
        })
    }

    /// The subject of `key`'s state.
    fn subject(&self, key: &str) -> String {
        let digest = blake3::hash(key.as_bytes()).to_hex();
        format!("{}.{}", self.prefix, &digest[..32])
    }

    /// Publishes a marker for `key`; its sequence once the server stored it.
    pub(crate) async fn park(&self, key: &str) -> Result<u64, Failure> {
        let marker = PublishMessage::build().payload(Bytes::from(key.to_owned()));
        let ack = self
            .jetstream
            .send_publish(self.subject(key), marker)
            .await
            .map_err(|err| ("park a key", err.to_string()))?;
        let ack = tokio::time::timeout(super::ACK_TIMEOUT, ack)
            .await
            .map_err(|_| ("park a key", "no acknowledgement in time".to_owned()))?
            .map_err(|err| ("park a key", err.to_string()))?;
        Ok(ack.sequence)
    }

    /// Publishes the release of `key`'s marker `revision`: `Ok(false)` when a newer marker
    /// (or release) is there, which stays.
    pub(crate) async fn release(&self, key: &str, revision: u64) -> Result<bool, Failure> {
        let release = PublishMessage::build()
            .header(RELEASED_HEADER, "released")
            .expected_last_subject_sequence(revision)
            .payload(Bytes::from(key.to_owned()));
        let ack = self
            .jetstream
            .send_publish(self.subject(key), release)
            .await
            .map_err(|err| ("release a key", err.to_string()))?;
        match tokio::time::timeout(super::ACK_TIMEOUT, ack).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(err)) if err.to_string().contains("wrong last sequence") => Ok(false),
            Ok(Err(err)) => Err(("release a key", err.to_string())),
            Err(_) => Err(("release a key", "no acknowledgement in time".to_owned())),
        }
    }

    /// The sequence of `key`'s marker, if it is parked now.
    pub(crate) async fn lookup(&self, key: &str) -> Result<Option<u64>, Failure> {
        match self
            .lookups
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(message) if message.headers.get(RELEASED_HEADER).is_none() => {
                Ok(Some(message.sequence))
            }
            Ok(_) => Ok(None),
            Err(err) if no_last_message(&err) => Ok(None),
            Err(err) => Err(("read a parked key", err.to_string())),
        }
    }

    /// Up to `max` changes (markers and releases) with a sequence above `after`, in order.
    pub(crate) async fn changes_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<ParkChange>, Failure> {
        let mut changes = Vec::new();
        let mut from = after.saturating_add(1);
        while changes.len() < max {
            let found = self
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(format!("{}.*", self.prefix))
                .send()
                .await;
            let message = match found {
                Ok(message) => message,
                Err(err) if super::is_no_message(&err) => break,
                Err(err) => return Err(("read the parked keys", err.to_string())),
            };
            from = message.sequence.saturating_add(1);
            changes.push(ParkChange {
                seq: message.sequence,
                key: String::from_utf8_lossy(&message.payload).into_owned(),
                parked: message.headers.get(RELEASED_HEADER).is_none(),
            });
        }
        Ok(changes)
    }
}

/// Whether a read of a subject's last message found none.
pub(crate) fn no_last_message(err: &stream::LastRawMessageError) -> bool {
    match err.kind() {
        stream::LastRawMessageErrorKind::NoMessageFound => true,
        stream::LastRawMessageErrorKind::JetStream(err) => {
            err.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}
