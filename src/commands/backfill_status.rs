//! `tandem backfill status`: where every backfill recorded in the control store stands, from
//! its checkpoints: chunks done and left, rows, conflicts, start and last progress, and the
//! instance holding each chunk being copied.

use std::process::ExitCode;

use serde::Serialize;
use tandem_control::{BackfillTableStatus, Timestamp};

use super::open_store;
use crate::cli::{ControlArgs, Format};
use crate::output::print_json;

/// One table's status with what is left, for scripts.
#[derive(Serialize)]
struct TableView<'a> {
    #[serde(flatten)]
    status: &'a BackfillTableStatus,
    /// Chunks not done yet (pending or held).
    left: i64,
}

pub async fn run(format: Format, control: &ControlArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(control).await?;
    let tables = store.backfill_status().await?;
    match format {
        Format::Json => {
            let views: Vec<TableView<'_>> = tables
                .iter()
                .map(|status| TableView {
                    status,
                    left: status.chunks - status.done,
                })
                .collect();
            print_json(&serde_json::json!({ "tables": views }))?;
        }
        Format::Table => print_table(&tables),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(tables: &[BackfillTableStatus]) {
    if tables.is_empty() {
        println!("no backfill recorded in this control store");
    }
    let when =
        |at: Option<Timestamp>| at.map_or_else(|| "unknown".to_owned(), Timestamp::to_rfc3339);
    for table in tables {
        let name = if table.new_table == table.table {
            table.table.clone()
        } else {
            format!("{} -> {}", table.table, table.new_table)
        };
        let left = table.chunks - table.done;
        println!(
            "{name}: {} of {} chunks done, {left} left; {} rows read, copied {}, repaired {}, \
             {} conflicts with live writes, {} unconverged",
            table.done,
            table.chunks,
            table.counts.rows_old,
            table.counts.copied,
            table.counts.repaired,
            table.counts.conflicts,
            table.counts.unconverged,
        );
        println!(
            "  started {}, last progress {}",
            when(table.started),
            when(table.last_progress)
        );
        for claim in &table.claims {
            println!(
                "  chunk {} held by {} since {}",
                claim.seq,
                claim.instance,
                claim.claimed_at.to_rfc3339()
            );
        }
        println!("  job: {}", table.job);
    }
}
