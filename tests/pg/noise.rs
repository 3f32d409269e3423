//! What the authoritative side's circumstances did is no difference between the sides: a
//! statement cancelled by its `statement_timeout`, a deadlock victim and a serialization
//! failure are not run again on the other side and are not response mismatches, and the new
//! side ends exactly like the old. Mismatches that are recorded carry fingerprints without
//! the statement's literals.

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

use super::exact::{
    assert_carried_over, identical_sides, mismatches, psql_query, rows, run_python, sequence,
    session, sqlstate, succeeded, within,
};
use super::Proxy;

/// Runs `sql` (one or more statements, the simple protocol) on `url` directly.
async fn direct(url: &str, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(sqlx::raw_sql(sql)).await.unwrap();
    conn.close().await.unwrap();
}

/// Runs `sql` (the simple protocol) on a client session, bounded by the hang check.
async fn run(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    within(sql, conn.execute(sqlx::raw_sql(sql)))
        .await
        .map(drop)
}

/// Inserts row 2 (`second`) through the proxy on `port`: both sides have rows 1 and 2.
async fn second_row(port: &str) {
    let sql = "INSERT INTO items (name) VALUES ('second')";
    succeeded(&psql_query(port, sql).await, sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cancelled_by_statement_timeout_is_not_run_again_on_the_other_side() {
    let (old, new) = identical_sides().await;
    for db in [&old, &new] {
        direct(&db.url, "CREATE SEQUENCE runaway_seq").await;
    }
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let mut client = session(&proxy.address).await;
    run(&mut client, "SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let cancelled = run(&mut client, "SELECT nextval('runaway_seq'), pg_sleep(30)").await;
    assert_eq!(sqlstate(cancelled), "57014");
    assert_eq!(
        sequence(&old.url, "runaway_seq").await,
        (1, true),
        "the premise: old ran it until the timeout"
    );
    // The session goes on, and so does another one.
    run(
        &mut client,
        "INSERT INTO items (name) VALUES ('same session')",
    )
    .await
    .unwrap();
    within("closing the client", client.close()).await.unwrap();
    let sql = "INSERT INTO items (name) VALUES ('another session')";
    succeeded(&psql_query(&proxy.port, sql).await, sql);
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[(
            "public.items",
            &["1|existing||", "2|same session||", "3|another session||"],
        )],
    )
    .await;
    // Not run again on new (a value it took there would show); what it took on old is not
    // carried either, the documented limit of a cancelled statement.
    assert_eq!(
        sequence(&new.url, "runaway_seq").await,
        (1, false),
        "runaway_seq was never used on new"
    );
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());
}

/// Updates row `id` on a session inside a transaction, then commits; when the update failed,
/// rolls back and returns its SQLSTATE.
async fn update_then_end(conn: &mut sqlx::PgConnection, id: i32, name: &str) -> Result<(), String> {
    let updated = within(
        &format!("the update of row {id}"),
        sqlx::query("UPDATE items SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(id)
            .execute(&mut *conn),
    )
    .await;
    match updated {
        Ok(_) => {
            run(conn, "COMMIT").await.unwrap();
            Ok(())
        }
        Err(err) => {
            run(conn, "ROLLBACK").await.unwrap();
            Err(sqlstate::<()>(Err(err)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_on_the_authoritative_side_are_not_mismatches() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    second_row(&proxy.port).await;
    let (mut a, mut b) = (session(&proxy.address).await, session(&proxy.address).await);
    // a holds row 1, b holds row 2; then each updates the other's row.
    run(&mut a, "BEGIN").await.unwrap();
    run(&mut a, "UPDATE items SET name = 'a1' WHERE id = 1")
        .await
        .unwrap();
    run(&mut b, "BEGIN").await.unwrap();
    run(&mut b, "UPDATE items SET name = 'b2' WHERE id = 2")
        .await
        .unwrap();
    let (ended_a, ended_b) = tokio::join!(
        update_then_end(&mut a, 2, "a2"),
        update_then_end(&mut b, 1, "b1"),
    );
    let expected: &[&str] = match (&ended_a, &ended_b) {
        (Ok(()), Err(code)) if code == "40P01" => &["1|a1||", "2|a2||"],
        (Err(code), Ok(())) if code == "40P01" => &["1|b1||", "2|b2||"],
        other => panic!("one deadlock victim and one commit: {other:?}"),
    };
    for conn in [a, b] {
        within("closing a client", conn.close()).await.unwrap();
    }
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", expected)],
    )
    .await;
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_are_not_mismatches() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    second_row(&proxy.port).await;

    // REPEATABLE READ, sqlx: a's snapshot is taken by its first update (row 2); b updates
    // row 1 and commits; a's update of row 1 then fails with 40001 and a rolls back.
    let (mut a, mut b) = (session(&proxy.address).await, session(&proxy.address).await);
    run(&mut a, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    run(&mut a, "UPDATE items SET name = 'a2' WHERE id = 2")
        .await
        .unwrap();
    run(&mut b, "UPDATE items SET name = 'b1' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        update_then_end(&mut a, 1, "a1").await,
        Err("40001".to_owned())
    );
    for conn in [a, b] {
        within("closing a client", conn.close()).await.unwrap();
    }
    assert_eq!(
        rows(&old.url, "public.items").await,
        ["1|b1||", "2|second||"]
    );

    // SERIALIZABLE, psycopg: a write skew; one commits, the other fails with 40001 (at its
    // update or at its commit).
    let outcomes = run_python("serializable_write_skew", &proxy.port).await;
    let committed = |name: &str| outcomes[name] == "committed";
    let expected: &[&str] = match (committed("first"), committed("second")) {
        (true, false) if outcomes["second"] == "40001" => &["1|b1||", "2|first wins||"],
        (false, true) if outcomes["first"] == "40001" => &["1|second wins||", "2|second||"],
        _ => panic!("one serialization failure and one commit: {outcomes}"),
    };
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", expected)],
    )
    .await;
    assert_eq!(mismatches(&proxy.control).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_fingerprints_carry_no_literals() {
    let (old, new) = identical_sides().await;
    direct(
        &new.url,
        "UPDATE items SET name = 'renamed on new' WHERE id = 1",
    )
    .await;
    let proxy = Proxy::start("shadow", &old.url, &new.url, &[]);
    let sql = "SELECT name FROM items WHERE id = 1 AND name <> 'secret-value' AND id IN (1, 2, 3)";
    let mut client = session(&proxy.address).await;
    // The simple protocol, then the extended (the literals in the prepared statement).
    let simple = within(sql, client.fetch_one(sqlx::raw_sql(sql)))
        .await
        .unwrap();
    let extended: String = within(sql, sqlx::query_scalar(sql).fetch_one(&mut client))
        .await
        .unwrap();
    assert_eq!(
        (sqlx::Row::get::<String, _>(&simple, 0), extended),
        ("existing".to_owned(), "existing".to_owned()),
        "the client gets old's answer"
    );
    within("closing the client", client.close()).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        let found = mismatches(&proxy.control).await;
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 2, "both reads differ: {found:?}");
    for mismatch in &found {
        let (fingerprint, diff) = mismatch.split_once(": ").unwrap();
        assert!(
            fingerprint.starts_with("SELECT name FROM items WHERE id = ? AND name <> ?"),
            "{mismatch}"
        );
        assert!(fingerprint.contains("IN (?"), "{mismatch}");
        assert!(!fingerprint.contains("secret-value"), "{mismatch}");
        assert!(
            !fingerprint.chars().any(|c| c.is_ascii_digit()),
            "{mismatch}"
        );
        assert!(diff.contains("rows differ"), "{mismatch}");
    }

    // Put right behind the proxy's back, the sides end identical, writes mirrored in shadow.
    direct(&new.url, "UPDATE items SET name = 'existing' WHERE id = 1").await;
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", &["1|existing||"])],
    )
    .await;
}
