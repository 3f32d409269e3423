//! The current stage and its history: every change with who, when and why.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::audit::{self, AuditAction};
use super::{column, text_column, Backend, ControlStore};
use crate::error::ControlError;
use crate::stage::Stage;
use crate::time::Timestamp;

const CHANGE_COLUMNS: &str = "id, stage, previous_stage, changed_by, reason, changed_at_ms";

/// `old -> new`, as the audit log names a stage change.
fn transition(record: &StageRecord) -> String {
    match record.previous {
        Some(previous) => format!("{previous} -> {}", record.stage),
        None => format!("-> {}", record.stage),
    }
}

fn check_change(by: &str, reason: &str) -> Result<(), ControlError> {
    if by.trim().is_empty() {
        return Err(ControlError::InvalidInput(
            "a stage change needs a non-empty `by` (who makes it)".to_owned(),
        ));
    }
    if reason.trim().is_empty() {
        return Err(ControlError::InvalidInput(
            "a stage change needs a non-empty `reason`".to_owned(),
        ));
    }
    Ok(())
}

/// One entry of the stage history; the newest entry is the current stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageRecord {
    /// Position in the history (0 for the implicit initial stage of an empty store).
    pub id: i64,
    /// The stage set by this change.
    pub stage: Stage,
    /// The stage before this change.
    pub previous: Option<Stage>,
    /// Who made the change (a person, or `tandem:…` for tandem itself).
    pub by: String,
    /// Why the change was made.
    pub reason: String,
    /// When the change was made.
    pub changed_at: Timestamp,
}

impl StageRecord {
    fn initial() -> StageRecord {
        StageRecord {
            id: 0,
            stage: Stage::INITIAL,
            previous: None,
            by: "tandem".to_owned(),
            reason: "initial stage of a new control store".to_owned(),
            changed_at: Timestamp(0),
        }
    }

    fn from_row(row: &AnyRow) -> Result<StageRecord, ControlError> {
        let previous: Option<String> = column(row, "previous_stage")?;
        Ok(StageRecord {
            id: column(row, "id")?,
            stage: text_column("stage", &column::<String>(row, "stage")?)?,
            previous: previous
                .map(|name| text_column("previous_stage", &name))
                .transpose()?,
            by: column(row, "changed_by")?,
            reason: column(row, "reason")?,
            changed_at: Timestamp(column(row, "changed_at_ms")?),
        })
    }
}

/// The current stage with its recent history, as shown by the CLI and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageOverview {
    /// The stage in force.
    pub stage: Stage,
    /// When it was set.
    pub since: Timestamp,
    /// Who set it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Recent changes, newest first.
    pub history: Vec<StageRecord>,
}

const SELECT_STAGE: &str =
    "SELECT id, stage, previous_stage, changed_by, reason, changed_at_ms FROM stage_changes";

