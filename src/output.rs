//! Printing command results as lines for people or JSON for scripts.

use serde::Serialize;
use tandem_control::{Alert, MirrorFailure, StageRecord};

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One line describing a stage change.
pub fn stage_line(record: &StageRecord) -> String {
    let from = record
        .previous
        .map(|previous| format!(" (from {previous})"))
        .unwrap_or_default();
    format!(
        "#{id} {at} {stage}{from} by {by}: {reason}",
        id = record.id,
        at = record.changed_at.to_rfc3339(),
        stage = record.stage,
        by = record.by,
        reason = record.reason,
    )
}

/// One line describing a persisted mirror copy.
pub fn failure_line(failure: &MirrorFailure) -> String {
    format!(
        "#{id} {status} {method} {uri} -> {side} key={key} reason={reason} attempts={attempts} body={bytes}B request={request} {error}",
        id = failure.id,
        status = failure.status,
        method = failure.method,
        uri = failure.uri,
        side = failure.target,
        key = failure.ordering_key,
        reason = failure.reason,
        attempts = failure.attempts,
        bytes = failure.body_bytes,
        request = failure.request_id,
        error = failure.last_error,
    )
}

/// A report key as `column=value …`, in key-column order.
pub fn key_text(key: &tandem_comparator::KeyValues) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|(column, value)| format!("{column}={value}"))
        .collect();
    parts.join(" ")
}

/// One line describing an alert.
pub fn alert_line(alert: &Alert) -> String {
    format!(
        "#{id} {status} {severity} {kind} {subject}: {summary} (last seen {last}, {seen}x)",
        id = alert.id,
        status = alert.status,
        severity = alert.severity,
        kind = alert.kind,
        subject = alert.subject,
        summary = alert.summary,
        last = alert.last_seen.to_rfc3339(),
        seen = alert.occurrences,
    )
}
