//! The journal's summary in the control store: with the new side hanging, `tandem mirror
//! failures` (against the store, not the proxy) shows the instance's pending copies, the
//! oldest one's age and the keys written; a killed proxy's summary goes stale and a restart on
//! its journal takes it over; once the new side answers, nothing is pending.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tandem_testkit::Forwarder;
use tokio::time::sleep;

use crate::harness::{journal_summaries, tandem, Proxy, RecordingUpstream, SqliteControl};

/// Polls the store's journal summaries until `done` holds for them, up to 30 s.
async fn summaries_until(control: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let journals = journal_summaries(control);
        if done(&journals) {
            return journals;
        }
        assert!(Instant::now() < deadline, "never {what}: {journals:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// The sampled keys of a summary as (key, copies, held), sorted.
fn sampled(journal: &Value) -> Vec<(String, u64, bool)> {
    let mut keys: Vec<(String, u64, bool)> = journal["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            assert_eq!(key["target"], "new", "{key}");
            assert!(key["oldest_seq"].as_u64().unwrap() > 0, "{key}");
            assert!(key["oldest_age_ms"].as_i64().unwrap() >= 0, "{key}");
            (
                key["ordering_key"].as_str().unwrap().to_owned(),
                key["copies"].as_u64().unwrap(),
                key["held"].as_bool().unwrap(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// The one summary holding copies.
fn holding(journals: &[Value]) -> Option<&Value> {
    journals.iter().find(|j| j["pending"].as_u64() > Some(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_shows_each_journals_pending_copies_until_they_are_delivered() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    // The new side behind a forwarder the test freezes: it hangs, accepting and answering
    // nothing, so the copies stay in the journal (in flight or queued) without failing.
    let forwarder = Forwarder::new(new.url.trim_start_matches("http://")).await;
    let new_url = format!("http://127.0.0.1:{}", forwarder.port());
    let control = SqliteControl::new();
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    let args = [
        "--journal-dir",
        &journal_dir,
        "--stats-interval",
        "500ms",
        "--new-timeout",
        "120s",
    ];
    let mut proxy = Proxy::start(&old.url, &new_url, &control.url, &args);
    proxy.set_stage("dual-write").await;
    forwarder.freeze(true);

    let client = reqwest::Client::new();
    for path in [
        "/orders/1",
        "/orders/2",
        "/orders/3",
        "/orders/1",
        "/orders/4",
    ] {
        let answer = client
            .put(format!("{}{path}", proxy.url))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::OK,
            "the client never waits for new"
        );
    }
    let expected = vec![
        ("/orders/1".to_owned(), 2, false),
        ("/orders/2".to_owned(), 1, false),
        ("/orders/3".to_owned(), 1, false),
        ("/orders/4".to_owned(), 1, false),
    ];
    let journals = summaries_until(&control.url, "showed 5 pending copies", |journals| {
        holding(journals)
            .is_some_and(|j| j["pending"] == 5 && sampled(j) == expected && j["stale"] == false)
    })
    .await;
    let summary = holding(&journals).unwrap();
    eprintln!("with the new side hanging: {summary}");
    assert_eq!(summary["stale"], false, "{summary}");
    assert!(summary["oldest_accepted_at"].is_string(), "{summary}");
    assert!(summary["oldest_age_ms"].as_i64().unwrap() >= 0, "{summary}");
    let name = summary["journal"].as_str().unwrap().to_owned();
    assert!(
        name.ends_with(journal.path().file_name().unwrap().to_str().unwrap()),
        "named by its directory: {name}"
    );
    // The table says the same to a person.
    let table =
        String::from_utf8(tandem(&["mirror", "failures", "--control-db", &control.url]).stdout)
            .unwrap();
    assert!(
        table.contains("5 copies pending, oldest accepted"),
        "{table}"
    );
    for key in [
        "/orders/1 copies=2",
        "/orders/2 copies=1",
        "/orders/4 copies=1",
    ] {
        assert!(table.contains(key), "{key} in {table}");
    }

    // Killed: its summary stays, and goes stale (its copies are in the journal on its disk).
    let killed = std::process::Command::new("kill")
        .args(["-9", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    proxy.process.wait(Duration::from_secs(10));
    let journals = summaries_until(&control.url, "went stale", |journals| {
        holding(journals).is_some_and(|j| j["stale"] == true && j["pending"] == 5)
    })
    .await;
    let table =
        String::from_utf8(tandem(&["mirror", "failures", "--control-db", &control.url]).stdout)
            .unwrap();
    assert!(table.contains("STALE"), "{table}");
    assert_eq!(journals.len(), 1, "{journals:?}");

    // Restarted on the same journal: the summary is its again, fresh, with the same copies.
    proxy = Proxy::start(&old.url, &new_url, &control.url, &args);
    summaries_until(&control.url, "was taken over", |journals| {
        journals.len() == 1
            && holding(journals)
                .is_some_and(|j| j["stale"] == false && j["pending"] == 5 && sampled(j) == expected)
    })
    .await;

    // The new side answers again: delivered, and nothing is pending anywhere.
    forwarder.freeze(false);
    summaries_until(&control.url, "emptied", |journals| {
        journals.iter().all(|j| j["pending"] == 0) && !journals.is_empty()
    })
    .await;
    assert!(new.requests().len() >= 5, "{:?}", new.requests().len());
    let table =
        String::from_utf8(tandem(&["mirror", "failures", "--control-db", &control.url]).stdout)
            .unwrap();
    assert!(
        table.contains("no copies pending in any proxy's journal"),
        "{table}"
    );
    drop(proxy);
}
