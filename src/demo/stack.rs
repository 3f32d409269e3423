//! The processes of the demo, run as tasks of this one: two orders services on SQLite files, a
//! proxy, and the comparator service (which serves the dashboard).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tandem_comparator::oncall::{
    AlertSettings, OnCallSettings, PromotionSettings, RollbackCondition, RollbackPolicy,
};
use tandem_comparator::{
    backfill, Access, BackfillOptions, BackfillTableReport, BindValue, ComparatorService,
    CompareOptions, Database, ServiceSettings, TablePair,
};
use tandem_control::{ControlStore, Side, Stage};
use tandem_loadtest::orders::{orders_router, OrderStore};
use tandem_proxy::{ProxyArgs, ProxyConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use super::STEP_TIMEOUT;
use crate::cli::DemoArgs;

/// The old side's history: orders 1000 to 2999, which the traffic never writes.
const HISTORY: &str = "WITH RECURSIVE h(id) AS (SELECT 1000 UNION ALL SELECT id + 1 FROM h \
     WHERE id < 2999) INSERT INTO orders (id, customer, amount, status, note) \
     SELECT id, 'customer-' || id, (id % 500) || '.75', 'delivered', 'history' FROM h";

/// The running parts.
pub(super) struct Stack {
    pub(super) store: ControlStore,
    pub(super) old_db: Database,
    pub(super) new_db: Database,
    pub(super) compare_options: CompareOptions,
    pub(super) old_url: String,
    pub(super) new_url: String,
    pub(super) proxy_url: String,
    pub(super) dashboard_url: String,
    admin_url: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts everything; the listeners of `args` are bound first, so a port in use is a clear
    /// error before anything runs.
    pub(super) async fn start(
        args: &DemoArgs,
        dir: &Path,
        stop: CancellationToken,
    ) -> anyhow::Result<Stack> {
        let bind = |address: SocketAddr, what: &'static str| async move {
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for the {what} (port in use? pick another with --{what}-listen)"))
        };
        let dashboard = bind(args.listen, "dashboard").await?;
        let proxy = bind(args.proxy_listen, "proxy").await?;
        let (dashboard_addr, proxy_addr) = (dashboard.local_addr()?, proxy.local_addr()?);

        let sqlite = |name: &str| format!("sqlite://{}", dir.join(name).display());
        let mut tasks = Vec::new();
        let mut service_urls = Vec::new();
        for name in ["old.db", "new.db"] {
            let store = OrderStore::open(&sqlite(name))
                .await
                .with_context(|| format!("cannot open {name}"))?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            service_urls.push(format!("http://{}", listener.local_addr()?));
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, orders_router(store.clone()))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(err) = served {
                    tracing::warn!(error = %err, "orders service stopped");
                }
                store.close().await;
            }));
        }
        let (old_url, new_url) = (service_urls[0].clone(), service_urls[1].clone());
        let control_db = sqlite("control.db");
        let store = ControlStore::open(&control_db).await?;
        let metrics = tandem_proxy::install_metrics_recorder()?;

        let config = ProxyConfig::load(&ProxyArgs {
            listen: Some(proxy_addr),
            admin_listen: Some("127.0.0.1:0".parse()?),
            old: Some(old_url.clone()),
            new: Some(new_url.clone()),
            control_db: Some(control_db.clone()),
            stats_interval: Some(Duration::from_secs(1)),
            ..ProxyArgs::default()
        })?;
        let (ready, addresses) = tokio::sync::oneshot::channel();
        let proxy_metrics = metrics.clone();
        let proxy_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let run =
                tandem_proxy::run_on(config, Some(proxy), proxy_metrics, proxy_stop, |addrs| {
                    let _ = ready.send(addrs);
                });
            if let Err(err) = run.await {
                tracing::error!(error = %err, "the demo proxy stopped");
            }
        }));
        let addrs = addresses
            .await
            .context("the proxy did not start (see the log above)")?;

        let old_db = Database::connect(Side::Old, &sqlite("old.db"), 2, Access::ReadWrite).await?;
        let new_db = Database::connect(Side::New, &sqlite("new.db"), 2, Access::ReadWrite).await?;
        // Years of orders written before tandem came: on the old side only, for the backfill.
        old_db
            .execute_in_transaction(&[(HISTORY.to_owned(), Vec::new())])
            .await
            .context("cannot write the history to old.db")?;
        let compare_options = CompareOptions {
            tables: vec![TablePair::parse("orders")],
            rechecks: 2,
            recheck_delay: Duration::from_millis(300),
            ..CompareOptions::default()
        };
        let service = ComparatorService {
            old: old_db.clone(),
            new: new_db.clone(),
            store: store.clone(),
            options: compare_options.clone(),
            settings: ServiceSettings {
                listen: dashboard_addr,
                interval: Duration::from_millis(500),
                sweeps: None,
                old_source: "old.db".to_owned(),
                new_source: "new.db".to_owned(),
                instance: "demo".to_owned(),
                chunk_rows: 1_000_000,
                chunk_lease: Duration::from_secs(60),
                oncall: OnCallSettings {
                    alerts: AlertSettings {
                        evaluate_interval: Duration::from_millis(250),
                        ..AlertSettings::default()
                    },
                    promotion: PromotionSettings {
                        min_clean: Duration::from_secs(9),
                    },
                    policies: vec![RollbackPolicy {
                        name: "demo-drift".to_owned(),
                        condition: RollbackCondition::DivergentRows {
                            table: None,
                            above: 0,
                        },
                        target: Stage::DualWrite,
                        dry_run: false,
                        cooldown: Duration::from_secs(3600),
                    }],
                    admin_token: None,
                },
            },
            metrics,
        };
        let (ready, bound) = tokio::sync::oneshot::channel();
        let comparator_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let run = service.run_on(Some(dashboard), comparator_stop, |address| {
                let _ = ready.send(address);
            });
            if let Err(err) = run.await {
                tracing::error!(error = %err, "the demo comparator stopped");
            }
        }));
        let dashboard_addr = bound
            .await
            .context("the comparator did not start (see the log above)")?;
        Ok(Stack {
            store,
            old_db,
            new_db,
            compare_options,
            old_url,
            new_url,
            proxy_url: format!("http://{}", addrs.proxy),
            dashboard_url: format!("http://{dashboard_addr}/"),
            admin_url: format!("http://{}", addrs.admin),
            stop,
            tasks,
        })
    }

    /// Copies the history of the old side to the new one while dual-write runs, as
    /// `tandem backfill` does, checkpointed in the demo's control store.
    pub(super) async fn backfill(&self) -> anyhow::Result<BackfillTableReport> {
        let options = BackfillOptions {
            chunk_rows: 500,
            threads: 2,
            attempts: 3,
            dry_run: false,
            restart: false,
            instance: "demo".to_owned(),
            lease: Duration::from_secs(60),
            sources: "old.db -> new.db".to_owned(),
            stop: self.stop.child_token(),
            progress_every: Duration::from_secs(1),
            progress: None,
            chunk_retries: 3,
            retry_delay: Duration::from_millis(200),
            create_schema: false,
        };
        let report = backfill(
            (&self.old_db, &self.new_db),
            Some(&self.store),
            &self.compare_options,
            &options,
        )
        .await
        .context("the backfill failed")?;
        report
            .tables
            .into_iter()
            .next()
            .context("the backfill copied no table")
    }

    /// Changes `ids` on the new side directly (as a bug or a manual fix would).
    pub(super) async fn corrupt_new(&self, ids: &[i64]) -> anyhow::Result<()> {
        let statements: Vec<(String, Vec<BindValue>)> = ids
            .iter()
            .map(|id| {
                (
                    "UPDATE orders SET amount = amount + 1000, note = 'edited behind the proxy' WHERE id = $1"
                        .to_owned(),
                    vec![BindValue::Int(*id)],
                )
            })
            .collect();
        self.new_db
            .execute_in_transaction(&statements)
            .await
            .context("cannot change the new database")
    }

    /// Waits until the proxy routes by `stage`.
    pub(super) async fn wait_for_proxy_stage(&self, stage: Stage) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let url = format!("{}/admin/stage", self.admin_url);
        loop {
            let view: serde_json::Value = reqwest::get(&url).await?.json().await?;
            if view["applied"]["stage"] == stage.as_str() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the proxy never applied {stage}");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every part and waits for them; returns the writes the proxy mirrored during
    /// the last `period` (read after its final flush).
    pub(super) async fn stop(self, period: Duration) -> i64 {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let mirrored = self
            .store
            .proxy_counts(period + Duration::from_secs(60))
            .await
            .map(|counts| counts.mirrored)
            .unwrap_or_default();
        self.old_db.close().await;
        self.new_db.close().await;
        self.store.close().await;
        mirrored
    }
}
