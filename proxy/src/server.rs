//! Start-up and shutdown of a proxy: listeners, background tasks and the drain on SIGTERM.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tandem_control::{flush_proxy_counts, AlertCondition, ControlStore, StageWatch};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{admin_router, AdminState};
use crate::config::{JournalFull, ProxyConfig};
use crate::error::ProxyError;
use crate::front_door::{self, connections_within, FrontDoorSettings};
use crate::key_locks::KeyLocks;
use crate::mirror::{MirrorQueue, MirrorSettings};
use crate::mismatch::MismatchRecorder;
use crate::not_mirrored::NotMirrored;
use crate::service::{handle, ProxyState};
use crate::telemetry::{
    describe_metrics, JournalChecked, JournalFleet, JournalOpened, JournalRetentionShort,
    RequestShed, COUNTS,
};
use crate::upstream::Upstreams;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use tandem_journal::{Journal, JournalSettings, MirrorLog, SharedJournal, SharedSettings};
use tower::ServiceBuilder;

/// How often the Prometheus recorder's histograms are maintained.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The addresses a running proxy listens on.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// Client listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// The proxy's service stack: every request goes through [`handle`], which reads as the life
/// of a request (classify → route by stage → primary → mirror or shadow → compare → answer).
pub fn proxy_router(state: Arc<ProxyState>) -> Router {
    let limit = state.config.max_in_flight;
    Router::new().fallback(handle).with_state(state).layer(
        ServiceBuilder::new()
            // Past the limit a request is answered 503 with Retry-After at once, instead of
            // queueing until the process runs out of memory or file descriptors.
            .layer(HandleErrorLayer::new(shed))
            .load_shed()
            // Requests in flight at most (each holds a client and an upstream connection).
            .concurrency_limit(limit),
    )
}

