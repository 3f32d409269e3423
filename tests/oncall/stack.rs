//! A real tandem stack under some traffic (two orders services, the HTTP proxy on its local
//! journal and one on a shared journal in NATS JetStream, the PostgreSQL proxy re-running
//! statements and one capturing the write-ahead log, the comparator, a backfill), scraped by a
//! real Prometheus that also evaluates the shipped rules;
//! every series the rules and the Grafana dashboard query must exist with the labels they use,
//! so a renamed metric or label fails here.

use std::collections::BTreeSet;
use std::time::Duration;

use regex::Regex;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use tandem_testkit::{ChildProcess, PostgresDb, ScratchStream, NATS};
use tokio::time::{sleep, Instant};

use crate::long_running::{backfill, wal_capture, CaptureSlots};
use crate::services::{tandem_ok, Prometheus, Side, TANDEM};
use crate::tools::repo_file;

/// Longest wait for the stack to show something it should show promptly.
const PATIENCE: Duration = Duration::from_secs(60);

/// The Grafana variable a dashboard query's range stands for, and what the test puts there.
const RATE_INTERVAL: (&str, &str) = ("$__rate_interval", "1m");

/// Every `expr` of the dashboard's panels (rows' panels included).
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/tandem.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<Value> = dashboard["panels"].as_array().unwrap().clone();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested.iter().cloned());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push(expr.replace(RATE_INTERVAL.0, RATE_INTERVAL.1));
        }
    }
    queries
}

