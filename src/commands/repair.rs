//! `tandem repair`: copy confirmed divergent rows from the authoritative side; exit 0 when
//! every repaired row is identical afterwards (or on a dry run), 1 otherwise, 2 on error.

use std::process::ExitCode;

use tandem_comparator::{repair_table, Access, RepairOptions, RepairReport};
use tandem_control::Side;

use super::compare::connect;
use crate::cli::{Format, RepairArgs, SideArg};
use crate::command_line::CommandLine;
use crate::compare_settings::CompareSettings;
use crate::output::{key_text, print_json};

pub async fn run(args: RepairArgs, line: &CommandLine) -> anyhow::Result<ExitCode> {
    let settings = CompareSettings::resolve(&args.compare, line)?;
    let [table] = settings.options.tables.as_slice() else {
        anyhow::bail!("tandem repair works on one table: give exactly one --table");
    };
    let (old, new) = connect(&settings, Access::ReadWrite).await?;
    let repair = RepairOptions {
        from: match args.from {
            SideArg::Old => Side::Old,
            SideArg::New => Side::New,
        },
        dry_run: args.dry_run,
        batch_rows: args.batch_rows,
    };
    let report = repair_table(&old, &new, table, &settings.options, &repair).await?;
    match args.compare.format {
        Format::Json => print_json(&report)?,
        Format::Table => print_table(&report),
    }
    Ok(if report.dry_run || report.still_divergent == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(report: &RepairReport) {
    let verb = if report.dry_run { "would" } else { "did" };
    println!(
        "{}: {verb} insert {}, update {}, delete {} rows on the {} side (from {})",
        report.table,
        report.inserted,
        report.updated,
        report.deleted,
        report.from.other(),
        report.from
    );
    for action in &report.actions {
        let columns = if action.columns.is_empty() {
            String::new()
        } else {
            format!(" set {}", action.columns.join(", "))
        };
        println!("  {} {}{columns}", action.action, key_text(&action.key));
    }
    if !report.dry_run {
        println!(
            "afterwards: {} identical, {} still divergent",
            report.identical_after, report.still_divergent
        );
    }
}
