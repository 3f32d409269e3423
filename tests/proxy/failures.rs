//! A down secondary never fails the client; its copies are persisted and replayed in order.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use tandem_testkit::ReservedPort;

use crate::harness::{
    expect_ok, mirror_failures, order, refusing_url, tandem, Engine, Orders, OrdersDb, Proxy,
    RecordingUpstream, SqliteControl,
};

/// The arguments of `tandem mirror replay --format json` against the given sides and store.
fn replay_args<'a>(
    old: &'a str,
    new: &'a str,
    control_db: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "mirror",
        "replay",
        "--format",
        "json",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        control_db,
    ];
    args.extend_from_slice(extra);
    args
}

/// `tandem mirror replay --format json` against the given sides and store.
pub(crate) fn replay(old: &str, new: &str, control_db: &str) -> std::process::Output {
    tandem(&replay_args(old, new, control_db, &[]))
}

async fn secondary_down_then_replayed(engine: Engine, mode: &str) {
    let old_db = OrdersDb::create(engine).await;
    let new_db = OrdersDb::create(engine).await;
    let old = Orders::start(&old_db);
    let closed = ReservedPort::new();
    let new_url = refusing_url(&closed);
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new_url,
        &control.url,
        &[
            "--mirror",
            mode,
            "--mirror-attempts",
            "2",
            "--mirror-retry-backoff",
            "10ms",
            // The replay under test is the operator's.
            "--auto-replay-interval",
            "0s",
        ],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    for id in 1..=10 {
        expect_ok(
            client
                .put(format!("{}/orders/{id}", proxy.url))
                .json(&order("ada", &format!("{id}.00"), "open")),
        )
        .await;
    }
    expect_ok(
        client
            .patch(format!("{}/orders/1", proxy.url))
            .json(&json!({"status": "paid"})),
    )
    .await;
    proxy.drained().await;

    let pending = mirror_failures(&control.url, false);
    assert_eq!(pending.len(), 11, "{pending:?}");
    assert!(pending.iter().all(|f| f["target"] == "new"));

    // The new side comes back on the address the proxy was given.
    let new = Orders::start_on(&new_db, new_url.trim_start_matches("http://"));
    expect_ok(
        client
            .put(format!("{}/orders/11", proxy.url))
            .json(&order("bo", "11.00", "open")),
    )
    .await;
    expect_ok(
        client
            .patch(format!("{}/orders/2", proxy.url))
            .json(&json!({"status": "shipped"})),
    )
    .await;
    proxy.drained().await;
    assert!(
        new.get(11).await.is_some(),
        "a key with nothing pending is mirrored at once"
    );
    assert!(
        new.get(2).await.is_none(),
        "a parked key waits for its earlier copies"
    );

    let output = replay(&old.url, &new.url, &control.url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["delivered"], 12, "{report}");
    assert!(mirror_failures(&control.url, false).is_empty());

    let (old_orders, new_orders) = (old.all().await, new.all().await);
    assert_eq!(old_orders, new_orders);
    assert_eq!(new_orders.as_array().unwrap().len(), 11);
    assert_eq!(
        new.get(1).await.unwrap()["status"],
        "paid",
        "replayed in order"
    );
    assert_eq!(
        new.get(2).await.unwrap()["status"],
        "shipped",
        "replayed in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_on_sqlite_in_sync_mode() {
    secondary_down_then_replayed(Engine::Sqlite, "sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_on_postgres_in_async_mode() {
    secondary_down_then_replayed(Engine::Postgres, "async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_unknown_id_is_a_clear_error() {
    let control = SqliteControl::new();
    let output = tandem(&[
        "mirror",
        "replay",
        "--id",
        "42",
        "--old",
        "http://127.0.0.1:1",
        "--new",
        "http://127.0.0.1:2",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no mirror failure with id 42"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_the_sides_and_the_store_and_nothing_else() {
    let control = SqliteControl::new();
    let proxy_only = tandem(&[
        "mirror",
        "replay",
        "--listen",
        "127.0.0.1:0",
        "--old",
        "http://127.0.0.1:1",
        "--new",
        "http://127.0.0.1:2",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(proxy_only.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&proxy_only.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");

    // The proxy's own file serves: its sides and store are used, its other keys ignored.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tandem.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nmirror = \"async\"\nold = \"http://127.0.0.1:1\"\n\
             new = \"http://127.0.0.1:2\"\ncontrol_db = \"{}\"\n",
            control.url
        ),
    )
    .unwrap();
    let from_file = tandem(&["mirror", "replay", "--config", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&from_file.stdout);
    assert!(
        from_file.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    assert!(
        stdout.contains("replayed 0 delivered, 0 failed, 0 held"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_leaves_copies_in_the_journal_and_delivers_them_in_order() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(50), StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--mirror-workers", "1", "--mirror-queue-capacity", "1"],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let (keys, versions) = (5, 4);
    for version in 0..versions {
        for key in 0..keys {
            expect_ok(
                client
                    .put(format!("{}/items/{key}", proxy.url))
                    .body(format!("{{\"v\":{version}}}")),
            )
            .await;
        }
    }
    // A one-slot queue in front of a slow side overflows; nobody replays anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while new.requests().len() < keys * versions {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} copies arrived",
            new.requests().len(),
            keys * versions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.metric("tandem_mirror_spills_total").await > 0.0);
    assert!(
        mirror_failures(&control.url, true).is_empty(),
        "nothing for people"
    );
    for key in 0..keys {
        let uri = format!("/items/{key}");
        let bodies: Vec<String> = new
            .requests()
            .into_iter()
            .filter(|request| request.uri == uri)
            .map(|request| String::from_utf8_lossy(&request.body).into_owned())
            .collect();
        let expected: Vec<String> = (0..versions)
            .map(|version| format!("{{\"v\":{version}}}"))
            .collect();
        assert_eq!(
            bodies, expected,
            "{uri}: every copy once, in the order accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_overtaken_by_a_promotion_land_before_the_next_write_to_their_key() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_millis(300), StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &["--mirror-workers", "1"]);
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let writes = 5;
    for id in 0..writes {
        expect_ok(client.put(format!("{}/items/{id}", proxy.url)).body("v1")).await;
    }
    // New becomes authoritative while old's copies still queue for it (1.5 s of them): each
    // key's next write waits for its copy, then goes to new.
    proxy.set_stage("live").await;
    for id in 0..writes {
        expect_ok(client.put(format!("{}/items/{id}", proxy.url)).body("v2")).await;
    }
    for id in 0..writes {
        let uri = format!("/items/{id}");
        let on_new: Vec<String> = new
            .requests()
            .into_iter()
            .filter(|request| request.uri == uri)
            .map(|request| String::from_utf8_lossy(&request.body).into_owned())
            .collect();
        assert_eq!(
            on_new,
            ["v1", "v2"],
            "{uri}: the copy first, then the write"
        );
    }
    assert!(
        mirror_failures(&control.url, true).is_empty(),
        "nothing kept for an operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_copies_are_retried_then_kept() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::TOO_MANY_REQUESTS).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &[
            "--mirror-attempts",
            "2",
            "--mirror-retry-backoff",
            "5ms",
            "--auto-replay-interval",
            "0s",
        ],
    );
    proxy.set_stage("dual-write").await;
    expect_ok(
        reqwest::Client::new()
            .put(format!("{}/items/1", proxy.url))
            .body("{}"),
    )
    .await;
    proxy.drained().await;
    assert_eq!(new.requests().len(), 2, "429 is retried");
    let kept = mirror_failures(&control.url, false);
    assert_eq!(kept[0]["last_error"], "status 429", "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_does_not_cancel_the_copy() {
    let old = RecordingUpstream::start(Duration::from_millis(400), StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &[]);
    proxy.set_stage("dual-write").await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .put(format!("{}/items/1", proxy.url))
        .body("{}")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client times out before old answers");
    let deadline = tokio::time::Instant::now() + crate::harness::PATIENCE;
    while new.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(old.requests().len(), 1);
    assert_eq!(new.requests()[0].uri, "/items/1");
}

/// The `n` of every copy of `/items/{key}` the upstream took, in the order it took them.
fn copies_of(upstream: &RecordingUpstream, key: usize) -> Vec<u64> {
    upstream
        .requests()
        .iter()
        .filter(|request| request.uri == format!("/items/{key}"))
        .map(|request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            body["n"].as_u64().unwrap()
        })
        .collect()
}

/// The copies awaiting replay as the CLI and the admin API list them (both must read every
/// row, a killed replay's claim included): (id, status, uri) from the CLI.
async fn awaiting(proxy: &Proxy) -> Vec<(i64, String, String)> {
    let listed = mirror_failures(&proxy.control_db, false);
    let admin = reqwest::get(format!("{}/admin/mirror/failures", proxy.admin))
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    let from_admin: Vec<Value> = admin.json().await.unwrap();
    assert_eq!(from_admin.len(), listed.len());
    listed
        .iter()
        .map(|f| {
            let text = |field: &str| f[field].as_str().unwrap().to_owned();
            (f["id"].as_i64().unwrap(), text("status"), text("uri"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_run_is_followed_by_another_in_per_key_order() {
    const KEYS: usize = 4;
    const ROUNDS: u64 = 5;
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let down = RecordingUpstream::start(Duration::ZERO, StatusCode::INTERNAL_SERVER_ERROR).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &down.url,
        &control.url,
        // The replays under test are the operator's.
        &["--mirror-attempts", "1", "--auto-replay-interval", "0s"],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    for n in 0..ROUNDS {
        for key in 0..KEYS {
            expect_ok(
                client
                    .put(format!("{}/items/{key}", proxy.url))
                    .body(json!({"key": key, "n": n}).to_string()),
            )
            .await;
        }
    }
    proxy.drained().await;
    let copies = KEYS * usize::try_from(ROUNDS).unwrap();
    assert_eq!(awaiting(&proxy).await.len(), copies);

    // The replays send to a slow new side (the proxy's own stays down).
    let delay = Duration::from_millis(250);
    let new = RecordingUpstream::start(delay, StatusCode::OK).await;
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(replay_args(&old.url, &new.url, &control.url, &[]))
        .env("TANDEM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + crate::harness::PATIENCE;
    while new.requests().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "the first replay never got going"
        );
        sleep(Duration::from_millis(5)).await;
    }
    // Halfway through the next copy's answer: that copy is claimed.
    sleep(delay / 2).await;
    first.kill().unwrap();
    assert!(!first.wait().unwrap().success(), "killed mid-run");
    let killed_at = Instant::now();
    sleep(delay).await;

    let left = awaiting(&proxy).await;
    let claims: Vec<_> = left.iter().filter(|f| f.1 == "replaying").collect();
    assert_eq!(
        claims.len(),
        1,
        "the killed replay leaves its claim: {left:?}"
    );
    let (claimed_id, _, claimed_uri) = claims[0].clone();
    let claimed_key: usize = claimed_uri.trim_start_matches("/items/").parse().unwrap();
    assert_eq!(
        left[0].0, claimed_id,
        "the claimed copy is the earliest left"
    );
    let same_key_left = left.iter().filter(|f| f.2 == claimed_uri).count();
    let claimed_n = ROUNDS - u64::try_from(same_key_left).unwrap();

    // Within the claim's lease: its key is held, every other key is delivered in order.
    let second = replay(&old.url, &new.url, &control.url);
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(second.status.code(), Some(1), "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["held"], same_key_left, "{report}");
    assert_eq!(report["delivered"], left.len() - same_key_left, "{report}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains(&format!("{claimed_id}: claimed by another replay until")),
        "{report}"
    );
    let held: Vec<u64> = copies_of(&new, claimed_key)
        .into_iter()
        .filter(|&n| n > claimed_n)
        .collect();
    assert!(
        held.is_empty(),
        "no copy overtakes the claimed one: {held:?}"
    );
    for key in (0..KEYS).filter(|&key| key != claimed_key) {
        assert_eq!(copies_of(&new, key), (0..ROUNDS).collect::<Vec<_>>());
    }
    let still = awaiting(&proxy).await;
    assert_eq!(still.len(), same_key_left, "{still:?}");
    assert_eq!(
        still[0],
        claims[0].clone(),
        "the claim stands until it expires"
    );

    // Once the lease has run out the claimed copy goes first, then the rest of its key.
    let lease = Duration::from_secs(2);
    sleep((lease + delay).saturating_sub(killed_at.elapsed())).await;
    let third = tandem(&replay_args(
        &old.url,
        &new.url,
        &control.url,
        &[
            "--claim-lease",
            "2s",
            "--old-timeout",
            "1s",
            "--new-timeout",
            "1s",
        ],
    ));
    let report: Value = serde_json::from_slice(&third.stdout).unwrap();
    assert!(third.status.success(), "{report}");
    assert_eq!(report["delivered"], same_key_left, "{report}");
    assert!(awaiting(&proxy).await.is_empty());

    // Every copy arrived, each key's in acceptance order (only the copy whose answer the
    // killed replay never saw may have arrived twice), and the last write of each key won.
    for key in 0..KEYS {
        let mut arrived = copies_of(&new, key);
        assert!(
            arrived.windows(2).all(|pair| pair[0] <= pair[1]),
            "key {key} out of order: {arrived:?}"
        );
        let before = arrived.len();
        arrived.dedup();
        assert_eq!(arrived, (0..ROUNDS).collect::<Vec<_>>(), "key {key}");
        assert!(before - arrived.len() <= usize::from(key == claimed_key));
        let last = |upstream: &RecordingUpstream| {
            upstream
                .requests()
                .into_iter()
                .rev()
                .find(|request| request.uri == format!("/items/{key}"))
                .map(|request| request.body)
        };
        assert_eq!(last(&new), last(&old), "key {key} identical");
    }
    let all = mirror_failures(&control.url, true);
    assert_eq!(all.len(), copies);
    assert!(all.iter().all(|f| f["status"] == "replayed"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lease_within_the_upstream_timeouts_is_refused() {
    let control = SqliteControl::new();
    let output = tandem(&replay_args(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        &control.url,
        &["--claim-lease", "2s", "--new-timeout", "5s"],
    ));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--claim-lease 2s must be longer than the upstream timeouts (10s)"),
        "{stderr}"
    );
}

/// In sync mode an answer without `X-Tandem-Mirror-Status: pending` tells the client its copy
/// is on the other side. A copy the other side refused (kept in the store for replay) is not:
/// its answer must say pending, like the answers of the writes after it (circuit open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_write_whose_copy_the_new_side_refused_is_answered_pending() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::INTERNAL_SERVER_ERROR).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &[
            "--mirror",
            "sync",
            "--mirror-attempts",
            "1",
            "--auto-replay-interval",
            "0s",
        ],
    );
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let answer = expect_ok(
        client
            .put(format!("{}/items/1", proxy.url))
            .body("{\"v\":1}"),
    )
    .await;
    assert_eq!(
        new.requests().len(),
        1,
        "the new side saw the copy and refused it"
    );
    assert_eq!(
        mirror_failures(&control.url, false).len(),
        1,
        "the refused copy is kept for replay"
    );
    assert_eq!(
        answer
            .headers()
            .get("x-tandem-mirror-status")
            .and_then(|value| value.to_str().ok()),
        Some("pending"),
        "the copy was refused by the new side, yet the sync answer claims it confirmed"
    );
}
