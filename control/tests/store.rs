//! The control store on SQLite and on the machine's PostgreSQL.

use std::time::Duration;

use tandem_control::{
    AlertCondition, ConflictOutcome, ControlError, ControlStore, FailureStatus, JournalSummary,
    KeyConflict, KeyValues, NewDivergence, NewMirrorFailure, NewResponseMismatch, NewSweepChunk,
    NewTableResult, NewWindowResult, PartitionPending, PendingKey, ProxyCounts, ResolveRule, Side,
    Stage, StageWatch, SweepChunk, Timestamp,
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
        cutover_hold: false,
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
        rows_old: 10,
        rows_new: 9,
        missing_in_new: 1,
        converged: 2,
        identical: false,
        ..clean_result("orders")
    };
    let divergence = NewDivergence {
        kind: "missing_in_new".to_owned(),
        key: KeyValues(vec![("id".to_owned(), 7.into())]),
        columns: Vec::new(),
        old_row: Some(serde_json::json!({"id": 7, "note": "x"})),
        new_row: None,
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

/// Processes opening one new SQLite store at once (each opener here a pool of its own) race to
/// apply each migration; every one of them opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_store_opened_by_several_at_once_is_migrated_once() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let opened = futures_util::future::join_all((0..6).map(|_| ControlStore::open(&url))).await;
    for store in opened {
        let store = store.expect("every opener finds the store migrated");
        assert_eq!(
            store.current_stage().await.expect("stage").stage,
            Stage::OldOnly
        );
        store.close().await;
    }
}

#[tokio::test]
async fn postgres_store_keeps_stages_failures_and_mismatches() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    exercise(&store).await;
    store.close().await;
}

/// Journal summaries (one row per journal, replaced) and not-mirrored records kept once.
async fn summaries_and_gaps(store: &ControlStore) {
    let summary = |pending: u64| JournalSummary {
        journal: "host:/var/lib/tandem/journal".to_owned(),
        instance: "host:42".to_owned(),
        written_at: Timestamp::now(),
        interval_ms: 5_000,
        pending,
        oldest_accepted_at: (pending > 0).then_some(Timestamp(1_000)),
        oldest_age_ms: None,
        keys: (0..pending)
            .map(|n| PendingKey {
                target: Side::New,
                ordering_key: format!("/orders/{n}"),
                copies: n + 1,
                oldest_seq: 10 + n,
                oldest_accepted_at: Timestamp(1_000),
                held: n == 1,
                oldest_age_ms: 0,
            })
            .collect(),
        partitions: vec![
            PartitionPending {
                partition: 0,
                copies: pending,
                holder: Some("p1".to_owned()),
            },
            PartitionPending {
                partition: 1,
                copies: 0,
                holder: None,
            },
        ],
        stale: false,
    };
    store
        .record_journal_summary(&summary(2))
        .await
        .expect("write");
    store
        .record_journal_summary(&summary(3))
        .await
        .expect("replace");
    let listed = store.journal_summaries().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].pending, 3);
    assert_eq!(listed[0].oldest_accepted_at, Some(Timestamp(1_000)));
    assert!(!listed[0].stale);
    assert_eq!(listed[0].partitions, summary(3).partitions);
    let keys: Vec<(&str, u64, u64, bool)> = listed[0]
        .keys
        .iter()
        .map(|key| {
            (
                key.ordering_key.as_str(),
                key.copies,
                key.oldest_seq,
                key.held,
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("/orders/0", 1, 10, false),
            ("/orders/1", 2, 11, true),
            ("/orders/2", 3, 12, false)
        ]
    );
    store
        .record_journal_summary(&summary(0))
        .await
        .expect("empty");
    let listed = store.journal_summaries().await.expect("list");
    assert_eq!(listed[0].oldest_accepted_at, None);
    assert!(listed[0].keys.is_empty());

    let mut gap = failure("/orders/9", 5_000, 9);
    gap.body = None;
    gap.status = FailureStatus::NotMirrored;
    gap.reason = "journal_full".to_owned();
    assert!(store.record_not_mirrored(&gap).await.expect("record"));
    assert!(!store.record_not_mirrored(&gap).await.expect("again"));
    let kept: Vec<_> = store
        .mirror_failures(Some(FailureStatus::NotMirrored))
        .await
        .expect("list")
        .into_iter()
        .filter(|kept| kept.request_id == "req-9")
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].headers, gap.headers);
    assert_eq!(kept[0].body, None);
}

