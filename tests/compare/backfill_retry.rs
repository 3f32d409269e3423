//! A backfill chunk that fails with a transient error (here its session on the new side
//! terminated by the server while the chunk's insert runs) is tried again and the table ends
//! identical, counted once; a chunk that keeps failing is named, exit 2, and not checkpointed,
//! so a rerun copies it.

use crate::backfill::{backfill, control_db, databases, ROWS};
use crate::backfill_progress::status_json;
use crate::engines::{compare, run_tandem, Kind, TestDb};

/// Makes `items` on `new` terminate the session that inserts into it, when `condition` (on the
/// row inserted and `nextval('faults')`) holds; `nextval` is not rolled back with the
/// transaction the termination aborts, so it counts the inserts tried.
async fn terminate_inserts(new: &TestDb, condition: &str) {
    new.exec(&[
        "CREATE SEQUENCE faults".to_owned(),
        format!(
            "CREATE FUNCTION terminate_inserter() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF {condition} THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; \
             RETURN NEW; END $$"
        ),
        "CREATE TRIGGER terminate_inserter BEFORE INSERT ON items FOR EACH ROW \
         EXECUTE FUNCTION terminate_inserter()"
            .to_owned(),
    ])
    .await;
}

/// One thread, chunks of 10,000 rows, and a failed chunk tried again after 10 ms.
const RETRY: [&str; 6] = [
    "--chunk-retry-delay",
    "10ms",
    "--threads",
    "1",
    "--chunk-rows",
    "10000",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_session_is_terminated_is_tried_again() {
    let (old, new) = databases(Kind::Postgres).await;
    // The first row inserted on new, in the first chunk's bulk insert, ends its session.
    terminate_inserts(&new, "nextval('faults') = 1").await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &RETRY);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunk_retries"], 1, "{report}");
    assert_eq!(table["chunks_done"], 6, "{report}");
    assert_eq!(
        table["copied"], ROWS,
        "the rolled-back try is not counted: {report}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the retry: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_keeps_failing_is_named_and_not_checkpointed() {
    let (old, new) = databases(Kind::Postgres).await;
    // Every insert of row 25000 (chunk 2: keys 20001 to 30000) ends its session.
    terminate_inserts(&new, "NEW.id = 25000").await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let args = [
        "--control-db",
        control.as_str(),
        "--table",
        "items",
        "--threads",
        "1",
        "--chunk-retries",
        "2",
        "--chunk-retry-delay",
        "10ms",
        "--chunk-rows",
        "10000",
    ];
    let output = run_tandem("backfill", &old, &new, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "backfill of table items: chunk 2 (keys after {\"id\":20000} through {\"id\":30000}) \
             failed 3 time(s) and is not checkpointed"
        ),
        "{stderr}"
    );
    let status = status_json(&control);
    assert_eq!(
        status["done"], 2,
        "the chunks before it, not it nor after it: {status}"
    );
    assert_eq!(
        status["counts"]["copied"], 20_000,
        "only the done chunks' rows are counted: {status}"
    );

    new.exec(&["DROP TRIGGER terminate_inserter ON items".to_owned()])
        .await;
    let (code, report) = backfill(
        &old,
        &new,
        &control,
        &["--threads", "1", "--chunk-rows", "10000"],
    );
    assert_eq!(code, 0, "the rerun copies the chunk: {report}");
    assert_eq!(report["tables"][0]["chunks_resumed"], 2, "{report}");
    let status = status_json(&control);
    assert_eq!(
        status["counts"]["copied"], ROWS,
        "every row counted once over both runs: {status}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the rerun: {compared}");
}

/// A chunk the row way writes in batches, whose third batch's session is terminated: the two
/// batches that committed count as copied, and the next try neither writes them again nor
/// takes them for rows found already equal (`skipped` stays the first try's 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_before_a_failed_one_are_counted_once() {
    let (old, new) = databases(Kind::Postgres).await;
    // Rows 1 to 10 already on new, as old holds them: the first chunk goes the row way, in
    // batches of 1,000 keys (11-1010, 1011-2010, 2011-3010, …).
    new.exec(&["INSERT INTO items SELECT g, 'name' || g, g * 1.25, \
         TIMESTAMP '2024-01-01' + g * INTERVAL '1 minute', g % 2 = 0, \
         CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text) END FROM generate_series(1, 10) g"
        .to_owned()])
        .await;
    terminate_inserts(
        &new,
        "(CASE WHEN NEW.id = 2500 THEN nextval('faults') = 1 ELSE false END)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &RETRY);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunk_retries"], 1, "{report}");
    assert_eq!(table["copied"], ROWS - 10, "{report}");
    assert_eq!(table["skipped"], 10, "{report}");
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the retry: {compared}");
}
