//! tandem and a real Alertmanager: a drift alert arrives with tandem's labels and
//! annotations, acknowledging it in tandem silences exactly that alert there (and keeps it
//! there, silenced, for as long as it lasts), and resolving it ends both the alert and the
//! silence.

use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::ChildProcess;
use tokio::time::{sleep, Instant};

use crate::services::{tandem_ok, Alertmanager, Side, TANDEM};
use crate::waiting::{clean_sweep, eventually};

fn is_drift(alert: &Value) -> bool {
    alert["labels"]["alertname"] == "tandem_drift"
}

/// Two sides that differ in one row, and a comparator on them notifying `alertmanager`.
struct Drifting {
    new: Side,
    _old: Side,
    _comparator: ChildProcess,
    control: String,
    api: String,
    _dir: tempfile::TempDir,
}

impl Drifting {
    async fn start(alertmanager: &Alertmanager, client: &reqwest::Client) -> Drifting {
        let (old, new) = (Side::start(), Side::start());
        for id in 1..=5 {
            old.put(client, id, "ada").await;
            new.put(client, id, "ada").await;
        }
        let dir = tempfile::tempdir().unwrap();
        let control = format!("sqlite://{}", dir.path().join("control.db").display());
        let config = dir.path().join("comparator.toml");
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
        let (comparator, api) = ChildProcess::comparator(
            std::path::Path::new(TANDEM),
            &old.db_url(),
            &new.db_url(),
            &control,
            &["--config", config.to_str().unwrap(), "--interval", "200ms"],
        );
        new.put(client, 3, "mallory").await;
        Drifting {
            new,
            _old: old,
            _comparator: comparator,
            control,
            api,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_silences_the_alert_in_alertmanager_and_resolving_ends_both() {
    let alertmanager = Alertmanager::start().await;
    let client = reqwest::Client::new();
    let drifting = Drifting::start(&alertmanager, &client).await;
    let (control, api) = (drifting.control.as_str(), drifting.api.as_str());

    // Drift: the alert reaches Alertmanager with tandem's labels and annotations.
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
    assert!(alert_url.starts_with(api), "{alert_url}");
    let tandem_alert: Value = reqwest::get(alert_url).await.unwrap().json().await.unwrap();
    assert_eq!(tandem_alert["kind"], "drift");
    assert_eq!(firing["status"]["state"], "active");
    let id = tandem_alert["id"].as_i64().unwrap().to_string();

    // Acknowledged in tandem (through the store, as the CLI does): Alertmanager gets one
    // silence, for exactly that alert, by the person who acknowledged it.
    tandem_ok(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "ann",
        "--comment",
        "on it",
        "--control-db",
        control,
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
    drifting.new.put(&client, 3, "ada").await;
    clean_sweep(api).await;
    tandem_ok(&[
        "alerts",
        "resolve",
        &id,
        "--by",
        "ann",
        "--comment",
        "repaired",
        "--control-db",
        control,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_made_in_alertmanager_acknowledges_the_alert_in_tandem() {
    let alertmanager = Alertmanager::start().await;
    let client = reqwest::Client::new();
    let drifting = Drifting::start(&alertmanager, &client).await;
    eventually("the drift alert in Alertmanager", || async {
        alertmanager.alerts().await.into_iter().find(is_drift)
    })
    .await;

    // Someone silences every tandem alert about orders, in Alertmanager.
    let now = tandem_control::Timestamp::now();
    let silence = json!({
        "matchers": [
            {"name": "alertname", "value": "tandem_.*", "isRegex": true, "isEqual": true},
            {"name": "subject", "value": "orders", "isRegex": false, "isEqual": true},
        ],
        "startsAt": now.to_rfc3339(),
        "endsAt": tandem_control::Timestamp(now.millis() + 3_600_000).to_rfc3339(),
        "createdBy": "bob",
        "comment": "looking at orders",
    });
    let created: Value = client
        .post(format!("{}/api/v2/silences", alertmanager.url))
        .json(&silence)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["silenceID"].is_string(), "{created}");

    // tandem's alert is acknowledged by bob, with the silence's comment.
    let acknowledged = eventually("the alert acknowledged in tandem", || async {
        let alerts: Value = reqwest::get(format!("{}/api/alerts", drifting.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|alert| alert["kind"] == "drift" && alert["status"] == "acknowledged")
            .cloned()
    })
    .await;
    assert_eq!(acknowledged["acknowledged_by"], "bob", "{acknowledged}");
    assert!(acknowledged["ack_comment"]
        .as_str()
        .unwrap()
        .contains("looking at orders"));
    // bob's silence already covers it: tandem adds none of its own.
    sleep(Duration::from_millis(500)).await;
    let active: Vec<Value> = alertmanager
        .silences()
        .await
        .into_iter()
        .filter(|silence| silence["status"]["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["createdBy"], "bob");
}

/// The time an alert of Alertmanager's API ends (`endsAt`), in Unix milliseconds.
fn ends_at(alert: &Value) -> i64 {
    let text = alert["endsAt"].as_str().unwrap();
    let at =
        humantime::parse_rfc3339_weak(text).unwrap_or_else(|err| panic!("endsAt {text}: {err}"));
    i64::try_from(
        at.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_alert_stays_in_alertmanager_silenced_while_it_lasts() {
    let alertmanager = Alertmanager::start().await;
    let client = reqwest::Client::new();
    let drifting = Drifting::start(&alertmanager, &client).await;
    let firing = eventually("the drift alert in Alertmanager", || async {
        alertmanager.alerts().await.into_iter().find(is_drift)
    })
    .await;
    let tandem_alert: Value = reqwest::get(firing["annotations"]["alert_url"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = tandem_alert["id"].as_i64().unwrap().to_string();
    tandem_ok(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "ann",
        "--control-db",
        &drifting.control,
    ]);
    let silenced = eventually("the alert silenced", || async {
        alertmanager
            .alerts()
            .await
            .into_iter()
            .find(|alert| is_drift(alert) && alert["status"]["state"] == "suppressed")
    })
    .await;

    // An alert Alertmanager is not sent again ends at its endsAt (3 re-notification
    // intervals, 3 s, after tandem last sent it; or resolve_timeout, 2 s, without one). The
    // acknowledged alert must stay there, silenced, all along: watch until it has been
    // extended past three times that horizon, which only sending it again can do.
    let horizon = ends_at(&silenced) + 9_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = alertmanager.alerts().await;
        let drift = alerts
            .iter()
            .find(|alert| is_drift(alert))
            .unwrap_or_else(|| panic!("the acknowledged alert ended in Alertmanager: {alerts:#?}"));
        assert_eq!(drift["status"]["state"], "suppressed", "{drift}");
        if ends_at(drift) > horizon {
            // Sent again since it was acknowledged, and saying so.
            assert_eq!(drift["annotations"]["status"], "acknowledged", "{drift}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the acknowledged alert was not sent again: {drift}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    // Its silence is still the one tandem made, active.
    let silences: Vec<Value> = alertmanager
        .silences()
        .await
        .into_iter()
        .filter(|silence| silence["status"]["state"] == "active")
        .collect();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0]["createdBy"], "ann");
}
