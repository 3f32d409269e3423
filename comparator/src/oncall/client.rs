//! The HTTP client every notification goes out with: HTTPS through rustls, trusting the
//! system's roots and, when `alerts.ca_file` names one, the certificates of a PEM file.

use std::path::Path;
use std::time::Duration;

use reqwest::{Certificate, Client};

use crate::error::CompareError;

/// Builds the client, with `timeout` per call.
///
/// # Errors
/// [`CompareError::InvalidOption`] when the CA file cannot be read or holds no certificate.
pub(super) fn notification_client(
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<Client, CompareError> {
    let mut builder = Client::builder().timeout(timeout).use_rustls_tls();
    if let Some(path) = ca_file {
        let invalid = |reason: String| {
            CompareError::InvalidOption(format!(
                "invalid `alerts.ca_file` ({}): {reason}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|err| invalid(err.to_string()))?;
        let certificates =
            Certificate::from_pem_bundle(&pem).map_err(|err| invalid(err.to_string()))?;
        if certificates.is_empty() {
            return Err(invalid("no certificate in it".to_owned()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|err| CompareError::Service(format!("cannot build the HTTP client: {err}")))
}
