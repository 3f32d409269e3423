//! The front door holds: a database the proxy does not serve, a replication connection, one
//! client too many, one server connection too many, a login that never ends and an oversized
//! login message are each refused with a clear error, and the proxy goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::stages::metric_reaches;
use super::{psql_command, served_database, sides, Proxy};

/// The SQLSTATE and message of the ErrorResponse a raw connection got, if it got one.
fn error_of(reply: &[u8]) -> Option<(String, String)> {
    let start = reply.iter().position(|byte| *byte == b'E')?;
    let body = reply.get(start + 5..)?;
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|byte| *byte == 0)?;
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    Some((code, message))
}

/// A raw startup with `parameters`; what the proxy answered until it closed (or 5 s).
fn startup(address: &str, parameters: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = TcpStream::connect(address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (name, value) in parameters {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    raw.write_all(&i32::try_from(body.len() + 4).unwrap().to_be_bytes())
        .unwrap();
    raw.write_all(&body).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_not_served_and_replication_are_refused() {
    let (old, new) = sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    // psql -d some_other_db: refused by name, nothing reaches either server.
    let other = psql_command(&proxy.port, "postgres")
        .args(["-d", "postgres", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("database \"postgres\" is not served by this tandem")
            && stderr.contains(&old.name),
        "{stderr}"
    );
    // Either URL's database name reaches the same pair of databases.
    for name in [&old.name, &new.name] {
        let mut conn =
            PgConnection::connect(&format!("postgres://postgres@{}/{name}", proxy.address))
                .await
                .unwrap();
        let served: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(served, old.name, "asked for {name}");
        conn.close().await.unwrap();
    }
    let replication = startup(
        &proxy.address,
        &[
            ("user", "postgres"),
            ("database", &served_database(&proxy.port)),
            ("replication", "database"),
        ],
    );
    let (code, message) = error_of(&replication).expect("an error");
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("replication"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_server_connections_past_their_limits_get_53300() {
    let (old, new) = sides().await;
    let proxy = Proxy::start(
        "old-only",
        &old.url,
        &new.url,
        &[
            "--max-client-connections",
            "2",
            "--max-server-connections",
            "1",
        ],
    );
    let url = super::through(&proxy.address);
    let mut first = PgConnection::connect(&url).await.unwrap();
    // One server connection per database: a second session cannot get one.
    let refused = PgConnection::connect(&url).await.unwrap_err();
    let refused = refused.as_database_error().expect("a server error");
    assert_eq!(refused.code().as_deref(), Some("53300"), "{refused}");
    assert!(refused.message().contains("max_server_connections"));
    // Two clients are in (one logging in, one being served): a third is turned away. The
    // refused session lets go of its place after its client has read the refusal; the one
    // logging in counts once the proxy has accepted it.
    metric_reaches(&proxy.admin, "tandem_pg_client_connections", 1.0).await;
    let mut waiting = TcpStream::connect(&proxy.address).unwrap();
    waiting.write_all(&[0, 0, 0, 8]).unwrap();
    metric_reaches(&proxy.admin, "tandem_pg_client_connections", 2.0).await;
    let third = startup(
        &proxy.address,
        &[
            ("user", "postgres"),
            ("database", &served_database(&proxy.port)),
        ],
    );
    let (code, message) = error_of(&third).expect("an error");
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("too many clients"), "{message}");
    drop(waiting);
    // Once the first leaves, its server connection serves the next session.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut first)
        .await
        .unwrap();
    assert_eq!(one, 1);
    first.close().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match PgConnection::connect(&url).await {
            Ok(conn) => {
                conn.close().await.unwrap();
                break;
            }
            Err(err) => assert!(std::time::Instant::now() < deadline, "still refused: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_logins_are_cut_off() {
    let (old, new) = sides().await;
    let with_password = old.url.replacen("postgres@", "postgres:s3cret@", 1);
    let proxy = Proxy::start(
        "old-only",
        &with_password,
        &new.url,
        &["--login-timeout", "1s"],
    );
    // A client that sends half a startup packet and waits is let go with an error.
    let mut slow = TcpStream::connect(&proxy.address).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(&[0, 0, 0, 40]).unwrap();
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    let (code, message) = error_of(&reply).expect("an error before the connection closed");
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("no login within"), "{message}");
    // A login message far larger than any SCRAM message is refused before it is read.
    let mut big = TcpStream::connect(&proxy.address).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0");
    body.extend_from_slice(served_database(&proxy.port).as_bytes());
    body.extend_from_slice(b"\0\0");
    big.write_all(&i32::try_from(body.len() + 4).unwrap().to_be_bytes())
        .unwrap();
    big.write_all(&body).unwrap();
    let mut offer = [0u8; 64];
    let _ = big.read(&mut offer).unwrap();
    assert_eq!(offer[0], b'R', "a SASL offer");
    big.write_all(&[b'p', 0x40, 0, 0, 0]).unwrap();
    let mut reply = Vec::new();
    let _ = big.read_to_end(&mut reply);
    let (code, message) = error_of(&reply).expect("an error");
    assert_eq!(code, "28P01", "{message}");
    // And the proxy still serves.
    let fine = psql_command(&proxy.port, "postgres")
        .args(["-c", "SELECT 1"])
        .env("PGPASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
}