/// The answer to a request shed because too many are in flight.
async fn shed(_: tower::BoxError) -> axum::response::Response {
    RequestShed.emit();
    let body = serde_json::json!({
        "error": "tandem is at its limit of requests in flight; retry shortly",
        "source": "tandem",
    });
    let mut response = (http::StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs a proxy until `shutdown` fires, then drains: stops accepting, finishes in-flight
/// requests and the mirror queue within `shutdown_timeout`, persisting what is left.
///
/// `on_ready` is called once both listeners are bound.
///
/// # Errors
/// When the control store is unreachable or a listener cannot be bound.
pub async fn run(
    config: ProxyConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(BoundAddrs),
) -> Result<(), ProxyError> {
    run_on(config, None, metrics, shutdown, on_ready).await
}

/// [`run`], serving clients on a listener the caller already bound (so no other process can
/// take its port between the caller's choice and the proxy's start); `config.listen` is
/// then only its name in messages.
///
/// # Errors
/// As [`run`].
pub async fn run_on(
    config: ProxyConfig,
    listener: Option<TcpListener>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(BoundAddrs),
) -> Result<(), ProxyError> {
    describe_metrics();
    let open_files = tandem_control::raise_open_files_limit();
    let store = ControlStore::open(&config.control_db).await?;
    let background = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stage = StageWatch::start(
        store.clone(),
        config.stage_poll_interval,
        background.clone(),
        &tracker,
    )
    .await?;
    tracker.spawn(tandem_control::follow_applied_stage(
        stage.clone(),
        background.clone(),
    ));
    tracker.spawn(maintain_metrics(metrics.clone(), background.clone()));
    tracker.spawn(flush_proxy_counts(
        store.clone(),
        &COUNTS,
        config.stats_interval,
        background.clone(),
    ));

    let upstreams = Upstreams::from_config(&config);
    let recorder = MismatchRecorder::new(config.compare_ignore.clone(), store.clone());
    let mirror_abort = CancellationToken::new();
    let mirror_tracker = TaskTracker::new();
    let (journal, unsettled) = open_journal(&config).await?;
    JournalOpened {
        max_bytes: config.journal_max_bytes,
        policy: config.journal_full,
        shared: journal.shared(),
    }
    .emit();
    let mirror = MirrorQueue::start(
        upstreams.clone(),
        stage.clone(),
        store.clone(),
        recorder.clone(),
        MirrorSettings {
            workers: config.mirror_workers,
            capacity: config.mirror_queue_capacity,
            attempts: config.mirror_attempts,
            retry_backoff: config.mirror_retry_backoff,
            journal: Arc::clone(&journal),
            // Every instance applies a change within two polls of the stage (one with a
            // PostgreSQL store's notification), and a write it began before then gets its
            // answer within the side's timeout.
            cutover_grace: config.stage_poll_interval * 2
                + config.old_timeout.max(config.new_timeout),
        },
        &mirror_tracker,
        &mirror_abort,
    )
    .await?;
    // What a crash left undelivered goes first, in the order it was accepted.
    mirror.resume(unsettled).await;
    tracker.spawn(mirror.publish_summaries(
        journal_name(&config),
        config.stats_interval,
        background.clone(),
    ));
    // Records of writes not mirrored: on disk before their answers, shipped to the store by
    // a task of their own (a previous run's unshipped ones first).
    let not_mirrored = NotMirrored::open(&config.journal_dir, config.journal_fsync).await?;
    let stop_shipping = CancellationToken::new();
    let mut shipper = tokio::spawn(
        not_mirrored
            .clone()
            .ship(store.clone(), stop_shipping.clone()),
    );
    if !config.auto_replay_interval.is_zero() {
        // A claim must outlive the slowest send of one copy.
        let lease = config.old_timeout.max(config.new_timeout) * 3;
        tracker.spawn(crate::replay::auto_replay(
            store.clone(),
            upstreams.clone(),
            (config.auto_replay_interval, lease),
            background.clone(),
        ));
    }
    let checkpoints = CancellationToken::new();
    // The alert comes at 90% of the journal, and at the latest when writes with the largest
    // body (and generous headers) start meeting it full.
    let alert_below = (config.journal_max_bytes / 10).max(
        u64::try_from(config.max_body_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(LARGEST_HEADERS),
    );
    tracker.spawn(checkpoint_journal(
        Arc::clone(&journal),
        store.clone(),
        (config.journal_full, alert_below),
        checkpoints.clone(),
    ));

    let proxy_listener = match listener {
        Some(listener) => listener,
        None => bind(config.listen).await?,
    };
    let admin_listener = bind(config.admin_listen).await?;
    let addrs = BoundAddrs {
        proxy: local_addr(&proxy_listener, config.listen)?,
        admin: local_addr(&admin_listener, config.admin_listen)?,
    };
    let shutdown_timeout = config.shutdown_timeout;
    let front_door = front_door_settings(&config, open_files);
    let admin = admin_router(AdminState {
        store: store.clone(),
        stage: stage.clone(),
        metrics,
        token: config.admin_token.as_deref().map(Arc::from),
        upstreams: upstreams.clone(),
    });
    let state = Arc::new(ProxyState {
        shadow_permits: Arc::new(Semaphore::new(config.shadow_read_concurrency)),
        config,
        stage,
        upstreams,
        mirror,
        key_locks: KeyLocks::default(),
        recorder,
        shadow_reads: TaskTracker::new(),
        writes: TaskTracker::new(),
        store: store.clone(),
        not_mirrored: not_mirrored.clone(),
    });
    let mut proxy_server = tokio::spawn(front_door::serve(
        proxy_listener,
        proxy_router(Arc::clone(&state)),
        front_door,
        shutdown.clone(),
    ));
    let admin_server = axum::serve(admin_listener, admin)
        .with_graceful_shutdown(background.clone().cancelled_owned())
        .into_future();
    let admin_task = tokio::spawn(admin_server);
    tracing::info!(
        proxy = %addrs.proxy,
        admin = %addrs.admin,
        max_connections = front_door.max_connections,
        store = %store.redacted_url(),
        "tandem proxy listening"
    );
    on_ready(addrs);

    // The whole drain shares one deadline, counted from the signal.
    shutdown.cancelled().await;
    let deadline = Instant::now() + shutdown_timeout;
    if tokio::time::timeout_at(deadline, &mut proxy_server)
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with client connections still open");
        proxy_server.abort();
    }
    tracing::info!("draining: no longer accepting; finishing writes and the mirror queue");
    // A write in flight is bounded by its side's timeouts; it may end past the deadline, and
    // its copy is then persisted (the queue is closed), never dropped.
    state.writes.close();
    state.writes.wait().await;
    // Every not-mirrored record is in the gap log now: one last try at the store, and what
    // it does not take is shipped at the next start.
    stop_shipping.cancel();
    if tokio::time::timeout_at(deadline, &mut shipper)
        .await
        .is_err()
    {
        shipper.abort();
        tracing::warn!("drain deadline reached; not-mirrored records left in the gap log are shipped at the next start");
    }
    not_mirrored.close().await;
    state.mirror.close();
    mirror_tracker.close();
    if tokio::time::timeout_at(deadline, mirror_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            queued = state.mirror.depth(),
            "drain deadline reached; persisting the rest of the mirror queue for replay"
        );
        mirror_abort.cancel();
        mirror_tracker.wait().await;
    }
    // The workers ended: no conflict is found any more, those queued go to the store.
    let unrecorded = state.mirror.finish_conflicts(deadline).await;
    if unrecorded > 0 {
        tracing::error!(
            unrecorded,
            "drain deadline reached; key conflicts still waiting for the control store are not recorded"
        );
    }
    checkpoints.cancel();
    if let Err(err) = journal.checkpoint().await {
        tracing::error!(error = %err, "cannot checkpoint the mirror journal at shutdown");
    }
    if let Err(err) = journal.close().await {
        tracing::error!(error = %err, "cannot close the mirror journal");
    }
    state.shadow_reads.close();
    if tokio::time::timeout_at(deadline, state.shadow_reads.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached; abandoning shadow reads in flight");
    }
    background.cancel();
    tracker.close();
    tracker.wait().await;
    let admin_abort = admin_task.abort_handle();
    match tokio::time::timeout_at(deadline, admin_task).await {
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "admin listener ended with an error"),
        Err(_) => admin_abort.abort(),
        Ok(_) => {}
    }
    store.close().await;
    tracing::info!("tandem proxy stopped");
    Ok(())
}

