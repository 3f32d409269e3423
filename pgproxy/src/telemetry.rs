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
    describe_gauge!(
        "tandem_pg_client_connections",
        "Client connections counted against max_client_connections now (logging in or served)"
    );
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
        "Read-only transactions run on the other side in shadow and live, by outcome (same, different, overtaken: different, but the session committed a write after the read that the capture may have applied before the copy ran; not a mismatch)"
    );
    describe_counter!(
        "tandem_pg_shadow_reads_total",
        "Read-only transactions ended in shadow and live, by whether the compare_reads sample took them to the other side (compared, skipped)"
    );
    // At zero from the start, so that a rate over either decision has a first value.
    for decision in ["compared", "skipped"] {
        metrics::counter!("tandem_pg_shadow_reads_total", "decision" => decision).increment(0);
    }
    describe_histogram!(
        "tandem_pg_mirror_backpressure_wait_seconds",
        Unit::Seconds,
        "How long a transaction's end waited because max_mirror_backlog transactions were owed to the other side"
    );
    describe_counter!(
        "tandem_pg_sessions_moved_total",
        "Sessions that went on with the other side at a change of authoritative side, by the side they moved to"
    );
    describe_counter!(
        "tandem_pg_session_parameters_changed_total",
        "Reported parameters (ParameterStatus) of sessions that went on with the other side whose value there differs from what the client was told and could not be set back (server_version, is_superuser, …): the client was told the new value; by parameter"
    );
    describe_counter!(
        "tandem_capture_transactions_total",
        "Transactions captured from the authoritative side's write-ahead log and applied on the other side"
    );
    describe_counter!(
        "tandem_capture_changes_total",
        "Row changes (insert, update, delete, truncate) applied on the other side by the capture (after coalescing; a set statement carries many)"
    );
    describe_counter!(
        "tandem_capture_statements_total",
        "Statements the capture ran on the other side, by path (set: one table's rows bound as arrays; row: one row change)"
    );
    describe_counter!(
        "tandem_capture_set_fallbacks_total",
        "Tables of a batch whose changes took the row path instead of the set path, by reason (foreign_key, unique_index, trigger, other_trigger, not_a_table, column_type, identity_full, key, no_key, truncate, reshaped, value)"
    );
    describe_counter!(
        "tandem_capture_routed_total",
        "Captured transactions by the apply session they went to with --apply-sessions above 1: route=worker (its rows hash to one worker) or route=serial (applied in order with every other by the main session)"
    );
    describe_counter!(
        "tandem_capture_changes_coalesced_total",
        "Captured updates left out because a later change of the same row in the same target transaction covers them"
    );
    describe_counter!(
        "tandem_capture_batches_total",
        "Target transactions the capture committed (each holds one or more source transactions)"
    );
    describe_counter!(
        "tandem_capture_transaction_parts_total",
        "Parts of source transactions too large to hold whole (more changes than a batch) applied on the other side, in a target transaction committed with the last part"
    );
    describe_counter!(
        "tandem_capture_rows_absent_total",
        "Captured updates and deletes that found no row on the other side (left to the comparator and backfill)"
    );
    describe_counter!(
        "tandem_capture_failures_total",
        "Capture sessions that failed and started over, by reason (connection, refused, origin_busy, other)"
    );
    describe_counter!(
        "tandem_capture_start_timeouts_total",
        "Starts of a capture whose new slot was not consistent within switch_timeout (new transactions were refused with 57P03 meanwhile)"
    );
    describe_counter!(
        "tandem_capture_switches_refused_total",
        "Changes of authoritative side refused (the stage rolled back) because the side taking over had not applied the other's changes within switch_timeout"
    );
    describe_counter!(
        "tandem_capture_history_transactions_total",
        "Transactions open when a stage began mirroring writes that committed before the new slot was consistent (history, not captured)"
    );
    describe_gauge!(
        "tandem_capture_paused",
        "1 while the capture is paused because a table's columns differ between the sides"
    );
    describe_gauge!(
        "tandem_capture_read_ahead_units",
        "What the capture read from the stream and has not applied yet, in units of one row change or 1 KiB of its values when more (bounded by twice the batch's)"
    );
    describe_gauge!(
        "tandem_capture_failures_in_a_row",
        "Capture sessions that failed one after the other without applying anything or running a minute (a capture stuck on the same failure); 0 once it goes on"
    );
    describe_gauge!(
        "tandem_capture_retained_wal_bytes",
        Unit::Bytes,
        "Write-ahead log a side keeps for tandem's slot there (side: old, new), in every stage; 0 when the slot does not exist"
    );
    describe_gauge!(
        "tandem_capture_max_retained_wal_bytes",
        Unit::Bytes,
        "The most write-ahead log the captured side may keep for tandem's slot before tandem alerts (max_retained_wal)"
    );
    describe_gauge!(
        "tandem_capture_lag_bytes",
        Unit::Bytes,
        "Write-ahead log written on a side since the position the reader of tandem's slot there confirmed (side: old, new)"
    );
    describe_histogram!(
        "tandem_capture_apply_delay_seconds",
        Unit::Seconds,
        "From a transaction's commit on the captured side to its batch's commit on the other side"
    );
    describe_histogram!(
        "tandem_capture_receive_delay_seconds",
        Unit::Seconds,
        "From a transaction's commit on the captured side to its arrival in tandem (the walsender's and the network's share of the apply delay)"
    );
    describe_histogram!(
        "tandem_capture_apply_duration_seconds",
        Unit::Seconds,
        "How long one target transaction of the capture took to apply, from its first statement sent to its commit answered"
    );
    describe_histogram!(
        "tandem_capture_batch_transactions",
        Unit::Count,
        "Source transactions applied in one target transaction of the capture"
    );
    describe_histogram!(
        "tandem_pg_mirror_lag_seconds",
        Unit::Seconds,
        "From the authoritative side's end of a write transaction to the other side's answer"
    );
}
