//! The demo's traffic: a steady mix of writes and reads through the proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Orders written before the traffic starts (the demo corrupts some of them later).
const SEEDED: i64 = 20;

/// Ids the traffic writes: never the seeded ones.
const TRAFFIC_IDS: std::ops::Range<i64> = 100..400;

/// Pause between two requests of the traffic (about 50 requests a second).
const PACE: Duration = Duration::from_millis(20);

/// Requests the traffic sent.
#[derive(Debug, Default)]
pub(super) struct Sent {
    pub(super) requests: u64,
    pub(super) failed: u64,
}

/// The running traffic.
pub(super) struct Traffic {
    proxy: String,
    client: reqwest::Client,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    go: CancellationToken,
    task: JoinHandle<()>,
}

impl Traffic {
    /// Traffic through `proxy` that starts on [`Traffic::seed`] and runs until `stop`.
    pub(super) fn new(proxy: String, stop: CancellationToken) -> Traffic {
        let client = reqwest::Client::new();
        let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let go = CancellationToken::new();
        let task = tokio::spawn(drive(
            proxy.clone(),
            client.clone(),
            Arc::clone(&requests),
            Arc::clone(&failed),
            (go.clone(), stop),
        ));
        Traffic {
            proxy,
            client,
            requests,
            failed,
            go,
            task,
        }
    }

    /// Writes the seeded orders through the proxy, then starts the steady traffic.
    pub(super) async fn seed(&self) {
        for id in 1..=SEEDED {
            let body = json!({"customer": format!("customer-{id}"), "amount": format!("{id}.25"), "status": "open"});
            let request = self
                .client
                .put(format!("{}/orders/{id}", self.proxy))
                .json(&body);
            count(request.send().await, &self.requests, &self.failed);
        }
        self.go.cancel();
    }

    /// Waits for the traffic to stop (its token was cancelled) and returns what it sent.
    pub(super) async fn finish(self) -> Sent {
        let _ = self.task.await;
        Sent {
            requests: self.requests.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

async fn drive(
    proxy: String,
    client: reqwest::Client,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    (go, stop): (CancellationToken, CancellationToken),
) {
    tokio::select! {
        () = go.cancelled() => {}
        () = stop.cancelled() => return,
    }
    let mut step: i64 = 0;
    while !stop.is_cancelled() {
        step += 1;
        let id = TRAFFIC_IDS.start + (step * 7919) % (TRAFFIC_IDS.end - TRAFFIC_IDS.start);
        let url = format!("{proxy}/orders/{id}");
        // 40% PUT, 20% PATCH, 35% GET, 5% DELETE.
        let request = match step % 20 {
            0..=7 => client.put(&url).json(&json!({
                "customer": format!("customer-{id}"),
                "amount": format!("{}.{:02}", id, step % 100),
                "status": "open",
            })),
            8..=11 => client.patch(&url).json(&json!({"status": "paid"})),
            12 => client.delete(&url),
            _ => client.get(&url),
        };
        let sent = tokio::select! {
            sent = request.send() => sent,
            () = stop.cancelled() => break,
        };
        count(sent, &requests, &failed);
        tokio::select! {
            () = tokio::time::sleep(PACE) => {}
            () = stop.cancelled() => break,
        }
    }
}

/// Counts one request; a 404 (a PATCH or GET of an order not written yet) is an answer, not
/// a failure.
fn count(
    sent: Result<reqwest::Response, reqwest::Error>,
    requests: &AtomicU64,
    failed: &AtomicU64,
) {
    requests.fetch_add(1, Ordering::Relaxed);
    let ok = sent.is_ok_and(|response| {
        response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND
    });
    if !ok {
        failed.fetch_add(1, Ordering::Relaxed);
    }
}
