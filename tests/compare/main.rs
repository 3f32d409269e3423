//! Integration tests of `tandem compare`: the real binary against real PostgreSQL, MariaDB and
//! SQLite databases with every kind of drift injected.

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod backfill;
mod backfill_bulk;
mod backfill_progress;
mod backfill_schema;
mod collation;
mod drift;
mod engines;
mod errors;
mod every_table;
mod exact;
mod live;
mod record;
mod repair;
mod report_shape;
mod service;
mod shared;
