//! The other side goes away under a long-lived client session and comes back: the client
//! never sees it (every call answers as the authoritative side alone would), what the other
//! side missed is kept whole (rolled-back transactions too, for the sequence values they
//! consumed) until `tandem pg-replay` applies it, and the same session's next write reaches
//! the other side by itself, on a mirror connection opened again.

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tandem_testkit::Forwarder;

use super::exact::{
    assert_carried_over, identical_sides, mismatches, psql_script, rows, sequence, session,
    sides_with_other_defaults_on_new, sqlstate, succeeded, tandem_json, within,
};
use super::{count, eventually, metric, mirror_failures, Proxy};

/// The PostgreSQL server every test database lives on.
const SERVER: &str = "127.0.0.1:5432";

/// The statement each of the client's writes is made with (prepared by sqlx once, on the
/// session, and reused).
const INSERT: &str = "INSERT INTO items (name) VALUES ($1) RETURNING id";

/// Inserts `name` with [`INSERT`] on the client's session (or transaction): the id, or the
/// error.
async fn insert<'c, E>(executor: E, name: &str) -> Result<i32, sqlx::Error>
where
    E: Executor<'c, Database = sqlx::Postgres>,
{
    within(
        &format!("the insert of {name}"),
        sqlx::query_scalar(INSERT).bind(name).fetch_one(executor),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_an_outage_of_the_other_side() {
    let (old, new) = identical_sides().await;
    let mut forwarder = Forwarder::new(SERVER).await;
    let through_forwarder = new
        .url
        .replacen(SERVER, &format!("127.0.0.1:{}", forwarder.port()), 1);
    assert_ne!(through_forwarder, new.url);
    let proxy = Proxy::start("dual-write", &old.url, &through_forwarder, &[]);
    let mut client = session(&proxy.address).await;
    let named = |name: &str| format!("SELECT count(*) FROM items WHERE name = '{name}'");

    // A reaches new the ordinary way.
    assert_eq!(insert(&mut client, "A").await.unwrap(), 2);
    eventually(&new.url, &named("A"), 1).await;

    // New goes away. The client's calls answer exactly as old alone answers them.
    within("stopping the forwarder", forwarder.stop()).await;
    assert_eq!(insert(&mut client, "B").await.unwrap(), 3, "B commits");
    let mut rolled_back = within("BEGIN", client.begin()).await.unwrap();
    assert_eq!(insert(&mut *rolled_back, "C").await.unwrap(), 4);
    within("ROLLBACK", rolled_back.rollback()).await.unwrap();
    let mut failed = within("BEGIN", client.begin()).await.unwrap();
    assert_eq!(
        sqlstate(insert(&mut *failed, "existing").await),
        "23505",
        "a duplicate key, after taking id 5"
    );
    within("ROLLBACK", failed.rollback()).await.unwrap();
    assert_eq!(
        rows(&old.url, "public.items").await,
        ["1|existing||", "2|A||", "3|B||"]
    );

    // The three transactions are kept for new, the rolled-back ones too (their sequence
    // use must be replayed), in commit order.
    let deadline = Instant::now() + Duration::from_secs(15);
    let kept = loop {
        let kept = mirror_failures(&proxy.control, false);
        if kept.as_array().map_or(0, Vec::len) >= 3 || Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kept = kept.as_array().unwrap_or_else(|| panic!("{kept}"));
    assert_eq!(kept.len(), 3, "B, C and the failed one: {kept:?}");
    for failure in kept {
        assert_eq!(failure["target"], "new", "{failure}");
        assert_eq!(failure["method"], "SQL", "{failure}");
        assert_eq!(failure["status"], "pending", "{failure}");
        assert_eq!(failure["uri"], INSERT, "each one's first write: {failure}");
    }
    let ids: Vec<i64> = kept
        .iter()
        .map(|failure| failure["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert_eq!(count(&new.url, &named("B")).await, 0);

    // New is back: the replay applies them, in order.
    within("starting the forwarder", forwarder.start()).await;
    let (code, report, stderr) = tandem_json(&[
        "pg-replay",
        "--old",
        &old.url,
        "--new",
        &through_forwarder,
        "--control-db",
        &proxy.control,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(report["replayed"], 3, "{report}");
    assert_eq!(report["blocked_by"], serde_json::Value::Null, "{report}");
    assert_eq!(
        rows(&new.url, "public.items").await,
        ["1|existing||", "2|A||", "3|B||"]
    );
    assert_eq!(
        sequence(&new.url, "items_id_seq").await,
        (5, true),
        "C's and the failed insert's ids were taken on new too"
    );

    // The same session's next write reaches new by itself: its mirror connection is opened
    // again, and nothing is kept.
    assert_eq!(insert(&mut client, "D").await.unwrap(), 6);
    eventually(&new.url, &named("D"), 1).await;
    let pending = mirror_failures(&proxy.control, false);
    assert_eq!(pending, serde_json::json!([]), "nothing pending after D");
    let all = mirror_failures(&proxy.control, true);
    let statuses: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|failure| failure["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["replayed"; 3], "{all}");
    within("closing the client", client.close()).await.unwrap();

    // New ends like old: the same rows with the same ids, the sequence where old's is.
    let expected: &[&str] = &["1|existing||", "2|A||", "3|B||", "6|D||"];
    assert_eq!(rows(&new.url, "public.items").await, expected);
    assert_eq!(
        sequence(&new.url, "items_id_seq").await,
        sequence(&old.url, "items_id_seq").await
    );
    assert_eq!(sequence(&old.url, "items_id_seq").await, (6, true));
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
async fn a_commit_whose_answer_is_lost_is_neither_lost_nor_applied_twice() {
    let (old, new) = identical_sides().await;
    let forwarder = Forwarder::new(SERVER).await;
    let through_forwarder = new
        .url
        .replacen(SERVER, &format!("127.0.0.1:{}", forwarder.port()), 1);
    let proxy = Proxy::start("dual-write", &old.url, &through_forwarder, &[]);
    let mut client = session(&proxy.address).await;
    let named = |name: &str| format!("SELECT count(*) FROM items WHERE name = '{name}'");

    // The mirror's connection breaks after its COMMIT reached new, before the answer came
    // back: new committed the transaction, and tandem must find that out instead of keeping
    // it for a replay that would apply it a second time.
    forwarder.cut_after(b"COMMIT\0");
    let mut transaction = within("BEGIN", client.begin()).await.unwrap();
    assert_eq!(insert(&mut *transaction, "A").await.unwrap(), 2);
    within("COMMIT", transaction.commit()).await.unwrap();
    eventually(&new.url, &named("A"), 1).await;

    // A statement committed alone is carried inside a block there, so that the same question
    // can be asked of it.
    forwarder.cut_after(b"COMMIT\0");
    assert_eq!(insert(&mut client, "B").await.unwrap(), 3);
    eventually(&new.url, &named("B"), 1).await;

    // Later transactions are not held behind either: C arrives on the connection opened again.
    assert_eq!(insert(&mut client, "C").await.unwrap(), 4);
    eventually(&new.url, &named("C"), 1).await;
    assert_eq!(
        mirror_failures(&proxy.control, true),
        serde_json::json!([]),
        "nothing is kept for replay"
    );
    assert_eq!(
        metric(
            &proxy.admin,
            "tandem_pg_in_doubt_commits_total{outcome=\"committed\"}"
        )
        .await,
        2.0
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", &["1|existing||", "2|A||", "3|B||", "4|C||"])],
    )
    .await;
    drop(client);
}

/// A write kept for replay before its session ever had a connection to the other side (down
/// from the session's start) replays with the parameters its client was told, not with the
/// other side's database defaults (another TimeZone, DateStyle and IntervalStyle there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_kept_before_its_session_reached_the_other_side_replays_with_its_clients_parameters(
) {
    let (old, new) = sides_with_other_defaults_on_new().await;
    let mut forwarder = Forwarder::new(SERVER).await;
    let through_forwarder = new
        .url
        .replacen(SERVER, &format!("127.0.0.1:{}", forwarder.port()), 1);
    let proxy = Proxy::start("dual-write", &old.url, &through_forwarder, &[]);
    within("stopping the forwarder", forwarder.stop()).await;
    let script = "INSERT INTO items (id, name, at, day) VALUES \
                  (70, '1 day 2 hours'::interval::text, '2026-01-02 03:04', '01/02/2026');";
    succeeded(&psql_script(&proxy.port, script, true).await, script);
    let deadline = Instant::now() + Duration::from_secs(15);
    let kept = loop {
        let kept = mirror_failures(&proxy.control, false);
        if kept.as_array().map_or(0, Vec::len) >= 1 || Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kept.as_array().map_or(0, Vec::len), 1, "{kept}");

    within("starting the forwarder", forwarder.start()).await;
    let (code, report, stderr) = tandem_json(&[
        "pg-replay",
        "--old",
        &old.url,
        "--new",
        &through_forwarder,
        "--control-db",
        &proxy.control,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(report["replayed"], 1, "{report}");
    let written = [
        "1|existing||",
        "70|1 day 02:00:00|2026-01-02 03:04|2026-01-02",
    ];
    assert_eq!(rows(&old.url, "public.items").await, written, "the premise");
    assert_eq!(rows(&new.url, "public.items").await, written);
}
