//! What the PostgreSQL proxy counts: the counts flushed to the control store (shared with the
//! HTTP proxy) and the help text and units of its `tandem_pg_*` metrics.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use tandem_control::ProxyCounters;

/// Counts since the last flush to the control store (ReadyForQuery rounds served,
/// transactions mirrored, compared and kept for replay), summed with every other proxy's by
/// rate alerts and rollback policies.
pub(crate) static COUNTS: ProxyCounters = ProxyCounters::new();

/// Registers help text and units for every metric of the PostgreSQL proxy.
pub fn describe_metrics() {
    describe_counter!(
        "tandem_pg_sessions_total",
        "Client sessions served, by the side that served them"
    );
    describe_gauge!("tandem_pg_sessions_active", "Client sessions open now");
    describe_counter!(
        "tandem_pg_server_connections_total",
        "Server connections handed to sessions, by side and source (new login or pool)"
    );
    describe_gauge!(
        "tandem_pg_pool_idle_connections",
        "Server connections kept idle for the next session"
    );
    describe_counter!(
        "tandem_pg_sessions_ended_by_stage_total",
        "Sessions ended (SQLSTATE 57P01) because a stage change made the other side authoritative"
    );
    describe_counter!(
        "tandem_pg_unsplit_queries_total",
        "Queries whose statements could not be matched with their answers (carried whole, as a write)"
    );
    describe_counter!(
        "tandem_pg_transactions_in_doubt_total",
        "Requests still unanswered after their cancel at a stage change (outcome unknown)"
    );
    describe_counter!(
        "tandem_pg_sessions_lost_track_total",
        "Sessions ended because the tracker could not match the server's answers to requests"
    );
    describe_gauge!(
        "tandem_mirror_queue_depth",
        "Transactions handed to the other side and not yet settled there"
    );
    tandem_control::describe_stage_metrics();
    describe_counter!(
        "tandem_pg_cancels_total",
        "Cancel requests sent to a server (clients', and tandem's own when a stage grace runs out)"
    );
    describe_counter!(
        "tandem_pg_mirrored_transactions_total",
        "Committed write transactions applied on the other side, by outcome (ok, mismatch, failed)"
    );
    describe_counter!(
        "tandem_pg_compared_reads_total",
        "Read-only transactions run on the other side in shadow and live, by outcome (same, different)"
    );
    describe_histogram!(
        "tandem_pg_mirror_backpressure_wait_seconds",
        Unit::Seconds,
        "How long a transaction's end waited because max_mirror_backlog transactions were owed to the other side"
    );
    describe_histogram!(
        "tandem_pg_mirror_lag_seconds",
        Unit::Seconds,
        "From the authoritative side's end of a write transaction to the other side's answer"
    );
}
