//! Fencing several tandem instances at a change of authoritative side, with a PostgreSQL
//! advisory lock on the side itself: every instance serving sessions on a side holds the
//! lock shared (on a session of its own), and the instance that switches away from it takes
//! it exclusively before it writes the marker and drops the side's slot. So no instance's
//! session can still write there once the marker is written, whatever the control store
//! said to whom: an instance that never heard of the stage change keeps its shared lock and
//! the switch waits for it (and is refused past the switch timeout) rather than lose its
//! writes. A dead instance's lock goes with its connection.

use tandem_control::Side;

use super::connection::{quote_literal, Connection};
use super::error::WalError;

/// The advisory lock's first key (`hashtext('tandem serving')`, computed by the server),
/// the second is the slot stem's.
const LOCK_NAMESPACE: &str = "tandem serving";

/// How an instance holds a side's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It serves sessions on the side (any number of instances at once).
    Serving,
    /// It switches away from the side (no instance serves it meanwhile).
    Switching,
}

/// A side's lock, held while this value lives (its session ends with it).
#[derive(Debug)]
pub struct SideLock {
    connection: Connection,
    side: Side,
    hold: Hold,
}

impl SideLock {
    /// Takes the lock of the migration `stem` on the side at `url` as `hold`, if no other
    /// instance holds it the other way; `None` when one does.
    ///
    /// # Errors
    /// A [`WalError`] when the side cannot be reached or refuses.
    pub async fn try_take(
        side: Side,
        url: &str,
        stem: &str,
        hold: Hold,
    ) -> Result<Option<SideLock>, WalError> {
        let mut connection = Connection::open_sql(side, url).await?;
        let function = match hold {
            Hold::Serving => "pg_try_advisory_lock_shared",
            Hold::Switching => "pg_try_advisory_lock",
        };
        let rows = connection
            .query(
                &format!(
                    "SELECT {function}(hashtext({}), hashtext({}))::text",
                    quote_literal(LOCK_NAMESPACE),
                    quote_literal(stem)
                ),
                "the fencing advisory lock",
            )
            .await?;
        let taken = rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .is_some_and(|answer| answer == "true");
        if taken {
            Ok(Some(SideLock {
                connection,
                side,
                hold,
            }))
        } else {
            connection.terminate().await?;
            Ok(None)
        }
    }

    /// The side it holds.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// How it holds it.
    #[must_use]
    pub fn hold(&self) -> Hold {
        self.hold
    }

    /// Checks that the lock's session still lives (a server restart or a broken connection
    /// frees the lock without a word).
    ///
    /// # Errors
    /// A [`WalError`] when it does not: the lock is gone.
    pub async fn check(&mut self) -> Result<(), WalError> {
        self.connection
            .query("SELECT 1", "the fencing lock's check")
            .await
            .map(drop)
    }

    /// Lets the lock go (ending its session).
    ///
    /// # Errors
    /// A [`WalError`] when the session cannot be ended cleanly (the server frees the lock
    /// once it sees the connection gone anyway).
    pub async fn release(self) -> Result<(), WalError> {
        self.connection.terminate().await
    }
}
