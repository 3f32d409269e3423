//! The shared journal: mirror copies in a NATS JetStream stream, for a fleet of proxies.
//!
//! A copy is published on a subject derived from its key (`subject.rs`) and is acknowledged by
//! the server (stored, replicated as configured) before `append` returns, so it outlives the
//! instance that accepted it. The stream's sequence is the journal's: two copies of one key
//! appended one after the other, through any instances, read back in that order. Keys are
//! spread over partitions; each partition is read by the one instance holding its lease
//! (`lease.rs`), which delivers its copies and settles them: a settled copy is deleted from the
//! stream (`settle.rs`), so the stream holds exactly what is still owed to the other side.
//! Keys whose copies are kept in the control store instead are marked on a stream of their own
//! (`parked.rs`), so that every instance refuses them at a cutover.

mod holders;
mod horizon;
mod lease;
mod parked;
mod settle;
mod settled;
mod side;
mod subject;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::log::{FleetStats, LogFuture, MirrorLog, ParkChange, PartitionBacklog, Refusal};
use crate::{JournalError, JournalStats, Record, Reservation};
use holders::Holders;
use horizon::Horizon;
use lease::Leases;
use parked::Parked;
use settle::Settler;
use settled::{Origin, Settled};
use subject::{fnv1a, Subjects};

/// Why an operation on a stream beside the journal's failed: what was being done and what the
/// server said (or why the stream found does not serve).
pub(crate) type Failure = (&'static str, String);

/// How long an append waits for the server's acknowledgement before it fails (and may be
/// tried again by the caller: delivery is at least once).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the shared journal lives and how it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// The NATS server, `nats://HOST:PORT` (credentials in it are never logged).
    pub url: String,
    /// The stream's name; every instance of one fleet uses the same.
    pub stream: String,
    /// Copies of the stream the servers keep (1 for a single server).
    pub replicas: usize,
    /// How long a copy may wait in the stream before its partition's holder gives up
    /// delivering it and keeps it in the control store instead (for replay, its key parked);
    /// zero waits until it is delivered. Kept by the readers, never by the server: NATS
    /// deletes a message past its stream's age without a trace (`MirrorLog::retention`).
    pub retention: Duration,
    /// The most bytes the stream may hold: reservations past it are refused. The bound is
    /// kept by the instances (each counts the stream's size as last read and its own appends
    /// since), not by the server, which drops a stream's oldest copies at its bound.
    pub max_bytes: u64,
    /// Partitions the keys are spread over; every instance of one fleet uses the same.
    pub partitions: u32,
    /// How long a partition stays with an instance that stopped renewing its lease.
    pub lease: Duration,
    /// This instance's name, written in the leases it holds.
    pub instance: String,
    /// The longest a delivery request of this instance may take (its sides' timeouts): a
    /// partition taken from it after its lease expired is read by the next holder only this
    /// long after (`holders.rs`).
    pub request_timeout: Duration,
}

impl SharedSettings {
    /// The default [`SharedSettings::partitions`].
    pub const DEFAULT_PARTITIONS: u32 = 16;
    /// The default [`SharedSettings::lease`].
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
}

/// A handle on the shared journal; clones share it.
#[derive(Debug, Clone)]
pub struct SharedJournal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server: String,
    /// The connection of what a request waits for (appends, marks, the cutover hold's
    /// reads), whose state says whether appends can be taken now. A connection of its own:
    /// the server answers a connection's requests one after the other, so a write's append
    /// never waits behind the reader's, the settler's and the leases' requests.
    requests: async_nats::Client,
    /// JetStream on [`Inner::requests`].
    appends: jetstream::Context,
    /// The stream, on [`Inner::requests`].
    request_stream: stream::Stream,
    /// The connection of the work in the background (reading copies back, settling, leases,
    /// parked keys, the stream's numbers).
    client: async_nats::Client,
    stream: stream::Stream,
    /// The record of settled copies, which the reader passes over.
    settled: Arc<Settled>,
    /// The id of the server process [`Inner::client`] was last seen connected to.
    server_id: Mutex<String>,
    /// How many times that server was seen to have restarted (its id changed, or the
    /// stream's first sequence went back).
    restarts: AtomicU64,
    /// The stream's first sequence as last read.
    first_seen: AtomicU64,
    subjects: Subjects,
    leases: Arc<Leases>,
    /// The fleet's parked keys.
    parked: Parked,
    settler: Settler,
    max_bytes: u64,
    /// [`SharedSettings::retention`]; zero: none.
    retention: Duration,
    /// Room promised to appends to come.
    reserved: Arc<Mutex<u64>>,
    /// When an append last failed, until one succeeds: writes are refused before the
    /// authoritative side sees them while appends fail ([`APPEND_FAILURE_HOLD`]).
    append_failed_at: Mutex<Option<std::time::Instant>>,
    /// The most bytes the server takes in one message (its `max_payload`), as read at open
    /// and at each checkpoint: off the request path, which only compares.
    max_payload: std::sync::atomic::AtomicUsize,
    /// Bytes this instance appended: those appended since the stream's numbers were last read
    /// ([`Inner::appended_at_observe`]) take room the numbers do not show yet.
    appended: AtomicU64,
    /// [`Inner::appended`] when the stream's numbers were last asked for.
    appended_at_observe: AtomicU64,
    /// The most bytes a copy takes in the stream besides its payload ([`message_overhead`]).
    overhead: u64,
    /// Where the stream ends: the highest seq appended or read here, and the server's reads.
    horizon: Horizon,
    /// The last read that found no copy to hand on.
    empty_read: Mutex<Option<EmptyRead>>,
    /// The highest seq read back here.
    read_high: AtomicU64,
    /// Copies read back at or below [`Inner::read_high`].
    rereads: AtomicU64,
    /// This instance's name, written on every copy it appends.
    instance: String,
    /// Per key subject, the last copy read: its seq and the instance that appended it.
    last_by_key: Mutex<HashMap<String, (u64, String)>>,
    /// Per key subject the cutover hold asked about, the newest copy it saw there that it
    /// does not know settled: a copy gone from the stream is taken for settled only once the
    /// record says so ([`SharedJournal::holds`]).
    seen_by_hold: Mutex<HashMap<String, u64>>,
    /// The stream's first sequence when this instance opened it: every copy from there on is
    /// in the record of settled copies once settled ([`SharedJournal::first_unsettled`]).
    record_from: u64,
    /// Copies found lost by the server ([`SharedJournal::note_if_lost`]), each said once.
    lost: Mutex<BTreeSet<u64>>,
    /// Copies read and found concurrent with another instance's, not yet asked about.
    conflicts: Mutex<HashSet<u64>>,
    /// The stream's numbers at the last checkpoint.
    observed: Mutex<JournalStats>,
    renewing: JoinHandle<()>,
}

