//! Typed telemetry events: each records its metrics and its log line together.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use tandem_control::{ProxyCounters, Side};

use crate::error::UpstreamError;
use crate::routes::RouteClass;

/// Why a request was sent to a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The authoritative request whose answer the client gets.
    Primary,
    /// A write copied to the non-authoritative side.
    Mirror,
    /// A read sent to the non-authoritative side for comparison.
    Shadow,
    /// A persisted mirror copy sent again by `tandem mirror replay`.
    Replay,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Mirror => "mirror",
            Role::Shadow => "shadow",
            Role::Replay => "replay",
        }
    }
}

/// Counts since the last flush to the control store, where rate alerts and rollback policies
/// sum them over every proxy.
pub static COUNTS: ProxyCounters = ProxyCounters::new();

/// Two answers were compared (whether or not they differed).
#[derive(Debug)]
pub struct ResponsesCompared;

impl ResponsesCompared {
    /// Records the event.
    pub fn emit(self) {
        COUNTS.compared();
    }
}

/// Registers help text and units for every metric tandem's proxy emits.
pub fn describe_metrics() {
    describe_counter!(
        "tandem_requests_total",
        "Client requests served, by class and status class"
    );
    describe_histogram!(
        "tandem_request_duration_seconds",
        Unit::Seconds,
        "Time from a client request's arrival to its response head"
    );
    describe_counter!(
        "tandem_upstream_requests_total",
        "Requests sent to a side, by side, role and outcome"
    );
    describe_histogram!(
        "tandem_upstream_request_duration_seconds",
        Unit::Seconds,
        "Time until a side's response head, by side and role"
    );
    describe_histogram!(
        "tandem_journal_wait_duration_seconds",
        Unit::Seconds,
        "Time a write waited for the journal before its answer, by step: the copy's append \
         (acknowledged by the shared journal's server, or written by the local journal) and, \
         with the shared journal, the read of where its stream ends (mark)"
    );
    describe_gauge!(
        "tandem_mirror_queue_depth",
        "Mirror copies waiting in memory"
    );
    describe_counter!(
        "tandem_mirror_failures_total",
        "Mirror copies persisted for replay (or recorded as not mirrored), by side and reason"
    );
    describe_counter!(
        "tandem_mirror_replays_total",
        "Replayed mirror copies, by outcome"
    );
    describe_counter!(
        "tandem_response_mismatches_total",
        "Responses of the two sides that differed, by class"
    );
    describe_counter!(
        "tandem_comparisons_skipped_total",
        "Comparisons not made, by reason"
    );
    tandem_control::describe_stage_metrics();
    describe_gauge!(
        "tandem_journal_unsettled_records",
        "Mirror copies in the journal not yet delivered or kept elsewhere"
    );
    describe_gauge!(
        "tandem_journal_bytes",
        Unit::Bytes,
        "Bytes the journal holds on disk"
    );
    describe_gauge!("tandem_journal_segments", "Segment files of the journal");
    describe_counter!(
        "tandem_mirror_conflicts_total",
        "Writes to a key another instance wrote at the same time (recorded for a recheck)"
    );
    describe_gauge!(
        "tandem_journal_partition_held",
        "1 while this instance holds the shared journal's partition (delivering it, or waiting for its previous holder's requests)"
    );
    describe_gauge!(
        "tandem_journal_partitions_held",
        "Partitions of the shared journal this instance holds (delivering them, or waiting)"
    );
    describe_gauge!(
        "tandem_journal_partitions_waiting",
        "Partitions held whose copies wait until their previous holder's last request can have ended"
    );
    describe_counter!(
        "tandem_journal_leases_lost_total",
        "Partition leases of the shared journal this instance held and could not renew in time"
    );
    describe_counter!(
        "tandem_journal_copies_lost_total",
        "Copies the NATS server lost before any instance delivered them (gone from the stream, no settlement recorded): compare the sides"
    );
    describe_gauge!(
        "tandem_journal_server_loses_copies",
        "1 while the shared journal's NATS server is a version known to lose acknowledged copies when killed and restarted (before 2.10)"
    );
    describe_counter!(
        "tandem_journal_fenced_copies_total",
        "Copies not delivered because the lease of their partition may have expired (left to its next holder)"
    );
    describe_counter!(
        "tandem_mirror_unchecked_writes_total",
        "Writes whose copy went to the shared journal without a mark (where the stream ended was unreadable): a race with another instance's write of the key is not detected for them"
    );
    describe_counter!(
        "tandem_mirror_conflicts_unrecorded_total",
        "Key conflicts dropped unrecorded (queue full, refused by the control store, or left at shutdown; not rechecked)"
    );
    describe_counter!(
        "tandem_journal_expired_total",
        "Copies that waited in the shared journal longer than journal_retention: kept in the control store for replay instead of delivered"
    );
    describe_counter!(
        "tandem_journal_rereads_total",
        "Copies of the shared journal read back again (set aside, or of a partition taken over): they may be delivered twice"
    );
    describe_gauge!(
        "tandem_journal_max_bytes",
        Unit::Bytes,
        "The journal's bound (journal_max_bytes); past it --journal-full decides"
    );
    describe_gauge!(
        "tandem_journal_oldest_unsettled_age_seconds",
        Unit::Seconds,
        "Age of the oldest mirror copy in the journal not yet delivered"
    );
    describe_counter!(
        "tandem_journal_summaries_total",
        "Summaries of the journal's pending copies written to the control store (off the request path), by outcome: written, failed"
    );
    describe_gauge!(
        "tandem_not_mirrored_unshipped_records",
        "Records of writes not mirrored kept in the gap log and not yet taken by the control store"
    );
    describe_counter!(
        "tandem_requests_shed_total",
        "Requests answered 503 (Retry-After) because max_in_flight were in flight"
    );
    describe_counter!(
        "tandem_journal_full_writes_total",
        "Writes that met a full mirror journal, by policy (refuse: 503; record: not mirrored)"
    );
    describe_counter!(
        "tandem_journal_unreachable_writes_total",
        "Writes that met the shared journal's server out of reach, by policy (refuse: 503; record: not mirrored)"
    );
    describe_counter!(
        "tandem_journal_too_large_writes_total",
        "Writes whose copy is larger than the shared journal's server takes in one message (recorded as not mirrored, body_too_large, whatever the policy)"
    );
    describe_gauge!(
        "tandem_mirror_circuit_open",
        "1 while the other side's deliveries fail (sync requests do not wait for their copies)"
    );
    describe_counter!(
        "tandem_mirror_spills_total",
        "Times a mirror worker's queue was full and copies started waiting in the journal"
    );
    describe_counter!(
        "tandem_mirror_refill_passes_total",
        "Passes over the journal's waiting copies, by outcome (caught_up, again)"
    );
    describe_counter!(
        "tandem_connections_refused_total",
        "Client connections answered 503 and closed because max_connections were open"
    );
    describe_gauge!(
        "tandem_open_files_limit",
        "The process's limit of open files (raised to the hard limit at start)"
    );
    describe_counter!(
        "tandem_journal_append_failures_total",
        "Mirror copies the journal could not take (full, or a disk error), by reason"
    );
    describe_counter!(
        "tandem_cutover_held_requests_total",
        "Requests held until their key's copies reached the side they are routed to, by outcome \
         (released, timed_out, kept, store_unreachable)"
    );
    describe_histogram!(
        "tandem_cutover_hold_duration_seconds",
        Unit::Seconds,
        "How long a held request waited for its key's copies, by outcome"
    );
    describe_gauge!(
        "tandem_cutover_keys_pending",
        "Keys with copies still on their way to the authoritative side (requests to them are held)"
    );
    describe_gauge!(
        "tandem_fleet_parking_unknown",
        "1 while this instance cannot read the fleet's parked keys from the shared journal: a key \
         another instance parked since its last read is not refused here outside the cutover \
         window"
    );
    describe_counter!(
        "tandem_fleet_park_failures_total",
        "Parked-key markers the shared journal did not take, by op (park: the copy stays in the \
         journal and is tried again; release: the key stays refused until another instance \
         releases it)"
    );
    describe_gauge!(
        "tandem_parked_keys",
        "Keys (side, ordering key) with copies kept in the control store as this instance knows \
         them (with the shared journal, the fleet's)"
    );
    describe_gauge!(
        "tandem_cutover_window_open",
        "1 while requests to the authoritative side are checked against the shared journal's \
         copies after a change of stage (fleet mode)"
    );
}

