//! `tandem compare`: one comparison of two databases; exit 0 identical, 1 divergent, 2 error.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use tandem_comparator::canonical::CanonicalSettings;
use tandem_comparator::{
    compare, record_outcome, Access, ColumnSelection, CompareOptions, Database, ProgressSink,
    Report, TablePair,
};
use tandem_control::{redact_url, ControlStore, Side};

use crate::cli::{CompareArgs, Format, TimestampPrecision};
use crate::output::{key_text, print_json};

pub async fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let mut options = options(&args)?;
    let spinner = (args.format == Format::Table && std::io::stderr().is_terminal()).then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner
    });
    if let Some(spinner) = &spinner {
        let spinner = spinner.clone();
        options.progress = Some(ProgressSink(Arc::new(move |table, rows| {
            spinner.set_message(format!("{table}: {rows} rows compared"));
        })));
    }
    let recorder = match &args.control_db {
        Some(url) => {
            let store = ControlStore::open(url).await?;
            let run = store
                .begin_comparison_run(&redact_url(&args.old), &redact_url(&args.new))
                .await?;
            Some((store, run))
        }
        None => None,
    };
    let report = async {
        let (old, new) = connect(&args, Access::ReadOnly).await?;
        Ok::<_, anyhow::Error>(compare(&old, &new, &options).await?)
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
    let report = report?;
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Table => print_table(&report),
    }
    Ok(if report.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The comparison options the flags describe.
pub(super) fn options(args: &CompareArgs) -> anyhow::Result<CompareOptions> {
    let assume_tz_offset_micros = parse_offset(&args.assume_tz)
        .with_context(|| format!("--assume-tz {:?}: expected UTC or ±HH:MM", args.assume_tz))?;
    if args
        .float_tolerance
        .is_some_and(|tolerance| tolerance.is_nan() || tolerance < 0.0)
    {
        anyhow::bail!("--float-tolerance must be zero or positive");
    }
    Ok(CompareOptions {
        tables: args
            .table
            .iter()
            .map(|table| TablePair::parse(table))
            .collect(),
        selection: ColumnSelection {
            key: args.key.clone(),
            only: args.columns.clone(),
            ignore: args.ignore_columns.clone().unwrap_or_default(),
        },
        filter: args.r#where.clone(),
        window_rows: args.window_rows,
        threads: args.threads,
        rechecks: args.recheck,
        recheck_delay: args.recheck_delay,
        max_rows_per_sec: args.max_rows_per_sec,
        max_divergences: args.max_divergences,
        progress: None,
        settings: CanonicalSettings {
            assume_tz_offset_micros,
            timestamp_precision_micros: match args.timestamp_precision {
                TimestampPrecision::Us => 1,
                TimestampPrecision::Ms => 1_000,
                TimestampPrecision::S => 1_000_000,
            },
            float_tolerance: args.float_tolerance,
        },
    })
}

/// Connects to both databases named by the flags.
pub(super) async fn connect(
    args: &CompareArgs,
    access: Access,
) -> anyhow::Result<(Database, Database)> {
    let connections = u32::try_from(args.threads.saturating_mul(2)).unwrap_or(u32::MAX);
    Ok(tokio::try_join!(
        Database::connect(Side::Old, &args.old, connections, access),
        Database::connect(Side::New, &args.new, connections, access)
    )?)
}

/// `UTC`, `Z` or `±HH:MM` as microseconds east of UTC.
fn parse_offset(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("utc") || zone == "Z" {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours <= 14 && minutes < 60).then(|| sign * (hours * 60 + minutes) * 60_000_000)
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

#[cfg(test)]
mod tests {
    use super::parse_offset;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("UTC"), Some(0));
        assert_eq!(parse_offset("+02:00"), Some(7_200_000_000));
        assert_eq!(parse_offset("-05:30"), Some(-19_800_000_000));
        assert_eq!(parse_offset("Europe/Paris"), None);
    }
}