impl ControlStore {
    /// The stage in force: the newest history entry, or `old-only` for an empty store.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn current_stage(&self) -> Result<StageRecord, ControlError> {
        let row = sqlx::query(&format!("{SELECT_STAGE} ORDER BY id DESC LIMIT 1"))
            .fetch_optional(&self.pool)
            .await
            .map_err(ControlError::database("read current stage"))?;
        row.as_ref()
            .map_or_else(|| Ok(StageRecord::initial()), StageRecord::from_row)
    }

    /// Records a change to `stage`, made by `by` because of `reason`, and returns it. A
    /// promotion (to `live` or `new-only`) the gate refuses is an error.
    ///
    /// # Errors
    /// When `by` or `reason` is blank, the promotion gate refuses, or the store cannot be
    /// written.
    pub async fn set_stage(
        &self,
        stage: Stage,
        by: &str,
        reason: &str,
    ) -> Result<StageRecord, ControlError> {
        self.change_stage(stage, by, reason, false).await
    }

    /// Like [`ControlStore::set_stage`], but a promotion the gate refuses goes ahead and is
    /// audited as forced, with what the gate found missing.
    ///
    /// # Errors
    /// When `by` or `reason` is blank or the store cannot be written.
    pub async fn force_stage(
        &self,
        stage: Stage,
        by: &str,
        reason: &str,
    ) -> Result<StageRecord, ControlError> {
        self.change_stage(stage, by, reason, true).await
    }

    async fn change_stage(
        &self,
        stage: Stage,
        by: &str,
        reason: &str,
        force: bool,
    ) -> Result<StageRecord, ControlError> {
        check_change(by, reason)?;
        let current = self.current_stage().await?;
        let mut forced = None;
        if current.stage.promotes_to(stage) {
            let blockers = self.promotion_blockers().await?;
            if !blockers.is_empty() {
                if !force {
                    return Err(ControlError::PromotionRefused { stage, blockers });
                }
                forced = Some(blockers.join("; "));
            }
        }
        let failed = || ControlError::database("record stage change");
        let mut tx = self.pool.begin().await.map_err(failed())?;
        // Applied only if the stage is still the one the gate judged: a rollback in between
        // is never undone by a promotion decided before it.
        let Some(record) = self
            .insert_change(&mut tx, current.stage, stage, by, reason)
            .await?
        else {
            let now = self.current_stage().await?;
            return Err(ControlError::InvalidInput(format!(
                "the stage changed to {} meanwhile (by {}: {}); check and try again",
                now.stage, now.by, now.reason
            )));
        };
        audit::append(
            &mut tx,
            by,
            AuditAction::StageChange,
            &transition(&record),
            reason,
        )
        .await?;
        if let Some(missing) = forced {
            audit::append(
                &mut tx,
                by,
                AuditAction::ForcedPromotion,
                &transition(&record),
                &missing,
            )
            .await?;
        }
        tx.commit().await.map_err(failed())?;
        Ok(record)
    }

    /// Inserts a change from `from` to `to` if the stage in force is still `from`, in `tx`
    /// (on PostgreSQL under a lock that serialises stage changes, so that two instances never
    /// both see `from`). The insert reads the previous stage itself: a read-then-write
    /// transaction can fail on SQLite (WAL) with SQLITE_BUSY_SNAPSHOT.
    async fn insert_change(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        from: Stage,
        to: Stage,
        by: &str,
        reason: &str,
    ) -> Result<Option<StageRecord>, ControlError> {
        let failed = || ControlError::database("record stage change");
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7352736465)")
                .execute(&mut **tx)
                .await
                .map_err(failed())?;
        }
        let row = sqlx::query(&format!(
            "INSERT INTO stage_changes (stage, previous_stage, changed_by, reason, changed_at_ms) \
             SELECT $1, $2, $3, $4, $5 WHERE COALESCE((SELECT stage FROM stage_changes \
             ORDER BY id DESC LIMIT 1), $6) = $2 RETURNING {CHANGE_COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(from.as_str())
        .bind(by)
        .bind(reason)
        .bind(Timestamp::now().millis())
        .bind(Stage::INITIAL.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(failed())?;
        row.as_ref().map(StageRecord::from_row).transpose()
    }

    /// Rolls the stage back to `to` if the stage in force is still `from` (so that two
    /// instances acting on the same evidence roll back once), audited as an automatic
    /// rollback by `policy`; `None` when the stage is no longer `from`.
    ///
    /// # Errors
    /// When `by` or `reason` is blank or the store cannot be written.
    pub async fn roll_back_stage(
        &self,
        from: Stage,
        to: Stage,
        by: &str,
        policy: &str,
        reason: &str,
    ) -> Result<Option<StageRecord>, ControlError> {
        check_change(by, reason)?;
        let failed = || ControlError::database("record rollback");
        let mut tx = self.pool.begin().await.map_err(failed())?;
        let Some(record) = self.insert_change(&mut tx, from, to, by, reason).await? else {
            return Ok(None);
        };
        let subject = transition(&record);
        audit::append(&mut tx, by, AuditAction::StageChange, &subject, reason).await?;
        audit::append(
            &mut tx,
            by,
            AuditAction::AutoRollback,
            policy,
            &format!("{subject}: {reason}"),
        )
        .await?;
        tx.commit().await.map_err(failed())?;
        Ok(Some(record))
    }

    /// The current stage and the newest `history` changes.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn stage_overview(&self, history: i64) -> Result<StageOverview, ControlError> {
        let current = self.current_stage().await?;
        Ok(StageOverview {
            stage: current.stage,
            since: current.changed_at,
            by: current.by,
            reason: current.reason,
            history: self.stage_history(history).await?,
        })
    }

    /// The newest `limit` history entries, newest first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn stage_history(&self, limit: i64) -> Result<Vec<StageRecord>, ControlError> {
        let rows = sqlx::query(&format!("{SELECT_STAGE} ORDER BY id DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("read stage history"))?;
        rows.iter().map(StageRecord::from_row).collect()
    }
}
