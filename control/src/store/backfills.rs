//! Backfill checkpoints: each table's key range planned once as chunks, claimed with leases
//! (taken over when an instance dies, or at once by the same instance rerun), and marked done
//! with its counts once copied and verified, so that a rerun resumes after the last done chunk.

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{column, stale_before, Backend, ControlStore};
use crate::error::ControlError;
use crate::time::Timestamp;

/// A planned key range of a backfill: after `after` through `through` (opaque to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBackfillChunk {
    /// The key the range starts after; `None` from the first key.
    pub after: Option<String>,
    /// The range's last key; `None` to the last key.
    pub through: Option<String>,
}

/// A chunk a backfill worker claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillChunk {
    /// Its id.
    pub id: i64,
    /// Its place in key order within the table.
    pub seq: i64,
    /// The key the range starts after; `None` from the first key.
    pub after: Option<String>,
    /// The range's last key; `None` to the last key.
    pub through: Option<String>,
    /// Which claim this is (1 for the first); completing must name the claim it holds.
    pub attempt: i64,
}

/// What copying and verifying one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BackfillCounts {
    /// Old-side rows in the range.
    pub rows_old: i64,
    /// Rows inserted on the new side.
    pub copied: i64,
    /// Rows found already equal on the new side (by the chunk's first comparison, before it
    /// wrote anything) and not written.
    pub skipped: i64,
    /// Rows updated or deleted on the new side after verification.
    pub repaired: i64,
    /// Conditional writes that found the new side changed meanwhile (left to the mirror).
    pub conflicts: i64,
    /// Rows still different after the last verification.
    pub unconverged: i64,
}

/// How far one table's backfill is, with the done chunks' counts summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackfillProgress {
    /// Chunks planned.
    pub chunks: i64,
    /// Chunks done.
    pub done: i64,
    /// The done chunks' counts.
    pub counts: BackfillCounts,
}

/// Where one table's backfill stands, as `tandem backfill status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackfillTableStatus {
    /// The job: both sources (without passwords) and the table pair.
    pub job: String,
    /// The old side's table.
    pub table: String,
    /// The new side's table.
    pub new_table: String,
    /// Chunks planned.
    pub chunks: i64,
    /// Chunks done.
    pub done: i64,
    /// Chunks not done yet (pending or held).
    pub left: i64,
    /// The done chunks' counts.
    pub counts: BackfillCounts,
    /// When the chunks were planned (unknown for plans older than this column).
    pub started: Option<Timestamp>,
    /// When the last chunk was done.
    pub last_progress: Option<Timestamp>,
    /// The chunks claimed and not done: who holds each.
    pub claims: Vec<BackfillClaim>,
}

/// A chunk an instance holds (its lease may have run out if the instance died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackfillClaim {
    /// The chunk's place in key order within the table.
    pub seq: i64,
    /// The instance holding it.
    pub instance: String,
    /// When it was claimed, or its claim last renewed (its holder running).
    pub claimed_at: Timestamp,
}

impl BackfillChunk {
    fn from_row(row: &AnyRow) -> Result<BackfillChunk, ControlError> {
        Ok(BackfillChunk {
            id: column(row, "id")?,
            seq: column(row, "seq")?,
            after: column(row, "range_after")?,
            through: column(row, "range_through")?,
            attempt: column(row, "attempts")?,
        })
    }
}

