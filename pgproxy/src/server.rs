//! The listener: accepts clients and serves each session on its own task until SIGTERM, then
//! lets open sessions finish for a while before closing them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tandem_control::{flush_proxy_counts, ControlStore, Side, StageWatch, SQL_ORDERING_KEY};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{connect, ServerAddress};
use crate::classify::Classifier;
use crate::error::PgProxyError;
use crate::event_loops::EventLoops;
use crate::mirror::Sequencer;
pub use crate::pool::PoolSettings;
use crate::pool::ServerPool;
use crate::sampling::ReadSample;
use crate::session::{serve, Shared};
use crate::telemetry::{describe_metrics, COUNTS};
use crate::wal_mirror::{WalMirror, WalMirrorSettings};

/// How the PostgreSQL proxy runs.
#[derive(Debug, Clone)]
pub struct PgProxySettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The old side's `postgres://` URL.
    pub old: String,
    /// The new side's `postgres://` URL.
    pub new: String,
    /// The control store.
    pub control_db: String,
    /// How often the stage is re-read.
    pub stage_poll_interval: Duration,
    /// How long open sessions may go on after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where `/healthz` and `/metrics` are served, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// Users clients log in as (name → password, checked with SCRAM-SHA-256); when empty,
    /// the old URL's user with that URL's password.
    pub users: HashMap<String, String>,
    /// How many idle server connections are kept, and for how long.
    pub pool: PoolSettings,
    /// How often the counts are flushed to the control store.
    pub stats_interval: Duration,
    /// Tells reads from writes (the built-in rules, with the config file's overrides).
    pub classifier: Classifier,
    /// How long an open transaction may go on once the stage made the other side
    /// authoritative, before its session is ended.
    pub stage_grace: Duration,
    /// Databases served besides the URLs' own, by the same name on both sides.
    pub databases: Vec<String>,
    /// How long a client may take to log in.
    pub login_timeout: Duration,
    /// The most client connections at once; more are told 53300.
    pub max_client_connections: usize,
    /// How many threads serve sessions, each its own event loop (`event_loops.rs`).
    pub session_threads: usize,
    /// The most transactions owed to the other side; past it, transaction ends wait.
    pub max_mirror_backlog: u64,
    /// The fraction of read-only transactions compared on the other side in shadow and live.
    pub compare_reads: ReadSample,
    /// The write-ahead-log capture (`--capture wal`); `None` re-runs statements instead.
    pub wal: Option<WalMirrorSettings>,
}

/// What `/readyz` reports: both servers reached once, and not draining.
#[derive(Debug, Default)]
struct Readiness {
    reached: [AtomicBool; 2],
    draining: AtomicBool,
}

