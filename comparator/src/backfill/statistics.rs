//! Planner statistics of the new side's table, gathered when it has none.
//!
//! A table filled by `COPY` (a backfill's bulk path, a restore, another tool's load) has no
//! statistics until autovacuum gets to it, which on a busy server can take minutes. Without
//! them PostgreSQL's planner guesses a fixed fraction of the table for a key range, and reads
//! a chunk's range (`key > a AND key <= b ORDER BY key LIMIT n`) by a bitmap scan of the
//! key's index and a sort of the rows, instead of walking the index in key order: a rerun over
//! a just migrated table of 10,000,000 rows spent 3-7 s more of the server's CPU than
//! `compare`, whose reads have no upper bound and keep the index scan (docs/benchmarks.md).

use crate::canonical::Wire;
use crate::database::{BindValue, Database, Engine};
use crate::kinds::WireShape;

/// Runs `ANALYZE` on `table` of `new` when it is a PostgreSQL table without planner
/// statistics: never analyzed nor vacuumed (`pg_class.reltuples` below zero, or no page
/// counted), or vacuumed but without column statistics (no row in `pg_stats`, as after an
/// autovacuum's vacuum part, or an analysis of the table while it was empty), so that the
/// chunks' reads are planned from its statistics. `ANALYZE` reads a sample of the table and takes a
/// lock that ordinary reads and writes do not wait for (`SHARE UPDATE EXCLUSIVE`), so it is
/// safe beside live dual-write. It only helps: a failure (a role that may not analyze the
/// table is skipped by the server with a warning) is logged and the backfill goes on.
/// Whether it ran.
pub(super) async fn analyze_if_never_analyzed(new: &Database, table: &str) -> bool {
    if new.engine != Engine::Postgres {
        return false;
    }
    let quoted = new.quote(table);
    let never = new
        .rows(
            "SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1) AND (c.reltuples < 0 OR c.relpages = 0 \
             OR NOT EXISTS (SELECT 1 FROM pg_stats s \
             WHERE s.schemaname = n.nspname AND s.tablename = c.relname))",
            &[BindValue::Text(quoted.clone())],
            &[WireShape::Int],
        )
        .await;
    match never.as_deref() {
        Ok([row]) if matches!(row.first(), Some(Wire::Int(1))) => {}
        Ok(_) => return false,
        Err(err) => {
            tracing::warn!(%table, %err, "could not read whether the new side's table has planner statistics");
            return false;
        }
    }
    match new
        .execute_in_transaction(&[(format!("ANALYZE {quoted}"), Vec::new())])
        .await
    {
        Ok(()) => {
            tracing::info!(%table, "gathered the new side's planner statistics of the table (it had none)");
            true
        }
        Err(err) => {
            tracing::warn!(%table, %err, "could not analyze the new side's table; its chunks are read as planned without statistics");
            false
        }
    }
}
