//! A transaction that failed on the authoritative side rolls back there when the client says
//! COMMIT; on the other side, where the same statements may have succeeded, it must roll back
//! too.

use sqlx::{Connection, Executor};

use super::{count, eventually, proxy_in, sides};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_authoritative_side_turned_into_a_rollback_commits_nothing_there() {
    let (old, new) = sides().await;
    // Only old has row 5: inserting it again fails there, and would succeed on new.
    let mut direct = sqlx::PgConnection::connect(&old.url).await.unwrap();
    direct
        .execute("INSERT INTO items VALUES (5, 'only on old')")
        .await
        .unwrap();
    direct.close().await.unwrap();
    let (_proxy, address, control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let mut conn = sqlx::PgConnection::connect(&super::through(&address))
        .await
        .unwrap();
    conn.execute(sqlx::raw_sql("BEGIN")).await.unwrap();
    conn.execute(sqlx::raw_sql(
        "INSERT INTO items VALUES (6, 'in the failed one')",
    ))
    .await
    .unwrap();
    let failed = conn
        .execute(sqlx::raw_sql(
            "INSERT INTO items VALUES (5, 'a duplicate on old')",
        ))
        .await;
    assert!(failed.is_err());
    conn.execute(sqlx::raw_sql("COMMIT")).await.unwrap();
    conn.execute(sqlx::raw_sql("INSERT INTO items VALUES (7, 'after it')"))
        .await
        .unwrap();
    conn.close().await.unwrap();

    eventually(&new.url, "SELECT count(*) FROM items WHERE id = 7", 1).await;
    assert_eq!(
        count(&new.url, "SELECT count(*) FROM items WHERE id IN (5, 6)").await,
        0,
        "nothing of the failed transaction was committed on new"
    );
    let store = tandem_control::ControlStore::open(&control).await.unwrap();
    let mismatches = store.response_mismatches(10).await.unwrap();
    store.close().await;
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert!(
        mismatches[0]
            .diff
            .starts_with("only the authoritative side failed: 23505"),
        "{}",
        mismatches[0].diff
    );
}
