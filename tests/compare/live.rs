//! Writes in flight during a comparison are not reported once rechecks are on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;

use crate::engines::{Kind, TestDb};
use tandem_testkit::table;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_writes_cause_no_false_divergence() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let rows = 3_000;
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)".to_owned(),
            format!("INSERT INTO counters SELECT g, 0 FROM generate_series(1, {rows}) g"),
        ])
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (old_url, new_url) = (old.url(), new.url());
        let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
        tokio::spawn(async move {
            let old = AnyPoolOptions::new().connect(&old_url).await.unwrap();
            let new = AnyPoolOptions::new().connect(&new_url).await.unwrap();
            let mut id = 1;
            while !stop.load(Ordering::Relaxed) {
                id = (id * 7919) % rows + 1;
                let sql = format!("UPDATE counters SET n = n + 1 WHERE id = {id}");
                sqlx::query(&sql).execute(&old).await.unwrap();
                // The copy reaches the new side a little later, as through the proxy.
                tokio::time::sleep(Duration::from_millis(5)).await;
                sqlx::query(&sql).execute(&new).await.unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The comparison starts once the writer is writing (on a loaded machine its connections
    // can take longer than any fixed pause), and what counts is what it wrote meanwhile.
    while writes.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = writes.load(Ordering::Relaxed);
    let (code, report) = tokio::task::spawn_blocking({
        let (old, new) = (old.url(), new.url());
        move || {
            let old = TestDbUrl(old);
            let new = TestDbUrl(new);
            old.compare(&new)
        }
    })
    .await
    .unwrap();
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(
        during > 0,
        "the writer ran during the comparison ({during} writes)"
    );
    assert_eq!(code, 0, "no false divergence: {report}");
    assert_eq!(table(&report, "counters")["rows_old"], rows);
}

/// Runs the CLI by URL from a blocking thread (the writer keeps the runtime busy).
struct TestDbUrl(String);

impl TestDbUrl {
    fn compare(&self, new: &TestDbUrl) -> (i32, serde_json::Value) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "compare",
                "--old",
                &self.0,
                "--new",
                &new.0,
                "--format",
                "json",
                "--window-rows",
                "100",
                "--recheck",
                "3",
                "--recheck-delay",
                "200ms",
            ])
            .output()
            .unwrap();
        let code = output.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 1,
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (code, serde_json::from_slice(&output.stdout).unwrap())
    }
}

/// A row updated every 60 ms whose copy reaches the new side 200 ms later differs at every
/// recheck, yet both sides keep moving: it is `unconverged`, not a confirmed change, while a
/// row that differs and holds still is `changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_never_hold_still_are_unconverged_not_changed() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    for db in [&old, &new] {
        db.exec(&[
            "CREATE TABLE hot (id INT PRIMARY KEY, n BIGINT NOT NULL)".to_owned(),
            "INSERT INTO hot VALUES (1, 0), (2, 0)".to_owned(),
        ])
        .await;
    }
    new.exec(&["UPDATE hot SET n = -1 WHERE id = 2".to_owned()])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (old_url, new_url) = (old.url(), new.url());
        let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
        tokio::spawn(async move {
            let old = AnyPoolOptions::new().connect(&old_url).await.unwrap();
            let new = AnyPoolOptions::new().connect(&new_url).await.unwrap();
            let mut lagging = std::collections::VecDeque::new();
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = format!("UPDATE hot SET n = {n} WHERE id = 1");
                sqlx::query(&sql).execute(&old).await.unwrap();
                lagging.push_back((
                    tokio::time::Instant::now() + Duration::from_millis(200),
                    sql,
                ));
                while lagging
                    .front()
                    .is_some_and(|(due, _)| *due <= tokio::time::Instant::now())
                {
                    let (_, sql) = lagging.pop_front().unwrap();
                    sqlx::query(&sql).execute(&new).await.unwrap();
                }
                writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    while writes.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, report) = tokio::task::spawn_blocking({
        let (old, new) = (old.url(), new.url());
        move || TestDbUrl(old).compare(&TestDbUrl(new))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(code, 1, "{report}");
    let hot = table(&report, "hot");
    assert_eq!(
        (&hot["changed"], &hot["unconverged"]),
        (&1.into(), &1.into()),
        "{hot}"
    );
    let listed = hot["divergences"].as_array().unwrap();
    let kinds: Vec<(&serde_json::Value, &serde_json::Value)> = listed
        .iter()
        .map(|d| (&d["key"]["id"], &d["kind"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&1.into(), &"unconverged".into()),
            (&2.into(), &"changed".into())
        ],
        "{hot}"
    );
    assert_eq!(listed[0]["rechecks_changed"], 2, "{hot}");
}
