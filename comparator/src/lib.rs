//! tandem's comparator: reads both databases in key order, hashes windows of rows with blake3
//! over a canonical encoding, and localises every divergence to rows and columns.

mod api;
mod array_literal;
mod backfill;
mod calendar;
pub mod canonical;
mod conflicts;
mod database;
mod diff;
mod error;
mod exposition;
mod json;
mod kinds;
mod multiset;
pub mod oncall;
mod plan;
mod reader;
mod record;
mod repair;
mod report;
mod run;
mod schema;
mod service;
mod sweep;
mod throttle;
mod window;

pub use backfill::{
    backfill, describe_backfill_metrics, BackfillError, BackfillOptions, BackfillProgressFn,
    BackfillProgressSink, BackfillReport, BackfillTableProgress, BackfillTableReport, CreatedTable,
};
pub use conflicts::OrderingKeyPattern;
pub use database::{Access, BindValue, Database, Engine};
pub use diff::{diff_windows, DivergenceKind, RowDivergence};
pub use error::CompareError;
pub use exposition::health_and_metrics;
pub use plan::{ColumnSelection, SchemaDifference, TablePlan, TableSelection};
pub use reader::{Row, TableReader};
pub use record::record_outcome;
pub use repair::{repair_table, RepairAction, RepairOptions, RepairReport};
pub use report::{DivergenceReport, KeyValues, Report, TableReport};
pub use run::{
    compare, compare_table, key_boundaries, plan_table, CompareOptions, KeyRange, ProgressSink,
    TableComparison, TablePair, WindowResult,
};
pub use schema::{describe, list_tables, TableSchema};
pub use service::{ComparatorService, ServiceSettings};
pub use throttle::ReadThrottle;
pub use window::EncodedRows;