#[tokio::test]
async fn sqlite_store_keeps_journal_summaries_and_gaps() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    summaries_and_gaps(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_journal_summaries_and_gaps() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    summaries_and_gaps(&store).await;
    store.close().await;
}

fn chunk(table: &str, after: Option<&str>, through: Option<&str>) -> NewSweepChunk {
    NewSweepChunk {
        table: table.to_owned(),
        new_table: table.to_owned(),
        after: after.map(str::to_owned),
        through: through.map(str::to_owned),
        schema_differences: 0,
        done: false,
        error: None,
    }
}

/// A result for `table`: one row on each side, identical.
fn clean_result(table: &str) -> NewTableResult {
    NewTableResult {
        table: table.to_owned(),
        new_table: table.to_owned(),
        rows_old: 1,
        rows_new: 1,
        missing_in_new: 0,
        extra_in_new: 0,
        changed: 0,
        converged: 0,
        unconverged: 0,
        windows: 1,
        schema_differences: 0,
        identical: true,
        error: None,
    }
}

fn chunk_result(chunk: &SweepChunk, rows: i64, changed: i64) -> NewTableResult {
    NewTableResult {
        new_table: chunk.new_table.clone(),
        rows_old: rows,
        rows_new: rows,
        changed,
        identical: changed == 0,
        ..clean_result(&chunk.table)
    }
}

/// Shared sweeps: one running run at a time, chunks claimed once each by concurrent
/// claimers, expired claims taken over, lost claims recording nothing, and the chunks summed
/// into table results once.
async fn share_a_sweep(store: &ControlStore) {
    let plan = [
        chunk("items", None, Some("k10")),
        chunk("items", Some("k10"), Some("k20")),
        chunk("items", Some("k20"), None),
        chunk("accounts", None, None),
        NewSweepChunk {
            schema_differences: 1,
            done: true,
            ..chunk("only_old", None, None)
        },
    ];
    let run = store
        .begin_shared_run("old", "new", &plan)
        .await
        .expect("begin")
        .expect("no run was running");
    assert_eq!(
        store
            .begin_shared_run("old", "new", &plan)
            .await
            .expect("second begin"),
        None,
        "a second instance joins the running sweep instead"
    );
    assert_eq!(
        store
            .running_shared_run()
            .await
            .expect("running")
            .map(|r| r.id),
        Some(run)
    );

    let lease = Duration::from_secs(60);
    let claims = futures_util::future::join_all(
        (0..6).map(|n| store.claim_sweep_chunk(run, if n % 2 == 0 { "a" } else { "b" }, lease)),
    )
    .await;
    let mut claimed: Vec<SweepChunk> = claims
        .into_iter()
        .filter_map(|claim| claim.expect("claim"))
        .collect();
    claimed.sort_by_key(|chunk| chunk.id);
    assert_eq!(
        claimed.len(),
        4,
        "each pending chunk is claimed exactly once"
    );
    assert_eq!(claimed[1].after.as_deref(), Some("k10"));
    let progress = store.sweep_progress(run).await.expect("progress");
    assert_eq!(
        (progress.pending, progress.claimed, progress.done),
        (0, 4, 1)
    );

    // The claim on the first chunk expires and another instance takes it over: the first
    // claimer's late result is refused.
    let stale = claimed.remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = store
        .claim_sweep_chunk(run, "b", Duration::from_millis(1))
        .await
        .expect("reclaim")
        .expect("the expired claim is claimable");
    assert_eq!((taken.id, taken.attempt), (stale.id, 2));
    let window = NewWindowResult {
        last_key: Some(KeyValues(vec![("id".to_owned(), 10.into())])),
        rows_old: 10,
        rows_new: 10,
        old_digest: "aa".to_owned(),
        new_digest: "bb".to_owned(),
        differences: 1,
    };
    let divergence = NewDivergence {
        kind: "changed".to_owned(),
        key: KeyValues(vec![("id".to_owned(), 4.into())]),
        columns: vec!["amount".to_owned()],
        old_row: None,
        new_row: None,
    };
    assert!(!store
        .complete_sweep_chunk(
            &stale,
            &chunk_result(&stale, 10, 1),
            std::slice::from_ref(&window),
            &[]
        )
        .await
        .expect("late completion"));
    assert!(store
        .complete_sweep_chunk(
            &taken,
            &chunk_result(&taken, 10, 1),
            &[window],
            &[divergence]
        )
        .await
        .expect("completion"));
    for chunk in &claimed {
        assert!(store
            .complete_sweep_chunk(chunk, &chunk_result(chunk, 10, 0), &[], &[])
            .await
            .expect("completion"));
    }
    assert!(store
        .sweep_progress(run)
        .await
        .expect("progress")
        .finished());

    let tables = store
        .finish_shared_run(run)
        .await
        .expect("finish")
        .expect("first finisher");
    let summary: Vec<(&str, i64, i64, bool)> = tables
        .iter()
        .map(|t| (t.table.as_str(), t.rows_old, t.changed, t.identical))
        .collect();
    assert_eq!(
        summary,
        [
            ("accounts", 10, 0, true),
            ("items", 30, 1, false),
            ("only_old", 0, 0, false),
        ]
    );
    assert_eq!(
        store.finish_shared_run(run).await.expect("finish again"),
        None
    );
    let runs = store.comparison_runs(1).await.expect("runs");
    assert_eq!(runs[0].status, "divergent");
    assert_eq!(store.running_shared_run().await.expect("running"), None);
    let windows = store
        .window_results(run, Some("items"))
        .await
        .expect("windows");
    assert_eq!(
        windows.len(),
        1,
        "only the winning claim's windows are kept"
    );
    assert_eq!(windows[0].result.differences, 1);
    let divergences = store
        .divergences_of_run(run, None)
        .await
        .expect("divergences");
    assert_eq!(divergences.len(), 1);
    assert!(store
        .begin_shared_run("old", "new", &plan)
        .await
        .expect("next sweep")
        .is_some());
}