impl ControlStore {
    /// Whether `job` has planned chunks.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn backfill_planned(&self, job: &str) -> Result<bool, ControlError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backfill_chunks WHERE job = $1")
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .map_err(ControlError::database("read backfill plan"))?;
        Ok(count > 0)
    }

    /// Records the chunks of `job` (one table pair), in key order, in one transaction, unless
    /// another instance's plan of it is there: planning is atomic, so instances planning the
    /// same table at once end with one plan, whole, and every one of them copies its chunks.
    /// With `replacing` (a restart), plans made before that time are deleted first; one made
    /// since (another instance's restart begun meanwhile) is kept. True when this plan was
    /// recorded, false when another was found and kept.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn plan_backfill(
        &self,
        job: &str,
        (table, new_table): (&str, &str),
        chunks: &[NewBackfillChunk],
        replacing: Option<Timestamp>,
    ) -> Result<bool, ControlError> {
        let failed = || ControlError::database("plan backfill");
        let planned_at = Timestamp::now().millis();
        // The first statement writes: SQLite takes its write lock at once (waiting for another
        // planner's commit) instead of failing to upgrade a read snapshot taken before it.
        let mut tx = self.pool.begin().await.map_err(failed())?;
        if let Some(before) = replacing {
            sqlx::query(
                "DELETE FROM backfill_chunks WHERE job = $1 \
                 AND (planned_at_ms IS NULL OR planned_at_ms < $2)",
            )
            .bind(job)
            .bind(before.millis())
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        }
        for (seq, chunk) in chunks.iter().enumerate() {
            let inserted = sqlx::query(
                "INSERT INTO backfill_chunks (job, table_name, new_table_name, seq, range_after, \
                 range_through, status, planned_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
            )
            .bind(job)
            .bind(table)
            .bind(new_table)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(chunk.after.as_deref())
            .bind(chunk.through.as_deref())
            .bind(planned_at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // Another instance's plan committed first (`UNIQUE (job, seq)`; PostgreSQL
                // waits for its transaction): this one is rolled back whole, that one kept.
                Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                    tx.rollback().await.map_err(failed())?;
                    return Ok(false);
                }
                Err(err) => return Err(failed()(err)),
            }
        }
        tx.commit().await.map_err(failed())?;
        Ok(true)
    }

    /// Gives back the chunks of `job` that a killed predecessor of `owner` (a
    /// [`crate::claim_owner`]) held: a rerun under the same instance name on the same host
    /// takes them again at once rather than after their lease. A namesake still running keeps
    /// its claims ([`crate::left_by_a_dead_namesake`]).
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn release_backfill_claims(
        &self,
        job: &str,
        owner: &str,
    ) -> Result<(), ControlError> {
        let failed = || ControlError::database("release backfill claims");
        let owners = sqlx::query(
            "SELECT DISTINCT owner FROM backfill_chunks \
             WHERE job = $1 AND status = 'claimed' AND owner IS NOT NULL",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(failed())?;
        for row in &owners {
            let held: String = column(row, "owner")?;
            if !crate::left_by_a_dead_namesake(&held, owner) {
                continue;
            }
            sqlx::query(
                "UPDATE backfill_chunks SET status = 'pending', owner = NULL, claimed_at_ms = NULL \
                 WHERE job = $1 AND owner = $2 AND status = 'claimed'",
            )
            .bind(job)
            .bind(&held)
            .execute(&self.pool)
            .await
            .map_err(failed())?;
        }
        Ok(())
    }

    /// Restarts the lease of every chunk of `job` that `owner` holds, as a live instance does
    /// every third of its lease: a chunk is taken over only from an instance that stopped
    /// renewing (dead, or cut off from the store for a whole lease), however long it holds
    /// it (a group compared as one range, chunks claimed ahead). How many were renewed.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn renew_backfill_claims(&self, job: &str, owner: &str) -> Result<u64, ControlError> {
        let renewed = sqlx::query(
            "UPDATE backfill_chunks SET claimed_at_ms = $1 \
             WHERE job = $2 AND owner = $3 AND status = 'claimed'",
        )
        .bind(Timestamp::now().millis())
        .bind(job)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("renew backfill claims"))?;
        Ok(renewed.rows_affected())
    }

    /// Claims the next chunk of `job` for `owner`: one nobody holds, or one whose claim is
    /// older than `lease` (its instance died) and held by another instance: `owner`'s own
    /// claims are its live workers', never claimed twice. `None` when none is left to claim.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_backfill_chunk(
        &self,
        job: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<BackfillChunk>, ControlError> {
        let mut claimed = claim_chunks(&self.pool, self.backend, (job, owner), (lease, 1)).await?;
        Ok(claimed.pop())
    }

    /// Gives back one claimed chunk not begun on (the backfill was stopped), unless its claim
    /// was lost meanwhile.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn release_backfill_chunk(&self, chunk: &BackfillChunk) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE backfill_chunks SET status = 'pending', owner = NULL, claimed_at_ms = NULL \
             WHERE id = $1 AND status = 'claimed' AND attempts = $2",
        )
        .bind(chunk.id)
        .bind(chunk.attempt)
        .execute(&self.pool)
        .await
        .map_err(ControlError::database("release backfill chunk"))?;
        Ok(())
    }

    /// Marks each of `done` done with its counts and claims the next `claim` chunks of `job`
    /// (in key order) for `owner`, as [`ControlStore::claim_backfill_chunk`] claims one and a
    /// completion marks one (only if the claim it names still holds), in one transaction: a
    /// worker going on to its next chunks waits for one commit (one flush of SQLite's log,
    /// where it waits for one) however many chunks it checkpoints and claims, a group of chunks
    /// verified together included. Whether each of `done` was recorded, and the chunks claimed (fewer when fewer
    /// are left to claim).
    ///
    /// # Errors
    /// When the store cannot be written (nothing was then recorded or claimed).
    pub async fn complete_and_claim_backfill_chunks(
        &self,
        done: &[(&BackfillChunk, &BackfillCounts)],
        (job, owner): (&str, &str),
        (lease, claim): (Duration, usize),
    ) -> Result<(Vec<bool>, Vec<BackfillChunk>), ControlError> {
        let failed = || ControlError::database("record backfill chunk");
        // Redone when lost (the chunks are compared again). The first statement writes: SQLite
        // takes its write lock at once.
        let mut tx = self.begin_redoable("record backfill chunk").await?;
        let mut recorded = Vec::with_capacity(done.len());
        for (chunk, counts) in done {
            recorded.push(complete_chunk(&mut *tx, chunk, counts).await?);
        }
        let next = if claim == 0 {
            Vec::new()
        } else {
            claim_chunks(&mut *tx, self.backend, (job, owner), (lease, claim)).await?
        };
        tx.commit().await.map_err(failed())?;
        Ok((recorded, next))
    }

    /// Claims the next `count` chunks of `job` for `owner`, in key order, as
    /// [`ControlStore::claim_backfill_chunk`] claims one, in one statement. Empty when none is
    /// left to claim.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_backfill_chunks(
        &self,
        job: &str,
        owner: &str,
        (lease, count): (Duration, usize),
    ) -> Result<Vec<BackfillChunk>, ControlError> {
        claim_chunks(&self.pool, self.backend, (job, owner), (lease, count)).await
    }

    /// How far `job` is.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn backfill_progress(&self, job: &str) -> Result<BackfillProgress, ControlError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS chunks, \
             CAST(COALESCE(SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done, \
             CAST(COALESCE(SUM(rows_old), 0) AS BIGINT) AS rows_old, CAST(COALESCE(SUM(copied), 0) AS BIGINT) AS copied, \
             CAST(COALESCE(SUM(skipped), 0) AS BIGINT) AS skipped, \
             CAST(COALESCE(SUM(repaired), 0) AS BIGINT) AS repaired, CAST(COALESCE(SUM(conflicts), 0) AS BIGINT) AS conflicts, \
             CAST(COALESCE(SUM(unconverged), 0) AS BIGINT) AS unconverged \
             FROM backfill_chunks WHERE job = $1",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await
        .map_err(ControlError::database("read backfill progress"))?;
        Ok(BackfillProgress {
            chunks: column(&row, "chunks")?,
            done: column(&row, "done")?,
            counts: BackfillCounts {
                rows_old: column(&row, "rows_old")?,
                copied: column(&row, "copied")?,
                skipped: column(&row, "skipped")?,
                repaired: column(&row, "repaired")?,
                conflicts: column(&row, "conflicts")?,
                unconverged: column(&row, "unconverged")?,
            },
        })
    }

    /// Every table's backfill recorded in the store, by job, with the chunks held now.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn backfill_status(&self) -> Result<Vec<BackfillTableStatus>, ControlError> {
        let failed = || ControlError::database("read backfill status");
        let rows = sqlx::query(
            "SELECT job, MIN(table_name) AS table_name, MIN(new_table_name) AS new_table_name, \
             COUNT(*) AS chunks, \
             CAST(COALESCE(SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done, \
             CAST(COALESCE(SUM(rows_old), 0) AS BIGINT) AS rows_old, CAST(COALESCE(SUM(copied), 0) AS BIGINT) AS copied, \
             CAST(COALESCE(SUM(skipped), 0) AS BIGINT) AS skipped, \
             CAST(COALESCE(SUM(repaired), 0) AS BIGINT) AS repaired, CAST(COALESCE(SUM(conflicts), 0) AS BIGINT) AS conflicts, \
             CAST(COALESCE(SUM(unconverged), 0) AS BIGINT) AS unconverged, \
             MIN(planned_at_ms) AS planned_at_ms, MAX(finished_at_ms) AS finished_at_ms \
             FROM backfill_chunks GROUP BY job ORDER BY job",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(failed())?;
        let claims = sqlx::query(
            "SELECT job, seq, owner, claimed_at_ms FROM backfill_chunks \
             WHERE status = 'claimed' ORDER BY job, seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(failed())?;
        let mut tables = Vec::with_capacity(rows.len());
        for row in &rows {
            let job: String = column(row, "job")?;
            let mut held = Vec::new();
            for claim in &claims {
                if column::<String>(claim, "job")? == job {
                    held.push(BackfillClaim {
                        seq: column(claim, "seq")?,
                        instance: crate::owner_name(
                            &column::<Option<String>>(claim, "owner")?.unwrap_or_default(),
                        )
                        .to_owned(),
                        claimed_at: Timestamp(
                            column::<Option<i64>>(claim, "claimed_at_ms")?.unwrap_or(0),
                        ),
                    });
                }
            }
            let (chunks, done): (i64, i64) = (column(row, "chunks")?, column(row, "done")?);
            tables.push(BackfillTableStatus {
                table: column(row, "table_name")?,
                new_table: column(row, "new_table_name")?,
                chunks,
                done,
                left: chunks - done,
                counts: BackfillCounts {
                    rows_old: column(row, "rows_old")?,
                    copied: column(row, "copied")?,
                    skipped: column(row, "skipped")?,
                    repaired: column(row, "repaired")?,
                    conflicts: column(row, "conflicts")?,
                    unconverged: column(row, "unconverged")?,
                },
                started: column::<Option<i64>>(row, "planned_at_ms")?.map(Timestamp),
                last_progress: column::<Option<i64>>(row, "finished_at_ms")?.map(Timestamp),
                claims: held,
                job,
            });
        }
        Ok(tables)
    }
}

/// Claims the next `count` chunks of `job` for `owner`, in key order (see
/// [`ControlStore::claim_backfill_chunk`]).
async fn claim_chunks<'c, E>(
    executor: E,
    backend: Backend,
    (job, owner): (&str, &str),
    (lease, count): (Duration, usize),
) -> Result<Vec<BackfillChunk>, ControlError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    // PostgreSQL: concurrent claimers skip each other's locked rows instead of waiting.
    // SQLite serialises writers, so the statement is atomic as it is.
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let rows = sqlx::query(&format!(
        "UPDATE backfill_chunks SET status = 'claimed', owner = $1, claimed_at_ms = $2, \
         attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM backfill_chunks WHERE job = $3 \
         AND (status = 'pending' OR (status = 'claimed' AND claimed_at_ms < $4 \
         AND (owner IS NULL OR owner <> $1))) \
         ORDER BY seq LIMIT $5{lock}) \
         RETURNING id, seq, range_after, range_through, attempts"
    ))
    .bind(owner)
    .bind(Timestamp::now().millis())
    .bind(job)
    .bind(stale_before(lease))
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .fetch_all(executor)
    .await
    .map_err(ControlError::database("claim backfill chunk"))?;
    let mut chunks = rows
        .iter()
        .map(BackfillChunk::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING keeps no order.
    chunks.sort_by_key(|chunk| chunk.seq);
    Ok(chunks)
}

/// Marks a claimed chunk done with its counts; false (nothing recorded) when the claim was
/// lost to another instance.
async fn complete_chunk<'c, E>(
    executor: E,
    chunk: &BackfillChunk,
    counts: &BackfillCounts,
) -> Result<bool, ControlError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let updated = sqlx::query(
        "UPDATE backfill_chunks SET status = 'done', rows_old = $1, copied = $2, \
         repaired = $3, conflicts = $4, unconverged = $5, skipped = $6, finished_at_ms = $7 \
         WHERE id = $8 AND status = 'claimed' AND attempts = $9",
    )
    .bind(counts.rows_old)
    .bind(counts.copied)
    .bind(counts.repaired)
    .bind(counts.conflicts)
    .bind(counts.unconverged)
    .bind(counts.skipped)
    .bind(Timestamp::now().millis())
    .bind(chunk.id)
    .bind(chunk.attempt)
    .execute(executor)
    .await
    .map_err(ControlError::database("record backfill chunk"))?;
    Ok(updated.rows_affected() == 1)
}
