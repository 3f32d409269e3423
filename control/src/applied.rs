//! The stage a process routes by, as metrics and a log line: `tandem_stage{stage}` (1 for the
//! stage in force) and `tandem_stage_changes_total{stage}`, and whether its control store
//! answers (`tandem_control_store_reachable`, what `/readyz` reports), for every front end
//! alike.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use tokio_util::sync::CancellationToken;

use crate::stage::Stage;
use crate::watch::StageWatch;

/// This process started routing by a new stage.
#[derive(Debug)]
pub struct StageApplied {
    /// The stage in force now.
    pub stage: Stage,
    /// Who changed it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl StageApplied {
    /// Records the event; `initial` is true for the stage loaded at start-up.
    pub fn emit(self, initial: bool) {
        for stage in Stage::ALL {
            let value = if stage == self.stage { 1.0 } else { 0.0 };
            gauge!("tandem_stage", "stage" => stage.as_str()).set(value);
        }
        if !initial {
            counter!("tandem_stage_changes_total", "stage" => self.stage.as_str()).increment(1);
        }
        tracing::info!(stage = %self.stage, by = self.by, reason = self.reason, initial, "routing by stage");
    }
}

/// Whether the last read of the control store succeeded (the stage is then current).
#[derive(Debug)]
pub(crate) struct StoreReachability(pub(crate) bool);

impl StoreReachability {
    /// Records the gauge (the log line is the caller's: it knows the error).
    pub(crate) fn emit(self) {
        gauge!("tandem_control_store_reachable").set(if self.0 { 1.0 } else { 0.0 });
    }
}

/// Registers the help text of the stage metrics.
pub fn describe_stage_metrics() {
    describe_gauge!("tandem_stage", "1 for the stage in force, 0 for the others");
    describe_gauge!(
        "tandem_control_store_reachable",
        "1 while the control store answers stage reads, 0 while it does not (then /readyz is 503)"
    );
    describe_counter!(
        "tandem_stage_changes_total",
        "Stage changes applied by this process"
    );
}

/// Emits a [`StageApplied`] event for the initial stage and for every change, until
/// `shutdown`.
pub async fn follow_applied_stage(stage: StageWatch, shutdown: CancellationToken) {
    let mut changes = stage.subscribe();
    let initial = changes.borrow_and_update().clone();
    StageApplied {
        stage: initial.stage,
        by: initial.by,
        reason: initial.reason,
    }
    .emit(true);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let record = changes.borrow_and_update().clone();
                StageApplied { stage: record.stage, by: record.by, reason: record.reason }.emit(false);
            }
        }
    }
}
