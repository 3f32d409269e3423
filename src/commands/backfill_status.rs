//! `tandem backfill status`: where every backfill recorded in the control store stands, from
//! its checkpoints: chunks done and left, rows, conflicts, start and last progress, and the
//! instance holding each chunk being copied.

use std::process::ExitCode;

use tandem_control::{BackfillTableStatus, Timestamp};

use super::open_store;
use crate::cli::{ControlArgs, Format};
use crate::output::print_json;

pub async fn run(format: Format, control: &ControlArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(control).await?;
    let tables = store.backfill_status().await?;
    match format {
        Format::Json => print_json(&serde_json::json!({ "tables": tables }))?,
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
        println!(
            "{name}: {} of {} chunks done, {} left; {} rows read, copied {}, skipped {} \
             already equal, repaired {}, {} conflicts with live writes, {} unconverged",
            table.done,
            table.chunks,
            table.left,
            table.counts.rows_old,
            table.counts.copied,
            table.counts.skipped,
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
