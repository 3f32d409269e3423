//! SIGTERM: open sessions finish, their transactions still reach the other side, and what the
//! other side has not applied by the deadline is kept for `tandem pg-replay`, never lost.

use std::time::Duration;

use sqlx::{Connection, Executor};

use super::{count, eventually, mirror_failures, pg_replay, psql, sides, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_sessions_finish_and_keeps_what_the_other_side_missed() {
    let (old, new) = sides().await;
    let Proxy {
        process: mut proxy,
        address,
        port,
        control,
        // Holds the control store: dropping it would delete it.
        dir: _dir,
        ..
    } = Proxy::start(
        "dual-write",
        &old.url,
        &new.url,
        // Long enough for a loaded machine's psql polling and COMMIT below; the lock on new
        // keeps the copies from being applied however long it is.
        &["--shutdown-timeout", "10s"],
    );

    // A session in the middle of a transaction when SIGTERM arrives finishes it.
    let through = super::through(&address);
    let mut open = sqlx::PgConnection::connect(&through).await.unwrap();
    open.execute(sqlx::raw_sql(
        "BEGIN; INSERT INTO items VALUES (2, 'open at SIGTERM') ON CONFLICT DO NOTHING",
    ))
    .await
    .unwrap();

    // The other side cannot apply anything while this lock is held.
    let mut blocker = sqlx::PgConnection::connect(&new.url).await.unwrap();
    blocker
        .execute(sqlx::raw_sql(
            "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
        ))
        .await
        .unwrap();
    for id in 3..6 {
        let insert = format!("INSERT INTO items VALUES ({id}, 'queued') ON CONFLICT DO NOTHING");
        let answer = psql(&port, "postgres", &insert);
        assert!(
            answer.status.success(),
            "{}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    proxy.terminate();
    // New sessions are refused once the listener is closed; the open one goes on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while psql(&port, "postgres", "SELECT 1").status.success() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open.execute(sqlx::raw_sql("COMMIT")).await.unwrap();
    open.close().await.unwrap();

    let status = proxy.wait(Duration::from_secs(40));
    assert!(status.success(), "{}", proxy.log());
    assert_eq!(count(&old.url, "SELECT count(*) FROM items").await, 5);
    blocker.execute(sqlx::raw_sql("ROLLBACK")).await.unwrap();
    blocker.close().await.unwrap();

    // Every write the other side had not applied is kept, and replay brings it level.
    let kept = mirror_failures(&control, false);
    assert_eq!(kept.as_array().unwrap().len(), 4, "{kept}");
    let replayed = pg_replay(&old.url, &new.url, &control, &[]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stdout)
    );
    eventually(&new.url, "SELECT count(*) FROM items", 5).await;
}