/// A client request was answered.
#[derive(Debug)]
pub struct RequestServed {
    /// How it was classified.
    pub class: RouteClass,
    /// The status sent to the client.
    pub status: u16,
    /// Time to the response head.
    pub elapsed: Duration,
}

impl RequestServed {
    /// Records the event.
    pub fn emit(self) {
        let class = self.class.as_str();
        counter!("tandem_requests_total", "class" => class, "status" => status_class(self.status))
            .increment(1);
        COUNTS.served();
        histogram!("tandem_request_duration_seconds", "class" => class)
            .record(self.elapsed.as_secs_f64());
    }
}

/// A side answered (or failed to).
#[derive(Debug)]
pub struct UpstreamAnswered<'a> {
    /// Which side.
    pub side: Side,
    /// Why it was asked.
    pub role: Role,
    /// Its status, or the error.
    pub result: Result<u16, &'a UpstreamError>,
    /// Time to the response head or the error.
    pub elapsed: Duration,
}

impl UpstreamAnswered<'_> {
    /// Records the event.
    pub fn emit(self) {
        let outcome = match self.result {
            Ok(status) => status_class(status),
            Err(err) => {
                tracing::debug!(side = %self.side, role = self.role.as_str(), error = %err, "upstream request failed");
                err.kind()
            }
        };
        let (side, role) = (self.side.as_str(), self.role.as_str());
        counter!("tandem_upstream_requests_total", "side" => side, "role" => role, "outcome" => outcome)
            .increment(1);
        if self.role == Role::Mirror {
            COUNTS.mirrored();
        }
        if self.role != Role::Replay {
            let failed = self.result.map_or(true, |status| status >= 500);
            COUNTS.side_answered(self.side, self.elapsed, failed);
        }
        histogram!("tandem_upstream_request_duration_seconds", "side" => side, "role" => role)
            .record(self.elapsed.as_secs_f64());
    }
}

