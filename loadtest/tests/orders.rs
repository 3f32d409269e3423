//! The sample orders service, run as its real binary on SQLite, PostgreSQL and MariaDB.

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};
use tandem_testkit::{workspace_binary, ChildProcess, MariaDb, PostgresDb};

fn start(db_url: &str) -> (ChildProcess, String) {
    let binary = workspace_binary("tandem-loadtest");
    let (process, line) = ChildProcess::start(
        &binary,
        &["serve", "--db", db_url, "--listen", "127.0.0.1:0"],
        &[],
        "listening on",
    );
    let url = line
        .rsplit(' ')
        .next()
        .expect("address on the ready line")
        .to_owned();
    (process, url)
}

async fn exercise(base: &str) {
    let client = reqwest::Client::new();
    let put = client
        .put(format!("{base}/orders/7"))
        .json(&json!({"customer": "ada", "amount": "12.5", "status": "open", "note": "café ☕"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let created: Value = put.json().await.unwrap();
    assert_eq!(created["amount"], "12.50");

    let fetched: Value = client
        .get(format!("{base}/orders/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created, "what is read is what was written");

    let patched: Value = client
        .patch(format!("{base}/orders/7"))
        .json(&json!({"status": "paid", "amount": 99.99, "note": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["status"], "paid");
    assert_eq!(patched["amount"], "99.99");
    assert_eq!(patched["note"], Value::Null);

    client
        .put(format!("{base}/orders/3"))
        .json(&json!({"customer": "bob", "amount": 1, "status": "open"}))
        .send()
        .await
        .unwrap();
    let list: Value = client
        .get(format!("{base}/orders?limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<i64> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [3, 7]);

    let deleted = client
        .delete(format!("{base}/orders/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = client.get(format!("{base}/orders/3")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let again = client
        .delete(format!("{base}/orders/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let missing_patch = client
        .patch(format!("{base}/orders/404"))
        .json(&json!({"status": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_patch.status(), StatusCode::NOT_FOUND);
}

async fn refuses_bad_input(base: &str) {
    let client = reqwest::Client::new();
    let cases = [
        (
            client.put(format!("{base}/orders/abc")).json(&json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(format!("{base}/orders/1"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            client
                .put(format!("{base}/orders/1"))
                .json(&json!({"customer": "a", "amount": "1.234", "status": "open"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            client
                .put(format!("{base}/orders/1"))
                .json(&json!({"customer": "", "amount": "1", "status": "open"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            client.get(format!("{base}/orders?limit=0")),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, expected) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    let none = client.get(format!("{base}/orders/1")).send().await.unwrap();
    assert_eq!(
        none.status(),
        StatusCode::NOT_FOUND,
        "refused input stored nothing"
    );
}

/// Runs the service on `db_url` and drives the whole API through it.
async fn check_service(db_url: &str) {
    let (_process, base) = start(db_url);
    exercise(&base).await;
    refuses_bad_input(&base).await;
}

#[tokio::test]
async fn serves_orders_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    check_service(&format!(
        "sqlite://{}",
        dir.path().join("orders.db").display()
    ))
    .await;
}

#[tokio::test]
async fn serves_orders_on_postgres() {
    check_service(&PostgresDb::create("tandem_orders").await.url).await;
}

#[tokio::test]
async fn serves_orders_on_mariadb() {
    check_service(&MariaDb::create("tandem_orders").await.url).await;
}
