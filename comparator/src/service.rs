//! The continuous comparator: sweeps the configured tables again and again (sharing each
//! sweep with the other instances on the same control store), records every run, and serves
//! `/healthz`, `/metrics` and a JSON API about the results.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_control::{
    ComparisonRun, ConflictOutcome, ControlError, ControlStore, KeyConflict, NewTableResult,
    Timestamp,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::conflicts::{conflict_tables, recheck_conflict, ConflictTable};
use crate::database::Database;
use crate::error::CompareError;
use crate::oncall::{OnCall, OnCallSettings};
use crate::run::CompareOptions;
use crate::sweep::{plan_sweep, ChunkComparer};

/// How the service sweeps.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Pause between the end of a sweep and the start of the next.
    pub interval: Duration,
    /// Stop after this many sweeps (`None`: until shutdown).
    pub sweeps: Option<u64>,
    /// The old database as shown in records (no credentials).
    pub old_source: String,
    /// The new database as shown in records (no credentials).
    pub new_source: String,
    /// This instance's name, recorded as the owner of the chunks it claims.
    pub instance: String,
    /// Old-side rows per chunk, the unit of work instances claim.
    pub chunk_rows: usize,
    /// How long a claim lasts without renewal (an instance that died loses its chunks then).
    pub chunk_lease: Duration,
    /// Alerts, rollback policies and the promotion gate.
    pub oncall: OnCallSettings,
}

/// Everything the continuous comparator works with.
#[derive(Debug)]
pub struct ComparatorService {
    /// The old database.
    pub old: Database,
    /// The new database.
    pub new: Database,
    /// Where runs are recorded.
    pub store: ControlStore,
    /// What each sweep compares and how.
    pub options: CompareOptions,
    /// How the service sweeps and listens.
    pub settings: ServiceSettings,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl ComparatorService {
    /// Sweeps until `shutdown` (or `settings.sweeps` sweeps), serving the HTTP API meanwhile;
    /// `on_ready` gets the listener's address once it is bound.
    ///
    /// # Errors
    /// When the listener cannot be bound or the control store cannot record a run.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_ready: impl FnOnce(SocketAddr),
    ) -> Result<(), CompareError> {
        self.run_on(None, shutdown, on_ready).await
    }

    /// [`ComparatorService::run`], serving its API on a listener the caller already bound (no
    /// other process can take the port in between); `settings.listen` is then only its name.
    ///
    /// # Errors
    /// As [`ComparatorService::run`].
    pub async fn run_on(
        self,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
        on_ready: impl FnOnce(SocketAddr),
    ) -> Result<(), CompareError> {
        let ComparatorService {
            old,
            new,
            store,
            options,
            settings,
            metrics,
        } = self;
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(settings.listen).await.map_err(|err| {
                CompareError::Service(format!("cannot listen on {}: {err}", settings.listen))
            })?,
        };
        let address = listener
            .local_addr()
            .map_err(|err| CompareError::Service(err.to_string()))?;
        let oncall = Arc::new(OnCall::new(
            store.clone(),
            settings.oncall.clone(),
            &format!("http://{address}"),
        )?);
        let api_stop = CancellationToken::new();
        let router = api::router(store.clone(), metrics, settings.oncall.admin_token.clone());
        let api = axum::serve(listener, router)
            .with_graceful_shutdown(api_stop.clone().cancelled_owned());
        let api = tokio::spawn(async move { api.await });
        let duties = tokio::spawn(keep_watch(Arc::clone(&oncall), api_stop.clone()));
        let conflicts = tokio::spawn(
            ConflictRechecker {
                old: old.clone(),
                new: new.clone(),
                store: store.clone(),
                options: options.clone(),
                tables: conflict_tables(&options),
                oncall: Arc::clone(&oncall),
                instance: settings.instance.clone(),
                lease: settings.chunk_lease,
            }
            .run(api_stop.clone()),
        );
        on_ready(address);

        let mut sweeper = Sweeper {
            old: &old,
            new: &new,
            store: &store,
            options: &options,
            settings: &settings,
            oncall: &oncall,
            comparer: ChunkComparer::default(),
        };
        let mut joined: Option<i64> = None;
        let mut completed = 0u64;
        while !shutdown.is_cancelled() {
            let running = match store.running_shared_run().await {
                Ok(running) => running,
                Err(err) => {
                    tracing::warn!(error = %err, "control store unavailable; retrying");
                    pause(&shutdown, POLL).await;
                    continue;
                }
            };
            let running_id = running.as_ref().map(|run| run.id);
            if joined.is_some() && joined != running_id {
                // The sweep this instance took part in ended, here or elsewhere.
                joined = None;
                completed += 1;
                if settings.sweeps.is_some_and(|sweeps| completed >= sweeps) {
                    break;
                }
                pause(&shutdown, settings.interval).await;
            } else if let Some(run) = running {
                joined = Some(run.id);
                sweeper.work_on(&run, &shutdown).await;
            } else {
                joined = sweeper.start(&shutdown).await;
            }
        }
        api_stop.cancel();
        let _ = tokio::join!(api, duties, conflicts);
        Ok(())
    }
}

