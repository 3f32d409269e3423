//! The processes the on-call tests run: tandem's CLI, the sample orders service as a side,
//! and a real Prometheus on a free loopback port with a temporary configuration.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tandem_testkit::{workspace_binary, ChildProcess, ReservedPort};
use tempfile::TempDir;
use tokio::time::{sleep, Instant};

use crate::tools::repo_file;

/// The tandem binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// How long a started tool may take to answer.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// Runs the tandem CLI to completion.
pub fn tandem(args: &[&str]) -> Output {
    std::process::Command::new(TANDEM)
        .args(args)
        .output()
        .unwrap()
}

/// Runs the tandem CLI, which must succeed.
pub fn tandem_ok(args: &[&str]) {
    let output = tandem(args);
    assert!(
        output.status.success(),
        "tandem {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A sample orders service on a SQLite file of its own, with its fault switches.
pub struct Side {
    pub process: ChildProcess,
    pub dir: TempDir,
    pub url: String,
    faults: String,
}

impl Side {
    pub fn start() -> Side {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("orders.db").display());
        let (mut process, line) = ChildProcess::start(
            &workspace_binary("tandem-loadtest"),
            &[
                "serve",
                "--db",
                &db,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[],
            "orders service listening on",
        );
        let faults = process.wait_for_line("faults admin listening on", START_PATIENCE);
        Side {
            process,
            dir,
            url: line.rsplit(' ').next().unwrap().to_owned(),
            faults: faults.rsplit(' ').next().unwrap().to_owned(),
        }
    }

    /// The database's URL, for the comparator.
    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("orders.db").display())
    }

    /// Sets fault switches (`latency_ms`, `error_rate`, `stopped`).
    pub async fn faults(&self, settings: Value) {
        let answer = reqwest::Client::new()
            .put(format!("{}/faults", self.faults))
            .json(&settings)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{}", answer.status());
    }

    /// Writes an order on this side only (for `customer`).
    pub async fn put(&self, client: &reqwest::Client, id: i64, customer: &str) {
        let answer = client
            .put(format!("{}/orders/{id}", self.url))
            .json(&serde_json::json!({"customer": customer, "amount": "9.99", "status": "open"}))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{}", answer.status());
    }
}

/// A real Prometheus scraping tandem every second and evaluating the shipped rules.
pub struct Prometheus {
    process: ChildProcess,
    _dir: TempDir,
    // Its port, kept from other tests (it binds it beside this reservation).
    _port: ReservedPort,
    url: String,
}

impl Prometheus {
    /// Starts it on `(job, base URL)` targets (a job may have several) and waits until it is
    /// ready.
    pub async fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            repo_file("deploy/prometheus/tandem.rules.yml").display()
        );
        // One scrape configuration per job, with each of its targets.
        let mut jobs: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (job, base) in targets {
            jobs.entry(job)
                .or_default()
                .push(base.trim_start_matches("http://"));
        }
        for (job, addresses) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{}']\n",
                addresses.join("', '")
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let data = dir.path().join("data");
        let port = ReservedPort::new();
        let listen = port.address();
        let process = ChildProcess::spawn(
            Path::new("prometheus"),
            &[
                &format!("--config.file={}", config_file.display()),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address={listen}"),
            ],
            &[],
        );
        let prometheus = Prometheus {
            process,
            _dir: dir,
            _port: port,
            url: format!("http://{listen}"),
        };
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let ready = reqwest::get(format!("{}/-/ready", prometheus.url)).await;
            if ready.is_ok_and(|answer| answer.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                prometheus.process.log()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer["data"].clone()
    }

    /// Every recording and alerting rule loaded, with its health.
    pub async fn rules(&self) -> Vec<Value> {
        let data = self.api("rules", &[]).await;
        data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().unwrap().clone())
            .collect()
    }

    /// How many targets the last scrape reached.
    pub async fn targets_up(&self) -> usize {
        let data = self.api("targets", &[]).await;
        data["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|target| target["health"] == "up")
            .count()
    }

    /// The label sets of every series of `metric`.
    pub async fn series(&self, metric: &str) -> Vec<Value> {
        self.api("series", &[("match[]", metric)])
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// An instant query's result.
    pub async fn query(&self, query: &str) -> Vec<Value> {
        self.api("query", &[("query", query)]).await["result"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a loopback port reserved for it, alone
/// (no cluster), routing everything to a receiver that sends nothing. Its `resolve_timeout`
/// is 2 s (5 min by default): an alert not sent again in time ends there soon, as it would in
/// production only later.
pub struct Alertmanager {
    process: ChildProcess,
    _dir: TempDir,
    // Its port, kept from other tests (it binds it beside this reservation).
    _port: ReservedPort,
    pub url: String,
}

impl Alertmanager {
    pub async fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "global:\n  resolve_timeout: 2s\n\
             route:\n  receiver: nobody\n  group_wait: 1s\n  group_interval: 1s\n\
             receivers:\n  - name: nobody\n",
        )
        .unwrap();
        let port = ReservedPort::new();
        let listen = port.address();
        let process = ChildProcess::spawn(
            Path::new("prometheus-alertmanager"),
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address={listen}"),
                "--cluster.listen-address=",
            ],
            &[],
        );
        let alertmanager = Alertmanager {
            process,
            _dir: dir,
            _port: port,
            url: format!("http://{listen}"),
        };
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let ready = reqwest::get(format!("{}/-/ready", alertmanager.url)).await;
            if ready.is_ok_and(|answer| answer.status().is_success()) {
                return alertmanager;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager did not become ready:\n{}",
                alertmanager.process.log()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn list(&self, what: &str) -> Vec<Value> {
        reqwest::get(format!("{}/api/v2/{what}", self.url))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The alerts it holds (active, silenced or inhibited; not resolved ones).
    pub async fn alerts(&self) -> Vec<Value> {
        self.list("alerts").await
    }

    /// Every silence, with its state.
    pub async fn silences(&self) -> Vec<Value> {
        self.list("silences").await
    }
}
