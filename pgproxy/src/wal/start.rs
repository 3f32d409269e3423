//! The start of a capture on a side that had none: the transactions that committed there
//! while its slot was being made. A new logical slot becomes consistent only once every
//! transaction holding a transaction id when it began has ended; those end before its
//! consistent point, so the slot never carries them (they are history, for the backfill).
//! [`SlotWaiters`] names them from the server's own activity view while the slot is made,
//! and keeps those that committed.

use std::collections::BTreeMap;
use std::fmt;

use tandem_control::Side;

use super::connection::Connection;
use super::error::WalError;

/// A transaction that held a transaction id on the captured side while its slot was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransaction {
    /// Its server process.
    pub pid: i32,
    /// Its transaction id (32 bits, as `pg_stat_activity` shows it).
    pub xid: u32,
    /// Who it ran as.
    pub user: String,
    /// The `application_name` of its session.
    pub application: String,
    /// When it began, as the server writes it.
    pub began: String,
}

impl fmt::Display for OpenTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (user {}, application {:?}, transaction {} begun {})",
            self.pid, self.user, self.application, self.xid, self.began
        )
    }
}

/// The transactions of this database that hold an id now, other than tandem's own look-up.
const HOLDING_IDS: &str = "SELECT pid::text, backend_xid::text, coalesce(usename::text, ''), \
     coalesce(application_name, ''), coalesce(xact_start::text, '') \
     FROM pg_catalog.pg_stat_activity WHERE datname = current_database() \
     AND backend_xid IS NOT NULL AND backend_type = 'client backend' \
     AND pid <> pg_catalog.pg_backend_pid()";

/// Watches, on a session of its own, the transactions a slot being made waits for.
#[derive(Debug)]
pub struct SlotWaiters {
    connection: Connection,
    seen: BTreeMap<(i32, u32), OpenTransaction>,
}

impl SlotWaiters {
    /// Opens the watch and takes its first look.
    ///
    /// # Errors
    /// A [`WalError`] when the side cannot be reached or refuses.
    pub async fn open(side: Side, url: &str) -> Result<SlotWaiters, WalError> {
        let mut waiters = SlotWaiters {
            connection: Connection::open_sql(side, url).await?,
            seen: BTreeMap::new(),
        };
        waiters.look().await?;
        Ok(waiters)
    }

    /// Adds the transactions holding an id now to those seen.
    ///
    /// # Errors
    /// A [`WalError`] when the server fails to answer.
    pub async fn look(&mut self) -> Result<(), WalError> {
        let rows = self
            .connection
            .query(HOLDING_IDS, "the open transactions look-up")
            .await?;
        for row in rows {
            let mut fields = row.into_iter().map(Option::unwrap_or_default);
            let mut next = || fields.next().unwrap_or_default();
            let (pid, xid, user, application, began) = (next(), next(), next(), next(), next());
            let (Ok(pid), Ok(xid)) = (pid.parse::<i32>(), xid.parse::<u32>()) else {
                continue;
            };
            self.seen.entry((pid, xid)).or_insert(OpenTransaction {
                pid,
                xid,
                user,
                application,
                began,
            });
        }
        Ok(())
    }

    /// Once the slot is consistent: those seen that have ended since and committed (what
    /// they wrote is not in the slot). One still running ends after the slot's consistent
    /// point, so the slot carries it.
    ///
    /// # Errors
    /// A [`WalError`] when the server fails to answer.
    pub async fn committed(mut self) -> Result<Vec<OpenTransaction>, WalError> {
        if self.seen.is_empty() {
            self.connection.terminate().await?;
            return Ok(Vec::new());
        }
        let rows = self
            .connection
            .query(&committed_query(self.seen.keys()), "pg_xact_status")
            .await?;
        self.connection.terminate().await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let mut fields = row.into_iter().flatten();
                let pid = fields.next()?.parse::<i32>().ok()?;
                let xid = fields.next()?.parse::<u32>().ok()?;
                self.seen.remove(&(pid, xid))
            })
            .collect())
    }
}

/// The query that keeps, of `seen` (process, transaction id), those no longer running that
/// committed. `pg_xact_status` takes a 64-bit id: the 32-bit one gets the epoch of the
/// server's next id (one less when it lies ahead of it, before a wrap-around).
fn committed_query<'a>(seen: impl Iterator<Item = &'a (i32, u32)>) -> String {
    let values: Vec<String> = seen
        .map(|(pid, xid)| format!("({pid}, {xid}::bigint)"))
        .collect();
    format!(
        "WITH seen (pid, xid) AS (VALUES {}), \
         next AS (SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint AS id) \
         SELECT seen.pid::text, seen.xid::text FROM seen, next \
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a \
           WHERE a.pid = seen.pid AND a.backend_xid::text::bigint = seen.xid) \
         AND pg_catalog.pg_xact_status(((((next.id >> 32) - CASE WHEN seen.xid > (next.id & 4294967295) \
           THEN 1 ELSE 0 END) << 32) | seen.xid)::text::xid8) = 'committed' \
         ORDER BY seen.pid",
        values.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_query_holds_only_the_numbers_seen() {
        let seen = [(12, 900), (7, 4_000_000_000)];
        let sql = committed_query(seen.iter());
        assert!(sql.contains("VALUES (12, 900::bigint), (7, 4000000000::bigint)"));
        assert!(sql.contains("= 'committed'"));
    }
}