/// `/healthz`, `/readyz` and `/metrics`.
fn admin_router(
    metrics: PrometheusHandle,
    stage: StageWatch,
    readiness: Arc<Readiness>,
) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let (stage, readiness) = (stage.clone(), Arc::clone(&readiness));
                async move {
                    use axum::http::StatusCode;
                    let unready = if readiness.draining.load(Ordering::SeqCst) {
                        Some("draining")
                    } else if !stage.store_reachable() {
                        Some("control store unreachable")
                    } else if !readiness.reached[0].load(Ordering::SeqCst) {
                        Some("the old server has not been reached")
                    } else if !readiness.reached[1].load(Ordering::SeqCst) {
                        Some("the new server has not been reached")
                    } else {
                        None
                    };
                    match unready {
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        None => (StatusCode::OK, "ready\n".to_owned()),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

/// Logs in to each server once (retrying every second until it succeeds), for `/readyz`.
async fn reach_servers(
    servers: [ServerAddress; 2],
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        for (server, reached) in servers.iter().zip(&readiness.reached) {
            if reached.load(Ordering::SeqCst) {
                continue;
            }
            match connect(server, &[]).await {
                Ok(backend) => {
                    reached.store(true, Ordering::SeqCst);
                    crate::pool::close(backend).await;
                }
                Err(err) => tracing::warn!(side = %server.side, error = %err, "server not reached"),
            }
        }
        if readiness
            .reached
            .iter()
            .all(|reached| reached.load(Ordering::SeqCst))
        {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The addresses the proxy listens on.
#[derive(Debug, Clone, Copy)]
pub struct PgBoundAddrs {
    /// Where clients connect.
    pub proxy: SocketAddr,
    /// The admin listener, when one was asked for.
    pub admin: Option<SocketAddr>,
}

/// Serves clients until `shutdown` (and `/healthz`, `/metrics` from `metrics` on the admin
/// listener); `on_ready` gets the bound addresses.
///
/// # Errors
/// When a URL is unusable, the control store is unreachable or a listener cannot be bound.
pub async fn run(
    settings: PgProxySettings,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(PgBoundAddrs),
) -> Result<(), PgProxyError> {
    describe_metrics();
    if let Some(limit) = tandem_control::raise_open_files_limit() {
        // Each client session holds its own descriptor, its server's and its mirror's.
        let needed = settings.max_client_connections.saturating_mul(3);
        if u64::try_from(needed).is_ok_and(|needed| needed > limit) {
            tracing::warn!(
                max_client_connections = settings.max_client_connections,
                open_files_limit = limit,
                "max_client_connections may need more descriptors than the limit of open files"
            );
        }
    }
    let old = ServerAddress::parse(Side::Old, &settings.old)?;
    let new = ServerAddress::parse(Side::New, &settings.new)?;
    let store = ControlStore::open(&settings.control_db).await?;
    let background = CancellationToken::new();
    let watchers = TaskTracker::new();
    let stage = StageWatch::start(
        store.clone(),
        settings.stage_poll_interval,
        background.clone(),
        &watchers,
    )
    .await?;
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| PgProxyError::Listen {
                address: settings.listen,
                source,
            })?;
    let readiness = Arc::new(Readiness::default());
    let admin = match settings.admin_listen {
        Some(address) => {
            let admin = TcpListener::bind(address)
                .await
                .map_err(|source| PgProxyError::Listen { address, source })?;
            let bound = admin.local_addr()?;
            let router = admin_router(metrics, stage.clone(), Arc::clone(&readiness));
            // Up until the drain has ended, so the drain can be watched.
            let stop = background.clone();
            watchers.spawn(async move {
                let served = axum::serve(admin, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(err) = served {
                    tracing::warn!(error = %err, "the admin listener stopped");
                }
            });
            Some(bound)
        }
        None => None,
    };
    watchers.spawn(reach_servers(
        [old.clone(), new.clone()],
        Arc::clone(&readiness),
        background.clone(),
    ));
    watchers.spawn(tandem_control::follow_applied_stage(
        stage.clone(),
        background.clone(),
    ));
    watchers.spawn(flush_proxy_counts(
        store.clone(),
        &COUNTS,
        settings.stats_interval,
        background.clone(),
    ));
    let wal = match settings.wal.clone() {
        Some(wal) => {
            let mirror = WalMirror::new(wal, store.clone());
            mirror
                .preflight(stage.current().stage)
                .await
                .map_err(|err| PgProxyError::Wal(Box::new(err)))?;
            watchers.spawn(Arc::clone(&mirror).run(stage.clone(), background.clone()));
            Some(mirror)
        }
        None => None,
    };
    // Declared before what the sessions use, so that it is dropped last: a server connection
    // made on one of its threads is served by that thread's runtime until the pool closes it.
    let session_loops = EventLoops::start(settings.session_threads)?;
    let pool = Arc::new(ServerPool::new(settings.pool));
    let (reaper, stop) = (Arc::clone(&pool), background.clone());
    watchers.spawn(async move {
        let every = (settings.pool.idle_timeout / 2).max(Duration::from_millis(10));
        let mut every = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => reaper.close_expired().await,
            }
        }
    });
    on_ready(PgBoundAddrs {
        proxy: listener.local_addr()?,
        admin,
    });
    let shared = Arc::new(Shared {
        old,
        new,
        stage,
        users: settings.users.clone(),
        databases: settings.databases.clone(),
        login_timeout: settings.login_timeout,
        classifier: Arc::new(settings.classifier),
        stage_grace: settings.stage_grace,
        compare_reads: settings.compare_reads,
        sequencer: Arc::new(Sequencer::new(
            settings.max_mirror_backlog,
            store
                .has_pending_failure(Side::Old, SQL_ORDERING_KEY)
                .await?
                || store
                    .has_pending_failure(Side::New, SQL_ORDERING_KEY)
                    .await?,
        )),
        store,
        cancel_keys: Mutex::new(HashMap::new()),
        pool: Arc::clone(&pool),
        mirrors: TaskTracker::new(),
        stop_mirroring: CancellationToken::new(),
        wal,
    });
    let sessions = TaskTracker::new();
    let closing = CancellationToken::new();
    let clients = Arc::new(tokio::sync::Semaphore::new(settings.max_client_connections));
    loop {
        let (client, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    continue;
                }
            },
        };
        // Handed to a session thread, whose runtime it is registered with from then on.
        let client = match client.into_std() {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%peer, error = %err, "cannot hand a connection to a session thread");
                continue;
            }
        };
        let (shared, closing) = (Arc::clone(&shared), closing.clone());
        // Held for the session's life; a client past the limit is told so and let go.
        let admission = Arc::clone(&clients)
            .try_acquire_owned()
            .ok()
            .map(Admission::new);
        session_loops.spawn(sessions.track_future(async move {
            let admitted = admission.is_some();
            let client = match tokio::net::TcpStream::from_std(client) {
                Ok(client) => client,
                Err(err) => {
                    tracing::warn!(%peer, error = %err, "cannot serve a connection on its session thread");
                    return;
                }
            };
            tokio::select! {
                served = serve(client, shared, admitted) => {
                    if let Err(err) = served {
                        tracing::debug!(%peer, error = %err, "session ended with an error");
                    }
                }
                () = closing.cancelled() => {}
            }
        }));
    }
    drop(listener);
    readiness.draining.store(true, Ordering::SeqCst);
    // One deadline for both: open sessions finish, then their transactions reach the other
    // side; what is left at the deadline is kept for `tandem pg-replay`.
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    sessions.close();
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("closing the sessions still open after the shutdown timeout");
        closing.cancel();
        sessions.wait().await;
    }
    shared.mirrors.close();
    if tokio::time::timeout_at(deadline, shared.mirrors.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "keeping the transactions not yet applied on the other side for tandem pg-replay"
        );
        shared.stop_mirroring.cancel();
        shared.mirrors.wait().await;
    }
    pool.close_all().await;
    background.cancel();
    watchers.close();
    watchers.wait().await;
    Ok(())
}

/// A client connection counted against `max_client_connections` (and in
/// `tandem_pg_client_connections`) until it is dropped with its session.
struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Admission {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics::gauge!("tandem_pg_client_connections").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        metrics::gauge!("tandem_pg_client_connections").decrement(1.0);
    }
}