/// The metric names a query reads (tandem's, and `up`), and the label names it uses
/// (grouping, matchers).
fn metrics_and_labels(query: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let names = Regex::new(r"\b(tandem_[a-z0-9_]+|up)\b").unwrap();
    let groupings = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    let matchers = Regex::new(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\x22").unwrap();
    let metrics = names
        .captures_iter(query)
        .map(|found| found[1].to_owned())
        .collect();
    let mut labels: BTreeSet<String> = groupings
        .captures_iter(query)
        .flat_map(|found| {
            found[1]
                .split(',')
                .map(|label| label.trim().to_owned())
                .filter(|label| !label.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    labels.extend(
        matchers
            .captures_iter(query)
            .map(|found| found[1].to_owned()),
    );
    (metrics, labels)
}

/// What is missing for one query: metrics with no series, labels on none of its metrics.
async fn missing(prometheus: &Prometheus, query: &str) -> Vec<String> {
    let (metrics, labels) = metrics_and_labels(query);
    let mut found_labels = BTreeSet::new();
    let mut missing = Vec::new();
    for metric in &metrics {
        let series = prometheus.series(metric).await;
        if series.is_empty() {
            missing.push(format!("no series {metric}"));
        }
        for one in &series {
            found_labels.extend(one.as_object().unwrap().keys().cloned());
        }
    }
    for label in labels.difference(&found_labels) {
        missing.push(format!("no label {label} on {metrics:?}"));
    }
    missing
}

/// The orders services, the HTTP proxy with a write kept and replayed, a second HTTP proxy on
/// a shared journal (whose partitions it then all delivers), the PostgreSQL proxy with a
/// mirrored transaction, a PostgreSQL proxy capturing the log with a captured
/// transaction applied, the comparator with a confirmed drift, and a backfill part way, all on
/// one control store in `shadow`.
struct Stack {
    proxy_admin: String,
    shared_admin: String,
    pg_admin: String,
    wal_admin: String,
    comparator: String,
    backfill: String,
    // Dropped in this order: the processes, then the stream, the capture's slots, then the
    // databases.
    _processes: Vec<ChildProcess>,
    _stream: ScratchStream,
    _slots: CaptureSlots,
    _databases: Vec<PostgresDb>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Stack {
    #[allow(clippy::too_many_lines)] // one story: the stack is started and driven in order
    async fn start() -> Stack {
        let control_db = PostgresDb::create("tandem_oncall_control").await;
        let control = control_db.url.clone();
        let (old, new) = (Side::start(), Side::start());
        let journal = tempfile::tempdir().unwrap();
        let (proxy, line) = ChildProcess::start(
            std::path::Path::new(TANDEM),
            &[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--old",
                &old.url,
                "--new",
                &new.url,
                "--control-db",
                &control,
                "--journal-dir",
                journal.path().to_str().unwrap(),
                "--mirror-attempts",
                "1",
                "--auto-replay-interval",
                "1s",
                "--stats-interval",
                "1s",
            ],
            &[],
            "tandem proxy listening on",
        );
        // "tandem proxy listening on http://A (admin http://B)"
        let mut urls = line.split_whitespace().filter_map(|word| {
            let word = word.trim_matches(|c| c == '(' || c == ')');
            word.starts_with("http://").then(|| word.to_owned())
        });
        let (proxy_url, proxy_admin) = (urls.next().unwrap(), urls.next().unwrap());
        set_stage("dual-write", &control);
        wait_for_stage(&proxy_admin, "dual-write").await;

        // A proxy of a fleet: the shared journal's metrics (partitions, lag, copies read again,
        // key conflicts) are published from its start.
        let stream = ScratchStream::new("ONCALL");
        let shared_dir = tempfile::tempdir().unwrap();
        let (shared, line) = ChildProcess::start(
            std::path::Path::new(TANDEM),
            &[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--old",
                &old.url,
                "--new",
                &new.url,
                "--control-db",
                &control,
                "--journal",
                NATS,
                "--journal-stream",
                stream.name(),
                "--journal-dir",
                shared_dir.path().to_str().unwrap(),
                "--stats-interval",
                "1s",
            ],
            &[],
            "tandem proxy listening on",
        );
        let shared_admin = line
            .split_whitespace()
            .filter_map(|word| {
                let word = word.trim_matches(|c| c == '(' || c == ')');
                word.starts_with("http://").then(|| word.to_owned())
            })
            .nth(1)
            .unwrap();
        wait_for_metric(&shared_admin, "tandem_journal_partitions_held").await;
        wait_for_metric(&shared_admin, "tandem_journal_server_loses_copies").await;

        // The new side refuses for a while: copies are kept, then replayed by the proxy.
        let client = reqwest::Client::new();
        new.faults(json!({"error_rate": 1.0})).await;
        for id in 1..=3 {
            put_order(&client, &proxy_url, id).await;
        }
        wait_for_metric(&proxy_admin, "tandem_mirror_failures_total").await;
        new.faults(json!({"error_rate": 0.0})).await;
        wait_for_metric(
            &proxy_admin,
            "tandem_mirror_replays_total{outcome=\"delivered\"}",
        )
        .await;
        for id in 4..=20 {
            put_order(&client, &proxy_url, id).await;
        }
        set_stage("shadow", &control);
        wait_for_stage(&proxy_admin, "shadow").await;

        let comparator_config = tempfile::tempdir().unwrap();
        let config = comparator_config.path().join("comparator.toml");
        std::fs::write(
            &config,
            "tables = [\"orders\"]\nrecheck = 1\nrecheck_delay = \"100ms\"\n\
             [alerts]\nevaluate_interval = \"100ms\"\n\
             [[rollback]]\nname = \"any-drift\"\ndivergent_rows_above = 0\n\
             target = \"dual-write\"\ndry_run = true\ncooldown = \"1h\"\n",
        )
        .unwrap();
        let (comparator, comparator_url) = ChildProcess::comparator(
            std::path::Path::new(TANDEM),
            &old.db_url(),
            &new.db_url(),
            &control,
            &["--config", config.to_str().unwrap(), "--interval", "200ms"],
        );
        wait_for_metric(
            &comparator_url,
            "tandem_comparator_last_clean_sweep_timestamp_seconds",
        )
        .await;
        // A row changed behind the proxy: shadow reads of it differ, the comparator confirms
        // it, and the (dry-run) rollback policy fires.
        new.put(&client, 7, "mallory").await;
        for id in 1..=20 {
            let read = client
                .get(format!("{proxy_url}/orders/{id}"))
                .send()
                .await
                .unwrap();
            assert!(read.status().is_success(), "{}", read.status());
        }
        wait_for_metric(&comparator_url, "tandem_rollbacks_total").await;

        let (pg_old, pg_new) = (
            PostgresDb::create("tandem_oncall_pg").await,
            PostgresDb::create("tandem_oncall_pg").await,
        );
        let (pg_proxy, line) = ChildProcess::start(
            std::path::Path::new(TANDEM),
            &[
                "pg-proxy",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--old",
                &pg_old.url,
                "--new",
                &pg_new.url,
                "--control-db",
                &control,
                "--capture",
                "statements",
            ],
            &[],
            "tandem pg-proxy listening on",
        );
        // "tandem pg-proxy listening on ADDR (admin http://ADDR)"
        let mut words = line.split_whitespace().skip(4);
        let pg_address = words.next().unwrap().to_owned();
        let pg_admin = words.nth(1).unwrap().trim_end_matches(')').to_owned();
        let database = pg_old.url.rsplit('/').next().unwrap();
        let mut session =
            sqlx::PgConnection::connect(&format!("postgres://postgres@{pg_address}/{database}"))
                .await
                .unwrap();
        session
            .execute("CREATE TABLE seen (id int PRIMARY KEY)")
            .await
            .unwrap();
        session
            .execute("INSERT INTO seen VALUES (1), (2)")
            .await
            .unwrap();
        session.close().await.unwrap();
        wait_for_metric(&pg_admin, "tandem_pg_mirror_lag_seconds_bucket").await;

        let capture = wal_capture(&control).await;
        wait_for_metric(&capture.admin, "tandem_capture_apply_delay_seconds_bucket").await;
        wait_for_metric(&capture.admin, "tandem_capture_retained_wal_bytes").await;
        let filling = backfill(&control).await;
        let [wal_old, wal_new] = capture.databases;
        let [fill_old, fill_new] = filling.databases;

        Stack {
            proxy_admin,
            shared_admin,
            pg_admin,
            wal_admin: capture.admin,
            comparator: comparator_url,
            backfill: filling.metrics,
            _processes: vec![
                proxy,
                shared,
                comparator,
                pg_proxy,
                capture.process,
                filling.process,
                old.process,
                new.process,
            ],
            _stream: stream,
            _slots: capture.slots,
            _databases: vec![
                control_db, pg_old, pg_new, wal_old, wal_new, fill_old, fill_new,
            ],
            _dirs: vec![journal, shared_dir, comparator_config, old.dir, new.dir],
        }
    }
}

fn set_stage(stage: &str, control: &str) {
    tandem_ok(&[
        "stage",
        "set",
        stage,
        "--force",
        "--reason",
        "on-call test",
        "--by",
        "tests",
        "--control-db",
        control,
    ]);
}

async fn wait_for_stage(admin: &str, stage: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view: Value = reqwest::get(format!("{admin}/admin/stage"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["applied"]["stage"] == stage {
            return;
        }
        assert!(Instant::now() < deadline, "the proxy did not apply {stage}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/metrics` at `base` has a line starting with `series`.
async fn wait_for_metric(base: &str, series: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|line| line.starts_with(series)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}/metrics never showed {series}:\n{text}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

async fn put_order(client: &reqwest::Client, proxy: &str, id: i64) {
    let answer = client
        .put(format!("{proxy}/orders/{id}"))
        .json(&json!({"customer": format!("customer-{id}"), "amount": format!("{id}.50"), "status": "open"}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_series_the_rules_and_the_dashboard_query() {
    let stack = Stack::start().await;
    let prometheus = Prometheus::start(&[
        ("tandem-proxy", &stack.proxy_admin),
        ("tandem-proxy", &stack.shared_admin),
        ("tandem-pg-proxy", &stack.pg_admin),
        ("tandem-pg-proxy", &stack.wal_admin),
        ("tandem-comparator", &stack.comparator),
        ("tandem-backfill", &stack.backfill),
    ])
    .await;

    // Every rule evaluates without error, once every target has been scraped.
    let deadline = Instant::now() + PATIENCE;
    let rules = loop {
        let rules = prometheus.rules().await;
        let targets_up = prometheus.targets_up().await;
        if targets_up == 6 && rules.iter().all(|rule| rule["health"] == "ok") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all healthy (targets up: {targets_up}): {rules:#?}"
        );
        sleep(Duration::from_millis(200)).await;
    };
    let mut queries: Vec<String> = rules
        .iter()
        .map(|rule| rule["query"].as_str().unwrap().to_owned())
        .collect();
    let dashboard = dashboard_queries();
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    queries.extend(dashboard.iter().cloned());

    // Every series queried exists with its labels (scrapes come every second: wait for the
    // first ones of each target).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut gaps = Vec::new();
        for query in &queries {
            for gap in missing(&prometheus, query).await {
                gaps.push(format!("{gap}  (in {query})"));
            }
        }
        if gaps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series missing:\n{}",
            gaps.join("\n")
        );
        sleep(Duration::from_millis(500)).await;
    }
    // The capture's delay is measured past the 30 s TandemCaptureLag alerts at (the latency
    // buckets end at 10 s, where a p99 would stop).
    let buckets = prometheus
        .series("tandem_capture_apply_delay_seconds_bucket{le=\"30\"}")
        .await;
    assert!(!buckets.is_empty(), "no 30 s bucket of the capture's delay");
    // And every dashboard panel has something to show (rates, once two scrapes saw a series).
    for query in &dashboard {
        let deadline = Instant::now() + PATIENCE;
        while prometheus.query(query).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the dashboard query {query} stays empty"
            );
            sleep(Duration::from_millis(500)).await;
        }
    }
}
