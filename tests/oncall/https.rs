//! An HTTPS endpoint on a loopback port, with a fresh self-signed certificate (its PEM file is
//! what tandem is told to trust), standing in for PagerDuty's Events API v2 and a webhook:
//! it checks each PagerDuty event against the API's rules, refuses the very first one (a
//! service that is briefly down) and keeps every accepted event in order.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_rustls::TlsAcceptor;

/// What the endpoint received.
#[derive(Clone, Default)]
struct Received {
    events: Arc<Mutex<Vec<Value>>>,
    hooked: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<u32>>,
}

/// The running endpoint.
pub struct HttpsEndpoint {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The certificate's PEM file.
    pub ca_file: std::path::PathBuf,
    received: Received,
    _dir: TempDir,
}

impl HttpsEndpoint {
    pub async fn start() -> HttpsEndpoint {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let received = Received::default();
        let app = Router::new()
            .route("/v2/enqueue", post(enqueue))
            .route("/hook", post(hook))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        HttpsEndpoint {
            url,
            ca_file,
            received,
            _dir: dir,
        }
    }

    /// The PagerDuty events accepted so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.received.events.lock().unwrap().clone()
    }

    /// The webhook calls accepted so far.
    pub fn hooked(&self) -> Vec<Value> {
        self.received.hooked.lock().unwrap().clone()
    }
}

/// Why an event breaks the Events API v2's rules, if it does.
fn invalid(event: &Value) -> Option<String> {
    let text = |field: &Value| field.as_str().filter(|text| !text.is_empty()).is_some();
    if !text(&event["routing_key"]) {
        return Some("routing_key is required".to_owned());
    }
    if !text(&event["dedup_key"]) {
        return Some("dedup_key is required (tandem always sends one)".to_owned());
    }
    match event["event_action"].as_str() {
        Some("acknowledge" | "resolve") => None,
        Some("trigger") => {
            let payload = &event["payload"];
            if !text(&payload["summary"]) || !text(&payload["source"]) {
                return Some("payload.summary and payload.source are required".to_owned());
            }
            let severities = ["critical", "error", "warning", "info"];
            if !payload["severity"]
                .as_str()
                .is_some_and(|severity| severities.contains(&severity))
            {
                return Some(format!("bad payload.severity {}", payload["severity"]));
            }
            let links_ok = event["links"].as_array().is_some_and(|links| {
                links
                    .iter()
                    .all(|link| text(&link["href"]) && text(&link["text"]))
            });
            (!links_ok).then(|| "links need href and text".to_owned())
        }
        other => Some(format!("bad event_action {other:?}")),
    }
}

async fn enqueue(
    State(received): State<Received>,
    Json(event): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(reason) = invalid(&event) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "invalid event", "errors": [reason]})),
        );
    }
    let first = {
        let mut calls = received.calls.lock().unwrap();
        *calls += 1;
        *calls == 1
    };
    if first {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        );
    }
    let dedup_key = event["dedup_key"].clone();
    received.events.lock().unwrap().push(event);
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})),
    )
}

async fn hook(State(received): State<Received>, Json(event): Json<Value>) -> StatusCode {
    received.hooked.lock().unwrap().push(event);
    StatusCode::OK
}
