//! `tandem compare --control-db` records every run, table result (a table that could not be
//! compared with its reason) and listed divergence.

use tandem_control::ControlStore;

use crate::drift::{drift, identical_sqlite_pair};
use crate::engines::{compare, compare_output};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_results_and_divergences_are_recorded() {
    let (old, new, _dir, control) = identical_sqlite_pair().await;

    let (code, _) = compare(&old, &new, &["--control-db", &control]);
    assert_eq!(code, 0);
    new.exec(&drift(&new)).await;
    let (code, _) = compare(&old, &new, &["--control-db", &control, "--table", "items"]);
    assert_eq!(code, 1);
    let output = compare_output(&old, &new, &["--control-db", &control, "--table", "gone"]);
    assert_eq!(output.status.code(), Some(2));

    let store = ControlStore::open(&control).await.unwrap();
    let runs = store.comparison_runs(10).await.unwrap();
    let statuses: Vec<&str> = runs.iter().map(|run| run.status.as_str()).collect();
    assert_eq!(statuses, ["failed", "divergent", "identical"]);
    assert!(
        runs[0].error.as_deref().unwrap().contains("gone"),
        "{runs:?}"
    );
    assert!(runs.iter().all(|run| run.finished_at.is_some()));

    let latest = store.latest_table_results().await.unwrap();
    let find = |name: &str| {
        latest
            .iter()
            .find(|latest| latest.result.table == name)
            .unwrap()
    };
    let items = find("items");
    assert_eq!(
        items.run_id, runs[1].id,
        "the latest result of items is the divergent run"
    );
    let counts = &items.result;
    assert_eq!(
        (counts.missing_in_new, counts.extra_in_new, counts.changed),
        (1, 1, 7)
    );
    assert!(!counts.identical);
    assert!(
        find("accounts").result.identical,
        "accounts was last compared in the identical run"
    );
    let gone = &find("gone").result;
    assert!(
        gone.error.as_deref().unwrap().contains("gone") && !gone.identical,
        "a table that could not be compared is recorded with its reason: {gone:?}"
    );

    let divergences = store
        .divergences_of_run(runs[1].id, Some("items"))
        .await
        .unwrap();
    assert_eq!(divergences.len(), 9);
    let changed = divergences
        .iter()
        .find(|divergence| divergence.key.to_string() == r#"{"id":13}"#)
        .unwrap();
    assert_eq!(changed.kind, "changed");
    assert_eq!(changed.columns, ["amount"]);
    store.close().await;
}
