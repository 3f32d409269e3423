//! `tandem backfill`: fill the new side's tables from the old side's beside live dual-write;
//! exit 0 when every chunk converged (or on a dry run, or when SIGTERM stopped it at a chunk
//! boundary), 1 otherwise, 2 on error.

use std::process::ExitCode;

use tandem_comparator::{backfill, Access, BackfillOptions, BackfillReport};
use tandem_control::{redact_url, ControlStore};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::compare::connect;
use crate::cli::{BackfillArgs, Format};
use crate::compare_settings::CompareSettings;
use crate::output::print_json;

pub async fn run(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let settings = CompareSettings::resolve(&args.compare)?;
    // A chunk's differences are all held for writing: as many as a comparison keeps.
    if !(1..=100_000).contains(&args.chunk_rows) {
        anyhow::bail!("invalid --chunk-rows: must be between 1 and 100000");
    }
    if settings.options.settings.timestamp_precision_micros != 1 {
        anyhow::bail!("tandem backfill copies values exactly: leave --timestamp-precision at us");
    }
    let store = if args.dry_run {
        None
    } else {
        let url = settings
            .control_db
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned());
        Some(ControlStore::open(&url).await?)
    };
    let access = if args.dry_run {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let (old, new) = connect(&settings, access).await?;
    let options = BackfillOptions {
        chunk_rows: args.chunk_rows,
        threads: settings.options.threads,
        attempts: args.attempts,
        dry_run: args.dry_run,
        restart: args.restart,
        instance: args.instance.unwrap_or_else(|| "backfill".to_owned()),
        lease: args.chunk_lease,
        sources: format!(
            "{} {}",
            redact_url(&settings.old),
            redact_url(&settings.new)
        ),
        stop: crate::shutdown::on_signal(),
    };
    let report = backfill((&old, &new), store.as_ref(), &settings.options, &options).await?;
    match args.compare.format {
        Format::Json => print_json(&report)?,
        Format::Table => print_table(&report),
    }
    Ok(if report.dry_run || report.stopped || report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(report: &BackfillReport) {
    for table in &report.tables {
        let name = match &table.new_table {
            Some(new) => format!("{} -> {new}", table.table),
            None => table.table.clone(),
        };
        if report.dry_run {
            println!(
                "{name}: {} rows old; would copy {}, would repair {}",
                table.rows_old, table.copied, table.repaired
            );
            continue;
        }
        println!(
            "{name}: {} of {} chunks done ({} before this run), {} rows read; copied {}, \
             repaired {}, {} conflicts with live writes, {} unconverged; {:.1}s",
            table.chunks_done,
            table.chunks,
            table.chunks_resumed,
            table.rows_old,
            table.copied,
            table.repaired,
            table.conflicts,
            table.unconverged,
            table.seconds
        );
    }
    println!(
        "{}",
        if report.dry_run {
            "DRY RUN"
        } else if report.stopped {
            "STOPPED (run the same command again to resume)"
        } else if report.converged {
            "CONVERGED"
        } else {
            "NOT CONVERGED"
        }
    );
}