impl SharedJournal {
    /// Connects to the server, creates the stream and the lease bucket (or checks that those
    /// there match the settings), takes the free partitions and starts renewing their leases.
    ///
    /// # Errors
    /// When the server cannot be reached, has no JetStream, or holds a stream or bucket of
    /// that name with other settings.
    pub async fn open(settings: SharedSettings) -> Result<SharedJournal, JournalError> {
        let server = without_credentials(&settings.url);
        let fail = |what: &'static str| {
            let server = server.clone();
            move |err: &dyn std::fmt::Display| JournalError::Nats {
                server,
                what,
                reason: one_line(err),
            }
        };
        let client = connect_options(&settings.url)
            .name("tandem")
            .connect(servers_of(&settings.url).as_str())
            .await
            .map_err(|err| fail("connect")(&err))?;
        let version = client.server_info().version;
        if !keeps_acknowledged_messages(&version) {
            tracing::error!(
                server,
                version,
                "this NATS server may lose acknowledged mirror copies when it is killed and \
                 restarted (seen with 2.9.10: copies still being delivered disappeared); run \
                 NATS 2.10 or later for the shared journal"
            );
        }
        let requests = connect_options(&settings.url)
            .name("tandem-requests")
            .connect(servers_of(&settings.url).as_str())
            .await
            .map_err(|err| fail("connect")(&err))?;
        let jetstream = jetstream::new(client.clone());
        let subjects = Subjects::new(&settings.stream, settings.partitions);
        let wanted = stream::Config {
            name: settings.stream.clone(),
            description: Some(format!(
                "tandem mirror journal, {} partitions",
                subjects.partitions()
            )),
            subjects: vec![subjects.all()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            // No bound on the server: at a stream's bound NATS 2.9 stores a message whose
            // payload and headers fit and drops the oldest to make room, discard policy `new`
            // notwithstanding. The fleet may pass `max_bytes` by what instances appended since
            // they last read the stream's size; no copy is dropped for it.
            max_bytes: -1,
            // No age on the server: a copy it deleted by age would leave no trace of its key
            // (`SharedSettings::retention`, kept by the readers instead).
            max_age: Duration::ZERO,
            num_replicas: settings.replicas.max(1),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = match jetstream.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => stream,
            // Nobody answers JetStream requests there.
            Err(err)
                if err.kind()
                    == jetstream::context::CreateStreamErrorKind::JetStreamUnavailable =>
            {
                return Err(JournalError::NoJetStream {
                    server,
                    reason: one_line(&err),
                });
            }
            Err(err) => return Err(fail("create the stream")(&err)),
        };
        let info = stream
            .info()
            .await
            .map_err(|err| fail("read the stream")(&err))?;
        let record_from = info.state.first_sequence.max(1);
        check_stream(&info.config, &wanted).map_err(|reason| JournalError::Nats {
            server: server.clone(),
            what: "check the stream",
            reason,
        })?;
        let appends = jetstream::new(requests.clone());
        let request_stream = appends
            .get_stream(&settings.stream)
            .await
            .map_err(|err| fail("read the stream")(&err))?;
        let lease_stream = side::open(
            &jetstream,
            stream::Config {
                name: format!("{}_leases", settings.stream),
                subjects: vec![format!("{}.>", subjects.leases())],
                max_messages_per_subject: 1,
                max_age: settings.lease,
                num_replicas: settings.replicas.max(1),
                storage: stream::StorageType::File,
                ..Default::default()
            },
            "open the lease stream",
        )
        .await
        .map_err(|(what, reason)| fail(what)(&reason))?;
        let parked = Parked::open(
            jetstream.clone(),
            &appends,
            format!("{}_parked", settings.stream),
            subjects.parked(),
            settings.replicas,
        )
        .await
        .map_err(|(what, reason)| fail(what)(&reason))?;
        let settled = Arc::new(
            Settled::open(
                jetstream.clone(),
                format!("{}_settled", settings.stream),
                subjects.settled(),
                settings.replicas,
            )
            .await
            .map_err(|(what, reason)| fail(what)(&reason))?,
        );
        // A lease stream with messages before this instance's first: partitions may have had
        // holders that wrote no record of their requests (`holders.rs`).
        let leased_before = lease_stream.cached_info().state.last_sequence > 0;
        let holders = Holders::open(
            jetstream.clone(),
            (format!("{}_holders", settings.stream), subjects.holders()),
            settings.replicas,
            (settings.instance.clone(), settings.request_timeout),
            leased_before,
        )
        .await
        .map_err(|(what, reason)| fail(what)(&reason))?;
        let leases = Arc::new(Leases::new(
            jetstream.clone(),
            lease_stream,
            subjects.leases(),
            settings.instance.clone(),
            subjects.partitions(),
            settings.lease,
            holders,
        ));
        leases.renew().await;
        let renewing = tokio::spawn({
            let leases = Arc::clone(&leases);
            let every = lease::renew_every(settings.lease);
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    leases.renew().await;
                }
            }
        });
        let max_payload = client.server_info().max_payload;
        let overhead = message_overhead(&subjects, &settings.instance);
        let journal = SharedJournal {
            inner: Arc::new(Inner {
                settler: Settler::start(stream.clone(), Arc::clone(&settled), Arc::clone(&leases)),
                settled,
                server_id: Mutex::new(String::new()),
                restarts: AtomicU64::new(0),
                first_seen: AtomicU64::new(0),
                horizon: Horizon::new(request_stream.clone(), ACK_TIMEOUT),
                empty_read: Mutex::new(None),
                server,
                requests,
                appends,
                request_stream,
                client,
                stream,
                subjects,
                leases,
                parked,
                max_bytes: settings.max_bytes,
                retention: settings.retention,
                reserved: Arc::new(Mutex::new(0)),
                append_failed_at: Mutex::new(None),
                max_payload: std::sync::atomic::AtomicUsize::new(max_payload),
                appended: AtomicU64::new(0),
                appended_at_observe: AtomicU64::new(0),
                overhead,
                read_high: AtomicU64::new(0),
                rereads: AtomicU64::new(0),
                instance: settings.instance.clone(),
                last_by_key: Mutex::new(HashMap::new()),
                seen_by_hold: Mutex::new(HashMap::new()),
                record_from,
                lost: Mutex::new(BTreeSet::new()),
                conflicts: Mutex::new(HashSet::new()),
                observed: Mutex::new(JournalStats {
                    unsettled: 0,
                    bytes: 0,
                    oldest_unsettled: None,
                    segments: 0,
                }),
                renewing,
            }),
        };
        journal.observe().await?;
        Ok(journal)
    }

    /// The partitions this instance delivers now.
    #[must_use]
    pub fn partitions_held(&self) -> Vec<u32> {
        self.inner.leases.held()
    }

    /// The partitions this instance holds whose copies wait for their previous holder's last
    /// request.
    #[must_use]
    pub fn partitions_waiting(&self) -> Vec<u32> {
        self.inner.leases.waiting()
    }

    /// The stream's state as the server reports it now.
    async fn info(&self) -> Result<stream::Info, JournalError> {
        self.inner
            .stream
            .get_info()
            .await
            .map_err(|err| self.error("read the stream", &err))
    }

    /// Reads the stream's numbers (copies and bytes held, the oldest copy's time).
    async fn observe(&self) -> Result<(), JournalError> {
        // Taken before asking: an append acknowledged before it is in the answer, one
        // acknowledged later is counted beside it until the next read (room underestimated
        // for a moment, never overestimated).
        let appended = self.inner.appended.load(Ordering::SeqCst);
        let info = self.info().await?;
        self.inner
            .appended_at_observe
            .store(appended, Ordering::SeqCst);
        self.inner.horizon.stored(info.state.last_sequence);
        self.note_server(info.state.first_sequence);
        self.inner.max_payload.store(
            self.inner.requests.server_info().max_payload,
            Ordering::SeqCst,
        );
        *lock(&self.inner.observed) = JournalStats {
            unsettled: info.state.messages,
            bytes: info.state.bytes,
            oldest_unsettled: (info.state.messages > 0)
                .then(|| SystemTime::from(info.state.first_timestamp)),
            segments: 0,
        };
        self.inner
            .settled
            .tidy()
            .await
            .map_err(|(what, reason)| self.error(what, &reason))
    }

    /// Notes a restart of the server: a new process (a new id), or a stream whose first
    /// sequence went back (a restart of the node holding it, in a cluster). A server killed
    /// forgets deletions (`settled.rs`): copies behind the reader's position may be back, and
    /// are looked at again from the start ([`SharedJournal::owned`] changes).
    fn note_server(&self, first: u64) {
        let id = self.inner.client.server_info().server_id;
        let went_back = self.inner.first_seen.swap(first, Ordering::SeqCst) > first;
        let mut known = lock(&self.inner.server_id);
        if *known != id || went_back {
            if !known.is_empty() {
                self.inner.restarts.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    server = self.inner.server,
                    "the NATS server of the shared journal restarted: its copies are read again from the start"
                );
            }
            *known = id;
        }
    }

    /// Changes when the partitions held change, the server restarted, or delivered copies
    /// were left unsettled to the next holder: a reader's pass then starts again from the
    /// beginning.
    fn owned(&self) -> u64 {
        self.inner
            .leases
            .epoch()
            .wrapping_add(self.inner.restarts.load(Ordering::SeqCst))
            .wrapping_add(self.inner.settler.left_unrecorded())
    }

    /// Per partition: the copies the stream holds of it (summed over its keys' subjects) and
    /// the instance holding its lease.
    async fn backlog_by_partition(&self) -> Result<Vec<PartitionBacklog>, JournalError> {
        let mut backlog = Vec::new();
        for partition in 0..self.inner.subjects.partitions() {
            let mut subjects = self
                .inner
                .stream
                .info_with_subjects(self.inner.subjects.partition(partition))
                .await
                .map_err(|err| self.error("read the stream", &err))?;
            let mut copies = 0u64;
            while let Some(subject) = subjects.next().await {
                let (_, count) = subject.map_err(|err| self.error("read the stream", &err))?;
                copies = copies.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
            }
            backlog.push(PartitionBacklog {
                partition,
                copies,
                holder: self.inner.leases.holder(partition).await,
            });
        }
        Ok(backlog)
    }

    async fn publish(
        &self,
        key: &str,
        payload: Bytes,
        mark: Option<u64>,
    ) -> Result<u64, JournalError> {
        let appended = self.try_publish(key, payload, mark).await;
        *lock(&self.inner.append_failed_at) = match appended {
            Ok(_) => None,
            Err(_) => Some(std::time::Instant::now()),
        };
        appended
    }

    /// Whether an append failed within [`APPEND_FAILURE_HOLD`] and none succeeded since.
    fn appends_failing(&self) -> bool {
        lock(&self.inner.append_failed_at).is_some_and(|at| at.elapsed() < APPEND_FAILURE_HOLD)
    }

    async fn try_publish(
        &self,
        key: &str,
        payload: Bytes,
        mark: Option<u64>,
    ) -> Result<u64, JournalError> {
        let subject = self.inner.subjects.of(key);
        // A retried append (its acknowledgement lost or late) carries the same id, so the
        // stream keeps the copy once: a second copy would be delivered twice, and one stored
        // late could land behind a newer write of its key.
        let id = copy_id(&self.inner.instance, &payload);
        let payload_len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        // When this try stops waiting: a copy stored after it (queued in the client while the
        // server was out of reach, sent on reconnection) is read as a conflict.
        let deadline = unix_millis(SystemTime::now() + ACK_TIMEOUT);
        let mut message = PublishMessage::build()
            .message_id(id)
            .header(INSTANCE_HEADER, self.inner.instance.as_str())
            .header(DEADLINE_HEADER, deadline.to_string().as_str())
            .payload(payload);
        if let Some(mark) = mark {
            message = message.header(MARK_HEADER, mark.to_string().as_str());
        }
        // Taken before the append is sent: its seq answers the marks of the writes (and the
        // reader) waiting now (`horizon.rs`).
        let ticket = self.inner.horizon.sending();
        let acknowledgement = self
            .inner
            .appends
            .send_publish(subject, message)
            .await
            .map_err(|err| self.error("append", &err))?;
        // A publish lost with a server that died before storing it is never acknowledged:
        // the caller learns it soon enough to publish again once the client reconnected.
        let ack = tokio::time::timeout(ACK_TIMEOUT, acknowledgement)
            .await
            .map_err(|_| {
                self.error(
                    "append",
                    &format!("no acknowledgement within {}s", ACK_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|err| self.error("append", &err))?;
        if !ack.duplicate {
            self.inner.appended.fetch_add(
                payload_len.saturating_add(self.inner.overhead),
                Ordering::SeqCst,
            );
        }
        if ack.duplicate {
            // Stored by an earlier try, perhaps before a waiting mark began: where the stream
            // ends now is not known from it.
            self.inner.horizon.stored(ack.sequence);
        } else {
            self.inner.horizon.appended(ticket, ack.sequence);
        }
        Ok(ack.sequence)
    }

    /// The first copy of `partition` at or after `from`, if any, with where it came from.
    async fn next_in(&self, partition: u32, from: u64) -> Result<Option<Read>, JournalError> {
        self.next_matching(self.inner.subjects.partition(partition), from)
            .await
    }

    /// The first copy on a subject matching `filter` at or after `from`, if any, with where it
    /// came from.
    async fn next_matching(&self, filter: String, from: u64) -> Result<Option<Read>, JournalError> {
        let found = self
            .inner
            .stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(filter)
            .send()
            .await;
        match found {
            Ok(message) => {
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .map(|value| value.as_str().to_owned())
                };
                let stored = SystemTime::from(message.time);
                let late = header(DEADLINE_HEADER)
                    .and_then(|deadline| deadline.parse().ok())
                    .is_some_and(|deadline| stored_late(stored, deadline));
                Ok(Some(Read {
                    subject: message.subject.to_string(),
                    instance: header(INSTANCE_HEADER).unwrap_or_default(),
                    mark: header(MARK_HEADER).and_then(|mark| mark.parse().ok()),
                    late,
                    record: Record {
                        seq: message.sequence,
                        appended_at: stored,
                        payload: message.payload,
                    },
                }))
            }
            Err(err) if is_no_message(&err) => Ok(None),
            Err(err) => Err(self.error("read copies back", &err)),
        }
    }

    /// Up to `max` copies of the partitions held, above `after`, in stream order.
    ///
    /// The partitions are read while copies are appended: only copies up to the stream's last
    /// sequence before the first read are returned (a read of the stream's state shared with
    /// the writes' marks, `horizon.rs`), since every one of those is stored already and found,
    /// whichever partition it is in. A later copy is left for the next read, so the reader's
    /// position never passes one it has not seen. The seqs ahead are walked in order, or each
    /// partition held is read from its first copy, whichever takes fewer requests
    /// ([`walk_is_cheaper`]). A read that found nothing is not made again until the stream's
    /// end moves (or the partitions held change).
    async fn read_after(&self, after: u64, max: usize) -> Result<Vec<Record>, JournalError> {
        if after == 0 {
            // A read from the start begins a pass, which the reader starts only with no copy
            // in flight: partitions being handed over can go now. What the fleet settled is
            // read first: copies of a partition taken over, or brought back by a restarted
            // server, that were delivered already are passed over.
            // A partition given up goes with every settlement of its copies recorded: the next
            // holder reads them in the record and never delivers one again.
            self.inner
                .settler
                .recorded()
                .await
                .map_err(|reason| self.error("record settled copies", &reason))?;
            self.inner.settler.new_pass();
            self.inner.leases.drained().await;
            self.inner
                .settled
                .catch_up()
                .await
                .map_err(|(what, reason)| self.error(what, &reason))?;
        }
        let from = after.saturating_add(1);
        let horizon = self
            .inner
            .horizon
            .now()
            .await
            .map_err(|reason| self.error("read the stream", &reason))?;
        if horizon < from {
            return Ok(Vec::new());
        }
        let looked_at = EmptyRead {
            from,
            horizon,
            partitions: self.owned(),
        };
        if lock(&self.inner.empty_read).is_some_and(|before| before.covers(&looked_at)) {
            return Ok(Vec::new());
        }
        let held = self.inner.leases.held();
        let records = if walk_is_cheaper(
            horizon - from + 1,
            held.len(),
            self.inner.subjects.partitions(),
        ) {
            self.walk(&held, from, horizon, max).await?
        } else {
            self.by_partition(held, from, horizon, max).await?
        };
        if records.is_empty() && max > 0 {
            *lock(&self.inner.empty_read) = Some(looked_at);
        }
        let high = self.inner.read_high.load(Ordering::SeqCst);
        let again = records.iter().filter(|record| record.seq <= high).count();
        self.inner
            .rereads
            .fetch_add(u64::try_from(again).unwrap_or(u64::MAX), Ordering::SeqCst);
        if let Some(last) = records.last() {
            self.inner.read_high.fetch_max(last.seq, Ordering::SeqCst);
        }
        Ok(records)
    }

    /// Up to `max` copies of the partitions `held` from `from` to `horizon`, read in the
    /// stream's order whatever their partition, other partitions' copies passed over: one
    /// read per copy of the span.
    async fn walk(
        &self,
        held: &[u32],
        from: u64,
        horizon: u64,
        max: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let mut records = Vec::new();
        let mut at = from;
        while records.len() < max && at <= horizon {
            let Some(read) = self.next_matching(self.inner.subjects.all(), at).await? else {
                break;
            };
            let seq = read.record.seq;
            if seq > horizon {
                break;
            }
            at = seq.saturating_add(1);
            let partition = self.inner.subjects.partition_of_subject(&read.subject);
            if !partition.is_some_and(|partition| held.contains(&partition)) {
                continue;
            }
            let conflict = self.note_origin(&read);
            if !self.inner.settler.passes_over(seq) {
                self.hand_on_conflict(seq, conflict);
                self.inner
                    .settler
                    .read_from(seq, partition, origin_of(&read));
                records.push(read.record);
            }
        }
        Ok(records)
    }

    /// Up to `max` copies of the partitions `held` from `from` to `horizon`, in the stream's
    /// order: the next copy of each partition held, by seq, the smallest first (asked of
    /// every partition at once: one wait for the server rather than one per partition), then
    /// the next of its partition: one read per partition and per copy handed on.
    async fn by_partition(
        &self,
        held: Vec<u32>,
        from: u64,
        horizon: u64,
        max: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let firsts =
            try_join_all(held.iter().map(|&partition| self.next_in(partition, from))).await?;
        let mut heads: BTreeMap<u64, (u32, Read)> = BTreeMap::new();
        for (partition, first) in held.into_iter().zip(firsts) {
            if let Some(read) = first {
                if read.record.seq <= horizon {
                    heads.insert(read.record.seq, (partition, read));
                }
            }
        }
        let mut records = Vec::new();
        while records.len() < max {
            let Some((seq, (partition, read))) = heads.pop_first() else {
                break;
            };
            // A copy being settled takes no slot: its partition's next copy is fetched even
            // for the last one, or a later head of another partition would take that slot and
            // the reader's position pass over it.
            let settling = self.inner.settler.passes_over(seq);
            if (settling || records.len() + 1 < max) && seq < horizon {
                if let Some(next) = self.next_in(partition, seq.saturating_add(1)).await? {
                    if next.record.seq <= horizon {
                        heads.insert(next.record.seq, (partition, next));
                    }
                }
            }
            let conflict = self.note_origin(&read);
            if !settling {
                self.hand_on_conflict(seq, conflict);
                self.inner
                    .settler
                    .read_from(seq, Some(partition), origin_of(&read));
                records.push(read.record);
            }
        }
        Ok(records)
    }

    /// The first copy in the stream from `first` (its first sequence) not settled for good, as
    /// the stream shows it. Copies settled already that a restarted server brought back are
    /// passed over (and deleted again), a few reads at most: past them, the seq reached stands
    /// for the first unsettled one, which is no later.
    async fn first_in_stream(&self, first: u64) -> Result<Option<u64>, JournalError> {
        let mut at = first;
        for _ in 0..FIRST_UNSETTLED_READS {
            let Some(read) = self.next_matching(self.inner.subjects.all(), at).await? else {
                return Ok(None);
            };
            if !self.inner.settler.passes_over_recorded(read.record.seq) {
                return Ok(Some(read.record.seq));
            }
            at = read.record.seq.saturating_add(1);
        }
        Ok(Some(at))
    }

    /// Notes copy `seq`, not in the record of settled copies, lost when the stream no longer
    /// holds it and the record, read on once more after the stream was asked, does not either:
    /// a copy is deleted only once its settlement is recorded, so such a copy was lost by the
    /// server and never delivered (a NATS 2.9.10 server restarted after a kill was seen to).
    /// Its key is unknown: said once per copy, loudly, and counted; the cutover window stays
    /// open.
    async fn note_if_lost(&self, seq: u64) -> Result<(), JournalError> {
        if lock(&self.inner.lost).contains(&seq) || self.inner.settled.contains(seq) {
            return Ok(());
        }
        match self
            .inner
            .stream
            .raw_message_builder()
            .sequence(seq)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) if is_no_message(&err) => {}
            Err(err) => return Err(self.error("read the stream", &err)),
        }
        self.inner
            .settled
            .catch_up()
            .await
            .map_err(|(what, reason)| self.error(what, &reason))?;
        if self.inner.settled.contains(seq) {
            return Ok(());
        }
        if lock(&self.inner.lost).insert(seq) {
            tracing::error!(
                seq,
                server = self.inner.server,
                "a mirror copy acknowledged by the NATS server is gone from the shared journal \
                 and nobody recorded it delivered: the server lost it (run NATS 2.10 or later); \
                 its key is unknown, so compare the sides (`tandem compare`); the cutover \
                 window stays open"
            );
        }
        Ok(())
    }

    /// Remembers the instance of the copy read, and answers whether it is a conflict: the
    /// key's previous copy came through another instance after this copy's write began.
    /// A copy stored after its writer stopped waiting for it is a conflict too: its write may
    /// have been answered as not mirrored, and the key written again through another instance
    /// since (issue 19). A copy read again (below the key's last copy remembered) leaves the
    /// memory as it is: its key's later copy stays the one a copy to come is compared with.
    /// The key's previous copy is the newest of what this instance read and what the record of
    /// settled copies says was delivered (by this partition's previous holder, across a
    /// takeover: `settled.rs`).
    fn note_origin(&self, read: &Read) -> bool {
        let seq = read.record.seq;
        let mut last = lock(&self.inner.last_by_key);
        let here = last
            .get(&read.subject)
            .map(|(previous, instance)| (*previous, fnv1a(instance.as_bytes())));
        if here.is_some_and(|(previous, _)| previous >= seq) {
            return false;
        }
        let delivered = self
            .inner
            .settled
            .origin(fnv1a(read.subject.as_bytes()))
            .filter(|(previous, _)| *previous < seq);
        let previous = here
            .into_iter()
            .chain(delivered)
            .max_by_key(|(seq, _)| *seq);
        if read.late {
            tracing::warn!(
                seq,
                instance = read.instance,
                "a mirror copy was stored after its append had failed; its key is rechecked"
            );
        }
        let raced = match (previous, read.mark) {
            (Some((previous, instance)), Some(mark)) => {
                previous > mark && instance != fnv1a(read.instance.as_bytes())
            }
            _ => false,
        };
        if last.len() >= REMEMBERED_KEYS {
            forget_older_half(&mut last);
        }
        last.insert(read.subject.clone(), (seq, read.instance.clone()));
        read.late || raced
    }

    /// Notes copy `seq`, handed on to the worker, as a conflict to ask about
    /// ([`MirrorLog::take_conflict`]); a copy passed over is never asked about, so nothing is
    /// noted for it.
    fn hand_on_conflict(&self, seq: u64, conflict: bool) {
        if conflict {
            lock(&self.inner.conflicts).insert(seq);
        }
    }

    /// Fails at once when the client is not connected: asked on the request path, a server
    /// out of reach must not hold a request until it times out.
    fn connected(&self, what: &'static str) -> Result<(), JournalError> {
        if self.inner.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(self.error(what, &"not connected to the server"))
        }
    }

    fn error(&self, what: &'static str, err: &dyn std::fmt::Display) -> JournalError {
        JournalError::Nats {
            server: self.inner.server.clone(),
            what,
            reason: one_line(err),
        }
    }
}

