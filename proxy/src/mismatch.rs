//! Recording of response mismatches: compare, count, log and persist in one place.

use tandem_control::{ControlStore, NewResponseMismatch, Side};

use crate::compare::{diff_responses, CapturedResponse, IgnorePaths};
use crate::routes::RouteClass;
use crate::telemetry::{ResponseMismatched, ResponsesCompared};

/// What is known of the request whose two answers are compared.
#[derive(Debug, Clone)]
pub struct ComparedRequest<'a> {
    /// The client request id.
    pub request_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Matching route.
    pub route: &'a str,
    /// Read or write.
    pub class: RouteClass,
}

/// Compares two answers and records a mismatch when they differ.
#[derive(Debug, Clone)]
pub struct MismatchRecorder {
    ignore: IgnorePaths,
    store: ControlStore,
}

impl MismatchRecorder {
    /// A recorder that leaves `ignore` out of comparisons and writes to `store`.
    #[must_use]
    pub fn new(ignore: IgnorePaths, store: ControlStore) -> MismatchRecorder {
        MismatchRecorder { ignore, store }
    }

    /// Compares the authoritative answer with the other side's; records any difference.
    pub async fn compare(
        &self,
        request: &ComparedRequest<'_>,
        authoritative: Side,
        primary: &CapturedResponse,
        secondary: &CapturedResponse,
    ) {
        let (old, new) = match authoritative {
            Side::Old => (primary, secondary),
            Side::New => (secondary, primary),
        };
        ResponsesCompared.emit();
        let Some(diff) = diff_responses(old, new, &self.ignore) else {
            return;
        };
        ResponseMismatched {
            request_id: request.request_id,
            class: request.class,
            route: request.route,
        }
        .emit();
        let record = NewResponseMismatch {
            request_id: request.request_id.to_owned(),
            method: request.method.to_owned(),
            path: request.path.to_owned(),
            route: request.route.to_owned(),
            authoritative,
            status_old: old.status,
            status_new: new.status,
            diff,
        };
        if let Err(err) = self.store.insert_response_mismatch(&record).await {
            tracing::error!(request_id = request.request_id, error = %err, "cannot record response mismatch");
        }
    }
}
