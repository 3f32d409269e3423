//! A driver with a protocol implementation of its own (node-postgres, installed by
//! `scripts/ensure-node-pg`) works through tandem unchanged: parameters, a transaction, a named
//! prepared statement, an error with its SQLSTATE.

use std::process::Command;

use super::{count, eventually, sides, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_works_through_the_proxy() {
    let (old, new) = sides().await;
    let Proxy { port, .. } = &Proxy::start("dual-write", &old.url, &new.url, &[]);
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg/node/client.js");
    let output = Command::new("node")
        .arg(client)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", super::served_database(port))
        .output()
        .expect("node (scripts/ensure-node-pg installs node-postgres)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"first": "old", "second": "from node", "error": "23505"})
    );
    eventually(&new.url, "SELECT count(*) FROM items WHERE id = 70", 1).await;
    assert_eq!(
        count(&old.url, "SELECT count(*) FROM items WHERE id = 70").await,
        1
    );
}
