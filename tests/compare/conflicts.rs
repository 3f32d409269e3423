//! Keys the fleet's proxies recorded as written through two instances at once
//! (`key_conflicts`) are rechecked by `tandem comparator`: settled when both sides hold the
//! same row (also once a copy in flight arrives during the rechecks), raised as an alert when
//! they still differ, and marked unmapped when no table's pattern names them.

use std::time::Duration;

use serde_json::Value;
use tandem_control::{ControlStore, KeyConflict, Side};
use tokio::time::Instant;

use crate::drift::identical_sqlite_pair;
use crate::service::start_comparator;

/// Waits until `probe` finds what it looks for in the store's conflicts.
async fn conflicts_when(
    store: &ControlStore,
    what: &str,
    probe: impl Fn(&[KeyConflict]) -> bool,
) -> Vec<KeyConflict> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let conflicts = store.key_conflicts(10).await.unwrap();
        if probe(&conflicts) {
            return conflicts;
        }
        assert!(Instant::now() < deadline, "{what}: {conflicts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn of<'a>(conflicts: &'a [KeyConflict], key: &str) -> &'a KeyConflict {
    conflicts
        .iter()
        .find(|conflict| conflict.ordering_key == key)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_key_conflicts_are_rechecked_settled_or_raised() {
    let (old, new, dir, control) = identical_sqlite_pair().await;
    // Row 2 differs for good; row 3 differs until its copy "arrives" during the rechecks.
    new.exec(&[
        "UPDATE items SET name = 'lost update' WHERE id = 2".to_owned(),
        "UPDATE items SET name = 'in flight' WHERE id = 3".to_owned(),
    ])
    .await;
    let store = ControlStore::open(&control).await.unwrap();
    for (key, request) in [
        ("/items/3", "r-3"),
        ("/items/1", "r-1"),
        ("/items/2", "r-2"),
        ("/carts/9", "r-9"),
    ] {
        store
            .record_key_conflict(Side::New, key, request)
            .await
            .unwrap();
    }
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        "tables = [{ name = \"items\", ordering_key = \"/items/{id}\" }]\n\
         recheck = 3\nrecheck_delay = \"500ms\"\n",
    )
    .unwrap();
    let (process, api) = start_comparator(
        &old,
        &new,
        &control,
        &["--config", config.to_str().unwrap(), "--interval", "1h"],
    );
    conflicts_when(&store, "row 3 claimed", |conflicts| {
        of(conflicts, "/items/3").status != "pending"
    })
    .await;
    new.exec(&["UPDATE items SET name = 'Name-3' WHERE id = 3".to_owned()])
        .await;
    let conflicts = conflicts_when(&store, "every conflict rechecked", |conflicts| {
        conflicts
            .iter()
            .all(|conflict| !["pending", "checking"].contains(&conflict.status.as_str()))
    })
    .await;

    for key in ["/items/1", "/items/3"] {
        let settled = of(&conflicts, key);
        assert_eq!(
            (settled.status.as_str(), settled.table.as_deref()),
            ("settled", Some("items")),
            "{settled:?}"
        );
    }
    let diverged = of(&conflicts, "/items/2");
    assert_eq!(diverged.status, "diverged", "{diverged:?}");
    assert_eq!(
        diverged.outcome.as_deref(),
        Some(r#"changed {"id":2} (name)"#)
    );
    let unmapped = of(&conflicts, "/carts/9");
    assert_eq!(unmapped.status, "unmapped", "{unmapped:?}");
    assert!(unmapped.table.is_none());

    let alerts = store.alerts(Some("open")).await.unwrap();
    let alert = alerts
        .iter()
        .find(|alert| alert.kind == "key_conflict")
        .unwrap_or_else(|| panic!("no key_conflict alert: {alerts:?}"));
    assert_eq!(alert.subject, "items");
    assert!(
        alert.summary.contains(r#"changed {"id":2}"#),
        "{}",
        alert.summary
    );
    assert_eq!(alert.examples, ["/items/2 (request r-2)"]);
    assert_eq!(
        alerts
            .iter()
            .filter(|alert| alert.kind == "key_conflict")
            .count(),
        1,
        "{alerts:?}"
    );

    let served: Value = reqwest::get(format!("{api}/api/key_conflicts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<(&str, &str)> = served
        .as_array()
        .unwrap()
        .iter()
        .map(|conflict| {
            (
                conflict["ordering_key"].as_str().unwrap(),
                conflict["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("/carts/9", "unmapped"),
            ("/items/2", "diverged"),
            ("/items/1", "settled"),
            ("/items/3", "settled"),
        ]
    );
    process.terminate();
    store.close().await;
}
