//! The control store on SQLite and on the machine's PostgreSQL.

use std::time::Duration;

use tandem_control::{
    ControlStore, FailureStatus, NewDivergence, NewMirrorFailure, NewResponseMismatch,
    NewTableResult, Side, Stage, StageWatch, Timestamp,
};
use tandem_testkit::PostgresDb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn failure(key: &str, accepted_ms: i64, seq: i64) -> NewMirrorFailure {
    NewMirrorFailure {
        request_id: format!("req-{seq}"),
        target: Side::New,
        method: "PUT".to_owned(),
        uri: key.to_owned(),
        headers: b"content-type: application/json\r\n".to_vec(),
        body: Some(format!("{{\"seq\":{seq}}}").into_bytes()),
        ordering_key: key.to_owned(),
        reason: "upstream_error".to_owned(),
        last_error: "status 503".to_owned(),
        attempts: 3,
        status: FailureStatus::Pending,
        accepted_at: Timestamp(accepted_ms),
        accepted_seq: seq,
    }
}

async fn exercise(store: &ControlStore) {
    let initial = store.current_stage().await.expect("stage");
    assert_eq!(initial.stage, Stage::OldOnly);
    assert_eq!(initial.id, 0);
    assert!(store.stage_history(10).await.expect("history").is_empty());
    assert!(
        store.set_stage(Stage::Live, "", "why").await.is_err(),
        "needs who"
    );

    let first = store
        .set_stage(Stage::DualWrite, "alice", "begin")
        .await
        .expect("set");
    assert_eq!(first.previous, Some(Stage::OldOnly));
    let second = store
        .set_stage(Stage::Shadow, "bob", "reads")
        .await
        .expect("set");
    assert_eq!(second.previous, Some(Stage::DualWrite));
    assert_eq!(store.current_stage().await.expect("stage"), second);
    let history = store.stage_history(10).await.expect("history");
    assert_eq!(history, vec![second.clone(), first]);

    // A copy persisted later but accepted earlier is replayed first.
    let later = store
        .insert_mirror_failure(&failure("/orders/1", 1_000, 2))
        .await
        .expect("insert");
    let earlier = store
        .insert_mirror_failure(&failure("/orders/1", 1_000, 1))
        .await
        .expect("insert");
    let body = vec![0u8, 159, 146, 150, 255];
    let mut binary = failure("/orders/2", 999, 7);
    binary.body = Some(body.clone());
    store.insert_mirror_failure(&binary).await.expect("insert");
    let pending = store
        .mirror_failures(Some(FailureStatus::Pending))
        .await
        .expect("list");
    let ids: Vec<i64> = pending.iter().map(|f| f.id).collect();
    assert_eq!(
        ids[1..],
        [earlier, later],
        "acceptance order, not insertion order"
    );
    assert_eq!(
        pending[0].body.as_deref(),
        Some(&body[..]),
        "bodies kept byte for byte"
    );
    assert!(store
        .has_pending_failure(Side::New, "/orders/1")
        .await
        .expect("lookup"));
    assert!(!store
        .has_pending_failure(Side::Old, "/orders/1")
        .await
        .expect("lookup"));
    let mut keys = store.pending_ordering_keys().await.expect("keys");
    keys.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        keys,
        vec![
            (Side::New, "/orders/1".to_owned()),
            (Side::New, "/orders/2".to_owned())
        ]
    );

    store
        .record_replay_failure(earlier, "still down")
        .await
        .expect("update");
    store
        .mark_mirror_failure_replayed(later)
        .await
        .expect("update");
    let replayed = store
        .mirror_failure(later)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(replayed.status, FailureStatus::Replayed);
    assert_eq!(replayed.attempts, 4);
    let retried = store
        .mirror_failure(earlier)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(retried.status, FailureStatus::Pending);
    assert_eq!(retried.last_error, "still down");
    assert_eq!(store.mirror_failures(None).await.expect("all").len(), 3);

    store
        .insert_response_mismatch(&NewResponseMismatch {
            request_id: "r1".to_owned(),
            method: "GET".to_owned(),
            path: "/orders/1".to_owned(),
            route: "*".to_owned(),
            authoritative: Side::Old,
            status_old: 200,
            status_new: 404,
            diff: "status: 200 (old) vs 404 (new)".to_owned(),
        })
        .await
        .expect("insert");
    let mismatches = store.response_mismatches(10).await.expect("list");
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].status_new, 404);

    // Comparator runs, table results and divergences.
    let run = store
        .begin_comparison_run("old-db", "new-db")
        .await
        .expect("run");
    let result = NewTableResult {
        table: "orders".to_owned(),
        new_table: "orders".to_owned(),
        rows_old: 10,
        rows_new: 9,
        missing_in_new: 1,
        extra_in_new: 0,
        changed: 0,
        converged: 2,
        windows: 1,
        schema_differences: 0,
        identical: false,
    };
    let divergence = NewDivergence {
        kind: "missing_in_new".to_owned(),
        key: serde_json::json!({"id": 7}),
        columns: Vec::new(),
    };
    store
        .record_table_result(run, &result, std::slice::from_ref(&divergence))
        .await
        .expect("record");
    store
        .finish_comparison_run(run, "divergent", None)
        .await
        .expect("finish");
    let runs = store.comparison_runs(5).await.expect("runs");
    assert_eq!((runs[0].id, runs[0].status.as_str()), (run, "divergent"));
    let latest = store.latest_table_results().await.expect("latest");
    assert_eq!(latest[0].result, result);
    let recorded = store
        .divergences_of_run(run, None)
        .await
        .expect("divergences");
    assert_eq!(recorded[0].key, divergence.key);

    // A change made through another handle reaches a watcher.
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let watch = StageWatch::start(
        store.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
        &tracker,
    )
    .await
    .expect("watch");
    assert_eq!(watch.current().stage, Stage::Shadow);
    let mut changes = watch.subscribe();
    let other = ControlStore::open(store.url())
        .await
        .expect("second handle");
    other
        .set_stage(Stage::DualWrite, "carol", "roll back")
        .await
        .expect("set");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("change observed")
        .expect("watch alive");
    assert_eq!(watch.current().stage, Stage::DualWrite);
    assert!(watch.store_reachable());
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn sqlite_store_keeps_stages_failures_and_mismatches() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    exercise(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_stages_failures_and_mismatches() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    exercise(&store).await;
    store.close().await;
}

#[tokio::test]
async fn opening_twice_applies_migrations_once() {
    let db = PostgresDb::create("tandem_control").await;
    for _ in 0..2 {
        let store = ControlStore::open(&db.url).await.expect("open");
        store.close().await;
    }
}

#[tokio::test]
async fn unreachable_stores_are_reported_without_secrets() {
    let err = ControlStore::open("postgres://app:hunter2@127.0.0.1:1/tandem")
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("connect"), "{text}");
}
