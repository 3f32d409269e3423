//! The other side applying slower than clients commit: tandem's backlog of transactions owed
//! to it stays under `--max-mirror-backlog` (sessions wait at their transaction ends instead),
//! and everything still arrives exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, Executor};

use super::exact::{assert_carried_over, identical_sides, rows, session, within};
use super::{metric, Proxy};

/// Clients writing at once, and inserts each.
const CLIENTS: u64 = 4;
const INSERTS: u64 = 15;
/// The backlog allowed.
const BACKLOG: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_other_side_makes_transaction_ends_wait_instead_of_growing_the_backlog() {
    let (old, new) = identical_sides().await;
    // New takes 50 ms per inserted row; old takes none.
    let mut slow = sqlx::PgConnection::connect(&new.url).await.unwrap();
    slow.execute(sqlx::raw_sql(
        "CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$; \
         CREATE TRIGGER slowly BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION slowly();",
    ))
    .await
    .unwrap();
    slow.close().await.unwrap();
    let backlog = BACKLOG.to_string();
    let proxy = Proxy::start(
        "dual-write",
        &old.url,
        &new.url,
        &["--max-mirror-backlog", &backlog],
    );

    let deepest = Arc::new(AtomicU64::new(0));
    let watching = {
        let (admin, deepest) = (proxy.admin.clone(), Arc::clone(&deepest));
        tokio::spawn(async move {
            loop {
                let depth = metric(&admin, "tandem_mirror_queue_depth").await;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                deepest.fetch_max(depth as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let address = proxy.address.clone();
        clients.spawn(async move {
            let mut conn = session(&address).await;
            for insert in 0..INSERTS {
                // Explicit ids: concurrent sessions drawing from one sequence get ids in
                // execution order, which statements re-run in commit order cannot reproduce
                // (the write-ahead-log capture of issue 14 carries them exactly).
                sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
                    .bind(i32::try_from(1_000 + client * 100 + insert).unwrap())
                    .bind(format!("c{client}-{insert}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        });
    }
    within("the clients", async {
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
    })
    .await;
    watching.abort();

    // Each session may hand over its own transaction before it waits: the backlog never
    // exceeds the limit by more than the sessions writing.
    let deepest = deepest.load(Ordering::SeqCst);
    assert!(
        deepest <= BACKLOG + CLIENTS,
        "the backlog reached {deepest} transactions (limit {BACKLOG})"
    );
    assert!(
        metric(
            &proxy.admin,
            "tandem_pg_mirror_backpressure_wait_seconds_count"
        )
        .await
            > 0.0,
        "transaction ends waited for the other side"
    );
    let written = rows(&old.url, "public.items").await;
    assert_eq!(
        written.len(),
        usize::try_from(1 + CLIENTS * INSERTS).unwrap()
    );
    let written: Vec<&str> = written.iter().map(String::as_str).collect();
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", &written)],
    )
    .await;
}