/// A mirror copy entered the in-memory queue (`true`) or left it (`false`). The gauge moves by
/// one each time rather than being set to a count read before: workers finishing at once would
/// otherwise set it out of order and leave it above zero with the queue empty.
#[derive(Debug)]
pub struct MirrorQueueDepth(pub bool);

impl MirrorQueueDepth {
    /// Records the event.
    pub fn emit(self) {
        let depth = gauge!("tandem_mirror_queue_depth");
        if self.0 {
            depth.increment(1.0);
        } else {
            depth.decrement(1.0);
        }
    }
}

/// A mirror copy was persisted instead of delivered.
#[derive(Debug)]
pub struct MirrorPersisted<'a> {
    /// The client request.
    pub request_id: &'a str,
    /// The side the copy was for.
    pub side: Side,
    /// Why (`upstream_error`, `queue_full`, `key_parked`, `shutdown`, `body_too_large`).
    pub reason: &'static str,
    /// The last delivery error, if any.
    pub error: &'a str,
}

impl MirrorPersisted<'_> {
    /// Records the event.
    pub fn emit(self) {
        COUNTS.mirror_failed();
        counter!("tandem_mirror_failures_total", "side" => self.side.as_str(), "reason" => self.reason)
            .increment(1);
        tracing::warn!(
            request_id = self.request_id,
            side = %self.side,
            reason = self.reason,
            error = self.error,
            "mirror copy persisted for replay"
        );
    }
}

/// A persisted mirror copy could not even be persisted: it is lost; this must page someone.
#[derive(Debug)]
pub struct MirrorLost<'a> {
    /// The client request.
    pub request_id: &'a str,
    /// Why persisting failed.
    pub error: &'a str,
    /// Whether the copy is still in the journal (then delivered when the proxy restarts).
    pub journaled: bool,
}