fn drift(table: &str, rows: i64) -> AlertCondition {
    AlertCondition {
        source: "comparator".to_owned(),
        subject: table.to_owned(),
        kind: "drift".to_owned(),
        severity: "critical".to_owned(),
        summary: format!("{rows} divergent rows in {table}"),
        measured: rows,
        examples: vec![r#"{"id":4}"#.to_owned()],
    }
}

/// Alerts open once per condition, are acknowledged and resolved once, resolve by themselves
/// after clean checks; the promotion gate refuses until the tables are clean long enough;
/// every change is audited; a rollback applies only from the stage it was decided on.
async fn alert_gate_and_audit(store: &ControlStore) {
    let (first, opened) = store.raise_alert(&drift("items", 3)).await.expect("raise");
    assert!(opened);
    let (again, opened) = store
        .raise_alert(&drift("items", 5))
        .await
        .expect("raise again");
    assert!(!opened, "a repeated condition updates its alert");
    assert_eq!(
        (again.id, again.occurrences, again.measured),
        (first.id, 2, 5)
    );
    assert_eq!(
        store.alerts_due().await.expect("due").len(),
        1,
        "a new alert is due"
    );
    store
        .alert_notified(&again, Duration::from_secs(3600))
        .await
        .expect("notified");
    assert!(store.alerts_due().await.expect("due").is_empty());

    let unknown = store
        .acknowledge_alert(999, "ann", None)
        .await
        .expect_err("refused");
    assert!(matches!(unknown, ControlError::NotFound(_)), "{unknown}");
    let acked = store
        .acknowledge_alert(first.id, "ann", Some("looking"))
        .await
        .expect("ack");
    assert_eq!(acked.status, "acknowledged");
    let twice = store
        .acknowledge_alert(first.id, "bob", None)
        .await
        .expect_err("refused");
    assert!(twice.to_string().contains("is acknowledged"), "{twice}");

    // The gate: an unresolved alert and no published policy block promotion.
    store
        .set_stage(Stage::Shadow, "ann", "reads compared")
        .await
        .expect("not a promotion");
    let refused = store
        .set_stage(Stage::Live, "ann", "go")
        .await
        .expect_err("refused");
    let text = refused.to_string();
    assert!(
        text.contains("alert") && text.contains("no comparator"),
        "{text}"
    );
    let resolved = store
        .resolve_alert(first.id, "ann", "repaired")
        .await
        .expect("resolve");
    assert_eq!(resolved.status, "resolved");
    assert!(store.resolve_alert(first.id, "ann", "again").await.is_err());
    assert_eq!(
        store.alerts_due().await.expect("due").len(),
        1,
        "the resolution is due"
    );

    store
        .publish_promotion_policy(&["items".to_owned()], Duration::from_millis(300), "cmp")
        .await
        .expect("publish");
    let refused = store
        .set_stage(Stage::Live, "ann", "go")
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("not been compared"),
        "{refused}"
    );
    let run = store.begin_comparison_run("old", "new").await.expect("run");
    let clean = clean_result("items");
    store
        .record_table_result(run, &clean, &[])
        .await
        .expect("result");
    let refused = store
        .set_stage(Stage::Live, "ann", "go")
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("clean for"), "{refused}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let live = store
        .set_stage(Stage::Live, "ann", "clean long enough")
        .await
        .expect("promote");
    assert_eq!(live.stage, Stage::Live);

    // A condition gone for two checks resolves its alert by itself.
    let (second, _) = store.raise_alert(&drift("items", 1)).await.expect("raise");
    assert_ne!(second.id, first.id, "a resolved alert is never reopened");
    let rule = ResolveRule::CleanChecks(2);
    assert!(store
        .note_clean(&second.fingerprint, rule)
        .await
        .expect("clean")
        .is_none());
    let auto = store
        .note_clean(&second.fingerprint, rule)
        .await
        .expect("clean")
        .expect("resolved after two clean checks");
    assert_eq!(auto.resolved_by.as_deref(), Some("tandem"));

    // Rollbacks apply once, from the stage they were decided on.
    let rolled = store
        .roll_back_stage(
            Stage::Live,
            Stage::DualWrite,
            "tandem:auto-rollback",
            "p",
            "evidence",
        )
        .await
        .expect("rollback");
    assert_eq!(rolled.map(|r| r.stage), Some(Stage::DualWrite));
    assert_eq!(
        store
            .roll_back_stage(
                Stage::Live,
                Stage::DualWrite,
                "tandem:auto-rollback",
                "p",
                "evidence"
            )
            .await
            .expect("second rollback"),
        None
    );
    // Forcing past the gate (an open alert) is audited with what was missing.
    store.raise_alert(&drift("orders", 1)).await.expect("raise");
    assert!(store.set_stage(Stage::NewOnly, "ann", "go").await.is_err());
    let forced = store
        .force_stage(Stage::NewOnly, "ann", "accepted risk")
        .await
        .expect("forced");
    assert_eq!(forced.stage, Stage::NewOnly);

    let counts = ProxyCounts {
        compared: 10,
        mismatches: 2,
        ..ProxyCounts::default()
    };
    store
        .record_proxy_counts("p1", &counts)
        .await
        .expect("counts");
    store
        .record_proxy_counts("p2", &counts)
        .await
        .expect("counts");
    let summed = store
        .proxy_counts(Duration::from_secs(60))
        .await
        .expect("sum");
    assert_eq!((summed.compared, summed.mismatches), (20, 4));

    let actions: Vec<String> = store
        .audit_log(None)
        .await
        .expect("audit")
        .into_iter()
        .map(|entry| format!("{} {}", entry.action, entry.actor))
        .collect();
    assert_eq!(
        actions,
        [
            "alert_acknowledged ann",
            "stage_change ann",
            "alert_resolved ann",
            "stage_change ann",
            "alert_resolved tandem",
            "stage_change tandem:auto-rollback",
            "auto_rollback tandem:auto-rollback",
            "stage_change ann",
            "forced_promotion ann",
        ]
    );
}