impl MirrorLog for SharedJournal {
    fn append<'a>(&'a self, key: &'a str, payload: Bytes, mark: Option<u64>) -> LogFuture<'a, u64> {
        Box::pin(self.publish(key, payload, mark))
    }

    fn settle(&self, seq: u64) {
        self.inner.settler.settle(seq);
    }

    fn unsettled_after(&self, after: u64, max: usize) -> LogFuture<'_, Vec<Record>> {
        Box::pin(self.read_after(after, max))
    }

    fn last_seq(&self) -> u64 {
        self.inner.horizon.last()
    }

    fn room(&self) -> u64 {
        let held = lock(&self.inner.observed).bytes;
        // The stream's numbers are read once a second: this instance's appends since count
        // too, or a burst of writes would pass the check and find the stream full at their
        // append, after the authoritative side took them (issue 19: the same policy as the
        // local journal). Other instances' appends are known at the next read.
        let unseen = self
            .inner
            .appended
            .load(Ordering::SeqCst)
            .saturating_sub(self.inner.appended_at_observe.load(Ordering::SeqCst));
        self.inner
            .max_bytes
            .saturating_sub(held)
            .saturating_sub(unseen)
            .saturating_sub(*lock(&self.inner.reserved))
    }

    fn reserve(&self, payload_bytes: u64) -> Result<Reservation, Refusal> {
        // An append now would wait for the server, then fail after the authoritative side
        // took the write: the write is refused (or recorded) before, by its policy.
        // So is a write while appends fail with the server connected (a cluster electing a
        // new leader for the stream after losing a node answers no append for seconds): only
        // the writes already past this point wait for it, and the first write after a second
        // without a failure tries again.
        if self.inner.requests.connection_state() != async_nats::connection::State::Connected
            || self.appends_failing()
        {
            return Err(Refusal::Unreachable);
        }
        let size = payload_bytes.saturating_add(self.inner.overhead);
        let max_payload = self.inner.max_payload.load(Ordering::SeqCst);
        if usize::try_from(size).map_or(true, |size| size > max_payload) {
            return Err(Refusal::TooLarge);
        }
        if self.room() < size {
            return Err(Refusal::Full);
        }
        *lock(&self.inner.reserved) += size;
        let reserved = Arc::clone(&self.inner.reserved);
        Ok(Reservation::new(move || {
            let mut reserved = lock(&reserved);
            *reserved = reserved.saturating_sub(size);
        }))
    }

    fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    fn retention(&self) -> Option<Duration> {
        (!self.inner.retention.is_zero()).then_some(self.inner.retention)
    }

    fn stats(&self) -> JournalStats {
        *lock(&self.inner.observed)
    }

    fn checkpoint(&self) -> LogFuture<'_, ()> {
        Box::pin(self.observe())
    }

    fn close(&self) -> LogFuture<'_, ()> {
        Box::pin(async move {
            self.inner.renewing.abort();
            self.inner.settler.drain().await;
            self.inner.leases.release().await;
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn ownership(&self) -> u64 {
        self.owned()
    }

    fn mark(&self) -> LogFuture<'_, Option<u64>> {
        Box::pin(async move {
            // Taken on the write path: a server gone must not hold the write for the
            // client's request timeout (10 s), only as long as an append would wait
            // (`ACK_TIMEOUT`, the read's own). Writes beginning together share one read sent
            // after all of them began (`horizon.rs`).
            let last = self
                .inner
                .horizon
                .now()
                .await
                .map_err(|reason| self.error("read the stream", &reason))?;
            Ok(Some(last))
        })
    }

    fn take_conflict(&self, seq: u64) -> bool {
        lock(&self.inner.conflicts).remove(&seq)
    }

    fn partitions_backlog(&self) -> LogFuture<'_, Vec<PartitionBacklog>> {
        Box::pin(self.backlog_by_partition())
    }

    fn fleet(&self) -> Option<FleetStats> {
        Some(FleetStats {
            partitions: self.inner.subjects.partitions(),
            held: self.inner.leases.held(),
            waiting: self.inner.leases.waiting(),
            rereads: self.inner.rereads.load(Ordering::SeqCst),
            leases_lost: self.inner.leases.lost(),
            copies_lost: u64::try_from(lock(&self.inner.lost).len()).unwrap_or(u64::MAX),
            server_loses_copies: !keeps_acknowledged_messages(
                &self.inner.client.server_info().version,
            ),
        })
    }

    fn may_deliver(&self, key: &str) -> bool {
        self.inner
            .leases
            .may_deliver(self.inner.subjects.partition_of(key))
    }

    fn holds(&self, key: &str) -> LogFuture<'_, bool> {
        let subject = self.inner.subjects.of(key);
        Box::pin(async move {
            if self.inner.requests.connection_state() != async_nats::connection::State::Connected {
                return Err(self.error("read the stream", &"not connected to the server"));
            }
            // The subject's last copy, if any: a message read rather than the stream's state
            // (which the server computes over every copy deleted out of order).
            let last = match self
                .inner
                .request_stream
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(message) => Some(message.sequence),
                Err(err) if parked::no_last_message(&err) => None,
                Err(err) => return Err(self.error("read the stream", &err)),
            };
            // Gone from the stream is not settled: a NATS 2.9 server restarted after a kill
            // was seen to lose copies still being delivered (the server's own defect, found by
            // reading every seq), and one lost so would land after this request's write. So
            // the newest copy this hold saw of the key counts until the record says it was
            // settled; one it never saw can only be trusted gone.
            let newest = {
                let mut seen = lock(&self.inner.seen_by_hold);
                match last {
                    Some(seq) => {
                        if seen.len() >= REMEMBERED_KEYS {
                            // Those known settled go first; past that, every guard is dropped.
                            seen.retain(|_, seq| !self.inner.settled.contains_recorded(*seq));
                            if seen.len() >= REMEMBERED_KEYS {
                                seen.clear();
                            }
                        }
                        let newest = seen.entry(subject.clone()).or_insert(seq);
                        *newest = (*newest).max(seq);
                        Some(*newest)
                    }
                    None => seen.get(&subject).copied(),
                }
            };
            let Some(newest) = newest else {
                return Ok(false);
            };
            // A copy settled already that a restarted server brought back holds nothing (it is
            // deleted again): a key's newer copy settled means its older ones were. One
            // settled here and not yet recorded still holds: it may yet be left to the next
            // holder and delivered again.
            if last.is_some_and(|last| !self.inner.settler.passes_over_recorded(last)) {
                return Ok(true);
            }
            if !self.inner.settler.passes_over_recorded(newest) {
                // Settled by the instance that delivered it, perhaps: its record says.
                self.inner
                    .settled
                    .catch_up()
                    .await
                    .map_err(|(what, reason)| self.error(what, &reason))?;
                if !self.inner.settler.passes_over_recorded(newest) {
                    return Ok(true);
                }
            }
            let mut seen = lock(&self.inner.seen_by_hold);
            if seen.get(&subject) == Some(&newest) {
                seen.remove(&subject);
            }
            Ok(false)
        })
    }

    fn park<'a>(&'a self, key: &'a str) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move {
            self.connected("park a key")?;
            let revision = self
                .inner
                .parked
                .park(key)
                .await
                .map_err(|(what, reason)| self.error(what, &reason))?;
            Ok(Some(revision))
        })
    }

    fn unpark<'a>(&'a self, key: &'a str, revision: u64) -> LogFuture<'a, bool> {
        Box::pin(async move {
            self.connected("release a key")?;
            self.inner
                .parked
                .release(key, revision)
                .await
                .map_err(|(what, reason)| self.error(what, &reason))
        })
    }

    fn parked<'a>(&'a self, key: &'a str) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move {
            self.connected("read a parked key")?;
            let asked = tokio::time::timeout(ACK_TIMEOUT, self.inner.parked.lookup(key))
                .await
                .map_err(|_| self.error("read a parked key", &"no answer in time"))?;
            asked.map_err(|(what, reason)| self.error(what, &reason))
        })
    }

    fn park_changes(&self, after: u64, max: usize) -> LogFuture<'_, Vec<ParkChange>> {
        Box::pin(async move {
            self.connected("read the parked keys")?;
            self.inner
                .parked
                .changes_after(after, max)
                .await
                .map_err(|(what, reason)| self.error(what, &reason))
        })
    }

    fn first_unsettled(&self) -> LogFuture<'_, Option<u64>> {
        Box::pin(async move {
            // What the fleet settled: a copy gone from the stream counts as settled only once
            // the record says so (a restarted NATS 2.9 server was seen to lose copies still
            // being delivered, `holds`). Every copy from where the stream began when this
            // instance opened it is recorded once settled; the first one not recorded is no
            // later than the first unsettled.
            self.inner
                .settled
                .catch_up()
                .await
                .map_err(|(what, reason)| self.error(what, &reason))?;
            let info = self.info().await?;
            let last = info.state.last_sequence;
            let unrecorded = self.inner.settled.first_unrecorded(self.inner.record_from);
            let unrecorded = (unrecorded <= last).then_some(unrecorded);
            let in_stream = if info.state.messages == 0 {
                None
            } else {
                self.first_in_stream(info.state.first_sequence).await?
            };
            // The first copy not recorded is usually the first one waiting in the stream; one
            // the walk did not find is asked for by its seq.
            if let Some(seq) = unrecorded.filter(|seq| in_stream != Some(*seq)) {
                self.note_if_lost(seq).await?;
            }
            Ok(match (in_stream, unrecorded) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        })
    }
}

