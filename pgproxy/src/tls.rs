//! TLS towards servers (rustls), chosen per side by the URL's `sslmode` as libpq does:
//! `disable` (tandem's default), `prefer`, `require` (encrypted, the certificate not checked
//! unless `sslrootcert` is given), `verify-ca` (signed by a root of `sslrootcert=FILE`, PEM)
//! and `verify-full` (and issued for the host; roots from `sslrootcert` or the system's store).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Whether and how a side's connection is encrypted (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise (the certificate not checked).
    Prefer,
    /// TLS or no session; the certificate is checked only against an `sslrootcert`.
    Require,
    /// TLS with a certificate signed by a root of `sslrootcert`, for any host name.
    VerifyCa,
    /// TLS with a certificate signed by a trusted root and issued for the URL's host.
    VerifyFull,
}

impl SslMode {
    /// Parses an `sslmode` value.
    ///
    /// # Errors
    /// The accepted values, when `text` is none of them.
    pub fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

/// A side's TLS settings, ready to connect with.
#[derive(Clone)]
pub struct TlsSettings {
    /// The mode.
    pub mode: SslMode,
    /// The rustls configuration (`None` when the mode is `disable`).
    pub config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Builds the client configuration for `mode`, trusting the PEM certificates in
    /// `root_file` (or the system's roots) where the mode verifies.
    ///
    /// # Errors
    /// When the roots cannot be read or hold no usable certificate.
    pub fn new(mode: SslMode, root_file: Option<&str>) -> Result<TlsSettings, String> {
        // As libpq: `require` with a root file checks the chain as `verify-ca` does.
        let mode = match (mode, root_file) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            // Any public certificate would pass, for any host.
            (SslMode::VerifyCa, None) => {
                return Err(
                    "sslmode=verify-ca needs sslrootcert=FILE (or use verify-full with the \
                     system's roots)"
                        .to_owned(),
                )
            }
            _ => mode,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?;
        let relaxed = |chain| {
            Arc::new(RelaxedVerifier {
                provider: Arc::clone(&provider),
                chain,
            })
        };
        let config = match mode {
            SslMode::Disable => return Ok(TlsSettings { mode, config: None }),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(relaxed(None))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(roots(root_file)?);
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                        .build()
                        .map_err(|err| err.to_string())?;
                if mode == SslMode::VerifyFull {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(relaxed(Some(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(TlsSettings {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// The name the server's certificate is checked against.
    ///
    /// # Errors
    /// When `host` is neither a DNS name nor an IP address.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|err| format!("host {host:?} cannot be checked against a certificate: {err}"))
    }
}

fn roots(root_file: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|err| format!("sslrootcert {path}: {err}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| format!("sslrootcert {path}: {err}"))?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(format!("sslrootcert {path}: no usable certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system root certificates found; give sslrootcert=FILE in the URL"
                        .to_owned(),
                );
            }
        }
    }
    Ok(roots)
}

/// `prefer`/`require` (no `chain`: any certificate) and `verify-ca` (the chain must lead to a
/// trusted root; the host name is not checked). The handshake's signatures are always checked.
#[derive(Debug)]
struct RelaxedVerifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
