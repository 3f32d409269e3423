//! PagerDuty Events v2 and a webhook over HTTPS: a drift alert triggers an incident keyed by
//! its fingerprint (retried when PagerDuty is briefly down), acknowledging it in tandem
//! acknowledges the incident, resolving it resolves the incident; the routing key comes from a
//! file and never reaches the log.

use serde_json::Value;
use tandem_testkit::ChildProcess;

use crate::https::HttpsEndpoint;
use crate::services::{tandem_ok, Side, TANDEM};
use crate::waiting::{clean_sweep, eventually};

/// A routing key shaped like PagerDuty's (32 characters).
const ROUTING_KEY: &str = "R0UT1NGk3yR0UT1NGk3yR0UT1NGk3y42";

fn actions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| event["event_action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_incidents_follow_the_alert_over_https() {
    let endpoint = HttpsEndpoint::start().await;
    let (old, new) = (Side::start(), Side::start());
    let client = reqwest::Client::new();
    for id in 1..=5 {
        old.put(&client, id, "ada").await;
        new.put(&client, id, "ada").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let key_file = dir.path().join("routing_key");
    std::fs::write(&key_file, format!("{ROUTING_KEY}\n")).unwrap();
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        format!(
            "tables = [\"orders\"]\nrecheck = 1\nrecheck_delay = \"100ms\"\n\
             [alerts]\npagerduty_url = \"{url}/v2/enqueue\"\n\
             pagerduty_routing_key_file = \"{key}\"\nwebhook_url = \"{url}/hook\"\n\
             ca_file = \"{ca}\"\nrenotify_interval = \"1s\"\n\
             evaluate_interval = \"100ms\"\nresolve_after_clean_sweeps = 1000\n",
            url = endpoint.url,
            key = key_file.display(),
            ca = endpoint.ca_file.display(),
        ),
    )
    .unwrap();
    let (comparator, api) = ChildProcess::comparator(
        std::path::Path::new(TANDEM),
        &old.db_url(),
        &new.db_url(),
        &control,
        &["--config", config.to_str().unwrap(), "--interval", "200ms"],
    );

    // Drift: after PagerDuty's first refusal, the trigger is retried and taken.
    new.put(&client, 3, "mallory").await;
    let trigger = eventually("a trigger", || async {
        endpoint.events().into_iter().next()
    })
    .await;
    assert_eq!(trigger["event_action"], "trigger", "{trigger}");
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["dedup_key"], "comparator:orders:drift");
    let payload = &trigger["payload"];
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["source"], "comparator");
    assert_eq!(payload["component"], "orders");
    assert_eq!(payload["class"], "drift");
    assert!(
        payload["custom_details"]["examples"][0]
            .as_str()
            .unwrap()
            .contains("\"id\":3"),
        "{trigger}"
    );
    let alert_link = trigger["links"][0]["href"].as_str().unwrap();
    assert!(alert_link.starts_with(&api), "{alert_link}");
    let alert: Value = reqwest::get(alert_link)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alert["kind"], "drift");
    assert!(trigger["links"][1]["href"]
        .as_str()
        .unwrap()
        .ends_with("/runbook"));
    // The webhook gets it over HTTPS too.
    eventually("the webhook call", || async {
        endpoint
            .hooked()
            .into_iter()
            .find(|event| event["event"] == "firing")
    })
    .await;

    // Acknowledged in tandem: the incident is acknowledged, and no longer triggered.
    let id = alert["id"].as_i64().unwrap().to_string();
    tandem_ok(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "ann",
        "--control-db",
        &control,
    ]);
    eventually("an acknowledge", || async {
        endpoint
            .events()
            .into_iter()
            .find(|event| event["event_action"] == "acknowledge")
    })
    .await;

    // Repaired and resolved in tandem: the incident is resolved.
    new.put(&client, 3, "ada").await;
    clean_sweep(&api).await;
    tandem_ok(&[
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
    eventually("a resolve", || async {
        endpoint
            .events()
            .into_iter()
            .find(|event| event["event_action"] == "resolve")
    })
    .await;
    let events = endpoint.events();
    assert!(
        events
            .iter()
            .all(|event| event["dedup_key"] == "comparator:orders:drift"),
        "{events:?}"
    );
    let actions = actions(&events);
    let acknowledged = actions
        .iter()
        .position(|action| action == "acknowledge")
        .unwrap();
    assert!(
        actions[..acknowledged]
            .iter()
            .all(|action| action == "trigger")
            && actions[acknowledged + 1..] == ["resolve".to_owned()],
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|action| *action == "acknowledge")
            .count(),
        1
    );
    assert!(
        !comparator.log().contains(ROUTING_KEY),
        "the routing key reached the log"
    );
}