impl MirrorLost<'_> {
    /// Records the event.
    pub fn emit(self) {
        if self.journaled {
            counter!("tandem_mirror_failures_total", "side" => "any", "reason" => "left_in_journal")
                .increment(1);
            tracing::error!(
                request_id = self.request_id,
                error = self.error,
                "mirror copy not persisted (control store unwritable); it stays in the journal and is delivered when the proxy starts again"
            );
        } else {
            counter!("tandem_mirror_failures_total", "side" => "any", "reason" => "lost")
                .increment(1);
            tracing::error!(
                request_id = self.request_id,
                error = self.error,
                "mirror copy lost: control store unwritable and not in the journal"
            );
        }
    }
}

/// A journal record could not be decoded: its copy is lost (it is dropped, or it would be
/// read again forever), counted with the lost copies, which page someone.
#[derive(Debug)]
pub struct JournalRecordUnreadable<'a> {
    /// The record's seq in the journal.
    pub seq: u64,
    /// Why it could not be decoded.
    pub error: &'a str,
}

impl JournalRecordUnreadable<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_mirror_failures_total", "side" => "any", "reason" => "lost").increment(1);
        tracing::error!(
            seq = self.seq,
            error = self.error,
            "mirror copy lost: its journal record is unreadable and is dropped; the comparator finds its rows"
        );
    }
}

/// A worker's queue was full: copies wait in the journal and are read back in order.
#[derive(Debug)]
pub struct MirrorSpilled;

impl MirrorSpilled {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_mirror_spills_total").increment(1);
        tracing::warn!("a mirror worker's queue is full; copies wait in the journal and are read back in order");
    }
}

/// The other side's delivery attempts started failing (sync requests stop waiting for their
/// copies), or one succeeded again.
#[derive(Debug)]
pub struct MirrorCircuit {
    /// Whether the circuit is open now.
    pub open: bool,
}

impl MirrorCircuit {
    /// Records the event.
    pub fn emit(self) {
        gauge!("tandem_mirror_circuit_open").set(if self.open { 1.0 } else { 0.0 });
        if self.open {
            tracing::warn!("a mirror delivery failed; sync requests stop waiting for their copies until one succeeds");
        } else {
            tracing::info!("mirror deliveries succeed again; sync requests wait for their copies");
        }
    }
}

/// A pass of the refill over the journal's waiting copies ended.
#[derive(Debug)]
pub struct MirrorRefill {
    /// Whether everything was handed on (else copies were set aside and it tries again).
    pub caught_up: bool,
}

impl MirrorRefill {
    /// Records the event.
    pub fn emit(self) {
        let outcome = if self.caught_up { "caught_up" } else { "again" };
        counter!("tandem_mirror_refill_passes_total", "outcome" => outcome).increment(1);
        if self.caught_up {
            tracing::info!("the journal's waiting mirror copies are handed on; copies go straight to the workers again");
        }
    }
}

/// A write met a journal that could not promise room for its copy (full, or a shared
/// journal's server out of reach).
#[derive(Debug)]
pub struct JournalRefusedWrite {
    /// What it met.
    pub refusal: tandem_journal::Refusal,
    /// What the write gets.
    pub policy: crate::config::JournalFull,
}

impl JournalRefusedWrite {
    /// Records the event.
    pub fn emit(self) {
        let policy = journal_full_label(self.policy);
        let name = match self.refusal {
            tandem_journal::Refusal::Full => "tandem_journal_full_writes_total",
            tandem_journal::Refusal::Unreachable => "tandem_journal_unreachable_writes_total",
            tandem_journal::Refusal::TooLarge => "tandem_journal_too_large_writes_total",
        };
        counter!(name, "policy" => policy).increment(1);
        tracing::error!(policy, refusal = %self.refusal, "a write met a journal that cannot take its copy");
    }
}

/// A request was answered 503 because too many were in flight.
#[derive(Debug)]
pub struct RequestShed;

impl RequestShed {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_requests_shed_total").increment(1);
    }
}

/// A client connection was answered 503 and closed because too many were open.
#[derive(Debug)]
pub struct ConnectionRefused;

impl ConnectionRefused {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_connections_refused_total").increment(1);
    }
}

