//! `tandem compare`: one comparison of two databases; exit 0 identical, 1 divergent, 2 error.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tandem_comparator::{compare, record_outcome, Access, Database, ProgressSink, Report};
use tandem_control::{redact_url, ControlStore, Side};

use crate::cli::{CompareArgs, Format};
use crate::command_line::CommandLine;
use crate::compare_settings::CompareSettings;
use crate::output::{key_text, print_json};

pub async fn run(args: CompareArgs, line: &CommandLine) -> anyhow::Result<ExitCode> {
    let mut settings = CompareSettings::resolve(&args, line)?;
    let spinner = (args.format == Format::Table && std::io::stderr().is_terminal()).then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner
    });
    if let Some(spinner) = &spinner {
        let spinner = spinner.clone();
        settings.options.progress = Some(ProgressSink(Arc::new(move |table, rows| {
            spinner.set_message(format!("{table}: {rows} rows compared"));
        })));
    }
    let recorder = match &settings.control_db {
        Some(url) => {
            let store = ControlStore::open(url).await?;
            let run = store
                .begin_comparison_run(&redact_url(&settings.old), &redact_url(&settings.new))
                .await?;
            Some((store, run))
        }
        None => None,
    };
    let report = async {
        let (old, new) = connect(&settings, Access::ReadOnly).await?;
        Ok::<_, anyhow::Error>(compare(&old, &new, &settings.options).await?)
    }
    .await;
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    if let Some((store, run)) = &recorder {
        let failure = report.as_ref().err().map(|err| format!("{err:#}"));
        let outcome = match (&report, &failure) {
            (Ok(report), _) => Ok(report),
            (Err(_), reason) => Err(reason.as_deref().unwrap_or("failed")),
        };
        record_outcome(store, *run, outcome).await?;
    }
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            if args.format == Format::Json {
                print_json(&serde_json::json!({ "error": format!("{error:#}") }))?;
            }
            return Err(error);
        }
    };
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Table => print_table(&report),
    }
    let failures = report.failures();
    if !failures.is_empty() {
        anyhow::bail!(
            "{} of {} tables could not be compared: {}",
            failures.len(),
            report.tables.len(),
            failures.join("; ")
        );
    }
    Ok(if report.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Connects to both databases the settings name.
pub(super) async fn connect(
    settings: &CompareSettings,
    access: Access,
) -> anyhow::Result<(Database, Database)> {
    let connections = u32::try_from(settings.options.threads.saturating_mul(2)).unwrap_or(u32::MAX);
    Ok(tokio::try_join!(
        Database::connect(Side::Old, &settings.old, connections, access),
        Database::connect(Side::New, &settings.new, connections, access)
    )?)
}

fn print_table(report: &Report) {
    for table in &report.tables {
        let name = match &table.new_table {
            Some(new) => format!("{} -> {new}", table.table),
            None => table.table.clone(),
        };
        println!(
            "{name}: {} rows old, {} rows new; {} missing in new, {} extra in new, {} changed \
             ({} converged on recheck)",
            table.rows_old,
            table.rows_new,
            table.missing_in_new,
            table.extra_in_new,
            table.changed,
            table.converged
        );
        if let Some(error) = &table.error {
            println!("  not compared: {error}");
        }
        for difference in &table.schema_differences {
            println!(
                "  column {} only in {}",
                difference.column, difference.only_in
            );
        }
        for divergence in &table.divergences {
            let columns = if divergence.columns.is_empty() {
                String::new()
            } else {
                format!(" columns {}", divergence.columns.join(", "))
            };
            println!(
                "  {} {}{columns}",
                divergence.kind.as_str(),
                key_text(&divergence.key)
            );
        }
    }
    for table in &report.only_in_old {
        println!("table {table} only in old");
    }
    for table in &report.only_in_new {
        println!("table {table} only in new");
    }
    println!(
        "{}",
        if report.identical {
            "IDENTICAL"
        } else {
            "DIVERGENT"
        }
    );
}
