//! Integration tests of what tandem ships for the on-call stack, against the real tools:
//! Prometheus' rules checked and unit-tested by `promtool`. `scripts/ensure-prometheus`
//! installs the tools (Debian's `prometheus` and `prometheus-alertmanager`).

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod rules;
mod tools;
