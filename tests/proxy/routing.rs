//! Every stage routes reads and writes as documented.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{order, Engine, Proxy, RecordingUpstream, Sides, SqliteControl};

async fn put(proxy: &Proxy, id: i64, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{}/orders/{id}", proxy.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get(proxy: &Proxy, id: i64) -> reqwest::Response {
    reqwest::get(format!("{}/orders/{id}", proxy.url))
        .await
        .unwrap()
}

async fn mismatches(proxy: &Proxy) -> Vec<Value> {
    reqwest::get(format!("{}/admin/mismatches", proxy.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_routes_as_documented() {
    let sides = Sides::start(Engine::Sqlite).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &sides.old.url,
        &sides.new.url,
        &control.url,
        &["--mirror", "sync", "--compare-ignore", "/note"],
    );

    assert_eq!(
        proxy.applied_stage().await,
        "old-only",
        "a new store starts in old-only"
    );
    let response = put(&proxy, 1, &order("ada", "1.00", "open")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-tandem-request-id"));
    assert!(sides.old.get(1).await.is_some());
    assert!(
        sides.new.get(1).await.is_none(),
        "old-only writes never reach new"
    );

    proxy.set_stage("dual-write").await;
    assert_eq!(
        put(&proxy, 2, &order("bob", "2.00", "open")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sides.old.get(2).await,
        sides.new.get(2).await,
        "dual-write mirrors writes"
    );
    assert!(sides.new.get(2).await.is_some());
    sides
        .new
        .put_direct(100, &order("only-new", "9.00", "open"))
        .await;
    assert_eq!(
        get(&proxy, 100).await.status(),
        StatusCode::NOT_FOUND,
        "reads go to old"
    );
    assert!(
        mismatches(&proxy).await.is_empty(),
        "dual-write does not compare reads"
    );

    let only_old = order("gil", "7.00", "open");
    sides.old.put_direct(7, &only_old).await;
    let patched = reqwest::Client::new()
        .patch(format!("{}/orders/7", proxy.url))
        .json(&json!({"status": "paid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        patched.status(),
        StatusCode::OK,
        "the client gets old's answer"
    );
    let found = mismatches(&proxy).await;
    assert_eq!(found.len(), 1, "writes are compared too: {found:?}");
    assert_eq!(found[0]["status_old"], 200);
    assert_eq!(found[0]["status_new"], 404);
    assert_eq!(found[0]["method"], "PATCH");

    proxy.set_stage("shadow").await;
    assert_eq!(
        put(&proxy, 6, &order("fay", "6.00", "open")).await.status(),
        StatusCode::OK
    );
    let mut noted = order("fay", "6.00", "open");
    noted["note"] = json!("only on new");
    sides.new.put_direct(6, &noted).await;
    assert_eq!(get(&proxy, 6).await.status(), StatusCode::OK);
    assert_eq!(
        mismatches(&proxy).await.len(),
        1,
        "ignored paths never count"
    );
    assert_eq!(
        put(&proxy, 3, &order("cy", "3.00", "open")).await.status(),
        StatusCode::OK
    );
    assert!(sides.new.get(3).await.is_some());
    sides
        .new
        .put_direct(3, &order("cy", "3.00", "tampered"))
        .await;
    let read: Value = get(&proxy, 3).await.json().await.unwrap();
    assert_eq!(read["status"], "open", "shadow answers from old");
    let found = mismatches(&proxy).await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0]["path"], "/orders/3");
    assert_eq!(found[0]["authoritative"], "old");
    assert!(
        found[0]["diff"].as_str().unwrap().contains("/status"),
        "{found:?}"
    );

    proxy.set_stage("live").await;
    let read: Value = get(&proxy, 3).await.json().await.unwrap();
    assert_eq!(read["status"], "tampered", "live answers from new");
    let found = mismatches(&proxy).await;
    assert_eq!(found.len(), 3, "live compares reads against old");
    assert_eq!(found[0]["authoritative"], "new");
    assert_eq!(
        put(&proxy, 4, &order("di", "4.00", "open")).await.status(),
        StatusCode::OK
    );
    assert!(sides.old.get(4).await.is_some(), "live still writes old");
    assert_eq!(sides.old.get(4).await, sides.new.get(4).await);

    proxy.set_stage("new-only").await;
    assert_eq!(
        put(&proxy, 5, &order("ed", "5.00", "open")).await.status(),
        StatusCode::OK
    );
    assert!(sides.new.get(5).await.is_some());
    assert!(
        sides.old.get(5).await.is_none(),
        "new-only writes never reach old"
    );
    assert_eq!(
        get(&proxy, 100).await.status(),
        StatusCode::OK,
        "reads go to new"
    );

    proxy.set_stage("dual-write").await;
    assert_eq!(
        get(&proxy, 100).await.status(),
        StatusCode::NOT_FOUND,
        "rolled back to old"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_carry_the_request_and_tandem_headers_only() {
    let old = RecordingUpstream::start(std::time::Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(std::time::Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, &["--mirror", "sync"]);
    proxy.set_stage("dual-write").await;

    let response = reqwest::Client::new()
        .post(format!("{}/things/7?expand=1", proxy.url))
        .header("connection", "x-private")
        .header("x-private", "hop")
        .header("x-custom", "kept")
        .header("x-tandem-mirror", "1")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-tandem-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let (old_seen, new_seen) = (old.requests(), new.requests());
    assert_eq!((old_seen.len(), new_seen.len()), (1, 1));
    for (seen, mirror) in [(&old_seen[0], false), (&new_seen[0], true)] {
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/things/7?expand=1");
        assert_eq!(seen.body, "hello");
        assert_eq!(seen.headers["x-custom"], "kept");
        assert!(
            !seen.headers.contains_key("x-private"),
            "connection-named header removed"
        );
        assert_eq!(seen.headers["x-tandem-request-id"], request_id.as_str());
        assert_eq!(
            seen.headers.contains_key("x-tandem-mirror"),
            mirror,
            "only tandem marks copies"
        );
    }

    let reused = reqwest::Client::new()
        .get(format!("{}/things/7", proxy.url))
        .header("x-tandem-request-id", "client-chosen-1")
        .send()
        .await
        .unwrap();
    assert_eq!(reused.headers()["x-tandem-request-id"], "client-chosen-1");
    assert_eq!(
        old.requests()[1].headers["x-tandem-request-id"],
        "client-chosen-1"
    );
    assert_eq!(
        new.requests().len(),
        1,
        "dual-write sends reads to old only"
    );

    let json_write = reqwest::Client::new()
        .put(format!("{}/things/8", proxy.url))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_write.status(), StatusCode::OK);
    assert_eq!(new.requests()[1].body, r#"{"n":1}"#);
}
