//! The request path: classify, route by stage, call the authoritative side, mirror or shadow
//! the request to the other side, compare, and answer with the authoritative response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use tandem_control::{ControlStore, Side, StageWatch};
use tandem_journal::Gap;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::body::LimitedBody;
use crate::compare::CapturedResponse;
use crate::config::{JournalFull, MirrorMode, ProxyConfig};
use crate::error::UpstreamError;
use crate::headers::{encode_block, strip_hop_by_hop, MIRROR, MIRROR_PENDING, REQUEST_ID};
use crate::key_locks::KeyLocks;
use crate::mirror::{entry, CutoverRefusal, MirrorJob, MirrorQueue, NotJournaled};
use crate::mismatch::{ComparedRequest, MismatchRecorder};
use crate::not_mirrored::{record_in_store, NotMirrored};
use crate::routes::{Classification, RouteClass};
use crate::telemetry::{ComparisonSkipped, JournalRefusedWrite, RequestServed, Role};
use crate::upstream::{is_json, OutboundRequest, Upstreams};

/// Longest client-supplied request id that is reused rather than replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Everything the request path needs, shared by all connections.
#[derive(Debug)]
pub struct ProxyState {
    /// The validated configuration.
    pub config: ProxyConfig,
    /// The stage in force.
    pub stage: StageWatch,
    /// Both sides.
    pub upstreams: Upstreams,
    /// Copies of accepted writes on their way to the other side.
    pub mirror: MirrorQueue,
    /// Serialises writes to one ordering key.
    pub key_locks: KeyLocks,
    /// Compares answers and records mismatches.
    pub recorder: MismatchRecorder,
    /// Bounds the shadow reads in flight in async mode.
    pub shadow_permits: Arc<Semaphore>,
    /// Tracks background shadow reads so that shutdown waits for them.
    pub shadow_reads: TaskTracker,
    /// Tracks write tasks so that shutdown waits for them.
    pub writes: TaskTracker,
    /// The control store.
    pub store: ControlStore,
    /// Records of writes not mirrored, kept on disk until the store has them.
    pub not_mirrored: NotMirrored,
}

/// The client request after validation, ready to send to a side.
struct Inbound {
    request_id: String,
    outbound: OutboundRequest,
    body: LimitedBody,
    classification: Classification,
}

/// Serves one client request (the handler behind the proxy listener).
pub async fn handle(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let started = Instant::now();
    let request_id =
        client_request_id(&request).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let classification = state
        .config
        .routes
        .classify(request.method(), request.uri().path());
    let class = classification.class;
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        class = class.as_str(),
    );
    let mut response = ProxyState::serve(&state, request, request_id.clone(), classification)
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    RequestServed {
        class,
        status: response.status().as_u16(),
        elapsed: started.elapsed(),
    }
    .emit();
    response
}

