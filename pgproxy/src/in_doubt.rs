//! What became of a mirrored transaction whose connection broke after its `COMMIT` was sent
//! and before the answer came: asked of the other side by its transaction id, on another
//! connection. Keeping it for replay without asking would apply it twice when it had
//! committed; dropping it would lose it when it had not.

use std::time::{Duration, Instant};

use metrics::counter;

use crate::backend::Backend;
use crate::text_query::rows;

/// How long tandem waits for the other side to settle the transaction.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// How long a backend may stay in the transaction before tandem ends it: a server that has
/// not noticed its client went away (the commit waits on a lock, or on a synchronous standby)
/// would otherwise keep the question open.
const TERMINATE_AFTER: Duration = Duration::from_secs(1);

/// What the other side says became of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// It committed there: it is applied, and must not be replayed.
    Committed,
    /// It rolled back there: it is not applied, and is kept for replay.
    Aborted,
    /// The other side could not say (why): kept for replay, which may apply it twice.
    Unknown(String),
}

impl Resolution {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            Resolution::Committed => "committed",
            Resolution::Aborted => "aborted",
            Resolution::Unknown(_) => "unknown",
        }
    }
}

/// Asks `server` (a fresh connection to the other side) what became of transaction `xid`,
/// run there by the backend `process_id` whose connection broke; ends that backend if it has
/// not settled it after [`TERMINATE_AFTER`].
pub async fn resolve(server: &mut Backend, xid: u64, process_id: i32) -> Resolution {
    let resolution = ask(server, xid, process_id).await;
    counter!("tandem_pg_in_doubt_commits_total", "outcome" => resolution.label()).increment(1);
    tracing::warn!(xid, outcome = ?resolution, "the connection broke as a mirrored transaction committed");
    resolution
}

async fn ask(server: &mut Backend, xid: u64, process_id: i32) -> Resolution {
    let started = Instant::now();
    let mut terminated = false;
    let status = format!("SELECT pg_catalog.pg_xact_status('{xid}'::xid8)::text");
    loop {
        let answer = match rows(&mut server.stream, &status).await {
            Ok(answer) => answer,
            Err(err) => return Resolution::Unknown(err.to_string()),
        };
        match answer
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
        {
            Some(Some(status)) if status == "committed" => return Resolution::Committed,
            Some(Some(status)) if status == "aborted" => return Resolution::Aborted,
            Some(Some(_)) => {}
            _ => {
                return Resolution::Unknown(format!(
                    "transaction {xid} is too old for the server to say"
                ))
            }
        }
        if started.elapsed() > SETTLE_WITHIN {
            return Resolution::Unknown(format!(
                "transaction {xid} was still in progress after {}s",
                SETTLE_WITHIN.as_secs()
            ));
        }
        if !terminated && started.elapsed() > TERMINATE_AFTER {
            terminated = true;
            let terminate = format!("SELECT pg_catalog.pg_terminate_backend({process_id})");
            if let Err(err) = rows(&mut server.stream, &terminate).await {
                tracing::warn!(error = %err, process_id, "cannot end the backend of a broken mirror connection");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
