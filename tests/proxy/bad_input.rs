//! Malformed requests, oversize bodies and unreachable upstreams get clear answers.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tandem_testkit::{ReservedPort, ScratchStream, NATS};

use crate::harness::{
    mirror_failures, mirror_failures_reach, refusing_url, Proxy, RecordingUpstream, SqliteControl,
};

async fn raw_exchange(proxy_url: &str, request: &[u8]) -> String {
    let addr = proxy_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_reach_no_side() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &[]);
    proxy.set_stage("shadow").await;

    let cases: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"PUT /orders/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ];
    for request in cases {
        let answer = raw_exchange(&proxy.url, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(old.requests().is_empty(), "{:?}", old.requests());
    assert!(new.requests().is_empty(), "{:?}", new.requests());
    let health = reqwest::get(format!("{}/healthz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "the proxy survives bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_reach_the_authoritative_side_only_and_are_recorded() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old.url,
        &new.url,
        &control.url,
        &["--max-body-bytes", "1024"],
    );
    proxy.set_stage("dual-write").await;

    let body = "x".repeat(4096);
    let response = reqwest::Client::new()
        .put(format!("{}/blobs/1", proxy.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let small = reqwest::Client::new()
        .put(format!("{}/blobs/2", proxy.url))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    proxy.drained().await;

    let old_seen = old.requests();
    assert_eq!(old_seen.len(), 2);
    assert_eq!(
        old_seen[0].body.len(),
        4096,
        "every byte reaches the authoritative side"
    );
    let new_seen = new.requests();
    assert_eq!(new_seen.len(), 1, "only the small write is mirrored");
    assert_eq!(new_seen[0].uri, "/blobs/2");

    let all = mirror_failures_reach(&control.url, true, 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "not_mirrored");
    assert_eq!(all[0]["reason"], "body_too_large");
    assert_eq!(all[0]["uri"], "/blobs/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_refusing_authoritative_side_is_reported_plainly() {
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let closed = ReservedPort::new();
    let proxy = Proxy::start(&refusing_url(&closed), &new.url, &control.url, &[]);
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    for request in [
        client.get(format!("{}/orders/1", proxy.url)),
        client.put(format!("{}/orders/1", proxy.url)).body("{}"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("old side unreachable"),
            "{body}"
        );
        assert_eq!(body["source"], "tandem");
    }

    let refusing = RecordingUpstream::start(Duration::ZERO, StatusCode::CONFLICT).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&refusing.url, &new.url, &control.url, &[]);
    proxy.set_stage("dual-write").await;
    let response = client
        .put(format!("{}/orders/1", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "the client gets old's answer"
    );
    proxy.drained().await;
    assert!(
        new.requests().is_empty(),
        "a write old refused is not mirrored"
    );
}

/// More requests than `--max-in-flight` are answered 503 with Retry-After at once; a shed
/// write reaches neither side, and every accepted one is mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_are_shed_and_lose_nothing() {
    let old = RecordingUpstream::start(Duration::from_millis(500), StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &["--max-in-flight", "2"]);
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let mut sent = tokio::task::JoinSet::new();
    for id in 1..=10 {
        let request = client
            .put(format!("{}/orders/{id}", proxy.url))
            .body("{}")
            .send();
        sent.spawn(async move { (id, request.await.unwrap()) });
    }
    let mut accepted = Vec::new();
    let mut shed = 0;
    while let Some(answered) = sent.join_next().await {
        let (id, answer) = answered.unwrap();
        match answer.status() {
            StatusCode::OK => accepted.push(format!("/orders/{id}")),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.headers()["retry-after"], "1");
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["source"], "tandem", "{body}");
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0 && accepted.len() >= 2, "{shed} shed, {accepted:?}");
    assert_eq!(
        proxy.metric("tandem_requests_shed_total").await,
        f64::from(shed)
    );
    proxy.drained().await;
    let paths = |upstream: &RecordingUpstream| {
        let mut paths: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
        paths.sort();
        paths
    };
    accepted.sort();
    assert_eq!(paths(&old), accepted, "shed writes reached no side");
    assert_eq!(paths(&new), accepted, "every accepted write was mirrored");
}

/// Writes of 100 KiB through a proxy whose 2 MiB journal cannot shed anything (the new side
/// never answers in time), the local journal or the one `journal` names (`--journal …`): the
/// answers' statuses, in order, and the proxy.
/// What `fill_the_journal` left: each write's status, the writes answered as not mirrored
/// (`X-Tandem-Mirror-Status: not-mirrored`), the proxy, the old side and the store.
struct Filled {
    statuses: Vec<StatusCode>,
    not_mirrored: Vec<String>,
    proxy: Proxy,
    old: RecordingUpstream,
    control: SqliteControl,
}

async fn fill_the_journal(policy: &str, journal: &[&str]) -> Filled {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::from_secs(120), StatusCode::OK).await;
    let control = SqliteControl::new();
    let args = [
        &[
            "--journal-max-bytes",
            "2097152",
            "--journal-full",
            policy,
            "--mirror-workers",
            "1",
            "--mirror-queue-capacity",
            "1",
            "--new-timeout",
            "120s",
        ][..],
        journal,
    ]
    .concat();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &args);
    proxy.set_stage("dual-write").await;
    let client = reqwest::Client::new();
    let (mut statuses, mut not_mirrored) = (Vec::new(), Vec::new());
    for id in 0..30 {
        let answer = client
            .put(format!("{}/files/{id}", proxy.url))
            .body(vec![b'x'; 100 * 1024])
            .send()
            .await
            .unwrap();
        if answer
            .headers()
            .get("x-tandem-mirror-status")
            .is_some_and(|status| status == "not-mirrored")
        {
            not_mirrored.push(format!("/files/{id}"));
        }
        if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer.headers()["retry-after"], "5");
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["source"], "tandem", "{body}");
            statuses.push(StatusCode::SERVICE_UNAVAILABLE);
        } else {
            statuses.push(answer.status());
        }
    }
    Filled {
        statuses,
        not_mirrored,
        proxy,
        old,
        control,
    }
}

