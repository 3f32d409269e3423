//! The admin API, the stage CLI and `tandem config check`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tandem_testkit::{PostgresDb, ReservedPort};

use crate::harness::{tandem, tandem_json, Proxy, RecordingUpstream, SqliteControl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_calls_need_the_token_and_bad_stages_change_nothing() {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start_with_env(
        &old.url,
        &new.url,
        &control.url,
        &[],
        &[("TANDEM_ADMIN_TOKEN", "s3cret")],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/admin/stage", proxy.admin);
    let change = json!({"stage": "shadow", "reason": "start shadowing", "by": "alice"});

    let anonymous = client.put(&url).json(&change).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .put(&url)
        .bearer_auth("guess")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let illegal = client
        .put(&url)
        .bearer_auth("s3cret")
        .json(&json!({"stage": "sideways", "reason": "r", "by": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(illegal.status(), StatusCode::BAD_REQUEST);
    let body: Value = illegal.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("sideways"),
        "{body}"
    );
    let malformed = client
        .put(&url)
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let shown: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["stage"], "old-only", "refused calls change nothing");
    assert_eq!(shown["history"].as_array().unwrap().len(), 0);

    let accepted = client
        .put(&url)
        .bearer_auth("s3cret")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
    proxy.wait_for_stage("shadow").await;
    let shown: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["history"][0]["by"], "alice");
    assert_eq!(shown["history"][0]["reason"], "start shadowing");
    assert_eq!(shown["history"][0]["previous"], "old-only");

    let ready = client
        .get(format!("{}/readyz", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = client
        .get(format!("{}/metrics", proxy.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_stage{stage=\"shadow\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_stage_changes_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_cli_refuses_unknown_stages_and_shows_history() {
    let control = SqliteControl::new();
    let bad = tandem(&[
        "stage",
        "set",
        "sideways",
        "--reason",
        "r",
        "--by",
        "b",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("unknown stage \"sideways\""), "{stderr}");

    let blank = tandem(&[
        "stage",
        "set",
        "live",
        "--reason",
        " ",
        "--by",
        "b",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(blank.status.code(), Some(2), "a change needs a reason");

    for stage in ["dual-write", "shadow"] {
        let set = tandem(&[
            "stage",
            "set",
            stage,
            "--reason",
            "plan",
            "--by",
            "ops",
            "--control-db",
            &control.url,
        ]);
        assert!(set.status.success());
    }
    let shown = tandem_json(&[
        "stage",
        "show",
        "--format",
        "json",
        "--control-db",
        &control.url,
    ]);
    assert_eq!(shown["stage"], "shadow");
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["stage"], "dual-write");
    assert_eq!(history[1]["previous"], "old-only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write(
        "good.toml",
        "old = \"http://127.0.0.1:8081\"\nnew = \"http://127.0.0.1:8082\"\nmirror = \"sync\"\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/orders/search\"\nclass = \"read\"\n",
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tandem.example.toml");
    for file in [good.as_str(), example] {
        let output = tandem(&["config", "check", file]);
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    for (text, key) in [
        (
            "old = \"http://a:1\"\nnew = \"http://b:2\"\nmirorr = \"sync\"\n",
            "mirorr",
        ),
        (
            "old = \"http://a:1\"\nnew = \"http://b:2\"\nmax_body_bytes = 0\n",
            "max_body_bytes",
        ),
        ("old = \"ftp://a:1\"\nnew = \"http://b:2\"\n", "old"),
        ("new = \"http://b:2\"\n", "old"),
        (
            "old = \"http://a:1\"\nnew = \"http://b:2\"\nmirror = \"sometimes\"\n",
            "mirror",
        ),
    ] {
        let path = write("bad.toml", text);
        let output = tandem(&["config", "check", &path]);
        assert_eq!(output.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{text} -> {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one-line reason: {stderr}");
    }
    let overridden = tandem(&["config", "check", &good, "--", "--mirror", "async"]);
    let stdout = String::from_utf8_lossy(&overridden.stdout);
    assert!(
        stdout.contains("= async  (from --mirror)"),
        "flags beat the file: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_never_reach_logs() {
    let db = PostgresDb::create("tandem_control").await;
    let with_password = db.url.replace("postgres@", "postgres:hunter2@");
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let closed = ReservedPort::new();
    let closed_new = crate::harness::refusing_url(&closed);
    let proxy = Proxy::start(&old.url, &closed_new, &with_password, &[]);
    proxy.set_stage("dual-write").await;
    reqwest::Client::new()
        .put(format!("{}/orders/1", proxy.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    proxy.drained().await;
    let log = proxy.process.log();
    assert!(
        log.contains("postgres:***@"),
        "the store is named, redacted: {log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!log.contains("pw123"), "{log}");

    let check = tandem(&[
        "config",
        "check",
        "--",
        "--old",
        &old.url,
        "--new",
        &closed_new,
        "--control-db",
        &with_password,
    ]);
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");

    // Credentials in an upstream URL would never be sent: refused at start, not shown.
    let refused = tandem(&[
        "config",
        "check",
        "--",
        "--old",
        &old.url,
        "--new",
        &closed_new.replace("http://", "http://svc:pw123@"),
        "--control-db",
        &with_password,
    ]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("credentials") && !said.contains("pw123"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_migrate_applies_the_schema_explicitly() {
    let db = PostgresDb::create("tandem_control").await;
    for _ in 0..2 {
        let output = tandem(&["migrate", "--control-db", &db.url]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let shown = tandem_json(&["stage", "show", "--format", "json", "--control-db", &db.url]);
    assert_eq!(shown["stage"], "old-only");
}
