//! Mirror copies that could not be delivered, kept with their bodies until replayed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;

use super::audit::{self, AuditAction};
use super::{column, stale_before, text_column, AlertCondition, ControlStore};
use crate::error::ControlError;
use crate::stage::{Side, UnknownName};
use crate::time::Timestamp;

/// Where a persisted mirror copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStatus {
    /// Not delivered yet; `tandem mirror replay` will send it.
    Pending,
    /// Claimed by a replay in progress (reclaimed when that replay died).
    Replaying,
    /// Delivered by a replay.
    Replayed,
    /// Never mirrored and cannot be replayed (e.g. its body was over the size limit).
    NotMirrored,
    /// Skipped by a person (`tandem pg-replay --skip`), audited and alerted: the comparator
    /// and repair settle what it left.
    Skipped,
}

impl FailureStatus {
    /// The name stored in the control store.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStatus::Pending => "pending",
            FailureStatus::Replaying => "replaying",
            FailureStatus::Replayed => "replayed",
            FailureStatus::NotMirrored => "not_mirrored",
            FailureStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for FailureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FailureStatus::Pending,
            FailureStatus::Replaying,
            FailureStatus::Replayed,
            FailureStatus::NotMirrored,
            FailureStatus::Skipped,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| {
            UnknownName::new(
                "mirror failure status",
                s,
                "pending, replaying, replayed, not_mirrored, skipped",
            )
        })
    }
}

/// A mirror copy to persist because it could not be (or must not be) delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMirrorFailure {
    /// The `X-Tandem-Request-Id` of the client request.
    pub request_id: String,
    /// The side the copy was meant for.
    pub target: Side,
    /// HTTP method.
    pub method: String,
    /// Path and query, as sent upstream.
    pub uri: String,
    /// End-to-end request headers as an HTTP/1 header block (`name: value\r\n`…).
    pub headers: Vec<u8>,
    /// The request body; `None` when it was not kept (then the copy cannot be replayed).
    pub body: Option<Vec<u8>>,
    /// The resource key that orders writes (copies of one key are replayed in order).
    pub ordering_key: String,
    /// Why the copy was persisted (`upstream_error`, `queue_full`, `shutdown`, `body_too_large`, …).
    pub reason: String,
    /// The last delivery error, if any.
    pub last_error: String,
    /// Delivery attempts made so far.
    pub attempts: i64,
    /// `Pending` for copies to replay, `NotMirrored` for copies that cannot be.
    pub status: FailureStatus,
    /// When the authoritative side accepted the write.
    pub accepted_at: Timestamp,
    /// The accepting process's sequence number, ordering writes accepted in the same millisecond.
    pub accepted_seq: i64,
    /// Whether the proxy keeping it holds requests to its key while it is kept, once its
    /// target is the authoritative side (the cutover hold, with a local journal): it may then
    /// be replayed into that side.
    pub cutover_hold: bool,
}