/// A copy could not be written to the journal after the authoritative side took the write
/// (it is recorded as not mirrored).
#[derive(Debug)]
pub struct JournalAppendFailed<'a> {
    /// The client request.
    pub request_id: &'a str,
    /// Why.
    pub error: &'a tandem_journal::JournalError,
}

impl JournalAppendFailed<'_> {
    /// Records the event.
    pub fn emit(self) {
        let reason = match self.error {
            tandem_journal::JournalError::Full { .. } => "full",
            _ => "error",
        };
        counter!("tandem_journal_append_failures_total", "reason" => reason).increment(1);
        tracing::error!(
            request_id = self.request_id,
            error = %self.error,
            "a mirror copy could not be journaled: the write is recorded as not mirrored"
        );
    }
}

/// A write waited for the journal: for its copy's append (the local journal's group commit,
/// or the shared journal's acknowledgement, tries again included), or, with the shared
/// journal, for where the stream ended before the write went on (its mark).
#[derive(Debug)]
pub struct JournalWaited {
    /// `append` or `mark`.
    pub step: &'static str,
    /// How long.
    pub waited: Duration,
}

impl JournalWaited {
    /// Records the event.
    pub fn emit(self) {
        histogram!("tandem_journal_wait_duration_seconds", "step" => self.step)
            .record(self.waited.as_secs_f64());
    }
}

/// The shared journal's retention is shorter than a takeover after a crash takes (the lease,
/// then the holder's longest request): every copy of a partition taken over would be past it,
/// kept in the control store for replay and its key parked, rather than delivered.
#[derive(Debug)]
pub struct JournalRetentionShort {
    /// `journal_retention`.
    pub retention: Duration,
    /// The partitions' lease.
    pub lease: Duration,
    /// This proxy's longest request to a side.
    pub request_timeout: Duration,
    /// The lease plus the longest request.
    pub needed: Duration,
}

impl JournalRetentionShort {
    /// Records the event.
    pub fn emit(self) {
        tracing::warn!(
            "--journal-retention {} is shorter than the lease ({}) plus this proxy's longest request timeout ({}): copies of partitions taken over after a crash would expire before they are delivered; set it to {} or more",
            humantime::format_duration(self.retention),
            humantime::format_duration(self.lease),
            humantime::format_duration(self.request_timeout),
            humantime::format_duration(self.needed),
        );
    }
}

/// The journal was opened: its bound, and the counters of what a rule alerts on (writes
/// meeting it full, failed summaries, and for a shared journal key conflicts) at zero, so that
/// the first such event is an increase a rule can see.
#[derive(Debug)]
pub struct JournalOpened {
    /// `journal_max_bytes`.
    pub max_bytes: u64,
    /// What a write meeting it full gets.
    pub policy: crate::config::JournalFull,
    /// Whether it is the fleet's shared journal.
    pub shared: bool,
}

impl JournalOpened {
    /// Records the event.
    pub fn emit(self) {
        #[allow(clippy::cast_precision_loss)] // a byte bound far below 2^52
        gauge!("tandem_journal_max_bytes").set(self.max_bytes as f64);
        let policy = journal_full_label(self.policy);
        counter!("tandem_journal_full_writes_total", "policy" => policy).increment(0);
        counter!("tandem_journal_unreachable_writes_total", "policy" => policy).increment(0);
        for outcome in ["written", "failed"] {
            counter!("tandem_journal_summaries_total", "outcome" => outcome).increment(0);
        }
        if self.shared {
            for side in [Side::Old, Side::New] {
                counter!("tandem_mirror_conflicts_total", "side" => side.as_str()).increment(0);
                counter!("tandem_mirror_conflicts_unrecorded_total", "side" => side.as_str())
                    .increment(0);
            }
            counter!("tandem_journal_expired_total").increment(0);
        }
    }
}

fn journal_full_label(policy: crate::config::JournalFull) -> &'static str {
    match policy {
        crate::config::JournalFull::Refuse => "refuse",
        crate::config::JournalFull::Record => "record",
    }
}

/// The journal's state, published every checkpoint.
#[derive(Debug)]
pub struct JournalChecked(pub tandem_journal::JournalStats);