#[tokio::test]
async fn sqlite_store_keeps_alerts_gate_and_audit() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    alert_gate_and_audit(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_alerts_gate_and_audit() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    alert_gate_and_audit(&store).await;
    store.close().await;
}

/// The gate names a table its latest sweep could not compare as such, with the reason,
/// never as clean nor as diverged; once compared clean it only waits for `min_clean`.
async fn gate_names_tables_not_compared(store: &ControlStore) {
    store
        .set_stage(Stage::Shadow, "ann", "reads compared")
        .await
        .expect("not a promotion");
    store
        .publish_promotion_policy(
            &["items".to_owned(), "shapes".to_owned()],
            Duration::from_secs(3600),
            "cmp",
        )
        .await
        .expect("publish");
    let result = |table: &str, error: Option<&str>| NewTableResult {
        identical: error.is_none(),
        error: error.map(str::to_owned),
        ..clean_result(table)
    };
    let reason = "table shapes, column p: type point on the old side is not supported";
    let run = store.begin_comparison_run("old", "new").await.expect("run");
    for table in [result("items", None), result("shapes", Some(reason))] {
        store
            .record_table_result(run, &table, &[])
            .await
            .expect("result");
    }
    let refused = store
        .set_stage(Stage::Live, "ann", "go")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        refused.contains(&format!(
            "table shapes could not be compared in the latest sweep, so it is not known to be \
             clean: {reason}"
        )),
        "{refused}"
    );
    assert!(!refused.contains("shapes diverged"), "{refused}");
    assert!(
        refused.contains("table items has been clean for"),
        "{refused}"
    );
}

