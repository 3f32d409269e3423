//! `tandem backfill`: fill the new side's tables from the old side's beside live dual-write;
//! exit 0 when every chunk converged (or on a dry run, or when SIGTERM stopped it at a chunk
//! boundary), 1 otherwise, 2 on error.

use std::process::ExitCode;

use tandem_comparator::{
    backfill, describe_backfill_metrics, health_and_metrics, Access, BackfillOptions,
    BackfillReport,
};
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
    let stop = crate::shutdown::on_signal();
    // Served until the backfill returns, so Prometheus sees it while it runs.
    let listener_stop = tokio_util::sync::CancellationToken::new();
    let _listener_stops = listener_stop.clone().drop_guard();
    if let Some(address) = args.metrics_listen {
        serve_metrics(address, listener_stop).await?;
    }
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
        stop,
        progress_every: args.progress_interval,
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

/// Binds `address` and serves `/healthz` and `/metrics` there until `stop`.
async fn serve_metrics(
    address: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let metrics = tandem_proxy::install_metrics_recorder()?;
    describe_backfill_metrics();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on --metrics-listen {address}: {err}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("tandem backfill metrics listening on http://{bound}");
    tokio::spawn(async move {
        let served = axum::serve(listener, health_and_metrics(metrics))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "the metrics listener stopped");
        }
    });
    Ok(())
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
            "{name}: {} of {} chunks done ({} before this run, {} in bulk), {} rows read; \
             copied {}, repaired {}, {} conflicts with live writes, {} unconverged; {:.1}s",
            table.chunks_done,
            table.chunks,
            table.chunks_resumed,
            table.chunks_bulk,
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
