//! `https://` sides: the proxy dual-writes to two services behind TLS whose certificates a
//! private CA signed (trusted through `--upstream-ca-file`), and refuses a side whose
//! certificate that CA did not sign, with an answer that says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::StatusCode;
use rustls::pki_types::PrivateKeyDer;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::harness::{order, Engine, Proxy, Sides, SqliteControl, PATIENCE};

/// A certificate authority made for one test.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        TestCa {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Writes the CA's certificate as a PEM file in `dir`.
    fn pem_file(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A server configuration with a certificate for 127.0.0.1 signed by this CA.
    fn server_config(&self) -> rustls::ServerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap()
    }
}

/// Serves `https://127.0.0.1:PORT` in front of the plain HTTP service at `backend`, with a
/// certificate `ca` signed; returns its URL.
async fn tls_front(ca: &TestCa, backend: &str) -> String {
    let acceptor = TlsAcceptor::from(Arc::new(ca.server_config()));
    let backend = backend.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let mut plain = TcpStream::connect(&backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_reaches_both_https_sides_signed_by_the_configured_ca() {
    let sides = Sides::start(Engine::Sqlite).await;
    let ca = TestCa::new("tandem test CA");
    let dir = TempDir::new().unwrap();
    let ca_file = ca.pem_file(dir.path(), "ca.pem");
    let (old, new) = (
        tls_front(&ca, &sides.old.url).await,
        tls_front(&ca, &sides.new.url).await,
    );
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old,
        &new,
        &control.url,
        &[
            "--upstream-ca-file",
            ca_file.to_str().unwrap(),
            "--mirror",
            "sync",
        ],
    );
    proxy.set_stage("dual-write").await;

    let answer = reqwest::Client::new()
        .put(format!("{}/orders/1", proxy.url))
        .json(&order("alice", "12.50", "open"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "{}",
        answer.text().await.unwrap()
    );
    // Sync mode: the copy was answered by the new side before the client was.
    assert!(
        answer.headers().get("x-tandem-mirror-status").is_none(),
        "{:?}",
        answer.headers()
    );
    let converged = tokio::time::timeout(PATIENCE, sides.converged())
        .await
        .unwrap();
    assert_eq!(converged.as_array().unwrap().len(), 1, "{converged}");
    for side in [&sides.old, &sides.new] {
        assert_eq!(side.get(1).await.unwrap()["customer"], "alice");
    }
    assert_eq!(
        proxy
            .metric("tandem_upstream_requests_total{side=\"new\",role=\"mirror\",outcome=\"2xx\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_whose_certificate_another_ca_signed_is_refused_and_named() {
    let sides = Sides::start(Engine::Sqlite).await;
    let (trusted, stranger) = (TestCa::new("tandem trusted CA"), TestCa::new("another CA"));
    let dir = TempDir::new().unwrap();
    let ca_file = trusted.pem_file(dir.path(), "ca.pem");
    // The old side's certificate is the stranger's.
    let (old, new) = (
        tls_front(&stranger, &sides.old.url).await,
        tls_front(&trusted, &sides.new.url).await,
    );
    let control = SqliteControl::new();
    let proxy = Proxy::start(
        &old,
        &new,
        &control.url,
        &["--upstream-ca-file", ca_file.to_str().unwrap()],
    );
    proxy.set_stage("dual-write").await;

    let answer = reqwest::Client::new()
        .put(format!("{}/orders/1", proxy.url))
        .json(&order("mallory", "1.00", "open"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    let body: Value = answer.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("old side refused over TLS")
            && error.contains("UnknownIssuer")
            && error.contains("upstream_ca_file"),
        "{body}"
    );
    assert_eq!(body["source"], "tandem");
    // The write reached neither side: the old one refused, so nothing was mirrored.
    assert!(sides.old.get(1).await.is_none());
    assert!(sides.new.get(1).await.is_none());
    assert_eq!(
        proxy
            .metric("tandem_upstream_requests_total{side=\"old\",role=\"primary\",outcome=\"tls\"}")
            .await,
        1.0
    );
}
