//! Integration tests of what tandem ships for the on-call stack, against the real tools:
//! Prometheus' rules checked and unit-tested by `promtool`, a real Prometheus scraping a
//! running stack for every series the rules and the Grafana dashboard query, and a real
//! Alertmanager receiving, silencing and ending tandem's alerts.
//! `scripts/ensure-prometheus` installs the tools (Debian's `prometheus` and
//! `prometheus-alertmanager`).

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod alertmanager;
mod https;
mod logs;
mod long_running;
mod pagerduty;
mod rules;
mod services;
mod stack;
mod tools;
mod waiting;
