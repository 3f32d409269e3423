//! Replay of persisted mirror copies, in the order the authoritative side accepted them.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use http::Method;
use serde::Serialize;
use tandem_control::{
    ControlError, ControlStore, CopyKind, FailureStatus, MirrorFailure, Side, Timestamp,
};

use crate::headers::decode_block;
use crate::mirror::is_delivered;
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

/// How long a replay's claim on a copy holds, unless told otherwise: a claim older than this
/// is taken to be from a replay that died, and another replay takes the copy over.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(300);

/// [`replay_with_lease`] with the [`DEFAULT_CLAIM_LEASE`].
///
/// # Errors
/// As [`replay_with_lease`].
pub async fn replay_failures(
    store: &ControlStore,
    upstreams: &Upstreams,
    only: Option<i64>,
) -> Result<ReplayReport, ControlError> {
    replay_with_lease(store, upstreams, only, DEFAULT_CLAIM_LEASE).await
}

/// Re-sends pending copies (all of them, or only `only`) in acceptance order, taking over
/// claims older than `lease` (their replay died).
///
/// A copy is held back (and stays pending) when an earlier copy of its key failed, is still
/// pending or is claimed by another replay (a live claim holds its whole key, so no later copy
/// overtakes the claimed one), or when its target is the authoritative side of the current
/// stage and it was kept without the cutover hold (the fleet's shared journal: newer writes
/// of its key may be there). One kept under the hold is sent into the authoritative side: the
/// hold refuses its key there (`503 kept`) while it is kept, so nothing newer of the key
/// reached that side, and the key is served again once its last kept copy is replayed
/// (docs/ARCHITECTURE.md, invariants).
///
/// # Errors
/// When the control store cannot be read or written; `only` naming no pending copy is
/// reported as [`ControlError::InvalidInput`].
pub async fn replay_with_lease(
    store: &ControlStore,
    upstreams: &Upstreams,
    only: Option<i64>,
    lease: Duration,
) -> Result<ReplayReport, ControlError> {
    let candidates = store.replay_candidates(lease, CopyKind::Http).await?;
    if let Some(id) = only {
        if !candidates
            .iter()
            .any(|failure| failure.id == id && failure.status == FailureStatus::Pending)
        {
            let reason = match store.mirror_failure(id).await? {
                Some(failure) => format!("mirror failure {id} is {}, not pending", failure.status),
                None => format!("no mirror failure with id {id}"),
            };
            return Err(ControlError::InvalidInput(reason));
        }
    }
    let stage = store.current_stage().await?.stage;
    let mut report = ReplayReport::default();
    let mut blocked: HashSet<(Side, String)> = HashSet::new();
    for failure in candidates {
        let key = (failure.target, failure.ordering_key.clone());
        let wanted = only.is_none_or(|id| id == failure.id);
        let hold = if blocked.contains(&key) {
            Some(format!(
                "held behind an earlier pending copy of {}",
                failure.ordering_key
            ))
        } else if failure.target == stage.authoritative() && !failure.cutover_hold {
            Some(format!(
                "its target ({}) is authoritative in stage {stage}, and the proxy that kept it \
                 did not hold its key meanwhile (kept before the fleet's proxies marked kept \
                 keys for each other): newer writes of the key may be there",
                failure.target
            ))
        } else if failure.status == FailureStatus::Replaying {
            Some(format!(
                "claimed by another replay until {} (a replay that was stopped keeps its claim \
                 until then)",
                claim_expiry(&failure, lease).to_rfc3339()
            ))
        } else if wanted && !store.claim_mirror_failure(failure.id, lease).await? {
            Some("claimed by another replay in progress".to_owned())
        } else {
            None
        };
        if let Some(why) = hold {
            blocked.insert(key);
            if wanted {
                report.held += 1;
                report.problems.push(format!("{}: {why}", failure.id));
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

/// The longest an automatic replay waits between rounds while the other side keeps failing.
const AUTO_REPLAY_MAX_WAIT: Duration = Duration::from_secs(15);

/// Replays the copies kept in the control store by itself, every `interval` while some are
/// waiting: the round is the probe of the other side, and delivery resumes when it answers
/// again, in per-key order, with no one running `tandem mirror replay`. While rounds deliver
/// nothing the wait doubles, up to 15 s. Runs until `stop`; a round cut short by it leaves
/// its claim, which holds the copy's key for `lease` (longer than a copy's send can take).
pub async fn auto_replay(
    store: ControlStore,
    upstreams: Upstreams,
    (interval, lease): (Duration, Duration),
    stop: tokio_util::sync::CancellationToken,
) {
    let mut wait = interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match store.count_awaiting_replay().await {
            Ok(0) => {
                wait = interval;
                continue;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "automatic replay cannot read the store");
                wait = (wait * 2).min(AUTO_REPLAY_MAX_WAIT);
                continue;
            }
        }
        let round = tokio::select! {
            () = stop.cancelled() => return,
            round = replay_with_lease(&store, &upstreams, None, lease) => round,
        };
        match round {
            Ok(report) if report.delivered > 0 => {
                tracing::info!(
                    delivered = report.delivered,
                    failed = report.failed,
                    held = report.held,
                    "automatic replay delivered kept copies"
                );
                wait = interval;
            }
            Ok(_) => wait = (wait * 2).min(AUTO_REPLAY_MAX_WAIT),
            Err(err) => {
                tracing::warn!(error = %err, "automatic replay failed on the store");
                wait = (wait * 2).min(AUTO_REPLAY_MAX_WAIT);
            }
        }
    }
}

/// When a live claim on `failure` runs out.
fn claim_expiry(failure: &MirrorFailure, lease: Duration) -> Timestamp {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    Timestamp(failure.updated_at.millis().saturating_add(lease_ms))
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
    let status = answer.status().as_u16();
    if !is_delivered(status) {
        return Err(format!("status {status}"));
    }
    Ok(())
}
