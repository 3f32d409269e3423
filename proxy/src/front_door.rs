//! The client listener: a bounded number of client connections (one past the limit is answered
//! `503` with `Retry-After` and closed, so the process never runs out of file descriptors), a
//! deadline for a request's header (which also ends a keep-alive connection left idle that
//! long), and a drain that lets the requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::telemetry::ConnectionRefused;

/// How the client listener guards itself.
#[derive(Debug, Clone, Copy)]
pub struct FrontDoorSettings {
    /// Client connections open at most.
    pub max_connections: usize,
    /// How long a client may take to send a request's header, and how long a keep-alive
    /// connection may stay idle.
    pub header_read_timeout: Duration,
}

/// The answer on a connection past the limit.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 89\r\n\r\n\
{\"error\":\"tandem is at its limit of client connections; retry shortly\",\"source\":\"tandem\"}";

/// How long accepting waits after the process ran out of descriptors (or another transient
/// accept error) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`; then stops accepting and returns once every
/// open connection finished its request in flight (idle ones are closed at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: FrontDoorSettings,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    // Refusals answer at most this many connections at once; past it, more are closed at
    // once, so a flood cannot hold descriptors for the refusals' second each.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a client connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            ConnectionRefused.emit();
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers a connection past the limit and closes it. The answer waits for the request's
/// head (up to [`REFUSAL_WAIT`]): an HTTP client takes an answer that comes before its request
/// for a broken connection. What the client sent is read and dropped for a moment after the
/// answer too: closing a socket with unread bytes resets the connection, and the reset can
/// reach the client before the answer does.
async fn refuse(mut stream: TcpStream) {
    let mut head = Vec::new();
    let asked = tokio::time::timeout(REFUSAL_WAIT, async {
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
            if head.len() > REFUSAL_DRAIN_BYTES {
                break;
            }
        }
        true
    })
    .await;
    if !matches!(asked, Ok(true)) {
        // Nothing asked (an idle connection), or it went away: closed without an answer.
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        stream.write_all(REFUSED).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                read => drained += read,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Connections being answered 503 at once, at most.
const MAX_REFUSALS: usize = 64;

/// How long a refused connection may take to send its request's head.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// The most a refused connection's request is read before it is closed.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// The client connections tandem may hold with `open_files` descriptors when `in_flight`
/// requests may each hold two upstream connections besides their client's: what is left
/// after those and a reserve for the journal, the stores and the admin listener.
#[must_use]
pub fn connections_within(open_files: u64, in_flight: usize) -> usize {
    const RESERVE: u64 = 256;
    let upstream = 2 * u64::try_from(in_flight).unwrap_or(u64::MAX);
    let left = open_files.saturating_sub(upstream).saturating_sub(RESERVE);
    usize::try_from(left).unwrap_or(usize::MAX).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSED).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.parse().ok())
            .expect("a content-length");
        assert_eq!(length, body.len());
        serde_json::from_str::<serde_json::Value>(body).expect("a JSON body");
    }

    #[test]
    fn connections_leave_room_for_upstreams() {
        assert_eq!(connections_within(20_000, 1024), 20_000 - 2048 - 256);
        assert_eq!(connections_within(1024, 1024), 16);
    }
}