/// A persisted mirror copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorFailure {
    /// Position in the store; replay goes in this order.
    pub id: i64,
    /// The `X-Tandem-Request-Id` of the client request.
    pub request_id: String,
    /// The side the copy is meant for.
    pub target: Side,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// End-to-end request headers as an HTTP/1 header block.
    #[serde(skip)]
    pub headers: Vec<u8>,
    /// The request body, when kept.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
    /// Size of the kept body in bytes.
    pub body_bytes: usize,
    /// The resource key that orders writes.
    pub ordering_key: String,
    /// Why it was persisted.
    pub reason: String,
    /// The last delivery error.
    pub last_error: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Where it stands.
    pub status: FailureStatus,
    /// When the authoritative side accepted the write.
    pub accepted_at: Timestamp,
    /// Tie-breaker for writes accepted in the same millisecond.
    pub accepted_seq: i64,
    /// Whether its proxy holds its key while it is kept ([`NewMirrorFailure::cutover_hold`]).
    pub cutover_hold: bool,
    /// When it was first persisted.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl MirrorFailure {
    fn from_row(row: &AnyRow) -> Result<MirrorFailure, ControlError> {
        let body: Option<Vec<u8>> = column(row, "body")?;
        Ok(MirrorFailure {
            id: column(row, "id")?,
            request_id: column(row, "request_id")?,
            target: text_column("target_side", &column::<String>(row, "target_side")?)?,
            method: column(row, "method")?,
            uri: column(row, "uri")?,
            headers: column(row, "headers")?,
            body_bytes: body.as_ref().map_or(0, Vec::len),
            body,
            ordering_key: column(row, "ordering_key")?,
            reason: column(row, "reason")?,
            last_error: column(row, "last_error")?,
            attempts: column(row, "attempts")?,
            status: text_column("status", &column::<String>(row, "status")?)?,
            accepted_at: Timestamp(column(row, "accepted_at_ms")?),
            accepted_seq: column(row, "accepted_seq")?,
            cutover_hold: column::<i64>(row, "cutover_hold")? != 0,
            created_at: Timestamp(column(row, "created_at_ms")?),
            updated_at: Timestamp(column(row, "updated_at_ms")?),
        })
    }
}

/// What a kept copy is: an HTTP request, or a PostgreSQL transaction (method `SQL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// An HTTP request, replayed by `tandem mirror replay`.
    Http,
    /// A PostgreSQL transaction, replayed by `tandem pg-replay`.
    Sql,
}

/// The ordering key of PostgreSQL transactions: they are replayed in one sequence, the
/// order the authoritative side committed them in.
pub const SQL_ORDERING_KEY: &str = "postgres:transactions";

const SELECT_FAILURE: &str = "SELECT id, request_id, target_side, method, uri, headers, body, \
     ordering_key, reason, last_error, attempts, status, accepted_at_ms, accepted_seq, \
     cutover_hold, created_at_ms, updated_at_ms FROM mirror_failures";

/// [`SELECT_FAILURE`] with an expired claim (taken before `$1`) read as pending.
const SELECT_CANDIDATE: &str = "SELECT id, request_id, target_side, method, uri, headers, body, \
     ordering_key, reason, last_error, attempts, \
     CASE WHEN status = 'replaying' AND updated_at_ms < $1 THEN 'pending' ELSE status END \
     AS status, accepted_at_ms, accepted_seq, cutover_hold, created_at_ms, updated_at_ms \
     FROM mirror_failures";

/// Replay order: the order in which the authoritative side accepted the writes.
const REPLAY_ORDER: &str = "ORDER BY accepted_at_ms, accepted_seq, id";

