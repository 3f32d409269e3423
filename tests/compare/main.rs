//! Integration tests of `tandem compare`: the real binary against real PostgreSQL, MariaDB and
//! SQLite databases with every kind of drift injected.

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod aimed;
mod backfill;
mod backfill_arrays;
mod backfill_bulk;
mod backfill_create_schema;
mod backfill_flags;
mod backfill_instances;
mod backfill_plan;
mod backfill_progress;
mod backfill_retry;
mod backfill_schema;
mod collation;
mod conflicts;
mod drift;
mod engines;
mod errors;
mod every_table;
mod exact;
mod live;
mod privileges;
mod record;
mod repair;
mod report_shape;
mod service;
mod shared;
mod sweeps;
