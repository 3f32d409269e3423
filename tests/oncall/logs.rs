//! `--log-format json`: every log line of a running proxy is one JSON object whose fields a
//! log pipeline can index (the request id, the stage, the side).

use std::time::Duration;

use serde_json::Value;
use tandem_testkit::{ChildProcess, ReservedPort};
use tokio::time::{sleep, Instant};

use crate::services::{tandem_ok, Side, TANDEM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_the_stage_and_the_side() {
    let old = Side::start();
    let closed = ReservedPort::new();
    let down = format!("http://{}", closed.address());
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    tandem_ok(&[
        "stage",
        "set",
        "dual-write",
        "--force",
        "--reason",
        "logs",
        "--by",
        "tests",
        "--control-db",
        &control,
    ]);
    let journal = dir.path().join("journal");
    let (proxy, line) = ChildProcess::start(
        std::path::Path::new(TANDEM),
        &[
            "proxy",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--old",
            &old.url,
            "--new",
            &down,
            "--control-db",
            &control,
            "--journal-dir",
            journal.to_str().unwrap(),
            "--mirror-attempts",
            "1",
            "--auto-replay-interval",
            "0s",
        ],
        &[],
        "tandem proxy listening on",
    );
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap()
        .to_owned();

    // A write the new side cannot take: its copy is kept, and the log says so.
    let answer = reqwest::Client::new()
        .put(format!("{url}/orders/1"))
        .json(&serde_json::json!({"customer": "ada", "amount": "1.50", "status": "open"}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let request_id = answer.headers()["x-tandem-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines: Vec<Value> = loop {
        let log = proxy.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
            })
            .collect();
        if lines
            .iter()
            .any(|line| line["request_id"] == request_id.as_str())
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for the request:\n{log}"
        );
        sleep(Duration::from_millis(100)).await;
    };
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let kept = lines
        .iter()
        .find(|line| line["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(kept["level"], "WARN", "{kept}");
    assert_eq!(kept["side"], "new", "{kept}");
    assert!(
        lines
            .iter()
            .any(|line| line["message"] == "routing by stage" && line["stage"] == "dual-write"),
        "{lines:#?}"
    );
}
