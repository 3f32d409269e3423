//! TLS towards the servers, as each URL's `sslmode` asks: the machine's PostgreSQL serves TLS
//! with Debian's self-signed "snakeoil" certificate, issued for `localhost`.

use super::{pg_proxy_with, psql, set_stage, sides, tandem};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// `url` with `query` added.
fn with(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

/// Whether the session psql gets through the proxy on `port` is encrypted towards the server.
fn encrypted(port: &str) -> Result<String, String> {
    let answer = psql(
        port,
        "postgres",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    if answer.status.success() {
        Ok(String::from_utf8_lossy(&answer.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&answer.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_use_tls_as_the_urls_sslmode_asks() {
    let (old, new) = sides().await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let port_of = |address: &str| address.rsplit(':').next().unwrap().to_owned();

    // No sslmode: plain, as before.
    let (_plain, address, _) = pg_proxy_with(&old.url, &new.url, &control, &[]);
    assert_eq!(encrypted(&port_of(&address)).unwrap(), "f");

    // require: encrypted, the certificate not checked.
    let (_required, address, _) =
        pg_proxy_with(&with(&old.url, "sslmode=require"), &new.url, &control, &[]);
    assert_eq!(encrypted(&port_of(&address)).unwrap(), "t");

    // verify-ca: the certificate must be signed by the given root, whatever the host name.
    let verify_ca = with(
        &old.url,
        &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
    );
    let (_ca, address, _) = pg_proxy_with(&verify_ca, &new.url, &control, &[]);
    assert_eq!(encrypted(&port_of(&address)).unwrap(), "t");

    // verify-full: and issued for the host, which 127.0.0.1 is not (localhost is).
    let by_address = with(
        &old.url,
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    );
    let (_wrong_name, address, _) = pg_proxy_with(&by_address, &new.url, &control, &[]);
    let refused = encrypted(&port_of(&address)).unwrap_err();
    assert!(
        refused.contains("TLS handshake failed") && refused.contains("not valid for name"),
        "{refused}"
    );
    let by_name = by_address.replacen("127.0.0.1", "localhost", 1);
    let (_full, address, _) = pg_proxy_with(&by_name, &new.url, &control, &[]);
    assert_eq!(encrypted(&port_of(&address)).unwrap(), "t");

    // Roots that did not sign it (the public CAs of Debian's bundle) are refused.
    let public_roots = with(
        &old.url,
        "sslmode=verify-ca&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
    );
    let (_untrusted, address, _) = pg_proxy_with(&public_roots, &new.url, &control, &[]);
    let refused = encrypted(&port_of(&address)).unwrap_err();
    assert!(
        refused.contains("TLS handshake failed") && refused.contains("UnknownIssuer"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_writes_reach_a_tls_server() {
    let (old, new) = sides().await;
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    set_stage("dual-write", &control);
    let tls_new = with(
        &new.url,
        &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
    );
    let (_proxy, address, _) = pg_proxy_with(&old.url, &tls_new, &control, &[]);
    let port = address.rsplit(':').next().unwrap();
    let answer = psql(port, "postgres", "INSERT INTO items VALUES (5, 'over tls')");
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    super::eventually(&new.url, "SELECT count(*) FROM items WHERE id = 5", 1).await;
}

#[test]
fn bad_tls_settings_are_refused_before_starting() {
    for (query, expected) in [
        ("sslmode=sometimes", "sslmode \"sometimes\""),
        (
            "sslmode=verify-ca&sslrootcert=/nonexistent.pem",
            "sslrootcert /nonexistent.pem",
        ),
        ("sslcert=client.pem", "unsupported parameter \"sslcert\""),
        ("sslmode=verify-ca", "sslmode=verify-ca needs sslrootcert"),
    ] {
        let started = tandem(&[
            "pg-proxy",
            "--listen",
            "127.0.0.1:0",
            "--old",
            &format!("postgres://postgres:hunter2@127.0.0.1/x?{query}"),
            "--new",
            "postgres://postgres@127.0.0.1/y",
            "--control-db",
            "sqlite::memory:",
        ]);
        let stderr = String::from_utf8_lossy(&started.stderr);
        assert!(!started.status.success(), "{query}");
        assert!(stderr.contains(expected), "{query}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