impl JournalChecked {
    /// Records the event.
    #[allow(clippy::cast_precision_loss)] // counts and bytes far below 2^52
    pub fn emit(self) {
        let stats = self.0;
        // What the store shows per instance as its backlog: every copy not delivered yet,
        // in the workers' hands or waiting in the journal.
        COUNTS.set_queue_depth(usize::try_from(stats.unsettled).unwrap_or(usize::MAX));
        gauge!("tandem_journal_unsettled_records").set(stats.unsettled as f64);
        gauge!("tandem_journal_bytes").set(stats.bytes as f64);
        gauge!("tandem_journal_segments").set(stats.segments as f64);
        let age = stats
            .oldest_unsettled
            .and_then(|at| at.elapsed().ok())
            .map_or(0.0, |age| age.as_secs_f64());
        gauge!("tandem_journal_oldest_unsettled_age_seconds").set(age);
    }
}

/// A summary of the journal's pending copies was written to the control store, or not.
#[derive(Debug)]
pub struct JournalSummaryWritten<'a> {
    /// Why it was not, if it was not.
    pub error: Option<&'a str>,
}

impl JournalSummaryWritten<'_> {
    /// Records the event.
    pub fn emit(self) {
        let outcome = if self.error.is_some() {
            "failed"
        } else {
            "written"
        };
        counter!("tandem_journal_summaries_total", "outcome" => outcome).increment(1);
        if let Some(error) = self.error {
            tracing::warn!(
                error,
                "cannot write the journal's summary to the control store (writes go on; the summary is retried)"
            );
        }
    }
}

/// A write's not-mirrored record is in the gap log (before its answer), or was taken from
/// there by the control store.
#[derive(Debug)]
pub struct GapsUnshipped(pub u64);

impl GapsUnshipped {
    /// Records the event.
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    pub fn emit(self) {
        gauge!("tandem_not_mirrored_unshipped_records").set(self.0 as f64);
    }
}

/// Another instance appended a copy of a key while this instance's write to it was at the
/// authoritative side: the two writes' order is unknown, the key is recorded for a recheck.
#[derive(Debug)]
pub struct KeyConflictFound<'a> {
    /// The write that found the other copy.
    pub request_id: &'a str,
    /// The side the copies go to.
    pub side: Side,
    /// The key.
    pub ordering_key: &'a str,
}

impl KeyConflictFound<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_mirror_conflicts_total", "side" => self.side.as_str()).increment(1);
        tracing::warn!(
            request_id = self.request_id,
            side = %self.side,
            ordering_key = self.ordering_key,
            "a key was written through two instances at once; recorded for a recheck"
        );
    }
}

/// A key conflict cannot be recorded (the queue of conflicts waiting for the control store
/// full, the store refusing it for good, or still waiting at the drain's deadline): its key is
/// not rechecked.
#[derive(Debug)]
pub struct KeyConflictUnrecorded<'a> {
    /// The side the copies go to.
    pub side: Side,
    /// The key.
    pub ordering_key: &'a str,
    /// The write that found the other copy.
    pub request_id: &'a str,
    /// Why it is not recorded.
    pub reason: &'a str,
}

impl KeyConflictUnrecorded<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_mirror_conflicts_unrecorded_total", "side" => self.side.as_str())
            .increment(1);
        tracing::error!(
            request_id = self.request_id,
            side = %self.side,
            ordering_key = self.ordering_key,
            reason = self.reason,
            "a key written through two instances at once cannot be recorded for a recheck"
        );
    }
}

/// What a shared journal's instance delivers, published every checkpoint.
#[derive(Debug)]
pub struct JournalFleet(pub tandem_journal::FleetStats);

