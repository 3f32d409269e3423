//! Replay of persisted mirror copies, in the order the authoritative side accepted them.

use std::collections::HashSet;

use axum::body::Body;
use http::Method;
use serde::Serialize;
use tandem_control::{ControlError, ControlStore, FailureStatus, MirrorFailure, Side};

use crate::headers::decode_block;
use crate::telemetry::{MirrorReplayed, Role};
use crate::upstream::{OutboundRequest, Upstreams};

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Copies delivered and marked replayed.
    pub delivered: usize,
    /// Copies that failed again; they stay pending.
    pub failed: usize,
    /// Copies not sent because an earlier copy of the same key is still pending.
    pub held: usize,
    /// One line per copy that was not delivered.
    pub problems: Vec<String>,
}

impl ReplayReport {
    /// Whether every copy asked for was delivered.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.held == 0
    }
}

/// Re-sends pending copies (all of them, or only `only`) in acceptance order. A copy whose
/// key has an earlier copy that failed or is still pending is held back, so order is kept.
///
/// # Errors
/// When the control store cannot be read or written; `only` naming no pending copy is
/// reported as [`ControlError::InvalidInput`].
pub async fn replay_failures(
    store: &ControlStore,
    upstreams: &Upstreams,
    only: Option<i64>,
) -> Result<ReplayReport, ControlError> {
    let pending = store.mirror_failures(Some(FailureStatus::Pending)).await?;
    if let Some(id) = only {
        if !pending.iter().any(|failure| failure.id == id) {
            let reason = match store.mirror_failure(id).await? {
                Some(failure) => format!("mirror failure {id} is {}, not pending", failure.status),
                None => format!("no mirror failure with id {id}"),
            };
            return Err(ControlError::InvalidInput(reason));
        }
    }
    let mut report = ReplayReport::default();
    let mut blocked: HashSet<(Side, String)> = HashSet::new();
    for failure in pending {
        let key = (failure.target, failure.ordering_key.clone());
        let wanted = only.is_none_or(|id| id == failure.id);
        if blocked.contains(&key) {
            if wanted {
                report.held += 1;
                report.problems.push(format!(
                    "{}: held behind an earlier pending copy of {}",
                    failure.id, failure.ordering_key
                ));
                MirrorReplayed { outcome: "held" }.emit();
            }
            continue;
        }
        if !wanted {
            blocked.insert(key);
            continue;
        }
        match send(upstreams, &failure).await {
            Ok(()) => {
                store.mark_mirror_failure_replayed(failure.id).await?;
                report.delivered += 1;
                MirrorReplayed {
                    outcome: "delivered",
                }
                .emit();
            }
            Err(error) => {
                store.record_replay_failure(failure.id, &error).await?;
                report.failed += 1;
                report.problems.push(format!("{}: {error}", failure.id));
                blocked.insert(key);
                MirrorReplayed { outcome: "failed" }.emit();
            }
        }
    }
    Ok(report)
}

async fn send(upstreams: &Upstreams, failure: &MirrorFailure) -> Result<(), String> {
    let method = Method::from_bytes(failure.method.as_bytes())
        .map_err(|_| format!("stored method {:?} is not valid", failure.method))?;
    let request = OutboundRequest {
        method,
        path_and_query: failure.uri.clone(),
        headers: decode_block(&failure.headers),
    };
    let body = failure
        .body
        .clone()
        .map(Body::from)
        .unwrap_or_else(Body::empty);
    let answer = upstreams
        .get(failure.target)
        .send(&request, body, Role::Replay)
        .await
        .map_err(|err| err.to_string())?;
    if answer.status().is_server_error() {
        return Err(format!("status {}", answer.status().as_u16()));
    }
    Ok(())
}
