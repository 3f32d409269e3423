//! The two upstream services: a keep-alive connection pool (HTTP, or HTTPS through rustls)
//! and a timeout per side.

use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_TYPE};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_control::Side;

use crate::compare::CapturedResponse;
use crate::config::ProxyConfig;
use crate::error::UpstreamError;
use crate::telemetry::{Role, UpstreamAnswered};
use crate::tls::{handshake_error, UpstreamTls};

/// Idle upstream connections kept per side.
const MAX_IDLE_PER_SIDE: usize = 512;

/// The parts of a client request that are sent to a side (the body travels separately).
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, as the client sent them.
    pub path_and_query: String,
    /// End-to-end headers, with tandem's request id.
    pub headers: HeaderMap,
}

/// One upstream service.
#[derive(Debug, Clone)]
pub struct Upstream {
    side: Side,
    base: Uri,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl Upstream {
    /// An upstream at `base` (an `http://` or `https://host:port[/prefix]` URI) answering
    /// within `timeout`; an `https://` one is checked against `tls`' roots.
    #[must_use]
    pub fn new(side: Side, base: Uri, timeout: Duration, tls: &UpstreamTls) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // The TLS layer below takes `https://` URIs; plain ones pass through it.
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls.client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(MAX_IDLE_PER_SIDE)
            .build(connector);
        Upstream {
            side,
            base,
            timeout,
            client,
        }
    }

    /// Which side this is.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// The per-request timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let prefix = self.base.path().trim_end_matches('/');
        let scheme = self.base.scheme_str().unwrap_or("http");
        let authority = self.base.authority().map_or("", |a| a.as_str());
        format!("{scheme}://{authority}{prefix}{path_and_query}")
            .parse()
            .map_err(|err: http::uri::InvalidUri| UpstreamError::Unreachable {
                side: self.side,
                reason: format!("cannot build the upstream URI: {err}"),
            })
    }

    /// Sends `request` with `body`; the timeout covers the wait for the response head.
    ///
    /// # Errors
    /// When the side is unreachable or does not answer in time.
    pub async fn send(
        &self,
        request: &OutboundRequest,
        body: Body,
        role: Role,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut outbound = Request::new(body);
        *outbound.method_mut() = request.method.clone();
        *outbound.uri_mut() = self.uri_for(&request.path_and_query)?;
        *outbound.headers_mut() = request.headers.clone();
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.client.request(outbound)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(match handshake_error(&err) {
                Some(tls) => UpstreamError::Untrusted {
                    side: self.side,
                    reason: tls.to_string(),
                },
                None => UpstreamError::Unreachable {
                    side: self.side,
                    reason: transport_reason(&err),
                },
            }),
            Err(_) => Err(UpstreamError::Timeout {
                side: self.side,
                timeout: self.timeout,
            }),
        };
        UpstreamAnswered {
            side: self.side,
            role,
            result: result.as_ref().map(|response| response.status().as_u16()),
            elapsed: started.elapsed(),
        }
        .emit();
        result
    }

    /// Sends `request` with a body in memory and reads the whole answer, all within the timeout.
    ///
    /// # Errors
    /// When the side is unreachable, does not answer in time or its body breaks off.
    pub async fn exchange(
        &self,
        request: &OutboundRequest,
        body: Bytes,
        role: Role,
    ) -> Result<CapturedResponse, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self.send(request, Body::from(body), role).await?;
        let (parts, body) = response.into_parts();
        let collected = tokio::time::timeout_at(deadline, body.collect())
            .await
            .map_err(|_| UpstreamError::Timeout {
                side: self.side,
                timeout: self.timeout,
            })?
            .map_err(|err| UpstreamError::Body {
                side: self.side,
                reason: err.to_string(),
            })?;
        Ok(CapturedResponse {
            status: parts.status.as_u16(),
            json: is_json(&parts.headers),
            body: collected.to_bytes(),
        })
    }
}

/// Whether the headers declare a JSON body.
#[must_use]
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
        })
}

/// The transport error's chain of causes, which never includes the URI (so no credentials).
fn transport_reason(err: &hyper_util::client::legacy::Error) -> String {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// Both upstream services.
#[derive(Debug, Clone)]
pub struct Upstreams {
    old: Upstream,
    new: Upstream,
}

impl Upstreams {
    /// The upstreams a configuration names, each with its timeout.
    #[must_use]
    pub fn from_config(config: &ProxyConfig) -> Upstreams {
        Upstreams {
            old: Upstream::new(
                Side::Old,
                config.old.clone(),
                config.old_timeout,
                &config.upstream_tls,
            ),
            new: Upstream::new(
                Side::New,
                config.new.clone(),
                config.new_timeout,
                &config.upstream_tls,
            ),
        }
    }

    /// The upstream of `side`.
    #[must_use]
    pub fn get(&self, side: Side) -> &Upstream {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}