impl JournalFleet {
    /// Records the event.
    #[allow(clippy::cast_precision_loss)] // partitions and counts far below 2^52
    pub fn emit(self) {
        let fleet = self.0;
        // A partition waiting for its previous holder's requests is held: it is delivered
        // once they can have ended, by this instance.
        let held =
            |partition: &u32| fleet.held.contains(partition) || fleet.waiting.contains(partition);
        for partition in 0..fleet.partitions {
            let value = if held(&partition) { 1.0 } else { 0.0 };
            gauge!("tandem_journal_partition_held", "partition" => partition.to_string())
                .set(value);
        }
        gauge!("tandem_journal_partitions_held")
            .set((0..fleet.partitions).filter(held).count() as f64);
        gauge!("tandem_journal_partitions_waiting").set(fleet.waiting.len() as f64);
        counter!("tandem_journal_rereads_total").absolute(fleet.rereads);
        counter!("tandem_journal_leases_lost_total").absolute(fleet.leases_lost);
        counter!("tandem_journal_copies_lost_total").absolute(fleet.copies_lost);
        gauge!("tandem_journal_server_loses_copies").set(if fleet.server_loses_copies {
            1.0
        } else {
            0.0
        });
    }
}

/// A copy waited in the shared journal longer than `journal_retention`: it is kept in the
/// control store for replay (its key parked) instead of delivered.
#[derive(Debug)]
pub struct JournalCopyExpired<'a> {
    /// The client request.
    pub request_id: &'a str,
    /// The side the copy was for.
    pub side: Side,
    /// Its key.
    pub ordering_key: &'a str,
    /// Its seq in the stream.
    pub seq: u64,
}

impl JournalCopyExpired<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_journal_expired_total").increment(1);
        tracing::error!(
            request_id = self.request_id,
            side = %self.side,
            ordering_key = self.ordering_key,
            seq = self.seq,
            "a mirror copy waited in the shared journal past journal_retention; it is kept in the control store for replay"
        );
    }
}

/// A copy was not delivered: the lease of its partition may have expired.
#[derive(Debug)]
pub struct JournalCopyFenced;

impl JournalCopyFenced {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_journal_fenced_copies_total").increment(1);
        tracing::warn!("a copy is left to the next holder of its partition: this instance's lease of it may have expired");
    }
}

/// The cutover hold ended for a request: it waited for its key's copies toward the side it
/// is routed to (`released`), or was refused (`timed_out`, `kept`, `store_unreachable`).
#[derive(Debug)]
pub struct CutoverHeld {
    /// How it ended.
    pub outcome: &'static str,
    /// How long it waited.
    pub waited: Duration,
}

impl CutoverHeld {
    /// Every outcome.
    const OUTCOMES: [&'static str; 5] = [
        "released",
        "timed_out",
        "kept",
        "store_unreachable",
        "journal_failed",
    ];

    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_cutover_held_requests_total", "outcome" => self.outcome).increment(1);
        histogram!("tandem_cutover_hold_duration_seconds", "outcome" => self.outcome)
            .record(self.waited.as_secs_f64());
        if self.outcome != "released" {
            tracing::warn!(
                outcome = self.outcome,
                waited_ms = u64::try_from(self.waited.as_millis()).unwrap_or(u64::MAX),
                "a request was refused at the cutover: its key's copies have not reached the \
                 side it is routed to"
            );
        }
    }

    /// Every outcome's counter at zero, so that a rule sees the first refusal as an increase.
    pub fn zero() {
        for outcome in Self::OUTCOMES {
            counter!("tandem_cutover_held_requests_total", "outcome" => outcome).increment(0);
        }
    }
}

/// Keys with copies still on their way to the authoritative side.
#[derive(Debug)]
pub struct CutoverKeysPending(pub u64);

impl CutoverKeysPending {
    /// Records the event.
    #[allow(clippy::cast_precision_loss)] // a count of keys far below 2^52
    pub fn emit(self) {
        gauge!("tandem_cutover_keys_pending").set(self.0 as f64);
    }
}

/// Whether requests to the authoritative side are checked against the shared journal's
/// copies (the fleet's cutover window is open).
#[derive(Debug)]
pub struct CutoverWindowOpen(pub bool);

impl CutoverWindowOpen {
    /// Records the event.
    pub fn emit(self) {
        gauge!("tandem_cutover_window_open").set(if self.0 { 1.0 } else { 0.0 });
    }
}

/// The shared journal did not take a parked key's marker (`park`) or release (`release`).
#[derive(Debug)]
pub struct FleetParkFailed<'a> {
    /// `park` or `release`.
    pub op: &'static str,
    /// The key.
    pub ordering_key: &'a str,
    /// What the journal said.
    pub error: &'a str,
}