/// The id JetStream deduplicates a copy's appends by (within the stream's duplicate window):
/// the same instance and bytes (which hold the copy's acceptance time, sequence and request
/// id) make the same id.
fn copy_id(instance: &str, payload: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(instance.as_bytes());
    hasher.update(&[0]);
    hasher.update(payload);
    hasher.finalize().to_hex()[..32].to_owned()
}

/// Whether reading the `span` seqs ahead in the stream's order, every partition's copies
/// included, takes fewer reads than reading each of the `held` partitions (of `partitions`)
/// from its first copy. Walking costs a read per copy in the span (fewer: deleted copies are
/// passed over by the server) and one past it; by partition, a read per partition held and
/// one per copy of theirs (a `held / partitions` share of the span, the keys spread evenly).
/// So walking is cheaper when `span * (partitions - held) <= (held - 1) * partitions`: always
/// with every partition held, and for a few seqs (a read soon after the last) otherwise.
fn walk_is_cheaper(span: u64, held: usize, partitions: u32) -> bool {
    let held = u64::try_from(held).unwrap_or(u64::MAX);
    let partitions = u64::from(partitions);
    if held == 0 {
        return false;
    }
    span.saturating_mul(partitions.saturating_sub(held)) <= (held - 1).saturating_mul(partitions)
}

