//! The client listener holds against connections that never send a request, or send it
//! slowly: they are closed at the header deadline, past the connection limit a connection is
//! answered 503 at once, and requests from real clients are answered meanwhile.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Proxy, RecordingUpstream, SqliteControl};

/// How long a test waits for something that must happen before it calls it a hang (never a
/// measurement).
const HANG: Duration = Duration::from_secs(30);

/// The `host:port` of a proxy's client listener.
fn address(proxy: &Proxy) -> String {
    proxy.url.trim_start_matches("http://").to_owned()
}

/// Reads what the proxy sends on `stream` until it closes the connection; `None` when it is
/// still open after [`HANG`].
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// Two recording upstreams answering at once, and a proxy in dual-write in front of them
/// (with `extra` arguments), on a store of its own.
async fn sides_behind_a_proxy(
    extra: &[&str],
) -> (RecordingUpstream, RecordingUpstream, SqliteControl, Proxy) {
    let old = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let new = RecordingUpstream::start(Duration::ZERO, StatusCode::OK).await;
    let control = SqliteControl::new();
    let proxy = Proxy::start(&old.url, &new.url, &control.url, extra);
    proxy.set_stage("dual-write").await;
    (old, new, control, proxy)
}

/// Writes that go through the proxy while it holds the slow connections: each is answered 200.
async fn writes_are_answered(proxy: &Proxy, ids: std::ops::Range<u32>) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut paths = Vec::new();
    for id in ids {
        let answer = tokio::time::timeout(
            HANG,
            client
                .put(format!("{}/orders/{id}", proxy.url))
                .body("{}")
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("write {id} hung"))
        .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "write {id}");
        paths.push(format!("/orders/{id}"));
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_neither_starve_clients_nor_stay_open() {
    // 2,000 connections need more descriptors than some machines give a process by default.
    let open_files = tandem_control::raise_open_files_limit().unwrap_or(0);
    assert!(
        open_files > 2_100,
        "this machine allows {open_files} open files"
    );
    let (old, new, _control, proxy) = sides_behind_a_proxy(&["--header-read-timeout", "2s"]).await;
    let target = address(&proxy);
    let mut held = Vec::with_capacity(2_000);
    for index in 0..2_000 {
        let mut stream = TcpStream::connect(&target).await.unwrap();
        if index % 2 == 0 {
            // Half start a request and never finish its header.
            stream
                .write_all(b"PUT /orders/1 HTTP/1.1\r\nhost: tandem\r\ncontent-le")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    let accepted = writes_are_answered(&proxy, 1..21).await;
    let mut closing = tokio::task::JoinSet::new();
    for mut stream in held {
        closing.spawn(async move { until_closed(&mut stream).await.is_some() });
    }
    let mut still_open = 0;
    while let Some(closed) = closing.join_next().await {
        still_open += usize::from(!closed.unwrap());
    }
    assert_eq!(
        still_open, 0,
        "connections past the header deadline are closed"
    );
    proxy.drained().await;
    for upstream in [&old, &new] {
        let mut paths: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
        paths.sort();
        let mut expected = accepted.clone();
        expected.sort();
        assert_eq!(
            paths, expected,
            "exactly the answered writes, on both sides"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_answered_503_and_closed() {
    let (old, new, _control, proxy) =
        sides_behind_a_proxy(&["--max-connections", "8", "--header-read-timeout", "60s"]).await;
    let target = address(&proxy);
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&target).await.unwrap());
    }
    // The ninth is answered at once, without its request being read or sent anywhere.
    let mut ninth = TcpStream::connect(&target).await.unwrap();
    ninth
        .write_all(b"PUT /orders/9 HTTP/1.1\r\nhost: tandem\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let answer = until_closed(&mut ninth)
        .await
        .expect("the refusal closes it");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"source\":\"tandem\""), "{answer}");
    assert!(proxy.metric("tandem_connections_refused_total").await >= 1.0);

    // Once the idle ones leave, clients are served again.
    drop(idle);
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        // A client of its own each time: a refused connection is closed, not pooled.
        let answer = reqwest::Client::new()
            .put(format!("{}/orders/10", proxy.url))
            .body("{}")
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::OK {
            break;
        }
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connections never gave their places back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.drained().await;
    for upstream in [&old, &new] {
        let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
        assert_eq!(paths, ["/orders/10"], "the refused write reached no side");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_sent_nowhere() {
    let (old, new, _control, proxy) = sides_behind_a_proxy(&["--body-read-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(address(&proxy)).await.unwrap();
    stream
        .write_all(b"PUT /orders/1 HTTP/1.1\r\nhost: tandem\r\ncontent-length: 10\r\n\r\n{\"")
        .await
        .unwrap();
    let answer = until_closed(&mut stream)
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
    proxy.drained().await;
    assert!(old.requests().is_empty() && new.requests().is_empty());
}
