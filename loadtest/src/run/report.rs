//! What a run measured, as a table for people or JSON for scripts.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::verify::Verified;
use super::Outcome;

/// Requests that did not get the answer the API promises, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// 4xx other than a 404 for an order not written yet.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
    /// No answer within the timeout.
    pub timeout: u64,
    /// Connection refused (nothing listening).
    pub connect: u64,
    /// Connection broken while the request was under way.
    pub broken: u64,
    /// Not sent: the generator had too many requests in flight (open loop).
    pub overload: u64,
}

impl Errors {
    pub(super) fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => {}
            Outcome::ClientError => self.client_error += 1,
            Outcome::ServerError => self.server_error += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Connect => self.connect += 1,
            Outcome::Broken => self.broken += 1,
            Outcome::Overload => self.overload += 1,
        }
    }

    /// All errors.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.client_error
            + self.server_error
            + self.timeout
            + self.connect
            + self.broken
            + self.overload
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The slowest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
}

/// A run's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `open` (fixed rate) or `closed` (fixed concurrency).
    pub mode: &'static str,
    /// The URL driven.
    pub target: String,
    /// Requests started per second asked for (open loop).
    pub rate: Option<u64>,
    /// Clients (closed loop).
    pub concurrency: Option<usize>,
    /// How long the run took, in seconds.
    pub duration_seconds: f64,
    /// Requests sent (failed ones included; arrivals counted as `overload` were not sent).
    pub requests: u64,
    /// Requests answered as promised.
    pub ok: u64,
    /// Answered requests per second.
    pub throughput_per_second: f64,
    /// Latencies of answered and failed requests (open loop: from their intended start).
    pub latency_ms: Latencies,
    /// Errors by kind.
    pub errors: Errors,
    /// The comparison of the two databases afterwards, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verified>,
}

impl Report {
    pub(super) fn new(
        target: &str,
        rate: Option<u64>,
        concurrency: Option<usize>,
        elapsed: Duration,
        histogram: &Histogram<u64>,
        errors: Errors,
        ok: u64,
    ) -> Report {
        let millis = |micros: u64| micros as f64 / 1000.0;
        // Arrivals the generator could not send are errors, not requests.
        let requests = ok + errors.total() - errors.overload;
        Report {
            mode: if rate.is_some() { "open" } else { "closed" },
            target: target.to_owned(),
            rate,
            concurrency,
            duration_seconds: elapsed.as_secs_f64(),
            requests,
            ok,
            throughput_per_second: ok as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            latency_ms: if histogram.is_empty() {
                Latencies::default()
            } else {
                Latencies {
                    p50: millis(histogram.value_at_quantile(0.50)),
                    p90: millis(histogram.value_at_quantile(0.90)),
                    p99: millis(histogram.value_at_quantile(0.99)),
                    p999: millis(histogram.value_at_quantile(0.999)),
                    max: millis(histogram.max()),
                    mean: histogram.mean() / 1000.0,
                }
            },
            errors,
            verify: None,
        }
    }

    /// The report as a table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let load = match (self.rate, self.concurrency) {
            (Some(rate), _) => format!("open loop, {rate} requests/s"),
            (None, Some(clients)) => format!("closed loop, {clients} clients"),
            (None, None) => String::new(),
        };
        let latency = &self.latency_ms;
        let errors = &self.errors;
        let _ = writeln!(
            out,
            "target      {} ({load}, {:.1} s)",
            self.target, self.duration_seconds
        );
        let _ = writeln!(
            out,
            "requests    {} ({} ok, {:.1}/s)",
            self.requests, self.ok, self.throughput_per_second
        );
        let _ = writeln!(
            out,
            "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            latency.p50, latency.p90, latency.p99, latency.p999, latency.max
        );
        let _ = writeln!(
            out,
            "errors      {} (4xx {}, 5xx {}, timeout {}, refused {}, broken {}, overload {})",
            errors.total(),
            errors.client_error,
            errors.server_error,
            errors.timeout,
            errors.connect,
            errors.broken,
            errors.overload
        );
        if let Some(verified) = &self.verify {
            let _ = writeln!(
                out,
                "verify      {} ({} missing in new, {} extra in new, {} changed, {} rows)",
                if verified.identical {
                    "identical"
                } else {
                    "DIVERGENT"
                },
                verified.missing_in_new,
                verified.extra_in_new,
                verified.changed,
                verified.rows_old
            );
        }
        out
    }
}