/// A read of the partitions held that found no copy to hand on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EmptyRead {
    /// The first seq it looked at.
    from: u64,
    /// The last seq it looked at (every seq up to it was stored before the read).
    horizon: u64,
    /// The partitions held then ([`Leases::epoch`]).
    partitions: u64,
}

impl EmptyRead {
    /// Whether `later` would find nothing either: it looks at no seq this one did not, with
    /// the same partitions (no copy is stored at a seq this read looked at any more, and a
    /// copy it skipped as settling stays unread until it is deleted).
    fn covers(&self, later: &EmptyRead) -> bool {
        self.from <= later.from
            && later.horizon <= self.horizon
            && self.partitions == later.partitions
    }
}

/// A copy read back with where it came from.
struct Read {
    subject: String,
    instance: String,
    /// Where the stream ended when its write began.
    mark: Option<u64>,
    /// Whether the server stored it after its writer's try had stopped waiting.
    late: bool,
    record: Record,
}

/// Whether a copy the server stored at `stored` came after `deadline` (milliseconds since the
/// Unix epoch on the writer's clock), beyond [`CLOCK_SKEW`].
fn stored_late(stored: SystemTime, deadline: u64) -> bool {
    unix_millis(stored) > deadline.saturating_add(unix_millis_of(CLOCK_SKEW))
}

