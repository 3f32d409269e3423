//! Savepoints, and transactions that end where a client does not expect a transaction to
//! end: in `dual-write` what the authoritative side committed must be exactly what the other
//! side commits. A savepoint rolled back (by the application, by psql's `ON_ERROR_ROLLBACK`,
//! by an ORM's nested transaction after a unique violation) undoes only what followed it;
//! `COMMIT AND CHAIN` after an error rolls back and opens the next transaction; a Query that
//! commits one transaction and fails in the next keeps the first.

use super::exact::{
    assert_carried_over, identical_sides, psql_query, psql_script, run_python, succeeded,
};
use super::Proxy;

/// The transaction of the plain savepoint cases: b is rolled back to the savepoint, a and c
/// commit.
const SAVEPOINT: &str = "BEGIN;
INSERT INTO items (id, name) VALUES (10, 'a');
SAVEPOINT s;
INSERT INTO items (id, name) VALUES (11, 'b');
ROLLBACK TO SAVEPOINT s;
INSERT INTO items (id, name) VALUES (12, 'c');
COMMIT;
";

const AFTER_SAVEPOINT: &[&str] = &["1|existing||", "10|a||", "12|c||"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_savepoint_keeps_the_rest_of_the_transaction_statement_by_statement() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(
        &psql_script(&proxy.port, SAVEPOINT, true).await,
        "psql, one statement a Query",
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", AFTER_SAVEPOINT)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_savepoint_keeps_the_rest_of_the_transaction_in_one_query() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(
        &psql_query(&proxy.port, &SAVEPOINT.replace('\n', " ")).await,
        "psql, the transaction as one Query",
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", AFTER_SAVEPOINT)],
    )
    .await;
}

/// Runs `script` with psql (one statement a Query, going on after errors) through a proxy in
/// dual-write; the script must hit a duplicate key, and `public.items` end as `expected` on
/// both sides.
async fn script_with_a_duplicate_carries_over(script: &str, what: &str, expected: &[&str]) {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let psql = psql_script(&proxy.port, script, false).await;
    succeeded(&psql, what);
    assert!(
        String::from_utf8_lossy(&psql.stderr).contains("duplicate key"),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", expected)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_on_error_rollback_commits_the_statements_that_succeeded() {
    // psql wraps each statement in a savepoint of its own and rolls back to it on an error;
    // the transaction goes on and commits the others.
    let script = "\\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO items (id, name) VALUES (20, 'kept one');
INSERT INTO items (id, name) VALUES (21, 'existing');
INSERT INTO items (id, name) VALUES (22, 'kept two');
COMMIT;
";
    script_with_a_duplicate_carries_over(
        script,
        "psql with ON_ERROR_ROLLBACK",
        &["1|existing||", "20|kept one||", "22|kept two||"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_chain_after_an_error_rolls_back_and_the_chained_transaction_commits() {
    // The failed transaction's COMMIT AND CHAIN rolls it back (x is gone) and opens the next
    // one at once, without a ReadyForQuery outside a transaction in between; y commits.
    let script = "BEGIN;
INSERT INTO items (id, name) VALUES (30, 'x');
INSERT INTO items (id, name) VALUES (31, 'existing');
COMMIT AND CHAIN;
INSERT INTO items (id, name) VALUES (32, 'y');
COMMIT;
";
    script_with_a_duplicate_carries_over(
        script,
        "psql with COMMIT AND CHAIN",
        &["1|existing||", "32|y||"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_commits_and_then_fails_keeps_what_it_committed() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    // One Query: the first transaction commits; the second fails, and psql ends the session
    // with it still open (aborted): 30 is committed, 31 is not.
    let psql = psql_query(
        &proxy.port,
        "BEGIN; INSERT INTO items (id, name) VALUES (30, 'committed'); COMMIT; \
         BEGIN; INSERT INTO items (id, name) VALUES (31, 'aborted'); SELECT 1/0;",
    )
    .await;
    assert!(!psql.status.success());
    assert!(
        String::from_utf8_lossy(&psql.stderr).contains("division by zero"),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", &["1|existing||", "30|committed||"])],
    )
    .await;
}

/// An ORM's get-or-create with the Python client's `case`: inside an outer transaction the
/// insert of `existing` fails in a nested one (a savepoint) with a unique violation, is
/// rolled back to it, `existing` is read, and the outer transaction inserts on and commits.
/// The failed insert took id 3 from the sequence on old.
async fn get_or_create(case: &str) {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let answer = run_python(case, &proxy.port).await;
    assert_eq!(answer, serde_json::json!({"error": "23505", "found": 1}));
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", &["1|existing||", "2|before||", "4|after||"])],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_create_in_a_psycopg_nested_transaction() {
    get_or_create("psycopg_get_or_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_create_with_psycopg2_savepoints() {
    get_or_create("psycopg2_get_or_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_create_in_an_asyncpg_nested_transaction() {
    get_or_create("asyncpg_get_or_create").await;
}

/// asyncpg leaves a Parse/Describe unsynced (its prepare(), its COPY) before the next Query:
/// one ReadyForQuery then answers both, and every write after it must still be carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_statements_and_copy_keep_every_later_write() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let answer = run_python("asyncpg_prepare_and_copy", &proxy.port).await;
    assert_eq!(answer, serde_json::json!({"found": "existing"}));
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[(
            "public.items",
            &[
                "1|existing||",
                "2|p1||",
                "3|p2||",
                "4|p3||",
                "5|after1||",
                "6|after2||",
                "20|c1||",
                "21|c2||",
            ],
        )],
    )
    .await;
}