impl ProxyState {
    async fn serve(
        self: &Arc<Self>,
        request: Request,
        request_id: String,
        classification: Classification,
    ) -> Response {
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            return tandem_error(
                StatusCode::BAD_REQUEST,
                &request_id,
                "tandem proxies origin-form requests only (a path starting with '/')",
            );
        }
        let (parts, body) = request.into_parts();
        let read = LimitedBody::read(body, self.config.max_body_bytes);
        let body = match tokio::time::timeout(self.config.body_read_timeout, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(err)) => {
                return tandem_error(
                    StatusCode::BAD_REQUEST,
                    &request_id,
                    &format!("malformed request body: {err}"),
                )
            }
            Err(_) => {
                let mut response = tandem_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &request_id,
                    &format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(self.config.body_read_timeout)
                    ),
                );
                // The rest of the body may still come: the connection cannot serve another.
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // Only tandem marks copies; a client cannot pose as one.
        headers.remove(MIRROR);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, value);
        }
        let inbound = Inbound {
            outbound: OutboundRequest {
                method: parts.method,
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned(),
                headers,
            },
            request_id,
            body,
            classification,
        };
        match inbound.classification.class {
            RouteClass::Write => self.write(inbound).await,
            RouteClass::Read | RouteClass::NoMirror => {
                let stage = self.stage.current().stage;
                // Read-your-writes across a change of authoritative side: the key's copies
                // to that side land before it answers.
                if let Err(refusal) = self
                    .mirror
                    .clear_key(
                        stage.authoritative(),
                        &inbound.classification.ordering_key,
                        self.config.cutover_timeout,
                    )
                    .await
                {
                    return cutover_refused(&inbound.request_id, &refusal);
                }
                if inbound.classification.class == RouteClass::Read && stage.compares_reads() {
                    self.shadow_read(inbound, stage.authoritative()).await
                } else {
                    self.forward(inbound, stage.authoritative()).await
                }
            }
        }
    }

    /// Sends the request to the authoritative side only and streams its answer back.
    async fn forward(&self, inbound: Inbound, authoritative: Side) -> Response {
        let primary = self.upstreams.get(authoritative);
        match primary
            .send(&inbound.outbound, inbound.body.into_body(), Role::Primary)
            .await
        {
            Ok(response) => client_response(response.map(Body::new)),
            Err(err) => upstream_failed(&inbound.request_id, &err),
        }
    }

    /// Runs a write in a task of its own, tracked for shutdown, so that a client that goes
    /// away cannot cancel it between the authoritative side's acceptance and its copy.
    async fn write(self: &Arc<Self>, inbound: Inbound) -> Response {
        let state = Arc::clone(self);
        let request_id = inbound.request_id.clone();
        let applying = self
            .writes
            .spawn(async move { state.apply_write(inbound).await }.in_current_span());
        match applying.await {
            Ok(response) => response,
            Err(err) => {
                let message = if err.is_panic() {
                    "tandem failed while applying this write (a bug, logged with this request \
                     id); the authoritative side may have applied it"
                } else {
                    "the write was interrupted by shutdown"
                };
                tracing::error!(request_id, error = %err, "a write task ended without an answer");
                tandem_error(StatusCode::INTERNAL_SERVER_ERROR, &request_id, message)
            }
        }
    }

    /// Sends a write to the authoritative side and, once accepted, queues its copy for the
    /// other side, all under the key's lock so copies keep the order the writes were applied.
    async fn apply_write(&self, inbound: Inbound) -> Response {
        let key_guard = self
            .key_locks
            .lock(&inbound.classification.ordering_key)
            .await;
        // Read under the lock, so the writes to one key see stage changes in one order.
        let stage = self.stage.current().stage;
        let authoritative = stage.authoritative();
        // The cutover hold: copies of this key to the side now authoritative (accepted while
        // the other one was) land before this write; under the key's lock, nothing of the
        // key reaches that side in between.
        if let Err(refusal) = self
            .mirror
            .clear_key(
                authoritative,
                &inbound.classification.ordering_key,
                self.config.cutover_timeout,
            )
            .await
        {
            return cutover_refused(&inbound.request_id, &refusal);
        }
        if !stage.mirrors_writes() {
            return self.forward(inbound, authoritative).await;
        }
        let body = match inbound.body {
            LimitedBody::Complete(bytes) => bytes,
            LimitedBody::TooLarge { .. } => {
                let error = format!(
                    "request body over max_body_bytes ({})",
                    self.config.max_body_bytes
                );
                return self
                    .write_not_mirrored(inbound, authoritative, "body_too_large", error)
                    .await;
            }
        };
        // Room in the journal for this write's copy is promised before the authoritative side
        // sees the write, and held until the copy is appended.
        let entry_bytes = entry::size_of(
            &inbound.request_id,
            &inbound.outbound,
            &inbound.classification.ordering_key,
            &inbound.classification.route,
            body.len(),
        );
        let journal_room = match self.mirror.reserve_journal(entry_bytes) {
            Ok(room) => room,
            // Never appendable, whatever the policy: recorded as a body over the limit is.
            Err(refusal @ tandem_journal::Refusal::TooLarge) => {
                JournalRefusedWrite {
                    refusal,
                    policy: self.config.journal_full,
                }
                .emit();
                let inbound = Inbound {
                    body: LimitedBody::Complete(body),
                    ..inbound
                };
                return self
                    .write_not_mirrored(
                        inbound,
                        authoritative,
                        refusal.reason(),
                        refusal.to_string(),
                    )
                    .await;
            }
            Err(refusal) => {
                JournalRefusedWrite {
                    refusal,
                    policy: self.config.journal_full,
                }
                .emit();
                return match self.config.journal_full {
                    JournalFull::Refuse => journal_refused(&inbound.request_id, refusal),
                    JournalFull::Record => {
                        let inbound = Inbound {
                            body: LimitedBody::Complete(body),
                            ..inbound
                        };
                        self.write_not_mirrored(
                            inbound,
                            authoritative,
                            refusal.reason(),
                            refusal.to_string(),
                        )
                        .await
                    }
                };
            }
        };
        // Where the shared journal ends before the write: a copy of the key another instance
        // appends from here on was written concurrently.
        let mark = self.mirror.mark().await;
        let primary = self.upstreams.get(authoritative);
        let response = match primary
            .send(&inbound.outbound, Body::from(body.clone()), Role::Primary)
            .await
        {
            Ok(response) => response,
            Err(err) => return upstream_failed(&inbound.request_id, &err),
        };
        if !self
            .config
            .accept_statuses
            .contains(response.status().as_u16())
        {
            return client_response(response.map(Body::new));
        }
        let (accepted_at, accepted_seq) = self.mirror.accept();
        let (captured, response) = self
            .capture(response, &inbound.request_id, primary.timeout())
            .await;
        let (done, waiter) = match self.config.mirror {
            MirrorMode::Sync => {
                let (sender, receiver) = oneshot::channel();
                (Some(sender), Some(receiver))
            }
            MirrorMode::Async => (None, None),
        };
        let target = authoritative.other();
        let mut request = inbound.outbound;
        request
            .headers
            .insert(MIRROR, HeaderValue::from_static("1"));
        let job = MirrorJob {
            request_id: inbound.request_id,
            target,
            request,
            body,
            ordering_key: inbound.classification.ordering_key,
            route: inbound.classification.route,
            class: inbound.classification.class,
            primary: captured,
            accepted_at,
            accepted_seq,
            done,
            journal_seq: None,
            read_under: None,
            expired: false,
        };
        // In the journal before the client hears anything: a crash cannot lose it now. A copy
        // the journal cannot take (after old took the write) is recorded as not mirrored,
        // durably, before the answer: never a copy in memory a crash would lose unsaid.
        let journaled = self.mirror.journal(job, mark).await;
        drop(journal_room);
        let mut response = response;
        if let Err(not_journaled) = journaled {
            let NotJournaled { job, error } = *not_journaled;
            let gap = Gap {
                request_id: job.request_id,
                target: target.as_str().to_owned(),
                method: job.request.method.to_string(),
                uri: job.request.path_and_query,
                headers: encode_block(&job.request.headers),
                ordering_key: job.ordering_key,
                reason: "journal_append_failed".to_owned(),
                error: error.to_string(),
                accepted_at_ms: accepted_at.millis(),
                accepted_seq,
            };
            self.record_not_mirrored(gap).await;
            drop(key_guard);
            response
                .headers_mut()
                .insert(MIRROR_PENDING, HeaderValue::from_static("not-mirrored"));
            return response;
        }
        drop(key_guard);
        if let Some(waiter) = waiter {
            // Sync mode: the answer waits for the copy, unless the other side is known to be
            // behind or down (copies wait in the journal, or its circuit is open): then it
            // is kept and on its way, and said so.
            let timeout = self.upstreams.get(target).timeout();
            let confirmed = !self.mirror.not_waiting()
                && matches!(tokio::time::timeout(timeout, waiter).await, Ok(Ok(true)));
            if !confirmed {
                response
                    .headers_mut()
                    .insert(MIRROR_PENDING, HeaderValue::from_static("pending"));
            }
        }
        response
    }

    /// A write that cannot be mirrored (its body is over the limit, or the journal is full
    /// under the `record` policy) reaches the authoritative side only; if accepted, it is
    /// recorded as not mirrored (`reason`, `error`) so the divergence is known. The record is
    /// in the gap log before the client is answered (room for it promised before the
    /// authoritative side sees the write), and reaches the store from there: the request
    /// never waits for the store, and a crash loses no record.
    async fn write_not_mirrored(
        &self,
        inbound: Inbound,
        authoritative: Side,
        reason: &'static str,
        error: String,
    ) -> Response {
        let mut gap = Gap {
            request_id: inbound.request_id.clone(),
            target: authoritative.other().as_str().to_owned(),
            method: inbound.outbound.method.to_string(),
            uri: inbound.outbound.path_and_query.clone(),
            headers: encode_block(&inbound.outbound.headers),
            ordering_key: inbound.classification.ordering_key.clone(),
            reason: reason.to_owned(),
            error,
            accepted_at_ms: 0,
            accepted_seq: 0,
        };
        let Some(record_room) = self.not_mirrored.reserve(&gap) else {
            tracing::error!(
                reason,
                "the gap log is full: a write that cannot be mirrored is refused"
            );
            return journal_full(&inbound.request_id);
        };
        let primary = self.upstreams.get(authoritative);
        let response = match primary
            .send(&inbound.outbound, inbound.body.into_body(), Role::Primary)
            .await
        {
            Ok(response) => response,
            Err(err) => return upstream_failed(&inbound.request_id, &err),
        };
        if self
            .config
            .accept_statuses
            .contains(response.status().as_u16())
        {
            let (accepted_at, accepted_seq) = self.mirror.accept();
            gap.accepted_at_ms = accepted_at.millis();
            gap.accepted_seq = accepted_seq;
            self.record_not_mirrored(gap).await;
            drop(record_room);
            let mut response = client_response(response.map(Body::new));
            response
                .headers_mut()
                .insert(MIRROR_PENDING, HeaderValue::from_static("not-mirrored"));
            return response;
        }
        drop(record_room);
        client_response(response.map(Body::new))
    }

    /// Records a write the other side will not get: in the gap log, or (a disk error) in the
    /// control store directly, beside the answer.
    async fn record_not_mirrored(&self, gap: Gap) {
        if let Err(err) = self.not_mirrored.record(&gap).await {
            tracing::error!(error = %err, "the gap log cannot take a not-mirrored record; it goes to the control store directly");
            self.writes
                .spawn(record_in_store(self.store.clone(), gap).in_current_span());
        }
    }

    /// Answers a read from the authoritative side and compares it with the other side's answer.
    async fn shadow_read(&self, inbound: Inbound, authoritative: Side) -> Response {
        let LimitedBody::Complete(body) = &inbound.body else {
            ComparisonSkipped {
                reason: "body_too_large",
            }
            .emit();
            return self.forward(inbound, authoritative).await;
        };
        let body = body.clone();
        let primary = self.upstreams.get(authoritative);
        let response = match primary
            .send(&inbound.outbound, Body::from(body.clone()), Role::Primary)
            .await
        {
            Ok(response) => response,
            Err(err) => return upstream_failed(&inbound.request_id, &err),
        };
        let (captured, response) = self
            .capture(response, &inbound.request_id, primary.timeout())
            .await;
        let Some(captured) = captured else {
            return response;
        };
        let mut request = inbound.outbound;
        request
            .headers
            .insert(MIRROR, HeaderValue::from_static("1"));
        let shadow = ShadowRead {
            upstreams: self.upstreams.clone(),
            recorder: self.recorder.clone(),
            request_id: inbound.request_id,
            request,
            body,
            classification: inbound.classification,
            authoritative,
            primary: captured,
        };
        match self.config.mirror {
            MirrorMode::Sync => shadow.run().await,
            MirrorMode::Async => match Arc::clone(&self.shadow_permits).try_acquire_owned() {
                Ok(permit) => {
                    self.shadow_reads.spawn(
                        async move {
                            shadow.run().await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                }
                Err(_) => ComparisonSkipped {
                    reason: "shadow_saturated",
                }
                .emit(),
            },
        }
        response
    }

    /// Reads the authoritative answer into memory (up to the body limit, within `timeout`)
    /// so that it can be compared; returns it with the response to send to the client.
    async fn capture(
        &self,
        response: http::Response<Incoming>,
        request_id: &str,
        timeout: Duration,
    ) -> (Option<CapturedResponse>, Response) {
        let (parts, body) = response.into_parts();
        let read = LimitedBody::read(Body::new(body), self.config.max_body_bytes);
        let Ok(read) = tokio::time::timeout(timeout, read).await else {
            let message = format!("authoritative response body stalled for {timeout:?}");
            return (
                None,
                tandem_error(StatusCode::GATEWAY_TIMEOUT, request_id, &message),
            );
        };
        match read {
            Ok(LimitedBody::Complete(bytes)) => {
                let captured = CapturedResponse {
                    status: parts.status.as_u16(),
                    json: is_json(&parts.headers),
                    body: bytes.clone(),
                };
                (
                    Some(captured),
                    client_response(http::Response::from_parts(parts, Body::from(bytes))),
                )
            }
            Ok(body @ LimitedBody::TooLarge { .. }) => {
                ComparisonSkipped {
                    reason: "body_too_large",
                }
                .emit();
                (
                    None,
                    client_response(http::Response::from_parts(parts, body.into_body())),
                )
            }
            Err(err) => (
                None,
                tandem_error(
                    StatusCode::BAD_GATEWAY,
                    request_id,
                    &format!("authoritative response body broke off: {err}"),
                ),
            ),
        }
    }
}

/// A read sent to the non-authoritative side to compare with the authoritative answer.
struct ShadowRead {
    upstreams: Upstreams,
    recorder: MismatchRecorder,
    request_id: String,
    request: OutboundRequest,
    body: Bytes,
    classification: Classification,
    authoritative: Side,
    primary: CapturedResponse,
}

impl ShadowRead {
    async fn run(self) {
        let secondary = self.upstreams.get(self.authoritative.other());
        match secondary
            .exchange(&self.request, self.body, Role::Shadow)
            .await
        {
            Ok(answer) => {
                let request = ComparedRequest {
                    request_id: &self.request_id,
                    method: self.request.method.as_str(),
                    path: self.request.path_and_query.split('?').next().unwrap_or(""),
                    route: &self.classification.route,
                    class: self.classification.class,
                };
                self.recorder
                    .compare(&request, self.authoritative, &self.primary, &answer)
                    .await;
            }
            Err(_) => ComparisonSkipped {
                reason: "secondary_failed",
            }
            .emit(),
        }
    }
}

fn client_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let usable = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    usable.then(|| value.to_owned())
}

