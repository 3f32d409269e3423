//! Drift found by the comparator becomes one alert that Alertmanager receives until someone
//! acknowledges it; a rollback policy moves every proxy back; the promotion gate holds until
//! the alerts are resolved and the tables have been clean long enough; the audit log keeps
//! each step.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::Value;
use tandem_testkit::{ChildProcess, PostgresDb};
use tokio::time::{sleep, Instant};

use crate::harness::{
    expect_ok, order, tandem, tandem_json, Engine, Orders, OrdersDb, Proxy, PATIENCE,
};

const TOKEN: &str = "on-call-token";

/// A fake Alertmanager: keeps every alert posted to `/api/v2/alerts`; and a webhook at
/// `/hook` that fails its first two calls (a target that is down for a while).
struct FakeAlertmanager {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    hooked: Arc<Mutex<Vec<Value>>>,
}

#[derive(Clone)]
struct Receivers {
    alerts: Arc<Mutex<Vec<Value>>>,
    hooked: Arc<Mutex<Vec<Value>>>,
    hook_calls: Arc<Mutex<u32>>,
}

impl FakeAlertmanager {
    async fn start() -> FakeAlertmanager {
        let receivers = Receivers {
            alerts: Arc::new(Mutex::new(Vec::new())),
            hooked: Arc::new(Mutex::new(Vec::new())),
            hook_calls: Arc::new(Mutex::new(0)),
        };
        let app = Router::new()
            .route("/api/v2/alerts", post(alertmanager_receive))
            .route("/hook", post(hook_receive))
            .with_state(receivers.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAlertmanager {
            url,
            received: receivers.alerts,
            hooked: receivers.hooked,
        }
    }

    /// Alerts received for one alertname.
    fn received(&self, alertname: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|alert| alert["labels"]["alertname"] == alertname)
            .cloned()
            .collect()
    }
}

async fn alertmanager_receive(
    State(receivers): State<Receivers>,
    Json(alerts): Json<Value>,
) -> &'static str {
    let alerts = alerts.as_array().unwrap().iter().cloned();
    receivers.alerts.lock().unwrap().extend(alerts);
    "ok"
}

async fn hook_receive(State(receivers): State<Receivers>, Json(event): Json<Value>) -> StatusCode {
    let calls = {
        let mut calls = receivers.hook_calls.lock().unwrap();
        *calls += 1;
        *calls
    };
    if calls <= 2 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    receivers.hooked.lock().unwrap().push(event);
    StatusCode::OK
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        sleep(Duration::from_millis(20)).await;
    }
}

