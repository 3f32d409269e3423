//! The promotion gate: `live` and `new-only` are refused while an alert is unresolved, while
//! copies of accepted writes to new are kept in the store (new would serve without them), or
//! while the comparator has not seen every table of its published policy clean for the
//! policy's minimum duration (a table its latest sweep could not compare is not clean).

use std::time::Duration;

use serde::Serialize;

use super::ControlStore;
use crate::error::ControlError;
use crate::stage::Side;
use crate::time::Timestamp;

/// What the comparator publishes for the gate: the tables it sweeps and how long each must
/// have been clean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromotionPolicy {
    /// Tables (old side's names) that must be clean.
    pub tables: Vec<String>,
    /// How long each must have been clean, in milliseconds.
    pub min_clean_ms: i64,
    /// Which comparator instance published it.
    pub published_by: String,
    /// When.
    pub published_at: Timestamp,
}

impl ControlStore {
    /// Publishes the gate's policy (replacing the previous one).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn publish_promotion_policy(
        &self,
        tables: &[String],
        min_clean: Duration,
        by: &str,
    ) -> Result<(), ControlError> {
        let tables = serde_json::Value::from(tables.to_vec()).to_string();
        let min_clean_ms = i64::try_from(min_clean.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO promotion_policy (id, tables, min_clean_ms, published_by, published_at_ms) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET tables = excluded.tables, \
             min_clean_ms = excluded.min_clean_ms, published_by = excluded.published_by, \
             published_at_ms = excluded.published_at_ms",
        )
        .bind(tables)
        .bind(min_clean_ms)
        .bind(by)
        .bind(Timestamp::now().millis())
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("publish promotion policy"))?;
        Ok(())
    }

    /// The published policy, if any.
    ///
    /// # Errors
    /// When the store cannot be read or holds an unreadable policy.
    pub async fn promotion_policy(&self) -> Result<Option<PromotionPolicy>, ControlError> {
        let row: Option<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT tables, min_clean_ms, published_by, published_at_ms FROM promotion_policy \
             WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("read promotion policy"))?;
        row.map(|(tables, min_clean_ms, published_by, published_at)| {
            Ok(PromotionPolicy {
                tables: serde_json::from_str(&tables).map_err(|err| ControlError::Corrupt {
                    field: "promotion_policy.tables",
                    reason: err.to_string(),
                })?,
                min_clean_ms,
                published_by,
                published_at: Timestamp(published_at),
            })
        })
        .transpose()
    }

    /// Why a promotion must be refused now; empty when it may go ahead.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn promotion_blockers(&self) -> Result<Vec<String>, ControlError> {
        let mut blockers: Vec<String> = self
            .active_alerts()
            .await?
            .iter()
            .map(|alert| {
                format!(
                    "alert {} ({} {}) is {}: {}",
                    alert.id, alert.kind, alert.subject, alert.status, alert.summary
                )
            })
            .collect();
        let kept = self.count_awaiting_replay_to(Side::New).await?;
        if kept > 0 {
            let (copies, are) = if kept == 1 {
                ("copy", "is")
            } else {
                ("copies", "are")
            };
            blockers.push(format!(
                "{kept} mirror {copies} of accepted writes to new {are} kept in the control store: \
                 new would serve those keys without them; replay them first (`tandem mirror \
                 replay`; `tandem mirror failures` lists them)"
            ));
        }
        let Some(policy) = self.promotion_policy().await? else {
            blockers.push(
                "no comparator has published the tables that must be clean (run `tandem \
                 comparator`)"
                    .to_owned(),
            );
            return Ok(blockers);
        };
        let now = Timestamp::now().millis();
        for table in &policy.tables {
            let (latest, not_compared, clean_since): (Option<i64>, Option<String>, Option<i64>) =
                sqlx::query_as(
                    "SELECT (SELECT identical FROM comparison_tables WHERE table_name = $1 \
                     ORDER BY id DESC LIMIT 1), \
                     (SELECT error FROM comparison_tables WHERE table_name = $1 \
                     ORDER BY id DESC LIMIT 1), \
                     (SELECT MIN(finished_at_ms) FROM comparison_tables WHERE table_name = $1 \
                     AND identical = 1 AND id > COALESCE((SELECT MAX(id) FROM comparison_tables \
                     WHERE table_name = $1 AND identical = 0), 0))",
                )
                .bind(table)
                .fetch_one(&self.pool)
                .await
                .map_err(ControlError::database("read clean periods"))?;
            let clean_for = clean_since.map(|since| now.saturating_sub(since));
            match (latest, not_compared, clean_for) {
                (None, _, _) => blockers.push(format!("table {table} has not been compared yet")),
                // Not compared is never clean, nor "diverged" either: say why.
                (Some(_), Some(reason), _) => blockers.push(format!(
                    "table {table} could not be compared in the latest sweep, so it is not known \
                     to be clean: {reason}"
                )),
                (Some(0), None, _) | (_, None, None) => {
                    blockers.push(format!("table {table} diverged in the latest sweep"));
                }
                (Some(_), None, Some(clean_for)) if clean_for < policy.min_clean_ms => {
                    blockers.push(format!(
                        "table {table} has been clean for {} of the required {}",
                        human_millis(clean_for),
                        human_millis(policy.min_clean_ms)
                    ));
                }
                _ => {}
            }
        }
        Ok(blockers)
    }
}

fn human_millis(millis: i64) -> String {
    let duration = Duration::from_secs(u64::try_from(millis / 1000).unwrap_or(0));
    humantime::format_duration(duration).to_string()
}
