//! A server session that ends under the client (its own `idle_in_transaction_session_timeout`,
//! or `pg_terminate_backend` from elsewhere) must end the client's session too: its next
//! statement fails promptly instead of waiting forever for an answer. In `dual-write` (the
//! session relayed message by message) and in `old-only` (relayed as bytes, the control).
//! In `dual-write` the new side must still end exactly like the old one.

use std::process::Stdio;

use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::exact::{assert_carried_over, identical_sides, python, rows, run_python, HANG};
use super::Proxy;

/// `public.items` holds `expected` on old, and in dual-write on new too, carried over exactly.
async fn ends_with(
    stage: &str,
    old: &tandem_testkit::PostgresDb,
    new: &tandem_testkit::PostgresDb,
    proxy: &Proxy,
    expected: &[&str],
) {
    if stage == "dual-write" {
        assert_carried_over(
            old,
            new,
            &proxy.port,
            &proxy.control,
            &[("public.items", expected)],
        )
        .await;
    } else {
        assert_eq!(rows(&old.url, "public.items").await, expected);
    }
}

/// The client's session ends through its idle-in-transaction timeout; its insert (90) is
/// rolled back with it.
async fn idle_in_transaction_timeout(stage: &str) {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start(stage, &old.url, &new.url, &[]);
    let answer = run_python("idle_timeout", &proxy.port).await;
    assert!(
        answer.get("error").is_some(),
        "the statement after the timeout must fail: {answer}"
    );
    let expected: &[&str] = &["1|existing||"];
    ends_with(stage, &old, &new, &proxy, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_in_transaction_timeout_ends_the_client_session_in_dual_write() {
    idle_in_transaction_timeout("dual-write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_in_transaction_timeout_ends_the_client_session_in_old_only() {
    idle_in_transaction_timeout("old-only").await;
}

/// The client's server backend on old, found by the client's application name, is
/// terminated while the client is idle (after an insert it committed, 91).
async fn terminated_backend(stage: &str) {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start(stage, &old.url, &new.url, &[]);
    let name = tandem_testkit::unique_name("tandem_terminated");
    let mut client = tokio::process::Command::from(python("terminated", &proxy.port));
    let mut client = client
        .env("TANDEM_APPLICATION_NAME", &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(HANG, stdout.next_line()).await;
    if !matches!(&ready, Ok(Ok(Some(line))) if line == "ready") {
        fail(
            client,
            &format!("the client did not connect and insert: {ready:?}"),
        )
        .await;
    }
    // Found first, then terminated: a filter and pg_terminate_backend in one query may be
    // evaluated in any order.
    let mut direct = sqlx::PgConnection::connect(&old.url).await.unwrap();
    // Both sides are databases of the same server: the mirror's session to new has the
    // client's application name too.
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
    )
    .bind(&name)
    .bind(&old.name)
    .fetch_all(&mut direct)
    .await
    .unwrap();
    assert_eq!(
        pids.len(),
        1,
        "the client's server session on old: {pids:?}"
    );
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(pids[0])
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert!(terminated);
    direct.close().await.unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"go on\n").await.unwrap();
    drop(stdin);
    let answer = match tokio::time::timeout(HANG, stdout.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(line) => fail(client, &format!("the client printed no answer: {line:?}")).await,
        Err(_) => {
            fail(
                client,
                &format!(
                    "hang: the client's statement after the termination got no answer for \
                     {HANG:?} (killed)"
                ),
            )
            .await
        }
    };
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|err| {
        panic!("{err}: {answer:?}");
    });
    assert!(
        answer.get("error").is_some(),
        "the statement after the termination must fail: {answer}"
    );
    let exited = tokio::time::timeout(HANG, client.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(status)) if status.success()),
        "{exited:?}"
    );
    let expected: &[&str] = &["1|existing||", "91|before termination||"];
    ends_with(stage, &old, &new, &proxy, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_server_session_ends_the_client_session_in_dual_write() {
    terminated_backend("dual-write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_server_session_ends_the_client_session_in_old_only() {
    terminated_backend("old-only").await;
}

/// Kills the client and fails the test with `why` and what the client wrote on stderr.
async fn fail(mut client: tokio::process::Child, why: &str) -> ! {
    let _ = client.start_kill();
    let output = client.wait_with_output().await.unwrap();
    panic!("{why}\n{}", String::from_utf8_lossy(&output.stderr));
}
