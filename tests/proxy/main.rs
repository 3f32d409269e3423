//! Integration tests of `tandem proxy`: the real binaries against real databases.
//!
//! Tests run on a multi-thread runtime: upstreams living in the test must keep serving while
//! the test blocks on a CLI call.

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod admin;
mod backfill;
mod bad_input;
mod config_layers;
mod config_modes;
mod crash;
mod cutover;
mod failures;
mod faults;
mod fleet;
mod front_door;
mod harness;
mod https;
mod mirroring;
mod oncall;
mod propagation;
mod routing;
mod shutdown;
mod summaries;