fn client_response(mut response: http::Response<Body>) -> Response {
    strip_hop_by_hop(response.headers_mut());
    response
}

fn upstream_failed(request_id: &str, err: &UpstreamError) -> Response {
    let status = match err {
        UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    tracing::warn!(side = %err.side(), error = %err, "authoritative side failed");
    tandem_error(status, request_id, &err.to_string())
}

/// The answer to a write refused because the mirror journal is full: it reached neither side.
fn journal_full(request_id: &str) -> Response {
    journal_refused(request_id, tandem_journal::Refusal::Full)
}

/// The answer to a write the journal cannot take now (`refusal`), under the `refuse` policy.
fn journal_refused(request_id: &str, refusal: tandem_journal::Refusal) -> Response {
    let message = match refusal {
        tandem_journal::Refusal::Full => {
            "the mirror journal is full; the write reached neither side; retry later"
        }
        tandem_journal::Refusal::Unreachable => {
            "the shared mirror journal cannot be reached; the write reached neither side; retry later"
        }
        tandem_journal::Refusal::TooLarge => {
            "the write is larger than the shared mirror journal takes; it reached neither side"
        }
    };
    let mut response = tandem_error(StatusCode::SERVICE_UNAVAILABLE, request_id, message);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// The answer to a request the cutover hold refused: 503 with Retry-After, and the outcome
/// (`timed_out`, `kept`, `store_unreachable`) in the body's `cutover`. It reached neither side.
fn cutover_refused(request_id: &str, refusal: &CutoverRefusal) -> Response {
    let mut body = tandem_body(request_id, &refusal.to_string());
    body["cutover"] = refusal.outcome().into();
    let retry_after = match refusal {
        CutoverRefusal::Kept { .. } => "30",
        CutoverRefusal::TimedOut { .. }
        | CutoverRefusal::StoreUnreachable { .. }
        | CutoverRefusal::JournalFailed { .. } => "1",
    };
    let mut response = json_answer(StatusCode::SERVICE_UNAVAILABLE, &body);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from_static(retry_after),
    );
    response
}

/// An answer made by tandem itself (not by either side), as JSON.
fn tandem_error(status: StatusCode, request_id: &str, message: &str) -> Response {
    json_answer(status, &tandem_body(request_id, message))
}

/// The body of an answer tandem makes itself.
fn tandem_body(request_id: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "error": message,
        "request_id": request_id,
        "source": "tandem",
    })
}

/// `body` as a JSON answer with `status`.
fn json_answer(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
