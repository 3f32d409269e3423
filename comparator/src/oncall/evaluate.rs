//! Turning evidence into alerts and rollbacks: after every sweep (drift per table, window
//! divergence) and on a timer (sweep staleness, proxy rates), plus due notifications.

use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{counter, gauge, histogram};
use tandem_control::{
    fingerprint, AlertCondition, AuditAction, ControlError, ControlStore, KeyConflict,
    NewTableResult, ProxyCounts, ResolveRule, Timestamp,
};

use super::notify::Notifier;
use super::policy::{RollbackCondition, RollbackPolicy};
use super::OnCallSettings;
use crate::error::CompareError;

/// Who automatic rollbacks are made by, in the stage history and the audit log.
const AUTO_ROLLBACK: &str = "tandem:auto-rollback";

/// Example keys or request ids kept per alert.
const EXAMPLES: usize = 5;

/// The comparator service's on-call duties.
#[derive(Debug)]
pub struct OnCall {
    store: ControlStore,
    settings: OnCallSettings,
    notifier: Notifier,
    started: Timestamp,
    /// Acknowledgements up to this time have been measured (time to acknowledge).
    acks_measured_until: AtomicI64,
}

/// A rate over the configured period, and whether there were enough events to judge it.
struct Rate {
    events: i64,
    of: i64,
}

impl Rate {
    fn exceeds(&self, above: f64, min_samples: i64) -> bool {
        #[allow(clippy::cast_precision_loss)]
        let rate = self.events as f64 / self.of.max(1) as f64;
        self.of >= min_samples && rate > above
    }
}

impl OnCall {
    /// On-call duties on `store`; `service_url` is where this service listens (the default
    /// for links in notifications).
    ///
    /// # Errors
    /// When a notification URL is unusable.
    pub fn new(
        store: ControlStore,
        settings: OnCallSettings,
        service_url: &str,
    ) -> Result<OnCall, CompareError> {
        let notifier = Notifier::new(&settings.alerts, service_url)?;
        let now = Timestamp::now();
        Ok(OnCall {
            store,
            settings,
            notifier,
            started: now,
            acks_measured_until: AtomicI64::new(now.millis()),
        })
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &OnCallSettings {
        &self.settings
    }

    /// Publishes what the promotion gate checks: the tables this comparator sweeps.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn publish_policy(&self, tables: &[String], by: &str) -> Result<(), ControlError> {
        self.store
            .publish_promotion_policy(tables, self.settings.promotion.min_clean, by)
            .await
    }