/// The on-call duties that run on a timer (staleness, proxy rates, rate-based rollbacks,
/// notifications), until `stop`.
async fn keep_watch(oncall: Arc<OnCall>, stop: CancellationToken) {
    let interval = oncall.settings().alerts.evaluate_interval;
    loop {
        if let Err(err) = oncall.tick().await {
            tracing::warn!(error = %err, "on-call checks failed; retrying");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The targeted recheck of keys the fleet's proxies wrote concurrently (`key_conflicts`),
/// beside the sweeps: each conflict is claimed (a lease, so instances share them and a dead
/// one's are taken over), rechecked, and settled or raised as an alert.
struct ConflictRechecker {
    old: Database,
    new: Database,
    store: ControlStore,
    options: CompareOptions,
    tables: Vec<ConflictTable>,
    oncall: Arc<OnCall>,
    instance: String,
    lease: Duration,
}

impl ConflictRechecker {
    /// Rechecks conflicts as they are recorded, until `stop`.
    async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            match self
                .store
                .claim_key_conflict(&self.instance, self.lease)
                .await
            {
                Ok(Some(conflict)) => {
                    let checked = tokio::select! {
                        checked = self.check(&conflict) => checked,
                        // The claim expires and another instance (or the next start) rechecks it.
                        () = stop.cancelled() => return,
                    };
                    if let Err(err) = checked {
                        tracing::warn!(error = %err, key = conflict.ordering_key, "cannot recheck a key conflict; it is tried again when its claim expires");
                    }
                }
                Ok(None) => pause(&stop, CONFLICT_POLL).await,
                Err(err) => {
                    tracing::warn!(error = %err, "control store unavailable; retrying");
                    pause(&stop, CONFLICT_POLL).await;
                }
            }
        }
    }

    /// Rechecks one claimed conflict and records what it found.
    async fn check(&self, conflict: &KeyConflict) -> Result<(), RecheckError> {
        let finding = recheck_conflict(
            (&self.old, &self.new),
            &self.options,
            &self.tables,
            conflict,
        )
        .await?;
        let table = finding.table.as_deref();
        let recorded = self
            .store
            .settle_key_conflict(conflict, finding.outcome, table, &finding.detail)
            .await?;
        counter!("tandem_comparator_key_conflicts_total", "outcome" => finding.outcome.as_str())
            .increment(1);
        tracing::info!(
            key = conflict.ordering_key,
            outcome = finding.outcome.as_str(),
            detail = finding.detail,
            "key conflict rechecked"
        );
        if let (true, ConflictOutcome::Diverged, false, Some(table)) =
            (recorded, finding.outcome, finding.unconverged, table)
        {
            self.oncall
                .key_conflict_diverged(table, conflict, &finding.detail)
                .await?;
        }
        Ok(())
    }
}

/// Why a key conflict's recheck did not end: it is tried again once its claim expires.
#[derive(Debug, thiserror::Error)]
enum RecheckError {
    #[error(transparent)]
    Store(#[from] ControlError),
    #[error(transparent)]
    Compare(#[from] CompareError),
}

/// How often the conflict rechecker looks for new conflicts when it has none.
const CONFLICT_POLL: Duration = Duration::from_secs(1);

/// Attempts at acting on a finished sweep (alerts, rollback policies).
const AFTER_SWEEP_ATTEMPTS: u32 = 10;

/// How often an instance looks again when there is no chunk to claim.
const POLL: Duration = Duration::from_millis(500);

/// Sleeps for `duration` or until shutdown.
async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

/// One instance's part in shared sweeps.
struct Sweeper<'a> {
    old: &'a Database,
    new: &'a Database,
    store: &'a ControlStore,
    options: &'a CompareOptions,
    settings: &'a ServiceSettings,
    oncall: &'a OnCall,
    comparer: ChunkComparer,
}

impl Sweeper<'_> {
    /// Plans and starts a sweep; returns its run, or `None` when another instance started
    /// one first or planning failed (recorded as a failed run).
    async fn start(&mut self, shutdown: &CancellationToken) -> Option<i64> {
        let planned = tokio::select! {
            planned = plan_sweep(self.old, self.new, self.options, self.settings.chunk_rows) => planned,
            () = shutdown.cancelled() => return None,
        };
        let (old_source, new_source) = (&self.settings.old_source, &self.settings.new_source);
        let started = match planned {
            Ok(chunks) => {
                let mut tables: Vec<String> =
                    chunks.iter().map(|chunk| chunk.table.clone()).collect();
                tables.dedup();
                let by = &self.settings.instance;
                if let Err(err) = self.oncall.publish_policy(&tables, by).await {
                    tracing::warn!(error = %err, "cannot publish the promotion policy");
                }
                let started = self
                    .store
                    .begin_shared_run(old_source, new_source, &chunks)
                    .await;
                if let Ok(Some(run)) = started {
                    tracing::info!(run, chunks = chunks.len(), "comparator sweep started");
                }
                started
            }
            Err(err) => {
                let reason = err.to_string();
                self.failed(&reason).await;
                match self
                    .store
                    .begin_comparison_run(old_source, new_source)
                    .await
                {
                    Ok(run) => self
                        .store
                        .finish_comparison_run(run, "failed", Some(&reason))
                        .await
                        .map(|()| Some(run)),
                    Err(err) => Err(err),
                }
            }
        };
        match started {
            Ok(started) => started,
            Err(err) => {
                tracing::warn!(error = %err, "comparator sweep could not be recorded; retrying");
                pause(shutdown, POLL).await;
                None
            }
        }
    }

    /// Reports a failed sweep: metrics, log line and an alert.
    async fn failed(&self, reason: &str) {
        SweepFinished::failed(reason);
        if let Err(err) = self.oncall.sweep_failed(reason).await {
            tracing::warn!(error = %err, "cannot raise the failed-sweep alert");
        }
    }

    /// Claims and compares one chunk of `run`; ends the run when every chunk is done; waits
    /// when the other chunks are held by other instances.
    async fn work_on(&mut self, run: &ComparisonRun, shutdown: &CancellationToken) {
        let (store, settings) = (self.store, self.settings);
        let claimed = store
            .claim_sweep_chunk(run.id, &settings.instance, settings.chunk_lease)
            .await;
        let outcome = match claimed {
            Ok(Some(chunk)) => {
                let compared = tokio::select! {
                    compared = self.comparer.compare(
                        (self.old, self.new), store, self.options, &chunk, settings.chunk_lease,
                    ) => Some(compared),
                    () = shutdown.cancelled() => None,
                };
                match compared {
                    Some(compared) => compared.map(drop),
                    // Shutting down: another instance can take the chunk at once.
                    None => store.release_sweep_chunk(&chunk).await,
                }
            }
            Ok(None) => match store.sweep_progress(run.id).await {
                Ok(progress) if progress.finished() => self.finish(run).await,
                Ok(_) => {
                    pause(shutdown, POLL).await;
                    Ok(())
                }
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            tracing::warn!(error = %err, "control store unavailable; retrying");
            pause(shutdown, POLL).await;
        }
    }

    /// Ends `run` when no other instance did first, and reports it.
    async fn finish(&self, run: &ComparisonRun) -> Result<(), ControlError> {
        if let Some(tables) = self.store.finish_shared_run(run.id).await? {
            let elapsed = Timestamp::now()
                .millis()
                .saturating_sub(run.started_at.millis());
            SweepFinished {
                tables: &tables,
                elapsed: Duration::from_millis(u64::try_from(elapsed).unwrap_or(0)),
            }
            .emit();
            // The run has ended: its alerts and rollback policies must not be lost to a
            // passing store error.
            let mut attempts = 0;
            while let Err(err) = self.oncall.after_sweep(run.id, &tables).await {
                attempts += 1;
                if attempts >= AFTER_SWEEP_ATTEMPTS {
                    return Err(err);
                }
                tracing::warn!(error = %err, "acting on the sweep failed; retrying");
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}

/// A sweep ended: records its metrics and its log line together.
struct SweepFinished<'a> {
    tables: &'a [NewTableResult],
    elapsed: Duration,
}

impl SweepFinished<'_> {
    fn failed(reason: &str) {
        counter!("tandem_comparator_sweeps_total", "outcome" => "failed").increment(1);
        tracing::warn!(error = %reason, "comparator sweep failed");
    }

    fn emit(self) {
        histogram!("tandem_comparator_sweep_duration_seconds").record(self.elapsed.as_secs_f64());
        let identical = self.tables.iter().all(|table| table.identical);
        let outcome = if self.tables.iter().any(|table| table.error.is_some()) {
            "incomplete"
        } else if identical {
            "identical"
        } else {
            "divergent"
        };
        counter!("tandem_comparator_sweeps_total", "outcome" => outcome).increment(1);
        for table in self.tables {
            for (kind, rows) in [
                ("missing_in_new", table.missing_in_new),
                ("extra_in_new", table.extra_in_new),
                ("changed", table.changed),
                ("unconverged", table.unconverged),
            ] {
                #[allow(clippy::cast_precision_loss)]
                gauge!("tandem_divergent_rows", "table" => table.table.clone(), "kind" => kind)
                    .set(rows as f64);
            }
        }
        if identical {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64());
            gauge!("tandem_comparator_last_clean_sweep_timestamp_seconds").set(now);
        }
        tracing::info!(
            outcome,
            tables = self.tables.len(),
            seconds = self.elapsed.as_secs_f64(),
            "comparator sweep finished"
        );
    }
}
