//! `tandem backfill`: fill the new side's tables from the old side's beside live dual-write;
//! exit 0 when every chunk converged (or on a dry run, or when SIGTERM stopped it at a chunk
//! boundary), 1 otherwise, 2 on error.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_comparator::{
    backfill, describe_backfill_metrics, health_and_metrics, Access, BackfillOptions,
    BackfillReport,
};
use tandem_control::settings::SettingsError;
use tandem_control::{redact_url, ControlStore};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::backfill_bars::{draws_bars, Bars};
use super::compare::connect;
use crate::cli::{BackfillArgs, Format, LogFormat};
use crate::command_line::CommandLine;
use crate::compare_settings::CompareSettings;
use crate::output::print_json;

pub async fn run(
    args: BackfillArgs,
    line: &CommandLine,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    let settings = CompareSettings::resolve(&args.compare, line)?;
    let own = self::settings(&args, &settings)?;
    let open_store = async {
        if args.dry_run {
            return Ok(None);
        }
        let url = settings
            .control_db
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned());
        Ok::<_, anyhow::Error>(Some(ControlStore::open(&url).await?))
    };
    let access = if args.dry_run {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    // The store (its migrations checked) and both databases at once: neither waits for the
    // other.
    let (store, (old, new)) = tokio::try_join!(open_store, connect(&settings, access))?;
    let stop = crate::shutdown::on_signal();
    // Served until the backfill returns, so Prometheus sees it while it runs.
    let listener_stop = tokio_util::sync::CancellationToken::new();
    let _listener_stops = listener_stop.clone().drop_guard();
    if let Some(address) = own.metrics_listen {
        serve_metrics(address, listener_stop).await?;
    }
    // On a terminal a bar per table; elsewhere the plain progress lines.
    let bars = draws_bars(std::io::stderr().is_terminal(), log_format).then(Bars::new);
    let options = BackfillOptions {
        chunk_rows: own.chunk_rows,
        threads: settings.options.threads,
        attempts: own.attempts,
        dry_run: args.dry_run,
        restart: args.restart,
        instance: tandem_control::claim_owner(&own.instance),
        lease: own.chunk_lease,
        sources: format!(
            "{} {}",
            redact_url(&settings.old),
            redact_url(&settings.new)
        ),
        stop,
        progress_every: own.progress_interval,
        progress: bars.as_ref().map(Bars::sink),
        create_schema: args.create_schema,
        chunk_retries: own.chunk_retries,
        retry_delay: own.chunk_retry_delay,
    };
    let report = backfill((&old, &new), store.as_ref(), &settings.options, &options).await;
    if let Some(bars) = &bars {
        bars.finish();
    }
    let report = report?;
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

/// `tandem backfill`'s own settings: flags and `TANDEM_BACKFILL_*` variables over the file's
/// `[backfill]` section over defaults.
#[derive(Debug, Clone)]
pub struct BackfillSettings {
    /// Old-side rows per chunk.
    pub chunk_rows: usize,
    /// Rounds of conditional writes per chunk.
    pub attempts: u32,
    /// Retries of a chunk that failed with a transient error.
    pub chunk_retries: u32,
    /// The wait before a chunk's first retry.
    pub chunk_retry_delay: Duration,
    /// How long a claimed chunk is left to its instance.
    pub chunk_lease: Duration,
    /// This instance's name in the chunks it claims.
    pub instance: String,
    /// Where `/healthz` and `/metrics` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How often a progress line is logged.
    pub progress_interval: Duration,
}

/// The settings `tandem backfill` runs with, refused before it starts when one cannot be used.
///
/// # Errors
/// The first value refused, named with its key and origin.
pub fn settings(
    args: &BackfillArgs,
    compare: &CompareSettings,
) -> Result<BackfillSettings, SettingsError> {
    let layers = &compare.layers;
    let file = &compare.backfill;
    let positive = |key: &str, value: Duration| {
        if value.is_zero() {
            Err(layers.refuse(key, "must be longer than 0s"))
        } else {
            Ok(value)
        }
    };
    let chunk_rows = args.chunk_rows.or(file.chunk_rows).unwrap_or(50_000);
    // A chunk's differences are all held for writing: as many as a comparison keeps.
    if !(1..=100_000).contains(&chunk_rows) {
        return Err(layers.refuse("backfill.chunk_rows", "must be between 1 and 100000"));
    }
    let attempts = args.attempts.or(file.attempts).unwrap_or(3);
    if attempts == 0 {
        return Err(layers.refuse("backfill.attempts", "must be at least 1"));
    }
    if compare.options.settings.timestamp_precision_micros != 1 {
        return Err(layers.refuse(
            "timestamp_precision",
            "must be us: tandem backfill copies values exactly",
        ));
    }
    Ok(BackfillSettings {
        chunk_rows,
        attempts,
        chunk_retries: args.chunk_retries.or(file.chunk_retries).unwrap_or(3),
        chunk_retry_delay: args
            .chunk_retry_delay
            .or(file.chunk_retry_delay)
            .unwrap_or(Duration::from_secs(1)),
        chunk_lease: positive(
            "backfill.chunk_lease",
            args.chunk_lease
                .or(file.chunk_lease)
                .unwrap_or(Duration::from_secs(300)),
        )?,
        instance: args
            .instance
            .clone()
            .or_else(|| file.instance.clone())
            .unwrap_or_else(|| format!("{}:backfill", tandem_control::host_name())),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        progress_interval: positive(
            "backfill.progress_interval",
            args.progress_interval
                .or(file.progress_interval)
                .unwrap_or(Duration::from_secs(10)),
        )?,
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
    for created in &report.created {
        let verb = if report.dry_run {
            "would create"
        } else {
            "created"
        };
        println!(
            "{verb} table {} on the new side: {}",
            created.table,
            created.statements.join("; ")
        );
    }
    for table in &report.tables {
        let name = match &table.new_table {
            Some(new) => format!("{} -> {new}", table.table),
            None => table.table.clone(),
        };
        if report.dry_run {
            println!(
                "{name}: {} rows old; would copy {}, would repair {}, {} already equal",
                table.rows_old, table.copied, table.repaired, table.skipped
            );
            continue;
        }
        println!(
            "{name}: {} of {} chunks done ({} before this run, {} in bulk, {} found equal in \
             groups), {} rows read; \
             copied {}, skipped {} already equal, repaired {}, {} conflicts with live writes, \
             {} unconverged, {} chunk retries; {:.1}s",
            table.chunks_done,
            table.chunks,
            table.chunks_resumed,
            table.chunks_bulk,
            table.chunks_grouped,
            table.rows_old,
            table.copied,
            table.skipped,
            table.repaired,
            table.conflicts,
            table.unconverged,
            table.chunk_retries,
            table.seconds
        );
    }
    let limit = report
        .max_rows_per_sec
        .map_or_else(|| "no limit".to_owned(), |rate| format!("limit {rate}/s"));
    println!("{} rows read on both sides ({limit})", report.rows_read);
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