#[tokio::test]
async fn sqlite_gate_names_tables_not_compared() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    gate_names_tables_not_compared(&store).await;
}

#[tokio::test]
async fn postgres_gate_names_tables_not_compared() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    gate_names_tables_not_compared(&store).await;
    store.close().await;
}

/// One shared sweep of `items` whose one chunk lists `unconverged` keys (by id), beside a
/// table that could not be compared; returns the run.
async fn sweep_with_unconverged(store: &ControlStore, ids: &[i64]) -> i64 {
    let plan = [
        chunk("items", None, None),
        NewSweepChunk {
            done: true,
            error: Some("type point is not supported".to_owned()),
            ..chunk("shapes", None, None)
        },
    ];
    let run = store
        .begin_shared_run("old", "new", &plan)
        .await
        .expect("begin")
        .expect("no run was running");
    let claimed = store
        .claim_sweep_chunk(run, "a", Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("a chunk");
    let unconverged = i64::try_from(ids.len()).expect("few");
    let result = NewTableResult {
        unconverged,
        identical: ids.is_empty(),
        ..chunk_result(&claimed, 10, 0)
    };
    let divergences: Vec<NewDivergence> = ids
        .iter()
        .map(|id| NewDivergence {
            kind: "unconverged".to_owned(),
            key: KeyValues(vec![
                ("tenant".to_owned(), "b".into()),
                ("id".to_owned(), (*id).into()),
            ]),
            columns: vec!["n".to_owned()],
            old_row: None,
            new_row: None,
        })
        .collect();
    assert!(store
        .complete_sweep_chunk(&claimed, &result, &[], &divergences)
        .await
        .expect("complete"));
    store
        .finish_shared_run(run)
        .await
        .expect("finish")
        .expect("not finished elsewhere");
    run
}

/// Unconverged rows are summed per table, keys keep key-column order, a table that could not
/// be compared makes the sweep `incomplete` with its reason, and a key counts as persistently
/// unconverged only when every one of the last N sweeps listed it.
async fn unconverged_rows_across_sweeps(store: &ControlStore) {
    let first = sweep_with_unconverged(store, &[1, 2]).await;
    let runs = store.comparison_runs(1).await.expect("runs");
    assert_eq!(runs[0].status, "incomplete");
    assert_eq!(
        runs[0].error.as_deref(),
        Some("tables not compared: shapes: type point is not supported")
    );
    let tables = store.latest_table_results().await.expect("tables");
    let items = &tables
        .iter()
        .find(|t| t.result.table == "items")
        .expect("items")
        .result;
    assert_eq!((items.unconverged, items.identical), (2, false));
    let shapes = &tables
        .iter()
        .find(|t| t.result.table == "shapes")
        .expect("shapes")
        .result;
    assert_eq!(shapes.error.as_deref(), Some("type point is not supported"));
    assert!(!shapes.identical);
    let listed = store
        .divergences_of_run(first, Some("items"))
        .await
        .expect("listed");
    assert_eq!(listed[0].key.to_string(), r#"{"tenant":"b","id":1}"#);

    let keys =
        |found: Vec<KeyValues>| -> Vec<String> { found.iter().map(ToString::to_string).collect() };
    let persistent = store
        .persistently_unconverged(first, "items", 2)
        .await
        .expect("persistent");
    assert!(
        persistent.is_empty(),
        "one sweep is not two: {persistent:?}"
    );
    let second = sweep_with_unconverged(store, &[1]).await;
    let third = sweep_with_unconverged(store, &[1, 2]).await;
    for (run, sweeps, expected) in [
        (second, 2, vec![r#"{"tenant":"b","id":1}"#]),
        (third, 2, vec![r#"{"tenant":"b","id":1}"#]),
        (third, 3, vec![r#"{"tenant":"b","id":1}"#]),
        (third, 4, vec![]),
        (
            third,
            1,
            vec![r#"{"tenant":"b","id":1}"#, r#"{"tenant":"b","id":2}"#],
        ),
    ] {
        let found = store
            .persistently_unconverged(run, "items", sweeps)
            .await
            .expect("persistent");
        assert_eq!(keys(found), expected, "run {run}, {sweeps} sweeps");
    }
}

#[tokio::test]
async fn sqlite_store_counts_unconverged_rows_across_sweeps() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    unconverged_rows_across_sweeps(&store).await;
}

#[tokio::test]
async fn postgres_store_counts_unconverged_rows_across_sweeps() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    unconverged_rows_across_sweeps(&store).await;
    store.close().await;
}

/// On PostgreSQL (`FOR UPDATE SKIP LOCKED`), concurrent claimers of key conflicts each get a
/// different one, and a settlement records the outcome once.
#[tokio::test]
async fn postgres_store_claims_each_key_conflict_once() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    assert!(store
        .claim_key_conflict("a", Duration::from_secs(60))
        .await
        .expect("nothing to claim")
        .is_none());
    for n in 0..4 {
        store
            .record_key_conflict(Side::New, &format!("/orders/{n}"), &format!("r-{n}"))
            .await
            .expect("record");
    }
    let claims = claims_at_once(&store).await;
    let mut keys: Vec<&str> = claims.iter().map(|c| c.ordering_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["/orders/0", "/orders/1", "/orders/2", "/orders/3"]);
    assert!(store
        .settle_key_conflict(&claims[0], ConflictOutcome::Settled, Some("orders"), "same")
        .await
        .expect("settle"));
    assert!(!store
        .settle_key_conflict(
            &claims[0],
            ConflictOutcome::Diverged,
            Some("orders"),
            "again"
        )
        .await
        .expect("settle twice"));
    let listed = store.key_conflicts(10).await.expect("list");
    let settled = listed
        .iter()
        .find(|c| c.id == claims[0].id)
        .expect("settled one");
    assert_eq!(
        (settled.status.as_str(), settled.outcome.as_deref()),
        ("settled", Some("same"))
    );
    store.close().await;
}

/// Four claims made at once.
async fn claims_at_once(store: &ControlStore) -> Vec<KeyConflict> {
    let lease = Duration::from_secs(60);
    let (a, b, c, d) = tokio::join!(
        store.claim_key_conflict("a", lease),
        store.claim_key_conflict("b", lease),
        store.claim_key_conflict("c", lease),
        store.claim_key_conflict("d", lease),
    );
    [a, b, c, d]
        .into_iter()
        .map(|claim| claim.expect("claim").expect("a conflict each"))
        .collect()
}

#[tokio::test]
async fn sqlite_store_shares_sweeps() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = ControlStore::open(&url).await.expect("open");
    share_a_sweep(&store).await;
}

#[tokio::test]
async fn postgres_store_shares_sweeps() {
    let db = PostgresDb::create("tandem_control").await;
    let store = ControlStore::open(&db.url).await.expect("open");
    share_a_sweep(&store).await;
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
