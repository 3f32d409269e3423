//! Protocol features beyond queries: COPY FROM STDIN is mirrored like any write, and a
//! client's cancel request reaches the server session running its query.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    count, eventually, frame, proxy_in, psql_command, raw_session, read_until_ready, sides,
};

/// psql on the proxy at `address`, reading its commands from standard input.
fn psql_script(address: &str) -> Command {
    let port = address.rsplit(':').next().unwrap();
    let mut psql = psql_command(port, "postgres");
    psql.args(["-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    psql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_is_mirrored_in_dual_write() {
    let (old, new) = sides().await;
    let (_proxy, address, _control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let mut psql = psql_script(&address).spawn().unwrap();
    let mut script = String::from("COPY items (id, side) FROM STDIN;\n");
    for id in 100..600 {
        script.push_str(&format!("{id}\tcopied\n"));
    }
    script.push_str("\\.\nSELECT count(*) FROM items;\n");
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let done = psql.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&done.stdout).trim(),
        "COPY 500\n501"
    );
    eventually(
        &new.url,
        "SELECT count(*) FROM items WHERE side = 'copied'",
        500,
    )
    .await;
    assert_eq!(
        count(&old.url, "SELECT count(*) FROM items WHERE side = 'copied'").await,
        500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_copy_is_mirrored_and_keeps_later_transactions_in_step() {
    let (old, new) = sides().await;
    let (_proxy, address, _control, _dir) = proxy_in("dual-write", &old.url, &new.url);
    let mut raw = raw_session(&address);
    // As libpq sends it: Parse, Bind, Execute and Sync at once, then the data, CopyDone and a
    // second Sync (the server ignores the first, sent into copy-in mode).
    let mut start = frame(b'P', b"\0COPY items (id, side) FROM STDIN\0\0\0");
    start.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    start.extend(frame(b'E', b"\0\0\0\0\0"));
    start.extend(frame(b'S', b""));
    raw.write_all(&start).unwrap();
    let mut byte = [0u8; 1];
    loop {
        raw.read_exact(&mut byte).unwrap();
        if byte[0] == b'G' {
            break;
        }
    }
    let mut data = frame(b'd', b"200\textended copy\n");
    data.extend(frame(b'd', b"201\textended copy\n"));
    data.extend(frame(b'c', b""));
    data.extend(frame(b'S', b""));
    raw.write_all(&data).unwrap();
    let answer = read_until_ready(&mut raw);
    assert!(
        String::from_utf8_lossy(&answer).contains("COPY 2"),
        "{answer:?}"
    );
    // The next transaction is mirrored as itself, not one behind.
    raw.write_all(&frame(
        b'Q',
        b"INSERT INTO items VALUES (202, 'after the copy')\0",
    ))
    .unwrap();
    read_until_ready(&mut raw);
    eventually(&new.url, "SELECT count(*) FROM items WHERE id >= 200", 3).await;
    raw.write_all(&frame(b'X', b"")).unwrap();
    assert_eq!(
        count(&old.url, "SELECT count(*) FROM items WHERE id >= 200").await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_running_query() {
    let (old, new) = sides().await;
    for stage in ["old-only", "dual-write"] {
        let (_proxy, address, _control, _dir) = proxy_in(stage, &old.url, &new.url);
        let mut psql = psql_script(&address).spawn().unwrap();
        let mut stdin = psql.stdin.take().unwrap();
        stdin.write_all(b"SELECT pg_sleep(60);\n").unwrap();
        // Once the server runs it, psql is interrupted as by Ctrl-C: it sends a cancel request
        // with the key tandem gave it.
        let deadline = Instant::now() + Duration::from_secs(15);
        while count(
            &old.url,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60);' \
             AND state = 'active'",
        )
        .await
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "{stage}: the query never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let interrupted = Command::new("kill")
            .args(["-INT", &psql.id().to_string()])
            .status()
            .unwrap();
        assert!(interrupted.success());
        drop(stdin);
        let done = psql.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(
            stderr.contains("canceling statement due to user request"),
            "{stage}: {stderr}"
        );
    }
}