/// Waits until the store holds an open alert of `kind`.
async fn alert_raised(control: &str, kind: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = crate::harness::tandem_json(&[
            "alerts",
            "list",
            "--format",
            "json",
            "--control-db",
            control,
        ]);
        if let Some(alert) = listed
            .as_array()
            .and_then(|alerts| alerts.iter().find(|alert| alert["kind"] == kind))
        {
            return alert.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} alert: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_writes_before_either_side_sees_them() {
    full_journal_refuses_writes(&[]).await;
}

/// Fleet mode: the shared journal's stream bounded by `--journal-max-bytes`, with the same
/// policy and alert as the local journal (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shared_journal_refuses_writes_before_either_side_sees_them() {
    let stream = ScratchStream::new("FULL");
    full_journal_refuses_writes(&["--journal", NATS, "--journal-stream", stream.name()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shared_journal_under_the_record_policy_records_every_write_it_cannot_mirror() {
    let stream = ScratchStream::new("FULL");
    full_journal_records_writes(&["--journal", NATS, "--journal-stream", stream.name()]).await;
}

async fn full_journal_refuses_writes(journal: &[&str]) {
    let Filled {
        statuses,
        not_mirrored,
        proxy,
        old,
        control,
    } = fill_the_journal("refuse", journal).await;
    assert!(not_mirrored.is_empty(), "{not_mirrored:?}");
    let refused = statuses
        .iter()
        .position(|status| *status == StatusCode::SERVICE_UNAVAILABLE)
        .expect("a 2 MiB journal fills with 30 writes of 100 KiB");
    assert!(refused > 5, "{statuses:?}");
    assert!(
        statuses[refused..]
            .iter()
            .all(|status| *status == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let accepted: Vec<String> = (0..refused).map(|id| format!("/files/{id}")).collect();
    let reached: Vec<String> = old.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(reached, accepted, "a refused write reached no side");
    assert_eq!(
        proxy
            .metric("tandem_journal_full_writes_total{policy=\"refuse\"}")
            .await,
        (statuses.len() - refused) as f64
    );
    let alert = alert_raised(&control.url, "journal_full").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_under_the_record_policy_records_every_write_it_cannot_mirror() {
    full_journal_records_writes(&[]).await;
}

async fn full_journal_records_writes(journal: &[&str]) {
    let Filled {
        statuses,
        not_mirrored,
        proxy,
        old,
        control,
    } = fill_the_journal("record", journal).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        old.requests().len(),
        statuses.len(),
        "every write was applied"
    );
    let gaps = proxy
        .metric("tandem_journal_full_writes_total{policy=\"record\"}")
        .await;
    assert!(gaps > 0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = mirror_failures(&control.url, true)
            .into_iter()
            .filter(|failure| failure["reason"] == "journal_full")
            .count();
        if recorded as f64 == gaps {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{recorded} of {gaps} gaps recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each write recorded was answered as not mirrored, and only those.
    let mut recorded: Vec<String> = mirror_failures(&control.url, true)
        .into_iter()
        .filter_map(|failure| failure["uri"].as_str().map(str::to_owned))
        .collect();
    recorded.sort();
    let mut answered = not_mirrored;
    answered.sort();
    assert_eq!(recorded, answered);
    // A write past the bound is refused room before old sees it, never found full at its
    // append after old applied it (`journal_append_failed`).
    let reasons: Vec<Value> = mirror_failures(&control.url, true)
        .into_iter()
        .map(|failure| failure["reason"].clone())
        .filter(|reason| reason != "journal_full")
        .collect();
    assert!(reasons.is_empty(), "{reasons:?}");
    alert_raised(&control.url, "journal_full").await;
}

/// The journal-full check runs before the authoritative side is called, the append after its
/// answer: writes in flight together all pass the check, and those whose append then finds
/// the journal full are applied on old and acknowledged with their copy in memory only. Under
/// `refuse` such a write must be refused (or its copy kept durably): after a SIGKILL and a
/// restart on the same journal, every write old applied and the client saw acknowledged must
/// reach the new side (or be recorded as not mirrored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_for_the_last_room_in_the_journal_are_refused_or_kept_durably() {
    // Old answers after 500 ms, so that all three writes pass the journal-full check before
    // the first copy is appended.
    let old = RecordingUpstream::start(Duration::from_millis(500), StatusCode::OK).await;
    let new_slow = RecordingUpstream::start(Duration::from_secs(120), StatusCode::OK).await;
    let control = SqliteControl::new();
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    let args = [
        "--journal-dir",
        &journal_dir,
        "--journal-max-bytes",
        "2097152",
        "--journal-full",
        "refuse",
        "--new-timeout",
        "120s",
    ];
    let mut proxy = Proxy::start(&old.url, &new_slow.url, &control.url, &args);
    proxy.set_stage("dual-write").await;
    // 1.2 MiB each: one copy fits in 2 MiB, two do not.
    let body = vec![b'x'; 1_258_291];
    let client = reqwest::Client::new();
    let mut writes = tokio::task::JoinSet::new();
    for id in 0..3 {
        let request = client
            .put(format!("{}/files/{id}", proxy.url))
            .body(body.clone());
        writes.spawn(async move { (id, request.send().await.unwrap().status()) });
    }
    let mut answers = writes.join_all().await;
    answers.sort();
    let acknowledged: Vec<String> = answers
        .iter()
        .filter(|(_, status)| *status == StatusCode::OK)
        .map(|(id, _)| format!("/files/{id}"))
        .collect();
    let appends_failed = proxy
        .metric("tandem_journal_append_failures_total{reason=\"full\"}")
        .await;

    // A crash before the slow side took the copies, then a restart on the same journal.
    let killed = std::process::Command::new("kill")
        .args(["-9", &proxy.process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    proxy.process.wait(Duration::from_secs(10));
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let _restarted = Proxy::start(&old.url, &new.url, &control.url, &args);
    let applied = |upstream: &RecordingUpstream| {
        let mut paths: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
        paths.sort();
        paths
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let not_mirrored: Vec<String> = mirror_failures(&control.url, true)
            .into_iter()
            .filter_map(|failure| failure["uri"].as_str().map(str::to_owned))
            .collect();
        let mut accounted: Vec<String> = applied(&new);
        accounted.extend(not_mirrored);
        accounted.sort();
        accounted.dedup();
        if applied(&old).iter().all(|path| accounted.contains(path)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes applied on old and acknowledged {acknowledged:?} (answers {answers:?}, \
             {appends_failed} journal appends failed) but, after a SIGKILL, neither on new nor \
             recorded: old {:?}, new {:?}",
            applied(&old),
            applied(&new)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