/// Opens the mirror journal: the fleet's shared one when `journal` names a NATS server, else
/// the local one, with the copies a previous run left undelivered in it.
async fn open_journal(
    config: &ProxyConfig,
) -> Result<(Arc<dyn MirrorLog>, Vec<tandem_journal::Record>), ProxyError> {
    if let Some(shared) = &config.shared_journal {
        let request_timeout = config.old_timeout.max(config.new_timeout);
        if let Some(needed) = retention_too_short(shared.retention, request_timeout) {
            JournalRetentionShort {
                retention: shared.retention,
                lease: SharedSettings::DEFAULT_LEASE,
                request_timeout,
                needed,
            }
            .emit();
        }
        let journal = SharedJournal::open(SharedSettings {
            url: shared.url.clone(),
            stream: shared.stream.clone(),
            replicas: shared.replicas,
            retention: shared.retention,
            max_bytes: config.journal_max_bytes,
            partitions: SharedSettings::DEFAULT_PARTITIONS,
            lease: SharedSettings::DEFAULT_LEASE,
            instance: tandem_control::instance_name(),
            // A copy goes to either side (the new one, or the old after a cutover).
            request_timeout,
        })
        .await?;
        // Whatever is undelivered in the stream is read by the partitions' owners.
        return Ok((Arc::new(journal), Vec::new()));
    }
    let (journal, unsettled) = Journal::open(JournalSettings {
        fsync: config.journal_fsync,
        max_bytes: config.journal_max_bytes,
        ..JournalSettings::new(&config.journal_dir)
    })
    .await?;
    Ok((Arc::new(journal), unsettled))
}

/// The shortest shared-journal retention a crash takeover leaves room for, when `retention`
/// (zero: none) is shorter: a partition taken from a holder whose lease expired is read only
/// the lease plus the holder's longest request (`request_timeout`) after that holder's last
/// renewal, so every copy it held would be past the retention by then.
fn retention_too_short(retention: Duration, request_timeout: Duration) -> Option<Duration> {
    let needed = SharedSettings::DEFAULT_LEASE.saturating_add(request_timeout);
    (!retention.is_zero() && retention < needed).then_some(needed)
}

/// The journal's name in the store's summaries: `HOST:DIRECTORY` for a local journal (a
/// restart on the same one takes its row over), the stream for the fleet's shared one (its
/// server named without credentials: a token, `nats://TOKEN@HOST`, is no password that
/// `redact_url` would mask).
fn journal_name(config: &ProxyConfig) -> String {
    match &config.shared_journal {
        Some(shared) => shared_journal_name(&shared.url, &shared.stream),
        None => format!(
            "{}:{}",
            tandem_control::host_name(),
            std::fs::canonicalize(&config.journal_dir)
                .unwrap_or_else(|_| config.journal_dir.clone())
                .display()
        ),
    }
}

fn shared_journal_name(url: &str, stream: &str) -> String {
    format!("{}#{stream}", tandem_journal::without_credentials(url))
}

