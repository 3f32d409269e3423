//! TLS towards the upstreams (`https://` sides): rustls with the ring provider, trusting the
//! system's roots and, when `upstream_ca_file` names one, the certificates of a PEM file.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The client configuration every `https://` side is reached with; clones share it.
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    roots: usize,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UpstreamTls")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Trusts the system's roots and the PEM certificates of `ca_file`, if given.
    ///
    /// # Errors
    /// Why the CA file cannot be used (unreadable, not PEM, no certificate in it).
    pub fn new(ca_file: Option<&Path>) -> Result<UpstreamTls, String> {
        let mut roots = RootCertStore::empty();
        // A system without a trust store is fine while no side needs it (`roots` says so).
        let system = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(system.certs);
        if let Some(path) = ca_file {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|found| found.collect::<Result<Vec<_>, _>>())
                .map_err(|err| format!("{}: {err}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(format!("{}: no usable certificate in it", path.display()));
            }
        }
        let count = roots.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(UpstreamTls {
            config: Arc::new(config),
            roots: count,
        })
    }

    /// Whether any root is trusted (an `https://` side cannot be reached otherwise).
    #[must_use]
    pub fn has_roots(&self) -> bool {
        self.roots > 0
    }

    /// The rustls configuration.
    #[must_use]
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.config)
    }
}

/// The TLS error in a transport error's chain of causes, if the handshake is what failed.
#[must_use]
pub fn handshake_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match current.downcast_ref::<std::io::Error>() {
            // tokio-rustls reports the rustls error inside an I/O error (which hyper-rustls
            // wraps once more), and an I/O error's `source` skips the error it wraps: step
            // into that one instead.
            Some(io) => io
                .get_ref()
                .map(|inner| -> &(dyn StdError + 'static) { inner }),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("tandem-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = UpstreamTls::new(Some(&empty)).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no usable certificate"),
            "{err}"
        );
        let missing = UpstreamTls::new(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(missing.contains("missing.pem"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_handshake_error_is_found_inside_an_io_error() {
        // As hyper-rustls hands it on: tokio-rustls' I/O error in another I/O error.
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(matches!(
            handshake_error(&wrapped),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(handshake_error(&plain).is_none());
    }
}
