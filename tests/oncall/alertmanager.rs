//! tandem and a real Alertmanager: a drift alert arrives with tandem's labels and
//! annotations, acknowledging it in tandem silences exactly that alert there, and resolving it
//! ends both the alert and the silence.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use tandem_testkit::ChildProcess;
use tokio::time::{sleep, Instant};

use crate::services::{tandem, Alertmanager, Side, TANDEM};

const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns something.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        sleep(Duration::from_millis(100)).await;
    }
}

fn is_drift(alert: &Value) -> bool {
    alert["labels"]["alertname"] == "tandem_drift"
}

fn cli(args: &[&str]) {
    let output = tandem(args);
    assert!(
        output.status.success(),
        "tandem {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_silences_the_alert_in_alertmanager_and_resolving_ends_both() {
    let alertmanager = Alertmanager::start().await;
    let (old, new) = (Side::start(), Side::start());
    let client = reqwest::Client::new();
    for id in 1..=5 {
        old.put(&client, id, "ada").await;
        new.put(&client, id, "ada").await;
    }
    let control_dir = tempfile::tempdir().unwrap();
    let control = format!(
        "sqlite://{}",
        control_dir.path().join("control.db").display()
    );
    let config = control_dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        format!(
            "tables = [\"orders\"]\nrecheck = 1\nrecheck_delay = \"100ms\"\n\
             [alerts]\nalertmanager_url = \"{}\"\nrenotify_interval = \"1s\"\n\
             evaluate_interval = \"100ms\"\nresolve_after_clean_sweeps = 1000\n",
            alertmanager.url
        ),
    )
    .unwrap();
    let (_comparator, api) = ChildProcess::comparator(
        std::path::Path::new(TANDEM),
        &old.db_url(),
        &new.db_url(),
        &control,
        &["--config", config.to_str().unwrap(), "--interval", "200ms"],
    );

    // Drift: the alert reaches Alertmanager with tandem's labels and annotations.
    new.put(&client, 3, "mallory").await;
    let firing = eventually("the drift alert in Alertmanager", || async {
        alertmanager.alerts().await.into_iter().find(is_drift)
    })
    .await;
    let labels = &firing["labels"];
    assert_eq!(labels["severity"], "critical", "{firing}");
    assert_eq!(labels["source"], "comparator");
    assert_eq!(labels["subject"], "orders");
    assert_eq!(labels["fingerprint"], "comparator:orders:drift");
    let annotations = &firing["annotations"];
    assert_eq!(annotations["status"], "open");
    assert!(annotations["runbook_url"]
        .as_str()
        .unwrap()
        .ends_with("/runbook"));
    assert!(
        annotations["examples"]
            .as_str()
            .unwrap()
            .contains("\"id\":3"),
        "{firing}"
    );
    let alert_url = annotations["alert_url"].as_str().unwrap();
    assert!(alert_url.starts_with(&api), "{alert_url}");
    let tandem_alert: Value = reqwest::get(alert_url).await.unwrap().json().await.unwrap();
    assert_eq!(tandem_alert["kind"], "drift");
    assert_eq!(firing["status"]["state"], "active");
    let id = tandem_alert["id"].as_i64().unwrap().to_string();

    // Acknowledged in tandem (through the store, as the CLI does): Alertmanager gets one
    // silence, for exactly that alert, by the person who acknowledged it.
    cli(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "ann",
        "--comment",
        "on it",
        "--control-db",
        &control,
    ]);
    let silence = eventually("a silence", || async {
        alertmanager
            .silences()
            .await
            .into_iter()
            .find(|silence| silence["status"]["state"] == "active")
    })
    .await;
    assert_eq!(silence["createdBy"], "ann", "{silence}");
    assert!(silence["comment"].as_str().unwrap().contains("on it"));
    let mut matchers: Vec<(String, String, bool, bool)> = silence["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|matcher| {
            (
                matcher["name"].as_str().unwrap().to_owned(),
                matcher["value"].as_str().unwrap().to_owned(),
                matcher["isRegex"].as_bool().unwrap(),
                matcher["isEqual"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    matchers.sort();
    assert_eq!(
        matchers,
        [
            (
                "alertname".to_owned(),
                "tandem_drift".to_owned(),
                false,
                true
            ),
            (
                "fingerprint".to_owned(),
                "comparator:orders:drift".to_owned(),
                false,
                true
            ),
        ]
    );
    let silence_id = silence["id"].as_str().unwrap().to_owned();
    eventually("the alert silenced", || async {
        alertmanager.alerts().await.into_iter().find(|alert| {
            is_drift(alert)
                && alert["status"]["state"] == "suppressed"
                && alert["status"]["silencedBy"][0] == silence_id.as_str()
        })
    })
    .await;
    // Evaluations go on: still exactly one silence.
    sleep(Duration::from_millis(500)).await;
    let active = alertmanager
        .silences()
        .await
        .into_iter()
        .filter(|silence| silence["status"]["state"] == "active")
        .count();
    assert_eq!(active, 1);

    // Repaired and resolved in tandem: the alert ends in Alertmanager, and so does the silence.
    new.put(&client, 3, "ada").await;
    cli(&[
        "alerts",
        "resolve",
        &id,
        "--by",
        "ann",
        "--comment",
        "repaired",
        "--control-db",
        &control,
    ]);
    eventually("the alert resolved in Alertmanager", || async {
        let alerts = alertmanager.alerts().await;
        (!alerts.iter().any(is_drift)).then_some(())
    })
    .await;
    eventually("the silence expired", || async {
        alertmanager
            .silences()
            .await
            .into_iter()
            .find(|silence| silence["id"] == silence_id.as_str())
            .filter(|silence| silence["status"]["state"] == "expired")
    })
    .await;
}