fn unix_millis(at: SystemTime) -> u64 {
    unix_millis_of(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn unix_millis_of(span: Duration) -> u64 {
    u64::try_from(span.as_millis()).unwrap_or(u64::MAX)
}

/// The header naming the instance that appended a copy.
const INSTANCE_HEADER: &str = "Tandem-Instance";

/// The header with where the stream ended when the copy's write began.
const MARK_HEADER: &str = "Tandem-Mark";

/// The header with when the append's try stopped waiting for the server (milliseconds since the
/// Unix epoch, the writer's clock).
const DEADLINE_HEADER: &str = "Tandem-Deadline";

/// How far the instances' and the servers' clocks may differ: a copy stored later than its
/// deadline by more is late.
const CLOCK_SKEW: Duration = Duration::from_millis(500);

/// The most copies [`MirrorLog::first_unsettled`] reads past those settled already.
const FIRST_UNSETTLED_READS: usize = 64;

/// How long after a failed append (none succeeding since) new writes are refused before the
/// authoritative side sees them.
const APPEND_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Where the copy `read` came from, as the record of settled copies keeps it.
fn origin_of(read: &Read) -> Origin {
    Origin {
        seq: read.record.seq,
        subject: fnv1a(read.subject.as_bytes()),
        instance: fnv1a(read.instance.as_bytes()),
    }
}

/// Keys whose last copy is remembered for finding conflicts.
const REMEMBERED_KEYS: usize = 100_000;

/// Forgets the keys whose last copy is older than the median's, keeping the newer half: a
/// race is between copies close in the stream (one appended while the other's write was under
/// way), so the keys read last are those a copy still to come can race with. Forgetting costs
/// only the detection of a race on a key not read for long (docs/ARCHITECTURE.md).
fn forget_older_half(last: &mut HashMap<String, (u64, String)>) {
    let mut seqs: Vec<u64> = last.values().map(|(seq, _)| *seq).collect();
    if seqs.is_empty() {
        return;
    }
    let middle = seqs.len() / 2;
    let (_, keep_from, _) = seqs.select_nth_unstable(middle);
    let keep_from = *keep_from;
    last.retain(|_, (seq, _)| *seq >= keep_from);
}

/// The most bytes a copy takes in the stream besides its payload: the server's record of a
/// message (its length, sequence, time, subject and headers' lengths, checksum: 34 bytes in a
/// file store), the longest subject of `subjects`, and the headers an append of `instance`
/// sends (each `Name: value\r\n` at its longest, after `NATS/1.0\r\n`, before `\r\n`).
fn message_overhead(subjects: &Subjects, instance: &str) -> u64 {
    const RECORD: usize = 34;
    const ID_LEN: usize = 32;
    const U64_DIGITS: usize = 20;
    let header = |name: &str, longest: usize| name.len() + 2 + longest + 2;
    let headers = "NATS/1.0\r\n".len()
        + header("Nats-Msg-Id", ID_LEN)
        + header(INSTANCE_HEADER, instance.len())
        + header(DEADLINE_HEADER, U64_DIGITS)
        + header(MARK_HEADER, U64_DIGITS)
        + 2;
    u64::try_from(RECORD + subjects.longest() + headers).unwrap_or(u64::MAX)
}

/// Why a stream found on the server does not serve these settings, if it does not.
fn check_stream(found: &stream::Config, wanted: &stream::Config) -> Result<(), String> {
    if found.subjects != wanted.subjects {
        return Err(format!(
            "stream {} has subjects {:?}, not {:?}",
            found.name, found.subjects, wanted.subjects
        ));
    }
    if found.description != wanted.description {
        return Err(format!(
            "stream {} is {:?}, not {:?}: every instance must use the same partitions",
            found.name, found.description, wanted.description
        ));
    }
    if found.num_replicas != wanted.num_replicas {
        return Err(format!(
            "stream {} has {} replicas, not {}",
            found.name, found.num_replicas, wanted.num_replicas
        ));
    }
    if found.max_age != wanted.max_age {
        return Err(format!(
            "stream {} has a maximum age of {}s, at which the server would delete undelivered \
             copies without a trace; the proxies keep journal_retention themselves (`nats \
             stream edit {} --max-age=0` removes it)",
            found.name,
            found.max_age.as_secs(),
            found.name
        ));
    }
    if found.max_bytes != wanted.max_bytes {
        return Err(format!(
            "stream {} has a bound of {} bytes, at which the server would drop undelivered \
             copies; the proxies keep journal_max_bytes themselves (`nats stream edit \
             --max-bytes=-1` removes it)",
            found.name, found.max_bytes
        ));
    }
    if found.storage != wanted.storage {
        return Err(format!(
            "stream {} is kept in memory: its copies would not outlive a restart of the server",
            found.name
        ));
    }
    if found.retention != wanted.retention || found.discard != wanted.discard {
        return Err(format!(
            "stream {} keeps or discards messages otherwise than a tandem journal",
            found.name
        ));
    }
    Ok(())
}

/// Whether a read found no message (past the last copy of the partition).
fn is_no_message(err: &stream::RawMessageError) -> bool {
    match err.kind() {
        stream::RawMessageErrorKind::NoMessageFound => true,
        stream::RawMessageErrorKind::JetStream(err) => {
            err.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

/// The URL without the user and password, or the token (`nats://TOKEN@HOST`): what may be
/// logged or stored of a NATS server's address.
#[must_use]
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{host}")
}

/// How to log in to the servers of `url`: the user and password it carries
/// (`nats://USER:PASSWORD@HOST:PORT`), or its token (`nats://TOKEN@HOST:PORT`), percent-decoded;
/// the client does not read them from the URL itself.
fn connect_options(url: &str) -> async_nats::ConnectOptions {
    match login(url) {
        Some(Login::UserPassword(user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(Login::Token(token)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    }
}

/// How a URL logs in (no `Debug`: it holds a secret).
#[derive(PartialEq, Eq)]
enum Login {
    UserPassword(String, String),
    Token(String),
}

/// The login the first server of `url` that carries one gives.
fn login(url: &str) -> Option<Login> {
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let server = url
        .split(',')
        .filter_map(|server| url::Url::parse(server.trim()).ok())
        .find(|server| !server.username().is_empty())?;
    Some(match server.password() {
        Some(password) => Login::UserPassword(decoded(server.username()), decoded(password)),
        None => Login::Token(decoded(server.username())),
    })
}

/// The servers of `url` (a comma-separated list), without the credentials any carries.
fn servers_of(url: &str) -> String {
    url.split(',')
        .map(|server| without_credentials(server.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// An error's text on one line.
fn one_line(err: &dyn std::fmt::Display) -> String {
    err.to_string().replace('\n', " ")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a NATS server of `version` (`major.minor.patch`) is one known to keep the
/// messages it acknowledged across a kill and restart while messages are being deleted: 2.10
/// and later (2.9.10 was seen to lose them, `settled.rs`). An unreadable version is not
/// warned about.
fn keeps_acknowledged_messages(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let (Some(Ok(major)), Some(Ok(minor))) = (
        parts.next().map(str::parse::<u64>),
        parts.next().map(str::parse::<u64>),
    ) else {
        return true;
    };
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_before_2_10_are_said_to_lose_acknowledged_messages() {
        assert!(!keeps_acknowledged_messages("2.9.10"));
        assert!(!keeps_acknowledged_messages("v2.9.25"));
        assert!(!keeps_acknowledged_messages("1.4.1"));
        assert!(keeps_acknowledged_messages("2.10.27"));
        assert!(keeps_acknowledged_messages("2.11.0-beta"));
        assert!(keeps_acknowledged_messages("3.0.0"));
        assert!(keeps_acknowledged_messages("unknown"), "not warned about");
    }

    #[test]
    fn the_keys_read_last_are_remembered_past_the_bound() {
        let mut last: HashMap<String, (u64, String)> = (1..=10u64)
            .map(|seq| (format!("key{seq}"), (seq * 10, "a".to_owned())))
            .collect();
        forget_older_half(&mut last);
        let mut kept: Vec<u64> = last.values().map(|(seq, _)| *seq).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![60, 70, 80, 90, 100]);
        let mut none = HashMap::new();
        forget_older_half(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn the_stream_is_walked_when_that_takes_fewer_reads_than_each_partition() {
        assert!(walk_is_cheaper(10_000, 16, 16), "every partition held");
        assert!(walk_is_cheaper(1, 8, 16), "one seq ahead");
        assert!(walk_is_cheaper(14, 8, 16), "15 reads either way");
        assert!(!walk_is_cheaper(15, 8, 16));
        assert!(!walk_is_cheaper(1, 1, 16), "one partition: one read");
        assert!(!walk_is_cheaper(1, 0, 16), "nothing held: nothing to read");
    }

    #[test]
    fn a_read_that_found_nothing_is_not_made_again_until_the_stream_or_partitions_change() {
        let empty = EmptyRead {
            from: 10,
            horizon: 20,
            partitions: 3,
        };
        let same = empty;
        assert!(empty.covers(&same));
        assert!(
            empty.covers(&EmptyRead { from: 15, ..same }),
            "a later start"
        );
        assert!(
            !empty.covers(&EmptyRead {
                horizon: 21,
                ..same
            }),
            "a copy may be stored at 21"
        );
        assert!(
            !empty.covers(&EmptyRead { from: 1, ..same }),
            "a pass from the start reads copies set aside below 10"
        );
        assert!(
            !empty.covers(&EmptyRead {
                partitions: 4,
                ..same
            }),
            "a partition taken over has copies of its own"
        );
    }

    #[test]
    fn a_copy_stored_past_its_deadline_and_the_clock_skew_is_late() {
        let deadline = 1_000_000;
        let at = |millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
        assert!(!stored_late(at(deadline - 1), deadline));
        assert!(
            !stored_late(at(deadline + 500), deadline),
            "within the skew"
        );
        assert!(stored_late(at(deadline + 501), deadline));
    }

    #[test]
    fn credentials_in_the_url_are_given_to_the_client_not_in_the_address() {
        assert_eq!(
            servers_of("nats://u:p%40ss@a:4222, nats://b:4223"),
            "nats://a:4222,nats://b:4223"
        );
        assert!(
            login("nats://a:4222, nats://u:p%40ss@b:4223")
                == Some(Login::UserPassword("u".to_owned(), "p@ss".to_owned()))
        );
        assert!(login("nats://s3cr3t@a:4222") == Some(Login::Token("s3cr3t".to_owned())));
        assert!(login("nats://a:4222").is_none());
        let options = format!("{:?}", connect_options("nats://u:p%40ss@a:4222"));
        assert!(!options.contains("p@ss"), "{options}");
    }

    #[test]
    fn credentials_never_leave_the_url() {
        assert_eq!(
            without_credentials("nats://user:secret@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(
            without_credentials("nats://s3cr3t-token@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(
            without_credentials("127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }
}
