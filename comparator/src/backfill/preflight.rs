//! The check a backfill makes before it writes anything: every table it copies exists on both
//! sides, every column it copies exists on the new side with a type it can carry there, every
//! new-side column an insert needs a value for gets one, and the new side refuses a second row
//! with the same key (what keeps the backfill's insert-if-absent and bulk copy from doubling a
//! row dual-write inserts meanwhile). A column the new side declares narrower is only warned
//! of (`narrowing.rs`).

use tandem_control::Side;

use crate::database::{Database, Engine};
use crate::error::CompareError;
use crate::plan::{ColumnSelection, TablePlan};
use crate::run::{CompareOptions, TablePair};
use crate::schema::{describe, TableSchema};

use super::narrowing::warn_of_narrowing;

/// Every reason the tables of `pairs` (and the tables found on one side only) cannot be
/// copied, one per table or column, in the order given; empty when all can.
///
/// # Errors
/// When a catalogue cannot be read.
pub(crate) async fn uncarried(
    (old, new): (&Database, &Database),
    pairs: &[TablePair],
    (only_in_old, only_in_new): (&[String], &[String]),
    options: &CompareOptions,
) -> Result<Vec<CompareError>, CompareError> {
    let missing = |table: &String, side| CompareError::UnknownTable {
        table: table.clone(),
        side,
    };
    let mut problems: Vec<CompareError> = only_in_old
        .iter()
        .map(|table| missing(table, Side::New))
        .chain(only_in_new.iter().map(|table| missing(table, Side::Old)))
        .collect();
    for pair in pairs {
        let (old_schema, new_schema) =
            tokio::try_join!(describe(old, &pair.old), describe(new, &pair.new))?;
        match (old_schema, new_schema) {
            (None, _) => problems.push(missing(&pair.old, Side::Old)),
            (Some(_), None) => problems.push(missing(&pair.new, Side::New)),
            (Some(old_schema), Some(new_schema)) => {
                problems.extend(TablePlan::uncarried_columns(
                    old,
                    &old_schema,
                    new,
                    &new_schema,
                    &options.selection,
                ));
                problems.extend(unfilled_columns(
                    (&old_schema, &new_schema),
                    &options.selection,
                ));
                problems.extend(unenforced_key(
                    new,
                    (&old_schema, &new_schema),
                    &options.selection,
                ));
                warn_of_narrowing((old, &old_schema), (new, &new_schema), &options.selection);
            }
        }
    }
    Ok(problems)
}

/// The new side's columns no insert can leave out (NOT NULL, no default, not an identity or
/// generated column) that the copy carries no value for: absent on the old side, or left out
/// of the copy (`--ignore-columns`, `--columns`).
fn unfilled_columns(
    (old_schema, new_schema): (&TableSchema, &TableSchema),
    selection: &ColumnSelection,
) -> Vec<CompareError> {
    let selection = selection.for_table(&old_schema.name);
    let key = key_of(old_schema, selection.key.clone());
    new_schema
        .columns
        .iter()
        .filter(|column| !column.nullable && !column.defaulted)
        .filter(|column| {
            old_schema.column(&column.name).is_none() || !selection.copies(&key, &column.name)
        })
        .map(|column| CompareError::Unfilled {
            table: new_schema.name.clone(),
            column: column.name.clone(),
        })
        .collect()
}

/// The key a copy of the table goes by: `--key`, else the old side's primary key or unique
/// index.
pub(super) fn key_of(old_schema: &TableSchema, chosen: Option<Vec<String>>) -> Vec<String> {
    chosen.unwrap_or_else(|| old_schema.identifying_key().to_vec())
}

/// The table's key (`--key`, else the old side's primary key or unique index) when the new
/// side has no primary key or unique index over those columns or some of them: the backfill's
/// `ON CONFLICT DO NOTHING` / `INSERT IGNORE` would then insert a row a mirrored insert put
/// there meanwhile a second time, and its bulk `COPY` would not fail on it. A table without a
/// key, or with a key column the new side lacks, is named by the other checks.
fn unenforced_key(
    new: &Database,
    (old_schema, new_schema): (&TableSchema, &TableSchema),
    selection: &ColumnSelection,
) -> Option<CompareError> {
    let key = key_of(old_schema, selection.for_table(&old_schema.name).key);
    let known = key.iter().all(|name| new_schema.column(name).is_some());
    if key.is_empty() || !known || new_schema.enforces_unique(&key) {
        return None;
    }
    let table = new.quote(&new_schema.name);
    let columns: Vec<String> = key.iter().map(|name| new.quote(name)).collect();
    let columns = columns.join(", ");
    // SQLite cannot add a primary key to a table.
    let fix = if new_schema.primary_key.is_empty() && new.engine != Engine::Sqlite {
        format!("ALTER TABLE {table} ADD PRIMARY KEY ({columns})")
    } else {
        let index = new.quote(&format!("{}_{}_key", new_schema.name, key.join("_")));
        format!("CREATE UNIQUE INDEX {index} ON {table} ({columns})")
    };
    Some(CompareError::KeyNotEnforced {
        table: new_schema.name.clone(),
        key: key.join(", "),
        fix,
    })
}
