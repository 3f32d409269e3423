//! Recording of comparison outcomes in the control store.

use tandem_control::{ControlError, ControlStore, NewDivergence, NewTableResult};

use crate::report::{Report, TableReport};

/// Records how run `run` ended: each table's counts and listed divergences (or why it could
/// not be compared), then the run's status (`identical`, `divergent`, or `failed` with
/// `Err`'s reason or the tables that could not be compared).
///
/// # Errors
/// When the control store cannot be written.
pub async fn record_outcome(
    store: &ControlStore,
    run: i64,
    outcome: Result<&Report, &str>,
) -> Result<(), ControlError> {
    let report = match outcome {
        Ok(report) => report,
        Err(reason) => {
            return store
                .finish_comparison_run(run, "failed", Some(reason))
                .await
        }
    };
    // A table that could not be compared is recorded too, with its reason, as sweeps do.
    for table in &report.tables {
        store
            .record_table_result(run, &table_result(table), &listed_divergences(table))
            .await?;
    }
    let failures = report.failures();
    if !failures.is_empty() {
        let reason = format!("tables not compared: {}", failures.join("; "));
        return store
            .finish_comparison_run(run, "failed", Some(&reason))
            .await;
    }
    let status = if report.identical {
        "identical"
    } else {
        "divergent"
    };
    store.finish_comparison_run(run, status, None).await
}

/// A table's counts as the control store records them.
pub(crate) fn table_result(table: &TableReport) -> NewTableResult {
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    NewTableResult {
        table: table.table.clone(),
        new_table: table
            .new_table
            .clone()
            .unwrap_or_else(|| table.table.clone()),
        rows_old: count(table.rows_old),
        rows_new: count(table.rows_new),
        missing_in_new: count(table.missing_in_new),
        extra_in_new: count(table.extra_in_new),
        changed: count(table.changed),
        converged: count(table.converged),
        unconverged: count(table.unconverged),
        windows: count(table.windows),
        schema_differences: count(table.schema_differences.len() as u64),
        identical: table.identical(),
        error: table.error.clone(),
    }
}

/// A table's listed divergences as the control store records them.
pub(crate) fn listed_divergences(table: &TableReport) -> Vec<NewDivergence> {
    table
        .divergences
        .iter()
        .map(|divergence| NewDivergence {
            kind: divergence.kind.as_str().to_owned(),
            key: divergence.key.clone(),
            columns: divergence.columns.clone(),
            old_row: divergence.old.clone().map(Into::into),
            new_row: divergence.new.clone().map(Into::into),
        })
        .collect()
}