/// The client listener's limits: `max_connections` as configured, or what the limit of open
/// files leaves (a configured one the limit cannot hold is said at start).
fn front_door_settings(config: &ProxyConfig, open_files: Option<u64>) -> FrontDoorSettings {
    let fits = open_files.map(|limit| connections_within(limit, config.max_in_flight));
    let max_connections = match (config.max_connections, fits) {
        (Some(configured), Some(fits)) if configured > fits => {
            tracing::warn!(
                max_connections = configured,
                open_files_limit = open_files,
                "max_connections is more than the limit of open files leaves; the process may \
                 run out of descriptors before it refuses connections"
            );
            configured
        }
        (Some(configured), _) => configured,
        (None, Some(fits)) => fits,
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    };
    FrontDoorSettings {
        max_connections,
        header_read_timeout: config.header_read_timeout,
    }
}

/// Client connections at most when neither the configuration nor the limit of open files says.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    listener
        .local_addr()
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// Persists what was delivered every second (so a restart redelivers little), publishes the
/// journal's size and backlog, and raises an alert while it is nearly full.
async fn checkpoint_journal(
    journal: Arc<dyn MirrorLog>,
    store: ControlStore,
    (policy, alert_below): (JournalFull, u64),
    stop: CancellationToken,
) {
    let mut alerted: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(JOURNAL_CHECKPOINT) => {}
        }
        if let Err(err) = journal.checkpoint().await {
            tracing::error!(error = %err, "cannot checkpoint the mirror journal");
        }
        JournalChecked(journal.stats()).emit();
        if let Some(fleet) = journal.fleet() {
            JournalFleet(fleet).emit();
        }
        if journal.room() >= alert_below {
            alerted = None;
        } else if alerted.is_none_or(|at| at.elapsed() >= JOURNAL_ALERT_EVERY) {
            alerted = Some(Instant::now());
            raise_journal_alert(&store, journal.as_ref(), policy).await;
        }
    }
}

/// The most header bytes a request brings (hyper's read buffer bounds them well below this).
const LARGEST_HEADERS: u64 = 512 * 1024;

/// How often a nearly full journal's alert is raised again (its occurrences and size updated).
const JOURNAL_ALERT_EVERY: Duration = Duration::from_secs(30);

/// Raises (or updates) the alert of a nearly full journal.
async fn raise_journal_alert(store: &ControlStore, journal: &dyn MirrorLog, policy: JournalFull) {
    let stats = journal.stats();
    let then = match policy {
        JournalFull::Refuse => "writes are refused with 503",
        JournalFull::Record => "writes are recorded as not mirrored",
    };
    let condition = AlertCondition {
        source: "proxy".to_owned(),
        subject: tandem_control::instance_name(),
        kind: "journal_full".to_owned(),
        severity: "critical".to_owned(),
        summary: format!(
            "the mirror journal holds {} of {} bytes ({} copies not delivered); once full, {then}: \
             the other side (or the control store) is not keeping up",
            stats.bytes,
            journal.max_bytes(),
            stats.unsettled
        ),
        measured: i64::try_from(stats.bytes).unwrap_or(i64::MAX),
        examples: Vec::new(),
    };
    match tokio::time::timeout(Duration::from_secs(2), store.raise_alert(&condition)).await {
        Ok(Ok(_)) => tracing::error!(bytes = stats.bytes, "the mirror journal is nearly full"),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "the mirror journal is nearly full, and the alert cannot be raised")
        }
        Err(_) => tracing::error!(
            "the mirror journal is nearly full, and the store did not take the alert"
        ),
    }
}

/// How often the journal's delivered positions are persisted.
const JOURNAL_CHECKPOINT: Duration = Duration::from_secs(1);

async fn maintain_metrics(metrics: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(METRICS_UPKEEP) => metrics.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_shorter_than_a_takeover_is_named() {
        let timeout = Duration::from_secs(10);
        assert_eq!(
            retention_too_short(Duration::from_secs(15), timeout),
            Some(Duration::from_secs(16))
        );
        assert_eq!(retention_too_short(Duration::from_secs(16), timeout), None);
        assert_eq!(
            retention_too_short(Duration::ZERO, timeout),
            None,
            "none kept"
        );
    }

    #[test]
    fn a_shared_journal_is_named_without_its_token_or_password() {
        assert_eq!(
            shared_journal_name("nats://s3cr3t@10.0.0.5:4222", "TANDEM"),
            "nats://10.0.0.5:4222#TANDEM"
        );
        assert_eq!(
            shared_journal_name("nats://user:pass@10.0.0.5:4222", "TANDEM"),
            "nats://10.0.0.5:4222#TANDEM"
        );
    }
}