impl FleetParkFailed<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_fleet_park_failures_total", "op" => self.op).increment(1);
        if self.op == "park" {
            tracing::error!(
                ordering_key = self.ordering_key,
                error = self.error,
                "cannot mark a key parked for the fleet: its copy stays in the shared journal (tried again) rather than be kept where the other instances would not refuse the key"
            );
        } else {
            tracing::warn!(
                ordering_key = self.ordering_key,
                error = self.error,
                "cannot release a parked key's marker: other instances keep refusing it until one of them finds the store clear"
            );
        }
    }
}

/// Whether this instance can read the fleet's parked keys now.
#[derive(Debug)]
pub struct FleetParkingKnown<'a> {
    /// Read (`true`), or not (`false`).
    pub known: bool,
    /// Why not.
    pub error: Option<&'a str>,
}

impl FleetParkingKnown<'_> {
    /// Records the change.
    pub fn emit(self) {
        gauge!("tandem_fleet_parking_unknown").set(if self.known { 0.0 } else { 1.0 });
        if let Some(error) = self.error {
            tracing::warn!(
                error,
                "cannot read the fleet's parked keys: a key another instance parked from now on is not refused here outside the cutover window"
            );
        } else {
            tracing::info!("reading the fleet's parked keys");
        }
    }
}

/// Keys parked as this instance knows them.
#[derive(Debug)]
pub struct ParkedKeys(pub usize);

impl ParkedKeys {
    /// Records the count.
    pub fn emit(self) {
        #[allow(clippy::cast_precision_loss)]
        gauge!("tandem_parked_keys").set(self.0 as f64);
    }
}

/// A replay attempt finished.
#[derive(Debug)]
pub struct MirrorReplayed {
    /// `delivered`, `failed` or `held` (an earlier copy of the same key is still pending).
    pub outcome: &'static str,
}

impl MirrorReplayed {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_mirror_replays_total", "outcome" => self.outcome).increment(1);
    }
}

/// The two sides answered one request differently.
#[derive(Debug)]
pub struct ResponseMismatched<'a> {
    /// The client request.
    pub request_id: &'a str,
    /// Read or write.
    pub class: RouteClass,
    /// The matching route.
    pub route: &'a str,
}

impl ResponseMismatched<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_response_mismatches_total", "class" => self.class.as_str()).increment(1);
        COUNTS.mismatched();
        // The diff holds response values (possibly personal data): it goes to the control
        // store and the admin API, not to the log.
        tracing::info!(
            request_id = self.request_id,
            route = self.route,
            "response mismatch recorded"
        );
    }
}

/// A comparison the stage called for was not made.
#[derive(Debug)]
pub struct ComparisonSkipped {
    /// `body_too_large`, `shadow_saturated` or `secondary_failed`.
    pub reason: &'static str,
}

impl ComparisonSkipped {
    /// Records the event.
    pub fn emit(self) {
        counter!("tandem_comparisons_skipped_total", "reason" => self.reason).increment(1);
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// A partition taken over and waiting for its previous holder's requests is held: the
    /// fleet's alert of a partition nobody holds must not fire for it.
    #[test]
    fn a_partition_waiting_for_its_previous_holder_counts_as_held() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            JournalFleet(tandem_journal::FleetStats {
                partitions: 3,
                held: vec![0],
                waiting: vec![2],
                rereads: 0,
                leases_lost: 0,
                copies_lost: 0,
                server_loses_copies: true,
            })
            .emit();
        });
        let rendered = handle.render();
        let line = |name: &str| {
            rendered
                .lines()
                .find(|line| line.starts_with(name))
                .map(str::to_owned)
        };
        for (series, value) in [
            ("tandem_journal_partition_held{partition=\"2\"}", 1),
            ("tandem_journal_partition_held{partition=\"1\"}", 0),
            ("tandem_journal_partitions_held", 2),
            ("tandem_journal_partitions_waiting", 1),
            ("tandem_journal_server_loses_copies", 1),
        ] {
            let wanted = format!("{series} {value}");
            assert_eq!(line(&format!("{series} ")), Some(wanted), "{rendered}");
        }
    }
}
