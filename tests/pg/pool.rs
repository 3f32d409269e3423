//! Session pooling: a server connection serves one client session after another, reset in
//! between; one left mid-transaction, or closed by the server, is never handed out again.

use super::{eventually, metric, pg_proxy_with, psql, sides, Proxy};

/// The value of the series `series` in `/metrics`, 0 when absent.
async fn counter(admin: &str, series: &str) -> u64 {
    // A count of connections: small and whole.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = metric(admin, series).await as u64;
    value
}

/// Waits until the proxy keeps `expected` idle connections (a session's connection goes back
/// to the pool just after the client left).
async fn await_idle(admin: &str, expected: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let idle = counter(admin, "tandem_pg_pool_idle_connections").await;
        if idle == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{idle} idle connections, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `sql` with psql through the proxy on `port` and returns its last line.
fn through(port: &str, sql: &str) -> String {
    let answer = psql(port, "postgres", sql);
    assert!(
        answer.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&answer.stderr)
    );
    // The answer of the last statement (psql prints each one's).
    let stdout = String::from_utf8_lossy(&answer.stdout);
    stdout.trim().lines().last().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_reset_and_reused_between_sessions() {
    let (old, new) = sides().await;
    let Proxy { port, admin, .. } = &Proxy::start("old-only", &old.url, &new.url, &[]);

    // A session leaves state behind: a prepared statement, a temporary table, a setting.
    let first = through(
        port,
        "PREPARE kept AS SELECT 1; CREATE TEMP TABLE scratch (x int); \
         SET search_path = nowhere; SELECT pg_backend_pid()",
    );
    await_idle(admin, 1).await;
    // The next session gets the same server session, with none of it.
    let second = through(
        port,
        "SELECT pg_backend_pid() || ',' || (SELECT count(*) FROM pg_prepared_statements) \
         || ',' || (SELECT count(*) FROM pg_class WHERE relname = 'scratch') \
         || ',' || current_setting('search_path')",
    );
    assert_eq!(second, format!("{first},0,0,\"$user\", public"));
    assert_eq!(
        counter(
            admin,
            "tandem_pg_server_connections_total{side=\"old\",source=\"new\"}"
        )
        .await,
        1
    );
    assert_eq!(
        counter(
            admin,
            "tandem_pg_server_connections_total{side=\"old\",source=\"pool\"}"
        )
        .await,
        1
    );

    // A session that ends inside a transaction is not reused (and its insert is gone).
    await_idle(admin, 1).await;
    let abandoned = through(
        port,
        "BEGIN; INSERT INTO items VALUES (7, 'abandoned'); SELECT pg_backend_pid()",
    );
    assert_eq!(abandoned, first, "it was still the pooled connection");
    let after = through(
        port,
        "SELECT pg_backend_pid() || ',' || (SELECT count(*) FROM items WHERE id = 7)",
    );
    let (pid, abandoned_rows) = after.split_once(',').unwrap();
    assert_ne!(pid, first);
    assert_eq!(abandoned_rows, "0");

    // A pooled connection the server ended meanwhile is noticed, and a new one opened.
    await_idle(admin, 1).await;
    let killed = super::count(
        &old.url,
        &format!("SELECT pg_terminate_backend({pid}, 10000)::int::bigint"),
    )
    .await;
    assert_eq!(killed, 1);
    let fresh = through(port, "SELECT pg_backend_pid()");
    assert_ne!(fresh, pid);
    assert_eq!(
        counter(
            admin,
            "tandem_pg_server_connections_total{side=\"old\",source=\"new\"}"
        )
        .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sessions_are_pooled_too() {
    let (old, new) = sides().await;
    let Proxy {
        port,
        admin,
        control,
        ..
    } = &Proxy::start("dual-write", &old.url, &new.url, &[]);
    for id in 10..14 {
        through(port, &format!("INSERT INTO items VALUES ({id}, 'pooled')"));
        eventually(
            &new.url,
            "SELECT count(*) FROM items WHERE side = 'pooled'",
            i64::from(id - 9),
        )
        .await;
        // The client's connection (old) and the mirror's (new) are both back.
        await_idle(admin, 2).await;
    }
    // Each side's connection was opened once and reused after.
    for side in ["old", "new"] {
        let opened =
            format!("tandem_pg_server_connections_total{{side=\"{side}\",source=\"new\"}}");
        let reused =
            format!("tandem_pg_server_connections_total{{side=\"{side}\",source=\"pool\"}}");
        assert_eq!(counter(admin, &opened).await, 1, "{side}");
        assert_eq!(counter(admin, &reused).await, 3, "{side}");
    }

    // Without a pool every session opens its own connections.
    let (_unpooled, address, admin) =
        pg_proxy_with(&old.url, &new.url, control, &["--pool-max-idle", "0"]);
    let port = address.rsplit(':').next().unwrap().to_owned();
    let pids: Vec<String> = (0..2)
        .map(|_| through(&port, "SELECT pg_backend_pid()"))
        .collect();
    assert_ne!(pids[0], pids[1]);
    assert_eq!(
        counter(
            &admin,
            "tandem_pg_server_connections_total{side=\"old\",source=\"pool\"}"
        )
        .await,
        0
    );
}
