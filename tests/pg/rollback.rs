//! The PostgreSQL proxy flushes its counts to the control store like the HTTP proxy, so the
//! comparator's rate policies judge its traffic: reads that differ in `shadow` roll the stage
//! back, and the proxy serves by the new stage.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tandem_control::{ControlStore, Stage};
use tandem_testkit::ChildProcess;

use super::{eventually, metric, sides, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_reads_roll_the_stage_back() {
    // The sides hold different values for row 1: every read of it differs.
    let (old, new) = sides().await;
    let Proxy {
        address,
        admin,
        control,
        dir,
        ..
    } = &Proxy::start("shadow", &old.url, &new.url, &["--stats-interval", "100ms"]);
    let config = dir.path().join("comparator.toml");
    std::fs::write(
        &config,
        "[alerts]\nevaluate_interval = \"100ms\"\nmin_samples = 5\nrate_period = \"1m\"\n\
         [[rollback]]\nname = \"pg-mismatches\"\nmismatch_rate_above = 0.5\ntarget = \"dual-write\"\n",
    )
    .unwrap();
    let (_comparator, _api) = ChildProcess::comparator(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &old.url,
        &new.url,
        control,
        &["--config", config.to_str().unwrap(), "--interval", "1h"],
    );

    let through = super::through(address);
    reads_then_a_write(&through, 10, 40, &new.url).await;

    let store = ControlStore::open(control).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let record = store.current_stage().await.unwrap();
        if record.stage == Stage::DualWrite {
            break record;
        }
        assert!(Instant::now() < deadline, "still {:?}", record.stage);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record.by, "tandem:auto-rollback");
    assert!(record.reason.contains("pg-mismatches"), "{}", record.reason);
    store.close().await;

    // The proxy applies it: reads are no longer run on the other side.
    let compared = || metric(admin, "tandem_pg_compared_reads_total");
    // The ten reads (the statement sqlx prepared first ran nothing: it is no transaction).
    let compared_in_shadow = compared().await;
    assert_eq!(compared_in_shadow, 10.0);
    super::stages::stage_applied(admin, "dual-write").await;
    // A write after the read, applied on the other side after it would have been compared.
    reads_then_a_write(&through, 1, 50, &new.url).await;
    assert_eq!(
        compared().await,
        compared_in_shadow,
        "dual-write compares no reads"
    );
}

/// A session through the proxy: `reads` reads of row 1 (old answers), then an insert of row
/// `id`; returns once that row is on the other side, so every read before it has reached
/// the other side too (compared in shadow, skipped in dual-write).
async fn reads_then_a_write(through: &str, reads: usize, id: i32, new: &str) {
    let mut conn = sqlx::PgConnection::connect(through).await.unwrap();
    for _ in 0..reads {
        let side: String = sqlx::query_scalar("SELECT side FROM items WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(side, "old");
    }
    sqlx::query("INSERT INTO items VALUES ($1, 'after the reads')")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    eventually(
        new,
        &format!("SELECT count(*) FROM items WHERE id = {id}"),
        1,
    )
    .await;
}