    /// Acts on a finished sweep: drift alerts per table (raised, or resolved after enough
    /// clean sweeps), the stale-comparator alert cleared, and sweep-based rollback policies.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn after_sweep(
        &self,
        run_id: i64,
        tables: &[NewTableResult],
    ) -> Result<(), ControlError> {
        let clean_sweeps =
            ResolveRule::CleanChecks(self.settings.alerts.resolve_after_clean_sweeps);
        for kind in ["stale_comparator", "sweep_failed"] {
            let finished = fingerprint("comparator", "sweeps", kind);
            self.store
                .note_clean(&finished, ResolveRule::CleanChecks(1))
                .await?;
        }
        for table in tables {
            let not_compared = fingerprint("comparator", &table.table, "not_compared");
            if let Some(reason) = &table.error {
                // Nothing of the table was compared: neither drift nor a clean sweep.
                self.store
                    .raise_alert(&AlertCondition {
                        source: "comparator".to_owned(),
                        subject: table.table.clone(),
                        kind: "not_compared".to_owned(),
                        severity: "warning".to_owned(),
                        summary: format!("table {} could not be compared: {reason}", table.table),
                        measured: 1,
                        examples: Vec::new(),
                    })
                    .await?;
                continue;
            }
            self.store
                .note_clean(&not_compared, ResolveRule::CleanChecks(1))
                .await?;
            let schema = fingerprint("comparator", &table.table, "schema_difference");
            if table.schema_differences > 0 {
                self.store
                    .raise_alert(&AlertCondition {
                        source: "comparator".to_owned(),
                        subject: table.table.clone(),
                        kind: "schema_difference".to_owned(),
                        severity: "warning".to_owned(),
                        summary: format!(
                            "{} columns (or the whole table) of {} exist on one side only",
                            table.schema_differences, table.table
                        ),
                        measured: table.schema_differences,
                        examples: Vec::new(),
                    })
                    .await?;
            } else {
                self.store.note_clean(&schema, clean_sweeps).await?;
            }
            self.judge_drift(run_id, table, clean_sweeps).await?;
        }
        for policy in &self.settings.policies {
            if let Some(evidence) = self.sweep_evidence(policy, run_id, tables).await? {
                self.fire(policy, &evidence).await?;
            }
        }
        Ok(())
    }

    /// Raises `table`'s drift alert for its confirmed divergent rows and for the rows
    /// unconverged through `unconverged_sweeps` sweeps in a row (a row unconverged once was
    /// only being written faster than the mirror follows); counts a clean sweep otherwise.
    async fn judge_drift(
        &self,
        run_id: i64,
        table: &NewTableResult,
        clean_sweeps: ResolveRule,
    ) -> Result<(), ControlError> {
        let divergent = table.missing_in_new + table.extra_in_new + table.changed;
        let sweeps = self.settings.alerts.unconverged_sweeps;
        let unconverged = if table.unconverged > 0 {
            self.store
                .persistently_unconverged(run_id, &table.table, sweeps)
                .await?
        } else {
            Vec::new()
        };
        let condition_fingerprint = fingerprint("comparator", &table.table, "drift");
        if divergent == 0 && unconverged.is_empty() {
            // A clean sweep has read every row of the table again, conflicting keys included.
            let conflicts = fingerprint("comparator", &table.table, "key_conflict");
            self.store.note_clean(&conflicts, clean_sweeps).await?;
            return self
                .store
                .note_clean(&condition_fingerprint, clean_sweeps)
                .await
                .map(drop);
        }
        let confirmed = self
            .store
            .divergences_of_run(run_id, Some(&table.table))
            .await?
            .into_iter()
            .filter(|divergence| divergence.kind != "unconverged")
            .map(|divergence| format!("{} {}", divergence.kind, divergence.key));
        let examples: Vec<String> = confirmed
            .chain(unconverged.iter().map(|key| format!("unconverged {key}")))
            .take(EXAMPLES)
            .collect();
        let persistent = i64::try_from(unconverged.len()).unwrap_or(i64::MAX);
        let mut summary = format!(
            "{divergent} confirmed divergent rows in {} ({} missing in new, {} extra in new, {} \
             changed)",
            table.table, table.missing_in_new, table.extra_in_new, table.changed
        );
        if persistent > 0 {
            summary.push_str(&format!(
                ", {persistent} rows unconverged or changed in each of the last {sweeps} sweeps"
            ));
        }
        let (alert, opened) = self
            .store
            .raise_alert(&AlertCondition {
                source: "comparator".to_owned(),
                subject: table.table.clone(),
                kind: "drift".to_owned(),
                severity: "critical".to_owned(),
                summary,
                measured: divergent + persistent,
                examples,
            })
            .await?;
        if opened {
            tracing::warn!(
                alert = alert.id,
                table = table.table,
                divergent,
                unconverged = persistent,
                "drift alert opened"
            );
        }
        Ok(())
    }

    /// The evidence a finished sweep gives `policy`, if it fires.
    async fn sweep_evidence(
        &self,
        policy: &RollbackPolicy,
        run_id: i64,
        tables: &[NewTableResult],
    ) -> Result<Option<String>, ControlError> {
        let chosen = |name: &str, only: &Option<String>| only.as_deref().is_none_or(|t| t == name);
        match &policy.condition {
            RollbackCondition::DivergentRows { table, above } => Ok(tables
                .iter()
                .filter(|result| chosen(&result.table, table))
                .map(|result| {
                    (
                        result,
                        result.missing_in_new + result.extra_in_new + result.changed,
                    )
                })
                .find(|(_, divergent)| divergent > above)
                .map(|(result, divergent)| {
                    format!(
                        "table {} has {divergent} confirmed divergent rows (more than {above})",
                        result.table
                    )
                })),
            RollbackCondition::WindowDivergence {
                table,
                percent,
                consecutive,
            } => {
                let windows = self.store.window_results(run_id, table.as_deref()).await?;
                let mut streak: Option<(&str, usize)> = None;
                for window in &windows {
                    let rows = window.result.rows_old.max(window.result.rows_new).max(1);
                    #[allow(clippy::cast_precision_loss)]
                    let share = window.result.differences as f64 * 100.0 / rows as f64;
                    streak = match streak {
                        _ if share <= *percent => None,
                        Some((name, count)) if name == window.table => Some((name, count + 1)),
                        _ => Some((&window.table, 1)),
                    };
                    if let Some((name, count)) = streak.filter(|(_, count)| count >= consecutive) {
                        return Ok(Some(format!(
                            "{count} consecutive windows of table {name} had more than \
                             {percent}% of their rows differ"
                        )));
                    }
                }
                Ok(None)
            }
            RollbackCondition::MismatchRate { .. } | RollbackCondition::NewErrorRate { .. } => {
                Ok(None)
            }
        }
    }

    /// The periodic duties: sweep staleness, proxy rate alerts, rate-based rollback
    /// policies, due notifications and the alert metrics.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn tick(&self) -> Result<(), ControlError> {
        self.check_staleness().await?;
        self.check_proxy_rates().await?;
        for policy in &self.settings.policies {
            let (above, period, what) = match &policy.condition {
                RollbackCondition::MismatchRate { above, period } => {
                    (*above, *period, "response mismatch")
                }
                RollbackCondition::NewErrorRate { above, period } => {
                    (*above, *period, "new-side error")
                }
                _ => continue,
            };
            let counts = self.store.proxy_counts(period).await?;
            let rate = match &policy.condition {
                RollbackCondition::MismatchRate { .. } => Rate {
                    events: counts.mismatches,
                    of: counts.compared,
                },
                _ => Rate {
                    events: counts.new_errors,
                    of: counts.new_requests,
                },
            };
            if rate.exceeds(above, self.settings.alerts.min_samples) {
                let evidence = format!(
                    "{what} rate {} of {} over {} is above {above}",
                    rate.events,
                    rate.of,
                    humantime::format_duration(period)
                );
                self.fire(policy, &evidence).await?;
            }
        }
        self.notifier.deliver_due(&self.store).await?;
        self.record_metrics().await
    }

    /// Raises `table`'s alert for a key written through two proxies at once whose row still
    /// differs after the rechecks (it resolves after clean sweeps of the table, or by hand).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn key_conflict_diverged(
        &self,
        table: &str,
        conflict: &KeyConflict,
        detail: &str,
    ) -> Result<(), ControlError> {
        let (alert, opened) = self
            .store
            .raise_alert(&AlertCondition {
                source: "comparator".to_owned(),
                subject: table.to_owned(),
                kind: "key_conflict".to_owned(),
                severity: "critical".to_owned(),
                summary: format!(
                    "a key of {table} written through two proxies at once differs after the \
                     rechecks: {detail}"
                ),
                measured: 1,
                examples: vec![format!(
                    "{} (request {})",
                    conflict.ordering_key, conflict.request_id
                )],
            })
            .await?;
        if opened {
            tracing::warn!(alert = alert.id, table, detail, "key conflict alert opened");
        }
        Ok(())
    }

    /// Raises the alert of a sweep that failed (it clears with the next finished sweep).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn sweep_failed(&self, reason: &str) -> Result<(), ControlError> {
        self.store
            .raise_alert(&AlertCondition {
                source: "comparator".to_owned(),
                subject: "sweeps".to_owned(),
                kind: "sweep_failed".to_owned(),
                severity: "warning".to_owned(),
                summary: format!("a comparator sweep failed: {reason}"),
                measured: 1,
                examples: Vec::new(),
            })
            .await
            .map(drop)
    }

    async fn check_staleness(&self) -> Result<(), ControlError> {
        let last_finished = self
            .store
            .comparison_runs(1_000)
            .await?
            .iter()
            .filter(|run| run.status != "failed")
            .find_map(|run| run.finished_at)
            .unwrap_or(self.started);
        let stale_after = self.settings.alerts.stale_after;
        let idle = Timestamp::now()
            .millis()
            .saturating_sub(last_finished.millis());
        if idle > i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX) {
            self.store
                .raise_alert(&AlertCondition {
                    source: "comparator".to_owned(),
                    subject: "sweeps".to_owned(),
                    kind: "stale_comparator".to_owned(),
                    severity: "warning".to_owned(),
                    summary: format!(
                        "no comparator sweep has finished for {} (more than {})",
                        humantime::format_duration(std::time::Duration::from_secs(
                            u64::try_from(idle / 1000).unwrap_or(0)
                        )),
                        humantime::format_duration(stale_after)
                    ),
                    measured: idle / 1000,
                    examples: Vec::new(),
                })
                .await?;
        }
        Ok(())
    }

    async fn check_proxy_rates(&self) -> Result<(), ControlError> {
        let alerts = &self.settings.alerts;
        let counts: ProxyCounts = self.store.proxy_counts(alerts.rate_period).await?;
        let checks = [
            (
                "response_mismatches",
                "responses",
                Rate {
                    events: counts.mismatches,
                    of: counts.compared,
                },
                alerts.mismatch_rate,
                "responses of the two sides differed",
            ),
            (
                "mirror_failures",
                "mirror",
                Rate {
                    events: counts.mirror_failures,
                    of: counts.mirrored,
                },
                alerts.mirror_failure_rate,
                "mirrored writes failed and wait for replay",
            ),
            (
                "new_side_errors",
                "new_side",
                Rate {
                    events: counts.new_errors,
                    of: counts.new_requests,
                },
                alerts.new_error_rate,
                "requests to the new side failed",
            ),
        ];
        let clean_for = ResolveRule::CleanFor(alerts.resolve_after_clean);
        for (kind, subject, rate, above, what) in checks {
            if rate.exceeds(above, alerts.min_samples) {
                // Mismatches carry request ids people can look up (GET /admin/mismatches).
                let examples = if kind == "response_mismatches" {
                    self.store
                        .response_mismatches(i64::try_from(EXAMPLES).unwrap_or(5))
                        .await?
                        .into_iter()
                        .map(|mismatch| format!("request {}", mismatch.request_id))
                        .collect()
                } else {
                    Vec::new()
                };
                self.store
                    .raise_alert(&AlertCondition {
                        source: "proxy".to_owned(),
                        subject: subject.to_owned(),
                        kind: kind.to_owned(),
                        severity: "warning".to_owned(),
                        summary: format!(
                            "{} of {} {what} in the last {} (threshold {above})",
                            rate.events,
                            rate.of,
                            humantime::format_duration(alerts.rate_period)
                        ),
                        measured: rate.events,
                        examples,
                    })
                    .await?;
            } else {
                self.store
                    .note_clean(&fingerprint("proxy", subject, kind), clean_for)
                    .await?;
            }
        }
        Ok(())
    }

    /// Rolls back (or, in dry-run, only says it would) as `policy` says, unless the stage is
    /// already at or before its target or the policy is cooling down; raises an alert.
    async fn fire(&self, policy: &RollbackPolicy, evidence: &str) -> Result<(), ControlError> {
        let current = self.store.current_stage().await?;
        if !current.stage.rolls_back_to(policy.target) {
            return Ok(());
        }
        let action = if policy.dry_run {
            AuditAction::AutoRollbackDryRun
        } else {
            AuditAction::AutoRollback
        };
        if let Some(last) = self.store.last_audited(action, &policy.name).await? {
            let cooldown = i64::try_from(policy.cooldown.as_millis()).unwrap_or(i64::MAX);
            if Timestamp::now().millis().saturating_sub(last.millis()) < cooldown {
                return Ok(());
            }
        }
        let reason = format!("policy {}: {evidence}", policy.name);
        let (kind, summary) = if policy.dry_run {
            self.store
                .audit(
                    AUTO_ROLLBACK,
                    action,
                    &policy.name,
                    &format!(
                        "would roll back {} -> {}: {reason}",
                        current.stage, policy.target
                    ),
                )
                .await?;
            (
                "rollback_dry_run",
                format!(
                    "would roll back {} -> {} (dry run): {reason}",
                    current.stage, policy.target
                ),
            )
        } else {
            let Some(record) = self
                .store
                .roll_back_stage(
                    current.stage,
                    policy.target,
                    AUTO_ROLLBACK,
                    &policy.name,
                    &reason,
                )
                .await?
            else {
                // The stage changed meanwhile (another instance rolled back first).
                return Ok(());
            };
            tracing::warn!(policy = policy.name, from = %current.stage, to = %record.stage, evidence, "automatic rollback");
            (
                "rollback",
                format!(
                    "rolled back {} -> {}: {reason}",
                    current.stage, record.stage
                ),
            )
        };
        counter!("tandem_rollbacks_total", "policy" => policy.name.clone(), "dry_run" => policy.dry_run.to_string())
            .increment(1);
        self.store
            .raise_alert(&AlertCondition {
                source: "policy".to_owned(),
                subject: policy.name.clone(),
                kind: kind.to_owned(),
                severity: "critical".to_owned(),
                summary,
                measured: 1,
                examples: vec![evidence.to_owned()],
            })
            .await?;
        Ok(())
    }

    async fn record_metrics(&self) -> Result<(), ControlError> {
        let alerts = self.store.alerts(None).await?;
        for severity in ["critical", "warning"] {
            let open = alerts
                .iter()
                .filter(|alert| alert.status == "open" && alert.severity == severity)
                .count();
            #[allow(clippy::cast_precision_loss)]
            gauge!("tandem_alerts_open", "severity" => severity).set(open as f64);
        }
        let since = self.acks_measured_until.load(Ordering::Relaxed);
        let mut newest = since;
        for alert in &alerts {
            let Some(acked) = alert.acknowledged_at.filter(|at| at.millis() > since) else {
                continue;
            };
            newest = newest.max(acked.millis());
            #[allow(clippy::cast_precision_loss)]
            let waited = acked.millis().saturating_sub(alert.first_seen.millis()) as f64 / 1000.0;
            histogram!("tandem_alert_time_to_acknowledge_seconds").record(waited);
        }
        self.acks_measured_until.store(newest, Ordering::Relaxed);
        Ok(())
    }
}
