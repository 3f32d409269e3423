//! Alerts: one active alert per condition (its fingerprint), updated while the condition
//! persists, acknowledged and resolved by people or resolved by itself once the condition has
//! been gone long enough; and when each is due to be (re-)notified.

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;

use super::audit::{self, AuditAction};
use super::{column, ControlStore};
use crate::error::ControlError;
use crate::time::Timestamp;

/// A condition seen now, to raise or update an alert with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCondition {
    /// What detected it: `comparator` or `proxy`.
    pub source: String,
    /// What it is about: a table, `responses`, `sweeps`, a policy name.
    pub subject: String,
    /// What kind of condition: `drift`, `stale_comparator`, `response_mismatches`, ….
    pub kind: String,
    /// `critical` or `warning`.
    pub severity: String,
    /// One line for people.
    pub summary: String,
    /// How big it is now (divergent rows, mismatches per thousand, …).
    pub measured: i64,
    /// A few example keys or request ids.
    pub examples: Vec<String>,
}

impl AlertCondition {
    /// `source:subject:kind`: the same condition seen again updates the same alert.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.source, &self.subject, &self.kind)
    }
}

/// The fingerprint of a condition.
#[must_use]
pub fn fingerprint(source: &str, subject: &str, kind: &str) -> String {
    format!("{source}:{subject}:{kind}")
}

/// When an alert whose condition is gone resolves by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveRule {
    /// After this many consecutive clean checks (sweeps).
    CleanChecks(i64),
    /// After the condition has been gone this long.
    CleanFor(Duration),
}

/// An alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Its id.
    pub id: i64,
    /// `source:subject:kind`.
    pub fingerprint: String,
    /// What detected it.
    pub source: String,
    /// What it is about.
    pub subject: String,
    /// The kind of condition.
    pub kind: String,
    /// `critical` or `warning`.
    pub severity: String,
    /// One line for people.
    pub summary: String,
    /// `open`, `acknowledged` or `resolved`.
    pub status: String,
    /// When the condition was first seen.
    pub first_seen: Timestamp,
    /// When it was last seen.
    pub last_seen: Timestamp,
    /// How many times it was seen.
    pub occurrences: i64,
    /// How big it was when last seen.
    pub measured: i64,
    /// Example keys or request ids.
    pub examples: Vec<String>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When.
    pub acknowledged_at: Option<Timestamp>,
    /// What they said.
    pub ack_comment: Option<String>,
    /// Who resolved it (`tandem` when its condition cleared).
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<Timestamp>,
    /// Why.
    pub resolve_comment: Option<String>,
    /// When a notification about it was last delivered.
    pub notified_at: Option<Timestamp>,
    /// When the next notification is due (`None`: nothing to send).
    pub notify_due: Option<Timestamp>,
}

impl Alert {
    fn from_row(row: &AnyRow) -> Result<Alert, ControlError> {
        let examples: String = column(row, "examples")?;
        let optional_time = |name| -> Result<Option<Timestamp>, ControlError> {
            Ok(column::<Option<i64>>(row, name)?.map(Timestamp))
        };
        Ok(Alert {
            id: column(row, "id")?,
            fingerprint: column(row, "fingerprint")?,
            source: column(row, "source")?,
            subject: column(row, "subject")?,
            kind: column(row, "kind")?,
            severity: column(row, "severity")?,
            summary: column(row, "summary")?,
            status: column(row, "status")?,
            first_seen: Timestamp(column(row, "first_seen_ms")?),
            last_seen: Timestamp(column(row, "last_seen_ms")?),
            occurrences: column(row, "occurrences")?,
            measured: column(row, "measured")?,
            examples: serde_json::from_str(&examples).map_err(|err| ControlError::Corrupt {
                field: "alerts.examples",
                reason: err.to_string(),
            })?,
            acknowledged_by: column(row, "acknowledged_by")?,
            acknowledged_at: optional_time("acknowledged_at_ms")?,
            ack_comment: column(row, "ack_comment")?,
            resolved_by: column(row, "resolved_by")?,
            resolved_at: optional_time("resolved_at_ms")?,
            resolve_comment: column(row, "resolve_comment")?,
            notified_at: optional_time("notified_at_ms")?,
            notify_due: optional_time("notify_due_ms")?,
        })
    }
}

const ALERT_COLUMNS: &str = "id, fingerprint, source, subject, kind, severity, summary, status, \
     first_seen_ms, last_seen_ms, occurrences, measured, examples, acknowledged_by, \
     acknowledged_at_ms, ack_comment, resolved_by, resolved_at_ms, resolve_comment, notified_at_ms, \
     notify_due_ms";

/// A change to one alert: the columns it sets (`$1` = by, `$2` = now, `$3` = comment), the
/// state it needs, and how it is audited.
struct AlertChange<'a> {
    id: i64,
    set: &'static str,
    only_if: &'static str,
    by: &'a str,
    comment: Option<&'a str>,
    action: AuditAction,
    wanted: &'static str,
}

