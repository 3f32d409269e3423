//! The check a backfill makes before it writes anything: every table it copies exists on both
//! sides, and every column it copies exists on the new side with a type it can carry there.

use tandem_control::Side;

use crate::database::Database;
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::run::{CompareOptions, TablePair};
use crate::schema::describe;

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
            (Some(old_schema), Some(new_schema)) => problems.extend(TablePlan::uncarried_columns(
                old,
                &old_schema,
                new,
                &new_schema,
                &options.selection,
            )),
        }
    }
    Ok(problems)
}
