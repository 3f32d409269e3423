//! The append-only audit log: every stage change, forced promotion, automatic rollback and
//! alert acknowledgement or resolution, with who, when and why.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, ControlStore};
use crate::error::ControlError;
use crate::time::Timestamp;

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// The stage changed.
    StageChange,
    /// A promotion the gate refused was forced.
    ForcedPromotion,
    /// A rollback policy changed the stage.
    AutoRollback,
    /// A rollback policy fired in dry-run mode (the stage was left alone).
    AutoRollbackDryRun,
    /// Someone acknowledged an alert.
    AlertAcknowledged,
    /// An alert was resolved, by hand or because its condition cleared.
    AlertResolved,
    /// A kept transaction that could not be applied was skipped by a person.
    MirrorSkipped,
}

impl AuditAction {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::StageChange => "stage_change",
            AuditAction::ForcedPromotion => "forced_promotion",
            AuditAction::AutoRollback => "auto_rollback",
            AuditAction::AutoRollbackDryRun => "auto_rollback_dry_run",
            AuditAction::AlertAcknowledged => "alert_acknowledged",
            AuditAction::AlertResolved => "alert_resolved",
            AuditAction::MirrorSkipped => "mirror_skipped",
        }
    }
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Its position in the log.
    pub id: i64,
    /// When it happened.
    pub at: Timestamp,
    /// Who did it (a person, or `tandem:…`).
    pub actor: String,
    /// What was done (`stage_change`, `alert_acknowledged`, …).
    pub action: String,
    /// What it was done to (`dual-write -> live`, `alert 3`, a policy name).
    pub subject: String,
    /// Why, or the evidence.
    pub detail: String,
}

impl AuditEntry {
    fn from_row(row: &AnyRow) -> Result<AuditEntry, ControlError> {
        Ok(AuditEntry {
            id: column(row, "id")?,
            at: Timestamp(column(row, "at_ms")?),
            actor: column(row, "actor")?,
            action: column(row, "action")?,
            subject: column(row, "subject")?,
            detail: column(row, "detail")?,
        })
    }
}

/// Appends an entry inside `tx`, so it lands with the change it records or not at all.
pub(super) async fn append(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: AuditAction,
    subject: &str,
    detail: &str,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO audit_log (at_ms, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Timestamp::now().millis())
    .bind(actor)
    .bind(action.as_str())
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await
    .map_err(ControlError::database("append to the audit log"))?;
    Ok(())
}

impl ControlStore {
    /// Appends one entry.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn audit(
        &self,
        actor: &str,
        action: AuditAction,
        subject: &str,
        detail: &str,
    ) -> Result<(), ControlError> {
        let failed = || ControlError::database("append to the audit log");
        let mut tx = self.pool.begin().await.map_err(failed())?;
        append(&mut tx, actor, action, subject, detail).await?;
        tx.commit().await.map_err(failed())
    }

    /// The entries at or after `since` (all when `None`), oldest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn audit_log(
        &self,
        since: Option<Timestamp>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, subject, detail FROM audit_log \
             WHERE at_ms >= $1 ORDER BY id",
        )
        .bind(since.map_or(i64::MIN, Timestamp::millis))
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("read the audit log"))?;
        rows.iter().map(AuditEntry::from_row).collect()
    }

    /// When `action` was last recorded for `subject`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn last_audited(
        &self,
        action: AuditAction,
        subject: &str,
    ) -> Result<Option<Timestamp>, ControlError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(at_ms) FROM audit_log WHERE action = $1 AND subject = $2",
        )
        .bind(action.as_str())
        .bind(subject)
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("read the audit log"))?;
        Ok(at.map(Timestamp))
    }
}