/// Who resolves alerts whose condition cleared.
const TANDEM: &str = "tandem";

impl ControlStore {
    /// Raises the alert of `condition`, or updates its active alert; returns it and whether
    /// it was opened now.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn raise_alert(
        &self,
        condition: &AlertCondition,
    ) -> Result<(Alert, bool), ControlError> {
        let now = Timestamp::now().millis();
        let row = sqlx::query(&format!(
            "INSERT INTO alerts (fingerprint, source, subject, kind, severity, summary, status, \
             first_seen_ms, last_seen_ms, occurrences, measured, examples, notify_due_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7, 1, $8, $9, $7) \
             ON CONFLICT (fingerprint) WHERE status <> 'resolved' DO UPDATE SET \
             severity = excluded.severity, summary = excluded.summary, \
             last_seen_ms = excluded.last_seen_ms, occurrences = alerts.occurrences + 1, \
             measured = excluded.measured, examples = excluded.examples, clean_checks = 0, \
             clean_since_ms = NULL RETURNING {ALERT_COLUMNS}"
        ))
        .bind(condition.fingerprint())
        .bind(&condition.source)
        .bind(&condition.subject)
        .bind(&condition.kind)
        .bind(&condition.severity)
        .bind(&condition.summary)
        .bind(now)
        .bind(condition.measured)
        .bind(serde_json::Value::from(condition.examples.clone()).to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("raise alert"))?;
        let alert = Alert::from_row(&row)?;
        let opened = alert.occurrences == 1;
        Ok((alert, opened))
    }

    /// Notes that the condition `fingerprint` was checked and found gone; resolves its active
    /// alert when `rule` says it has been gone long enough. Returns the alert it resolved.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn note_clean(
        &self,
        fingerprint: &str,
        rule: ResolveRule,
    ) -> Result<Option<Alert>, ControlError> {
        let now = Timestamp::now().millis();
        let checked: Option<(i64, i64, i64)> = sqlx::query_as(
            "UPDATE alerts SET clean_checks = clean_checks + 1, \
             clean_since_ms = COALESCE(clean_since_ms, $1) \
             WHERE fingerprint = $2 AND status <> 'resolved' \
             RETURNING id, clean_checks, clean_since_ms",
        )
        .bind(now)
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("note clean check"))?;
        let Some((id, checks, since)) = checked else {
            return Ok(None);
        };
        let (cleared, comment) = match rule {
            ResolveRule::CleanChecks(needed) => (
                checks >= needed,
                format!("condition gone for {checks} consecutive checks"),
            ),
            ResolveRule::CleanFor(needed) => (
                now.saturating_sub(since) >= i64::try_from(needed.as_millis()).unwrap_or(i64::MAX),
                format!("condition gone for {}", humantime::format_duration(needed)),
            ),
        };
        if !cleared {
            return Ok(None);
        }
        match self.resolve_alert(id, TANDEM, &comment).await {
            Ok(alert) => Ok(Some(alert)),
            // Another instance saw the same clean check and resolved it first.
            Err(ControlError::InvalidInput(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Acknowledges an open alert: it stays unresolved but is no longer re-notified.
    ///
    /// # Errors
    /// [`ControlError::NotFound`] for an unknown alert, [`ControlError::InvalidInput`] for one
    /// already acknowledged or resolved, or a blank `by`; nothing changes then.
    pub async fn acknowledge_alert(
        &self,
        id: i64,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Alert, ControlError> {
        if by.trim().is_empty() {
            return Err(ControlError::InvalidInput(
                "an acknowledgement needs a non-empty `by` (who acknowledges)".to_owned(),
            ));
        }
        self.change_alert(AlertChange {
            id,
            set: "status = 'acknowledged', acknowledged_by = $1, acknowledged_at_ms = $2, \
                  ack_comment = $3, notify_due_ms = NULL",
            only_if: "status = 'open'",
            by,
            comment,
            action: AuditAction::AlertAcknowledged,
            wanted: "acknowledged",
        })
        .await
    }

    /// Resolves an alert that is open or acknowledged; its resolution is notified.
    ///
    /// # Errors
    /// [`ControlError::NotFound`] for an unknown alert, [`ControlError::InvalidInput`] for one
    /// already resolved, or a blank `by` or `comment`; nothing changes then.
    pub async fn resolve_alert(
        &self,
        id: i64,
        by: &str,
        comment: &str,
    ) -> Result<Alert, ControlError> {
        if by.trim().is_empty() || comment.trim().is_empty() {
            return Err(ControlError::InvalidInput(
                "resolving an alert needs a non-empty `by` and `comment`".to_owned(),
            ));
        }
        self.change_alert(AlertChange {
            id,
            set: "status = 'resolved', resolved_by = $1, resolved_at_ms = $2, \
                  resolve_comment = $3, notify_due_ms = $2",
            only_if: "status <> 'resolved'",
            by,
            comment: Some(comment),
            action: AuditAction::AlertResolved,
            wanted: "resolved",
        })
        .await
    }

    /// Applies a person's (or tandem's) change to an alert and audits it, in one transaction;
    /// an alert not in the state the change needs is an error and nothing changes.
    async fn change_alert(&self, change: AlertChange<'_>) -> Result<Alert, ControlError> {
        let failed = || ControlError::database("change alert");
        let mut tx = self.pool.begin().await.map_err(failed())?;
        let row = sqlx::query(&format!(
            "UPDATE alerts SET {} WHERE id = $4 AND {} RETURNING {ALERT_COLUMNS}",
            change.set, change.only_if
        ))
        .bind(change.by)
        .bind(Timestamp::now().millis())
        .bind(change.comment)
        .bind(change.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed())?;
        let Some(row) = row else {
            return Err(self.unchangeable(change.id, change.wanted).await);
        };
        let alert = Alert::from_row(&row)?;
        let subject = format!("alert {} ({})", change.id, alert.fingerprint);
        let detail = change.comment.unwrap_or("");
        audit::append(&mut tx, change.by, change.action, &subject, detail).await?;
        tx.commit().await.map_err(failed())?;
        Ok(alert)
    }

    /// Why alert `id` cannot be `wanted` (acknowledged or resolved).
    async fn unchangeable(&self, id: i64, wanted: &str) -> ControlError {
        match self.alert(id).await {
            Ok(Some(alert)) => ControlError::InvalidInput(format!(
                "alert {id} is {} and cannot be {wanted}",
                alert.status
            )),
            Ok(None) => ControlError::NotFound(format!("no alert {id}")),
            Err(err) => err,
        }
    }

    /// One alert.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn alert(&self, id: i64) -> Result<Option<Alert>, ControlError> {
        let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ControlError::database("read alert"))?;
        row.as_ref().map(Alert::from_row).transpose()
    }

    /// Alerts with `status` (every alert when `None`), newest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn alerts(&self, status: Option<&str>) -> Result<Vec<Alert>, ControlError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = '' OR status = $1) ORDER BY id DESC"
        ))
        .bind(status.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list alerts"))?;
        rows.iter().map(Alert::from_row).collect()
    }

    /// Alerts not resolved yet (open or acknowledged), oldest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn active_alerts(&self) -> Result<Vec<Alert>, ControlError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE status <> 'resolved' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list alerts"))?;
        rows.iter().map(Alert::from_row).collect()
    }

    /// Alerts whose notification is due now: new or unacknowledged ones past their
    /// re-notification time, and resolutions not yet delivered.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn alerts_due(&self) -> Result<Vec<Alert>, ControlError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE notify_due_ms <= $1 ORDER BY id"
        ))
        .bind(Timestamp::now().millis())
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list alerts due"))?;
        rows.iter().map(Alert::from_row).collect()
    }

    /// Takes the due notification of `alert` for this instance (others sharing the store then
    /// skip it) for at most `hold`; false when another instance took it first.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_alert_notification(
        &self,
        alert: &Alert,
        hold: Duration,
    ) -> Result<bool, ControlError> {
        let Some(due) = alert.notify_due else {
            return Ok(false);
        };
        let until = Timestamp::now()
            .millis()
            .saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
        let claimed = sqlx::query(
            "UPDATE alerts SET notify_due_ms = $1 WHERE id = $2 AND notify_due_ms = $3",
        )
        .bind(until)
        .bind(alert.id)
        .bind(due.millis())
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("claim notification"))?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Records that `alert` (as it was when sent) was notified: an open alert is due again
    /// after `renotify`; an acknowledged or resolved one is not (unless it changed meanwhile).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn alert_notified(
        &self,
        alert: &Alert,
        renotify: Duration,
    ) -> Result<(), ControlError> {
        let now = Timestamp::now().millis();
        let next = now.saturating_add(i64::try_from(renotify.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "UPDATE alerts SET notified_at_ms = $1, \
             notify_due_ms = CASE WHEN status = 'open' THEN $2 ELSE NULL END \
             WHERE id = $3 AND status = $4",
        )
        .bind(now)
        .bind(next)
        .bind(alert.id)
        .bind(&alert.status)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record notification"))?;
        Ok(())
    }

    /// Records that notifying `alert` failed: it is due again after `retry`.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn alert_notification_failed(
        &self,
        alert: &Alert,
        retry: Duration,
    ) -> Result<(), ControlError> {
        let due = Timestamp::now()
            .millis()
            .saturating_add(i64::try_from(retry.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "UPDATE alerts SET notify_due_ms = $1 \
             WHERE id = $2 AND status = $3 AND notify_due_ms IS NOT NULL",
        )
        .bind(due)
        .bind(alert.id)
        .bind(&alert.status)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record notification failure"))?;
        Ok(())
    }
}