fn stage_set(stage: &str, control: &str) -> std::process::Output {
    tandem(&[
        "stage",
        "set",
        stage,
        "--reason",
        "rollout",
        "--by",
        "ops",
        "--control-db",
        control,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_alerts_roll_back_and_gate_promotion() {
    let control_db = PostgresDb::create("tandem_oncall_control").await;
    let control = control_db.url.as_str();
    let (old_db, new_db) = (
        OrdersDb::create(Engine::Postgres).await,
        OrdersDb::create(Engine::Postgres).await,
    );
    let (old, new) = (Orders::start(&old_db), Orders::start(&new_db));
    let proxies = [
        Proxy::start(&old.url, &new.url, control, &[]),
        Proxy::start(&old.url, &new.url, control, &[]),
    ];
    for proxy in &proxies {
        proxy.wait_for_stage("old-only").await;
    }
    assert!(stage_set("dual-write", control).status.success());
    for proxy in &proxies {
        proxy.wait_for_stage("dual-write").await;
    }
    let client = reqwest::Client::new();
    for id in 1..=20 {
        let proxy = &proxies[usize::try_from(id % 2).unwrap()];
        expect_ok(
            client
                .put(format!("{}/orders/{id}", proxy.url))
                .json(&order(
                    &format!("customer-{id}"),
                    &format!("{id}.50"),
                    "open",
                )),
        )
        .await;
    }
    for proxy in &proxies {
        proxy.drained().await;
    }
    assert!(stage_set("shadow", control).status.success());

    let alertmanager = FakeAlertmanager::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        format!(
            "tables = [\"orders\"]\nrecheck = 1\nrecheck_delay = \"100ms\"\n\
             [alerts]\nalertmanager_url = \"{url}\"\nwebhook_url = \"{url}/hook\"\n\
             renotify_interval = \"500ms\"\n\
             evaluate_interval = \"100ms\"\nresolve_after_clean_sweeps = 1000\n\
             [promotion]\nmin_clean = \"15s\"\n\
             [[rollback]]\nname = \"any-drift\"\ndivergent_rows_above = 0\n\
             target = \"dual-write\"\ncooldown = \"1h\"\n",
            url = alertmanager.url
        ),
    )
    .unwrap();
    let (old_url, new_url) = (old_db.url(), new_db.url());
    let (_comparator, line) = ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &[
            "comparator",
            "--config",
            config.to_str().unwrap(),
            "--old",
            &old_url,
            "--new",
            &new_url,
            "--control-db",
            control,
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "200ms",
        ],
        &[("TANDEM_ADMIN_TOKEN", TOKEN)],
        "listening on",
    );
    let api = line.rsplit(' ').next().unwrap().to_owned();
    wait_until("a clean sweep", || async {
        get_json(&format!("{api}/api/runs")).await[0]["status"] == "identical"
    })
    .await;

    // Corrupt one row on the new side behind the proxies' back.
    new.put_direct(7, &order("mallory", "999.99", "open")).await;

    // The rollback policy moves both proxies to dual-write (how fast a stage change reaches
    // every proxy is measured by `tandem-loadtest propagation`, docs/benchmarks.md).
    for proxy in &proxies {
        proxy.wait_for_stage("dual-write").await;
    }
    let overview = get_json(&format!("{api}/api/stage")).await;
    assert_eq!(overview["by"], "tandem:auto-rollback");
    assert!(
        overview["reason"].as_str().unwrap().contains("any-drift"),
        "{overview}"
    );

    // One drift alert, updated by later sweeps rather than reopened.
    let drift = loop {
        let alerts = get_json(&format!("{api}/api/alerts")).await;
        let drift: Vec<Value> = alerts
            .as_array()
            .unwrap()
            .iter()
            .filter(|alert| alert["kind"] == "drift")
            .cloned()
            .collect();
        assert!(drift.len() <= 1, "one alert per condition: {alerts}");
        if drift
            .first()
            .is_some_and(|alert| alert["occurrences"].as_i64() >= Some(3))
        {
            break drift[0].clone();
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(drift["status"], "open");
    assert_eq!(drift["subject"], "orders");
    assert!(
        drift["examples"][0].as_str().unwrap().contains("\"id\":7"),
        "{drift}"
    );

    // Alertmanager receives it, with a runbook and a link, again while unacknowledged.
    wait_until("two notifications", || async {
        alertmanager.received("tandem_drift").len() >= 2
    })
    .await;
    let notified = &alertmanager.received("tandem_drift")[0];
    assert_eq!(notified["labels"]["severity"], "critical");
    assert!(notified["annotations"]["runbook_url"]
        .as_str()
        .unwrap()
        .ends_with("/runbook"));
    let link = notified["annotations"]["alert_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get_json(&link).await["id"], drift["id"]);
    assert!(notified["startsAt"].is_string() && notified["endsAt"].is_string());
    // The webhook failed twice (without delaying detection or the rollback) and got it on a retry.
    wait_until("the webhook to get the alert", || async {
        alertmanager
            .hooked
            .lock()
            .unwrap()
            .iter()
            .any(|event| event["event"] == "firing" && event["alert"]["kind"] == "drift")
    })
    .await;

    // Acknowledging needs the token, an existing alert, and stops re-notification.
    let id = drift["id"].as_i64().unwrap();
    let ack = |id: i64, token: &str| {
        client
            .post(format!("{api}/api/alerts/{id}/ack"))
            .bearer_auth(token)
            .json(&serde_json::json!({"by": "ann", "comment": "on it"}))
    };
    assert_eq!(
        ack(id, "wrong").send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ack(999_999, TOKEN).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let acked: Value = ack(id, TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(
        ack(id, TOKEN).send().await.unwrap().status(),
        StatusCode::CONFLICT
    );
    // A notification taken before the ack may still be on its way: the first one sent as
    // acknowledged (the refresh that ends an evaluation's deliveries, after its sends) marks
    // the point from which nothing is sent as open any more, however busy the machine.
    let acknowledged = |alert: &Value| alert["annotations"]["status"] == "acknowledged";
    wait_until("the alert sent to Alertmanager as acknowledged", || async {
        alertmanager
            .received("tandem_drift")
            .iter()
            .any(acknowledged)
    })
    .await;
    let after_ack = alertmanager
        .received("tandem_drift")
        .iter()
        .position(acknowledged)
        .unwrap();
    let drift_hooks = || {
        alertmanager
            .hooked
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event["alert"]["kind"] == "drift")
            .count()
    };
    let hooked_after_ack = drift_hooks();
    sleep(Duration::from_millis(1_500)).await;
    // Not re-notified: the webhook hears nothing more of it, and Alertmanager only gets it
    // again as acknowledged (so that it does not end there while it lasts; its silence mutes
    // it).
    assert_eq!(
        drift_hooks(),
        hooked_after_ack,
        "an acknowledged alert is not re-notified"
    );
    let since_ack = alertmanager.received("tandem_drift")[after_ack..].to_vec();
    assert!(
        since_ack.iter().all(acknowledged),
        "an acknowledged alert is not re-notified: {since_ack:?}"
    );

    // The CLI sees the same alerts, and refuses what the API refuses.
    let listed = tandem_json(&[
        "alerts",
        "list",
        "--status",
        "all",
        "--format",
        "json",
        "--control-db",
        control,
    ]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|alert| alert["id"] == drift["id"]));
    let shown = tandem_json(&[
        "alerts",
        "show",
        &id.to_string(),
        "--format",
        "json",
        "--control-db",
        control,
    ]);
    assert_eq!(shown["acknowledged_by"], "ann");
    let unknown = tandem(&[
        "alerts",
        "ack",
        "999999",
        "--by",
        "bob",
        "--control-db",
        control,
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no alert 999999"));
    let again = tandem(&[
        "alerts",
        "ack",
        &id.to_string(),
        "--by",
        "bob",
        "--control-db",
        control,
    ]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is acknowledged"));

    // The gate refuses live while alerts are unresolved.
    let refused = stage_set("live", control);
    assert_eq!(refused.status.code(), Some(2));
    let reason = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        reason.contains("promotion to live refused") && reason.contains("drift"),
        "{reason}"
    );

    // Repair the row, resolve both alerts; the gate then waits for the clean period.
    let original = old.get(7).await.unwrap();
    let field = |name: &str| original[name].as_str().unwrap().to_owned();
    new.put_direct(
        7,
        &order(&field("customer"), &field("amount"), &field("status")),
    )
    .await;
    wait_until("a clean sweep after the repair", || async {
        get_json(&format!("{api}/api/runs")).await[0]["status"] == "identical"
    })
    .await;
    let active = get_json(&format!("{api}/api/alerts?status=acknowledged")).await;
    let open = get_json(&format!("{api}/api/alerts?status=open")).await;
    for alert in active
        .as_array()
        .unwrap()
        .iter()
        .chain(open.as_array().unwrap())
    {
        let id = alert["id"].to_string();
        let resolved = tandem(&[
            "alerts",
            "resolve",
            &id,
            "--by",
            "ann",
            "--comment",
            "row repaired",
            "--control-db",
            control,
        ]);
        assert!(
            resolved.status.success(),
            "{}",
            String::from_utf8_lossy(&resolved.stderr)
        );
    }
    // The clean period (15 s, longer than the resolutions above take on a loaded machine)
    // refuses the first attempts.
    let mut refusals = Vec::new();
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let attempt = stage_set("live", control);
        if attempt.status.success() {
            break;
        }
        refusals.push(String::from_utf8_lossy(&attempt.stderr).to_string());
        assert!(
            Instant::now() < deadline,
            "live never allowed: {refusals:?}"
        );
        sleep(Duration::from_millis(300)).await;
    }
    assert!(
        refusals
            .iter()
            .any(|reason| reason.contains("has been clean for")),
        "the clean period was enforced: {refusals:?}"
    );
    for proxy in &proxies {
        proxy.wait_for_stage("live").await;
    }
    wait_until("the resolution reaches Alertmanager", || async {
        alertmanager
            .received("tandem_drift")
            .iter()
            .any(|alert| alert["annotations"]["status"] == "resolved")
    })
    .await;

    // The audit log holds every step.
    let audit = tandem_json(&["audit", "--format", "json", "--control-db", control]);
    let steps: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            format!(
                "{} {} {}",
                entry["action"].as_str().unwrap(),
                entry["actor"].as_str().unwrap(),
                entry["subject"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "stage_change ops old-only -> dual-write",
        "stage_change ops dual-write -> shadow",
        "stage_change tandem:auto-rollback shadow -> dual-write",
        "auto_rollback tandem:auto-rollback any-drift",
        "alert_acknowledged ann",
        "alert_resolved ann",
        "stage_change ops dual-write -> live",
    ] {
        assert!(
            steps.iter().any(|step| step.starts_with(expected)),
            "{expected} missing from {steps:#?}"
        );
    }
}
