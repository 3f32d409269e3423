//! The demo's traffic: a steady mix of writes and reads through the proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Failed requests by what they got (a status, or the client's error).
    pub(super) failed: BTreeMap<String, u64>,
}

impl Sent {
    /// How many requests failed.
    pub(super) fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Failed requests by what they got.
type Failures = Arc<Mutex<BTreeMap<String, u64>>>;

/// The running traffic.
pub(super) struct Traffic {
    proxy: String,
    client: reqwest::Client,
    requests: Arc<AtomicU64>,
    failed: Failures,
    go: CancellationToken,
    task: JoinHandle<()>,
}

impl Traffic {
    /// Traffic through `proxy` that starts on [`Traffic::seed`] and runs until `stop`.
    pub(super) fn new(proxy: String, stop: CancellationToken) -> Traffic {
        let client = reqwest::Client::new();
        let (requests, failed) = (Arc::new(AtomicU64::new(0)), Failures::default());
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
            failed: self
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

async fn drive(
    proxy: String,
    client: reqwest::Client,
    requests: Arc<AtomicU64>,
    failed: Failures,
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
/// a failure. A failure is counted under what it got.
fn count(
    sent: Result<reqwest::Response, reqwest::Error>,
    requests: &AtomicU64,
    failed: &Mutex<BTreeMap<String, u64>>,
) {
    requests.fetch_add(1, Ordering::Relaxed);
    let failure = match sent {
        Ok(response)
            if response.status().is_success()
                || response.status() == reqwest::StatusCode::NOT_FOUND =>
        {
            return
        }
        Ok(response) => response.status().as_u16().to_string(),
        Err(err) if err.is_timeout() => "timeout".to_owned(),
        Err(err) if err.is_connect() => "connect".to_owned(),
        Err(_) => "broken connection".to_owned(),
    };
    *failed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(failure)
        .or_insert(0) += 1;
}