impl ControlStore {
    /// Persists a mirror copy and returns its id.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn insert_mirror_failure(
        &self,
        failure: &NewMirrorFailure,
    ) -> Result<i64, ControlError> {
        let now = Timestamp::now().millis();
        sqlx::query_scalar(
            "INSERT INTO mirror_failures (request_id, target_side, method, uri, headers, body, \
             ordering_key, reason, last_error, attempts, status, accepted_at_ms, accepted_seq, \
             created_at_ms, updated_at_ms, cutover_hold) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING id",
        )
        .bind(&failure.request_id)
        .bind(failure.target.as_str())
        .bind(&failure.method)
        .bind(&failure.uri)
        .bind(&failure.headers)
        .bind(&failure.body)
        .bind(&failure.ordering_key)
        .bind(&failure.reason)
        .bind(&failure.last_error)
        .bind(failure.attempts)
        .bind(failure.status.as_str())
        .bind(failure.accepted_at.millis())
        .bind(failure.accepted_seq)
        .bind(now)
        .bind(now)
        .bind(i64::from(failure.cutover_hold))
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("persist mirror failure"))
    }

    /// Keeps the record of a write that was not mirrored, once: a record shipped again (a
    /// proxy's gap log after a crash) finds its twin (same request id, status and acceptance)
    /// and changes nothing. Returns whether it was new.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn record_not_mirrored(
        &self,
        failure: &NewMirrorFailure,
    ) -> Result<bool, ControlError> {
        let now = Timestamp::now().millis();
        let inserted = sqlx::query(
            "INSERT INTO mirror_failures (request_id, target_side, method, uri, headers, \
             ordering_key, reason, last_error, attempts, status, accepted_at_ms, accepted_seq, \
             created_at_ms, updated_at_ms) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
             WHERE NOT EXISTS (SELECT 1 FROM mirror_failures WHERE request_id = $1 \
             AND status = $10 AND accepted_at_ms = $11 AND accepted_seq = $12)",
        )
        .bind(&failure.request_id)
        .bind(failure.target.as_str())
        .bind(&failure.method)
        .bind(&failure.uri)
        .bind(&failure.headers)
        .bind(&failure.ordering_key)
        .bind(&failure.reason)
        .bind(&failure.last_error)
        .bind(failure.attempts)
        .bind(FailureStatus::NotMirrored.as_str())
        .bind(failure.accepted_at.millis())
        .bind(failure.accepted_seq)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("record a write not mirrored"))?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Persisted copies in replay order: all of them, or only those with `status`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn mirror_failures(
        &self,
        status: Option<FailureStatus>,
    ) -> Result<Vec<MirrorFailure>, ControlError> {
        let sql = format!("{SELECT_FAILURE} WHERE $1 = '' OR status = $1 {REPLAY_ORDER}");
        let rows = sqlx::query(&sql)
            .bind(status.map_or("", FailureStatus::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("list mirror failures"))?;
        rows.iter().map(MirrorFailure::from_row).collect()
    }

    /// How many copies are not delivered yet (pending, or claimed by a replay in progress).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn count_awaiting_replay(&self) -> Result<i64, ControlError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM mirror_failures WHERE status IN ('pending', 'replaying')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("count mirror failures"))
    }

    /// How many copies to `target` are not delivered yet (pending, or claimed by a replay in
    /// progress).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn count_awaiting_replay_to(&self, target: Side) -> Result<i64, ControlError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM mirror_failures WHERE status IN ('pending', 'replaying') \
             AND target_side = $1",
        )
        .bind(target.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("count mirror failures"))
    }

    /// Copies not delivered yet (pending, or claimed by a replay in progress), in replay order.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn awaiting_replay(&self) -> Result<Vec<MirrorFailure>, ControlError> {
        let sql =
            format!("{SELECT_FAILURE} WHERE status IN ('pending', 'replaying') {REPLAY_ORDER}");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("list mirror failures"))?;
        rows.iter().map(MirrorFailure::from_row).collect()
    }

    /// One persisted copy by id.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn mirror_failure(&self, id: i64) -> Result<Option<MirrorFailure>, ControlError> {
        let row = sqlx::query(&format!("{SELECT_FAILURE} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ControlError::database("read mirror failure"))?;
        row.as_ref().map(MirrorFailure::from_row).transpose()
    }

    /// Whether any copy for `target` with this ordering key still awaits replay.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn has_pending_failure(
        &self,
        target: Side,
        ordering_key: &str,
    ) -> Result<bool, ControlError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM mirror_failures \
             WHERE status IN ('pending', 'replaying') AND target_side = $1 AND ordering_key = $2 \
             LIMIT 1",
        )
        .bind(target.as_str())
        .bind(ordering_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(ControlError::database("look up pending mirror failures"))?;
        Ok(found.is_some())
    }

    /// The (side, ordering key) pairs that have copies awaiting replay.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn pending_ordering_keys(&self) -> Result<Vec<(Side, String)>, ControlError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT target_side, ordering_key FROM mirror_failures \
             WHERE status IN ('pending', 'replaying')",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ControlError::database("list pending ordering keys"))?;
        rows.into_iter()
            .map(|(side, key)| Ok((text_column("target_side", &side)?, key)))
            .collect()
    }

    /// Copies of `kind` awaiting replay, in replay order, as a replay sees them: a claim
    /// taken longer than `lease` ago (its replay died) reads as `Pending`, one still live as
    /// `Replaying`. Live claims are listed so that a replay holds their key back instead of
    /// sending later copies of it ahead of the claimed one.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn replay_candidates(
        &self,
        lease: Duration,
        kind: CopyKind,
    ) -> Result<Vec<MirrorFailure>, ControlError> {
        let sql = format!(
            "{SELECT_CANDIDATE} WHERE status IN ('pending', 'replaying') \
             AND (method = 'SQL') = $2 {REPLAY_ORDER}"
        );
        let rows = sqlx::query(&sql)
            .bind(stale_before(lease))
            .bind(kind == CopyKind::Sql)
            .fetch_all(&self.pool)
            .await
            .map_err(ControlError::database("list replay candidates"))?;
        rows.iter().map(MirrorFailure::from_row).collect()
    }

    /// Claims a copy for one replay; false when another replay holds it.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_mirror_failure(
        &self,
        id: i64,
        lease: Duration,
    ) -> Result<bool, ControlError> {
        let claimed = sqlx::query(
            "UPDATE mirror_failures SET status = 'replaying', updated_at_ms = $1 \
             WHERE id = $2 AND (status = 'pending' OR (status = 'replaying' AND updated_at_ms < $3))",
        )
        .bind(Timestamp::now().millis())
        .bind(id)
        .bind(stale_before(lease))
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("claim mirror failure"))?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Marks a copy as delivered by a replay.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn mark_mirror_failure_replayed(&self, id: i64) -> Result<(), ControlError> {
        self.update_failure(id, FailureStatus::Replayed, None).await
    }

    /// Skips a kept copy that is not delivered yet (pending or claimed), so the ones behind
    /// it can go: in one transaction with its audit entry, then raises an alert naming it.
    /// Returns the copy, or `None` when there is no such copy awaiting replay.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn skip_mirror_failure(
        &self,
        id: i64,
        by: &str,
        reason: &str,
    ) -> Result<Option<MirrorFailure>, ControlError> {
        let failed = || ControlError::database("skip mirror failure");
        let Some(failure) = self.mirror_failure(id).await? else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await.map_err(failed())?;
        let skipped = sqlx::query(
            "UPDATE mirror_failures SET status = 'skipped', updated_at_ms = $1 \
             WHERE id = $2 AND status IN ('pending', 'replaying')",
        )
        .bind(Timestamp::now().millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        if skipped.rows_affected() != 1 {
            return Ok(None);
        }
        let subject = format!("mirror failure #{id}");
        audit::append(&mut tx, by, AuditAction::MirrorSkipped, &subject, reason).await?;
        tx.commit().await.map_err(failed())?;
        let condition = AlertCondition {
            source: "pg-replay".to_owned(),
            subject,
            kind: "skipped_transaction".to_owned(),
            severity: "critical".to_owned(),
            summary: format!(
                "transaction #{id} ({}) was skipped on the {} side by {by}: {reason}; \
                 compare and repair the tables it wrote",
                failure.uri, failure.target
            ),
            measured: 1,
            examples: vec![failure.uri.clone(), failure.last_error.clone()],
        };
        self.raise_alert(&condition).await?;
        Ok(Some(failure))
    }

    /// Records another failed delivery attempt; the copy is pending again.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn record_replay_failure(&self, id: i64, error: &str) -> Result<(), ControlError> {
        self.update_failure(id, FailureStatus::Pending, Some(error))
            .await
    }

    async fn update_failure(
        &self,
        id: i64,
        status: FailureStatus,
        error: Option<&str>,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE mirror_failures SET status = $1, attempts = attempts + 1, \
             last_error = COALESCE($2, last_error), updated_at_ms = $3 WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(Timestamp::now().millis())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("update mirror failure"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_stored_name() {
        // A row a killed replay left `replaying` must stay readable by every listing.
        for status in [
            FailureStatus::Pending,
            FailureStatus::Replaying,
            FailureStatus::Replayed,
            FailureStatus::NotMirrored,
            FailureStatus::Skipped,
        ] {
            assert_eq!(status.as_str().parse::<FailureStatus>().ok(), Some(status));
        }
        assert!("lost".parse::<FailureStatus>().is_err());
    }

    #[tokio::test]
    async fn a_not_mirrored_record_shipped_twice_is_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = ControlStore::open(&url).await.unwrap();
        let mut gap = copy("/orders/1", 3);
        gap.status = FailureStatus::NotMirrored;
        gap.body = None;
        gap.reason = "journal_full".to_owned();
        assert!(store.record_not_mirrored(&gap).await.unwrap());
        assert!(!store.record_not_mirrored(&gap).await.unwrap(), "a twin");
        // Another write with the same client request id is another gap.
        gap.accepted_seq = 4;
        assert!(store.record_not_mirrored(&gap).await.unwrap());
        let kept = store
            .mirror_failures(Some(FailureStatus::NotMirrored))
            .await
            .unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].body, None);
        assert_eq!(kept[0].reason, "journal_full");
    }

    fn copy(key: &str, seq: i64) -> NewMirrorFailure {
        NewMirrorFailure {
            request_id: format!("req-{seq}"),
            target: Side::New,
            method: "PUT".to_owned(),
            uri: key.to_owned(),
            headers: Vec::new(),
            body: Some(b"{}".to_vec()),
            ordering_key: key.to_owned(),
            reason: "upstream_error".to_owned(),
            last_error: "status 500".to_owned(),
            attempts: 1,
            status: FailureStatus::Pending,
            accepted_at: Timestamp(1_000),
            accepted_seq: seq,
            cutover_hold: false,
        }
    }

    /// A claim left by a killed replay is listed (so its key is held) until its lease runs
    /// out; then it reads as pending and another replay takes it over.
    async fn claims_block_until_they_expire(store: &ControlStore) {
        let claimed = store.insert_mirror_failure(&copy("/a", 1)).await.unwrap();
        let behind = store.insert_mirror_failure(&copy("/a", 2)).await.unwrap();
        let lease = Duration::from_secs(60);
        assert!(store.claim_mirror_failure(claimed, lease).await.unwrap());
        let statuses = |candidates: Vec<MirrorFailure>| -> Vec<(i64, FailureStatus)> {
            candidates.iter().map(|f| (f.id, f.status)).collect()
        };
        let live = store
            .replay_candidates(lease, CopyKind::Http)
            .await
            .unwrap();
        assert_eq!(
            statuses(live),
            [
                (claimed, FailureStatus::Replaying),
                (behind, FailureStatus::Pending)
            ]
        );
        assert!(!store.claim_mirror_failure(claimed, lease).await.unwrap());
        assert!(store
            .replay_candidates(lease, CopyKind::Sql)
            .await
            .unwrap()
            .is_empty());

        tokio::time::sleep(Duration::from_millis(20)).await;
        let short = Duration::from_millis(10);
        let expired = store
            .replay_candidates(short, CopyKind::Http)
            .await
            .unwrap();
        assert_eq!(
            statuses(expired),
            [
                (claimed, FailureStatus::Pending),
                (behind, FailureStatus::Pending)
            ]
        );
        assert!(store.claim_mirror_failure(claimed, short).await.unwrap());
        let listed = store.mirror_failures(None).await.unwrap();
        assert_eq!(
            listed[0].status,
            FailureStatus::Replaying,
            "stored as it is"
        );
    }

    #[tokio::test]
    async fn sqlite_claims_block_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        claims_block_until_they_expire(&ControlStore::open(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres_claims_block_until_they_expire() {
        let db = tandem_testkit::PostgresDb::create("tandem_claims").await;
        let store = ControlStore::open(&db.url).await.unwrap();
        claims_block_until_they_expire(&store).await;
        store.close().await;
    }
}
